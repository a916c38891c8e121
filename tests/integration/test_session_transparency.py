"""Session pooling as transparent as a direct connection (issue 8).

A session-pooled server that goes back to the pool keeps nothing of its last client for the
next one (prepared statements, cursors, LISTEN, temp tables, advisory locks), even with
`pool_discard no`; and while a client owns its server, what it sees of the backend is the
backend itself: BackendKeyData carries the server's pid, so the driver's backend_pid,
pg_backend_pid() and a notification's pid agree, and cancel and pg_terminate_backend behave as
on PostgreSQL.
"""
from __future__ import annotations

import asyncio
import threading

import asyncpg
import psycopg
import psycopg.errors
import psycopg2
import pytest

from kiwi import fe_write as fw
from tests.integration.conftest import backends, direct, ensure_roles, module_pooler, odyssey_config, rule, wait_for
from tests.integration.wire import Wire, parse_fields

DB = "db1"
ROUTES = {
    "sess_leak": dict(pool="session", pool_size=1, pool_discard=False),
    "sess_pid": dict(pool="session", pool_size=2, pool_discard=False),
    "sess_term": dict(pool="session", pool_size=1, pool_discard=False),
    "sess_lazy": dict(pool="session", pool_size=1, pool_discard=False, reserve_session_server_connection=False),
}


@pytest.fixture(scope="module")
def sp(pg, roles):
    ensure_roles(pg, *ROUTES)
    yield from module_pooler(pg, odyssey_config(*(rule(user, **items) for user, items in ROUTES.items())))


def _login(port: int, user: str) -> Wire:
    w = Wire(port, timeout=15)
    err = w.login(user, DB)
    assert err is None, f"login refused: {err}"
    return w


def _ok(w: Wire, sql: str) -> list:
    rows, err, _ = w.simple_query(sql)
    assert err is None, f"{sql!r}: {err}"
    return rows


def _parse(w: Wire, name: str, sql: str) -> list[tuple[bytes, dict | None]]:
    w.send(fw.parse(name, sql) + fw.sync())
    got = []
    while True:
        tag, body = w.read_message()
        got.append((tag, parse_fields(body) if tag == b"E" else None))
        if tag == b"Z":
            return got


STATE = """select (select count(*) from pg_prepared_statements),
                  (select count(*) from pg_listening_channels()),
                  (select count(*) from pg_cursors),
                  to_regclass('pg_temp.tt')::text,
                  (select count(*) from pg_locks where locktype = 'advisory' and pid = pg_backend_pid())"""


# -- 10. nothing of the previous client survives -----------------------------------------------------
@pytest.mark.timeout(30)
def test_next_client_of_a_session_server_inherits_nothing(sp):
    user = "sess_leak"
    a = _login(sp.port, user)
    assert [t for t, _ in _parse(a, "s1", "select 1")] == [b"1", b"Z"]
    for sql in ("PREPARE p1 AS select 1",
                "DECLARE c CURSOR WITH HOLD FOR select 1",
                "LISTEN chan",
                "CREATE TEMP TABLE tt(x int)",
                "select pg_advisory_lock(42)"):
        _ok(a, sql)
    (pid_a,), = _ok(a, "select pg_backend_pid()")
    assert _ok(a, STATE) == [["2", "1", "1", "tt", "1"]]      # A really has all of it
    a.send(fw.terminate())
    a.close()

    b = _login(sp.port, user)
    try:
        (pid_b,), = _ok(b, "select pg_backend_pid()")
        assert pid_b == pid_a, "pool_size 1: B should get A's server back"
        # prepared statements, LISTEN, cursors, temp table, advisory lock: all gone
        assert _ok(b, STATE) == [["0", "0", "0", None, "0"]]
        assert [t for t, _ in _parse(b, "s1", "select 1")] == [b"1", b"Z"]
        _ok(b, "PREPARE p1 AS select 1")
        _ok(b, "DECLARE c CURSOR WITH HOLD FOR select 2")
        _ok(b, "CREATE TEMP TABLE tt(x int)")
        assert _ok(b, "select pg_try_advisory_lock(42)") == [["t"]]
    finally:
        b.send(fw.terminate())
        b.close()


# -- 11. the backend pid is the server's -----------------------------------------------------------------
async def _asyncpg_pids(port: int, user: str) -> tuple[int, int]:
    con = await asyncpg.connect(host="127.0.0.1", port=port, user=user, database=DB, ssl=False, timeout=10)
    try:
        return con.get_server_pid(), await con.fetchval("select pg_backend_pid()")
    finally:
        await con.close()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("driver", ["psycopg3", "psycopg2", "asyncpg"])
def test_driver_backend_pid_is_pg_backend_pid(sp, pg, driver):
    user = "sess_pid"
    if driver == "psycopg3":
        with psycopg.connect(sp.dsn(user, DB), autocommit=True) as con:
            told = con.info.backend_pid
            real = con.execute("select pg_backend_pid()").fetchone()[0]
    elif driver == "psycopg2":
        con = psycopg2.connect(sp.dsn(user, DB))
        try:
            told = con.get_backend_pid()
            cur = con.cursor()
            cur.execute("select pg_backend_pid()")
            real = cur.fetchone()[0]
        finally:
            con.close()
    else:
        told, real = asyncio.run(_asyncpg_pids(sp.port, user))
    assert real in [b[0] for b in backends(pg, user)]        # a pooled backend of the route
    assert told == real, f"{driver}: BackendKeyData pid {told}, pg_backend_pid() {real}"


@pytest.mark.timeout(30)
def test_notification_pid_is_the_backend_pid(sp):
    got = []
    with psycopg.connect(sp.dsn("sess_pid", DB), autocommit=True) as con:
        con.add_notify_handler(got.append)
        real = con.execute("select pg_backend_pid()").fetchone()[0]
        con.execute("LISTEN chan_pid")
        con.execute("NOTIFY chan_pid, 'hello'")
        if not got:                                     # delivered with the NOTIFY's reply, normally
            for n in con.notifies(timeout=5, stop_after=1):
                got.append(n)
        assert [(n.channel, n.payload, n.pid) for n in got] == [("chan_pid", "hello", real)]
        assert con.info.backend_pid == real


# -- cancel and terminate ---------------------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_cancel_through_the_session_pool(sp, pg):
    with psycopg.connect(sp.dsn("sess_pid", DB), autocommit=True) as con:
        pid = con.execute("select pg_backend_pid()").fetchone()[0]
        failures = []

        def running() -> bool:
            with direct(pg) as d, d.cursor() as cur:
                cur.execute("select 1 from pg_stat_activity where pid = %s and state = 'active' "
                            "and query like 'select pg_sleep(10)%%'", (pid,))
                return cur.fetchone() is not None

        def canceller() -> None:
            try:
                wait_for(running, timeout=8, what="pg_sleep to run")
                con.cancel()
            except BaseException as e:      # noqa: BLE001 - reported below
                failures.append(e)

        t = threading.Thread(target=canceller)
        t.start()
        try:
            with pytest.raises(psycopg.errors.QueryCanceled) as e:
                con.execute("select pg_sleep(10)")
        finally:
            t.join(15)
        assert not failures, failures
        assert e.value.sqlstate == "57014"
        assert str(e.value).startswith("canceling statement due to user request")
        assert con.execute("select 7, pg_backend_pid()").fetchone() == (7, pid)    # still the same session


def _terminate_self(dsn: str) -> tuple[int, psycopg.Error]:
    with psycopg.connect(dsn, autocommit=True) as con:
        pid = con.execute("select pg_backend_pid()").fetchone()[0]
        with pytest.raises(psycopg.Error) as e:
            con.execute("select pg_terminate_backend(pg_backend_pid())")
        assert con.closed or con.broken
    return pid, e.value


@pytest.mark.timeout(30)
def test_pg_terminate_backend_ends_the_client_and_the_next_one_works(sp, pg):
    user = "sess_term"
    _, theirs = _terminate_self(pg.dsn(user, DB))
    pid, ours = _terminate_self(sp.dsn(user, DB))
    assert (type(ours), ours.sqlstate, str(ours)) == (type(theirs), theirs.sqlstate, str(theirs))
    assert ours.sqlstate == "57P01"                 # terminating connection due to administrator command
    wait_for(lambda: pid not in [b[0] for b in backends(pg, user)], what=f"backend {pid} to end")
    with psycopg.connect(sp.dsn(user, DB), autocommit=True) as con:
        one, pid2 = con.execute("select 1, pg_backend_pid()").fetchone()
        assert one == 1 and pid2 != pid
        assert con.info.backend_pid == pid2


@pytest.mark.timeout(30)
def test_reserve_session_server_connection_no_attaches_at_first_query_as_c_odyssey(sp, pg):
    """The opt-out: no server at login (a random pid in BackendKeyData), one at the first query."""
    import psycopg
    with psycopg.connect(f"host=127.0.0.1 port={sp.port} user=sess_lazy dbname={DB} sslmode=disable") as con:
        # the route's first login learns its parameters on a server it then pools again
        assert [b[1] for b in backends(pg, "sess_lazy")] in ([], ["idle"])
        pid = con.execute("select pg_backend_pid()").fetchone()[0]
        assert [b[0] for b in backends(pg, "sess_lazy")] == [pid]
        assert con.info.backend_pid != pid
