"""PostgreSQL stopped with `pg_ctl stop -m immediate` under pgbench load, then started again, on a
cluster of its own (the session cluster is never stopped).

What the pooler guarantees: a client whose server died gets 57P01 (PostgreSQL's own FATAL, when
it could send one) and/or 08006 and is closed; a client that needs a server while PostgreSQL is
down gets 08006 at once rather than hanging; the pooler stays up; once PostgreSQL is back a new
pgbench run completes with no failed transaction; and no pool slot leaks (the console's server
count matches pg_stat_activity).
"""
from __future__ import annotations

import os
import subprocess
import tempfile
import time

import psycopg
import pytest

from scripts.pgcluster import PgCluster
from scripts.pooler import PoolerProcess
from tests.integration.conftest import assert_alive, odyssey_config, rule, scalar, wait_for
from tests.integration.test_faults_backend import console_servers
from tests.integration.wire import Wire, errors_in, query

USER = "trust_user"


@pytest.fixture
def own_pg():
    cluster = PgCluster()
    try:
        cluster.init().start().create_roles()
        yield cluster
    finally:
        cluster.destroy()


def _pgbench(port: int, script: str, seconds: int, clients: int = 6) -> subprocess.Popen:
    return subprocess.Popen(
        ["pgbench", "-n", "-f", script, "-T", str(seconds), "-c", str(clients), "-j", "2",
         "-h", "127.0.0.1", "-p", str(port), "-U", USER, "db1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _backends(pg) -> int:
    return int(pg.psql(f"select count(*) from pg_stat_activity where usename = '{USER}' "
                       "and backend_type = 'client backend'"))


@pytest.mark.timeout(120)
def test_immediate_stop_under_pgbench_load_and_restart(own_pg):
    text = odyssey_config(rule(USER, pool="transaction", pool_size=3, pool_timeout=10000),
                          rule("admin", "console", pool="session", storage="local", role="admin"),
                          backend_connect_timeout_ms=2000)
    text += 'storage "local" {\n    type "local"\n}\n'
    p = PoolerProcess(text, pg=own_pg)
    fd, script = tempfile.mkstemp(suffix=".sql")
    os.write(fd, b"select 1;\n")
    os.close(fd)
    bench = None
    try:
        sleeper = Wire(p.port)
        assert sleeper.login(USER, "db1") is None
        sleeper.send(query("select pg_sleep(30)"))
        bench = _pgbench(p.port, script, 8)           # 6 clients on the 2 slots left: some wait
        wait_for(lambda: _backends(own_pg) == 3, timeout=10, what="the pool to fill")
        time.sleep(1.0)
        own_pg.stop("immediate")

        # the client whose server died is told and closed
        errors = errors_in(sleeper.read_until_closed(15))
        assert errors and {e["C"] for e in errors} <= {"57P01", "08006"}, errors
        # a client needing a server while PostgreSQL is down gets 08006 at once, not a hang
        with psycopg.connect(p.dsn(USER, "db1"), autocommit=True) as c:
            with pytest.raises(psycopg.Error) as e:
                c.execute("select 1")
        assert e.value.sqlstate == "08006", e.value
        assert "failed to connect to remote server" in str(e.value)
        out, _ = bench.communicate(timeout=60)        # pgbench ends (its clients fail), no hang
        assert bench.returncode != 0, out[-2000:]    # its clients on dead servers were cut off
        assert_alive(p)

        own_pg.start()

        def works():
            try:
                return scalar(p.dsn(USER, "db1", connect_timeout=3)) == 1
            except Exception:
                return False

        wait_for(works, timeout=20, interval=0.2, what="service after the restart")
        bench = _pgbench(p.port, script, 3)
        out, _ = bench.communicate(timeout=60)
        assert bench.returncode == 0, out[-2000:]
        assert "number of failed transactions: 0" in out or "failed" not in out, out[-2000:]
        # no slot leaked: every server the pooler lists is one PostgreSQL runs, at most pool_size
        wait_for(lambda: console_servers(p, USER) == _backends(own_pg), timeout=10,
                 what="console and pg_stat_activity to agree")
        assert _backends(own_pg) <= 3
        assert_alive(p)
    finally:
        if bench is not None and bench.poll() is None:
            bench.kill()
            bench.wait()
        p.stop()
        os.unlink(script)
