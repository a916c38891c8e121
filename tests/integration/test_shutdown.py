"""Graceful shutdown (issue 12, C Odyssey's OD_EGRACEFUL_SHUTDOWN): after SIGTERM the listeners
close, a client inside a transaction may finish it and is then closed with FATAL 57P01, an idle
client is closed at once, the pooler exits 0 when no client is left; graceful_shutdown_timeout_ms
bounds a client that never finishes; max_sigterms_to_die SIGTERMs exit at once.
"""
from __future__ import annotations

import signal

import psycopg2
import pytest

from scripts.pooler import PoolerProcess
from tests.integration.conftest import odyssey_config, one, role_with_table, rule, wait_for

USER = "shutdown_user"
TABLE = "shutdown_t"
SHUTDOWN_TEXT = "Odyssey is shutting down"


@pytest.fixture
def sd_role(pg, roles):
    return role_with_table(pg, USER, TABLE)


def _connect(p, autocommit: bool = True):
    con = psycopg2.connect(p.dsn(USER, "db1"))
    con.autocommit = autocommit
    return con



def _closed_with_shutdown_error(con) -> None:
    """The connection is closed: libpq reports the FATAL 57P01 sent before the close when it
    reads it, or only the closed socket when its write hit the closed connection first (the
    error text is then in the pooler log, which the callers check)."""
    with pytest.raises(psycopg2.Error) as e:
        one(con)
    assert SHUTDOWN_TEXT in str(e.value) or e.value.pgcode in (None, "57P01"), str(e.value)
    con.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("pool,workers", [("transaction", 1), ("session", 1), ("transaction", 2)])
def test_transaction_finishes_then_client_is_closed(pg, sd_role, pool, workers):
    # workers 2: the clients run in worker threads, woken through their channels
    p = PoolerProcess(odyssey_config(rule(USER, "db1", pool=pool), graceful_shutdown_timeout_ms=60000,
                                     workers=workers), pg=pg)
    try:
        busy = _connect(p, autocommit=False)
        one(busy, f"insert into {TABLE} values ('before-{pool}')")
        idle = _connect(p)
        assert one(idle) == 1
        p.signal(signal.SIGTERM)
        p.wait_log("graceful shutdown")
        # the idle client is closed without waiting for the busy one
        wait_for(lambda: p.log().count(SHUTDOWN_TEXT) >= 1, timeout=10, what="the idle client closed")
        _closed_with_shutdown_error(idle)
        # new connections are refused
        with pytest.raises(psycopg2.OperationalError):
            _connect(p).close()
        assert p.proc.poll() is None, p.log()
        # the client inside its transaction is still served and can commit
        one(busy, f"insert into {TABLE} values ('after-{pool}')")
        busy.commit()
        _closed_with_shutdown_error(busy)
        assert p.proc.wait(15) == 0, p.log()
        assert "all clients are gone" in p.log()
        rows = pg.psql(f"select v from {TABLE} where v like '%-{pool}' order by v", db="db1").split()
        assert rows == [f"after-{pool}", f"before-{pool}"]
    finally:
        p.stop()


@pytest.mark.timeout(60)
def test_graceful_shutdown_timeout_bounds_an_unfinished_transaction(pg, sd_role):
    p = PoolerProcess(odyssey_config(rule(USER, "db1"), graceful_shutdown_timeout_ms=1000), pg=pg)
    try:
        busy = _connect(p, autocommit=False)
        one(busy, f"insert into {TABLE} values ('never-committed')")
        p.signal(signal.SIGTERM)
        assert p.proc.wait(20) == 0, p.log()
        assert "timeout reached, dropping 1 client" in p.log()
        with pytest.raises(psycopg2.Error):
            one(busy)
        busy.close()
        assert pg.psql(f"select count(*) from {TABLE} where v = 'never-committed'", db="db1") == "0"
    finally:
        p.stop()


@pytest.mark.timeout(60)
def test_second_sigterm_exits_at_once_with_max_sigterms_to_die_2(pg, sd_role):
    p = PoolerProcess(odyssey_config(rule(USER, "db1"), graceful_shutdown_timeout_ms=600000,
                                     max_sigterms_to_die=2), pg=pg)
    try:
        busy = _connect(p, autocommit=False)
        one(busy, "select 1")
        p.signal(signal.SIGTERM)
        p.wait_log("graceful shutdown")
        assert p.proc.poll() is None, p.log()
        p.signal(signal.SIGTERM)
        assert p.proc.wait(20) == 0, p.log()
        assert "exiting at once" in p.log()
        busy.close()
    finally:
        p.stop()
