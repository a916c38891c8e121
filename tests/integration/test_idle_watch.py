"""A pooled server's read watcher kept started while it is idle (workers 1: server.idle_readable):
an idle server that PostgreSQL terminates, or that gets a message nobody asked for, is noticed
while it sits in the pool and closed (pool_attach_check) rather than handed out; the cron's
pool_ttl, DROP SERVERS and the shutdown close watched idle servers; with workers 2 (pooled
servers are bare fds moving between workers) clients stay correct under load."""
from __future__ import annotations

import signal
import threading

import psycopg2
import pytest

from tests.integration.conftest import backends, direct, ensure_roles, one, rule, wait_for
from tests.integration.wire import Wire

USER = "idlewatch_user"
TTL_USER = "idlewatch_ttl_user"
CONSOLE_RULE = rule("default", "console", pool="session", storage="local", role="admin")
CONSOLE = 'storage "local" {\n    type "local"\n}\n'


@pytest.fixture
def watched(pg, odyssey):
    """watched(*rules, **globals): a pooler with the console, for one test (alive at the end
    unless alive=False)."""
    ensure_roles(pg, USER, TTL_USER)

    def start(*rules, alive=True, **globals_):
        return odyssey(*rules, CONSOLE_RULE, expect_alive=alive, extra=CONSOLE, **globals_)

    return start


def _connect(p, user=USER):
    con = psycopg2.connect(p.dsn(user, "db1"))
    con.autocommit = True
    return con


def _pool_servers(p, user=USER) -> tuple[int, int]:
    """(sv_active, sv_idle) of the user's pool (SHOW POOLS)."""
    con = psycopg2.connect(p.dsn("admin", "console"))
    con.autocommit = True
    try:
        with con.cursor() as cur:
            cur.execute("SHOW POOLS")
            names = [d.name for d in cur.description]
            for row in cur.fetchall():
                r = dict(zip(names, row))
                if r["user"] == user:
                    return int(r["sv_active"]), int(r["sv_idle"])
    finally:
        con.close()
    return 0, 0


def _gone(pg, user, pid):
    return all(b[0] != pid for b in backends(pg, user))


@pytest.mark.timeout(60)
def test_an_idle_server_terminated_is_closed_while_pooled(pg, watched):
    """No client asks for it: the pool lets the terminated server go by itself (its watcher saw
    the socket readable), and the next transaction runs on a new server."""
    p = watched(rule(USER, "db1", pool="transaction", pool_size=1))
    con = _connect(p)
    try:
        pid = one(con, "select pg_backend_pid()")
        assert _pool_servers(p) == (0, 1)
        with direct(pg) as d:
            one(d, "select pg_terminate_backend(%s)", (pid,))
        wait_for(lambda: _pool_servers(p) == (0, 0), timeout=20, what="the terminated idle server to leave the pool")
        assert "idle server connection is broken, closing it" in p.log()
        assert one(con, "select pg_backend_pid()") != pid
    finally:
        con.close()


@pytest.mark.timeout(60)
def test_an_idle_server_sent_a_notification_is_closed(pg, watched):
    """A message nobody asked for on an idle pooled server (a NOTIFY to a LISTEN its last client
    left behind: transaction pooling, no reset) makes it unfit to hand out: it is closed, and
    the client's next transaction gets a new server without the notification."""
    p = watched(rule(USER, "db1", pool="transaction", pool_size=1))
    con = _connect(p)
    try:
        pid = one(con, "select pg_backend_pid()")
        one(con, "listen idlewatch_channel")
        with direct(pg, "db1") as d:
            one(d, "notify idlewatch_channel, 'hello'")
        wait_for(lambda: _gone(pg, USER, pid), timeout=20, what="the notified idle server to be closed")
        assert one(con, "select pg_backend_pid()") != pid
        assert con.notifies == []
    finally:
        con.close()


@pytest.mark.timeout(60)
def test_without_pool_attach_check_a_terminated_idle_server_stays_pooled(pg, watched):
    """pool_attach_check no: the watcher stops (the socket stays readable) and the server stays
    pooled, as before; the client that gets it next finds out."""
    p = watched(rule(USER, "db1", pool="transaction", pool_size=1, pool_attach_check=False))
    con = _connect(p)
    try:
        pid = one(con, "select pg_backend_pid()")
        with direct(pg) as d:
            one(d, "select pg_terminate_backend(%s)", (pid,))
        wait_for(lambda: _gone(pg, USER, pid), timeout=20, what="the backend to exit")
        assert _pool_servers(p) == (0, 1)
        with pytest.raises(psycopg2.Error):
            one(con, "select 1")
    finally:
        con.close()
    con = _connect(p)           # the pool serves again with a new server
    try:
        assert one(con, "select pg_backend_pid()") != pid
    finally:
        con.close()


@pytest.mark.timeout(60)
def test_pool_ttl_closes_watched_idle_servers(pg, watched):
    p = watched(rule(TTL_USER, "db1", pool="transaction", pool_size=2, pool_ttl=1))
    con = _connect(p, TTL_USER)
    try:
        for _ in range(3):
            pid = one(con, "select pg_backend_pid()")
        wait_for(lambda: _gone(pg, TTL_USER, pid), timeout=20, what="pool_ttl to close the idle server")
        assert _pool_servers(p, TTL_USER) == (0, 0)
        assert one(con, "select pg_backend_pid()") != pid
    finally:
        con.close()


@pytest.mark.timeout(60)
def test_drop_servers_closes_watched_idle_servers(pg, watched):
    p = watched(rule(USER, "db1", pool="transaction", pool_size=2))
    con = _connect(p)
    try:
        pid = one(con, "select pg_backend_pid()")
        console = Wire(p.port)
        try:
            assert console.login("admin", "console") is None
            assert console.simple_query("DROP SERVERS")[1:] == (None, "I")
        finally:
            console.close()
        wait_for(lambda: _gone(pg, USER, pid), timeout=20, what="the dropped idle server to close")
        assert one(con, "select pg_backend_pid()") != pid
    finally:
        con.close()


@pytest.mark.timeout(60)
def test_shutdown_closes_watched_idle_servers(pg, watched):
    p = watched(rule(USER, "db1", pool="transaction", pool_size=2), alive=False)
    con = _connect(p)
    try:
        pid = one(con, "select pg_backend_pid()")
    finally:
        con.close()
    assert _pool_servers(p) == (0, 1)
    p.signal(signal.SIGTERM)
    assert p.proc.wait(30) == 0, p.log()[-4000:]
    wait_for(lambda: _gone(pg, USER, pid), timeout=20, what="the pooled server to be closed")


def _clients(p, user, threads: int, each: int, errors: list) -> None:
    def work(n):
        try:
            con = _connect(p, user)
            try:
                for i in range(each):
                    token = f"{n}-{i}"
                    got = one(con, "select %s::text", (token,))
                    if got != token:
                        errors.append((token, got))
            finally:
                con.close()
        except Exception as e:  # noqa: BLE001 - reported by the test
            errors.append(repr(e))

    ts = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("workers", [1, 2])
def test_clients_under_load_get_their_own_answers(pg, watched, workers):
    """8 psycopg2 clients on a pool of 3 (with workers 2, servers move between the workers):
    every answer is the client's own, the pool stays within its size, and after a termination
    of every idle server the pool serves again."""
    p = watched(rule(USER, "db1", pool="transaction", pool_size=3), workers=workers)
    errors: list = []
    _clients(p, USER, 8, 200, errors)
    assert errors == []
    assert len(backends(pg, USER)) <= 3
    with direct(pg) as d:
        one(d, "select count(pg_terminate_backend(pid)) from pg_stat_activity where usename = %s", (USER,))
    wait_for(lambda: not backends(pg, USER), timeout=20, what="the backends to exit")
    _clients(p, USER, 4, 20, errors)
    assert errors == []
