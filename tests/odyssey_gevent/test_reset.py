"""reset.reset without PostgreSQL: for each state a server can be released in, whether it is
closed or reused and exactly which queries a scripted fake server receives (Odyssey reset.c;
docs/architecture.md "Reset")."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
from gevent import socket as gsocket

import machinarium as mm
from kiwi import be_read, be_write
from kiwi.header import BE, FE
from odyssey_gevent import reset
from odyssey_gevent.config import DISCARD_ALL_QUERY, SMART_DISCARD_QUERY
from odyssey_gevent.config.model import Config, Endpoint, Rule
from odyssey_gevent.io import FE_LIMITS, read_message
from odyssey_gevent.logger import Logger
from odyssey_gevent.prepared import ServerStatements
from odyssey_gevent.route import Route
from odyssey_gevent.server import Server

pytestmark = pytest.mark.timeout(10)


# ----------------------------------------------------------------------------------------------
# harness

def _ok(tag="OK", status=b"I") -> bytes:
    return be_write.command_complete(tag) + be_write.ready_for_query(status)


class FakePg:
    """Answers every simple Query on `io` with answers[sql] (default CommandComplete +
    ReadyForQuery 'I') and records the queries; a None answer means stay silent."""

    def __init__(self, io, answers=None):
        self.io = io
        self.queries = []
        self.answers = answers or {}
        self.co = mm.Coroutine(self._run, name="fake-pg")

    def _run(self):
        while True:
            try:
                t, payload = read_message(self.io, None, FE_LIMITS)
            except OSError:
                return
            if t == FE.TERMINATE:
                return
            assert t == FE.QUERY, chr(t)
            sql = be_read.read_query(payload)
            self.queries.append(sql)
            answer = self.answers.get(sql, _ok())
            if answer is not None:
                self.io.write(answer)


class Setup:
    def __init__(self, pool="session", **rule_kw):
        a, b = gsocket.socketpair()
        self.pooler, self.pg_io = mm.Io(a), mm.Io(b)
        rule_kw.setdefault("pool_reset_timeout_ms", 2000)
        self.rule = Rule(db_name="db", user_name="u", authentication="none", pool=pool, **rule_kw)
        self.server = Server(Route(("db", "u", 0), self.rule, "db", "u"))
        self.server.io = self.pooler
        self.server.key_pid, self.server.key_secret = 1111, 2222
        self.instance = SimpleNamespace(logger=Logger(to_stdout=False),
                                        config=Config(cancel_timeout_ms=200, nodelay=True))
        self.pg = None

    def serve(self, answers=None):
        self.pg = FakePg(self.pg_io, answers)
        return self

    def reset(self, clean=True):
        return reset.reset(self.instance, self.server, clean)

    def in_transaction(self, status=b"T"):
        """The client ran BEGIN: a Query answered by ReadyForQuery 'T'."""
        self.server.proto.send(int(FE.QUERY))
        self.server.proto.receive(int(BE.READY_FOR_QUERY), status)
        assert self.server.in_transaction

    def queries(self):
        """Every query the fake server got: close the pooler side and wait for its EOF."""
        if self.server.io is not None:
            self.server.io.close()
        if self.pg is not None:
            self.pg.co.join(2000)
            return self.pg.queries
        with pytest.raises((mm.ConnectionClosed, OSError)):
            read_message(self.pg_io, 2000, FE_LIMITS)
        return []

    def close(self):
        self.pooler.close()
        self.pg_io.close()


def run(in_machine, fn, **setup_kw):
    def body():
        s = Setup(**setup_kw)
        try:
            return fn(s)
        finally:
            s.close()

    return in_machine(body)


# ----------------------------------------------------------------------------------------------
# closed at once, nothing sent

def test_broken_server_is_closed_without_a_query(in_machine):
    def fn(s):
        s.server.broken = True
        return s.reset(), s.queries()

    assert run(in_machine, fn) == (False, [])


def test_server_without_io_is_closed(in_machine):
    def fn(s):
        s.server.io = None
        return s.reset()

    assert run(in_machine, fn) is False


def test_server_marked_drop_is_closed_and_not_broken(in_machine):
    def fn(s):
        s.server.drop = True
        return s.reset(), s.server.broken, s.queries()

    # drop: a healthy server that gets a polite Terminate, so it is not marked broken
    assert run(in_machine, fn) == (False, False, [])


@pytest.mark.parametrize("copy", [BE.COPY_IN_RESPONSE, BE.COPY_OUT_RESPONSE, BE.COPY_BOTH_RESPONSE])
def test_server_left_in_copy_is_cancelled_and_closed(in_machine, copy):
    """Closed, but cancelled first: PostgreSQL would otherwise go on with the COPY until it next
    touches the closed socket (issue 15: a backend beyond pool_size)."""
    def fn(s):
        pm = CancelListener()
        try:
            s.server.endpoint = pm.endpoint
            s.server.proto.send(int(FE.QUERY))
            s.server.proto.receive(int(copy))
            assert s.server.copy_mode
            ok = s.reset()
            pm.co.join(2000)
            return ok, pm.requests, s.queries()
        finally:
            pm.close()

    assert run(in_machine, fn) == (False, [(1111, 2222)], [])


def test_unclean_server_in_a_batch_is_cancelled_and_closed(in_machine):
    def fn(s):
        pm = CancelListener()
        try:
            s.server.endpoint = pm.endpoint
            s.server.proto.send(int(FE.PARSE))         # a batch the client left without its Sync
            ok = s.reset(clean=False)
            pm.co.join(2000)
            return ok, pm.requests, s.queries()
        finally:
            pm.close()

    assert run(in_machine, fn) == (False, [(1111, 2222)], [])


def test_unclean_server_is_closed(in_machine):
    def fn(s):
        return s.reset(clean=False), s.queries()

    assert run(in_machine, fn) == (False, [])


@pytest.mark.parametrize("status", [b"T", b"E"])
def test_transaction_with_pool_rollback_off_is_closed(in_machine, status):
    def fn(s):
        s.in_transaction(status)
        return s.reset(), s.queries()

    assert run(in_machine, fn, pool_rollback=False) == (False, [])


def test_not_synchronized_with_pool_cancel_off_is_closed(in_machine):
    def fn(s):
        s.server.proto.send(int(FE.QUERY))       # a query still running
        assert not s.server.synchronized
        return s.reset(), s.queries()

    assert run(in_machine, fn, pool_cancel=False) == (False, [])


def test_answers_due_to_the_gone_client_are_dropped(in_machine):
    def fn(s):
        s.server.proto.output = [b"local answer"]
        s.server.drop = True
        s.reset()
        return list(s.server.proto.output or ())

    assert run(in_machine, fn) == []


# ----------------------------------------------------------------------------------------------
# not synchronized: cancel and drain

class CancelListener:
    """A loopback listener standing in for PostgreSQL's postmaster: reads one CancelRequest
    and, if `then` is given, calls it (to end the running query)."""

    def __init__(self, then=None):
        [self.listener] = mm.listen("127.0.0.1", 0)
        self.endpoint = Endpoint("127.0.0.1", self.listener.local[1])
        self.requests = []
        self.co = mm.Coroutine(self._run, then, name="postmaster")

    def _run(self, then):
        io = self.listener.accept(3000)
        try:
            head = io.read(16, 2000)
            msg, _ = be_read.read_startup(bytearray(head))
            self.requests.append((msg.pid, msg.key))
            if then is not None:
                then()
        finally:
            io.close()

    def close(self):
        self.listener.close()


def test_running_query_is_cancelled_drained_and_reset(in_machine):
    def fn(s):
        def end_query():
            s.pg_io.write(be_write.error_response("ERROR", "57014", "canceling statement due to user request")
                          + be_write.ready_for_query(b"I"))

        pm = CancelListener(then=end_query)
        try:
            s.server.endpoint = pm.endpoint
            s.server.proto.send(int(FE.QUERY))     # the client's query, still running
            s.serve()
            ok = s.reset()
            pm.co.join(2000)
            return ok, pm.requests, s.queries()
        finally:
            pm.close()

    ok, requests, queries = run(in_machine, fn)
    assert ok is True
    assert requests == [(1111, 2222)]              # the server's own key, not the client's
    assert queries == [DISCARD_ALL_QUERY]


def test_running_query_that_ignores_the_cancel_is_closed(in_machine):
    def fn(s):
        pm = CancelListener()                      # reads the cancel, the query goes on
        try:
            s.server.endpoint = pm.endpoint
            s.server.proto.send(int(FE.QUERY))
            ok = s.reset()
            pm.co.join(2000)
            return ok, s.server.broken, pm.requests, s.queries()
        finally:
            pm.close()

    assert run(in_machine, fn, pool_reset_timeout_ms=100) == (False, True, [(1111, 2222)], [])


# ----------------------------------------------------------------------------------------------
# ROLLBACK and the reset query

def test_transaction_is_rolled_back_then_discarded(in_machine):
    def fn(s):
        s.in_transaction()
        s.serve()
        ok = s.reset()
        return ok, s.server.tx_status, s.queries()

    assert run(in_machine, fn) == (True, b"I", ["ROLLBACK", DISCARD_ALL_QUERY])


def test_failed_transaction_is_rolled_back_too(in_machine):
    def fn(s):
        s.in_transaction(b"E")
        s.serve()
        return s.reset(), s.queries()

    assert run(in_machine, fn, pool="transaction", pool_discard=False) == (True, ["ROLLBACK"])


def test_idle_server_gets_only_the_reset_query(in_machine):
    def fn(s):
        s.serve()
        return s.reset(), s.queries()

    assert run(in_machine, fn) == (True, [DISCARD_ALL_QUERY])


@pytest.mark.parametrize("failing", ["ROLLBACK", DISCARD_ALL_QUERY])
def test_a_failing_reset_query_closes(in_machine, failing):
    def fn(s):
        s.in_transaction()
        s.serve({failing: be_write.error_response("ERROR", "XX000", "boom") + be_write.ready_for_query(b"I")})
        ok = s.reset()
        return ok, s.server.broken, s.queries()

    ok, broken, queries = run(in_machine, fn)
    assert (ok, broken) == (False, True)
    assert queries[-1] == failing                  # nothing is sent after the failure
    assert queries == (["ROLLBACK"] if failing == "ROLLBACK" else ["ROLLBACK", DISCARD_ALL_QUERY])


def test_server_gone_during_reset_closes(in_machine):
    def fn(s):
        s.pg_io.close()
        ok = s.reset()
        return ok, s.server.broken

    assert run(in_machine, fn) == (False, True)


def test_reset_query_timeout_closes(in_machine):
    def fn(s):
        s.serve({DISCARD_ALL_QUERY: None})        # never answers
        ok = s.reset()
        return ok, s.server.broken, s.queries()

    assert run(in_machine, fn, pool_reset_timeout_ms=50) == (False, True, [DISCARD_ALL_QUERY])


def test_reset_leaving_a_transaction_open_is_not_reused(in_machine):
    def fn(s):
        s.serve({"BEGIN": _ok("BEGIN", b"T")})
        return s.reset(), s.queries()

    assert run(in_machine, fn, pool_discard=False, pool_discard_query="BEGIN") == (False, ["BEGIN"])


# ----------------------------------------------------------------------------------------------
# which reset query, and what the pooler forgets with it

def _statements():
    cache = ServerStatements()
    cache["odyssey_pstmt_1"] = object()
    return cache


def test_session_pooling_without_discard_sends_the_leftovers_query(in_machine):
    def fn(s):
        s.server.params = {"timezone": "Asia/Tokyo"}
        s.server.baseline = {"timezone": "UTC"}
        s.server.prepared = _statements()
        s.serve()
        ok = s.reset()
        return ok, s.queries(), s.server.prepared, s.server.params

    ok, queries, prepared, params = run(in_machine, fn, pool="session", pool_discard=False)
    assert ok and queries == [reset.SESSION_LEFTOVERS_QUERY]
    assert prepared is None
    assert params == {"timezone": "Asia/Tokyo"}    # settings untouched: deploy sets the next client's


@pytest.mark.parametrize("pool", ["transaction", "statement"])
def test_transaction_pooling_without_discard_sends_nothing(in_machine, pool):
    def fn(s):
        s.server.prepared = _statements()
        s.serve()
        return s.reset(), s.queries(), len(s.server.prepared)

    assert run(in_machine, fn, pool=pool, pool_discard=False) == (True, [], 1)


def test_discard_all_restores_baseline_and_forgets_statements(in_machine):
    def fn(s):
        s.server.params = {"timezone": "Asia/Tokyo", "search_path": "x"}
        s.server.baseline = {"timezone": "UTC"}
        cache = s.server.prepared = _statements()
        s.serve()
        ok = s.reset()
        return ok, s.queries(), s.server.params, s.server.prepared is cache, len(cache)

    assert run(in_machine, fn, pool="session") == (True, [DISCARD_ALL_QUERY], {"timezone": "UTC"}, True, 0)


def test_transaction_pooling_discard_becomes_smart_discard_and_keeps_statements(in_machine):
    def fn(s):
        s.server.params = {"timezone": "Asia/Tokyo"}
        s.server.baseline = {"timezone": "UTC"}
        s.server.prepared = _statements()
        s.serve()
        ok = s.reset()
        return ok, s.queries(), s.server.params, len(s.server.prepared)

    assert run(in_machine, fn, pool="transaction") == (True, [SMART_DISCARD_QUERY], {"timezone": "UTC"}, 1)


def test_transaction_pooling_discard_without_reserved_statements_is_discard_all(in_machine):
    def fn(s):
        s.serve()
        return s.reset(), s.queries()

    assert run(in_machine, fn, pool="transaction", pool_reserve_prepared_statement=False) == \
        (True, [DISCARD_ALL_QUERY])


def test_session_pool_smart_discard(in_machine):
    def fn(s):
        s.serve()
        return s.reset(), s.queries()

    assert run(in_machine, fn, pool="session", pool_discard=False, pool_smart_discard=True) == \
        (True, [SMART_DISCARD_QUERY])


@pytest.mark.parametrize("query, cleared", [
    ("DISCARD ALL; SELECT 1", True),
    ("discard all", True),
    ("DEALLOCATE ALL", True),
    ("deallocate all; reset all", True),
    ("RESET ALL", False),
    ("SELECT pg_advisory_unlock_all()", False),
])
def test_custom_reset_query_forgets_params_and_maybe_statements(in_machine, query, cleared):
    def fn(s):
        s.server.params = {"timezone": "Asia/Tokyo"}
        s.server.baseline = {"timezone": "UTC"}
        s.server.prepared = _statements()
        s.serve()
        ok = s.reset()
        return ok, s.queries(), s.server.params, len(s.server.prepared)

    ok, queries, params, left = run(in_machine, fn, pool="transaction", pool_discard=False,
                                    pool_discard_query=query)
    assert ok and queries == [query]
    assert params == {}               # unknown effect on settings: deploy sets everything again
    assert left == (0 if cleared else 1)
