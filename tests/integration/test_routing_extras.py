"""The rest of routing (issue 13): shared pools, group rules, server_login_retry and
pool_notice_after_waiting_ms, against the session PostgreSQL."""
from __future__ import annotations

import re
import threading

import psycopg
import psycopg2
import pytest

from tests.integration.conftest import backends, ensure_roles, odyssey_config, rule, wait_for
from tests.integration.wire import Wire, decode_row, parse_fields, query

pytestmark = pytest.mark.timeout(60)


def _dsn(p, user: str, db: str = "postgres") -> str:
    return f"host=127.0.0.1 port={p.port} user={user} dbname={db} sslmode=disable connect_timeout=10"


# -- shared pools -----------------------------------------------------------------------------------
def test_two_rules_share_one_pool(pg, pooler):
    ensure_roles(pg, "sp_a", "sp_b")
    text = odyssey_config(rule("sp_a", db="postgres", shared_pool="sp", pool_size=None, pool_timeout=20000),
                          rule("sp_b", db="postgres", shared_pool="sp", pool_size=None, pool_timeout=20000))
    p = pooler(text + 'shared_pool "sp" {\n    pool_size 2\n}\n')

    def servers() -> int:
        return len(backends(pg, "sp_a")) + len(backends(pg, "sp_b"))

    a1 = psycopg2.connect(_dsn(p, "sp_a"))
    b1 = psycopg2.connect(_dsn(p, "sp_b"))
    b2 = psycopg2.connect(_dsn(p, "sp_b"))
    try:
        a1.cursor().execute("select 1")        # a transaction: holds one server of the pool
        b1.cursor().execute("select 1")        # and the other
        assert servers() == 2
        done = threading.Event()
        result = {}

        def waiting_client():
            try:
                cur = b2.cursor()
                cur.execute("select current_user")
                result["user"] = cur.fetchone()[0]
            except Exception as e:      # reported by the assertions below
                result["error"] = e
            finally:
                done.set()

        t = threading.Thread(target=waiting_client, daemon=True)
        t.start()
        assert not done.wait(0.5), result        # the pool is full: sp_b's second client waits
        assert servers() == 2
        a1.commit()          # sp_a's server is free; sp_a has no waiter, so the slot goes to sp_b
        assert done.wait(15), "the waiting client of the other rule got no server"
        assert result == {"user": "sp_b"}
        assert servers() <= 2
        b1.commit()
        b2.commit()
        # every client still works, and the pool never grows past its size
        for con in (a1, b1, b2):
            con.cursor().execute("select 1")
            con.commit()
        assert servers() <= 2
    finally:
        for con in (a1, b1, b2):
            con.close()


# -- pool_notice_after_waiting_ms -------------------------------------------------------------------
def _notices(messages) -> list[str]:
    return [parse_fields(body)["M"] for tag, body in messages if tag == b"N"]


def test_a_waiting_client_gets_notices(pg, pooler):
    ensure_roles(pg, "notice_user")
    p = pooler(odyssey_config(rule("notice_user", db="postgres", pool_size=1, pool_timeout=20000,
                                   pool_notice_after_waiting_ms=100)))
    holder = psycopg2.connect(_dsn(p, "notice_user"))
    waiter = Wire(p.port, timeout=20)
    try:
        holder.cursor().execute("select 1")            # holds the only server
        waiter.login("notice_user", "postgres")
        waiter.send(query("select 42"))
        first = waiter.read_message()                  # sent after 100 ms of waiting
        assert first[0] == b"N" and _notices([first]) == ["waiting for free backend connection"]
        holder.commit()                                # frees the server
        got = [first]
        while not got or got[-1][0] != b"Z":
            got.append(waiter.read_message())
        notices = _notices(got)
        assert len(notices) == 2 and re.fullmatch(r"waiting took \d+ ms", notices[1]), notices
        assert [decode_row(body) for tag, body in got if tag == b"D"] == [["42"]]
    finally:
        holder.close()
        waiter.close()


def test_a_timed_out_waiter_is_told_before_the_53300(pg, pooler):
    ensure_roles(pg, "notice_user")
    p = pooler(odyssey_config(rule("notice_user", db="postgres", pool_size=1, pool_timeout=600,
                                   pool_notice_after_waiting_ms=100)))
    holder = psycopg2.connect(_dsn(p, "notice_user"))
    waiter = Wire(p.port, timeout=20)
    quiet = Wire(p.port, timeout=20)
    try:
        holder.cursor().execute("select 1")
        waiter.login("notice_user", "postgres")
        waiter.send(query("select 1"))
        got = waiter.read_until_closed(15)
        notices = _notices(got)
        assert notices[0] == "waiting for free backend connection"
        assert re.fullmatch(r"waiting took \d+ ms, timeout", notices[1]), notices
        errors = [parse_fields(body) for tag, body in got if tag == b"E"]
        assert [e["C"] for e in errors] == ["53300"]
        # the pool serves the next client as usual
        holder.commit()
        quiet.login("notice_user", "postgres")
        rows, error, _ = quiet.simple_query("select 7")
        assert rows == [["7"]] and error is None
    finally:
        holder.close()
        waiter.close()
        quiet.close()


# -- server_login_retry -----------------------------------------------------------------------------
def test_a_login_refused_with_53300_is_retried(pg, pooler):
    ensure_roles(pg, "retry_user")
    pg.psql("ALTER ROLE retry_user CONNECTION LIMIT 1")
    p = pooler(odyssey_config(rule("retry_user", db="postgres", pool_timeout=15000), server_login_retry=50))
    direct_con = psycopg2.connect(pg.dsn("retry_user", "postgres"))    # takes the role's one connection
    release = threading.Timer(0.5, direct_con.close)
    release.start()
    try:
        # refused with 53300 until the direct connection closes, then served
        con = psycopg.connect(_dsn(p, "retry_user"))
        assert con.execute("select current_user").fetchone()[0] == "retry_user"
        con.close()
        assert "too many connections for role" in p.log()
    finally:
        release.cancel()
        direct_con.close()


def test_login_retries_end_at_pool_timeout(pg, pooler):
    ensure_roles(pg, "retry_user")
    pg.psql("ALTER ROLE retry_user CONNECTION LIMIT 1")
    p = pooler(odyssey_config(rule("retry_user", db="postgres", pool_timeout=300, client_fwd_error=True),
                              server_login_retry=50))
    direct_con = psycopg2.connect(pg.dsn("retry_user", "postgres"))
    try:
        with pytest.raises(psycopg.Error) as e:
            psycopg.connect(_dsn(p, "retry_user"))
        assert "too many connections for role" in str(e.value)   # client_fwd_error: PostgreSQL's own
        assert p.log().count("too many connections for role") > 1       # it was tried again
    finally:
        direct_con.close()


# -- group rules ------------------------------------------------------------------------------------
_GROUP_RULES = """
database "postgres" {
    group "grp" {
        authentication "none"
        storage "postgres_server"
        pool "session"
        pool_size 0
        options { "application_name" "via_group" }
        group_query "select rolname from pg_roles where pg_has_role(rolname, 'grp_role', 'member') and rolname <> 'grp_role'"
        group_query_user "postgres"
        group_query_db "postgres"
    }
    user "postgres" {
        authentication "none"
        storage "postgres_server"
        pool "transaction"
        pool_routing "internal"
    }
}
database default {
    user default {
        authentication "none"
        storage "postgres_server"
        pool "session"
        pool_size 0
        options { "application_name" "via_default" }
    }
}
"""


def _app(p, user: str) -> str:
    with psycopg.connect(_dsn(p, user)) as con:
        return con.execute("select current_setting('application_name')").fetchone()[0]


def test_group_rule_matches_the_members_its_query_names(pg, pooler):
    ensure_roles(pg, "grp_member", "grp_other")
    pg.psql("DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'grp_role') THEN "
            "CREATE ROLE grp_role NOLOGIN; END IF; END $$;"
            "GRANT grp_role TO grp_member; REVOKE grp_role FROM grp_other;")
    p = pooler(odyssey_config(group_checker_interval=200) + _GROUP_RULES)
    try:
        wait_for(lambda: _app(p, "grp_member") == "via_group", timeout=10, what="the group checker's first run")
        assert _app(p, "grp_other") == "via_default"
        pg.psql("GRANT grp_role TO grp_other")          # membership is read again every interval
        wait_for(lambda: _app(p, "grp_other") == "via_group", timeout=10, what="the new member")
        assert _app(p, "grp_member") == "via_group"
    finally:
        pg.psql("REVOKE grp_role FROM grp_other")


# -- soft_oom ---------------------------------------------------------------------------------------
_CONSOLE = """
storage "console" {
    type "local"
}
database "console" {
    user default {
        authentication "none"
        role "admin"
        pool "session"
        storage "console"
    }
}
"""


@pytest.mark.parametrize("limit, refused", [(1024, True), (10 ** 15, False)])     # bytes
def test_soft_oom_refuses_new_clients_over_the_limit(pg, pooler, limit, refused):
    ensure_roles(pg, "oom_user")
    text = odyssey_config(rule("oom_user", db="postgres")) + _CONSOLE + \
        f'soft_oom {{\n    limit {limit}\n    check_interval_ms 100\n}}\n'
    p = pooler(text)
    if refused:       # the machine's used memory is over 1024 bytes from the first check on
        def refusal():
            try:
                psycopg.connect(_dsn(p, "oom_user")).close()
                return None
            except psycopg.Error as e:
                return str(e)
        message = wait_for(refusal, timeout=10, what="the first memory check")
        assert "soft out of memory" in message
        assert "drop connection due to soft oom" in p.log()
    else:
        with psycopg.connect(_dsn(p, "oom_user")) as con:
            assert con.execute("select 1").fetchone()[0] == 1
    # the console is never refused
    with psycopg.connect(_dsn(p, "console", "console"), autocommit=True) as con:
        assert con.execute("show version").fetchone()[0]
