"""pool_size, pool_timeout and client_max (global and per route)."""
from __future__ import annotations

import threading
import time

import psycopg
import psycopg2
import pytest

from tests.integration.conftest import (backends, module_pooler, odyssey_config, odyssey_text, rule,
                                       wait_for)
from tests.integration.wire import Wire


@pytest.fixture(scope="module")
def limits_pooler(pg, roles):
    text = odyssey_config(
        rule("size_user", pool="transaction", pool_size=2),
        rule("timeout_user", pool="transaction", pool_size=1, pool_timeout=300),
        rule("limit_user", pool="transaction", pool_size=2, client_max=1),
    )
    yield from module_pooler(pg, text)


@pytest.mark.timeout(40)
def test_pool_size_bounds_the_backends(limits_pooler, pg):
    errors, peak, done = [], [0], threading.Event()

    def client(i):
        try:
            con = psycopg2.connect(limits_pooler.dsn("size_user", "db1", application_name=f"size{i}"))
            con.autocommit = True
            try:
                cur = con.cursor()
                for _ in range(2):
                    cur.execute("select pg_sleep(0.3)")
            finally:
                con.close()
        except Exception as e:              # noqa: BLE001 - reported below
            errors.append(repr(e))

    def sampler():
        while not done.is_set():
            peak[0] = max(peak[0], len(backends(pg, "size_user")))
            time.sleep(0.02)

    s = threading.Thread(target=sampler)
    s.start()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    done.set()
    s.join()
    assert errors == []
    assert 1 <= peak[0] <= 2, peak[0]
    # 12 sleeps of 0.3 s on 2 servers take at least 1.8 s: the clients really queued
    assert time.monotonic() - t0 >= 1.7
    assert len(backends(pg, "size_user")) <= 2


@pytest.mark.timeout(30)
def test_pool_timeout_gives_53300(limits_pooler):
    # libpq drops the SQLSTATE of a FATAL that arrives mid-query when the socket then closes, so
    # psycopg2 shows only "server closed the connection" (as it does with C Odyssey); psycopg 3
    # keeps the ErrorResponse it read.
    holder = psycopg2.connect(limits_pooler.dsn("timeout_user", "db1"))
    waiter = psycopg.connect(limits_pooler.dsn("timeout_user", "db1"))
    try:
        holder.cursor().execute("select 1")          # BEGIN + SELECT: holds the only server
        t0 = time.monotonic()
        with pytest.raises(psycopg.Error) as e:
            waiter.execute("select 1")
        waited = time.monotonic() - t0
        assert e.value.sqlstate == "53300", e.value
        odyssey_text(e.value.diag.message_primary or "", "too many active clients for user")
        assert 0.2 <= waited < 5, waited
        holder.rollback()
        # the holder is unaffected and the pool serves a new client once the server is free
        holder.cursor().execute("select 2")
        holder.rollback()
        fresh = psycopg2.connect(limits_pooler.dsn("timeout_user", "db1"))
        fresh.cursor().execute("select 3")
        fresh.close()
    finally:
        holder.close()
        waiter.close()


@pytest.mark.timeout(30)
def test_route_client_max(limits_pooler):
    first = Wire(limits_pooler.port)
    second = Wire(limits_pooler.port)
    try:
        assert first.login("limit_user", "db1") is None
        err = second.login("limit_user", "db1")
        assert err is not None and err["C"] == "53300", err
        odyssey_text(err["M"], "too many client tcp connections (client_max for user db1.limit_user 1)")
        # the first client is unaffected
        rows, error, _ = first.simple_query("select 1")
        assert (rows, error) == ([["1"]], None)
    finally:
        first.close()
        second.close()
    # once the first client leaves, a new one gets in
    def can_login():
        w = Wire(limits_pooler.port)
        try:
            return w.login("limit_user", "db1") is None
        finally:
            w.close()
    wait_for(can_login, timeout=5, what="a client_max slot to free up")


@pytest.mark.timeout(30)
def test_global_client_max(odyssey):
    p = odyssey(rule("tx_user"), client_max=2)
    a, b, c = Wire(p.port), Wire(p.port), Wire(p.port)
    try:
        assert a.login("tx_user", "db1") is None
        assert b.login("tx_user", "db1") is None
        # Odyssey answers right after accept (before the startup packet) or at routing
        try:
            err = c.login("tx_user", "db1")
        except (EOFError, OSError) as e:
            raise AssertionError(f"closed without an ErrorResponse: {e!r}") from None
        assert err is not None, "a third client got in with client_max 2"
        assert err["C"] == "53300", err
        assert "too many" in err["M"] and "global client_max" in err["M"], err
        assert a.simple_query("select 1")[1] is None
        # a client that sends its startup packet at once still reads the error, not a reset
        for _ in range(5):
            d = Wire(p.port)
            try:
                err = d.login("tx_user", "db1")
            except (EOFError, OSError) as e:
                raise AssertionError(f"closed without an ErrorResponse: {e!r}") from None
            finally:
                d.close()
            assert err is not None and err["C"] == "53300", err
    finally:
        for w in (a, b, c):
            w.close()
