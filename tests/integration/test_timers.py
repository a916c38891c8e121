"""Cron timers on real servers: min_pool_size pre-opens, pool_ttl and server_lifetime close idle
servers (reference §3.4), counted in pg_stat_activity."""
from __future__ import annotations

import time

import psycopg2
import pytest

from tests.integration.conftest import backends, ensure_roles, rule


def _wait_backends(pg, user: str, want, timeout: float = 8.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        n = len(backends(pg, user))
        if want(n) or time.monotonic() > deadline:
            return n
        time.sleep(0.2)


@pytest.mark.timeout(30)
def test_min_pool_size_pre_opens_idle_servers(pg, odyssey):
    ensure_roles(pg, "minpool_user")
    p = odyssey(rule("minpool_user", pool="transaction", min_pool_size=3))
    with psycopg2.connect(p.dsn("minpool_user", "db1")) as con:   # the route exists once a client came
        con.cursor().execute("select 1")
    assert _wait_backends(pg, "minpool_user", lambda n: n >= 3) == 3


@pytest.mark.timeout(30)
def test_pool_ttl_closes_idle_servers(pg, odyssey):
    ensure_roles(pg, "ttl_user")
    p = odyssey(rule("ttl_user", pool="transaction", pool_ttl=1))
    con = psycopg2.connect(p.dsn("ttl_user", "db1"))
    con.autocommit = True
    cur = con.cursor()
    cur.execute("select pg_backend_pid()")    # (not counted right away: on a loaded machine the
    first = cur.fetchone()[0]                 # 1 s ttl may already have closed it)
    assert _wait_backends(pg, "ttl_user", lambda n: n == 0) == 0
    cur.execute("select pg_backend_pid()")    # a new server is opened on demand
    assert cur.fetchone()[0] != first
    con.close()


@pytest.mark.timeout(30)
def test_server_lifetime_closes_old_idle_servers(pg, odyssey):
    ensure_roles(pg, "lifetime_user")
    p = odyssey(rule("lifetime_user", pool="transaction", server_lifetime=2))
    con = psycopg2.connect(p.dsn("lifetime_user", "db1"))
    con.autocommit = True
    cur = con.cursor()
    cur.execute("select pg_backend_pid()")
    first = cur.fetchone()[0]
    assert _wait_backends(pg, "lifetime_user", lambda n: n == 0) == 0
    cur.execute("select pg_backend_pid()")
    assert cur.fetchone()[0] != first
    con.close()
