"""The relay's callback-driven fast path (Relay._park): every test of test_relay.py again with a
frontend that can attach and detach without waiting (so the hub's callbacks relay, and hand over
to the relay's coroutine only for what may wait), then the hand-overs one by one: a queued
attach, a taken server that needs the coroutine's checks, a write the client does not take, a
detach that may wait, a timeout and a dormancy found by the sweep, a wake-up (KILL_CLIENT)."""
from __future__ import annotations

import sys

import pytest
from gevent import get_hub

import machinarium as mm
import tests.odyssey_gevent.test_relay as base
from kiwi import be_write
from kiwi.protocol import Conversation
from odyssey_gevent import relay as relay_mod
from odyssey_gevent.status import ClientGone, Status
from tests.odyssey_gevent.test_relay import *  # noqa: F401,F403 - every relay test, run on the fast path
from tests.odyssey_gevent.test_relay import Harness, _exchange, _ext, _ext_reply, _q, _reply, nothing_more


class FastFakeFrontend(base.FakeFrontend):
    """FakeFrontend with the fast path's attach_now/detach_now. `queue`: attach_now finds no
    idle server (the coroutine's attach() queues); `check`: it takes one but leaves the checks
    to the coroutine (False); `slow_detach`: detach_now leaves the detach to the coroutine."""

    def __init__(self, client, server_io):
        super().__init__(client, server_io)
        self.now_attaches = 0
        self.now_detaches = 0
        self.taken = []             # what attach(taken=...) was given
        self.queue = self.check = self.slow_detach = False
        self.cleans = []            # (clean passed to detach_now, the relay's server_clean)
        self.relay = None
        self.cb_queue = False       # queue_now queues with a callback (hand() is the hand-over)
        self.cont = None            # ... the continuation it was given
        self.queued_attaches = 0    # attach(queued=True): the coroutine took a queued wait over
        self.left = 0               # leave_queue() calls
        # the relay's inline attach looks at the route's idle list first, then (attach_plain
        # False) calls attach_now
        client.route.idle = [None]
        client.waiter = None        # (and at its queue, for a waiter armed before: queue_now)
        self.detach_plain = False   # the walk calls detach_walked (its inline copy of the plain
                                    # case: test_frontend_fast)
        self.attach_plain = False   # the hand-over asks ready_now (the relay's inline copy of its
                                    # common case: test_frontend_fast)

    def attach(self, taken=None, queued=False):
        self.taken.append(taken)
        if queued:
            self.queued_attaches += 1
            if self.client.killed:
                raise ClientGone(Status.ECLIENT_KILLED, "killed while waiting for a server")
        return super().attach()

    def queue_now(self, client, cont, loop, ident):
        assert client is self.client
        if not self.cb_queue:
            return False
        self.cont = cont
        return None

    def ready_now(self, server):
        return False if self.check else server

    def leave_queue(self):
        self.left += 1

    def hand(self):
        """The hand-over: link the server and run the continuation in the hub."""
        self.attaches += 1
        self.client.server = self.server
        cont, self.cont = self.cont, None
        get_hub().loop.run_callback(cont)

    def attach_now(self):
        # (the relay's inline copy of Frontend.attach_now runs only where route.idle holds a
        # server and attach_plain: test_frontend_fast)
        if self.queue:
            return None
        self.now_attaches += 1
        self.attaches += 1
        self.client.server = self.server
        return False if self.check else self.server

    def detach_walked(self):
        # the reply walk calls it only where the server is clean, owes nothing and is not broken
        # (Frontend.detach_walked leaves those tests out)
        proto = self.client.server.proto
        assert proto.syncs == 0 and not self.client.server.broken
        return self.detach_now(True)

    def detach_now(self, clean=None):
        # the relay passes what it knows of server_clean: it must be what the property says
        self.cleans.append((clean, self.relay.server_clean if self.relay is not None else None))
        if self.slow_detach:
            return False
        self.now_detaches += 1
        super().detach()
        return True


@pytest.fixture(autouse=True)
def fast_frontend(monkeypatch):
    monkeypatch.setattr(base, "FakeFrontend", FastFakeFrontend)


def _harness(pool="transaction", **flags) -> Harness:
    h = Harness(pool)
    h.fe.relay = h.relay
    for k, v in flags.items():
        setattr(h.fe, k, v)
    return h


def test_the_fast_path_attaches_and_detaches_in_the_callbacks(in_machine):
    def body():
        h = _harness()
        try:
            assert h.relay.fast_ok
            for _ in range(3):
                _exchange(h, _q("select 1"), _reply(b"I"))
            assert h.fe.now_attaches == 3 and h.fe.now_detaches == 3 and h.fe.taken == []
            assert h.fe.cleans == [(True, True)] * 3
            assert h.relay.fast and h.relay.waiting        # still parked in the fast path
        finally:
            h.close()
        return True

    assert in_machine(body)


def test_the_park_sets_the_walks_plain_flag_for_its_wait(in_machine, monkeypatch):
    """_park sets walk_plain (the reply walk's one test for its inline detach: Relay.plain_walk)
    for its wait and clears it with `fast` at its end: the walk's detach in the hub sees what
    plain_walk gave, the coroutine's detach after the park sees it cleared. (plain_walk gives a
    falsy 0 here, so the walk's path is the one this frontend takes, and 0 is not False.)"""
    monkeypatch.setattr(relay_mod.Relay, "plain_walk", lambda self: 0)

    def body():
        h = _harness()
        seen = []
        walked, detached = h.fe.detach_walked, h.fe.detach
        h.fe.detach_walked = lambda: seen.append(("hub", h.relay.walk_plain)) or walked()
        h.fe.detach = lambda: seen.append(("coroutine", h.relay.walk_plain)) or detached()
        try:
            _exchange(h, _q("select 1"), _reply(b"I"))
            h.fe.slow_detach = True
            _exchange(h, _q("select 1"), _reply(b"I"))
        finally:
            h.close()
        return seen

    seen = in_machine(body)
    assert seen[0] == ("hub", 0) and seen[0][1] is not False
    assert seen[-1] == ("coroutine", False) and seen[-1][1] is False


@pytest.mark.parametrize("kept, fileio_method, counted", [
    ("c_write", "_fwrite", lambda calls, n: len(calls) == n + 2 and calls[-1] == len(_reply(b"I"))),
    ("c_read", "_fread", lambda calls, n: len(calls) >= n + 2),
])
def test_the_park_keeps_the_clients_io_method_for_its_wait(in_machine, kept, fileio_method, counted):
    """_park keeps the client's FileIO write for the reply walk (Relay.c_write) and its
    readinto for the client callback (Relay.c_read) for its wait, and clears them at its end:
    after the sweep gave the client its FileIO, a wait ended by the coroutine (a detach that
    may wait) and the next park's replies are written, and requests read, through the
    client's FileIO method as it is at that park (here a counting wrapper set between the two:
    fails where the park does not take it, or the walk's write or the callback's read does
    not use it); a relay not parked keeps none, and without a FileIO the reply goes to the
    socket's fd and the request is read from the socket."""
    def body():
        h = _harness()
        calls = []
        method = None
        try:
            assert getattr(h.relay, kept) is None           # not parked yet
            _exchange(h, _q("select 1"), _reply(b"I"))
            assert h.relay.fast and getattr(h.relay, kept) is None     # no FileIO yet
            relay_mod._sweep()
            method = getattr(h.cio, fileio_method)
            assert method is not None and getattr(h.relay, kept) is method
            setattr(h.cio, fileio_method, lambda data: calls.append(len(data)) or method(data))
            h.fe.slow_detach = True                 # this wait ends in the coroutine
            _exchange(h, _q("select 1"), _reply(b"I"))
            h.fe.slow_detach = False
            # the coroutine's detach ran, and it parked again with the wrapper as the method
            assert h.relay.fast and getattr(h.relay, kept) is getattr(h.cio, fileio_method)
            n = len(calls)
            for _ in range(2):
                _exchange(h, _q("select 1"), _reply(b"I"))
            assert counted(calls, n)
        finally:
            if method is not None:
                setattr(h.cio, fileio_method, method)   # (Io.close finds the FileIO through it)
            h.close()
        return True

    assert in_machine(body)


def test_the_park_clears_the_clients_write_at_its_end(in_machine, monkeypatch):
    """Relay.c_write and c_read are None once the park ends (the coroutine relays through
    client.io)."""
    seen = []
    park = relay_mod.Relay._park

    def watched(self, server):
        try:
            return park(self, server)
        finally:
            seen.append((self.fast, self.c_write, self.c_read))
    monkeypatch.setattr(relay_mod.Relay, "_park", watched)

    def body():
        h = _harness()
        try:
            _exchange(h, _q("select 1"), _reply(b"I"))
            relay_mod._sweep()
            h.fe.slow_detach = True
            _exchange(h, _q("select 1"), _reply(b"I"))
        finally:
            h.close()
        return True

    assert in_machine(body)
    assert seen and all(s == (False, None, None) for s in seen)


def test_the_park_sets_the_hand_overs_flags_for_its_wait(in_machine, monkeypatch):
    """_park sets the callbacks' attach flags (Relay.hand_flags) for its wait: the callbacks
    see what hand_flags gave (here marks no frontend would give; hand_plain a falsy 0, so the
    attach is this frontend's attach_now), where a relay not parked has them False."""
    def marks(self):
        self.hand_plain, self.hand_deploy, self.hand_check = 0, 2, 3
    monkeypatch.setattr(relay_mod.Relay, "hand_flags", marks)

    def body():
        h = _harness()
        seen = []
        walked = h.fe.detach_walked
        h.fe.detach_walked = lambda: seen.append((h.relay.hand_plain, h.relay.hand_deploy,
                                                  h.relay.hand_check)) or walked()
        try:
            assert (h.relay.hand_plain, h.relay.hand_deploy, h.relay.hand_check) == (False, False, False)
            _exchange(h, _q("select 1"), _reply(b"I"))
        finally:
            h.close()
        return seen

    assert in_machine(body) == [(0, 2, 3)]


def test_the_callbacks_time_with_the_monotonic_clock(in_machine):
    """The request's and transaction's times and the wait's start are time.monotonic()'s (the
    clock of a server's idle_since and a waiter's wait, which the reply walk's detach sets from
    the same read), not the loop's: read between two reads of it around the exchange."""
    import time

    def body():
        h = _harness()
        try:
            stats = h.client.route.stats
            before = time.monotonic()
            _exchange(h, _q("select 1"), _reply(b"I"))
            after = time.monotonic()
            assert h.relay.fast and before <= h.relay.wait_start <= after
            assert stats.count_tx == 1 and 0.0 < stats.query_time <= after - before
            assert 0.0 < stats.tx_time <= after - before
            assert h.relay.q_start is None and h.relay.tx_start is None     # nothing under way
        finally:
            h.close()
        return True

    assert in_machine(body)


def test_a_queued_attach_is_left_to_the_coroutine(in_machine):
    def body():
        h = _harness(queue=True)
        try:
            _exchange(h, _q("select 1"), _reply(b"I"))
            assert h.fe.taken == [None] and h.fe.now_attaches == 0
            assert h.fe.now_detaches == 1                 # the reply came back on the fast path
            h.fe.queue = False
            _exchange(h, _q("select 2"), _reply(b"I"))
            assert h.fe.taken == [None] and h.fe.now_attaches == 1
        finally:
            h.close()
        return True

    assert in_machine(body)


def test_a_taken_server_is_checked_by_the_coroutine(in_machine):
    def body():
        h = _harness(check=True)
        try:
            _exchange(h, _q("select 1"), _reply(b"I"))
            assert h.fe.taken == [h.server] and h.fe.now_detaches == 1
        finally:
            h.close()
        return True

    assert in_machine(body)


def test_a_detach_that_may_wait_is_left_to_the_coroutine(in_machine):
    def body():
        h = _harness(slow_detach=True)
        try:
            _exchange(h, _q("select 1"), _reply(b"I"))
            assert h.fe.now_detaches == 0 and len(h.fe.detaches) == 1 and h.client.server is None
            h.fe.slow_detach = False
            _exchange(h, _q("select 1"), _reply(b"I"))
            assert h.fe.now_detaches == 1 and len(h.fe.detaches) == 2
        finally:
            h.close()
        return True

    assert in_machine(body)


def test_a_pooled_server_keeps_its_read_watcher_started(in_machine):
    """workers 1 (keep_watch): the server's read watcher has one callback for the server's life
    (server.on_read, the reply walk bound to the server): the fast path's detach leaves it
    started with the instance as the server's reader (idle_readable's), the next attach makes
    the relay its reader again without a start (the reply is relayed); a detach left to the
    coroutine stops it first (the coroutine's reset reads the socket) and the next attach
    starts it again."""
    def body():
        h = _harness()
        h.relay.keep_watch = True
        watcher = h.sio.sock._read_event
        try:
            for n in (1, 2):
                _exchange(h, _q("select 1"), _reply(b"I"))
                assert h.fe.now_detaches == n and h.client.server is None
                assert watcher.active and watcher.callback is h.server.on_read
                assert watcher.callback.__self__ is h.server and watcher.args == ()
                assert h.server.reader is h.relay.instance
            cb = h.server.on_read
            h.fe.slow_detach = True
            _exchange(h, _q("select 1"), _reply(b"I"))
            assert len(h.fe.detaches) == 3 and h.fe.now_detaches == 2
            assert not watcher.active and watcher.callback is None and h.server.reader is None
            h.fe.slow_detach = False
            _exchange(h, _q("select 1"), _reply(b"I"))
            assert h.fe.now_detaches == 3 and watcher.active and watcher.callback is cb
            assert h.server.on_read is cb and h.server.reader is h.relay.instance
        finally:
            h.close()
        return True

    assert in_machine(body)


def test_a_pooled_server_that_speaks_is_told_to_idle_readable(in_machine, monkeypatch):
    """While pooled with its watcher started (its reader the instance) a server that sends
    something runs idle_readable with the instance and the server, not the relay that pooled
    it; attached again, its replies are the relay's. Without keep_watch (workers > 1) the
    detach stops the watcher and nothing runs."""
    told = []
    monkeypatch.setattr(relay_mod, "idle_readable", lambda instance, server: told.append((instance, server))
                        or server.io.sock._read_event.stop())

    def body():
        results = []
        for keep in (True, False):
            h = _harness()
            h.relay.keep_watch = keep
            try:
                _exchange(h, _q("select 1"), _reply(b"I"))
                assert h.client.server is None
                h.pg.write(be_write.ready_for_query(b"I"))      # nothing asked for it
                for _ in range(50):
                    mm.sleep(1)
                    if told:
                        break
                results.append((list(told), h.server))
                told.clear()
                assert h.relay.fast and h.relay.waiting        # the relay saw none of it
            finally:
                h.close()
        return results

    (kept, server), (stopped, _) = in_machine(body)
    assert kept == [(relay_mod._NEVER_STOPPING, server)] and stopped == []


def test_unwatch_stops_only_a_pooled_servers_watch(in_machine):
    """unwatch stops the watcher (and forgets the reader) only while the instance is the
    server's reader (pooled by the fast path); a relay's watch is the relay's to stop."""
    from odyssey_gevent.server import unwatch

    def body():
        h = _harness()
        h.relay.keep_watch = True
        watcher = h.sio.sock._read_event
        try:
            _exchange(h, _q("select 1"), _reply(b"I"))
            instance = h.relay.instance
            h.server.reader = h.relay       # as if attached
            unwatch(instance, h.server, h.sio)
            assert watcher.active and h.server.reader is h.relay
            h.server.reader = instance
            unwatch(instance, h.server, h.sio)
            assert not watcher.active and h.server.reader is None
            unwatch(instance, h.server, h.sio)      # twice: nothing more
            assert not watcher.active and h.server.reader is None
        finally:
            h.close()
        return True

    assert in_machine(body)


def test_a_reply_the_client_does_not_read_is_flushed_by_the_coroutine(in_machine):
    """The client's socket takes part of a large reply: the rest is kept in order and written by
    the coroutine (which waits for the client), then the server is detached."""
    big = be_write.data_row([b"r" * 60000]) * 80          # ~4.8 MB, more than the socket buffers
    reply = big + _reply(b"I")

    def body():
        h = _harness()
        try:
            got = base.Collector(h.app, len(reply))
            h.app.write(_q("select big"))
            assert h.pg.read(len(_q("select big")), 2000) == _q("select big")
            h.pg.write(reply, 5000)
            assert got.get() == reply
            mm.sleep(1)
            assert h.relay.pending is None and len(h.fe.detaches) == 1 and h.client.server is None
            _exchange(h, _q("select 1"), _reply(b"I"))     # and the fast path goes on
            assert h.fe.now_detaches == 2
        finally:
            h.close()
        return True

    assert in_machine(body)


def test_the_sweep_ends_a_fast_path_wait_over_its_timeout(in_machine):
    def body():
        h = _harness()
        h.fe.idle_timeout = lambda server: 20000 if server is not None else None
        h.fe.idle_expired = lambda server: Status.EIDLE_IN_TRANSACTION_TIMEOUT
        try:
            _exchange(h, _q("begin"), _reply(b"T", "BEGIN"))
            get_hub().loop.run_callback(relay_mod._sweep)
            mm.sleep(5)
            assert h.relay.fast                        # not over its timeout yet
            h.relay.wait_start -= 21.0                 # as if 21 s passed in the wait
            get_hub().loop.run_callback(relay_mod._sweep)
            assert h.result() is Status.EIDLE_IN_TRANSACTION_TIMEOUT
        finally:
            h.close()
        return True

    assert in_machine(body)


def test_the_sweep_sends_an_idle_fast_path_client_to_sleep(in_machine):
    def body():
        h = _harness()
        h.fe.resume = lambda: None
        try:
            _exchange(h, _q("select 1"), _reply(b"I"))
            h.relay.wait_start -= 2.0
            get_hub().loop.run_callback(relay_mod._sweep)
            assert h.result() is None                  # went dormant: run() returns None
            assert h.relay in relay_mod._dormant()
            relay_mod._dormant().discard(h.relay)
            h.cio.sock._read_event.stop()
        finally:
            h.close()
        return True

    assert in_machine(body)


def test_a_wake_up_reaches_a_fast_path_relay(in_machine):
    """KILL_CLIENT: relay.wake() switches the parked coroutine in, which sees client.killed."""
    def body():
        h = _harness()
        try:
            _exchange(h, _q("begin"), _reply(b"T", "BEGIN"))
            h.client.killed = True
            relay_mod.wake(h.relay)
            assert h.result() is Status.ECLIENT_KILLED
            assert h.client.server is h.server         # cleanup resets its server
            nothing_more(h.pg)
        finally:
            h.close()
        return True

    assert in_machine(body)


def test_short_timeouts_keep_the_coroutine_path():
    from types import SimpleNamespace
    rule = SimpleNamespace(pool="transaction", pool_idle_in_request_timeout_ms=60000,
                           pool_idle_in_transaction_timeout=5, pool_client_idle_timeout=0)
    assert not relay_mod._timeouts_sweepable(rule)          # 5 s: the sweep's 1 s is too coarse
    rule.pool_idle_in_transaction_timeout = 10
    assert relay_mod._timeouts_sweepable(rule)
    rule.pool_idle_in_request_timeout_ms = 500
    assert not relay_mod._timeouts_sweepable(rule)


def test_a_routes_relays_share_the_facts_of_its_rule(in_machine):
    """What a relay takes from the rule (pool mode, request timeout, whether the sweep can keep
    the timeouts, pool_timeout) is worked out at a route's first relay and kept on the route."""
    from types import SimpleNamespace

    from gevent import socket as gsocket

    from odyssey_gevent.config.model import Rule
    from odyssey_gevent.route import Route

    rule = Rule(pool="statement", pool_timeout=300, pool_idle_in_transaction_timeout=5)
    route = Route(("db", "user", id(rule)), rule, "db", "user")

    def body():
        x, y = gsocket.socketpair()
        a, b = mm.Io(x), mm.Io(y)
        try:
            client = SimpleNamespace(io=a, rule=rule, route=route, prepared=None, server=None)
            first = relay_mod.Relay(SimpleNamespace(), client)
            second = relay_mod.Relay(SimpleNamespace(), client)
            return (route.relay_facts, first.mode_statement, first.mode_transaction, first.request_timeout,
                    first.q_timeout, first.fast_ok, second.q_timeout)
        finally:
            a.close(), b.close()

    facts, statement, transaction, request_timeout, q_timeout, fast_ok, again = in_machine(body)
    assert facts == (False, True, 60000, False, 0.3)
    assert statement and not transaction and request_timeout == 60000 and q_timeout == again == 0.3
    assert not fast_ok              # a 5 s idle-in-transaction timeout: the coroutine's exact timers
    # no pool_timeout (0, the default): None, which the queueing tests with `is not None`
    for ms in (0, -1):
        assert relay_mod._rule_facts(Rule(pool="transaction", pool_timeout=ms))[4] is None


def test_a_lone_simple_query_is_forwarded_inline_whatever_its_size(in_machine):
    """The inline case of a whole Query alone in the buffer: short ones go out as a copy, longer
    ones (past relay._SLICE_MAX) as a view; either way byte-identical, counted in the route's
    stats and answered on the fast path."""
    from odyssey_gevent import relay as relay_mod

    def body():
        h = _harness()
        try:
            sqls = ["select 1", "select '" + "x" * (relay_mod._SLICE_MAX + 100) + "'", "select 2"]
            sent = 0
            for sql in sqls:
                request = _q(sql)
                sent += len(request)
                _exchange(h, request, _reply(b"I"))
            stats = h.client.route.stats
            assert stats.bytes_recv == sent
            assert stats.count_query == 3 and stats.count_tx == 3
            assert h.fe.now_attaches == 3 and h.fe.now_detaches == 3 and h.fe.taken == []
            assert h.relay.c_buf is None and h.relay.c_len == 0
            assert h.relay.fast and h.relay.waiting
        finally:
            h.close()
        return True

    assert in_machine(body)


def test_the_lone_query_bound_is_within_the_query_limit_as_a_one_digit_int():
    """relay._Q_END, the longest read the callbacks send as a lone Query, is at most the Query
    limit + 5 (type and length) and below 2**30: 3.11 specializes only a compare of one-digit
    ints; _Q_HEAD has an entry for every read up to it."""
    assert 5 < relay_mod._Q_END <= relay_mod._Q_LIMIT + 5 and relay_mod._Q_END < 1 << 30
    assert len(relay_mod._Q_HEAD) == relay_mod._Q_END + 1


def test_a_buffers_standing_view_reads_a_querys_length_as_the_table_has_it():
    """_Buf.head, a relay buffer's view of its bytes 1-4, equals _Q_HEAD[end] exactly where a
    Query's length field says it is `end` bytes long (the check the callbacks make for a lone
    Query), for lengths whose native value is one 30-bit digit or two; never below a header."""
    buf = relay_mod._new_buf()
    assert len(buf) == relay_mod.BUF_SIZE
    for end in (5, 6, 61, 64, 65, 68, 255, 256, 257, 320, 1000, 4097, relay_mod._Q_END):
        buf[:5] = b"Q" + (end - 1).to_bytes(4, "big")
        assert buf.head[0] == relay_mod._Q_HEAD[end] != relay_mod._Q_HEAD[end - 1]
        assert end == relay_mod._Q_END or buf.head[0] != relay_mod._Q_HEAD[end + 1]
    buf[:5] = b"Q\x00\x00\x00\x03"                  # a length no Query has
    assert all(buf.head[0] != relay_mod._Q_HEAD[end] for end in range(5))
    buf[:5] = b"Q\x00\x01\x00\x3c"                  # 65,596: past the table, and no read is
    assert buf.head[0] not in relay_mod._Q_HEAD


def test_a_relay_buffer_no_free_list_takes_is_freed_at_once():
    """A relay buffer's view refers to it (a reference cycle): where no free list takes a
    buffer (_give_back with a full list), the view is released, so the buffer goes with its
    last reference rather than with the cycle collector; a grown buffer has no view."""
    free = relay_mod._free_buffers()
    kept = list(free)
    try:
        free[:] = [relay_mod._new_buf() for _ in range(256)]
        buf = relay_mod._new_buf()
        before = sys.getrefcount(buf)
        relay_mod._give_back(buf)
        assert all(b is not buf for b in free) and sys.getrefcount(buf) == before - 1  # the view's, gone
        with pytest.raises(ValueError):
            buf.head[0]
        cut = relay_mod._new_buf()
        cut.cut, cut.cut_end = cut.whole[:61], 61       # (a view kept for a send: see _Buf.cut)
        before = sys.getrefcount(cut)
        relay_mod._drop(cut)
        assert sys.getrefcount(cut) == before - 1
        rcut = relay_mod._new_buf()
        rcut.rcut, rcut.rcut_end = rcut.whole[:93], 93  # (a view kept for a reply: see _Buf.rcut)
        before = sys.getrefcount(rcut)
        relay_mod._drop(rcut)
        assert sys.getrefcount(rcut) == before - 1      # (fails where _drop leaves rcut)
        relay_mod._drop(bytearray(relay_mod.BUF_SIZE * 2))                 # (no view: nothing to release)
    finally:
        free[:] = kept


def _relay_lone(h, request_, queued: bool) -> None:
    """One lone request relayed by the hand-over (queued first) or by the client callback, and
    answered with ReadyForQuery(I)."""
    if queued:
        _queued(h, request_)
        _hand_and_answer(h, request_)
    else:
        _exchange(h, request_, _reply(b"I"))


@pytest.fixture
def client_walks(monkeypatch):
    """The lengths of the requests the client walk (Relay._client_data) was given, in order:
    a request sent inline by a callback never reaches it."""
    walked = []
    walk = relay_mod.Relay._client_data

    def counted(self, buf, end):
        walked.append(end)
        return walk(self, buf, end)

    monkeypatch.setattr(relay_mod.Relay, "_client_data", counted)
    return walked


@pytest.mark.parametrize("queued", [False, True], ids=["client-callback", "hand-over"])
def test_a_lone_query_of_any_length_up_to_the_bound_is_sent_inline(in_machine, client_walks, queued):
    """Lone Queries whose length field read natively (_Buf.head) is one 30-bit digit (a low
    byte under 64) or two, and one at the bound, are sent inline by the client callback and the
    hand-over alike (no client walk), byte-identical and counted."""
    walked = client_walks
    def body():
        for end in (61, 69, 256 + 63, 256 + 64, relay_mod._Q_END):
            request_ = _q("select '" + "x" * (end - len(_q("select ''"))) + "'")
            assert len(request_) == end
            h = _harness(queue=queued, cb_queue=queued)
            try:
                _relay_lone(h, request_, queued)
                assert walked == []
                assert h.client.route.stats.bytes_recv == end and h.client.server is None
            finally:
                h.close()
        return True

    assert in_machine(body)


@pytest.mark.parametrize("queued", [False, True], ids=["client-callback", "hand-over"])
def test_the_inline_send_writes_a_view_the_buffer_keeps_for_requests_as_long(in_machine, queued):
    """The callbacks' inline send writes the request through the buffer's view of its first
    `end` bytes (_Buf.cut), kept for the next request as long and replaced by one of another
    length; what the server reads is each request, byte for byte, whatever the lengths before
    it (the same, shorter, longer, past relay._SLICE_MAX)."""
    def body():
        h = _harness(queue=queued, cb_queue=queued)
        try:
            seen = []
            for sql in ("select 11", "select 22", "select 333", "select 44",
                        "select '" + "x" * (relay_mod._SLICE_MAX + 100) + "'", "select 'y'"):
                request_ = _q(sql)
                if queued:
                    _queued(h, request_)
                    buf = h.relay.c_buf
                    _hand_and_answer(h, request_)
                else:
                    buf = h.relay.free.scratch
                    _exchange(h, request_, _reply(b"I"))
                assert buf.cut_end == len(buf.cut) == len(request_)    # (the bytes: pg read them)
                seen.append(buf.cut)
            assert seen[1] is seen[0] and seen[2] is not seen[1] and seen[3] is not seen[2]
            assert h.client.route.stats.bytes_recv == sum(len(v) for v in seen)
        finally:
            h.close()
        return True

    assert in_machine(body)


def test_the_reply_walk_writes_a_view_the_buffer_keeps_for_replies_as_long(in_machine):
    """The reply walk writes a reply through the buffer's view of its first bytes (_Buf.rcut)
    where the buffer's last reply written so was as long, makes and keeps one for the second
    reply as long in a row, and copies any other; what the client reads is each reply, byte for
    byte, whatever the lengths before it (the same, shorter, longer, past relay._SLICE_MAX), and
    the requests' own kept view (_Buf.cut, the same scratch buffer) is not the replies'."""
    def reply(k):
        return be_write.data_row([b"x" * k]) + _reply(b"I")

    def body():
        h = _harness()
        try:
            big = relay_mod._SLICE_MAX + 100
            views, sent = [], 0
            for k in (1, 1, 1, 22, 1, 333, 22, 22, big, big, 1):
                buf = h.relay.free.scratch
                _exchange(h, _q("select 1"), reply(k))
                assert h.relay.free.scratch is buf and h.relay.s_buf is None      # (nothing held)
                assert buf.rcut_end == len(buf.rcut)
                views.append((buf.rcut_end, buf.rcut_next, buf.rcut))
                assert bytes(buf.rcut) == bytes(buf[:buf.rcut_end])
                sent += len(reply(k))
            n1, n22, nbig = len(reply(1)), len(reply(22)), len(reply(big))
            assert [v[:2] for v in views] == [
                (relay_mod.BUF_SIZE, n1), (n1, n1), (n1, n1),   # copied, then kept for the second in a row
                (n1, n22), (n1, n22),                           # another length copied, the kept one used
                (n1, len(reply(333))), (n1, n22), (n22, n22),   # a length copied twice apart: kept at the second in a row
                (n22, nbig), (nbig, nbig), (nbig, n1)]
            assert views[2][2] is views[1][2] and views[4][2] is views[1][2] and views[10][2] is views[9][2]
            assert buf.cut_end == len(_q("select 1"))           # (the requests': not the replies')
            assert h.client.route.stats.bytes_sent == sent
        finally:
            h.close()
        return True

    assert in_machine(body)


@pytest.mark.parametrize("queued", [False, True], ids=["client-callback", "hand-over"])
def test_a_lone_query_past_the_inline_bound_goes_to_the_client_walk(in_machine, monkeypatch, client_walks, queued):
    """A lone Query past relay._Q_END is not sent inline (the client callback's copy or the
    hand-over's) but by the client walk, which checks the limit; one at the bound is inline.
    The bound is lowered here to show that it is the one the callbacks test."""
    request_ = _q("select 1")
    walked = client_walks
    def body():
        for bound, via_walk in ((len(request_) - 1, [len(request_)]), (len(request_), [])):
            monkeypatch.setattr(relay_mod, "_Q_END", bound)
            walked.clear()
            h = _harness(queue=queued, cb_queue=queued)
            try:
                _relay_lone(h, request_, queued)
                assert walked == via_walk
                assert h.client.route.stats.bytes_recv == len(request_) and h.client.server is None
            finally:
                h.close()
        return True

    assert in_machine(body)


# -- the queued attach continued in the hub (router.queue_now) ---------------------------------

def _queued(h, request):
    """The app sends `request` while no server is free: the relay queues it with a callback."""
    h.app.write(request)
    for _ in range(2000):
        if h.fe.cont is not None:
            break
        mm.sleep(1)
    assert h.fe.cont is not None and h.relay.queued and h.relay.fast
    nothing_more(h.pg)                            # held back until a server is handed over


def test_a_queued_attach_continues_in_the_hub_when_a_server_is_handed_over(in_machine):
    def body():
        h = _harness(queue=True, cb_queue=True)
        try:
            _queued(h, _q("select 1"))
            h.fe.hand()
            assert h.pg.read(len(_q("select 1")), 2000) == _q("select 1")
            h.pg.write(_reply(b"I"))
            assert h.app.read(len(_reply(b"I")), 2000) == _reply(b"I")
            mm.sleep(0)
            # the coroutine never attached: the hub sent the request and detached
            assert h.fe.taken == [] and h.fe.now_detaches == 1 and h.client.server is None
            assert h.relay.fast and not h.relay.queued
            h.fe.queue = False
            _exchange(h, _q("select 2"), _reply(b"I"))      # and the fast path goes on
            assert h.fe.now_attaches == 1 and h.fe.now_detaches == 2
        finally:
            h.close()
        return True

    assert in_machine(body)


@pytest.mark.parametrize("request_, replies", [
    (_q("select 1"), 1),                                  # a lone Query: the hand-over's inline send
    (_q("select '" + "x" * 3000 + "'"), 1),               # ... longer than _SLICE_MAX
    (_q("select 1") + _q("select 2"), 2),                 # anything else: the generic walk
    (_ext(), 1),
], ids=["lone-query", "long-query", "two-queries", "extended"])
def test_a_handed_over_request_is_relayed_and_counted_whatever_it_is(in_machine, request_, replies):
    """The hand-over sends a lone simple Query inline and anything else through the client
    walk: the same bytes reach the server, the same stats and Conversation state result, and
    nothing is held back for the next request."""
    def body():
        h = _harness(queue=True, cb_queue=True)
        try:
            _queued(h, request_)
            h.fe.hand()
            assert h.pg.read(len(request_), 2000) == request_
            reply = (_reply(b"I") if request_[:1] == b"Q" else _ext_reply(b"I")) * replies
            h.pg.write(reply)
            assert h.app.read(len(reply), 2000) == reply
            mm.sleep(0)
            assert h.fe.taken == [] and h.fe.now_detaches == 1 and h.client.server is None
            stats = h.client.route.stats
            assert (stats.bytes_recv, stats.bytes_sent) == (len(request_), len(reply))
            assert stats.count_query == replies
            assert (h.server.sync_request, h.server.sync_reply) == (replies, replies)
            # the inline send keeps the buffer it was held in, empty, for the next request; the
            # client walk gives it back
            kept = request_[:1] == b"Q" and replies == 1
            assert (h.relay.c_buf is not None) is kept and h.relay.c_len == 0 and not h.relay.queued
            h.fe.queue = False
            _exchange(h, _q("select 3"), _reply(b"I"))
            assert stats.bytes_recv == len(request_) + len(_q("select 3"))
        finally:
            h.close()
        return True

    assert in_machine(body)


def test_a_handed_over_request_laid_out_as_one_seen_before_skips_the_walk(in_machine, monkeypatch):
    """A held request laid out as a request seen before (relay._C_SHAPES) is sent by the
    hand-over as a lone Query is, without the client walk, and told to the Conversation the
    same: its Sync counted, the server detached at the reply's ReadyForQuery."""
    relay_mod._C_SHAPES.clear()
    request_ = _ext()
    types = [m for m in b"PBES"]
    relay_mod._C_SHAPES[len(request_)] = relay_mod._client_shape(bytearray(request_), len(request_), types)

    def body():
        h = _harness(queue=True, cb_queue=True)
        try:
            _queued(h, request_)
            monkeypatch.setattr(relay_mod.Relay, "_client_data", None)     # not called
            h.fe.hand()
            assert h.pg.read(len(request_), 2000) == request_
            monkeypatch.undo()
            reply = _ext_reply(b"I")
            h.pg.write(reply)
            assert h.app.read(len(reply), 2000) == reply
            mm.sleep(0)
            assert h.fe.taken == [] and h.fe.now_detaches == 1 and h.client.server is None
            stats = h.client.route.stats
            assert (stats.bytes_recv, stats.bytes_sent, stats.count_query) == (len(request_), len(reply), 1)
            assert (h.server.sync_request, h.server.sync_reply) == (1, 1) and not h.server.broken
            assert h.relay.c_buf is not None and h.relay.c_len == 0 and not h.relay.queued    # kept, empty
        finally:
            h.close()
        return True

    assert in_machine(body)


@pytest.mark.parametrize("request_", [
    _q("select 1"),
    _q("select '" + "x" * 3000 + "'"),                   # longer than _SLICE_MAX: sent as a view
    _ext(),                                               # laid out as one seen before
], ids=["lone-query", "long-query", "remembered"])
def test_the_client_callback_sends_a_request_as_the_hand_over_does(in_machine, request_):
    """_on_client's inline copy of _send_query (the hand-over's) and _send_query itself leave the
    same state behind them: the same bytes at the server, the Conversation told the same (as
    send tells it: test_relay's test_a_lone_query_is_told_as_send_does; here after an earlier
    Execute and CopyDone, whose marks a Query clears), the same stats and timings started,
    nothing held or pending; the callback gives the buffer back, the hand-over keeps the one
    the request was held in, empty, for the relay's next request."""
    relay_mod._C_SHAPES.clear()
    if request_[:1] != b"Q":
        relay_mod._C_SHAPES[len(request_)] = relay_mod._client_shape(bytearray(request_), len(request_),
                                                                    [m for m in b"PBES"])

    def sent(queued):
        h = _harness(queue=queued, cb_queue=queued)
        try:
            proto = h.server.proto
            proto._exec_syncs, proto._copy_ended = 0, True      # an Execute and a CopyDone before
            if queued:
                _queued(h, request_)
                h.fe.hand()
            else:
                h.app.write(request_)
            assert h.pg.read(len(request_), 2000) == request_
            relay, proto = h.relay, h.server.proto
            state = (list(proto.queue), proto.syncs, proto.unsynced, proto.phase, h.client.route.stats.bytes_recv,
                     relay.q_start > 0, relay.tx_start > 0, relay.c_len, relay.pending,
                     h.fe.taken, proto._exec_syncs, proto._copy_ended, h.server.sync_request)
            assert (relay.c_buf is None) is not queued and (relay.c_buf is None or len(relay.c_buf) == relay_mod.BUF_SIZE)
            reply = _reply(b"I") if request_[:1] == b"Q" else _ext_reply(b"I")
            h.pg.write(reply)
            assert h.app.read(len(reply), 2000) == reply
            mm.sleep(0)
            assert h.fe.now_detaches == 1 and h.client.server is None and not h.server.broken
            return state
        finally:
            h.close()

    def body():
        direct, handed = sent(False), sent(True)
        assert direct == handed, (direct, handed)
        assert direct[5] and direct[6] and direct[7] == 0 and direct[-1] == 1
        if request_[:1] == b"Q":
            assert direct[10:12] == (-1, False)
        return True

    assert in_machine(body)


def _hand_and_answer(h, request: bytes) -> None:
    """The queued relay of harness `h` handed a server: its held `request` reaches PostgreSQL,
    whose reply (ReadyForQuery, idle) reaches the client; then a loop turn."""
    h.fe.hand()
    assert h.pg.read(len(request), 2000) == request
    h.pg.write(_reply(b"I"))
    assert h.app.read(len(_reply(b"I")), 2000) == _reply(b"I")
    mm.sleep(0)


def test_a_relay_queued_again_holds_its_request_in_the_buffer_it_kept(in_machine):
    """The hand-over keeps the buffer the request was held in (empty); the relay's next
    request is read into it and, queued again, held there: neither the thread's scratch nor a
    buffer of the free list is taken. The sweep gives it back (a client idling on for a
    sweep's interval), and so does a request sent at once."""
    def body():
        h = _harness(queue=True, cb_queue=True)
        try:
            free = h.relay.free
            _queued(h, _q("select 1"))
            held = h.relay.c_buf
            assert held is not None and held is not free.scratch
            _hand_and_answer(h, _q("select 1"))
            assert h.relay.c_buf is held and h.relay.c_len == 0 and h.client.server is None
            scratch, spare = free.scratch, len(free)
            _queued(h, _q("select 2"))
            assert h.relay.c_buf is held and h.relay.c_len == len(_q("select 2"))
            assert held[:len(_q("select 2"))] == _q("select 2")
            assert free.scratch is scratch and len(free) == spare
            _hand_and_answer(h, _q("select 2"))
            assert h.relay.c_buf is held and h.relay.c_len == 0
            h.relay._sweep_fast(h.relay.wait_start)         # a sweep in the same wait: kept
            assert h.relay.c_buf is held
            # a sweep an interval later gives it back (this frontend cannot go dormant)
            h.relay._sweep_fast(h.relay.wait_start + relay_mod.DORMANT_AFTER_MS / 1000.0)
            assert h.relay.c_buf is None and free[-1] is held and h.relay.glet is not None
            _queued(h, _q("select 3"))                      # (read into the scratch, kept)
            again = h.relay.c_buf
            _hand_and_answer(h, _q("select 3"))
            assert h.relay.c_buf is again and h.relay.c_len == 0
            h.fe.queue = False
            _exchange(h, _q("select 4"), _reply(b"I"))      # sent at once: given back
            assert h.relay.c_buf is None and free[-1] is again
        finally:
            h.close()
        return True

    assert in_machine(body)


def test_the_hand_over_tells_the_held_requests_own_type(in_machine):
    """The hand-over's lone-Query check takes the held request's type from the byte the client
    callback read where it queued it (Relay.c_first), each time: a lone Sync, whose length
    field a Query as long would have, held after a lone Query was, is not told to the
    Conversation as a Query (nor sent inline): the client walk tells it."""
    relay_mod._C_SHAPES.clear()
    sync = b"S\0\0\0\x04"

    def body():
        h = _harness(queue=True, cb_queue=True)
        try:
            _queued(h, _q("select 1"))
            assert h.relay.c_first == relay_mod._C_QUERY
            _hand_and_answer(h, _q("select 1"))
            _queued(h, sync)
            assert h.relay.c_first == sync[0]
            h.fe.hand()
            assert h.pg.read(len(sync), 2000) == sync
            told = list(h.server.proto.queue)
            h.pg.write(be_write.ready_for_query(b"I"))
            assert h.app.read(6, 2000) == be_write.ready_for_query(b"I")
            mm.sleep(0)
        finally:
            h.close()
        return told

    told = in_machine(body)
    assert told and relay_mod._C_QUERY not in told


def test_bytes_a_queued_client_sends_are_read_after_the_hand_over(in_machine):
    """While queued the client is not read: its socket's watcher stays started with
    _on_client, which stops it when more bytes come (no callback per loop turn) and leaves
    them unread; the hand-over starts it again, sends the held request and reads the rest."""
    def body():
        h = _harness(queue=True, cb_queue=True)
        try:
            _queued(h, _q("select 1"))
            watcher = h.relay.c_watch
            assert watcher.active and watcher.callback == h.relay.on_client
            h.app.write(_q("select 2"))
            for _ in range(2000):
                if not watcher.active:
                    break
                mm.sleep(1)
            assert not watcher.active and h.relay.queued and h.relay.c_len == len(_q("select 1"))
            nothing_more(h.pg)
            h.fe.hand()
            both = _q("select 1") + _q("select 2")
            assert h.pg.read(len(both), 2000) == both
            assert watcher.active and watcher.callback == h.relay.on_client
            h.pg.write(_reply(b"I") * 2)
            assert h.app.read(len(_reply(b"I")) * 2, 2000) == _reply(b"I") * 2
            mm.sleep(0)
            assert h.client.route.stats.bytes_recv == len(both) and h.client.server is None
            assert h.fe.taken == [] and h.fe.now_detaches == 1
        finally:
            h.close()
        return True

    assert in_machine(body)


@pytest.mark.parametrize("more", [False, True], ids=["timed", "timed-and-stopped"])
def test_the_hand_over_stops_pool_timeouts_timer(in_machine, more):
    """A wait queued with pool_timeout's timer started (queued is _Q_TIMED, not True: the
    hand-over tests the timer only then) has the timer stopped by the hand-over, also where the
    client sent more while queued (_Q_STOPPED: the watcher started again, the rest read after
    the held request). Fails where the timer's start leaves queued True (the timer left
    running) or the hand-over does not start the stopped watcher again."""
    def body():
        h = _harness(queue=True, cb_queue=True)
        h.relay.q_timeout = 60.0
        try:
            _queued(h, _q("select 1"))
            timer, watcher = h.relay.q_timer, h.relay.c_watch
            assert timer.active and h.relay.queued is relay_mod._Q_TIMED
            sent = _q("select 1")
            if more:
                h.app.write(_q("select 2"))
                for _ in range(2000):
                    if not watcher.active:
                        break
                    mm.sleep(1)
                assert not watcher.active and h.relay.queued is relay_mod._Q_STOPPED
                sent += _q("select 2")
            h.fe.hand()
            assert h.pg.read(len(sent), 2000) == sent
            assert not timer.active and not h.relay.queued
            assert watcher.active and watcher.callback == h.relay.on_client
            n = len(sent) // len(_q("select 1"))
            h.pg.write(_reply(b"I") * n)
            assert h.app.read(len(_reply(b"I")) * n, 2000) == _reply(b"I") * n
            assert h.fe.queued_attaches == 0 and h.fe.taken == []
        finally:
            h.close()
        return True

    assert in_machine(body)


def test_a_handed_server_that_needs_checks_goes_to_the_coroutine(in_machine):
    def body():
        h = _harness(queue=True, cb_queue=True, check=True)
        try:
            _queued(h, _ext())
            h.fe.hand()
            assert h.pg.read(len(_ext()), 2000) == _ext()
            h.pg.write(_ext_reply(b"I"))
            assert h.app.read(len(_ext_reply(b"I")), 2000) == _ext_reply(b"I")
            mm.sleep(0)
            assert h.fe.taken == [h.server] and h.fe.now_detaches == 1
        finally:
            h.close()
        return True

    assert in_machine(body)


def test_pool_timeout_while_queued_lets_the_coroutine_take_the_wait_over(in_machine):
    """The timer switches into the coroutine, which goes on with attach(queued=True) (the real
    one raises the 53300 FATAL when the time is up; this fake gives the server)."""
    def body():
        h = _harness(queue=True, cb_queue=True)
        h.relay.q_timeout = 0.2
        try:
            _queued(h, _q("select 1"))
            assert h.pg.read(len(_q("select 1")), 2000) == _q("select 1")
            assert h.fe.queued_attaches == 1 and h.fe.cont is not None and not h.relay.queued
            h.pg.write(_reply(b"I"))
            assert h.app.read(len(_reply(b"I")), 2000) == _reply(b"I")
            h.fe.cont()                           # a late continuation finds nothing to do
            h.fe.queue = False
            _exchange(h, _q("select 2"), _reply(b"I"))
            assert h.fe.now_attaches == 1
        finally:
            h.close()
        return True

    assert in_machine(body)


def test_a_kill_while_queued_ends_the_session(in_machine):
    def body():
        h = _harness(queue=True, cb_queue=True)
        try:
            _queued(h, _q("select 1"))
            h.client.killed = True
            relay_mod.wake(h.relay)               # KILL_CLIENT's wake-up
            result = h.result()
            assert isinstance(result, ClientGone) and result.status is Status.ECLIENT_KILLED
            assert h.fe.queued_attaches == 1
            nothing_more(h.pg)
        finally:
            h.close()
        return True

    assert in_machine(body)


def test_a_kill_that_takes_the_client_out_of_the_queue_runs_the_continuation(in_machine):
    """router.kill wakes the waiter itself: the continuation finds no server and the
    coroutine sees client.killed."""
    def body():
        h = _harness(queue=True, cb_queue=True)
        try:
            _queued(h, _q("select 1"))
            h.client.killed = True
            cont, h.fe.cont = h.fe.cont, None
            get_hub().loop.run_callback(cont)
            assert h.result() is Status.ECLIENT_KILLED
            assert h.fe.queued_attaches == 0 and h.fe.attaches == 0
            nothing_more(h.pg)
        finally:
            h.close()
        return True

    assert in_machine(body)


@pytest.mark.parametrize("request_", [_q("select 1"), _ext()], ids=["lone-query", "remembered"])
def test_a_request_handed_over_to_a_killed_client_is_sent_and_the_coroutine_ends_it(in_machine, request_):
    """A client killed after its request was queued (KILL_CLIENT's flag, without its wake-up)
    and then handed a server: the hand-over sends the request (a lone Query or one laid out as
    one seen before, each its own copy of the send) and the send's end switches into the
    coroutine, which sees the kill; the lone Query's end goes straight there (not into the
    layouts' path)."""
    relay_mod._C_SHAPES.clear()
    if request_[:1] != b"Q":
        relay_mod._C_SHAPES[len(request_)] = relay_mod._client_shape(bytearray(request_), len(request_),
                                                                    [m for m in b"PBES"])

    def body():
        h = _harness(queue=True, cb_queue=True)
        try:
            _queued(h, request_)
            h.client.killed = True
            h.fe.hand()
            assert h.pg.read(len(request_), 2000) == request_
            return h.result(), h.client.route.stats.bytes_recv
        finally:
            h.close()

    result, received = in_machine(body)
    assert result is Status.ECLIENT_KILLED and received == len(request_)


_FLUSH = b"H\x00\x00\x00\x04"


@pytest.mark.parametrize("request_", [_q("select 1"), _FLUSH], ids=["lone-query", "remembered-flush"])
def test_a_shutdown_reaches_a_relay_handed_a_server_during_it(in_machine, request_):
    """The hand-over (_on_handed) does not test the shutdown flag after its inline sends: a
    relay parked when the shutdown begins is woken by it (wake_relays, after the flag), and the
    hand-over leaves it parked, so that wake reaches it; one that parked after it began was
    refused by can_stop. Here the flag is set and the relays woken while the client is queued,
    after the hand-over was scheduled (it runs first, as a walk's inline hand-over would run
    before the wake's loop callback): a lone Query's server owes the reply, whose
    ReadyForQuery the walk ends the session at; a remembered lone Flush leaves the server
    owing nothing, and the wake alone ends it (fails where the hand-over's relay is not woken
    by wake_relays: with no flag test, nothing else switches into it)."""
    relay_mod._C_SHAPES.clear()
    if request_ is _FLUSH:
        relay_mod._C_SHAPES[len(_FLUSH)] = relay_mod._client_shape(bytearray(_FLUSH), len(_FLUSH), [_FLUSH[0]])
    instance = relay_mod._NEVER_STOPPING

    def body():
        h = _harness(queue=True, cb_queue=True)
        h.fe.can_stop = lambda server: server is None or server.synchronized
        try:
            _queued(h, request_)
            h.fe.hand()                             # the hand-over scheduled ...
            instance.shutting_down = True           # ... then the shutdown: its flag and wake
            woken = relay_mod.wake_relays()
            assert h.pg.read(len(request_), 2000) == request_
            if request_ is not _FLUSH:
                h.pg.write(_reply(b"I"))
                assert h.app.read(len(_reply(b"I")), 2000) == _reply(b"I")
            return woken, h.result()
        finally:
            instance.__dict__.pop("shutting_down", None)
            h.close()

    woken, result = in_machine(body)
    assert woken == 1 and result is Status.EGRACEFUL_SHUTDOWN


def test_a_relay_cancelled_while_queued_leaves_the_queue(in_machine):
    def body():
        h = _harness(queue=True, cb_queue=True)
        try:
            _queued(h, _q("select 1"))
            h.co.cancel()
            assert isinstance(h.result(), mm.Cancelled)
            assert h.fe.left == 1 and not h.relay.queued
        finally:
            h.close()
        return True

    assert in_machine(body)


def test_relays_of_a_thread_share_the_scratch_buffer_and_keep_unfinished_bytes_apart(in_machine):
    """The hub's reply walk reads into the thread's scratch buffer (relay._FreeList.scratch)
    when the relay holds nothing back: a reply cut inside a message keeps its unfinished bytes
    in a buffer of the relay's own, so another relay's reply read into the scratch in between
    leaves them whole, and a finished reply leaves the relay no buffer. (A message streamed as
    it comes keeps nothing back: the cut is in a ReadyForQuery, which the walk wants whole.)"""
    def body():
        a, b = _harness(), _harness()
        try:
            assert a.relay.free is b.relay.free and a.relay.free.scratch is not None
            request = _q("select 1")
            reply_a = be_write.data_row([b"a" * 100]) + _reply(b"I")
            reply_b = be_write.data_row([b"b" * 300]) + _reply(b"I")
            got_a = base.Collector(a.app, len(reply_a))
            a.app.write(request)
            assert a.pg.read(len(request), 2000) == request
            cut = len(reply_a) - 3
            a.feed(a.pg, a.sio, reply_a[:cut], [])          # a cut in a's ReadyForQuery
            assert a.relay.s_len == 3 and a.relay.s_buf is not a.relay.free.scratch
            _exchange(b, request, reply_b)                   # b's reply through the scratch
            assert b.relay.s_buf is None
            a.pg.write(reply_a[cut:])
            assert got_a.get() == reply_a
            mm.sleep(0)
            assert a.relay.s_buf is None and a.fe.now_detaches == 1 and b.fe.now_detaches == 1
        finally:
            a.close()
            b.close()
        return True

    assert in_machine(body)


def test_client_bytes_read_into_the_scratch_buffer_are_kept_when_they_outlive_the_callback(in_machine):
    """The client watcher's callback reads into the thread's scratch buffer too: a request cut
    inside a header keeps its unfinished bytes in the relay's own buffer, so another relay's
    request read into the scratch in between leaves them whole; a request the coroutine relays
    (a partial first header, no server yet) is kept for it the same way."""
    def body():
        a, b = _harness(), _harness()
        try:
            request = _ext()
            cut = len(request) - 3                          # in the Sync (5 bytes)
            a.feed(a.app, a.cio, request[:cut], [])
            assert a.relay.c_len == 2 and a.relay.c_buf is not a.relay.free.scratch
            _exchange(b, _q("select 1"), _reply(b"I"))    # b's request through the scratch
            assert b.relay.c_buf is None
            a.app.write(request[cut:])
            assert a.pg.read(len(request), 2000) == request
            a.pg.write(_ext_reply(b"I"))
            assert a.app.read(len(_ext_reply(b"I")), 2000) == _ext_reply(b"I")
            mm.sleep(0)
            assert a.relay.c_buf is None and a.fe.now_detaches == 1
            # no server and less than a header: the coroutine's walk gets the bytes
            a.feed(a.app, a.cio, request[:2], [])
            _exchange(b, _q("select 2"), _reply(b"I"))
            a.app.write(request[2:])
            assert a.pg.read(len(request), 2000) == request
            a.pg.write(_ext_reply(b"I"))
            assert a.app.read(len(_ext_reply(b"I")), 2000) == _ext_reply(b"I")
        finally:
            a.close()
            b.close()
        return True

    assert in_machine(body)


def _sending(case: str) -> Conversation:
    """A Conversation in one of the states a client's lone Query may meet: nothing owed, a
    Query owed, an extended batch open after its Execute, a CopyDone sent before the server's
    CopyInResponse, a COPY, a skip after an extended-protocol error, a remembered batch owed."""
    conv = Conversation()
    if case in ("busy", "copy"):
        conv.send(ord("Q"))
    elif case == "batch":
        # a remembered batch that filled the empty queue (marked: Conversation.batch)
        Conversation().send_many(b"PBES")       # remembered by kiwi
        conv.send_many(b"PBES")
        assert conv.batch is not None
    elif case in ("executed", "skip", "copy-ended"):
        for t in b"PBE":
            conv.send(t)
        if case == "copy-ended":
            conv.send(ord("c"))
        elif case == "skip":
            conv.receive(ord("E"))
    if case == "copy":
        conv.receive(ord("G"))
    return conv


@pytest.mark.parametrize("case", ["ready", "busy", "executed", "copy-ended", "copy", "skip", "batch"])
def test_a_lone_query_is_told_as_send_does(in_machine, case):
    """The relay's inline copy of Conversation.send's common case (a Query outside COPY and
    SKIP; the queued hand-over's, and _on_client's, which
    test_the_client_callback_sends_a_request_as_the_hand_over_does keeps in step with it)
    leaves the Conversation as send leaves it, in each state a Query may meet, and sends the
    Query."""
    def state(conv):
        return (list(conv.queue), conv.syncs, conv.phase, conv.unsynced, conv.flushed, conv._exec_syncs,
                conv._copy_ended, conv.broken, conv.batch)

    def body():
        told = _sending(case)
        told.send(ord("Q"))
        h = _harness(queue=True, cb_queue=True)
        try:
            query = _q("select 1")
            _queued(h, query)
            walked = h.server.proto = _sending(case)
            h.fe.hand()
            assert h.pg.read(len(query), 2000) == query
            assert state(walked) == state(told)
        finally:
            h.close()
        return True

    assert in_machine(body)


@pytest.mark.parametrize("queued", [False, True], ids=["callback", "hand-over"])
@pytest.mark.parametrize("case", ["ready", "busy", "executed", "copy", "skip", "exact", "unremembered",
                                  "nothing-queued"])
def test_a_remembered_request_is_told_as_send_many_does(in_machine, case, queued):
    """The relay's inline copies of Conversation.send_many's common case (a batch whose effect
    kiwi remembers, kept in the request's layout, without exact counting, outside COPY and SKIP;
    the client callback's and the queued hand-over's) leave the Conversation as send_many leaves
    it, in each state such a request may meet (and for a batch that queues nothing: Describe,
    Execute, Flush), and send the request."""
    from kiwi import fe_write
    from kiwi import protocol as kiwi_protocol
    if case == "nothing-queued":
        request_, types = fe_write.describe("P") + fe_write.execute() + fe_write.flush(), b"DEH"
    else:
        request_, types = _ext(), b"PBES"

    def make():
        conv = _sending(case if case in ("busy", "executed", "copy", "skip") else "ready")
        conv.exact = case == "exact"
        return conv

    def state(conv):
        return (list(conv.queue), conv.syncs, conv.phase, conv.unsynced, conv.flushed, conv._exec_syncs,
                conv._copy_ended, conv.broken, conv.batch)

    def body():
        relay_mod._C_SHAPES.clear()
        if case == "unremembered":
            kiwi_protocol._BATCHES.pop(types, None)
        else:
            Conversation().send_many(types)         # remembered by kiwi
            Conversation(exact=True).send_many(types)   # (and with exact counting: both mark alike)
        # the layout keeps the types and the effect kiwi remembers for them (None where none)
        shape = relay_mod._C_SHAPES[len(request_)] = relay_mod._client_shape(bytearray(request_), len(request_),
                                                                            list(types))
        assert shape[2] == types and (shape[3] is None) is (case == "unremembered")
        told = make()
        told.send_many(types)
        if case == "unremembered":
            kiwi_protocol._BATCHES.pop(types, None)
        h = _harness(queue=queued, cb_queue=queued)
        try:
            if queued:
                _queued(h, request_)
                walked = h.server.proto = make()
                h.fe.hand()
            else:
                walked = h.server.proto = make()
                h.app.write(request_)
            assert h.pg.read(len(request_), 2000) == request_
            assert state(walked) == state(told)
        finally:
            h.close()
            relay_mod._C_SHAPES.clear()
        return True

    assert in_machine(body)


def test_a_server_closed_under_the_relays_watch_is_thrown_into_the_coroutine(in_machine):
    """The server's watcher callback is bound to the server (server.on_read): a socket closed
    under it while the relay waits for a reply throws (gevent's cancel_wait, Server.throw) into
    the parked coroutine, as when the callback was the relay's own method."""
    def body():
        h = _harness()
        try:
            h.app.write(_q("select 1"))
            assert h.pg.read(len(_q("select 1")), 2000) == _q("select 1")
            assert h.client.server is h.server and h.server.reader is h.relay
            h.sio.close()
            return h.result()
        finally:
            h.close()

    result = in_machine(body)
    assert isinstance(result, OSError), result


def test_the_sweep_gives_a_busy_client_a_file_it_is_then_read_and_written_through(in_machine):
    """A client whose callbacks relayed since the last sweep (or the park: a session busy with
    requests) is read and written through a FileIO from the next sweep on (Io.use_file: no
    keyword parsing per read); an idle one is not, and the cleanup closes the FileIO with the
    socket."""
    def body():
        h = _harness()
        try:
            mm.sleep(5)
            relay_mod._sweep()                      # parked, nothing relayed since: none made
            assert h.relay.fast and h.cio._fread is None
            _exchange(h, _q("select 1"), _reply(b"I"))
            relay_mod._sweep()
            read = h.cio._fread
            assert h.relay.fast and read is not None and h.cio._fwrite is not None
            assert h.relay.c_write is h.cio._fwrite     # the reply walk's kept write (Relay.c_write)
            assert h.relay.c_read is read               # the client callback's kept read (c_read)
            f = read.__self__
            calls = []                              # (counted by wrappers around the two)

            def counted(fn, name):
                return lambda data: calls.append(name) or fn(data)
            h.relay.c_read = h.cio._fread = counted(read, "read")
            h.relay.c_write = h.cio._fwrite = counted(h.cio._fwrite, "write")
            for _ in range(3):                      # relayed through it both ways
                _exchange(h, _q("select 1"), _reply(b"I"))
            assert calls.count("read") >= 3 and calls.count("write") == 3
            assert h.relay.fast and h.fe.now_detaches == 4 and not f.closed
            relay_mod._sweep()
            assert h.cio._fread is not read and h.cio._fread is not None    # made once
            h.cio._fread, h.cio._fwrite = read, f.write
            h.cio.close()
            assert h.cio._fread is None and f.closed
        finally:
            h.close()
        return True

    assert in_machine(body)


def test_a_write_the_coroutine_could_not_finish_leaves_the_client_mid_message(in_machine):
    """What the fast path could not write at once is written by the coroutine (_flush); a client
    write cut short there stays pending, so client_mid_message says the client may have part
    of a message (the cleanup then sends no error into it). Written whole, nothing is pending."""
    def body():
        h = _harness()
        try:
            relay = h.relay
            assert not relay.client_mid_message()
            relay.pending = [(h.cio, be_write.data_row([b"a"]), 0)]
            relay._flush()
            assert relay.pending is None and not relay.client_mid_message()
            assert h.app.read(len(be_write.data_row([b"a"])), 2000) == be_write.data_row([b"a"])
            h.app.close()                                   # the client is gone: the write fails
            relay.pending = [(h.cio, b"D" + b"\0" * 4_000_000, 0)]
            with pytest.raises(ClientGone):
                relay._flush()
            assert relay.pending is not None and relay.client_mid_message()
            relay.pending = [(h.sio, b"S\0\0\0\4", 1)]       # only a server write left over
            assert not relay.client_mid_message()
            relay.pending = None
        finally:
            h.close()
        return True

    assert in_machine(body)
