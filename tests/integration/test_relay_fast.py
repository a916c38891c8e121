"""The relay's callback-driven fast path against a real PostgreSQL: each hand-over from the hub's
callbacks to the relay's coroutine (a reply the client does not read, a queued attach at
pool_size 1, a timeout found by the sweep, KILL_CLIENT, Terminate, a protocol violation), each
checked by what the client sees and by the server being pooled again (or closed) afterwards."""
from __future__ import annotations

import psycopg2
import pytest

from tests.integration.conftest import backends, ensure_roles, module_pooler, odyssey_config, odyssey_text, rule
from tests.integration.wire import Wire, parse_fields, query

USER = "fastpath_user"          # transaction pooling, pool_size 1
TX_USER = "fastpath_tx_user"    # pool_idle_in_transaction_timeout 10 s (the fast path's sweep ends it)
CONSOLE = 'storage "local" {\n    type "local"\n}\n'


@pytest.fixture(scope="module")
def fp(pg, roles):
    ensure_roles(pg, USER, TX_USER)
    text = odyssey_config(
        rule(USER, "db1", pool="transaction", pool_size=1),
        rule(TX_USER, "db1", pool="transaction", pool_idle_in_transaction_timeout=10),
        rule("default", "console", pool="session", storage="local", role="admin"),
    ) + CONSOLE
    yield from module_pooler(pg, text)


def _login(p, user=USER) -> Wire:
    w = Wire(p.port, timeout=10)
    assert w.login(user, "db1") is None
    return w


def _pid(w: Wire) -> str:
    rows, err, status = w.simple_query("select pg_backend_pid()")
    assert err is None and status == "I", err
    return rows[0][0]


def _fatal(w: Wire) -> dict:
    got = w.read_until_closed(20)
    errs = [parse_fields(m[1]) for m in got if m[0] == b"E"]
    assert errs and errs[-1]["S"] == "FATAL", got
    return errs[-1]


@pytest.mark.timeout(60)
def test_a_reply_the_client_reads_late_arrives_whole(fp):
    """About 8 MB the client does not read at first: the fast path's write stops short and the
    coroutine writes the rest; the server is pooled again and the session goes on."""
    w = _login(fp)
    try:
        pid = _pid(w)
        w.send(query("select repeat('x', 1000000) from generate_series(1, 8)"))
        rows = []
        while True:
            tag, body = w.read_message()
            if tag == b"D":
                rows.append(body)
            elif tag == b"Z":
                break
        assert len(rows) == 8 and all(r.endswith(b"x" * 1000) and len(r) == 2 + 4 + 1000000 for r in rows)
        assert _pid(w) == pid                      # pool_size 1: the same server, reset and reused
    finally:
        w.close()


@pytest.mark.timeout(60)
def test_a_second_client_queues_for_the_only_server(fp):
    a, b = _login(fp), _login(fp)
    try:
        assert a.simple_query("begin")[2] == "T"
        b.send(query("select 2"))                  # no idle server: the coroutine queues
        assert b.is_open(0.3)                      # nothing yet: it waits
        assert a.simple_query("commit")[2] == "I"
        tag, body = b.read_message()
        while tag != b"D":
            tag, body = b.read_message()
        assert body.endswith(b"2")
        while tag != b"Z":
            tag, body = b.read_message()
        assert a.simple_query("select 3")[0] == [["3"]]
    finally:
        a.close()
        b.close()


@pytest.mark.timeout(60)
def test_idle_in_transaction_timeout_ends_a_fast_path_wait(fp, pg):
    w = _login(fp, TX_USER)
    try:
        assert w.simple_query("begin")[2] == "T"
        err = _fatal(w)                            # after 10 to 11 s (the per-thread sweep)
        assert err["C"] == "08006"
        assert "idle in transaction timeout" in err.get("D", ""), err
    finally:
        w.close()


def _client_ids(p) -> set[str]:
    con = psycopg2.connect(p.dsn("admin", "console"))
    con.autocommit = True
    try:
        with con.cursor() as cur:
            cur.execute("SHOW CLIENTS")
            names = [d.name for d in cur.description]
            return {r["id"] for r in (dict(zip(names, row)) for row in cur.fetchall()) if r["user"] == USER}
    finally:
        con.close()


@pytest.mark.timeout(60)
def test_kill_client_reaches_a_fast_path_client_holding_a_server(fp):
    before = _client_ids(fp)
    w = _login(fp)
    [cid] = _client_ids(fp) - before
    try:
        pid = _pid(w)
        assert w.simple_query("begin")[2] == "T"
        con = _login_console(fp)
        assert con.simple_query(f"KILL_CLIENT {cid}") == ([], None, "I")
        con.close()
        err = _fatal(w)
        assert err["C"] == "08006"
        odyssey_text(err["M"], "Odyssey has dropped the connection")
    finally:
        w.close()
    other = _login(fp)
    try:
        assert _pid(other) == pid                  # its server was rolled back and pooled
    finally:
        other.close()


def _login_console(p) -> Wire:
    con = Wire(p.port)
    assert con.login("admin", "console") is None
    return con


@pytest.mark.timeout(60)
def test_terminate_ends_the_session_and_keeps_the_server(fp, pg):
    w = _login(fp)
    pid = _pid(w)
    w.send(b"X\x00\x00\x00\x04")
    assert w.read_until_closed(10) == []
    w.close()
    other = _login(fp)
    try:
        assert _pid(other) == pid
        assert [r[0] for r in backends(pg, USER)] == [int(pid)]
    finally:
        other.close()


@pytest.mark.timeout(60)
def test_a_protocol_violation_is_fatal_and_the_pooler_goes_on(fp):
    w = _login(fp)
    try:
        pid = _pid(w)
        w.send(b"\x01\x00\x00\x00\x04")
        err = _fatal(w)
        assert err["C"] == "08P01"
    finally:
        w.close()
    other = _login(fp)
    try:
        assert _pid(other) == pid
    finally:
        other.close()
