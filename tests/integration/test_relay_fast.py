"""The relay's callback-driven fast path against a real PostgreSQL: each hand-over from the hub's
callbacks to the relay's coroutine (a reply the client does not read, a queued attach at
pool_size 1, a timeout found by the sweep, KILL_CLIENT, Terminate, a protocol violation), each
checked by what the client sees and by the server being pooled again (or closed) afterwards."""
from __future__ import annotations

import psycopg2
import pytest

from tests.integration.conftest import (backends, console_client_ids, ensure_roles, module_pooler, odyssey_config,
                                        odyssey_text, rule)
from tests.integration.wire import Wire, parse_fields, query

USER = "fastpath_user"          # transaction pooling, pool_size 1
TX_USER = "fastpath_tx_user"    # pool_idle_in_transaction_timeout 10 s (the fast path's sweep ends it)
Q_USER = "fastpath_q_user"      # pool_size 1 for the queue tests (their own route)
TO_USER = "fastpath_to_user"    # pool_size 1, pool_timeout 300 ms
CONSOLE = 'storage "local" {\n    type "local"\n}\n'


@pytest.fixture(scope="module")
def fp(pg, roles):
    ensure_roles(pg, USER, TX_USER, Q_USER, TO_USER)
    text = odyssey_config(
        rule(USER, "db1", pool="transaction", pool_size=1),
        rule(TX_USER, "db1", pool="transaction", pool_idle_in_transaction_timeout=10),
        rule(Q_USER, "postgres", pool="transaction", pool_size=1, pool_timeout=0),
        rule(TO_USER, "db1", pool="transaction", pool_size=1, pool_timeout=300),
        rule("default", "console", pool="session", storage="local", role="admin"),
    ) + CONSOLE
    yield from module_pooler(pg, text)


def _login(p, user=USER) -> Wire:
    w = Wire(p.port, timeout=10)
    assert w.login(user, "postgres" if user == Q_USER else "db1") is None
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
        rows, _ = _reply_rows(w)
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
    return set(console_client_ids(p, USER))


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


# -- the queued attach continued in the hub (router.queue_now, relay._on_handed) ---------------

def _console_rows(p, what: str) -> list[dict]:
    con = psycopg2.connect(p.dsn("admin", "console"))
    con.autocommit = True
    try:
        with con.cursor() as cur:
            cur.execute(what)
            names = [d.name for d in cur.description]
            return [dict(zip(names, row)) for row in cur.fetchall()]
    finally:
        con.close()


def _waiting(p, user=Q_USER) -> int:
    """The user's clients queued for a server (SHOW CLIENTS state `queue`)."""
    return sum(1 for r in _console_rows(p, "SHOW CLIENTS") if r["user"] == user and r["state"] == "queue")


def _maxwait_us(p, user=Q_USER) -> int:
    return sum(int(r["maxwait"]) * 1000000 + int(r["maxwait_us"])
               for r in _console_rows(p, "SHOW POOLS") if r["user"] == user)


def _until(cond, what: str):
    import time
    for _ in range(500):
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(what)


def _reply_rows(w: Wire) -> tuple[list[bytes], str]:
    rows = []
    while True:
        tag, body = w.read_message()
        if tag == b"D":
            rows.append(body)
        elif tag == b"Z":
            return rows, body.decode()


@pytest.mark.timeout(60)
def test_queued_clients_are_served_in_order_and_a_killed_one_leaves_the_queue(fp, pg):
    """pool_size 1: three clients queue behind a transaction (SHOW CLIENTS shows them), the
    second is killed while queued; the others get the server in the order they queued."""
    holder = _login(fp, Q_USER)
    clients = [_login(fp, Q_USER) for _ in range(3)]
    try:
        pid = _pid(holder)
        assert holder.simple_query("begin")[2] == "T"
        for i, w in enumerate(clients):
            w.send(query(f"begin; select {i}") if i == 0 else query(f"select {i}"))
            _until(lambda: _waiting(fp) == i + 1, f"client {i} queued")
        assert _maxwait_us(fp) > 0                 # SHOW POOLS: the first one's wait so far
        victim = clients[1]
        port = victim.sock.getsockname()[1]
        [vid] = [r["id"] for r in _console_rows(fp, "SHOW CLIENTS") if r["user"] == Q_USER and r["port"] == port]
        con = _login_console(fp)
        assert con.simple_query(f"KILL_CLIENT {vid}") == ([], None, "I")
        con.close()
        err = _fatal(victim)
        assert err["C"] == "08006"
        _until(lambda: _waiting(fp) == 2, "the killed client left the queue")
        assert holder.simple_query("commit")[2] == "I"
        rows, status = _reply_rows(clients[0])      # the first queued gets the server ...
        assert rows[-1].endswith(b"0") and status == "T"
        assert clients[2].is_open(0.3) and _waiting(fp) == 1    # ... and keeps it: the third waits
        assert clients[0].simple_query("commit")[2] == "I"
        rows, status = _reply_rows(clients[2])
        assert rows[-1].endswith(b"2") and status == "I"
        assert _pid(clients[2]) == pid             # one server all along, reset and reused
        assert [r[0] for r in backends(pg, Q_USER)] == [int(pid)]
    finally:
        holder.close()
        for w in clients:
            w.close()


@pytest.mark.timeout(60)
def test_a_handed_over_server_with_other_params_is_deployed_for_the_queued_client(fp, pg):
    """pool_size 1, two clients with their own application_name: the holder's commit (the reply
    walk's detach) hands the server to the queued one, whose continuation, run by that walk,
    needs the coroutine to deploy its params first; both see their own value after."""
    holder = Wire(fp.port, timeout=10)
    queued = Wire(fp.port, timeout=10)
    try:
        assert holder.login(Q_USER, "postgres", application_name="holder_app") is None
        assert queued.login(Q_USER, "postgres", application_name="queued_app") is None
        pid = _pid(holder)
        assert holder.simple_query("begin")[2] == "T"
        queued.send(query("select current_setting('application_name')"))
        _until(lambda: _waiting(fp) == 1, "queued")
        assert holder.simple_query("commit")[2] == "I"
        rows, status = _reply_rows(queued)
        assert rows[-1].endswith(b"queued_app") and status == "I"
        assert holder.simple_query("select current_setting('application_name')")[0] == [["holder_app"]]
        assert queued.simple_query("select current_setting('application_name')")[0] == [["queued_app"]]
        assert _pid(queued) == pid and _waiting(fp) == 0
    finally:
        holder.close()
        queued.close()


@pytest.mark.timeout(60)
def test_pool_timeout_expires_for_a_queued_client(fp, pg):
    holder, waiter = _login(fp, TO_USER), _login(fp, TO_USER)
    try:
        pid = _pid(holder)
        assert holder.simple_query("begin")[2] == "T"
        waiter.send(query("select 1"))
        err = _fatal(waiter)                       # after pool_timeout's 300 ms
        assert err["C"] == "53300"
        odyssey_text(err["M"], f"too many active clients for user (pool_size for user db1.{TO_USER} reached 1)")
        assert _waiting(fp, TO_USER) == 0
        assert holder.simple_query("commit")[2] == "I"
        other = _login(fp, TO_USER)
        try:
            assert _pid(other) == pid              # nothing leaked, the server pooled again
        finally:
            other.close()
    finally:
        holder.close()
        waiter.close()


@pytest.mark.timeout(60)
def test_a_paused_route_serves_queued_clients_on_resume(fp, pg):
    """One client queued before PAUSE (the hub's callback queue), one after (the coroutine's
    queue): the server freed while paused goes idle; RESUME serves both, in queue order."""
    holder, early, late = _login(fp, Q_USER), _login(fp, Q_USER), _login(fp, Q_USER)
    con = _login_console(fp)
    try:
        assert holder.simple_query("begin")[2] == "T"
        early.send(query("begin; select 'early'"))
        _until(lambda: _waiting(fp) == 1, "early queued")
        assert con.simple_query("PAUSE postgres") == ([], None, "I")
        late.send(query("select 'late'"))
        _until(lambda: _waiting(fp) == 2, "late queued")
        assert holder.simple_query("commit")[2] == "I"
        assert early.is_open(0.3) and _waiting(fp) == 2           # paused: nobody served
        assert con.simple_query("RESUME postgres") == ([], None, "I")
        rows, status = _reply_rows(early)
        assert rows[-1].endswith(b"early") and status == "T"
        assert late.is_open(0.3) and _waiting(fp) == 1
        assert early.simple_query("commit")[2] == "I"
        rows, status = _reply_rows(late)
        assert rows[-1].endswith(b"late") and status == "I"
    finally:
        con.simple_query("RESUME")
        con.close()
        for w in (holder, early, late):
            w.close()
