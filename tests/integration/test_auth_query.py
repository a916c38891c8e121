"""auth_query: client secrets fetched from PostgreSQL's pg_authid through the internal route.

Roles made here keep pg_hba's trust for the backend login, except md5_user / scram_user (the
fixture's md5 and scram roles), which prove that the pooler logs in with what the client proved.
"""
from __future__ import annotations

import hashlib
import signal

import psycopg2
import pytest

from tests.integration.conftest import current_user, direct, module_pooler, odyssey_config, odyssey_text, rule
from tests.integration.wire import Wire, login_error

RECOMMENDED = ("SELECT rolname, CASE WHEN rolvaliduntil IS NULL OR rolvaliduntil > now() "
               "THEN rolpassword END FROM pg_authid WHERE rolname = $1")
INTERNAL = rule("postgres", "postgres", pool="session", pool_routing="internal")


def aq(mode: str, query: str = RECOMMENDED, **items) -> dict:
    return dict(authentication=mode, auth_query=query, auth_query_db="postgres",
                auth_query_user="postgres", **items)


@pytest.fixture(scope="module")
def aq_roles(pg, roles):
    pg.psql("""
        DROP SCHEMA IF EXISTS evil CASCADE;
        DROP TABLE IF EXISTS public.aq_secrets;
        SET password_encryption = 'md5';
        DROP ROLE IF EXISTS aq_md5; CREATE ROLE aq_md5 LOGIN PASSWORD 'md5pw';
        DROP ROLE IF EXISTS aq_cache; CREATE ROLE aq_cache LOGIN PASSWORD 'first';
        DROP ROLE IF EXISTS aq_expired;
        CREATE ROLE aq_expired LOGIN PASSWORD 'expiredpw' VALID UNTIL '2001-01-01';
        DROP ROLE IF EXISTS aq_nopass; CREATE ROLE aq_nopass LOGIN;
        DROP ROLE IF EXISTS aq_clear; CREATE ROLE aq_clear LOGIN;
        SET password_encryption = 'scram-sha-256';
        DROP ROLE IF EXISTS aq_scram; CREATE ROLE aq_scram LOGIN PASSWORD 'scrampw';
        CREATE TABLE public.aq_secrets (u text, p text);
        INSERT INTO public.aq_secrets VALUES ('aq_clear', 'plainpw');
        -- a schema that shadows pg_authid for a client that could choose the search_path
        CREATE SCHEMA evil;
        CREATE TABLE evil.pg_authid (rolname name, rolpassword text, rolvaliduntil timestamptz);
        INSERT INTO evil.pg_authid VALUES ('aq_md5', 'md5' || md5('hacked' || 'aq_md5'), NULL);
        GRANT ALL ON SCHEMA evil TO PUBLIC; GRANT ALL ON evil.pg_authid TO PUBLIC;
    """)
    for role in ("aq_md5", "aq_cache", "aq_expired", "aq_nopass", "aq_clear", "aq_scram"):
        pg.psql(f"GRANT ALL ON DATABASE db1 TO {role}; GRANT ALL ON DATABASE postgres TO {role};")


@pytest.fixture(scope="module")
def aq_pooler(pg, aq_roles):
    text = odyssey_config(
        INTERNAL,
        rule("default", "db1", **aq("md5")),
        rule("aq_scram", "db1", **aq("scram-sha-256")),
        rule("scram_user", "db1", **aq("scram-sha-256")),
        rule("aq_clear", "db1", **aq("clear_text", "SELECT u, p FROM public.aq_secrets WHERE u = $1")),
        rule("aq_bad", "db1", **aq("md5", "SELECT rolname, no_such_column FROM pg_authid WHERE rolname = $1")),
        rule("md5_user", "postgres", **aq("clear_text")),
        # C's text substitution, written the C way: '%u' must still be one literal
        rule("default", "postgres", **aq("md5", "SELECT rolname, rolpassword FROM pg_authid "
                                                "WHERE rolname = '%u'")),
    )
    yield from module_pooler(pg, text)


def assert_password_failed(port, user, db, pw, **params):
    err = login_error(port, user, db, pw, **params)
    assert (err["C"], err["S"]) == ("28P01", "FATAL"), err
    odyssey_text(err["M"], f'password authentication failed for user "{user}"')


@pytest.mark.timeout(30)
def test_md5_right_and_wrong_password(aq_pooler):
    assert current_user(aq_pooler.dsn("aq_md5", "db1", "md5pw")) == "aq_md5"
    assert_password_failed(aq_pooler.port, "aq_md5", "db1", "wrong")


@pytest.mark.timeout(30)
def test_scram_right_and_wrong_password(aq_pooler):
    assert current_user(aq_pooler.dsn("aq_scram", "db1", "scrampw")) == "aq_scram"
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(aq_pooler.dsn("aq_scram", "db1", "wrong"))


@pytest.mark.timeout(30)
def test_scram_passthrough_logs_in_with_the_proved_client_key(aq_pooler):
    # pg_hba wants SCRAM from scram_user and the rule has no password: the ClientKey the client
    # proved against pg_authid's verifier is what logs the server in
    assert current_user(aq_pooler.dsn("scram_user", "db1", "scrampass")) == "scram_user"


@pytest.mark.timeout(30)
def test_md5_stored_hash_logs_the_server_in(aq_pooler):
    # pg_hba wants md5 from md5_user: the stored md5 hash answers PostgreSQL's md5 challenge
    assert current_user(aq_pooler.dsn("md5_user", "db1", "md5pass")) == "md5_user"


@pytest.mark.timeout(30)
def test_clear_text_compares_byte_exact(aq_pooler):
    assert current_user(aq_pooler.dsn("aq_clear", "db1", "plainpw")) == "aq_clear"
    assert_password_failed(aq_pooler.port, "aq_clear", "db1", "plainpw ")
    # the stored md5 hash is not a plaintext: neither the password nor the hash matches
    assert_password_failed(aq_pooler.port, "md5_user", "postgres", "md5pass")


@pytest.mark.timeout(30)
def test_expired_role_fails_whatever_the_query_returns(aq_pooler):
    """The classic query (rolpassword with no VALID UNTIL check, like C configs on pg_shadow) still
    gets no secret for an expired role: the pooler checks pg_roles.rolvaliduntil itself."""
    assert_password_failed(aq_pooler.port, "aq_expired", "postgres", "expiredpw")


@pytest.mark.timeout(30)
@pytest.mark.parametrize("user", ["aq_nobody", "aq_nopass", "aq_expired"])
def test_unknown_null_and_expired_fail_like_a_wrong_password(aq_pooler, user):
    assert_password_failed(aq_pooler.port, user, "db1", "expiredpw")


@pytest.mark.timeout(30)
@pytest.mark.parametrize("db", ["db1", "postgres"])      # $1 binding, and the '%u' literal
@pytest.mark.parametrize("user", ["x' OR '1'='1", "aq_md5' --", "a;SELECT 1", "a\\'b", "aq_md5\\",
                                  "x' UNION SELECT 'aq_md5', rolpassword FROM pg_authid WHERE rolname='aq_md5"])
def test_injection_looking_user_names_do_not_change_the_query(aq_pooler, db, user):
    # were the name spliced into SQL, these would be syntax errors (28000) or match aq_md5's row
    assert_password_failed(aq_pooler.port, user, db, "md5pw")


@pytest.mark.timeout(30)
def test_percent_u_rule_accepts_the_right_user(aq_pooler):
    assert current_user(aq_pooler.dsn("aq_md5", "postgres", "md5pw")) == "aq_md5"


@pytest.mark.timeout(30)
def test_client_search_path_does_not_reach_the_auth_query(pg, aq_pooler):
    evil = "evil, pg_catalog"
    with direct(pg) as con, con.cursor() as cur:      # the trap works on a session that has it
        cur.execute(f"SET search_path = {evil}")
        cur.execute(RECOMMENDED.replace("$1", "%s"), ("aq_md5",))
        assert cur.fetchone()[1] == "md5" + hashlib.md5(b"hackedaq_md5").hexdigest()
    assert_password_failed(aq_pooler.port, "aq_md5", "db1", "hacked", search_path=evil)
    assert_password_failed(aq_pooler.port, "aq_md5", "db1", "hacked",
                           options="-c search_path=evil,pg_catalog")
    w = Wire(aq_pooler.port)
    try:
        assert w.login("aq_md5", "db1", "md5pw", search_path=evil) is None
        rows, err, _ = w.simple_query("show search_path")
        assert err is None and "evil" in rows[0][0]   # the client's own session keeps it
    finally:
        w.close()


@pytest.mark.timeout(30)
def test_failing_query_is_28000_and_logged(aq_pooler):
    err = login_error(aq_pooler.port, "aq_bad", "db1", "x")
    assert (err["C"], err["S"]) == ("28000", "FATAL")
    odyssey_text(err["M"], "failed to make auth query")
    log = aq_pooler.wait_log("failed to make auth query for 'aq_bad'")
    assert "no_such_column" in log


@pytest.mark.timeout(60)
def test_cache_serves_the_old_secret_until_reload(pg, aq_roles, odyssey):
    p = odyssey(INTERNAL, rule("aq_cache", "db1", **aq("md5")))
    try:
        assert current_user(p.dsn("aq_cache", "db1", "first")) == "aq_cache"
        pg.psql("SET password_encryption = 'md5'; ALTER ROLE aq_cache PASSWORD 'second';")
        assert current_user(p.dsn("aq_cache", "db1", "first")) == "aq_cache"    # cached
        p.signal(signal.SIGHUP)
        p.wait_log("reconfigure rules")
        assert_password_failed(p.port, "aq_cache", "db1", "first")
        assert current_user(p.dsn("aq_cache", "db1", "second")) == "aq_cache"
    finally:
        pg.psql("SET password_encryption = 'md5'; ALTER ROLE aq_cache PASSWORD 'first';")
