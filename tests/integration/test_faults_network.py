"""A stalling, slow or resetting network between the pooler and PostgreSQL (tests/integration/
faultproxy.py sits between them): backend_connect_timeout_ms, query cancel and pool_timeout
behave as configured, clients get PostgreSQL-style errors, and the pool recovers."""
from __future__ import annotations

import struct
import threading

import psycopg
import psycopg2
import pytest

from scripts.pooler import PoolerProcess
from tests.integration.conftest import (assert_alive, backends, ensure_roles, odyssey_config, odyssey_text, rule, scalar,
                                        wait_for)
from tests.integration.faultproxy import FaultProxy
from tests.integration.wire import Wire, decode_row, errors_in, query

USERS = ("net_user", "net_login_user", "net_stall_user")


@pytest.fixture(scope="module")
def net(pg, roles):
    ensure_roles(pg, *USERS)
    proxy = FaultProxy(pg.host, pg.port)
    text = odyssey_config(
        rule("net_user", pool="transaction", pool_size=2, pool_timeout=5000),
        rule("net_login_user", pool="transaction", pool_size=2, pool_timeout=1000),
        rule("net_stall_user", pool="transaction", pool_size=1, pool_timeout=500),
        backend_connect_timeout_ms=500, cancel_timeout_ms=500,
    )
    p = PoolerProcess(text, pg=pg, pg_port=proxy.port)
    try:
        yield p, proxy
        assert_alive(p)
    finally:
        p.stop()
        proxy.close()


@pytest.fixture
def healthy(net):
    """The network is sound again after each test, and stale connections are gone."""
    p, proxy = net
    yield p, proxy
    proxy.blackhole = proxy.refuse = False
    proxy.delay = 0.0
    proxy.cut_after = None


def _read_error(w: Wire, timeout: float = 10) -> dict:
    w.settimeout(timeout)
    while True:
        try:
            tag, body = w.read_message()
        except EOFError:
            raise AssertionError("closed without an error") from None
        if tag == b"E":
            return errors_in([(tag, body)])[0]


@pytest.mark.timeout(30)
def test_blackholed_server_login_is_bounded_by_backend_connect_timeout(healthy):
    p, proxy = healthy
    proxy.blackhole = True                    # connections are accepted, never answered
    # each login is cut off by backend_connect_timeout_ms and tried again until pool_timeout (1 s)
    with pytest.raises(psycopg2.OperationalError) as e:
        scalar(p.dsn("net_login_user", "db1", connect_timeout=10))
    assert "FATAL:  odyssey: c" in str(e.value) and "failed to connect to remote server" in str(e.value)
    assert "failed to connect to the server" in p.log()
    proxy.blackhole = False
    proxy.reset_all()
    assert scalar(p.dsn("net_login_user", "db1")) == 1


@pytest.mark.timeout(30)
def test_refused_server_connection_past_pool_timeout(healthy):
    p, proxy = healthy
    assert scalar(p.dsn("net_login_user", "db1")) == 1  # the route knows its parameters
    proxy.reset_all()                                   # the pooled servers are gone ...
    proxy.refuse = True                                 # ... and new ones are refused
    w = Wire(p.port)
    assert w.login("net_login_user", "db1") is None
    w.send(b"Q\0\0\0\x0dselect 1\0")
    err = _read_error(w)                                # tried again for pool_timeout (1 s), then
    assert err["C"] == "08006", err
    assert "Errno" not in err["M"], err
    w.close()
    proxy.refuse = False
    assert scalar(p.dsn("net_login_user", "db1")) == 1


@pytest.mark.timeout(30)
def test_refused_server_connections_are_waited_out_within_pool_timeout(healthy):
    p, proxy = healthy
    assert scalar(p.dsn("net_user", "db1")) == 1
    proxy.reset_all()
    proxy.refuse = True
    w = Wire(p.port)
    assert w.login("net_user", "db1") is None
    w.send(b"Q\0\0\0\x0dselect 1\0")
    p.wait_log("PostgreSQL is unreachable, the client waits up to pool_timeout 5000 ms")
    proxy.refuse = False                                # PostgreSQL reachable again ...
    w.settimeout(10)
    rows, err, _ = _finish_query(w)
    assert err is None and rows == [["1"]], err         # ... and the waiting client is served
    w.close()


def _finish_query(w: Wire):
    rows, error = [], None
    while True:
        tag, body = w.read_message()
        if tag == b"D":
            rows.append(decode_row(body))
        elif tag == b"E":
            error = errors_in([(tag, body)])[0]
        elif tag == b"Z":
            return rows, error, body.decode()


@pytest.mark.timeout(30)
def test_reset_mid_query_gives_08006_and_the_pool_recovers(healthy, pg):
    p, proxy = healthy
    w = Wire(p.port)
    assert w.login("net_user", "db1") is None
    w.send(b"Q\0\0\0\x18select pg_sleep(20)\0")
    # the query reached PostgreSQL through the proxy; cut every connection with a RST
    wait_for(lambda: any(b[1] == "active" for b in backends(pg, "net_user")), what="the sleep to start")
    proxy.reset_all()
    err = _read_error(w)
    assert (err["S"], err["C"]) == ("ERROR", "08006"), err
    odyssey_text(err["M"], "remote server read/write error")
    assert "Errno" not in err["M"] and "reset" not in err["M"].lower(), err
    w.close()
    assert scalar(p.dsn("net_user", "db1"), "select 2") == 2
    assert "server disconnected (read/write error)" in p.log()


@pytest.mark.timeout(30)
def test_server_stream_ending_mid_row_is_not_followed_by_an_error(healthy, pg):
    """PostgreSQL's stream ends in the middle of a DataRow, as a backend's does when it is
    terminated while blocked sending to a client that reads slowly (it then sends no FATAL,
    which would break the protocol). The client gets every byte relayed and then the end of
    the connection: no ErrorResponse spliced into the row, which it would read as the row's
    remaining bytes. The pool serves the next client."""
    p, proxy = healthy
    w = Wire(p.port)
    assert w.login("net_user", "db1") is None
    assert w.simple_query("select 1") == ([["1"]], None, "I")    # a server is connected
    proxy.cut_after = 50_000
    w.send(query("select repeat('x', 200000)"))
    got = w.read_until_closed(15)
    assert [t for t, _ in got] == [b"T"], got[:3]
    # everything PostgreSQL's stream had, and nothing after it: the rest is the cut row
    assert 5 + len(got[0][1]) + len(w.buf) == 50_000, len(w.buf)
    (length,) = struct.unpack("!I", w.buf[1:5])
    assert w.buf[:1] == b"D" and len(w.buf) < 1 + length
    assert w.buf[11:] == b"x" * (len(w.buf) - 11), w.buf[-200:]
    w.close()
    assert "the client has part of a server message" in p.log()
    assert scalar(p.dsn("net_user", "db1"), "select 5") == 5


@pytest.mark.timeout(30)
def test_slow_network_results_and_cancel(healthy):
    p, proxy = healthy
    proxy.delay = 0.1                            # each chunk, each way
    con = psycopg2.connect(p.dsn("net_user", "db1"))
    try:
        cur = con.cursor()
        cur.execute("select sum(g) from generate_series(1, 1000) g")
        assert cur.fetchone() == (500500,)
        con.rollback()
        timer = threading.Timer(0.8, con.cancel)   # the cancel travels the slow network too
        timer.start()
        with pytest.raises(psycopg2.errors.QueryCanceled):
            cur.execute("select pg_sleep(20)")
        timer.join()
        con.rollback()
        cur.execute("select 3")
        assert cur.fetchone() == (3,)
    finally:
        con.close()


@pytest.mark.timeout(30)
def test_stalled_server_pool_timeout_then_reset(healthy):
    """pool_size 1: while the only server is stalled in a blackholed network, the next client
    gets 53300 after pool_timeout; once the network resets, the stalled client gets 08006 and
    the slot serves again."""
    p, proxy = healthy
    assert scalar(p.dsn("net_stall_user", "db1")) == 1
    w = Wire(p.port)
    assert w.login("net_stall_user", "db1") is None
    # the first client's server is back in the pool once this client could use it
    assert w.simple_query("select 1") == ([["1"]], None, "I")
    proxy.blackhole = True
    w.send(b"Q\0\0\0\x0dselect 1\0")          # never reaches PostgreSQL
    # psycopg 3: libpq (psycopg2) drops the SQLSTATE of a FATAL that arrives mid-query
    with psycopg.connect(p.dsn("net_stall_user", "db1")) as c:
        with pytest.raises(psycopg.Error) as e:
            c.execute("select 1")
    assert e.value.sqlstate == "53300", e.value
    proxy.blackhole = False
    proxy.reset_all()
    err = _read_error(w)
    assert err["C"] == "08006", err
    w.close()
    assert scalar(p.dsn("net_stall_user", "db1"), "select 4") == 4
