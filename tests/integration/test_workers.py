"""`workers 2`: clients are handed to two worker machines round-robin, servers move between them
(reference §1.3 workers). pgbench and psycopg2 through one pooler; pool_size holds across
workers; a CancelRequest arriving on the other worker still reaches the query.
"""
from __future__ import annotations

import subprocess
import threading
import time

import psycopg2
import psycopg2.errors
import pytest

from tests.integration.conftest import backends, ensure_roles, module_pooler, odyssey_config, rule

USER = "workers_user"
POOL_SIZE = 3


@pytest.fixture(scope="module")
def workers_pooler(pg, roles):
    ensure_roles(pg, USER)
    pg.psql("select 1 from pg_database where datname = 'wdb'") or pg.psql(f"CREATE DATABASE wdb OWNER {USER};")
    subprocess.run(["pgbench", "-i", "-q", "-s", "1", "-h", pg.host, "-p", str(pg.port), "-U", USER, "wdb"],
                   check=True, capture_output=True, timeout=60)
    text = odyssey_config(rule(USER, "wdb", pool="transaction", pool_size=POOL_SIZE, pool_timeout=20000),
                          workers=2)
    yield from module_pooler(pg, text)


@pytest.mark.timeout(40)
def test_pgbench_transaction_mode(pg, workers_pooler):
    peak = [0]
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            peak[0] = max(peak[0], len(backends(pg, USER)))
            time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        out = subprocess.run(["pgbench", "-n", "-M", "simple", "-c", "8", "-j", "2", "-T", "2",
                              "-h", "127.0.0.1", "-p", str(workers_pooler.port), "-U", USER, "wdb"],
                             capture_output=True, text=True, timeout=30)
    finally:
        stop.set()
        watcher.join(5)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "number of failed transactions: 0" in out.stdout or "failed" not in out.stdout, out.stdout
    processed = [ln for ln in out.stdout.splitlines() if "number of transactions actually processed" in ln]
    assert processed and int(processed[0].split(":")[1].split("/")[0]) > 50, out.stdout
    assert 1 <= peak[0] <= POOL_SIZE
    assert len(backends(pg, USER)) <= POOL_SIZE


@pytest.mark.timeout(30)
def test_psycopg2_clients_share_the_pool(pg, workers_pooler):
    errors = []

    def client(i: int):
        try:
            con = psycopg2.connect(workers_pooler.dsn(USER, "wdb", application_name=f"w{i}"))
            con.autocommit = True
            with con.cursor() as cur:
                for j in range(20):
                    cur.execute("select %s::int + %s::int", (i, j))
                    assert cur.fetchone() == (i + j,)
                cur.execute("begin; select pg_sleep(0.05); commit")
            con.close()
        except Exception as e:           # reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(25)
    assert not errors
    assert len(backends(pg, USER)) <= POOL_SIZE


@pytest.mark.timeout(40)
def test_cancel_across_workers(workers_pooler):
    """Accepted sockets go to the workers round-robin, so a client's CancelRequest (the next
    accept) lands on the other worker than the client running the query."""
    for _ in range(3):
        con = psycopg2.connect(workers_pooler.dsn(USER, "wdb"))
        con.autocommit = True
        try:
            cur = con.cursor()
            timer = threading.Timer(0.3, con.cancel)
            timer.start()
            t0 = time.monotonic()
            with pytest.raises(psycopg2.errors.QueryCanceled):
                cur.execute("select pg_sleep(10)")
            timer.join()
            assert time.monotonic() - t0 < 5
            cur.execute("select 7")
            assert cur.fetchone() == (7,)
        finally:
            con.close()
