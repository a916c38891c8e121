"""PostgreSQL stopped with `pg_ctl stop -m immediate` under pgbench load, then started again, on a
cluster of its own (the session cluster is never stopped).

What the pooler guarantees: a client whose server died gets 57P01 (PostgreSQL's own FATAL, when
it could send one) and/or 08006 and is closed; a client that needs a server while PostgreSQL is
down waits for it, trying to log a server in again (login_retry.py), and is served once
PostgreSQL is back within its rule's pool_timeout, or gets 08006 `failed to connect to remote
server` when pool_timeout has passed; the pooler stays up; once PostgreSQL is back a new pgbench
run completes with no failed transaction; and no pool slot leaks (the console's server counts,
SHOW SERVERS and SHOW POOLS, match pg_stat_activity).
"""
from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import threading

import psycopg
import psycopg2
import pytest

from scripts.pgcluster import PgCluster
from scripts.pooler import PoolerProcess
from tests.integration.conftest import (assert_alive, backends, ensure_roles, odyssey_config, odyssey_text, rule,
                                        scalar, wait_for)
from tests.integration.faultproxy import FaultProxy
from tests.integration.test_faults_backend import console_servers
from tests.integration.wire import Wire, errors_in, query

USER = "trust_user"          # pool_timeout 30 s: rides through the restart
SHORT = "short_wait_user"    # pool_timeout 1 s: PostgreSQL stays down longer than that
WAITER = "down_wait_user"    # the session PostgreSQL behind a proxy that refuses connections


@pytest.fixture
def own_pg():
    cluster = PgCluster()
    try:
        cluster.init().start().create_roles()
        cluster.psql(f"CREATE ROLE {SHORT} LOGIN; GRANT ALL ON DATABASE db1 TO {SHORT};")
        # the test clusters commit asynchronously (synchronous_commit off): an immediate stop
        # within the WAL writer's delay would lose the roles just made (a login after the
        # restart then got 28000 'role does not exist'). A checkpoint writes them out
        cluster.psql("CHECKPOINT;")
        yield cluster
    finally:
        cluster.destroy()


def _pgbench(port: int, script: str, seconds: int, clients: int = 6) -> subprocess.Popen:
    return subprocess.Popen(
        ["pgbench", "-n", "-f", script, "-T", str(seconds), "-c", str(clients), "-j", "2",
         "-h", "127.0.0.1", "-p", str(port), "-U", USER, "db1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _backends(pg, user: str = USER) -> int:
    return int(pg.psql(f"select count(*) from pg_stat_activity where usename = '{user}' "
                       "and backend_type = 'client backend'"))


def _pool_servers(p, user: str) -> int:
    """The servers SHOW POOLS counts for `user` (active, idle, used, tested, login)."""
    con = psycopg2.connect(p.dsn("admin", "console"))
    con.autocommit = True
    try:
        cur = con.cursor()
        cur.execute("show pools")
        cols = [d.name for d in cur.description]
        return sum(sum(int(row[i]) for i, c in enumerate(cols) if c.startswith("sv_"))
                   for row in cur.fetchall() if row[cols.index("user")] == user)
    finally:
        con.close()


def _query_in_thread(dsn: str) -> tuple[threading.Thread, dict]:
    """A client logged in now (PostgreSQL up) that runs `select 1` in a thread when started."""
    con = psycopg.connect(dsn, autocommit=True)
    out: dict = {}

    def run():
        try:
            out["value"] = con.execute("select 1").fetchone()[0]
        except psycopg.Error as e:
            out["error"] = e
        finally:
            con.close()

    return threading.Thread(target=run, daemon=True), out


@pytest.mark.timeout(120)
def test_immediate_stop_under_pgbench_load_and_restart(own_pg):
    text = odyssey_config(rule(USER, pool="transaction", pool_size=3, pool_timeout=30000),
                          rule(SHORT, pool="transaction", pool_size=2, pool_timeout=1000),
                          rule("admin", "console", pool="session", storage="local", role="admin"),
                          backend_connect_timeout_ms=2000)
    text += 'storage "local" {\n    type "local"\n}\n'
    p = PoolerProcess(text, pg=own_pg)
    fd, script = tempfile.mkstemp(suffix=".sql")
    os.write(fd, b"select 1;\n")
    os.close(fd)
    bench = None
    try:
        # logged in while PostgreSQL is up (the routes know their parameters); they ask for a
        # server only once it is down
        rider, rider_out = _query_in_thread(p.dsn(USER, "db1"))
        short, short_out = _query_in_thread(p.dsn(SHORT, "db1"))
        sleeper = Wire(p.port)
        assert sleeper.login(USER, "db1") is None
        sleeper.send(query("select pg_sleep(30)"))
        bench = _pgbench(p.port, script, 5)           # 6 clients on the 2 slots left: some wait
        wait_for(lambda: _backends(own_pg) == 3, timeout=10, what="the pool to fill")
        own_pg.stop("immediate")

        # the client whose server died is told and closed
        errors = errors_in(sleeper.read_until_closed(15))
        assert errors and {e["C"] for e in errors} <= {"57P01", "08006"}, errors
        # clients needing a server while PostgreSQL is down wait for it
        rider.start()
        short.start()
        short.join(20)
        assert not short.is_alive()
        # ... up to pool_timeout: then the error they got at once before, and the log says why
        err = short_out.get("error")
        assert err is not None and err.sqlstate == "08006", short_out
        assert "failed to connect to remote server" in str(err)
        assert "PostgreSQL is unreachable, the client waits up to pool_timeout 1000 ms" in p.log()
        assert rider.is_alive(), rider_out           # 30 s: still waiting, no error at once
        assert_alive(p)

        own_pg.start()
        rider.join(40)
        assert rider_out == {"value": 1}              # served once PostgreSQL is back
        assert scalar(p.dsn(SHORT, "db1")) == 1
        # pgbench ends, no hang (its clients on dead servers were cut off, the others rode through)
        out, _ = bench.communicate(timeout=60)
        assert "transactions actually processed" in out, out[-2000:]

        bench = _pgbench(p.port, script, 2)
        out, _ = bench.communicate(timeout=60)
        assert bench.returncode == 0, out[-2000:]
        assert "number of failed transactions: 0" in out or "failed" not in out, out[-2000:]
        # no slot leaked: every server the pooler lists is one PostgreSQL runs, at most pool_size
        for user, size in ((USER, 3), (SHORT, 2)):
            wait_for(lambda: console_servers(p, user) == _pool_servers(p, user) == _backends(own_pg, user),
                     timeout=10, what=f"console and pg_stat_activity to agree on {user}")
            assert _backends(own_pg, user) <= size
        assert_alive(p)
    finally:
        if bench is not None and bench.poll() is None:
            bench.kill()
            bench.wait()
        p.stop()
        os.unlink(script)


# -- what ends the wait for PostgreSQL before pool_timeout ------------------------------------------
@pytest.fixture
def refused(pg, roles):
    """A pooler whose PostgreSQL (the session one, behind a proxy) refuses new connections, and a
    client of a 60 s pool_timeout waiting for it with a query."""
    ensure_roles(pg, WAITER)
    proxy = FaultProxy(pg.host, pg.port)
    text = odyssey_config(rule(WAITER, pool="transaction", pool_size=2, pool_timeout=60000),
                          rule("admin", "console", pool="session", storage="local", role="admin"),
                          backend_connect_timeout_ms=1000, graceful_shutdown_timeout_ms=30000)
    text += 'storage "local" {\n    type "local"\n}\n'
    p = PoolerProcess(text, pg=pg, pg_port=proxy.port)
    w = None
    try:
        assert scalar(p.dsn(WAITER, "db1")) == 1       # the route knows its parameters
        proxy.reset_all()                               # the pooled server is gone ...
        proxy.refuse = True                             # ... and new ones are refused
        w = Wire(p.port)
        assert w.login(WAITER, "db1") is None
        w.send(query("select 1"))
        p.wait_log("PostgreSQL is unreachable, the client waits up to pool_timeout 60000 ms")
        yield p, w
    finally:
        if w is not None:
            w.close()
        p.stop()
        proxy.close()


def _clients(p, user: str) -> list[str]:
    con = psycopg2.connect(p.dsn("admin", "console"))
    con.autocommit = True
    try:
        cur = con.cursor()
        cur.execute("show clients")
        cols = [d.name for d in cur.description]
        return [row[cols.index("id")] for row in cur.fetchall() if row[cols.index("user")] == user]
    finally:
        con.close()


def _no_leak(p, pg) -> None:
    wait_for(lambda: console_servers(p, WAITER) == _pool_servers(p, WAITER) == len(backends(pg, WAITER)) == 0,
             timeout=10, what="no server of the waiting client left")


@pytest.mark.timeout(60)
def test_kill_client_ends_the_wait_for_postgresql(refused, pg):
    p, w = refused
    [victim] = _clients(p, WAITER)
    console = Wire(p.port)
    assert console.login("admin", "console") is None
    assert console.simple_query(f"KILL_CLIENT {victim}") == ([], None, "I")
    console.close()
    errors = errors_in(w.read_until_closed(10))        # not after the 60 s of pool_timeout
    assert errors and (errors[-1]["S"], errors[-1]["C"]) == ("FATAL", "08006"), errors
    odyssey_text(errors[-1]["M"], "Odyssey has dropped the connection")
    _no_leak(p, pg)
    assert_alive(p)


@pytest.mark.timeout(60)
def test_a_client_that_leaves_stops_waiting_for_postgresql(refused, pg):
    p, w = refused
    assert len(_clients(p, WAITER)) == 1
    w.close()
    wait_for(lambda: _clients(p, WAITER) == [], timeout=10, what="the client that left to be gone")
    _no_leak(p, pg)
    assert_alive(p)


@pytest.mark.timeout(60)
def test_graceful_shutdown_ends_the_wait_for_postgresql(refused):
    p, w = refused
    p.signal(signal.SIGTERM)
    errors = errors_in(w.read_until_closed(10))        # not after graceful_shutdown_timeout_ms (30 s)
    assert errors and (errors[-1]["S"], errors[-1]["C"]) == ("FATAL", "57P01"), errors
    assert p.proc.wait(15) == 0
