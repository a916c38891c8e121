"""The test harness itself: the private PostgreSQL accepts each role by its pg_hba method."""
import psycopg2
import pytest


@pytest.mark.parametrize("user,password", [("trust_user", None), ("md5_user", "md5pass"),
                                           ("scram_user", "scrampass")])
def test_roles_log_in_directly(pg, user, password):
    with psycopg2.connect(pg.dsn(user, "db1", password)) as con:
        cur = con.cursor()
        cur.execute("select current_user")
        assert cur.fetchone()[0] == user


@pytest.mark.parametrize("user", ["md5_user", "scram_user"])
def test_wrong_password_is_rejected(pg, user):
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(pg.dsn(user, "db1", "wrong"))


def test_passwords_are_stored_as_md5_and_scram(pg):
    rows = dict(line.split("|") for line in pg.psql(
        "select rolname, rolpassword from pg_authid where rolname in ('md5_user','scram_user')").splitlines())
    assert rows["md5_user"].startswith("md5") and len(rows["md5_user"]) == 35
    assert rows["scram_user"].startswith("SCRAM-SHA-256$4096:")
