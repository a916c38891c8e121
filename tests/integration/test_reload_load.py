"""RELOAD/SIGHUP under load (issue 12): pgbench (8 clients, transaction pooling) runs while the
config is rewritten and reloaded several times: a route is added, pgbench's own route is
changed (pool_size), a route pgbench does not use is removed, and an unchanged file is reloaded.
pgbench must report no failed transaction, and every change must take effect for new clients.
"""
from __future__ import annotations

import re
import string
import subprocess

import psycopg
import psycopg2
import pytest

from scripts.pooler import PoolerProcess
from tests.integration.conftest import assert_alive, ensure_roles, odyssey_config, rule, wait_for

BENCH, ADDED, REMOVED = "reload_a", "reload_c", "reload_d"
TABLE = "reload_t"
SCRIPT = f"""\\set v random(1, 1000000)
BEGIN;
INSERT INTO {TABLE} VALUES (:v);
SELECT count(*) FROM {TABLE} WHERE v = :v;
COMMIT;
"""


@pytest.fixture
def reload_roles(pg, roles):
    ensure_roles(pg, BENCH, ADDED, REMOVED)
    pg.psql(f"drop table if exists {TABLE}; create table {TABLE} (v int); grant all on {TABLE} to {BENCH};",
            db="db1")


def _config(*users: str, bench_pool_size: int = 4) -> str:
    rules = [rule(BENCH, "db1", pool="transaction", pool_size=bench_pool_size, pool_timeout=1000)]
    rules += [rule(u, "db1", pool="transaction", pool_size=2) for u in users]
    return odyssey_config(*rules)


def _reload(p, pg, text: str, nth: int) -> None:
    """Write the config (with the pooler's ${...} values) and SIGHUP; wait for the nth reload."""
    with open(p.config_path, "w") as f:
        f.write(string.Template(text).safe_substitute(port=p.port, tmp=p.tmp, pg_host=pg.host,
                                                      pg_port=pg.port, pg_sockdir=pg.sockdir))
    p.signal(1)      # SIGHUP
    wait_for(lambda: p.log().count("reconfigure rules") >= nth, timeout=10, what=f"reload {nth}")


def _select(p, user: str):
    con = psycopg2.connect(p.dsn(user, "db1"), connect_timeout=10)
    try:
        with con.cursor() as cur:
            cur.execute("select current_user")
            return cur.fetchone()[0]
    finally:
        con.close()


@pytest.mark.timeout(90)
def test_reloads_under_pgbench(pg, reload_roles, tmp_path):
    p = PoolerProcess(_config(REMOVED), pg=pg)
    bench = None
    held = []
    try:
        script = tmp_path / "tx.sql"
        script.write_text(SCRIPT)
        bench = subprocess.Popen(
            ["pgbench", "-n", "-c", "8", "-j", "2", "-T", "5", "-f", str(script),
             "-h", "127.0.0.1", "-p", str(p.port), "-U", BENCH, "db1"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wait_for(lambda: int(pg.psql(f"select count(*) from {TABLE}", db="db1")) > 50, timeout=20,
                 what="pgbench running")
        assert _select(p, REMOVED) == REMOVED
        with pytest.raises(psycopg2.OperationalError, match="is not found"):
            _select(p, ADDED)
        # 1. a route is added
        _reload(p, pg, _config(REMOVED, ADDED), 1)
        assert _select(p, ADDED) == ADDED
        # 2. pgbench's own route changes (its clients keep the old route until they leave)
        _reload(p, pg, _config(REMOVED, ADDED, bench_pool_size=2), 2)
        assert _select(p, BENCH) == BENCH
        # 3. a route pgbench does not use is removed
        _reload(p, pg, _config(ADDED, bench_pool_size=2), 3)
        with pytest.raises(psycopg2.OperationalError, match="is not found"):
            _select(p, REMOVED)
        # 4. the same file again: nothing changes
        _reload(p, pg, _config(ADDED, bench_pool_size=2), 4)
        assert "reconfigure rules: 0 routes" in p.log()
        assert bench.poll() is None, "pgbench ended before the reloads did: they were not under load"
        out, _ = bench.communicate(timeout=40)
        assert bench.returncode == 0, out
        assert "aborted" not in out, out
        processed = re.search(r"number of transactions actually processed: (\d+)", out)
        assert processed and int(processed.group(1)) > 0, out
        failed = re.search(r"number of failed transactions: (\d+)", out)
        assert failed is None or failed.group(1) == "0", out
        # the new pool_size 2 holds for pgbench's user now: a third client inside a transaction
        # waits pool_timeout (1000 ms) for a server and is refused with 53300
        for _ in range(2):
            con = psycopg2.connect(p.dsn(BENCH, "db1"))
            with con.cursor() as cur:
                cur.execute("select 1")        # opens a transaction and keeps its server
            held.append(con)
        # (psycopg 3: libpq keeps the FATAL's SQLSTATE for it, psycopg2 shows only the close)
        third = psycopg.connect(p.dsn(BENCH, "db1"))
        held.append(third)
        with pytest.raises(psycopg.Error) as e:
            third.execute("select 1")
        assert e.value.sqlstate == "53300", str(e.value)
        assert "pool_size for user db1.reload_a reached 2" in str(e.value)
        assert_alive(p)
    finally:
        if bench is not None and bench.poll() is None:
            bench.kill()
            bench.wait()
        for con in held:
            con.close()
        p.stop()
