"""The relay fast path over real socket pairs: byte-identical forwarding whatever the chunking,
sync counting, the detach point of each pool mode, Terminate, protocol violations and EOF on
either side (reference 3.1; Odyssey relay.c)."""
from __future__ import annotations

import fcntl
import struct
import termios
from types import SimpleNamespace

import pytest
from gevent import socket as gsocket
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import machinarium as mm
from kiwi import be_write, fe_write
from kiwi.protocol import LOCAL, Conversation, Phase, Request
from odyssey_gevent.logger import Logger
from odyssey_gevent.prepared import Prepared, Registry
from odyssey_gevent.relay import BUF_SIZE, Relay, _new_buf
from odyssey_gevent.route import RouteStats
from odyssey_gevent.server import Server
from odyssey_gevent.status import ClientGone, FrontendError, ServerError, Status

pytestmark = pytest.mark.timeout(10)


# ----------------------------------------------------------------------------------------------
# harness

class FakeFrontend:
    """attach() hands out one Server whose io is the pooler side of the server pair."""

    def __init__(self, client, server_io):
        self.client = client
        self.server = Server(None)
        self.server.io = server_io
        self.attaches = 0
        self.detaches = []          # (sync_request, sync_reply, tx_status) at each detach
        self.logger = Logger(to_stdout=False)

    def attach(self):
        self.attaches += 1
        self.client.server = self.server
        return self.server

    def detach(self):
        s = self.server
        self.detaches.append((s.sync_request, s.sync_reply, s.tx_status))
        self.client.server = None

    def idle_timeout(self, server):
        return None

    def idle_expired(self, server):
        return None


def _unread(io) -> int:
    return struct.unpack("i", fcntl.ioctl(io.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]


class Harness:
    """app <-> [client io | Relay | server io] <-> pg, all in the current machine."""

    def __init__(self, pool="session", attached=False, prepared=False):
        a, c = gsocket.socketpair()
        s, p = gsocket.socketpair()
        self.app, self.cio, self.sio, self.pg = mm.Io(a), mm.Io(c), mm.Io(s), mm.Io(p)
        self.client = SimpleNamespace(io=self.cio, rule=SimpleNamespace(pool=pool), prepared=None,
                                      route=SimpleNamespace(stats=RouteStats()), server=None, vars={}, killed=False)
        self.fe = FakeFrontend(self.client, self.sio)
        if attached:
            self.fe.attach()
            self.fe.attaches = 0
        self.server = self.fe.server
        # prepared: the relay has the prepared-statement layer (its walk's tables, exact counting)
        self.relay = Relay(self.fe, self.client, Prepared(self.client, Registry()) if prepared else None)
        if prepared:
            self.server.proto.exact = True
        self.co = mm.Coroutine(self._run, name="relay")

    def _run(self):
        # the relay's result or exception is returned, never escapes the coroutine
        try:
            return self.relay.run()
        except BaseException as e:  # noqa: BLE001
            return e

    def result(self, timeout_ms=3000):
        return self.co.join(timeout_ms)

    def settle(self, io):
        """Wait until the relay has read every byte queued on `io` (its side of a pair)."""
        for _ in range(5000):
            if _unread(io) == 0:
                mm.sleep(0)
                return
            mm.sleep(1)
        raise AssertionError("relay did not read")

    def feed(self, out_io, in_io, data: bytes, cuts):
        """Write data in pieces split at `cuts`, each read by the relay before the next."""
        last = 0
        for cut in sorted(set(cuts)) + [len(data)]:
            if cut <= last:
                continue
            out_io.write(data[last:cut], 2000)
            self.settle(in_io)
            last = cut

    def close(self):
        for io in (self.app, self.cio, self.sio, self.pg):
            io.close()


class Collector:
    """Reads `io` into a bytearray in its own coroutine until `n` bytes came (or EOF)."""

    def __init__(self, io, n):
        self.data = bytearray()
        self.co = mm.Coroutine(self._run, io, n, name="collector")

    def _run(self, io, n):
        buf = bytearray(65536)
        while len(self.data) < n:
            k = io.read_into(buf, 5000)
            if k == 0:
                break
            self.data += buf[:k]

    def get(self, timeout_ms=5000):
        self.co.join(timeout_ms)
        return bytes(self.data)


def _ended(result, exc_type, status) -> bool:
    """The relay ended by raising `exc_type` with `status` (status.py's error model)."""
    assert isinstance(result, exc_type), result
    assert result.status is status, result.status
    return True


def _param(server, name):
    """server.params by name, whatever case the relay keys it by."""
    return {k.lower(): v for k, v in server.params.items()}[name.lower()]


def nothing_more(io, ms=20):
    with pytest.raises(mm.TimedOut):
        io.read(1, ms)


# ----------------------------------------------------------------------------------------------
# forwarding, any chunking

BIG = 40 * 1024     # > BUF_SIZE: streams through the relay

client_msgs = st.one_of(
    st.builds(fe_write.query, st.text("selct 1;* ", max_size=20)).map(lambda b: ("sync", b)),
    st.just(("sync", fe_write.sync())),
    st.just(("", fe_write.flush())),
    st.builds(fe_write.parse, st.sampled_from(["", "s1"]), st.just("select $1"), st.just([23])).map(
        lambda b: ("", b)),
    st.builds(fe_write.bind, st.just(""), st.sampled_from(["", "s1"]), st.just([b"42"])).map(lambda b: ("", b)),
    st.just(("", fe_write.describe("P", ""))),
    st.just(("", fe_write.execute("", 0))),
    st.just(("", fe_write.close("S", "s1"))),
    st.just(("", fe_write.copy_data(b"x" * 100))),
    st.just(("sync", fe_write.query("select '" + "y" * BIG + "'"))),
)

param_names = st.sampled_from(["application_name", "TimeZone", "DateStyle", "search_path"])
server_msgs = st.one_of(
    st.just(("", be_write.row_description([("a", 23), ("b", 25)]))),
    st.builds(be_write.data_row, st.lists(st.one_of(st.none(), st.binary(max_size=30)), max_size=3)).map(
        lambda b: ("", b)),
    st.just(("", be_write.data_row([b"z" * BIG]))),
    st.just(("", be_write.command_complete("SELECT 1"))),
    st.just(("", be_write.notice_response("NOTICE", "00000", "hello"))),
    st.tuples(param_names, st.text("abcXYZ/+ 0123", max_size=12)).map(
        lambda nv: (("param",) + nv, be_write.parameter_status(*nv))),
    st.sampled_from([b"I", b"T", b"E"]).map(lambda s: (("ready", s), be_write.ready_for_query(s))),
    st.just(("", be_write.parse_complete())),
    st.just(("", be_write.empty_query_response())),
)


def _cuts(draw_list, total):
    return [c for c in draw_list if 0 < c < total]


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(cmsgs=st.lists(client_msgs, min_size=1, max_size=12),
       smsgs=st.lists(server_msgs, min_size=1, max_size=12),
       ccuts=st.lists(st.integers(0, 200_000), max_size=10),
       scuts=st.lists(st.integers(0, 200_000), max_size=10),
       small_cuts=st.lists(st.integers(0, 64), max_size=6))
def test_forwarding_is_byte_identical_whatever_the_chunking(in_machine, cmsgs, smsgs, ccuts, scuts, small_cuts):
    # COPY messages before the first message that needs a server are dropped, as PostgreSQL
    # would ignore them (they must not attach a server); everything from there on is forwarded
    first = next((i for i, (_, m) in enumerate(cmsgs) if m[:1] not in (b"d", b"c", b"f")), None)
    assume(first is not None)
    sent = b"".join(m for _, m in cmsgs)
    cmsgs = cmsgs[first:]
    cdata = b"".join(m for _, m in cmsgs)
    sdata = b"".join(m for _, m in smsgs)
    syncs = sum(1 for kind, _ in cmsgs if kind == "sync")
    unsynced = False            # an extended-protocol message not yet followed by a Sync
    for _, m in cmsgs:
        if m[:1] in (b"P", b"B", b"D", b"E", b"C"):
            unsynced = True
        elif m[:1] == b"S":
            unsynced = False
    readies = [kind[1] for kind, _ in smsgs if isinstance(kind, tuple) and kind[0] == "ready"]
    params = {}
    for kind, _ in smsgs:
        if isinstance(kind, tuple) and kind[0] == "param":
            params[kind[1]] = kind[2]

    def body():
        h = Harness("session")
        try:
            # client -> server (the first bytes attach)
            got = Collector(h.pg, len(cdata))
            h.feed(h.app, h.cio, sent, _cuts(ccuts + small_cuts, len(sent)))
            assert got.get() == cdata
            assert h.fe.attaches == 1 and h.server.sync_request == syncs
            # server -> client
            back = Collector(h.app, len(sdata))
            h.feed(h.pg, h.sio, sdata, _cuts(scuts + small_cuts, len(sdata)))
            assert back.get() == sdata
            # the relay told the server's Conversation exactly what a reference one sees when
            # fed the same messages whole and in order, whatever the chunking
            ref = Conversation()
            for _, m in cmsgs:
                ref.send(m[0])
            for _, m in smsgs:
                ref.receive(m[0], m[5:6] if m[:1] == b"Z" else None)
            assert (h.server.sync_request, h.server.sync_reply) == (ref.replies + ref.syncs, ref.replies)
            assert h.server.tx_status == ref.tx_status
            assert bool(h.server.broken) == (ref.broken is not None)
            for k, v in params.items():
                assert _param(h.server, k) == v and h.client.vars[k.lower()] == v
            stats = h.client.route.stats
            assert (stats.bytes_recv, stats.bytes_sent) == (len(cdata), len(sdata))
            assert stats.count_query == len(readies)
            assert h.fe.detaches == []                  # session mode
            # Terminate is not forwarded and ends the loop
            h.app.write(fe_write.terminate())
            assert h.result() is Status.TERMINATE
            nothing_more(h.pg)
            assert h.relay.server_clean is not ref.unsynced
        finally:
            h.close()
        return True

    assert in_machine(body)


def test_split_parameter_status_and_ready_byte_by_byte(in_machine):
    msgs = (be_write.parameter_status("TimeZone", "Europe/Oslo") + be_write.data_row([b"q" * (BUF_SIZE + 7)])
            + be_write.ready_for_query(b"T"))

    def body():
        h = Harness("session", attached=True)
        h.server.proto.send(ord("Q"))        # the query these replies answer
        try:
            back = Collector(h.app, len(msgs))
            # every header and the two small interesting messages byte by byte
            cuts = list(range(0, 30)) + list(range(len(msgs) - 8, len(msgs)))
            h.feed(h.pg, h.sio, msgs, cuts)
            assert back.get() == msgs
            assert _param(h.server, "TimeZone") == h.client.vars["timezone"] == "Europe/Oslo"
            assert h.server.sync_reply == 1 and h.server.tx_status == b"T"
        finally:
            h.close()
        return True

    assert in_machine(body)


# (name, the requests as (type, hidden) or "local", the replies, the message the answer follows)
_LOCAL_CASES = [
    ("after a forwarded ParseComplete", [("P", False), "local", ("B", False), ("S", False)],
     [be_write.parse_complete(), be_write.bind_complete(), be_write.ready_for_query(b"I")], 0),
    ("after a dropped ParseComplete", [("P", True), "local", ("B", False), ("S", False)],
     [be_write.parse_complete(), be_write.bind_complete(), be_write.ready_for_query(b"I")], 0),
    # exact counting (the prepared-statement layer): a RowDescription ends the Describe before
    # the answer; it arrives in pieces, so the answer waits for the next message's header
    ("after a RowDescription", [("D", False), "local", ("S", False)],
     [be_write.row_description([("column%d" % i, 25) for i in range(8)]), be_write.ready_for_query(b"I")], 0),
    # ... and with a Flush, not a Sync: nothing comes after it, the answer must not wait for more
    ("after the last RowDescription before a Flush", [("D", False), "local", ("H", False)],
     [be_write.row_description([("column%d" % i, 25) for i in range(8)])], 0),
]


@pytest.mark.parametrize("name,requests,replies,after", _LOCAL_CASES, ids=[c[0] for c in _LOCAL_CASES])
def test_answers_the_pooler_gives_itself_follow_their_message_whatever_the_chunking(in_machine, name, requests,
                                                                                  replies, after):
    """An answer the pooler gives itself (LOCAL) is due right after the reply to the request
    queued before it: the walk splices it there whether that reply, or the header after it,
    ends a read or not (every single cut of the replies, and byte by byte)."""
    local = be_write.notice_response("NOTICE", "00000", "the pooler's own answer")
    prepared = any(r != "local" and r[0] == "D" for r in requests)
    data = b"".join(replies)
    expected = b"".join(m for i, m in enumerate(replies[:after + 1])
                        if not (i == after and ("P", True) in requests)) + local + b"".join(replies[after + 1:])

    def body():
        for cuts in [[]] + [[c] for c in range(1, len(data))] + [list(range(1, len(data)))]:
            h = Harness("session", attached=True, prepared=prepared)
            proto = h.server.proto
            for r in requests:
                if r == "local":
                    proto.send_request(Request(LOCAL, local=local))
                elif r[1]:
                    proto.send_request(Request(ord(r[0]), hide=True))
                else:
                    proto.send(ord(r[0]))
            try:
                back = Collector(h.app, len(expected))
                h.feed(h.pg, h.sio, data, cuts)
                assert back.get() == expected, cuts
                assert proto.broken is None and not proto.output
                synced = ("S", False) in requests
                assert proto.idle is synced and h.client.route.stats.count_query == int(synced)
            finally:
                h.close()
        return True

    assert in_machine(body)


def test_a_swallowed_message_that_ends_a_read_leaves_the_next_reads_forwarded(in_machine):
    """A message the relay swallows (an ErrorResponse replaced by the request's own `error`)
    whose rest comes in later reads and ends exactly where a read ends: the reads after it
    start a message and forward it, and the rest of a forwarded message that goes on past a
    read (skipped, not swallowed) reaches the client whole, whatever the chunking (a cut inside
    the swallowed message and one at its end, and byte by byte)."""
    replacement = be_write.error_response("ERROR", "XX000", "replaced")
    swallowed = be_write.error_response("ERROR", "42601", "the server's own words " + "x" * 20)
    shown = be_write.error_response("ERROR", "22012", "division by zero " + "y" * 20) \
        + be_write.ready_for_query(b"I")
    data = swallowed + be_write.ready_for_query(b"I") + shown
    expected = replacement + be_write.ready_for_query(b"I") + shown
    end = len(swallowed)

    def body():
        for cuts in [[]] + [[c, end] for c in range(6, end)] + [[c] for c in range(6, end)] \
                + [[c, end, end + 6 + 9] for c in (6, 20)] \
                + [list(range(1, len(data)))]:
            h = Harness("session", attached=True)
            proto = h.server.proto
            proto.send_request(Request(ord("Q"), error=replacement))
            proto.send(ord("Q"))
            try:
                back = Collector(h.app, len(expected))
                h.feed(h.pg, h.sio, data, cuts)
                assert back.get() == expected, cuts
                mm.sleep(0)
                assert _unread(h.app) == 0 and proto.broken is None and proto.idle, cuts
                assert not h.relay.s_drop and h.relay.s_skip == 0
            finally:
                h.close()
        return True

    assert in_machine(body)


def test_the_prepared_layer_sees_a_sync_sent_before_its_message_in_the_same_read(in_machine):
    """The client walk tells the Conversation its messages in one call, but before the
    prepared-statement layer looks at a message: a Sync that ends a server's skip (after an
    extended-protocol error) and a named Parse in one read must reach the layer with the skip
    over, so the Parse is mapped to the pool-wide statement (in a skip it is forwarded as sent)."""
    def body():
        h = Harness("transaction", attached=True, prepared=True)
        proto = h.server.proto
        proto.send(ord("B"))
        proto.receive(ord("E"))                  # an error with no Sync yet: the server skips
        assert proto.skipping
        try:
            parse = fe_write.parse("s1", "select 1", [])
            h.app.write(fe_write.sync() + parse + fe_write.sync())
            got = h.pg.read(5, 2000)
            assert got == fe_write.sync()
            rest = h.pg.read(5, 2000)
            rest += h.pg.read(struct.unpack("!I", rest[1:5])[0] - 4, 2000)
            assert rest[:1] == b"P" and b"s1\0" not in rest and b"odyssey_pstmt_" in rest
            assert h.client.prepared["s1"].name.encode() in rest
        finally:
            h.close()
        return True

    assert in_machine(body)


# ----------------------------------------------------------------------------------------------
# pool modes: the detach point

def _exchange(h, request: bytes, reply: bytes):
    """The app sends request, pg reads it whole and answers reply, the app reads it whole."""
    h.app.write(request)
    assert h.pg.read(len(request), 2000) == request
    h.pg.write(reply)
    assert h.app.read(len(reply), 2000) == reply
    mm.sleep(0)


def _q(sql):
    return fe_write.query(sql)


def _sbuf(data) -> bytearray:
    """A relay buffer (relay._Buf, as every server buffer the reply walk reads is) holding
    `data` at its start, for a direct call of Relay._server_data."""
    buf = _new_buf()
    buf[:len(data)] = data
    return buf


def _reply(status, tag="SELECT 1"):
    return be_write.command_complete(tag) + be_write.ready_for_query(status)


def _ext():
    return (fe_write.parse("", "select 1") + fe_write.bind() + fe_write.execute() + fe_write.sync())


def _ext_reply(status):
    return (be_write.parse_complete() + be_write.bind_complete() + be_write.data_row([b"1"])
            + _reply(status))


def test_transaction_mode_detaches_at_idle_ready_only(in_machine):
    def body():
        h = Harness("transaction")
        try:
            _exchange(h, _q("begin"), _reply(b"T", "BEGIN"))
            assert h.fe.attaches == 1 and h.fe.detaches == [] and h.client.server is h.server
            # RowDescription 'T' is not a detach point; 'Z' with 'T' neither
            _exchange(h, _q("select 1"), be_write.row_description([("x", 23)]) + be_write.data_row([b"1"])
                      + _reply(b"T"))
            assert h.fe.detaches == []
            _exchange(h, _q("commit"), _reply(b"I", "COMMIT"))
            assert h.fe.detaches == [(3, 3, b"I")] and h.client.server is None
            # extended protocol: one Sync, one detach
            _exchange(h, _ext(), _ext_reply(b"I"))
            assert h.fe.attaches == 2 and h.fe.detaches[1:] == [(4, 4, b"I")]
            # a failed transaction ('E') keeps the server
            _exchange(h, _q("begin; select 1/0"), be_write.error_response("ERROR", "22012", "division by zero")
                      + be_write.ready_for_query(b"E"))
            assert len(h.fe.detaches) == 2 and h.client.server is h.server
            h.app.close()
            assert _ended(h.result(), ClientGone, Status.ECLIENT_READ)
        finally:
            h.close()
        return True

    assert in_machine(body)


def test_transaction_mode_waits_until_synchronized(in_machine):
    def body():
        h = Harness("transaction")
        try:
            req = _q("select 1") + _q("select 2")          # pipelined: two replies due
            h.app.write(req)
            assert h.pg.read(len(req), 2000) == req
            assert h.server.sync_request == 2
            first = _reply(b"I")
            h.pg.write(first)
            assert h.app.read(len(first), 2000) == first
            mm.sleep(0)
            assert h.fe.detaches == [] and h.server.sync_reply == 1
            h.pg.write(first)
            assert h.app.read(len(first), 2000) == first
            mm.sleep(0)
            assert h.fe.detaches == [(2, 2, b"I")]
            # Flush is not a sync point: it is forwarded (attaching again) but not counted
            req = _ext()[:-len(fe_write.sync())] + fe_write.flush()
            h.app.write(req)
            assert h.pg.read(len(req), 2000) == req
            assert h.server.sync_request == 2 and h.fe.attaches == 2
        finally:
            h.close()
        return True

    assert in_machine(body)


def test_statement_mode_detaches_after_every_synchronized_ready(in_machine):
    def body():
        h = Harness("statement")
        try:
            _exchange(h, _q("begin"), _reply(b"T", "BEGIN"))
            assert h.fe.detaches == [(1, 1, b"T")]
            _exchange(h, _q("select 1"), _reply(b"T"))
            _exchange(h, _ext(), _ext_reply(b"I"))
            assert h.fe.detaches == [(1, 1, b"T"), (2, 2, b"T"), (3, 3, b"I")]
            assert h.fe.attaches == 3
        finally:
            h.close()
        return True

    assert in_machine(body)


def test_session_mode_never_detaches(in_machine):
    def body():
        h = Harness("session")
        try:
            _exchange(h, _q("select 1"), _reply(b"I"))
            _exchange(h, _ext(), _ext_reply(b"I"))
            _exchange(h, _q("begin"), _reply(b"T"))
            assert h.fe.detaches == [] and h.fe.attaches == 1 and h.client.server is h.server
            assert (h.server.sync_request, h.server.sync_reply) == (3, 3)
            h.app.write(_q("select 2") + fe_write.terminate())
            assert h.result() is Status.TERMINATE
            assert h.pg.read(len(_q("select 2")), 2000) == _q("select 2")
            nothing_more(h.pg)
        finally:
            h.close()
        return True

    assert in_machine(body)


# ----------------------------------------------------------------------------------------------
# Terminate, violations, EOF

def test_terminate_without_server_attaches_nothing(in_machine):
    def body():
        h = Harness("transaction")
        try:
            h.app.write(fe_write.terminate())
            assert h.result() is Status.TERMINATE
            assert h.fe.attaches == 0
            nothing_more(h.pg)
        finally:
            h.close()
        return True

    assert in_machine(body)


@pytest.mark.parametrize("data,ends", [(b"X\x00\x00\x00\x04", "terminate"), (b"X\x00\x00\x00\x05", "terminate"),
                                       (b"X\x00\x00\x00\x05!", "terminate"), (b"X\x00\x00\x00\x03", "violation")],
                         ids=["lone", "declares-a-body", "with-a-body", "len3"])
def test_a_terminate_ends_the_session_whatever_its_declared_length(in_machine, data, ends):
    """A Terminate without a server ends the session (the fast path takes a lone one of length
    4 at once, the others as the coroutine's walk does); a length below 4 is a violation."""
    def body():
        h = Harness("transaction")
        try:
            h.app.write(data)
            got = h.result()
            assert h.fe.attaches == 0
            nothing_more(h.pg)
        finally:
            h.close()
        return got

    got = in_machine(body)
    if ends == "terminate":
        assert got is Status.TERMINATE
    else:
        assert isinstance(got, FrontendError) and got.sqlstate == "08P01"


def test_stray_copy_messages_attach_no_server_and_are_dropped(in_machine):
    """CopyData/CopyDone/CopyFail outside COPY (PostgreSQL ignores them) hold no pooled server,
    however they are cut; the next real request attaches and only it is forwarded."""
    big = fe_write.copy_data(b"z" * (BUF_SIZE * 2 + 3))      # spans several reads

    def body():
        h = Harness("transaction")
        try:
            stray = fe_write.copy_data(b"x") + fe_write.copy_done() + big + fe_write.copy_fail("no")
            h.feed(h.app, h.cio, stray, [3, 9, 17, 1000, len(stray) - 4])
            mm.sleep(5)
            assert h.fe.attaches == 0 and h.client.server is None
            nothing_more(h.pg)
            q = fe_write.query("select 1")
            h.app.write(fe_write.copy_done() + q)
            assert h.pg.read(len(q), 2000) == q
            assert h.fe.attaches == 1
            nothing_more(h.pg)
            assert h.client.route.stats.bytes_recv == len(q)
        finally:
            h.close()
        return True

    assert in_machine(body)


def test_a_swallowed_stray_message_leaves_c_drop_only_with_c_skip(in_machine):
    """c_drop (the rest of a stray COPY message swallowed) is set only while c_skip counts that
    rest, and cleared where the rest ends, however the message is cut (at its end too): the
    client callback (Relay._on_client) tests c_skip alone for both before it takes a request
    inline. After the stray message the next request is forwarded, and only it."""
    stray = fe_write.copy_data(b"x" * 40)

    def body():
        for cut in range(1, len(stray) + 1):
            h = Harness("transaction")
            try:
                for piece in (stray[:cut], stray[cut:]):
                    if piece:
                        h.app.write(piece, 2000)
                        h.settle(h.cio)
                        assert h.relay.c_skip or not h.relay.c_drop, cut
                assert not h.relay.c_skip and not h.relay.c_drop, cut
                assert h.fe.attaches == 0
                q = fe_write.query("select 1")
                h.app.write(q)
                assert h.pg.read(len(q), 2000) == q
                nothing_more(h.pg)
            finally:
                h.close()
        return True

    assert in_machine(body)


@pytest.mark.parametrize("bad", [
    b"\x01\x00\x00\x00\x04",                 # not a frontend message type
    b"Z\x00\x00\x00\x05I",                   # a backend-only type
    b"Q\x00\x00\x00\x03",                    # declared length < 4
    b"Q\xff\xff\xff\xff",                    # absurd length
], ids=["type-1", "type-Z", "len3", "len-huge"])
def test_protocol_violation(in_machine, bad):
    def body():
        h = Harness("transaction")
        try:
            h.app.write(_q("select 1")[:3])      # a partial header first, then the bad one after it
            h.settle(h.cio)
            h.app.write(_q("select 1")[3:] + bad)
            err = h.result()
            assert isinstance(err, FrontendError), err
            assert err.sqlstate == "08P01" and err.severity == "FATAL"
            assert err.message == "unexpected message type from client or other protocol violation"
        finally:
            h.close()
        return True

    assert in_machine(body)


def test_server_eof_is_eserver_read(in_machine):
    def body():
        h = Harness("session")
        try:
            h.app.write(_q("select pg_sleep(10)"))
            h.pg.read(len(_q("select pg_sleep(10)")), 2000)
            h.pg.write(be_write.row_description([("x", 23)]))
            h.pg.close()
            assert _ended(h.result(), ServerError, Status.ESERVER_READ)
        finally:
            h.close()
        return True

    assert in_machine(body)


@pytest.mark.parametrize("attached", [False, True])
def test_client_eof_is_eclient_read(in_machine, attached):
    def body():
        h = Harness("session", attached=attached)
        try:
            h.app.write(_q("sel")[:4])           # an unfinished header, then EOF
            h.settle(h.cio)
            h.app.close()
            assert _ended(h.result(), ClientGone, Status.ECLIENT_READ)
        finally:
            h.close()
        return True

    assert in_machine(body)


def test_client_write_failure_is_eclient_write(in_machine):
    def body():
        h = Harness("session", attached=True)
        try:
            h.app.sock.shutdown(gsocket.SHUT_RD)    # writes to the client fail; its reads see no EOF
            h.pg.write(_reply(b"I"))
            assert _ended(h.result(), ClientGone, Status.ECLIENT_WRITE)
        finally:
            h.close()
        return True

    assert in_machine(body)


def test_transaction_mode_detaches_at_idle_ready_even_if_a_partial_message_follows(in_machine):
    def body():
        h = Harness("transaction")
        try:
            h.app.write(_q("select 1"))
            h.pg.read(len(_q("select 1")), 2000)
            notice = be_write.notice_response("NOTICE", "00000", "late notice")
            h.pg.write(_reply(b"I") + notice[:3])
            h.settle(h.sio)
            h.pg.write(notice[3:])
            h.settle(h.sio)
            mm.sleep(5)
            assert h.fe.detaches == [(1, 1, b"I")]
        finally:
            h.close()
        return True
    assert in_machine(body)


def test_no_detach_while_the_client_has_an_unsynced_extended_batch(in_machine):
    """P B E S P B E in one write: the first ReadyForQuery must not hand the server to another
    client while the second batch still waits for its Sync (its results would go elsewhere)."""
    def body():
        h = Harness("transaction")
        try:
            first = fe_write.parse("", "select 1") + fe_write.bind() + fe_write.execute() + fe_write.sync()
            second = fe_write.parse("", "select 2") + fe_write.bind() + fe_write.execute()
            h.app.write(first + second)
            h.pg.read(len(first + second), 2000)
            h.pg.write(_ext_reply(b"I") + be_write.parse_complete() + be_write.bind_complete())
            h.settle(h.sio)
            mm.sleep(5)
            assert h.fe.detaches == []
            assert not h.relay.server_clean
            h.app.write(fe_write.sync())
            h.pg.read(len(fe_write.sync()), 2000)
            h.pg.write(_reply(b"I"))
            h.settle(h.sio)
            mm.sleep(5)
            assert h.fe.detaches == [(2, 2, b"I")]
        finally:
            h.close()
        return True
    assert in_machine(body)


def test_a_half_forwarded_client_message_makes_the_server_unclean(in_machine):
    def body():
        h = Harness("session")
        try:
            parse = fe_write.parse("", "select '" + "x" * 1000 + "'")
            h.app.write(parse[:40])
            h.pg.read(40, 2000)
            assert not h.relay.server_clean      # the backend waits for the rest of the body
            h.app.close()
            assert _ended(h.result(), ClientGone, Status.ECLIENT_READ)
            assert not h.relay.server_clean
        finally:
            h.close()
        return True
    assert in_machine(body)


def test_extended_copy_in_syncs_ignored_by_postgres_are_not_counted(in_machine):
    """libpq's PQexecParams("COPY ... FROM STDIN"): P B E S, then after CopyInResponse d c S.
    PostgreSQL ignores the first Sync (it arrives in COPY-in mode), so 2 Syncs earn 1 ReadyForQuery."""
    def body():
        h = Harness("transaction")
        try:
            start = fe_write.parse("", "copy t from stdin") + fe_write.bind() + fe_write.execute() + fe_write.sync()
            h.app.write(start)
            h.pg.read(len(start), 2000)
            copy_in = b"G" + struct.pack("!IBH", 7, 0, 0)
            h.pg.write(be_write.parse_complete() + be_write.bind_complete() + copy_in)
            h.settle(h.sio)
            rest = fe_write.copy_data(b"1\n") + fe_write.copy_done() + fe_write.sync()
            h.app.write(rest)
            h.pg.read(len(rest), 2000)
            h.pg.write(_reply(b"I", "COPY 1"))
            h.settle(h.sio)
            mm.sleep(5)
            assert h.server.synchronized
            assert h.fe.detaches == [(1, 1, b"I")]
        finally:
            h.close()
        return True
    assert in_machine(body)


@pytest.mark.parametrize("protocol", ["extended", "simple"])
def test_copy_data_sent_before_copy_in_response_is_counted_right(in_machine, protocol):
    """A client may send the whole COPY (start, data, CopyDone, Sync) in one write, before the
    server's CopyInResponse: only the Syncs before CopyDone are ignored by PostgreSQL, and the
    client is not left 'in COPY' once the server asks for the data it already has."""
    def body():
        h = Harness("transaction")
        try:
            data = fe_write.copy_data(b"1\n") + fe_write.copy_done()
            if protocol == "extended":
                start = fe_write.parse("", "copy t from stdin") + fe_write.bind() + fe_write.execute()
                sent = start + fe_write.sync() + data + fe_write.sync()
                head = be_write.parse_complete() + be_write.bind_complete()
            else:
                sent = fe_write.query("copy t from stdin") + data
                head = b""
            h.app.write(sent)
            h.pg.read(len(sent), 2000)
            copy_in = b"G" + struct.pack("!IBH", 7, 0, 0)
            h.pg.write(head + copy_in + _reply(b"I", "COPY 1"))
            h.settle(h.sio)
            mm.sleep(5)
            assert h.server.synchronized and not h.server.broken
            assert h.fe.detaches == [(1, 1, b"I")]
            assert h.relay.server_clean
        finally:
            h.close()
        return True
    assert in_machine(body)


def test_more_ready_for_query_than_requests_marks_the_server_broken(in_machine):
    """The safety net: if the relay's request counting ever goes wrong, that server is never
    given to another client (it is closed at the next detach point)."""
    def body():
        h = Harness("transaction", attached=True)
        try:
            h.pg.write(_reply(b"I"))              # a ReadyForQuery nobody asked for
            h.settle(h.sio)
            mm.sleep(5)
            assert h.server.broken
            assert h.fe.detaches == []
        finally:
            h.close()
        return True
    assert in_machine(body)



def test_a_closed_relay_is_freed_without_the_garbage_collector():
    """Relay.close() (frontend.cleanup) breaks the relay -> bound callback -> relay cycle: an
    ended session left to the garbage collector made it run every few logins."""
    import gc
    a, c = gsocket.socketpair()
    client = SimpleNamespace(io=mm.Io(c), rule=SimpleNamespace(pool="transaction"),
                             route=SimpleNamespace(stats=RouteStats()), server=None, vars={}, killed=False)
    fe = FakeFrontend(client, None)
    gc.collect()
    gc.disable()
    try:
        relay = Relay(fe, client)
        relay.close()
        del relay
        assert gc.collect() == 0
        relay = Relay(fe, client)           # not closed: only the collector frees it
        del relay
        assert gc.collect() > 0
    finally:
        gc.enable()
        a.close()
        c.close()


# -- reads laid out as one seen before (relay._C_SHAPES, _S_SHAPES) ----------------------------

def _shapes():
    from odyssey_gevent import relay as relay_mod
    relay_mod._C_SHAPES.clear()
    relay_mod._S_SHAPES.clear()
    return relay_mod


@pytest.mark.parametrize("pool", ["session", "transaction"])
def test_a_request_laid_out_as_one_seen_before_is_checked_as_the_walk_checks_it(in_machine, pool):
    """A client read laid out as a read seen before skips the header walk: the same types and
    lengths say the same. A read of that length laid out otherwise is walked: a Flush where the
    learned layout has its Sync (the same length) is no Sync, and a forbidden type there is
    still a protocol violation. With a server attached, and where the fast path has just
    attached one (transaction pooling; the coroutine walks what it reads without a server)."""
    relay_mod = _shapes()
    request = _ext()
    unsynced = request[:-len(fe_write.sync())] + fe_write.flush()
    assert len(unsynced) == len(request)

    def body():
        h = Harness(pool)
        try:
            for i in range(4):
                _exchange(h, request, _ext_reply(b"I"))
            if pool == "session" or h.relay.fast_ok:        # learned, then used
                assert isinstance(relay_mod._C_SHAPES.get(len(request)), tuple)
            assert (h.server.sync_request, h.server.sync_reply) == (4, 4) and not h.server.broken
            assert h.client.route.stats.bytes_recv == 4 * len(request)
            h.app.write(unsynced)
            assert h.pg.read(len(unsynced), 2000) == unsynced
            assert h.server.sync_request == 4 and not h.relay.server_clean    # no Sync counted
            head = (be_write.parse_complete() + be_write.bind_complete() + be_write.data_row([b"1"])
                    + be_write.command_complete("SELECT 1"))
            h.pg.write(head)
            assert h.app.read(len(head), 2000) == head
            _exchange(h, fe_write.sync(), be_write.ready_for_query(b"I"))
            assert (h.server.sync_request, h.server.sync_reply) == (5, 5) and not h.server.broken
            if pool == "session" or h.relay.fast_ok:
                # a length laid out two ways is walked from now on, not learned again and again
                assert relay_mod._C_SHAPES[len(request)] is relay_mod._NEVER
            for i in range(3):
                _exchange(h, request, _ext_reply(b"I"))
            assert (h.server.sync_request, h.server.sync_reply) == (8, 8) and not h.server.broken
            assert relay_mod._C_SHAPES.get(len(request), relay_mod._NEVER) is relay_mod._NEVER
            h.app.write(request[:-5] + b"\x01" + request[-4:])    # the Sync's type byte forbidden
            err = h.result()
            assert isinstance(err, FrontendError) and err.sqlstate == "08P01", err
        finally:
            h.close()
        return True

    assert in_machine(body)


def test_a_read_that_ends_inside_a_message_is_never_taken_for_a_layout(in_machine):
    """Reads of the same length that end inside a message (the rest comes in the next read) are
    not remembered as a layout of whole messages: each is relayed and counted whole."""
    _shapes()
    request = _ext() + fe_write.query("select " + "1" * 40)
    cut = len(_ext()) + 10              # inside the Query's body

    def body():
        h = Harness("session")
        try:
            for i in range(4):
                h.app.write(request[:cut])
                h.settle(h.cio)
                h.app.write(request[cut:])
                assert h.pg.read(len(request), 2000) == request
                reply = _ext_reply(b"I") + _reply(b"I")
                h.pg.write(reply)
                assert h.app.read(len(reply), 2000) == reply
                mm.sleep(0)
            assert (h.server.sync_request, h.server.sync_reply) == (8, 8) and not h.server.broken
            assert h.relay.server_clean
        finally:
            h.close()
        return True

    assert in_machine(body)


def test_a_reply_the_walk_refuses_is_never_laid_out(in_machine):
    """A server read with a message length under 4 is the server's read error each time it is
    seen, though a read's layout is made (the second time its length is seen) before the walk:
    such bytes are never remembered as a layout that a later read of them would pass unwalked
    (its headers alone make one: a ParseComplete, a short BindComplete, a ReadyForQuery)."""
    relay_mod = _shapes()
    bad = bytearray(be_write.parse_complete() + b"2\0\0\0\x03" + b"\0\0\0\x04" + be_write.ready_for_query(b"I"))
    assert relay_mod._server_shape(bad, len(bad), relay_mod._S_KIND) is relay_mod._NEVER

    def body():
        for i in range(3):
            h = Harness("session", attached=True)
            try:
                for t in b"PBDES":
                    h.server.proto.send(t)
                with pytest.raises(ServerError, match="invalid message length 3"):
                    h.relay._server_data(h.server, _sbuf(bad), len(bad))
                shape = relay_mod._S_SHAPES.get(len(bad))
                assert shape is None or shape is relay_mod._SEEN or shape is relay_mod._NEVER
            finally:
                h.close()
        return True

    assert in_machine(body)


@pytest.mark.parametrize("prepared", [False, True], ids=["plain", "prepared"])
def test_a_reply_laid_out_as_one_seen_before_is_told_as_the_walk_tells_it(in_machine, prepared):
    """A server read laid out as one seen before skips the walk up to its ReadyForQuery (with
    the prepared-statement layer: up to its CommandComplete, whose tag the layer reads), the
    Conversation told the same messages. A reply of that length laid out otherwise is walked: a
    ParameterStatus where the learned layout had a DataRow of the same length is recorded."""
    relay_mod = _shapes()
    relay_mod._S_SHAPES_PREPARED.clear()
    shapes = relay_mod._S_SHAPES_PREPARED if prepared else relay_mod._S_SHAPES
    reply = _ext_reply(b"I")
    row = be_write.data_row([b"1"])
    param = be_write.parameter_status("ab", "cde")
    assert len(param) == len(row) and row in reply
    other = reply.replace(row, param)

    def body():
        h = Harness("transaction", prepared=prepared)
        try:
            for i in range(4):
                _exchange(h, _ext(), reply)
            assert isinstance(shapes.get(len(reply)), tuple)     # learned, then used
            assert (h.server.sync_request, h.server.sync_reply) == (4, 4) and not h.server.broken
            stats = h.client.route.stats
            assert stats.count_query == 4 and stats.count_tx == 4
            assert h.fe.detaches[-1] == (4, 4, b"I")
            _exchange(h, _ext(), other)
            assert _param(h.server, "ab") == "cde" and h.client.vars["ab"] == "cde"
            assert h.fe.detaches[-1] == (5, 5, b"I") and not h.server.broken
            assert shapes[len(reply)] is relay_mod._NEVER   # laid out two ways: walked from now on
            for i in range(2):
                _exchange(h, _ext(), reply)
            assert h.fe.detaches[-1] == (7, 7, b"I") and not h.server.broken
            assert shapes[len(reply)] is relay_mod._NEVER
            # a reply whose completions are not owed: the walk's out-of-step check, the same
            _exchange(h, _q("select 1"), reply)
            assert h.server.broken
        finally:
            h.close()
        return True

    assert in_machine(body)


@pytest.mark.parametrize("prepared", [False, True], ids=["plain", "prepared"])
def test_a_remembered_reply_s_ready_for_query_is_read_with_its_status(in_machine, prepared):
    """A reply laid out as one seen before up to the ReadyForQuery that ends it has that
    ReadyForQuery's header and status byte checked with the layout (without the
    prepared-statement layer, whose layout stops at the CommandComplete): the layout holds the
    idle status, and a read that differs from it in the status alone is the same layout with its
    own status (not walked, the layout kept): each status is the walk's, a transaction's T and E
    keep the server, I gives it back. A read of that length ending with another message where
    the ReadyForQuery was is walked (the header is part of the layout)."""
    relay_mod = _shapes()
    relay_mod._S_SHAPES_PREPARED.clear()
    shapes = relay_mod._S_SHAPES_PREPARED if prepared else relay_mod._S_SHAPES
    reply = _ext_reply(b"I")
    notice = b"N" + (5).to_bytes(4, "big") + b"\0"     # an empty NoticeResponse: a ReadyForQuery's length
    assert len(notice) == len(be_write.ready_for_query(b"I"))

    def body():
        h = Harness("transaction", prepared=prepared)
        try:
            for i in range(3):
                _exchange(h, _ext(), reply)
            shape = shapes.get(len(reply))
            assert isinstance(shape, tuple) and (shape[6] is not None) is (not prepared)
            assert h.fe.detaches[-1] == (3, 3, b"I")
            for status in b"TTEI":
                _exchange(h, _ext(), _ext_reply(bytes([status])))
                assert h.server.tx_status == bytes([status])
                assert shapes[len(reply)] is shape      # still the layout (fails where T or E is walked)
            # the T and E kept the server: one detach more, at the I
            assert h.fe.detaches[3:] == [(7, 7, b"I")] and not h.server.broken
            stats = h.client.route.stats
            assert stats.count_query == 7 and stats.count_tx == 4
            h.app.write(_ext())
            assert h.pg.read(len(_ext()), 2000) == _ext()
            head = reply[:-len(notice)] + notice
            h.pg.write(head)
            assert h.app.read(len(head), 2000) == head
            mm.sleep(0)
            assert len(h.fe.detaches) == 4 and not h.server.broken      # no ReadyForQuery yet
            if not prepared:
                assert shapes[len(reply)] is relay_mod._NEVER
            h.pg.write(be_write.ready_for_query(b"I"))
            assert h.app.read(6, 2000) == be_write.ready_for_query(b"I")
            mm.sleep(0)
            assert h.fe.detaches[-1] == (8, 8, b"I") and not h.server.broken
        finally:
            h.close()
        return True

    assert in_machine(body)


@pytest.mark.parametrize("prepared", [False, True], ids=["plain", "prepared"])
def test_an_error_in_a_pipeline_laid_out_as_before_is_counted_as_the_walk_counts_it(in_machine, prepared):
    """Two extended batches in one write, the first failing: the remembered layouts of the
    request and of the reply (its ErrorResponse told to the Conversation from the layout, or
    read whole by the walk with the prepared-statement layer) count what the walk counts."""
    relay_mod = _shapes()
    relay_mod._S_SHAPES_PREPARED.clear()
    request = _ext() + _ext()
    reply = (be_write.parse_complete() + be_write.bind_complete()
             + be_write.error_response("ERROR", "22012", "division by zero") + be_write.ready_for_query(b"I")
             + _ext_reply(b"I"))

    def body():
        h = Harness("transaction", prepared=prepared)
        try:
            for i in range(1, 5):
                _exchange(h, request, reply)
                assert h.fe.detaches[-1] == (2 * i, 2 * i, b"I") and not h.server.broken
            stats = h.client.route.stats
            assert stats.count_query == 8 and stats.count_tx == 8
            shapes = relay_mod._S_SHAPES_PREPARED if prepared else relay_mod._S_SHAPES
            assert isinstance(shapes.get(len(reply)), tuple)
        finally:
            h.close()
        return True

    assert in_machine(body)


# the layouts' checks against the one they had before (each header two big-endian fields, "!BI",
# one per message, and a ReadyForQuery's status a "c"): the same reads accepted and refused, a
# status told apart the same

def _old_format(lengths, status):
    fmt = "!"
    for i, length in enumerate(lengths):
        if status and i == len(lengths) - 1:
            fmt += "BIc"
        else:
            fmt += f"BI{length - 4}x" if length > 4 else "BI"
    return struct.Struct(fmt).unpack_from


# message bodies: none (runs of headers), short, and lengths about 256 (a length field's low
# byte wraps); types the reply walk only tells or lets pass (no ReadyForQuery, ParameterStatus)
_BODIES = st.sampled_from([0, 0, 0, 0, 0, 1, 2, 9, 250, 251, 252, 253, 300])
_TYPES = st.sampled_from(b"123CDTInsEAN\0\xff")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(_TYPES, _BODIES), min_size=1, max_size=16), st.booleans(), st.data())
def test_a_layout_accepts_and_refuses_the_reads_its_old_fields_did(messages, head, data):
    """A layout's unpack (little-endian: an `I` of a header's type and high length bytes, a `B`
    of its low byte, a run of three headers or more one bytes field) compares equal for exactly
    the reads the one-field-per-type-and-length unpack compared equal for: a remembered read
    with bytes changed anywhere (headers, bodies, the status) is accepted by both or by
    neither, and a read that differs in its ReadyForQuery's status alone is told so by both
    with the same status. Client and server layouts alike."""
    from odyssey_gevent import relay as relay_mod
    read = b"".join(bytes([t]) + struct.pack("!I", body + 4) + (bytes(range(256)) * 2)[:body] for t, body in messages)
    lengths = [body + 4 for _, body in messages]
    if head:
        read += be_write.ready_for_query(b"I")
        lengths.append(5)
    buf = bytearray(read)
    end = len(buf)
    shape = relay_mod._server_shape(buf, end, relay_mod._S_KIND)
    client = relay_mod._client_shape(buf, end, list(b"PBDES"))
    if not 2 <= len(lengths) <= relay_mod._SHAPE_MESSAGES:
        assert shape is relay_mod._NEVER
    else:
        assert shape[3] == end - 6 * head and (shape[6] is not None) == head
    if len(lengths) > relay_mod._SHAPE_MESSAGES:
        assert client is relay_mod._NEVER
        return
    old, old_client = _old_format(lengths, head), _old_format(lengths, False)
    old_headers = old(buf)
    if head:
        old_headers = old_headers[:-1] + (b"I",)
    # the read itself, every header byte and the last byte (a status) changed alone, then a few
    # bytes anywhere changed together
    reads = [bytearray(buf)]
    flip = data.draw(st.sampled_from([1, 0x80, 0xff]))
    for at in sorted(_header_bytes(lengths) | {end - 1}):
        other = bytearray(buf)
        other[at] ^= flip
        reads.append(other)
    other = bytearray(buf)
    for at, value in data.draw(st.lists(st.tuples(st.integers(0, end - 1), st.integers(0, 255)), max_size=3)):
        other[at] = value
    reads.append(other)
    for other in reads:
        assert (client[0](other) == client[1]) == (old_client(other) == old_client(buf))
        if shape:
            unpack, headers = shape[0], shape[1]
            vals, old_vals = unpack(other), old(other)
            assert (vals == headers) == (old_vals == old_headers)
            if head:
                assert (vals[:-1] == headers[:-1]) == (old_vals[:-1] == old_headers[:-1])
                assert vals[-1] is old_vals[-1]


def _header_bytes(lengths):
    at, heads = 0, set()
    for length in lengths:
        heads.update(range(at, at + 5))
        at += 1 + length
    return heads


def test_the_extended_reply_s_layout_is_eight_small_fields():
    """pgbench -M extended's reply (ParseComplete, BindComplete, RowDescription, DataRow,
    CommandComplete, ReadyForQuery) is checked with eight fields, not thirteen: the three
    headers in a row one bytes field, the other headers' ints the interpreter's small ints
    (cached: no allocation, compared by identity), the status a one-byte bytes."""
    from odyssey_gevent import relay as relay_mod
    reply = bytearray(be_write.parse_complete() + be_write.bind_complete()
                      + be_write.row_description([("abalance", 23)])
                      + be_write.data_row([b"-4711"]) + _reply(b"T"))
    shape = relay_mod._server_shape(reply, len(reply), relay_mod._S_KIND)
    headers = shape[0](reply)
    assert len(headers) == 8 and headers[-1] == b"T" and shape[1][-1] == b"I"
    assert headers[0] == bytes(reply[:15])
    assert all(v is int(str(v)) for v in headers[1:-1])


# ----------------------------------------------------------------------------------------------
# the reply walk's inline copy of Conversation.receive's common case (a ReadyForQuery)

def _owing(case: str) -> Conversation:
    """A Conversation in one of the states a ReadyForQuery may meet, made by what the relay
    tells it: a Query, an extended batch (plain and exact), pipelined Queries, a Query with a
    Describe after it (unsynced), a COPY (and one with a Describe after it), a request the
    pooler sent itself; and three it should not meet: a Parse alone, a Parse before the Sync
    (its ParseComplete missed), nothing owed."""
    conv = Conversation(exact=case == "exact")
    if case in ("query", "pipelined", "unsynced", "copy", "copy-unsynced"):
        conv.send(ord("Q"))
    if case == "pipelined":
        conv.send(ord("Q"))
    elif case in ("unsynced", "copy-unsynced"):
        conv.send(ord("D"))
    if case in ("copy", "copy-unsynced"):
        conv.receive(ord("G"))
    elif case in ("parse", "parse-sync"):
        conv.send(ord("P"))
        if case == "parse-sync":
            conv.send(ord("S"))
    elif case in ("extended", "exact"):
        for t in b"PBDES":
            conv.send(t)
        for t in (b"12TC" if case == "exact" else b"12"):
            conv.receive(t)
    elif case == "hidden":
        conv.send_request(Request(ord("Q"), hide=True))
    return conv


@pytest.mark.parametrize("case", ["query", "extended", "exact", "pipelined", "unsynced", "copy", "copy-unsynced",
                                  "hidden", "parse", "parse-sync", "nothing"])
@pytest.mark.parametrize("status", [b"I", b"T", b"E"])
def test_the_walk_tells_a_ready_for_query_as_receive_does(in_machine, case, status):
    """The reply walk's inline copy of Conversation.receive's common case (the last request
    owed, a plain Query or Sync, answered) leaves the Conversation as receive leaves it, and
    forwards the message unless receive drops it, in every state a ReadyForQuery may meet
    (the others are receive's own)."""
    def state(conv):
        return ([e if e.__class__ is int else (e.type, e.hide) for e in conv.queue], conv.syncs, conv.phase,
                conv.unsynced, conv.tx_status, conv.replies, conv.broken, list(conv.output or ()))

    def body():
        told = _owing(case)
        action = told.receive(ord("Z"), status)
        h = Harness("session", attached=True)
        try:
            walked = h.server.proto = _owing(case)
            msg = be_write.ready_for_query(status)
            h.relay._server_data(h.server, _sbuf(msg), len(msg))
            assert state(walked) == state(told)
            assert _unread(h.app) == (0 if action else len(msg))
        finally:
            h.close()
        return True

    assert in_machine(body)


def _batch(case: str) -> Conversation:
    """A Conversation an extended reply (ParseComplete, BindComplete, a row, CommandComplete,
    ReadyForQuery) may meet: its batch, the batch behind a Query still owed, a batch without
    its Parse, one with an answer the pooler gives itself after the Parse, a batch whose Parse
    alone is queued, nothing owed; two batches pipelined, the batch in exact counting (a server
    the prepared-statement layer used: its Sync flagged), the batch met in SKIP (a state the
    relay's layout of the whole reply must leave to the walk); the batch told by send_many from
    kiwi's memory (Conversation.batch marks it: the layout's `whole` path), that marked batch
    behind a Query still owed (marked too: the queue longer than the batch), and with its Parse
    answered and a Query sent after it (as long as the batch: the mark must be gone)."""
    conv = Conversation(exact=case == "exact")
    if case.startswith("marked"):
        Conversation().send_many(b"PBES")       # remembered by kiwi
        if case == "marked-behind-query":
            conv.send(ord("Q"))
        conv.send_many(b"PBES")
        assert conv.batch is not None
        if case == "marked-popped-query":
            conv.receive(ord("1"))
            conv.send(ord("Q"))
        return conv
    if case == "behind-query":
        conv.send(ord("Q"))
    if case == "request-after":
        conv.send(ord("P"))
        conv.send_request(Request(LOCAL, local=be_write.close_complete()))   # an answer it gives itself
        types = b"BES"
    elif case == "no-parse":
        types = b"BES"
    elif case == "parse-only":
        types = b"P"
    elif case == "nothing":
        types = b""
    elif case == "pipelined":
        types = b"PBESPBES"
    else:
        types = b"PBES"
    for t in types:
        conv.send(t)
    if case == "skip":
        conv.phase = Phase.SKIP
    return conv


@pytest.mark.parametrize("case", ["batch", "behind-query", "no-parse", "request-after", "parse-only", "nothing",
                                  "pipelined", "exact", "skip", "marked", "marked-popped-query",
                                  "marked-behind-query"])
def test_a_remembered_reply_tells_its_completions_as_the_walk_does(in_machine, case):
    """A reply laid out as one seen before tells its ParseComplete and BindComplete with the
    relay's inline copy of Conversation.receive_completions (each while it answers the plain
    request at the head), the rest one by one: the Conversation, the bytes the client gets and
    the server's broken mark end as the walk of the same reply leaves them, in each state."""
    from odyssey_gevent import relay as relay_mod
    reply = bytearray(_ext_reply(b"I"))

    def told(remembered):
        relay_mod._S_SHAPES.clear()
        if remembered:
            relay_mod._S_SHAPES[len(reply)] = relay_mod._server_shape(reply, len(reply), relay_mod._S_KIND)
        h = Harness("session", attached=True)
        try:
            conv = h.server.proto = _batch(case)
            h.relay._server_data(h.server, _sbuf(reply), len(reply))
            return ([e if e.__class__ is int else (e.type, e.hide) for e in conv.queue], conv.syncs, conv.phase,
                    conv.unsynced, conv.tx_status, conv.replies, conv.broken, h.server.broken, _unread(h.app))
        finally:
            h.close()
            relay_mod._S_SHAPES.clear()

    def body():
        shape = relay_mod._server_shape(reply, len(reply), relay_mod._S_KIND)
        assert shape[4] == b"12" and shape[5] == tuple(b"PBS") and shape[7] == 3     # the queue it answers whole
        if case == "marked":    # the mark is the layout's `whole` itself (the identity the walk tests)
            assert _batch(case).batch is shape[5]
        walked, remembered = told(False), told(True)
        assert remembered == walked
        return walked

    walked = in_machine(body)
    assert (walked[6] is None) is (case in ("batch", "request-after", "pipelined", "skip", "marked"))  # others: out of step
    if case == "request-after":         # the pooler's own answer spliced in after the ParseComplete
        assert walked[8] == len(reply) + len(be_write.close_complete())


@pytest.mark.parametrize("status", [b"I", b"T"])
@pytest.mark.parametrize("reply_, case", [("simple", c) for c in ("query", "pipelined", "unsynced", "copy",
                                                                  "copy-unsynced", "hidden", "local-after", "parse",
                                                                  "nothing")]
                         + [("extended", c) for c in ("batch", "behind-query", "no-parse", "request-after",
                                                      "nothing", "pipelined", "exact", "skip", "marked",
                                                      "marked-popped-query", "marked-behind-query")])
def test_a_remembered_reply_ends_as_the_walk_ends_it(in_machine, reply_, case, status):
    """A reply laid out as one seen before whose last message is a ReadyForQuery has it told
    without the walk's loop (the relay's copy of the loop's ReadyForQuery branch): the
    Conversation, the server's broken mark, the bytes the client gets, the query and
    transaction counts and times started, and the detach mark end as the walk of the same reply
    leaves them, in each state the reply may meet (transaction pooling: the detach too)."""
    from odyssey_gevent import relay as relay_mod
    if reply_ == "simple":
        reply = bytearray(be_write.row_description([("x", 23)]) + be_write.data_row([b"1"]) + _reply(status))
    else:
        reply = bytearray(_ext_reply(status))

    def told(remembered):
        relay_mod._S_SHAPES.clear()
        if remembered:
            shape = relay_mod._S_SHAPES[len(reply)] = relay_mod._server_shape(reply, len(reply), relay_mod._S_KIND)
            assert shape[6] is not None     # the layout checks the ReadyForQuery's header and status
        h = Harness("transaction", attached=True)
        try:
            if case == "local-after":   # a Query, then an answer the pooler gives itself after it
                conv = _owing("query")
                conv.send_request(Request(LOCAL, local=be_write.close_complete()))
            else:
                conv = _owing(case) if reply_ == "simple" else _batch(case)
            h.server.proto = conv
            relay, stats = h.relay, h.client.route.stats
            relay.q_start = relay.tx_start = 1.0        # a request under way since then (monotonic)
            h.relay._server_data(h.server, _sbuf(reply), len(reply))
            if remembered:      # told by the layout (a T by its status fallback), not walked
                assert relay_mod._S_SHAPES[len(reply)] is shape
            return ([e if e.__class__ is int else (e.type, e.hide) for e in conv.queue], conv.syncs, conv.phase,
                    conv.unsynced, conv.tx_status, conv.replies, conv.broken, list(conv.output or ()), h.server.broken,
                    _unread(h.app), stats.count_query, stats.count_tx, stats.query_time > 0, stats.tx_time > 0,
                    # the start times None, left at 1.0 (False) or restarted at the clock's read (True):
                    # a fresh monotonic() read differs between the two runs
                    [None if x is None else x > 1.0 for x in (relay.q_start, relay.tx_start)],
                    relay.s_ready, relay.s_len, relay.s_skip, len(h.fe.detaches))
        finally:
            h.close()
            relay_mod._S_SHAPES.clear()

    def body():
        walked, remembered = told(False), told(True)
        assert remembered == walked
        return walked

    walked = in_machine(body)
    assert walked[10] == 1
    if case in ("query", "batch"):      # in step: the status told
        assert walked[4] == status and walked[11] == (1 if status == b"I" else 0) and walked[6] is None


@pytest.mark.parametrize("hold", [None, "client-mid-message", "broken"])
@pytest.mark.parametrize("remembered", [False, True])
@pytest.mark.parametrize("reply_", ["simple", "extended"])
def test_an_idle_ready_for_query_detaches_only_a_server_nothing_holds(in_machine, reply_, remembered, hold):
    """The reply walk's detach at an idle ReadyForQuery (transaction pooling), for a reply
    walked and for one told by its layout (which settles the server: the detach takes the
    transaction status the layout's branch read and skips the tests of what the server still
    owes): not while the client is in the middle of a message (c_skip: the rest of it is still
    to be forwarded) nor for a broken server; otherwise detached once."""
    from odyssey_gevent import relay as relay_mod
    if reply_ == "simple":
        reply = bytearray(be_write.row_description([("x", 23)]) + be_write.data_row([b"1"]) + _reply(b"I"))
    else:
        reply = bytearray(_ext_reply(b"I"))

    def body():
        relay_mod._S_SHAPES.clear()
        if remembered:
            shape = relay_mod._S_SHAPES[len(reply)] = relay_mod._server_shape(reply, len(reply), relay_mod._S_KIND)
        h = Harness("transaction", attached=True)
        try:
            # the query's (extended: the marked batch, told whole by the layout)
            conv = h.server.proto = _owing("query") if reply_ == "simple" else _batch("marked")
            if hold == "client-mid-message":
                h.relay.c_skip = 7      # (as the client walk leaves it: 7 bytes of a message to come)
            elif hold == "broken":
                h.server.broken = True
            h.relay._server_data(h.server, _sbuf(reply), len(reply))
            if remembered:      # told by the layout, not walked
                assert relay_mod._S_SHAPES[len(reply)] is shape
            return len(h.fe.detaches), conv.phase, conv.tx_status, _unread(h.app) == len(reply)
        finally:
            h.close()
            relay_mod._S_SHAPES.clear()

    assert in_machine(body) == (0 if hold else 1, Phase.READY, b"I", True)


def _sketched(in_machine, reply_: str, remembered: bool, status: bytes):
    """The relay's stats after a reply ending in ReadyForQuery(`status`) with the rule's
    quantiles on (tx_start 1.0, q_start 2.0: monotonic seconds, the query started later),
    walked or told by its layout (remembered), and the relay's tx_start and the
    Conversation's status after it."""
    from odyssey_gevent import relay as relay_mod
    if reply_ == "simple":
        reply = bytearray(be_write.row_description([("x", 23)]) + be_write.data_row([b"1"]) + _reply(status))
    else:
        reply = bytearray(_ext_reply(status))

    def body():
        relay_mod._S_SHAPES.clear()
        if remembered:
            relay_mod._S_SHAPES[len(reply)] = relay_mod._server_shape(reply, len(reply), relay_mod._S_KIND)
        h = Harness("transaction", attached=True)
        try:
            h.server.proto = _owing("query") if reply_ == "simple" else _batch("marked")
            stats = h.relay.stats = RouteStats(quantiles=True)
            h.relay.tx_start, h.relay.q_start = 1.0, 2.0
            h.relay._server_data(h.server, _sbuf(reply), len(reply))
            return stats, h.relay.tx_start, h.server.proto.tx_status
        finally:
            h.close()
            relay_mod._S_SHAPES.clear()

    return in_machine(body)


@pytest.mark.parametrize("remembered", [False, True])
@pytest.mark.parametrize("reply_", ["simple", "extended"])
def test_a_ready_for_query_adds_its_query_and_transaction_times_to_the_sketches(in_machine, reply_, remembered):
    """With the rule's quantiles on, the idle ReadyForQuery that ends a transaction adds the
    query's time (since q_start) and the transaction's (since tx_start) to the route's two
    sketches as it adds them to query_time and tx_time, for a reply walked and for one told by
    its layout (each branch takes the difference again for its sketch)."""
    stats, _, _ = _sketched(in_machine, reply_, remembered, b"I")
    q, tx = stats.query_sketch, stats.tx_sketch
    assert (stats.count_query, stats.count_tx, q.count, tx.count) == (1, 1, 1, 1)
    assert stats.tx_time > stats.query_time > 0
    assert q.sum == stats.query_time * 1e6 and tx.sum == stats.tx_time * 1e6


@pytest.mark.parametrize("remembered", [False, True])
@pytest.mark.parametrize("reply_", ["simple", "extended"])
def test_a_ready_for_query_in_a_transaction_adds_only_its_query_time_to_the_sketches(in_machine, reply_, remembered):
    """With quantiles on, a ReadyForQuery that leaves the transaction open (T) adds the query's
    time to its sketch and nothing to the transaction's, walked and told by its layout (the
    walk tests one sketch where quantiles are off, and _sketch_times tells the transaction's
    end itself: fails where it adds the transaction's time without that test)."""
    stats, tx_start, status = _sketched(in_machine, reply_, remembered, b"T")
    q, tx = stats.query_sketch, stats.tx_sketch
    assert (stats.count_query, stats.count_tx, q.count, tx.count) == (1, 0, 1, 0)
    assert stats.query_time > 0 and q.sum == stats.query_time * 1e6
    assert tx_start == 1.0 and status == b"T"
