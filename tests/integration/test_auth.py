"""Client authentication against the rule's password, and backend authentication to PostgreSQL.

Routing: only named rules here (no `database default`), so an unknown database has no route.
"""
from __future__ import annotations

import asyncio
import hashlib
import subprocess

import asyncpg
import psycopg2
import pytest

from tests.integration.conftest import module_pooler, odyssey_config, odyssey_text, rule, current_user
from tests.integration.wire import Wire, login_error

MD5H_PLAIN = "hashedpw"
MD5H_STORED = "md5" + hashlib.md5((MD5H_PLAIN + "auth_md5h").encode()).hexdigest()


@pytest.fixture(scope="module")
def auth_pooler(pg, roles):
    text = odyssey_config(
        rule("auth_none", "db1"),
        rule("auth_clear", "db1", authentication="clear_text", password="clearpass"),
        rule("auth_md5", "db1", authentication="md5", password="md5secret"),
        rule("auth_md5h", "db1", authentication="md5", password=MD5H_STORED),
        rule("auth_scram", "db1", authentication="scram-sha-256", password="scramsecret"),
        rule("auth_block", "db1", authentication="block"),
        # backend auth: PostgreSQL wants md5 from md5_user and SCRAM from scram_user over TCP
        rule("md5_user", "db1", storage_password="md5pass"),
        rule("scram_user", "db1", authentication="scram-sha-256", password="scrampass"),
        rule("md5_user", "postgres", authentication="md5", password="md5pass"),
        rule("scram_user", "postgres", storage_password="scrampass"),
    )
    yield from module_pooler(pg, text)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("user,password", [
    ("auth_none", None), ("auth_clear", "clearpass"), ("auth_md5", "md5secret"),
    ("auth_md5h", MD5H_PLAIN), ("auth_scram", "scramsecret")])
def test_client_auth_accepts_the_rule_password(auth_pooler, user, password):
    assert current_user(auth_pooler.dsn(user, "db1", password)) == user


@pytest.mark.timeout(30)
def test_psql_with_pgpassword_on_clear_text(auth_pooler):
    env = dict(PATH="/usr/bin:/bin", PGPASSWORD="clearpass", PGSSLMODE="disable",
               PGCONNECT_TIMEOUT="10")
    out = subprocess.run(["psql", "-X", "-A", "-t", "-h", "127.0.0.1", "-p", str(auth_pooler.port),
                          "-U", "auth_clear", "-d", "db1", "-c", "select 'ok'"],
                         env=env, capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("user", ["auth_clear", "auth_md5", "auth_md5h"])
def test_wrong_password_is_28p01(auth_pooler, user):
    err = login_error(auth_pooler.port, user, "db1", "wrong")
    assert err is not None, "logged in with a wrong password"
    assert (err["S"], err["C"]) == ("FATAL", "28P01")
    odyssey_text(err["M"], f'password authentication failed for user "{user}"')
    # and a libpq client sees the same text
    with pytest.raises(psycopg2.OperationalError, match=f'password authentication failed for user "{user}"'):
        psycopg2.connect(auth_pooler.dsn(user, "db1", "wrong"))


@pytest.mark.timeout(30)
def test_wrong_scram_password(auth_pooler):
    async def attempt():
        await asyncpg.connect(host="127.0.0.1", port=auth_pooler.port, user="auth_scram",
                              database="db1", password="wrong", ssl=False, timeout=10)

    with pytest.raises(asyncpg.PostgresError) as e:
        asyncio.run(attempt())
    # Odyssey answers a bad SCRAM proof with FATAL 28000 (auth.c), not 28P01 as for md5/clear_text
    assert e.value.sqlstate == "28000"
    odyssey_text(str(e.value), 'password authentication failed for user "auth_scram"')


@pytest.mark.timeout(30)
def test_missing_password_for_md5_fails(auth_pooler):
    with pytest.raises(psycopg2.OperationalError):
        psycopg2.connect(auth_pooler.dsn("auth_md5", "db1", ""))


@pytest.mark.timeout(30)
def test_block_is_28000(auth_pooler):
    err = login_error(auth_pooler.port, "auth_block", "db1")
    assert err is not None
    assert (err["S"], err["C"]) == ("FATAL", "28000")
    odyssey_text(err["M"], "user blocked")


@pytest.mark.timeout(30)
def test_unknown_database_has_no_route(auth_pooler):
    w = Wire(auth_pooler.port)
    try:
        err = w.login("auth_none", "nosuchdb")
        assert err is not None
        assert err["C"] == "3D000"
        odyssey_text(err["M"], "route for 'nosuchdb.auth_none' is not found")
        w.read_until_closed(5)
    finally:
        w.close()


@pytest.mark.timeout(30)
def test_unknown_user_has_no_route(auth_pooler):
    err = login_error(auth_pooler.port, "nobody", "db1")
    assert err is not None and err["C"] == "3D000"
    odyssey_text(err["M"], "route for 'db1.nobody' is not found")


@pytest.mark.timeout(30)
@pytest.mark.parametrize("user,db,password", [
    ("md5_user", "db1", None),              # storage_password, client auth none
    ("scram_user", "postgres", None),       # storage_password, client auth none
    ("md5_user", "postgres", "md5pass"),    # the rule password serves both sides
    ("scram_user", "db1", "scrampass"),     # client SCRAM + backend SCRAM from the rule password
])
def test_backend_auth_md5_and_scram(auth_pooler, user, db, password):
    con = psycopg2.connect(auth_pooler.dsn(user, db, password))
    try:
        cur = con.cursor()
        cur.execute("select current_user, current_database(), "
                    "(select count(*) from pg_stat_activity where pid = pg_backend_pid() "
                    " and client_addr is not null)")
        # a TCP login to PostgreSQL as that user, so pg_hba made it use md5 / SCRAM
        assert cur.fetchone() == (user, db, 1)
    finally:
        con.close()


@pytest.mark.timeout(30)
def test_auth_query_without_an_internal_route_is_28000(odyssey):
    # (tests/integration/test_auth_query.py has the rest of auth_query)
    p = odyssey(rule("aq_user", authentication="md5", auth_query="select usename, passwd from pg_shadow where usename=$1",
                     auth_query_db="postgres", auth_query_user="postgres"))
    fields = login_error(p.port, "aq_user", "db1", "whatever")
    assert (fields["C"], fields["S"]) == ("28000", "FATAL")
    assert fields["M"].endswith("failed to make auth query")
    p.wait_log("internal route for 'postgres.postgres' is not found")
