"""A client that goes silent in the middle of a request while it holds a server
(pool_idle_in_request_timeout_ms), and stray COPY messages that must not take a server.

A transaction pool attaches a server at the first message that needs one. A Parse or Bind with
no Sync after it, half a message, or a COPY FROM STDIN whose data never comes would keep that
server forever; the pooler drops such a client after pool_idle_in_request_timeout_ms with
FATAL 08006, logs it, closes the unfinished server and hands the slot to the next client.
"""
from __future__ import annotations

import struct

import pytest

from tests.integration.conftest import (assert_alive, backends, ensure_roles, module_pooler, odyssey_config,
                                        odyssey_text, rule, scalar, wait_for)
from tests.integration.wire import Wire, errors_in, message, query

DETAIL = "idle in the middle of a request"
LOG_LINE = "drop client idle in the middle of a request on due timeout 1000 ms"
USERS = ("req_user", "req_prep_user", "req_stray_user")


def parse(name: str, sql: str) -> bytes:
    return message(b"P", name.encode() + b"\0" + sql.encode() + b"\0" + struct.pack("!H", 0))


def bind(stmt: str) -> bytes:
    return message(b"B", b"\0" + stmt.encode() + b"\0" + struct.pack("!HHH", 0, 0, 0))


EXECUTE = message(b"E", b"\0" + struct.pack("!I", 0))
SYNC = message(b"S")


@pytest.fixture(scope="module")
def rp(pg, roles):
    ensure_roles(pg, *USERS)
    pg.psql("drop table if exists t_req; create table t_req (id int);"
            + "".join(f"grant all on t_req to {u};" for u in USERS), db="db1")
    text = odyssey_config(
        rule("req_user", pool="transaction", pool_size=1, pool_timeout=5000, pool_idle_in_request_timeout_ms=1000),
        rule("req_prep_user", pool="transaction", pool_size=1, pool_timeout=5000,
             pool_reserve_prepared_statement=True, pool_idle_in_request_timeout_ms=1000),
        # the default timeout (60 s): stray messages must not hold the one server at all
        rule("req_stray_user", pool="transaction", pool_size=1, pool_timeout=3000),
    )
    yield from module_pooler(pg, text)


def _assert_dropped(w: Wire) -> None:
    errors = errors_in(w.read_until_closed(10))
    assert len(errors) == 1, errors
    e = errors[0]
    assert (e["S"], e["C"]) == ("FATAL", "08006"), e
    odyssey_text(e["M"], "Odyssey has dropped the connection")
    assert DETAIL in e.get("D", ""), e


def _next_client_works(rp, user: str) -> None:
    # pool_size 1: the next client gets the slot the dropped one held
    assert scalar(rp.dsn(user, "db1"), "select 41 + 1") == 42


@pytest.mark.timeout(30)
@pytest.mark.parametrize("user,stmt", [("req_user", ""), ("req_prep_user", ""), ("req_prep_user", "s1")])
def test_parse_without_sync_is_cut_off(rp, pg, user, stmt):
    w = Wire(rp.port)
    assert w.login(user, "db1") is None
    w.send(parse(stmt, "select 1"))
    # the Parse attached a server (C Odyssey would buffer it until the Sync): it is held ...
    wait_for(lambda: len(backends(pg, user)) == 1, what="the server the Parse attached")
    _assert_dropped(w)
    # ... and closed with the client, not pooled with an open batch
    _next_client_works(rp, user)
    assert LOG_LINE in rp.log()
    assert_alive(rp)


@pytest.mark.timeout(30)
def test_bind_without_sync_inside_a_transaction_is_cut_off_and_rolled_back(rp, pg):
    w = Wire(rp.port)
    assert w.login("req_user", "db1") is None
    assert w.simple_query("begin; insert into t_req values (7)")[1:] == (None, "T")
    w.send(parse("", "select 1") + bind(""))
    _assert_dropped(w)
    assert scalar(rp.dsn("req_user", "db1"), "select count(*) from t_req where id = 7") == 0


@pytest.mark.timeout(30)
def test_half_sent_message_is_cut_off(rp):
    w = Wire(rp.port)
    assert w.login("req_user", "db1") is None
    w.send(b"Q" + struct.pack("!I", 4 + 40) + b"select 1 /* the rest never ")
    _assert_dropped(w)
    _next_client_works(rp, "req_user")


@pytest.mark.timeout(30)
def test_stalled_copy_from_stdin_is_cut_off(rp):
    w = Wire(rp.port)
    assert w.login("req_user", "db1") is None
    w.send(query("copy t_req from stdin") + message(b"d", b"1\n"))
    tag, _ = w.read_message()
    assert tag == b"G"                       # CopyInResponse: the server waits for the data
    _assert_dropped(w)
    _next_client_works(rp, "req_user")
    assert scalar(rp.dsn("req_user", "db1"), "select count(*) from t_req where id = 1") == 0


@pytest.mark.timeout(30)
def test_a_busy_server_is_not_a_silent_client(rp):
    """The timeout counts only while the server waits for the client: a query that runs longer
    than it, simple or extended, completes."""
    w = Wire(rp.port)
    assert w.login("req_user", "db1") is None
    rows, err, status = w.simple_query("select 1 from pg_sleep(1.5)")
    assert (rows, err, status) == ([["1"]], None, "I")
    w.send(parse("", "select 2 from pg_sleep(1.5)") + bind("") + EXECUTE + SYNC)
    tags = []
    while not tags or tags[-1] != b"Z":
        tags.append(w.read_message()[0])
    assert tags == [b"1", b"2", b"D", b"C", b"Z"]
    w.close()


FLUSH = message(b"H")


@pytest.mark.timeout(30)
@pytest.mark.parametrize("user", ["req_user", "req_prep_user"])
def test_a_flushed_batch_still_running_is_not_a_silent_client(rp, user):
    """psycopg 3's pipeline mode fetches with a Flush and no Sync: while PostgreSQL runs the
    flushed Execute, the client is waiting for it, not the other way round."""
    w = Wire(rp.port)
    assert w.login(user, "db1") is None
    w.send(parse("", "select 4 from pg_sleep(1.5)") + bind("") + EXECUTE + FLUSH)
    tags = [w.read_message()[0] for _ in range(4)]
    assert tags == [b"1", b"2", b"D", b"C"]
    w.send(SYNC)
    assert w.read_message()[0] == b"Z"
    w.close()


@pytest.mark.timeout(30)
def test_a_flushed_batch_fully_answered_then_silence_is_cut_off(rp, pg):
    """With prepared statements (the default in transaction pooling) every request is counted:
    once PostgreSQL has answered all the flushed ones, the silence is the client's."""
    w = Wire(rp.port)
    assert w.login("req_prep_user", "db1") is None
    w.send(parse("", "select 1") + FLUSH)
    assert w.read_message()[0] == b"1"
    _assert_dropped(w)
    _next_client_works(rp, "req_prep_user")


@pytest.mark.timeout(30)
def test_a_batch_completed_in_time_works(rp):
    w = Wire(rp.port)
    assert w.login("req_user", "db1") is None
    w.send(parse("", "select 3"))
    assert w.is_open(wait=0.1)               # well inside the 1000 ms
    w.send(bind("") + EXECUTE + SYNC)
    tags = []
    while not tags or tags[-1] != b"Z":
        tags.append(w.read_message()[0])
    assert tags == [b"1", b"2", b"D", b"C", b"Z"]
    w.close()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("stray", [message(b"d", b"x"), message(b"c"), message(b"f", b"no\0")])
def test_stray_copy_messages_take_no_server(rp, pg, stray):
    """CopyData/CopyDone/CopyFail outside COPY (PostgreSQL ignores them) attach no server: eight
    such clients staying connected leave the route's only server to everyone else."""
    idle = []
    try:
        for _ in range(8):
            w = Wire(rp.port)
            assert w.login("req_stray_user", "db1") is None
            w.send(stray)
            idle.append(w)
        assert all(w.is_open(wait=0.05) for w in idle)
        _next_client_works(rp, "req_stray_user")
        # and each stray client is still served normally afterwards
        assert idle[0].simple_query("select 5") == ([["5"]], None, "I")
    finally:
        for w in idle:
            w.close()
    assert len(backends(pg, "req_stray_user")) <= 1
    assert_alive(rp)

