"""The relay fast path: client <-> server byte forwarding that reads only message headers
(mirrors Odyssey sources/relay.c and the request loop of sources/frontend.c).

Bytes are received with recv_into into a buffer and forwarded as memoryview slices in the same
chunks they arrived in. Per message the relay reads the 5-byte header and tells the server's
`kiwi.protocol.Conversation` about the messages that change what the server owes:

  client -> server: Query, Sync, FunctionCall, Parse, Bind, Close (queued until answered),
                    Describe/Execute (they open an extended batch), CopyDone/CopyFail, Flush;
                    'X' Terminate is not forwarded (the server stays pooled).
  server -> client: ReadyForQuery (transaction status; the detach point), ParameterStatus (kept
                    on both client and server, as Odyssey does), ParseComplete, BindComplete,
                    CloseComplete, ErrorResponse, EmptyQueryResponse, the COPY responses.

A server is detached only when the Conversation says it owes nothing and no batch is open
(`Conversation.idle`) and no message is half relayed in either direction.

With prepared statements (`prepared.Prepared`, transaction and statement pooling) Parse, Bind,
Describe, Close and PREPARE/EXECUTE/DEALLOCATE queries are read whole and may be replaced by
other bytes; server replies the Conversation marks are dropped or replaced, and the answers the
pooler gives itself are spliced into the reply stream where PostgreSQL would have sent them.

A body longer than the chunk is forwarded as it streams (`skip` counts what is still to come),
so large results and COPY never buffer whole messages. Buffers are borrowed from a per-thread
free list while a relay holds unfinished bytes and returned when it goes idle, so idle clients
cost no buffer; the hub's read callbacks read into the thread's scratch buffer (_FreeList).
"""
from __future__ import annotations

import ctypes
import os
import struct
import threading
from time import monotonic as _monotonic
from types import MethodType as _MethodType

import machinarium
from gevent import get_hub, getcurrent
from machinarium import wait_any
from kiwi import error_codes
from kiwi.framer import FE_RELAY_LIMITS
from kiwi import protocol as _protocol
from kiwi.protocol import _POPS, REPLACE, Phase, shared_entries
from odyssey_gevent.prepared import _SQL_HEAD
from odyssey_gevent.server import idle_readable
from odyssey_gevent.router import _C_ACTIVE, _C_PENDING, _C_QUEUE, _C_UNDEF, _S_ACTIVE, _S_IDLE
from odyssey_gevent.reset import _COPY_PHASES
from odyssey_gevent.deploy import needed as _deploy_needed
from odyssey_gevent.status import ClientGone, FrontendError, ServerError, Status

# assigned, not imported: 3.11 compiles a method call on a name an import statement binds as an
# attribute load and a call (a bound method made per call, LOAD_ATTR unspecialized) instead of
# LOAD_METHOD (_BATCHES.get ran once per extended transaction; now once per layout made)
_BATCHES = _protocol._BATCHES

BUF_SIZE = 32 * 1024
# Bytes forwarded whole from a buffer go out as a copy up to this size, a memoryview beyond:
# slicing a bytearray costs about a third of making a memoryview and slicing it (which is
# about 1,000 instructions) for short messages; both cost the same near 4 KiB
_SLICE_MAX = 2048


class _Buf(bytearray):
    """A relay buffer of BUF_SIZE bytes (every one the free lists hold, the scratch and the
    relays' c_buf and s_buf; a buffer grown for one long message, only with the
    prepared-statement layer, is a plain bytearray), with standing views of itself:
    - `head`, its bytes 1-4, a message's length field where the message starts the buffer, as
      one native unsigned int. The callbacks' lone-Query check compares it with _Q_HEAD (about
      820 instructions against 1,060 for the unpack_from of the length and its compares).
    - `cut`, its first `cut_end` bytes (at first `whole`, all of it): what the callbacks' inline
      send writes, the request buffer[:end], is this view where the buffer's last request sent
      so was as long, else a new one kept in its place (a slice of `whole`). A view kept costs
      about 200 instructions a send, a copy (buf[:end]) about 800 and a new view about 1,000:
      it pays where more than about 40 % of the requests a buffer sends are as long as the one
      before (pgbench's about 85 %: their lengths vary only with the digits of a random key),
      and costs about 370 more a send where none is. Written at once: what the socket does
      not take is copied into `pending` (_send_now), so no view is used after the call.
    - `rcut`, its first `rcut_end` bytes (at first `whole`): what the reply walk writes to the
      client, buffer[:pos], where the buffer's last reply written so was as long; a reply as
      long as the one the buffer copied before it (`rcut_next`: two in a row) makes a new one
      kept in its place, any other is copied as before. Its own view, not `cut`: the scratch
      reads requests and replies by turns. A copy and its write cost about 460 instructions
      more than the kept view's; a new view about 580 more than a copy, so it is made only for
      a length seen twice in a row and a reply of another length costs a compare and a store
      (pgbench -S's replies are all as long; an application's vary with their rows).
    No relay buffer is ever resized (a bytearray with an exported view cannot be: a longer
    message gets a new buffer, and the moves of held bytes to the front keep the size). The
    views refer to their buffer (a reference cycle): a buffer no free list takes is let go with
    _drop, so it is freed at once, not by the cycle collector."""
    __slots__ = ("head", "whole", "cut", "cut_end", "rcut", "rcut_end", "rcut_next")


def _new_buf() -> _Buf:
    """A relay buffer (see _Buf)."""
    buf = _Buf(BUF_SIZE)
    whole = buf.whole = memoryview(buf)
    buf.head = whole[1:5].cast("I")
    buf.cut = buf.rcut = whole
    buf.cut_end = buf.rcut_end = BUF_SIZE
    buf.rcut_next = 0
    return buf


def _drop(buf) -> None:
    """Let go of a relay buffer no free list takes: its views released (see _Buf)."""
    if buf.__class__ is _Buf:
        buf.head.release()
        buf.cut.release()
        buf.rcut.release()
        buf.whole.release()


_LEN = struct.Struct("!I")
_unpack_len = _LEN.unpack_from
_unpack_head = struct.Struct("!BI").unpack_from     # a message's type and length
# The fast path's sends: os.write on the plain socket's descriptor (fileno() of the closed
# socket is -1: EBADF, as its send would fail), not the socket's send(), which parses its
# arguments from a tuple (PyArg_ParseTuple) where os.write takes them positionally: about 440
# instructions less per send with the fileno() call, two sends per transaction. The same
# system call for a socket (no flags): the same partial writes, EAGAIN (BlockingIOError), EPIPE
_write = os.write

# client -> server message types
_C_QUERY, _C_TERMINATE = b"QX"
_C_SYNC = b"S"[0]
# the Conversation's phases (kiwi.protocol.Phase: plain str class attributes) for the inline
# copy of its receive's common case (see _server_data)
_BUSY_PHASE, _READY_PHASE = Phase.BUSY, Phase.READY
_S_TERMINATE = Status.TERMINATE     # a module constant: an Enum member load costs about 800 instructions
_C_STRAY = frozenset(b"dcf")       # COPY messages: ignored by PostgreSQL outside COPY
# what a logged-in client may send, and how long each message may be: kiwi's table (PostgreSQL's
# limits), -1 for a forbidden type
_C_LIMITS = tuple(FE_RELAY_LIMITS)
_Q_LIMIT = _C_LIMITS[_C_QUERY]
# the longest read the callbacks send as a lone Query (the Query limit + 5, type and length, or
# less), a one-digit int: 3.11 specializes an int comparison only of one-digit ints (CPython's
# 30-bit digits). The check reads the length through the buffer's standing view of its length
# field (_Buf.head) and compares it with _Q_HEAD[end]: the field's value for a Query of exactly
# `end` bytes (end - 1, big-endian) read as a native unsigned int; -1 (no field's value) below
# a whole header. Longer Queries (rare: a table entry per length costs about 40 bytes) go to the
# client walk, which relays them the same and checks the limit
_Q_END = min(_Q_LIMIT + 5, 8192)
_Q_HEAD = tuple(struct.unpack("=I", _LEN.pack(end - 1))[0] if end >= 5 else -1 for end in range(_Q_END + 1))
# limits + 4 (the length field counts itself), -1 for a forbidden type: one comparison per
# message checks its type and the upper bound of its length
_C_LIMITS4 = tuple(limit + 4 if limit >= 0 else -1 for limit in _C_LIMITS)
# what the client walk does with a message type: _CK_TELL, the Conversation is told in one
# Conversation.send_many call after the walk, or before the prepared-statement layer sees a
# message (it tells its own messages, in order); with prepared statements _CK_PREPARED, the
# layer may rewrite it; _CK_TERMINATE ends the walk. Module constants, not an Enum.
_CK_TELL, _CK_PREPARED, _CK_TERMINATE = 1, 3, 4
_C_INTEREST = bytearray(256)
_C_INTEREST_PREPARED = bytearray(256)
for _t in b"SFcfEH":
    _C_INTEREST[_t] = _CK_TELL
    _C_INTEREST_PREPARED[_t] = _CK_TELL
for _t in b"QPBDC":
    _C_INTEREST[_t] = _CK_TELL
    _C_INTEREST_PREPARED[_t] = _CK_PREPARED
_C_INTEREST[_C_TERMINATE] = _C_INTEREST_PREPARED[_C_TERMINATE] = _CK_TERMINATE
_C_INTEREST = tuple(_C_INTEREST)  # tuples: 3.11 specializes indexing a tuple, not bytes
_C_INTEREST_PREPARED = tuple(_C_INTEREST_PREPARED)

# The layouts of whole-message reads seen before, by their length: a client sends the same few
# requests again and again (pgbench -M extended: Parse, Bind, Describe, Execute, Sync, where
# only the Bind's length changes with its parameter), so a read laid out as one seen before
# (the same types and lengths of the same messages) is checked with one unpack of all its
# headers (struct, the bodies skipped) and a tuple compare instead of a header unpack and its
# tests per message. The same headers say the same as the walk said: the limits passed, the
# same types told to the Conversation. By the read's length: _SEEN once (a layout is made the
# second time a length is seen), a (header unpack, the headers it gives, the types told) tuple,
# or _NEVER: a read of that length was laid out otherwise (a stream of large rows, say, whose
# full-buffer reads would otherwise be compared and made again and again), or had more than
# _SHAPE_MESSAGES messages; emptied past _SHAPES_MAX lengths. Process-wide: a layout depends on
# the bytes alone. The callbacks look a length up with a subscript (a KeyError is the rare miss:
# a length the client walk has seen whole is kept), not .get(), a method call per request.
_C_SHAPES: dict = {}
_S_SHAPES: dict = {}    # the same for the server's replies (see Relay._server_data) ...
_S_SHAPES_PREPARED: dict = {}   # ... and with prepared statements (their walk tells more)
_SEEN = ()          # falsy both, told apart by identity
_NEVER = False
_SHAPES_MAX = 1024
_SHAPE_MESSAGES = 16

# server -> client message types
_S_READY, _S_PARAM = b"ZS"
_S_COMPLETE, _S_ERROR = b"CE"
_S_INTEREST = bytearray(256)       # what the Conversation must see (kiwi.protocol)
for _t in b"ZSGHWc123EI":
    _S_INTEREST[_t] = 1
_S_INTEREST_PREPARED = bytearray(_S_INTEREST)
for _t in b"CTns":                 # the ends of Describe and Execute (Conversation.exact)
    _S_INTEREST_PREPARED[_t] = 1
# what the walk does with a message the Conversation must see (the kinds are module constants,
# not an Enum: see docs/performance.md): ReadyForQuery and ParameterStatus are read whole, and
# with prepared statements CommandComplete and ErrorResponse too (tags, error codes) where
# they fit in the buffer; the rest are only told
_SK_TELL, _SK_READY, _SK_PARAM, _SK_WHOLE = 1, 2, 3, 4
_S_KIND = bytearray(_S_INTEREST)
_S_KIND[_S_READY] = _SK_READY
_S_KIND[_S_PARAM] = _SK_PARAM
_S_KIND_PREPARED = bytearray(_S_INTEREST_PREPARED)
_S_KIND_PREPARED[_S_READY] = _SK_READY
_S_KIND_PREPARED[_S_PARAM] = _SK_PARAM
_S_KIND_PREPARED[_S_COMPLETE] = _SK_WHOLE
_S_KIND_PREPARED[_S_ERROR] = _SK_WHOLE
# tuples: 3.11 specializes indexing a tuple with an int, not bytes; the interest tables hold
# bools, so an `if` on them needs no PyObject_IsTrue
_S_KIND, _S_KIND_PREPARED = tuple(_S_KIND), tuple(_S_KIND_PREPARED)
_S_INTEREST = tuple(map(bool, _S_INTEREST))
_S_INTEREST_PREPARED = tuple(map(bool, _S_INTEREST_PREPARED))


# a byte as bytes, without slicing; slices of one byte are the interpreter's cached one-byte
# objects, so a transaction status taken from here `is` the literal b"I" (_TX_IDLE): the identity
# test goes first, as 3.11 does not specialize a comparison of bytes (== stays the fallback)
_BYTE = tuple(bytes(range(256))[i:i + 1] for i in range(256))
_TX_IDLE = b"I"

_local = threading.local()

# A client idle this long without a server gives its coroutine up: a parked greenlet (its stack
# and Python frames) is about 7 KiB, most of what an idle client costs. The client's socket read
# watcher then starts a new coroutine (Frontend.resume) when it speaks, closes or is woken. A
# per-thread sweep runs at this interval and sends to sleep the relays it finds in the same
# idle wait twice (so after one to two intervals): a timer per wait cost about 2 % of a
# transaction.
DORMANT_AFTER_MS = 1000
# The freed greenlets leave holes in the C heap that glibc keeps: once this many relays of a
# thread have gone dormant, malloc_trim() runs a second later (about 3 ms for a 100 MB heap)
# and gives their pages back (bench.py --idle-clients 10000: about 2 KiB per client)
TRIM_AFTER_DORMANT = 64
try:
    _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
except (OSError, AttributeError):      # not glibc
    _malloc_trim = None


# The fast path (Relay._park) ends waits by the per-thread sweep, so a timeout fires up to one
# sweep interval late; a relay whose rule has a shorter timeout than this (10 % of it at most)
# keeps the coroutine's exact wait timers.
FAST_MIN_TIMEOUT_MS = 10 * DORMANT_AFTER_MS

# the fast path's reasons to switch into the relay's coroutine (besides a Status to end with,
# an exception to raise, or (end, taken server) for client bytes it leaves to the coroutine)
_WAKE = 0       # woken (KILL_CLIENT, shutdown) or by the sweep (timeout, dormancy): see the flags
_AGAIN = 1      # look again (pending writes flushed, shutdown or kill to check)
_DETACH = 2     # the server is due for a detach that may wait

# Relay.queued (truthy): queued, and the client socket's watcher stopped by _on_client meanwhile
_Q_STOPPED = 2
# ... queued with pool_timeout's timer started (_start_q_timer), the watcher not stopped: True
# only where no timer runs, so the hand-over tests `queued is not True` once for the rare
# cases (a timer to stop, a watcher to start again), not the timer's slot per queued wait
_Q_TIMED = 3

# Relay.on_handed before the relay's first queued wait makes its bound method: not None, the
# callback of a coroutine's waiter (Wakeup.callback), so the client callback's inline queueing
# compares a waiter's callback with the slot itself (no local, no None test of it)
_NO_HAND_OVER = object()

# first client message types the fast path leaves to the coroutine when no server is attached:
# Terminate, the stray COPY messages and whatever is not allowed at all
_C_NOT_FIRST = bytearray(256)
for _t in range(256):
    if _t == _C_TERMINATE or _t in _C_STRAY or _C_LIMITS[_t] < 0:
        _C_NOT_FIRST[_t] = 1
_C_NOT_FIRST = tuple(map(bool, _C_NOT_FIRST))


def _timeouts_sweepable(rule) -> bool:
    for ms in (getattr(rule, "pool_idle_in_request_timeout_ms", 0) or 0,
               (getattr(rule, "pool_idle_in_transaction_timeout", 0) or 0) * 1000,
               (getattr(rule, "pool_client_idle_timeout", 0) or 0) * 1000):
        if 0 < ms < FAST_MIN_TIMEOUT_MS:
            return False
    return True


def _rule_facts(rule) -> tuple:
    """What a relay takes from its client's rule: (transaction pooling, statement pooling, the
    request timeout in ms or None, timeouts the sweep can keep (_timeouts_sweepable), the
    pool_timeout in seconds or None: tested with `is not None`, no float's truth test). The same for every client of a route, whose rule does not
    change (a reload makes new rules and routes): worked out at its first relay and kept
    (Route.relay_facts), where each login paid four getattr calls and a Python frame."""
    pool = rule.pool
    q_timeout = getattr(rule, "pool_timeout", 0) or 0
    return (pool == "transaction", pool == "statement", getattr(rule, "pool_idle_in_request_timeout_ms", 0) or None,
            _timeouts_sweepable(rule), q_timeout / 1000.0 if q_timeout > 0 else None)


class _NeverStopping:
    """The instance of a relay whose frontend has none (unit tests)."""
    shutting_down = False


_NEVER_STOPPING = _NeverStopping()


def _relays() -> set:
    relays = getattr(_local, "relays", None)
    if relays is None:
        relays = _local.relays = set()
    return relays


def _dormant() -> set:
    """This thread's dormant relays (no coroutine: see DORMANT_AFTER_MS)."""
    dormant = getattr(_local, "dormant", None)
    if dormant is None:
        dormant = _local.dormant = set()
    return dormant


def wake_relays() -> int:
    """Wake every relay of this thread parked in its wait or dormant, so that it looks at the
    shutdown flag (called in the hub of the thread the relays run in). Returns how many were
    woken."""
    loop = get_hub().loop
    n = 0
    for relay in list(_relays()):
        if relay.waiting:
            loop.run_callback(_wake, relay)
            n += 1
    for relay in list(_dormant()):
        loop.run_callback(_resume, relay)
        n += 1
    return n


def wake(relay) -> None:
    """Wake one relay parked in its wait (KILL_CLIENT), from any thread: the wake-up runs in the
    relay's own hub (run_callback_threadsafe from another thread, as machinarium.Event does)."""
    loop = relay.loop
    if loop is None:
        return
    try:
        if relay.ident == threading.get_ident():
            loop.run_callback(_wake, relay)
        else:
            loop.run_callback_threadsafe(_wake, relay)
    except ValueError:            # that loop is gone
        pass


def _wake(relay) -> None:
    # run by the hub: still parked in wait_any (the flag is cleared as soon as it returns), so
    # switching in with 0 makes that wait return as a timeout would
    if relay in _dormant():
        _resume(relay)
    elif relay.waiting and relay.glet is not None:
        relay.woken = True
        relay.glet.switch(0)


def _start_sweep(loop) -> None:
    """This thread's sweep timer (once per thread; it does not keep the loop alive)."""
    if _local.__dict__.get("sweep") is None:
        interval = DORMANT_AFTER_MS / 1000.0
        timer = _local.sweep = loop.timer(interval, interval)
        timer.ref = False
        timer.start(_sweep)


def _sweep() -> None:
    """Run by the hub: mark the relays parked in an idle wait that may sleep; those already
    marked (the same wait, a whole interval ago) go dormant."""
    now = None
    for relay in list(_relays()):
        if not relay.waiting or relay.glet is None:
            continue
        if relay.fast:
            if now is None:
                now = _monotonic()      # the relays' clock (see _on_client)
            relay._sweep_fast(now)
        elif relay.may_sleep:
            if relay.marked:
                relay.sleepy = True
                relay.glet.switch(0)
            else:
                relay.marked = True


def _resume(relay) -> None:
    """Run by the hub: a dormant relay's client socket became readable (a request, or EOF), or
    it was woken: a new coroutine carries its session on."""
    dormant = _dormant()
    if relay not in dormant:
        return
    dormant.discard(relay)
    relay.client.io.sock._read_event.stop()
    machinarium.coroutine_create(relay.fe.resume, name="client (resumed)")


def _count_dormant(loop) -> None:
    n = _local.__dict__.get("dormant_count", 0) + 1
    _local.dormant_count = n
    if n >= TRIM_AFTER_DORMANT and _malloc_trim is not None and _local.__dict__.get("trim_timer") is None:
        timer = _local.trim_timer = loop.timer(1.0)
        timer.start(_trim)


def _trim() -> None:
    _local.dormant_count = 0
    _local.trim_timer = None
    _malloc_trim(0)


class _FreeList(list):
    """A thread's free list of BUF_SIZE buffers, and its `scratch` buffer: the read watchers'
    callbacks (Relay._on_client, and Relay._server_data in the hub) read into it when the
    relay holds nothing back. When bytes outlive the callback (an unfinished message, a
    request for the coroutine or held while queued: Relay._keep) the scratch becomes that
    relay's buffer and the thread takes another from the free list. Everything else is sent
    or copied before they return, and callbacks in one hub do not run inside each other, so
    one buffer a thread serves every relay."""
    __slots__ = ("scratch",)

    def __init__(self):
        super().__init__()
        self.scratch = _new_buf()


def _free_buffers() -> list:
    """This thread's free list of BUF_SIZE buffers (each relay keeps a reference to it)."""
    free = getattr(_local, "free", None)
    if free is None:
        free = _local.free = _FreeList()
    return free


# what every relay of a thread shares, by the thread's hub (the hub of a relay's client socket is
# the thread's): (loop, thread ident, the free list, the set of relays), the sweep started
# with the entry. new_relay and run find it with one dict lookup by the hub's identity instead
# of a Cython attribute load (hub.loop), a get_ident() call and two threading.local lookups per
# session (about 1,500 instructions).
# The entry holds the hub, so no other hub can take its identity; bounded (cleared when full)
# for processes that make many machines (tests).
_HUBS: dict = {}
_HUBS_MAX = 64


def _hub_state(hub) -> tuple:
    """This thread's _HUBS entry for its hub `hub` (made, and the sweep started, the first time)."""
    loop = hub.loop
    state = (loop, threading.get_ident(), _free_buffers(), _relays())
    _start_sweep(loop)
    if len(_HUBS) >= _HUBS_MAX:
        _HUBS.clear()
    _HUBS[hub] = state
    return state


def _give_back(buf: bytearray) -> None:
    if len(buf) != BUF_SIZE:
        return                      # a bigger buffer grown for one long message
    free = _free_buffers()
    if len(free) < 256:
        free.append(buf)
    else:
        _drop(buf)


class Relay:
    """The request loop of one client. `frontend` supplies attach(), detach(), idle_timeout(),
    idle_expired() and logger; `prepared` is the prepared-statement layer (transaction and statement pooling with
    pool_reserve_prepared_statement), or None."""

    __slots__ = ("fe", "client", "c_buf", "c_len", "c_skip", "c_drop", "s_buf", "s_len", "s_skip", "s_drop",
                 "s_ready", "mode_transaction", "mode_statement", "stats", "prepared", "instance",
                 "waiting", "woken", "glet", "request_timeout", "q_start", "tx_start", "loop", "ident",
                 "timers", "free", "may_sleep", "marked", "sleepy", "fast_ok", "fast", "pending",
                 "wait_start", "swept", "expired", "s_watch", "on_client", "hub", "queued", "q_timeout",
                 "q_timer", "on_handed", "keep_watch", "c_watch", "s_shapes", "walk_plain", "hand_plain",
                 "hand_deploy", "hand_check", "c_first", "c_write", "c_read")

    def __new__(cls, frontend, client, prepared=None):
        """Relay(frontend, client, prepared): made by new_relay, the one place its slots are
        set (Frontend.run calls new_relay itself: 3.11 does not specialize calling a Python
        class)."""
        return new_relay(frontend, client, prepared)

    # -- main loop ---------------------------------------------------------------------------
    def run(self) -> Status:
        """Relay until the client ends the session: returns TERMINATE or an idle-timeout Status,
        or None when the relay went dormant (the frontend's resume() runs it again); raises
        ClientGone, ServerError or FrontendError (status.py's error model)."""
        client = self.client
        cio = client.io
        client_only = (cio,)
        instance = self.instance
        self.glet = getcurrent()
        # this thread's relays (its sweep started with the _HUBS entry __init__ found)
        try:
            relays = _HUBS[self.hub][3]
        except KeyError:                # (cleared meanwhile)
            relays = _hub_state(self.hub)[3]
        relays.add(self)
        try:
            while True:
                server = client.server
                # graceful shutdown: stop only where the server can be reset and pooled again
                if instance.shutting_down and self.fe.can_stop(server):
                    return Status.EGRACEFUL_SHUTDOWN
                if client.killed:           # KILL_CLIENT (router.kill); cleanup resets its server
                    return Status.ECLIENT_KILLED
                if self.fast_ok and (server is None or (server.io is not None and not server.io._tls)):
                    reason = self._park(server)
                    if self.queued:
                        # woken while queued by something else than the hand-over (pool_timeout,
                        # KILL_CLIENT, shutdown): the wait goes on here, from its place in the queue
                        self._unqueued()
                        self.woken = False
                        end = self.c_len
                        taken = self.fe.attach(queued=True)
                        if self.prepared is not None:
                            taken.proto.exact = True
                        status = self._client_data(self.c_buf, end)
                        if status is not None:
                            return status
                        continue
                    if self.pending is not None:
                        self._flush()
                    # the int reasons compared as ints only: 3.11 does not specialize comparing a
                    # tuple or a Status with an int (about 150 instructions each, three of them
                    # for a session's end)
                    if reason.__class__ is int:
                        if reason == _WAKE:
                            if self.sleepy:
                                self.sleepy = False
                                if self._go_dormant():
                                    return None
                            elif self.woken:
                                self.woken = False
                            elif self.expired:
                                self.expired = False
                                status = self._timed_out(client.server)
                                if status is not None:
                                    return status
                            continue
                        if reason == _AGAIN:
                            continue
                        if reason == _DETACH:
                            self.fe.detach()
                            continue
                    if isinstance(reason, tuple):   # client bytes read, for this coroutine to relay
                        end, taken = reason
                        if taken is not None:
                            taken = self.fe.attach(taken=taken)
                            if self.prepared is not None:
                                taken.proto.exact = True
                        status = self._client_data(self.c_buf, end)
                        if status is not None:
                            return status
                        continue
                    if isinstance(reason, Status):
                        return reason
                    raise reason                # caught by a callback: the error model as usual
                if server is None:
                    timeout = self.fe.idle_timeout(None)
                    # no timeout of its own and nothing half-read: it may go dormant when idle
                    self.may_sleep = timeout is None and not self.c_len and not self.c_skip
                    self.waiting = True
                    try:
                        ready = wait_any(client_only, timeout)
                    finally:
                        self.waiting = self.may_sleep = self.marked = False
                    if not ready:
                        if self.sleepy:
                            self.sleepy = False
                            if self._go_dormant():
                                return None
                            continue
                        if self.woken:
                            self.woken = False
                            continue
                        status = self.fe.idle_expired(None)
                        if status is not None:
                            return status
                        continue
                    status = self._from_client()
                    if status is not None:
                        return status
                    continue
                if server.proto.syncs == 0:           # synchronized
                    if server.proto.unsynced and self.request_timeout:
                        timeout = self.request_timeout   # an extended batch awaits its Sync
                    else:
                        timeout = self.fe.idle_timeout(server)
                else:
                    timeout = self.request_timeout       # None: PostgreSQL is working
                self.waiting = True
                if timeout is not None and self.timers is None:
                    self.timers = {}
                try:
                    ready = wait_any((cio, server.io), timeout, self.timers)
                finally:
                    self.waiting = False
                if ready == 0:
                    if self.woken:
                        self.woken = False
                        continue
                    status = self._timed_out(server)
                    if status is not None:
                        return status
                    continue
                if ready & 2:
                    self._from_server(server)
                if ready & 1:
                    status = self._from_client()
                    if status is not None:
                        return status
        finally:
            relays.discard(self)
            if self.c_buf is not None or self.s_buf is not None:    # (the fast path's are the scratch)
                self._release_buffers()
            if self.q_timer is not None:
                self.q_timer.close()
                self.q_timer = None

    def close(self) -> None:
        """The session is over (frontend.cleanup): drop the bound methods kept for the watchers
        (relay -> bound method -> relay is a cycle only the garbage collector would free)."""
        self.on_client = self.on_handed = None

    def _timed_out(self, server) -> Status | None:
        """A wait's timeout passed (see _wait_timeout): the Status that ends the session, or
        None to wait again."""
        if server is None:
            return self.fe.idle_expired(None)
        if self.request_timeout and (not server.synchronized or server.proto.unsynced):
            # the request timeout: only a server that waits for the client counts
            if self._waits_for_client(server):
                return self.fe.request_expired(server)
            return None
        return self.fe.idle_expired(server)

    def _wait_timeout(self, server) -> int | None:
        """The timeout (ms, None: none) of a wait for either side in the relay's present state."""
        if server is None:
            return self.fe.idle_timeout(None)
        if server.proto.syncs == 0:           # synchronized
            if server.proto.unsynced and self.request_timeout:
                return self.request_timeout   # an extended batch awaits its Sync
            return self.fe.idle_timeout(server)
        return self.request_timeout           # PostgreSQL is working

    # -- the callback-driven fast path -------------------------------------------------------
    # While the relay waits for either side, its coroutine is parked (a bare hub.switch()) with
    # the client socket's read watcher, and the attached server's, started with callbacks that
    # relay the bytes right in the hub: no greenlet switch, no watcher start/stop and no timer
    # per message. What could wait (a queued attach, a connect, a deploy or reset round trip,
    # a write the socket does not take at once) is left to the coroutine, switched into with a
    # reason; so are exceptions (re-raised there, status.py's error model), Terminate, a
    # shutdown or kill, and timeouts, which the per-thread sweep finds (_sweep_fast).
    def _park(self, server):
        """Wait for either side in the fast path; returns why the coroutine is needed."""
        self.fast = True
        self.walk_plain = self.plain_walk()
        self.hand_flags()
        # the client's FileIO write for the reply walk and its readinto for the client callback
        # while fast (see Relay.c_write, Relay.c_read)
        cio = self.client.io
        self.c_write = cio._fwrite
        self.c_read = cio._fread
        self.waiting = True
        self.wait_start = self.swept = _monotonic()     # the relays' clock (see _on_client)
        cw = self.c_watch = cio.sock._read_event
        cw.start(self.on_client)
        if server is not None:
            sw = self.s_watch = server.io.sock._read_event
            server.reader = self        # (see Server.reader)
            sw.start(server.on_read or _on_read(server))
        try:
            return self.hub.switch()
        except BaseException:
            if self.queued:             # cancelled while queued: out of the queue now
                self._unqueued()
                self.fe.leave_queue()
            raise
        finally:
            self.fast = self.waiting = self.walk_plain = False
            self.c_write = self.c_read = None
            cw.stop()
            sw = self.s_watch
            if sw is not None:
                self.s_watch = None
                sw.stop()

    def plain_walk(self) -> bool:
        """Whether the reply walk's inline detach may take its plain case (Relay.walk_plain, set
        by _park for its wait): the relay fast, transaction or statement pooling, workers 1 (the
        server pooled with its watcher started: keep_watch) and the frontend's detach_plain (a
        rule that resets nothing, no shared pool). None of them changes while the relay waits in
        the fast path (the modes and keep_watch are the relay's from its making, detach_plain
        the frontend's from its route()), so the walk tests one flag for the four, once per
        transaction; the fast flag is _park's too, and its end clears both."""
        if not (self.fast and self.keep_watch and (self.mode_transaction or self.mode_statement)):
            return False
        return bool(self.fe.detach_plain)

    def hand_flags(self) -> None:
        """Set Relay.hand_plain, hand_deploy and hand_check, the per-session tests of the
        callbacks' copies of attach_now's and ready_now's common cases (_on_client's inline
        attach, the queued hand-over _on_handed), for _park's wait: the frontend's attach_plain and
        the client's rule's maintain_params and pool_attach_check (the latter two False where
        the first is). None of them changes while the relay waits: attach_plain is the
        frontend's from its route(), the rule the client's from the router's route() (a rule's
        flags are fixed: a reload makes a new rule). The callbacks read three per-relay flags
        instead of the frontend's and the rule's loads, once per transaction."""
        if self.fe.attach_plain:        # (set by route(), with the client's rule)
            rule = self.client.rule
            self.hand_plain = True
            self.hand_deploy = bool(rule.maintain_params)
            self.hand_check = bool(rule.pool_attach_check)
        else:
            self.hand_plain = self.hand_deploy = self.hand_check = False

    def throw(self, *args) -> None:
        """gevent takes a read watcher's callback to be a greenlet's switch: a socket closed under
        a started watcher throws (cancel_wait_ex, an EBADF OSError) into the callback's __self__.
        That is the parked coroutine's concern, as it was when wait_any waited."""
        glet = self.glet
        if self.fast and glet is not None:
            glet.throw(*args)

    # The two read watchers' callbacks run once per request and once per reply: each is one
    # Python frame (the steps inline), and switches into the coroutine only with a reason. The
    # server's is _server_data called without arguments (the walk the coroutine shares).
    # The relays' clock (q_start, tx_start, wait_start, swept, the sweep's now) is
    # time.monotonic(), the clock of a server's idle_since and a waiter's since: the reply walk
    # reads it once at the ReadyForQuery for the query and transaction times, the detach's
    # idle_since and the wait's start, where the loop's time (loop.now(), a Cython method call
    # 3.11 does not specialize: about 295 instructions, monotonic() about 335) was a second
    # read per reply besides the detach's monotonic()
    def _on_client(self) -> None:
        if self.queued:
            # the client sent more (or closed) while queued: left unread until the hand-over,
            # which starts the watcher again (see "the fast path's queued attach")
            self.queued = _Q_STOPPED
            self.c_watch.stop()
            return
        try:
            client = self.client
            buf = self.c_buf
            if buf is None:     # nothing held back: the thread's scratch (see _FreeList); what
                buf = self.free.scratch     # the coroutine or the queue relays later is kept
            start = self.c_len
            # the client's FileIO once the sweep found the session busy (Io.use_file, see
            # _sweep_fast: positional, where recv_into parses keywords; None at EAGAIN), kept
            # on the relay while fast (Relay.c_read: one slot load where client.io and its
            # _fread were two loads and a local), else its socket
            read = self.c_read
            try:
                if read is not None:
                    n = read(memoryview(buf)[start:] if start else buf)
                else:
                    n = client.io._raw.recv_into(memoryview(buf)[start:] if start else buf)
            except BlockingIOError:
                return
            except (OSError, ValueError) as e:  # (ValueError: the FileIO of a socket closed)
                raise ClientGone(Status.ECLIENT_READ, e) from None
            if not n:
                if n is None:           # EAGAIN (FileIO's)
                    return
                raise ClientGone(Status.ECLIENT_READ, "client closed the connection")
            end = start + n
            first = buf[0]              # once: indexing a bytearray is not specialized
            # `alone`: the common request, one whole simple Query alone in the buffer with a
            # server attached and no prepared-statement layer, is relayed as the queued hand-over relays
            # it. A flag: 3.11 specializes a comparison only when a conditional jump follows it at
            # once, and the jump over the long body below has an EXTENDED_ARG first. Where attach_now just
            # took a server, the tests the attach made already (c_skip, c_drop, a whole header,
            # the prepared layer) are not made again. The same for a request of whole messages
            # laid out as one seen before (_C_SHAPES): then `alone` holds its layout (the types
            # to tell, the batch's effect). The lone Query's length is read through the buffer's
            # standing view of it (_Buf.head, against _Q_HEAD: no unpack_from call).
            # `alone` and `reason` are set in each branch that reaches the send below, not
            # before the branches: the queued request (c50's common case) returns first
            if client.server is None:
                # attach at once only for a whole header of a message that needs a server, with
                # nothing of an earlier message pending; the coroutine decides everything else
                # (c_skip alone: c_drop is set only with c_skip, see _client_data)
                if self.c_skip or end < 5 or _C_NOT_FIRST[first]:
                    alone = False
                    if first == _C_TERMINATE and end == 5 and not self.c_skip \
                            and _unpack_len(buf, 1)[0] == 4:
                        # a lone Terminate without a server (how a session usually ends): its
                        # end at once, without the coroutine's walk of it (_client_data)
                        self.c_len = 0
                        reason = _S_TERMINATE
                    else:
                        self._keep(buf)
                        reason = (end, None)
                else:
                    # Frontend.attach_now inline (once per transaction, where its frame costs
                    # more than this copy; test_frontend_fast keeps the two in step): with one
                    # worker (no lock) and a client with no host check or NOTICE due
                    # (attach_plain), the most recently used idle server, not offline, of a route
                    # not paused, with ready_now's common case; anything else is attach_now's
                    # (attach_plain and the rule's two flags: the per-relay flags _park sets for its
                    # wait, see hand_flags; the frontend loaded only for attach_now or ready_now)
                    route = client.route
                    idle = route.idle
                    if not idle:            # no idle server: queued in the hub, or the coroutine
                        # the held request's first byte, read above, for the hand-over's lone-Query
                        # check (a slot's load there, where buf[0] is a bytearray subscript 3.11
                        # does not specialize; nothing reads the client while it is queued)
                        self.c_first = first
                        # _keep inline (each queued request at c50); c_buf None: buf is the
                        # scratch, read into above (the slot's None test: two bytecodes fewer
                        # than the local's identity test with it)
                        if self.c_buf is None:  # (rare: no local for the free list, a frame slot)
                            self.c_buf = buf
                            self.free.scratch = self.free.pop() if self.free else _new_buf()
                        # queued (see "the fast path's queued attach" below), inline: once
                        # per queued transaction, where a frame costs more than this copy
                        # router.queue_now's common case inline (once per queued transaction,
                        # where its frame costs more than this copy; test_frontend_fast keeps the
                        # two in step): with one worker (no lock), a full pool of a route with no
                        # idle server, not paused, no shared pool or NOTICE, and the client's
                        # waiter armed with this relay's hand-over by an earlier wait: queued;
                        # anything else is queue_now's
                        # (`route` is client.route: read above)
                        # (on_handed: _NO_HAND_OVER, never a waiter's callback, until the first
                        # queued wait below makes the bound method, which a session that never
                        # queues does not make)
                        waiter = client.waiter
                        if waiter is not None and waiter.callback is self.on_handed:
                            # (Route.queue_at: the pool size of a full pool queue_now queues for,
                            # a count never reached for an unlimited pool, a shared pool or
                            # NOTICEs, which are queue_now's, and for a route not plain (one
                            # thread, nothing paused and the route not obsolete, Route.set_plain:
                            # one compare for the plain flag's test too; an obsolete route's
                            # client is queue_now's, which queues it the same)
                            # (no waiter.server store: a callback wait's is read by nobody,
                            # see router.attach_queued)
                            if len(route.active) >= route.queue_at:
                                waiter.since = _monotonic()
                                route.waiters.append(waiter)
                                client.state = _C_QUEUE
                                # queued: _queue_now's tail, inline
                                self.c_len = end
                                self.queued = True  # the watcher stays started: see below
                                if self.q_timeout is not None:  # (no truth test of a float)
                                    self._start_q_timer()
                                return
                        # anything else (the session's first queued wait, more workers, a route
                        # not plain): queue_now's, through the helper attach_now's rare miss uses
                        reason = self._queue_now(client, buf, first, end)
                        if reason is None:
                            return          # queued (see "the fast path's queued attach" below)
                        alone = False
                    else:
                        if not self.hand_plain:
                            server = self.fe.attach_now()
                        else:
                            # (Route.plain: one thread, nothing paused and the route not obsolete, one
                            # test for four without the router's load; an obsolete route's idle
                            # server is attach_now's, which takes it the same)
                            if not route.plain:
                                server = self.fe.attach_now()
                            else:
                                # the server taken, then tested: idle[-1] (a negative index) is a
                                # subscript 3.11 does not specialize; an offline one goes back where it
                                # was, for attach_now
                                server = idle.pop()
                                if server.offline:
                                    idle.append(server)
                                    server = self.fe.attach_now()
                                else:
                                    server.state = _S_ACTIVE
                                    route.active.add(server)
                                    server.client = client
                                    client.server = server
                                    client.state = _C_ACTIVE
                                    route.stats.count_server_assignment += 1
                                    sio = server.io
                                    if sio is None or sio._tls:
                                        server = self.fe.ready_now(server)
                                    else:
                                        # pool_attach_check: a server pooled with its watcher started
                                        # (its reader the instance) has something to say if the loop's
                                        # last poll found it readable and its callback has not run yet
                                        # (ran: idle_readable took it out of the pool); no poll() of our
                                        # own (server.attach_check_failed, which says why)
                                        if self.hand_check and (
                                                sio.sock._read_event.pending if server.reader is self.instance
                                                else sio.readable_now()):
                                            server = False
                                        elif self.hand_deploy:
                                            todo = client.deploy_list
                                            if (todo is None or server.deployed is not todo) \
                                                    and _deploy_needed(client, server):
                                                server = False
                        if server is None:      # nothing taken (attach_now's): queue_now's, or the coroutine
                            reason = self._queue_now(client, buf, first, end)
                            if reason is None:
                                return          # queued (see "the fast path's queued attach" below)
                            alone = False
                        elif server is False:
                            self._keep(buf)
                            reason = (end, client.server)
                            alone = False
                        else:
                            reason = None
                            alone = False
                            if self.prepared is not None:
                                server.proto.exact = True
                            elif not start:
                                if first == _C_QUERY and end <= _Q_END and buf.head[0] == _Q_HEAD[end]:
                                    alone = True
                                else:
                                    try:        # (a subscript, not .get(): a missing length is rare, see _C_SHAPES)
                                        shape = _C_SHAPES[end]
                                    except KeyError:
                                        shape = None
                                    if shape and shape[0](buf) == shape[1]:     # (the unpack at offset 0, its default)
                                        alone = shape
                            # the server's watcher, started with its callback unless pooled with it
                            # started (Server.reader the instance): no start() per transaction (no
                            # local for it: the start is the rare case, a store and a slot each time)
                            self.s_watch = server.io.sock._read_event
                            if server.reader is not self.instance:
                                self.s_watch.start(server.on_read or _on_read(server))
                            server.reader = self
            elif not start and self.prepared is None and not self.c_skip and end >= 5:
                reason = None
                alone = False
                server = client.server      # (the attach above leaves it so: see below)
                if first == _C_QUERY and end <= _Q_END and buf.head[0] == _Q_HEAD[end]:
                    alone = True
                else:
                    try:        # (a subscript, not .get(): a missing length is rare, see _C_SHAPES)
                        shape = _C_SHAPES[end]
                    except KeyError:
                        shape = None
                    if shape and shape[0](buf) == shape[1]:     # (the unpack at offset 0, its default)
                        alone = shape
            else:
                reason = None
                alone = False
            if alone is not False:     # (an identity test: no PyObject_IsTrue of a layout)
                # relayed as the queued hand-over (_on_handed) relays it, both inline (once per
                # transaction, where a shared frame would cost more than the copies):
                # test_relay_fast keeps the two in step. `server`: client.server, as the attach
                # above or the branch of an attached server read it
                proto = server.proto
                if alone is True:
                    # Conversation.send's common case inline (once per transaction, where its
                    # frame costs more than this copy; test_relay keeps the two in step): a
                    # Query outside COPY and SKIP; anything else is send's
                    phase = proto.phase
                    if phase == _READY_PHASE or phase == _BUSY_PHASE:
                        proto._exec_syncs = -1
                        proto._copy_ended = False
                        proto.phase = _BUSY_PHASE
                        proto.batch = None      # (added to: see Conversation.batch)
                        proto.queue.append(_C_QUERY)
                        proto.syncs += 1
                    else:
                        proto.send(_C_QUERY)
                else:
                    # Conversation.send_many's common case inline (once per transaction, where
                    # its frame costs more than this copy; test_relay_fast keeps the two in step):
                    # a batch whose effect it remembers (kiwi's _BATCHES, by the types; the
                    # layout keeps it, see _client_shape: no dict lookup), without exact
                    # counting, outside COPY and SKIP; anything else is send_many's
                    effect = alone[3]       # (by index: no unpack into four locals)
                    phase = proto.phase
                    if effect is not None and not proto.exact and (phase == _READY_PHASE or phase == _BUSY_PHASE):
                        queued, added, proto.unsynced, proto.flushed, proto._exec_syncs, proto._copy_ended = effect
                        if queued is not None:
                            proto.batch = queued    # (the batch marked: see Conversation.batch)
                            proto.queue.extend(queued)
                            proto.syncs += added
                            proto.phase = _BUSY_PHASE
                    else:
                        proto.send_many(alone[2])
                self.stats.bytes_recv += end
                # one clock read: the request's start and the wait's (below), whether timed or not
                now = _monotonic()
                if self.q_start is None:        # (None, not 0.0: see new_relay)
                    self.q_start = now
                    if self.tx_start is None:
                        self.tx_start = now
                # the request: the buffer's kept view of its first `end` bytes, or a new one kept
                # in its place (see _Buf.cut)
                if end == buf.cut_end:
                    data = buf.cut
                else:
                    data = buf.cut = buf.whole[:end]
                    buf.cut_end = end
                try:
                    if self.pending is None:
                        # the server's FileIO where it keeps one (Io.use_file: no fileno() call;
                        # None at EAGAIN), else its fd (server.io loaded again on the rare paths:
                        # no local stored for the common one)
                        write = server.io._fwrite
                        if write is not None:
                            n = write(data)
                        else:
                            try:
                                n = _write(server.io._raw.fileno(), data)
                            except BlockingIOError:
                                n = 0
                        if n != end:
                            self.pending = [(server.io, bytes(memoryview(data)[n or 0:]), 1)]
                    else:
                        self._send_now(server.io, data, 1)
                except (OSError, ValueError) as e:  # (ValueError: the FileIO of a socket closed)
                    raise ServerError(Status.ESERVER_WRITE, e) from None
                if proto.output is not None:
                    self._to_client(proto.take_output())
                if self.c_buf is not None:  # buf is it, not the scratch (see above)
                    self.c_len = 0
                    if len(buf) == BUF_SIZE and len(self.free) < 256:
                        self.free.append(buf)
                    else:
                        _drop(buf)
                    self.c_buf = None
                # the wait's end as below, here without a test of a reason (none set);
                # wait_start: the request's start (the same wait)
                if self.pending is None and not self.instance.shutting_down and not client.killed:
                    self.wait_start = now
                    return
                reason = _AGAIN
            elif reason is None:
                reason = self._client_data(buf, end)
                if reason is None:
                    if self.pending is None and not self.instance.shutting_down and not client.killed:
                        self.wait_start = _monotonic()      # (the clock not read yet here)
                        return
                    reason = _AGAIN
        except Exception as e:          # noqa: BLE001 - re-raised by the coroutine
            reason = e
        self.glet.switch(reason)

    def _keep(self, buf) -> None:
        """Client bytes read into the scratch (_on_client) that outlive the callback (for the
        coroutine, or held while queued): the scratch becomes the relay's c_buf, and the thread
        takes a buffer from the free list as its scratch (no copy)."""
        if buf is not self.c_buf:
            free = self.free
            self.c_buf = buf
            free.scratch = free.pop() if free else _new_buf()

    def _queue_now(self, client, buf, first: int, end: int):
        """The client callback's queueing through router.queue_now: where the callback's inline
        copy of queue_now's common case does not apply (the session's first queued wait, more
        workers, a route not plain) and where attach_now took no server from a route whose idle
        list is not empty (offline servers, a paused route: rare). The held request kept (a
        no-op where the inline path kept it already) and queue_now asked. None: queued (the
        callback returns); else the reason to switch into the coroutine with."""
        self.c_first = first
        self._keep(buf)
        handed = self.on_handed
        if handed is _NO_HAND_OVER:
            handed = self.on_handed = self._on_handed
        server = self.fe.queue_now(client, handed, self.loop, self.ident)
        if server is not None:  # False: the usual attach; else a new server to connect
            return (end, None if server is False else server)
        self.c_len = end
        self.queued = True      # the watcher stays started: see below
        if self.q_timeout is not None:
            self._start_q_timer()
        return None

    # -- the fast path's queued attach ----------------------------------------------------------
    # No idle server: the client is queued (router.queue_now) with a callback wake-up, its
    # request held in c_buf[:c_len] and its socket not read (as a coroutine queued in
    # router.attach does not read either), and the coroutine stays parked. The socket's read
    # watcher is left started with _on_client, which tests `queued` first and stops it only if
    # the client sends more while queued (queued becomes _Q_STOPPED, and the hand-over starts
    # it again): no start() to point it away and none to point it back per queued wait (about
    # 250 instructions each), and no stop in the common case (a watcher stopped in its own
    # callback makes gevent call its stop() a second time through an attribute lookup, about
    # 1,500 instructions).
    # The hand-over runs _on_handed in this hub, which sends the request and starts the
    # server's watcher as _on_client would have; what needs IO first (a new server to connect,
    # checks, deploys) goes to the coroutine. pool_timeout is a timer (exact, as docs/config.md promises; it
    # costs a start and a stop per queued wait, only with a pool_timeout); its expiry, like a
    # kill or a shutdown wake-up, switches into the coroutine, which takes the wait over from
    # the same place in the queue (Frontend.attach(queued=True), router.attach_queued). The
    # queueing itself is inline in _on_client.
    def _start_q_timer(self) -> None:
        """pool_timeout's timer for a wait _on_client has just queued (only with a pool_timeout:
        a helper, so the callback's frame has no slot for it)."""
        timer = self.q_timer
        if timer is None:
            timer = self.q_timer = self.loop.timer(self.q_timeout)
        timer.start(self._on_queue_timeout)
        self.queued = _Q_TIMED      # (see _Q_TIMED: _on_client's _Q_STOPPED may replace it)

    def _unqueued(self) -> None:
        self.queued = False
        timer = self.q_timer
        if timer is not None:
            timer.stop()

    def _on_queue_timeout(self) -> None:
        if self.queued and self.fast:
            self.glet.switch(_WAKE)

    def _on_handed(self, now=None) -> None:
        """Run in the hub by whoever took the queued client out of the queue (router). `now`:
        the clock the reply walk read at the ReadyForQuery when it hands the server over itself
        (with one worker, from inside that server's read callback, so the server's watcher has
        no event pending either); None when run as the waiter's loop callback."""
        queued = self.queued
        if not queued:
            return                      # the coroutine took the wait over meanwhile
        # _unqueued inline, and the continuation in this one frame (once per queued transaction;
        # the timer read twice where there is one, a pool_timeout's, not stored in a slot)
        self.queued = False
        if queued is not True:          # (a constant's test: True, no timer and the watcher started)
            # _Q_TIMED: pool_timeout's timer runs; _Q_STOPPED: _on_client stopped the client's
            # watcher while queued (a timer may run too). The watcher is started again here, not
            # only where the request is sent: where the coroutine is switched into instead,
            # _park's end stops it (nothing runs in between)
            if self.q_timer is not None:
                self.q_timer.stop()
            if queued is _Q_STOPPED:
                self.c_watch.start(self.on_client)
        try:
            client = self.client
            server = client.server
            end = self.c_len
            if server is None:              # KILL_CLIENT took it out of the queue
                reason = _AGAIN
            else:
                # Frontend.ready_now's common case inline, as attach_now has it (once per queued
                # transaction, where its frame costs more than this copy; test_frontend_fast keeps
                # the copies in step): a plain-socket server holding the client's deploy list (the
                # deploy mark), pooled with its watcher started (pool_attach_check reads its
                # pending flag), for a client with no host check or NOTICE due (attach_plain);
                # else ready_now decides
                # (ready is set once on each branch, not set to None and tested after; after
                # ready_now io is read again: it attaches a parked server's fd)
                # (hand_plain, hand_deploy, hand_check: attach_plain and the rule's
                # maintain_params and pool_attach_check, per-relay flags _park sets for its wait,
                # see hand_flags: no frontend or rule load; `now` tested first: the common case,
                # a server handed over by its own read callback, ends the test there)
                io = server.io
                ready = True
                if self.hand_plain and io is not None and not io._tls:
                    # (the deploy list loaded twice where its second load is rare, not kept in
                    # a local: a frame slot and a store fewer)
                    if self.hand_deploy and (server.deployed is not client.deploy_list
                                             or client.deploy_list is None):
                        ready = self.fe.ready_now(server)
                        io = server.io
                    elif now is None and self.hand_check:
                        # (now: handed over by its own read callback, see above: ready)
                        if server.reader is self.instance:      # (as _on_client's attach)
                            ready = not io.sock._read_event.pending
                        else:
                            ready = self.fe.ready_now(server)
                            io = server.io
                else:
                    ready = self.fe.ready_now(server)
                    io = server.io
                if not ready:               # a new server to connect, or checks: the coroutine
                    reason = (end, server)
                else:
                    # (io: the server's, read above for the ready test and used for the watcher and
                    # the write, where the copy in _on_client reads server.io again)
                    # (now: handed over by the reply walk, in that server's own read callback,
                    # whose watcher it leaves started with its reader the instance: nothing to
                    # start, no reader test; else as _on_client, see Server.reader)
                    self.s_watch = io.sock._read_event
                    if now is None and server.reader is not self.instance:
                        self.s_watch.start(server.on_read or _on_read(server))
                    server.reader = self
                    buf = self.c_buf
                    # the common request, one whole simple Query alone in the buffer with no
                    # prepared-statement layer, is sent here as _on_client sends it (the same steps:
                    # test_relay_fast keeps the two copies in step; inline, as a frame costs more
                    # than the copy once per queued transaction): the generic walk (_client_data and
                    # the Conversation's send_many) costs about three times as much. _on_client queued it
                    # with c_skip 0 and no c_drop, and nothing reads the client while it is queued.
                    # The check reads the length through _Buf.head and the type from the byte
                    # _on_client read where it queued the request (c_first). A request laid out as
                    # one seen before (_C_SHAPES: the types to tell) is sent inline too, below.
                    # No flag for the lone Query (_on_client sets one): its path is the else of the
                    # negated check, after the short branch of any other request, so the compares'
                    # jumps stay short and 3.11 specializes them; the send's tail is copied in both
                    # paths (about 12 bytecodes fewer per queued Query: the flag's two stores and
                    # two tests). The Query path's rare end (its reason set) skips the layouts'
                    # path by a None layout and the client walk by c_len, which it has set 0 (every
                    # queued request is held with c_len its length, at least a header: the other
                    # two branches' reason is the walk's, no reason stored and tested per request)
                    if self.prepared is not None:
                        server.proto.exact = True
                        shape = None
                    elif self.c_first != _C_QUERY or end > _Q_END or buf.head[0] != _Q_HEAD[end]:
                        try:        # (a subscript, not .get(): a missing length is rare, see _C_SHAPES)
                            shape = _C_SHAPES[end]
                        except KeyError:
                            shape = None
                    else:
                        proto = server.proto
                        # Conversation.send's common case inline, as _on_client has it
                        phase = proto.phase
                        if phase == _READY_PHASE or phase == _BUSY_PHASE:
                            proto._exec_syncs = -1
                            proto._copy_ended = False
                            proto.phase = _BUSY_PHASE
                            proto.batch = None
                            proto.queue.append(_C_QUERY)
                            proto.syncs += 1
                        else:
                            proto.send(_C_QUERY)
                        self.stats.bytes_recv += end
                        # one clock: the walk's (see above) or read here, for the request's start
                        # and the wait's (below), whether timed or not
                        if now is None:
                            now = _monotonic()
                        # q_start is None here: the request was queued without a server, and a
                        # server is detached only with every reply in (the walk clears q_start at
                        # the ReadyForQuery that leaves nothing owed) or the session ends; not
                        # tx_start, which a transaction keeps across statement pooling's detaches
                        self.q_start = now
                        if self.tx_start is None:
                            self.tx_start = now
                        # (the request: the buffer's kept view, as _on_client sends it)
                        if end == buf.cut_end:
                            data = buf.cut
                        else:
                            data = buf.cut = buf.whole[:end]
                            buf.cut_end = end
                        try:
                            if self.pending is None:
                                # the server's FileIO where it keeps one, as _on_client writes
                                write = io._fwrite
                                if write is not None:
                                    n = write(data)
                                else:
                                    try:
                                        n = _write(io._raw.fileno(), data)
                                    except BlockingIOError:
                                        n = 0
                                if n != end:
                                    self.pending = [(io, bytes(memoryview(data)[n or 0:]), 1)]
                            else:
                                self._send_now(io, data, 1)
                        except (OSError, ValueError) as e:  # (ValueError: the FileIO of a socket closed)
                            raise ServerError(Status.ESERVER_WRITE, e) from None
                        if proto.output is not None:    # (None while no answer is due: no truth test)
                            self._to_client(proto.take_output())
                        # c_buf (held while queued) stays the relay's, empty: its next request is
                        # read into it and, queued again, held there as it is (no scratch taken
                        # over and none popped from the free list at the queue, no append here:
                        # about 1,500 instructions per queued transaction). Given back where an
                        # unqueued request is sent (_on_client), by _client_data, by the sweep
                        # (_sweep_fast: within a second or two of idling) or at the end
                        self.c_len = 0
                        # the wait's end as below, here without a test of a reason (none set);
                        # wait_start: the request's start (the same wait). No test of the
                        # shutdown flag (4 bytecodes): a relay queued in the hub stays parked
                        # from before its queueing until its coroutine is switched into, and the
                        # hand-over leaves it parked, so a shutdown that began before this
                        # reaches it as it reaches every parked relay: wake_relays, run after
                        # the flag is set (and again with shutdown_force, and at each poll of an
                        # online restart's rate-limited drain), queues a _wake that switches
                        # into it. One that parked after the shutdown began passed the
                        # coroutine's `shutting_down and can_stop(server)` test with no server,
                        # so may_eject refused it (a drain: switching in parks it again, or its
                        # next poll's wake ends it).
                        # The sent request's reply ends at a ReadyForQuery whose walk tests the
                        # flag too (test_relay_fast: a shutdown reaches a relay handed a server
                        # during it)
                        if self.pending is None and not client.killed:
                            self.wait_start = now
                            return
                        reason = _AGAIN
                        shape = None            # (the rare end: the coroutine, see above)
                    if shape and shape[0](buf) == shape[1]:     # (the unpack at offset 0, its default)
                        proto = server.proto
                        # Conversation.send_many's common case inline, as _on_client has it
                        effect = shape[3]
                        phase = proto.phase
                        if effect is not None and not proto.exact and (
                                phase == _READY_PHASE or phase == _BUSY_PHASE):
                            queued, added, proto.unsynced, proto.flushed, proto._exec_syncs, \
                                proto._copy_ended = effect
                            if queued is not None:
                                proto.batch = queued
                                proto.queue.extend(queued)
                                proto.syncs += added
                                proto.phase = _BUSY_PHASE
                        else:
                            proto.send_many(shape[2])
                        self.stats.bytes_recv += end
                        # one clock: the walk's (see above) or read here, for the request's start
                        # and the wait's (below), whether timed or not
                        if now is None:
                            now = _monotonic()
                        # (q_start is None here, not tested: see the lone Query's path)
                        self.q_start = now
                        if self.tx_start is None:
                            self.tx_start = now
                        # (the request: the buffer's kept view, as _on_client sends it)
                        if end == buf.cut_end:
                            data = buf.cut
                        else:
                            data = buf.cut = buf.whole[:end]
                            buf.cut_end = end
                        try:
                            if self.pending is None:
                                # the server's FileIO where it keeps one, as _on_client writes
                                write = io._fwrite
                                if write is not None:
                                    n = write(data)
                                else:
                                    try:
                                        n = _write(io._raw.fileno(), data)
                                    except BlockingIOError:
                                        n = 0
                                if n != end:
                                    self.pending = [(io, bytes(memoryview(data)[n or 0:]), 1)]
                            else:
                                self._send_now(io, data, 1)
                        except (OSError, ValueError) as e:  # (ValueError: the FileIO of a socket closed)
                            raise ServerError(Status.ESERVER_WRITE, e) from None
                        if proto.output is not None:    # (None while no answer is due: no truth test)
                            self._to_client(proto.take_output())
                        # c_buf (held while queued) stays the relay's, empty: its next request is
                        # read into it and, queued again, held there as it is (no scratch taken
                        # over and none popped from the free list at the queue, no append here:
                        # about 1,500 instructions per queued transaction). Given back where an
                        # unqueued request is sent (_on_client), by _client_data, by the sweep
                        # (_sweep_fast: within a second or two of idling) or at the end
                        self.c_len = 0
                        # the wait's end as the lone Query's (no shutdown test: see there)
                        if self.pending is None and not client.killed:
                            self.wait_start = now
                            return
                        reason = _AGAIN
                    elif self.c_len:            # (0: the Query path's rare end, its reason set)
                        reason = self._client_data(buf, end)
                        if reason is None:
                            if self.pending is None and not self.instance.shutting_down and not client.killed:
                                self.wait_start = now if now is not None else _monotonic()
                                return
                            reason = _AGAIN
        except Exception as e:          # noqa: BLE001 - re-raised by the coroutine
            reason = e
        self.glet.switch(reason)

    def _send_now(self, io, data, to_server: int) -> None:
        """The fast path's write: what the socket does not take at once (and all that follows
        it) is kept in order in `pending` for the coroutine to write (_flush)."""
        pending = self.pending
        if pending is not None:
            pending.append((io, bytes(data), to_server))
            return
        try:
            n = _write(io._raw.fileno(), data)
        except BlockingIOError:
            n = 0
        if n < len(data):
            self.pending = [(io, bytes(memoryview(data)[n:]), to_server)]

    def _flush(self) -> None:
        # each write leaves `pending` only once it is done: a write cut short (an error, a
        # KILL_CLIENT or shutdown thrown into the wait) stays in it, so client_mid_message
        # knows the client may have part of a message
        pending = self.pending
        while pending:
            io, data, to_server = pending[0]
            try:
                io.write(data)
            except OSError as e:
                if to_server:
                    raise ServerError(Status.ESERVER_WRITE, e) from None
                raise ClientGone(Status.ECLIENT_WRITE, e) from None
            del pending[0]
        self.pending = None

    def _sweep_fast(self, now: float) -> None:
        """Run by the sweep for a relay parked in the fast path: end a wait that is over its
        timeout, or send an idle client without a server to sleep (see DORMANT_AFTER_MS). An
        empty client buffer the relay kept after a queued hand-over (_on_handed) is given back
        here once its wait is as old as a sweep's interval, so a client that stays idle without
        going dormant holds none either."""
        start = self.wait_start
        idle = now - start
        buf = self.c_buf
        if buf is not None and not self.c_len and idle * 1000.0 >= DORMANT_AFTER_MS:
            self.c_buf = None
            free = self.free
            if len(buf) == BUF_SIZE and len(free) < 256:
                free.append(buf)
            else:
                _drop(buf)
        if start != self.swept:
            # the callbacks relayed since the last sweep (or the park): a client busy with
            # requests (not an idle one, nor most short sessions, pgbench -C's, over within the
            # sweep's second) is read and written through a FileIO from now on (Io.use_file:
            # positional, where recv_into parses keywords and os.write needs fileno()), made
            # here once for about 5,000 instructions, which a login of its own would pay
            self.swept = start
            cio = self.client.io
            if cio._fread is None:
                cio.use_file()
                self.c_write = cio._fwrite      # (the sweep runs only for a parked relay: fast)
                self.c_read = cio._fread
        server = self.client.server
        timeout = self._wait_timeout(server)
        if timeout is not None:
            if idle * 1000.0 >= timeout:
                self.expired = True
                self.glet.switch(_WAKE)
        elif (server is None and not self.c_len and not self.c_skip and idle * 1000.0 >= DORMANT_AFTER_MS
              and getattr(self.fe, "resume", None) is not None):
            self.sleepy = True
            self.glet.switch(_WAKE)

    def _go_dormant(self) -> bool:
        """Give up this coroutine (run() returns None; the frontend keeps the session): the
        client socket's read watcher resumes the relay in a new one (_resume). False when the
        frontend cannot resume (unit tests)."""
        if getattr(self.fe, "resume", None) is None:
            return False
        _dormant().add(self)
        self.timers = None          # its timers are made again on resume
        self.glet = None            # nor keep the ending greenlet alive
        self.client.io.sock._read_event.start(_resume, self)
        _count_dormant(self.loop)
        return True

    def _release_buffers(self) -> None:
        # _give_back's steps inline, with the free list the relay keeps (no thread-local lookup)
        free = self.free
        buf = self.c_buf
        if buf is not None and self.c_len == 0:
            self.c_buf = None
            if len(buf) == BUF_SIZE and len(free) < 256:
                free.append(buf)
            else:
                _drop(buf)
        buf = self.s_buf
        if buf is not None and self.s_len == 0:
            self.s_buf = None
            if len(buf) == BUF_SIZE and len(free) < 256:
                free.append(buf)
            else:
                _drop(buf)

    def _waits_for_client(self, server) -> bool:
        """Asked only when a wait timed out: is the server held for bytes the client has not
        sent (an extended batch without its Sync, a half-sent message, the data of a COPY
        FROM STDIN), rather than busy with a request of its own? A batch the client flushed is
        the server's work while requests are outstanding (with prepared statements, where
        Execute is counted too; without, it is taken as the server's work)."""
        proto = server.proto
        if self.c_skip or self.c_len or proto.phase == Phase.COPY_IN:
            return True
        if proto.syncs or not proto.unsynced:
            return False
        return not proto.flushed or (proto.exact and not proto.queue)

    @property
    def server_clean(self) -> bool:
        """Nothing half-relayed in either direction (no partial message, no extended-protocol
        batch without its Sync): the server can be reset and reused."""
        server = self.client.server
        unsynced = server is not None and server.proto.unsynced
        return self.s_len == 0 and self.s_skip == 0 and self.c_skip == 0 and not unsynced

    def client_mid_message(self) -> bool:
        """The client was sent part of a server message and not its end: the message goes on past
        the bytes relayed (s_skip, unless they are swallowed), or a write to the client is still
        pending (what the client got of it may end anywhere). Anything the pooler sends the
        client now would be read as the rest of that message, so an error is not sent then
        (Frontend._send_error)."""
        if self.s_skip and not self.s_drop:
            return True
        pending = self.pending
        return pending is not None and any(not to_server for _, _, to_server in pending)

    # -- client -> server --------------------------------------------------------------------
    def _from_client(self) -> Status | None:
        buf = self.c_buf
        if buf is None:
            free = self.free
            buf = self.c_buf = free.pop() if free else _new_buf()
        start = self.c_len
        try:
            n = self.client.io.read_into(memoryview(buf)[start:] if start else buf, 0)
        except machinarium.TimedOut:
            return None
        except OSError as e:
            raise ClientGone(Status.ECLIENT_READ, e) from None
        if n == 0:
            raise ClientGone(Status.ECLIENT_READ, "client closed the connection")
        return self._client_data(buf, start + n)

    def _client_data(self, buf, end: int) -> Status | None:
        """Relay the client bytes buf[:end] (the first c_len of them held back before)."""
        # scan the headers
        pos = self.c_skip
        terminate = -1
        server = self.client.server
        out = None              # set when a message is rewritten: the pieces to send, in order
        seg = 0                 # start of the bytes not yet put in `out`
        grow = 0
        # c_drop is set only with c_skip (a stray message's rest, below) and cleared where that
        # rest ends (pos <= end), so it is never set where c_skip is 0: the client callback tests
        # c_skip alone for both (test_relay: a stray message cut anywhere)
        if self.c_drop:         # the rest of a stray message is swallowed, not forwarded
            seg = pos if pos < end else end
            if pos <= end:
                self.c_drop = False
        if pos >= end:
            self.c_skip = pos - end
            pos = end
        else:
            self.c_skip = 0
            limits = _C_LIMITS4
            prepared = self.prepared
            interest = _C_INTEREST if prepared is None else _C_INTEREST_PREPARED
            sent = []           # types the Conversation is told after the walk, in one call
            last = end - 5      # the last position a whole header starts at
            learn = False
            if pos == 0 and prepared is None and server is not None:
                # a read of whole messages laid out as one seen before (the same types and
                # lengths, see _C_SHAPES): one unpack of all its headers and a tuple compare
                # instead of the walk (a header unpack and its tests per message)
                shape = _C_SHAPES.get(end)
                if shape and shape[0](buf, 0) == shape[1]:
                    sent = shape[2]
                    pos = end
                elif shape:         # laid out otherwise: this length is walked from now on
                    _C_SHAPES[end] = _NEVER
                elif shape is not _NEVER:
                    learn = True
            # per message: the fewest tests the interpreter specializes; a message past the
            # end is dealt with after the loop (not by a second test per message)
            while True:             # not `while pos <= last`: its jump is long (see _on_client)
                if pos > last:
                    break
                t, length = _unpack_head(buf, pos)     # one call: indexing a bytearray is not specialized
                if length > limits[t] or length < 4:     # not a chained comparison: see reset.quick
                    raise FrontendError(error_codes.PROTOCOL_VIOLATION,
                                        "unexpected message type from client or other protocol violation",
                                        severity="FATAL")
                kind = interest[t]
                if server is None:
                    if kind == _CK_TERMINATE:
                        terminate = pos
                        break
                    if t in _C_STRAY:
                        # CopyData/CopyDone/CopyFail outside COPY: PostgreSQL ignores them, so
                        # they get no server (a few such bytes must not hold a pooled server)
                        msg_end = pos + 1 + length
                        if msg_end > end:
                            self.c_skip = msg_end - end
                            self.c_drop = True
                            seg = pos = end
                            break
                        seg = pos = msg_end
                        continue
                    server = self.fe.attach()
                    if prepared is not None:
                        server.proto.exact = True
                msg_end = pos + 1 + length
                if kind == _CK_TELL:
                    sent.append(t)
                elif kind:
                    if kind == _CK_TERMINATE:
                        terminate = pos
                        break
                    if kind == _CK_PREPARED:
                        # a message the prepared-statement layer may rewrite: it needs it whole
                        if msg_end > end and (t != _C_QUERY or _maybe_sql(buf, pos, end)):
                            if msg_end - pos > len(buf):
                                grow = msg_end - pos
                            break
                        if msg_end <= end:
                            if sent:    # the layer must see the Conversation as it is here
                                server.proto.send_many(sent)
                                sent = []
                            pieces = prepared.client_message(server, t, buf, pos, msg_end)
                            if pieces is not None:
                                if out is None:
                                    out = []
                                if pos > seg:
                                    out.append(memoryview(buf)[seg:pos])
                                out.extend(pieces)
                                seg = msg_end
                                pos = msg_end
                                continue
                    sent.append(t)
                pos = msg_end
            if pos > end:       # a message goes on past the bytes received
                self.c_skip = pos - end
                pos = end
            elif learn and pos == end and len(sent) > 1:   # whole messages, none in the walk's
                if shape is _SEEN:                           # other branches (see _C_SHAPES)
                    _C_SHAPES[end] = _client_shape(buf, end, sent)
                else:
                    if len(_C_SHAPES) >= _SHAPES_MAX:
                        _C_SHAPES.clear()
                    _C_SHAPES[end] = _SEEN
            if sent:
                server.proto.send_many(sent)
        forward_end = terminate if terminate >= 0 else pos
        if forward_end > seg or out:
            if out is None:
                size = forward_end - seg
                # a short request is copied: cheaper than a memoryview (see _SLICE_MAX)
                data = buf[seg:forward_end] if size <= _SLICE_MAX else memoryview(buf)[seg:forward_end]
            else:
                if forward_end > seg:
                    out.append(memoryview(buf)[seg:forward_end])
                data = b"".join(out)
                size = len(data)
            self.stats.bytes_recv += size
            if self.q_start is None:    # a request starts: time it (and its transaction)
                self.q_start = now = _monotonic()
                if self.tx_start is None:
                    self.tx_start = now
            try:
                if self.fast:
                    if self.pending is None:        # _send_now's common case, inline
                        sio = server.io
                        try:
                            n = _write(sio._raw.fileno(), data)
                        except BlockingIOError:
                            n = 0
                        if n < size:
                            self.pending = [(sio, bytes(memoryview(data)[n:]), 1)]
                    else:
                        self._send_now(server.io, data, 1)
                else:
                    server.io.write(data)
            except OSError as e:
                raise ServerError(Status.ESERVER_WRITE, e) from None
        if server is not None and server.proto.output is not None:
            self._to_client(server.proto.take_output())
        if terminate >= 0:
            self.c_len = 0
            return Status.TERMINATE
        rest = end - pos
        if grow:
            # a message the prepared-statement layer needs whole is longer than the buffer:
            # collect it in a bigger one (grown in steps, so a declared length costs nothing)
            bigger = bytearray(min(grow, max(len(buf) * 4, BUF_SIZE)))
            bigger[:rest] = buf[pos:end]
            if buf is self.c_buf:       # not the scratch (_on_client)
                _give_back(buf)
            self.c_buf = bigger
            self.c_len = rest
            return None
        self.c_len = rest
        if rest:
            buf[:rest] = buf[pos:end]
            if buf is not self.c_buf:   # the scratch (_on_client): now the relay's (_keep)
                self._keep(buf)
        elif buf is self.c_buf:
            free = self.free
            if len(buf) == BUF_SIZE and len(free) < 256:
                free.append(buf)
            else:
                _drop(buf)
            self.c_buf = None
        return None

    def _to_client(self, data) -> None:
        self.stats.bytes_sent += len(data)
        try:
            if self.fast:
                self._send_now(self.client.io, data, 0)
            else:
                self.client.io.write(data)
        except OSError as e:
            raise ClientGone(Status.ECLIENT_WRITE, e) from None

    # -- server -> client --------------------------------------------------------------------
    def _from_server(self, server) -> None:
        buf = self.s_buf
        if buf is None:
            free = self.free
            buf = self.s_buf = free.pop() if free else _new_buf()
        start = self.s_len
        try:
            n = server.io.read_into(memoryview(buf)[start:] if start else buf, 0)
        except machinarium.TimedOut:
            return
        except OSError as e:
            raise ServerError(Status.ESERVER_READ, e) from None
        if n == 0:
            raise ServerError(Status.ESERVER_READ, "server closed the connection")
        self._server_data(server, buf, start + n)

    def _server_data(self, server=None, buf=None, end: int = 0):
        """Relay the server bytes buf[:end] (the first s_len of them held back before). Returns
        _DETACH when the fast path found the server due for a detach it cannot do at once.

        Called without arguments it is the server read watcher's callback (the fast path): it
        reads the socket itself and switches into the coroutine only with a reason, as
        _on_client does. One function for both, so that a reply costs one Python frame.
        As the callback it is bound to the server (Server.on_read: one callback for the
        server's life, see Server.reader), so `self` is the server then."""
        if server is None:
            # the relay reading the server is its reader; a pooled server's is the instance
            server = self
            self = server.reader
            if self.__class__ is not Relay:
                idle_readable(self, server)
                return None
        reason = None
        now = None      # the clock if read (at a ReadyForQuery): used for the whole callback (see the end)
        # a layout's ReadyForQuery told inline left the server owing nothing (no Sync, no batch
        # open, the queue empty): the detach below need not test those again
        settled = False
        try:
            if buf is None:             # the callback (the coroutine passes its read)
                buf = self.s_buf
                if buf is None:     # nothing held back: the thread's scratch (see _FreeList)
                    buf = self.free.scratch
                start = self.s_len
                # a pooled server's FileIO where it keeps one (Io.use_file: positional, where
                # recv_into parses keywords; None at EAGAIN), else its socket (more workers
                # attach a server's fd anew per transaction)
                sio = server.io
                read = sio._fread
                try:
                    if read is not None:
                        n = read(memoryview(buf)[start:] if start else buf)
                    else:
                        n = sio._raw.recv_into(memoryview(buf)[start:] if start else buf)
                except BlockingIOError:
                    return None
                except (OSError, ValueError) as e:  # (ValueError: the FileIO of a socket closed)
                    raise ServerError(Status.ESERVER_READ, e) from None
                if not n:
                    if n is None:       # EAGAIN (FileIO's)
                        return None
                    raise ServerError(Status.ESERVER_READ, "server closed the connection")
                end = start + n
            proto = server.proto
            out = None              # set when a message is dropped or replaced, or answers are added
            seg = 0                 # start of the bytes not yet put in `out`
            pos = self.s_skip
            # a read that starts at a message (pos 0, the common case), one that the rest of a
            # message fills (pos >= end), one that ends it (below): one truth test of pos for
            # the common case (the rare reads under it, the common one under its `else`), where
            # a test of the skip's end before it cost a second; s_drop is never set where s_skip is 0, so
            # a read that starts at a message does not test it. The layout tables (_S_SHAPES,
            # or _S_SHAPES_PREPARED for a relay with the prepared-statement layer) are the
            # relay's (s_shapes); the walk's tables are read where it walks (below): a layout's
            # read needs none
            if pos:
                # (the rare reads first, their bodies short, so that the common case's jump
                # here is short and its layout falls through to the walk's test below)
                if pos >= end:
                    # (no local for the skip: a local slot is cleared by every call's frame)
                    self.s_skip = pos - end
                    pos = end
                    if self.s_drop:
                        # swallowed (dropped or replaced): nothing of this read is forwarded (`out`
                        # empty: the write below takes `out` and seg, where without it it would
                        # write buf[:pos], the swallowed bytes)
                        seg = end
                        out = []
                        if self.s_skip == 0:
                            self.s_drop = False     # (the swallowed message ends here)
                    # answers due after a message that ends here (the walk splices them itself after
                    # each message that ends in the bytes it has; it finds no header here: pos is end)
                    if self.s_skip == 0 and proto.output is not None:
                        out = _splice(out, buf, seg, pos, proto.take_output())
                        seg = pos
                else:
                    # the rest of a message the read before ended in (skipped): nothing laid out
                    self.s_skip = 0
                    if self.s_drop:
                        seg = pos
                        out = []        # (the swallowed rest not written: see above)
                        self.s_drop = False
                    if proto.output is not None:    # answers the pooler gives itself, due before the next message
                        out = _splice(out, buf, seg, pos, proto.take_output())
                        seg = pos
            else:
                if proto.output is not None:    # answers the pooler gives itself, due before the next message
                    out = _splice(out, buf, seg, pos, proto.take_output())
                    seg = pos
                # whole messages up to the first the walk reads whole (ReadyForQuery,
                # ParameterStatus; with prepared statements CommandComplete, ErrorResponse)
                # laid out as a read seen before (_S_SHAPES): one unpack of their headers
                # and a tuple compare, and the Conversation told the same types as the walk
                # would tell it, with the same handling; the walk goes on from there
                # (a subscript, not .get(): a missing length is rare, as _SEEN and _NEVER
                # are kept too, and a method call costs more than the specialized
                # subscript; the unpack at offset 0, its default)
                try:
                    shape = self.s_shapes[end]
                except KeyError:
                    shape = None
                if not shape:       # (_SEEN and _NEVER are falsy; the rare case first, its body short)
                    if shape is not _NEVER:
                        # (see _C_SHAPES) learnt here, before the walk, not after it: the layout
                        # depends on the bytes alone, and no `learn` local and its tests on every
                        # read. A read the walk refuses (a length under 4) is never laid out
                        # (_server_shape: _NEVER)
                        # (no locals: see the skip above)
                        if shape is _SEEN:
                            self.s_shapes[end] = _server_shape(
                                buf, end, _S_KIND if self.prepared is None else _S_KIND_PREPARED)
                        else:
                            if len(self.s_shapes) >= _SHAPES_MAX:
                                self.s_shapes.clear()
                            self.s_shapes[end] = _SEEN
                else:
                    # one unpack of the entry (a subscript each costs more), before the
                    # check (pos is put back where the layout does not hold). pos: where
                    # the walk goes on; status not None: the read's last message a
                    # ReadyForQuery whose header and status byte the layout checked: not read
                    # again (one slot for both, where a `head` flag was a second: a test of
                    # `is not None` is one load and a jump, as a truth test is). The layout
                    # holds the idle status (status: _TX_IDLE, the common case, without a
                    # bytearray subscript, which 3.11 does not specialize); a read that
                    # differs from it in that byte alone (in a transaction, failed) is the
                    # same layout with the status it unpacked (a one-byte bytes: the
                    # interpreter's cached object, as _BYTE's, never None). wlen: len(whole),
                    # so the whole branch's queue compare calls len() once, not twice
                    unpack, headers, told, pos, pops, whole, status, wlen = shape
                    if (vals := unpack(buf)) == headers or \
                            status is not None and vals[:-1] == headers[:-1] and (status := vals[-1]):
                        if whole is not None and proto.batch is whole and proto.phase == _BUSY_PHASE \
                                and len(queue := proto.queue) == wlen:
                            # told whole (once per extended transaction): the read's told
                            # messages are all completions and it ends with a ReadyForQuery, and
                            # the queue holds exactly their plain requests and a plain Sync (the
                            # layout's `whole`), BUSY: every completion is receive's common case
                            # (the copy below pops each), the ReadyForQuery the head branch's, so
                            # the queue is emptied at once and the ReadyForQuery told here without
                            # the head branch's queue tests. The queue is
                            # known to hold `whole` without a tuple of it (about 1,070
                            # instructions with the compare): Conversation.batch, the batch
                            # send_many (or the callbacks' copy) added last, is `whole` itself
                            # (the same object: kiwi's shared_entries), the queue a tail of what
                            # it held before and the batch, so the batch where the lengths are equal
                            # (test_relay keeps the paths in step)
                            queue.clear()
                            # (no mark set for the head branch to test: the layout's `status`
                            # test below gates the stats alone)
                            proto.syncs -= 1
                            proto.replies += 1
                            proto.tx_status = status
                            if proto.syncs == 0 and not proto.unsynced:
                                proto.phase = _READY_PHASE
                                settled = True      # (the queue emptied above)
                        else:
                            if told is not None:    # (None, not (): an identity test)
                                # the plain completions of the plain requests at the head first, as
                                # Conversation.receive_completions tells them (receive's common case:
                                # FORWARD, nothing due; inline, once per extended transaction, where
                                # its frame costs more than this copy: test_relay keeps the two in
                                # step): each while it answers the plain request at the head (kiwi's
                                # _POPS; a Request never equals an int) with a plain entry or nothing
                                # after it; the rest one by one as the walk tells them
                                queue = proto.queue
                                k = 0
                                for t in pops:
                                    if not queue:
                                        break
                                    entry = queue.popleft()
                                    if entry != _POPS[t] or queue and queue[0].__class__ is not int:
                                        queue.appendleft(entry)
                                        break
                                    k += 1
                                if k:
                                    told = told[k:]
                                for t, at, msg_end in told:
                                    action = proto.receive(t)
                                    if proto.broken is not None:
                                        self._miscounted(server)
                                    if action != 0:     # (only the prepared layer's requests do this)
                                        if out is None:
                                            out = []
                                        if at > seg:
                                            out.append(memoryview(buf)[seg:at])
                                        if action == REPLACE:
                                            out.append(proto.replacement)
                                        seg = msg_end
                                    if proto.output is not None:
                                        out = _splice(out, buf, seg, msg_end, proto.take_output())
                                        seg = msg_end
                            if status is not None:
                                # the read's last message a ReadyForQuery whose header the layout
                                # checked (pos is end - 6): told here, in the layout's branch (no
                                # mark set and tested on every read), as the walk's loop below
                                # tells a whole one, without its tests of the type (a copy of its
                                # _SK_READY branch and of what follows it for a whole message: once
                                # per transaction, where those tests cost about 40 bytecodes;
                                # test_relay keeps the copies in step). receive's answer, where
                                # receive tells it, is acted on by _ready_received at once: the
                                # stats below do not read `out`, and the common cases, where the
                                # answer is FORWARD, need no `action` set and tested (status: the
                                # layout's, checked with it, see above)
                                if len(queue := proto.queue) == 1 and proto.phase == _BUSY_PHASE:
                                    entry = queue.pop()
                                    if entry == _C_QUERY or entry == _C_SYNC or \
                                            entry.__class__ is int and entry & 0xFF == _C_SYNC:
                                        proto.syncs -= 1
                                        proto.replies += 1
                                        proto.tx_status = status
                                        if proto.syncs == 0 and not proto.unsynced:
                                            proto.phase = _READY_PHASE
                                            settled = True  # (its lone entry popped)
                                    else:
                                        queue.append(entry)
                                        out, seg = _ready_received(proto, status, out, buf, seg, pos, end)
                                else:
                                    out, seg = _ready_received(proto, status, out, buf, seg, pos, end)
                        if status is None:
                            # (the prepared layer's layouts, without a ReadyForQuery: the rare
                            # case first, its body short, so that the common case's jump is short)
                            pass
                        else:
                            # (the ReadyForQuery told above, in one branch or the other: its
                            # counts and times, as the walk's loop below takes them)
                            stats = self.stats
                            stats.count_query += 1
                            q0 = self.q_start
                            if q0 is not None:
                                now = _monotonic()
                                # (monotonic: never negative, so no test; the difference not kept in a local: the
                                # sketch, rarely on, takes it again)
                                stats.query_time += now - q0
                                if stats.query_sketch is not None:     # quantiles: both sketches (_sketch_times)
                                    _sketch_times(stats, now - q0, proto.tx_status, self.tx_start, now)
                                self.q_start = None if settled or not proto.syncs else now
                            txs = proto.tx_status
                            if txs is _TX_IDLE or txs == _TX_IDLE:
                                stats.count_tx += 1
                                t0 = self.tx_start
                                if t0 is not None:
                                    if q0 is not None:
                                        stats.tx_time += now - t0     # (its sketch: _sketch_times)
                                    self.tx_start = None if settled or q0 is None or not proto.syncs else now
                            if not settled:     # (settled: the detach below runs in this call)
                                self.s_ready = True
                            if proto.broken is not None:
                                self._miscounted(server)
                            if proto.output is not None:
                                out = _splice(out, buf, seg, end, proto.take_output())
                                seg = end
                            pos = end
                    else:       # laid out otherwise: this length is walked from now on
                        pos = 0
                        self.s_shapes[end] = _NEVER
            # the walk, its loop turned so that a header read with the layout (see above) is not read
            # again: each message's header is read at the end of the one before
            if pos > end - 5:   # no whole header left to walk (a layout's read: its common case)
                # (the walk under `else`: 3.11 specializes a compare only where a short jump
                # follows it, and a jump over the walk is long: `pos <= end - 5` with the walk
                # as its body stayed a generic int compare, once per read)
                pass
            else:
                prepared = self.prepared
                last = end - 5      # the last position a whole header starts at
                if prepared is None:
                    interest, kinds = _S_INTEREST, _S_KIND
                else:
                    interest, kinds = _S_INTEREST_PREPARED, _S_KIND_PREPARED
                t, length = _unpack_head(buf, pos)     # one call: indexing a bytearray is not specialized
                while True:
                    if length < 4:
                        raise ServerError(Status.ESERVER_READ, f"invalid message length {length} from server")
                    msg_end = pos + 1 + length
                    if interest[t]:
                        kind = kinds[t]
                        if kind == _SK_TELL:
                            action = proto.receive(t)
                        else:
                            if msg_end > end:                       # wanted whole
                                if 1 + length <= len(buf):
                                    break          # hold it back until whole
                                if kind != _SK_WHOLE:
                                    raise ServerError(Status.ESERVER_READ, "server message too long")
                            # `is`: the kinds are small ints (one object each), and an identity
                            # test needs no specialization, which a comparison followed by the
                            # long jump over this branch would not get
                            if kind is _SK_READY:
                                # (the branch for a layout's last ReadyForQuery above has a
                                # copy of this one)
                                status = _BYTE[buf[msg_end - 1]]
                                # Conversation.receive's common case inline (once per
                                # transaction, where its frame costs more than this copy;
                                # test_relay_fast keeps the two in step): the last request
                                # owed, a plain Query or Sync, answered by a BUSY server;
                                # anything else is receive's
                                queue = proto.queue
                                if len(queue) == 1 and proto.phase == _BUSY_PHASE:
                                    entry = queue.pop()
                                    # (a Request never equals an int; a Sync after an
                                    # Execute is flagged in exact mode)
                                    if entry == _C_QUERY or entry == _C_SYNC or \
                                            entry.__class__ is int and entry & 0xFF == _C_SYNC:
                                        proto.syncs -= 1
                                        proto.replies += 1
                                        proto.tx_status = status
                                        if proto.syncs == 0 and not proto.unsynced:
                                            proto.phase = _READY_PHASE
                                        action = 0
                                    else:
                                        queue.append(entry)
                                        action = proto.receive(t, status)
                                else:
                                    action = proto.receive(t, status)
                                stats = self.stats
                                stats.count_query += 1
                                q0 = self.q_start
                                if q0 is not None:              # seconds; a pipelined next request runs from now
                                    now = _monotonic()
                                    # (monotonic: never negative, so no test; the difference not kept in a local: the
                                    # sketch, rarely on, takes it again)
                                    stats.query_time += now - q0
                                    if stats.query_sketch is not None:     # quantiles: both sketches (_sketch_times)
                                        _sketch_times(stats, now - q0, proto.tx_status, self.tx_start, now)
                                    self.q_start = now if proto.syncs else None
                                txs = proto.tx_status
                                if txs is _TX_IDLE or txs == _TX_IDLE:
                                    stats.count_tx += 1
                                    t0 = self.tx_start
                                    if t0 is not None:
                                        if q0 is not None:
                                            stats.tx_time += now - t0     # (its sketch: _sketch_times)
                                        self.tx_start = now if q0 is not None and proto.syncs else None
                                self.s_ready = True
                            else:
                                action = proto.receive(t)
                                if kind == _SK_PARAM:
                                    self._parameter_status(server, buf, pos + 5, msg_end)
                                elif msg_end <= end:        # _SK_WHOLE: prepared statements
                                    if t == _S_COMPLETE:
                                        if length in (16, 19):
                                            prepared.command_complete(server, bytes(buf[pos + 5:msg_end - 1]))
                                    else:
                                        self._server_error(server, buf, pos + 5, msg_end)
                        if proto.broken is not None:
                            self._miscounted(server)
                        if action != 0:         # not FORWARD (an int compared: specialized)
                            if out is None:
                                out = []
                            if pos > seg:
                                out.append(memoryview(buf)[seg:pos])
                            if action == REPLACE:
                                out.append(proto.replacement)
                            if msg_end > end:
                                self.s_skip = msg_end - end
                                self.s_drop = True
                                seg = pos = end
                                break
                            seg = msg_end
                        # answers the pooler gives itself become due only here, after a message
                        # it was told (a partial one's at the next message's header, above)
                        if proto.output is not None and msg_end <= end:
                            out = _splice(out, buf, seg, msg_end, proto.take_output())
                            seg = msg_end
                    pos = msg_end
                    if pos > last:
                        break
                    t, length = _unpack_head(buf, pos)
                if pos > end:       # a message goes on past the bytes received (see _client_data)
                    self.s_skip = pos - end
                    pos = end
            rest = end - pos
            self.s_len = rest           # before writing: a failed write must leave the state honest
            # (the rare cases first, their bodies short, so that the common case's jumps are
            # short: a jump over a long body needs an EXTENDED_ARG)
            if out is not None:
                if pos > seg:
                    out.append(memoryview(buf)[seg:pos])
                data = b"".join(out)
                if data:
                    self._to_client(data)
            elif not pos:
                pass                # nothing to forward (a truth test: see above)
            else:
                self.stats.bytes_sent += pos
                # the reply: the buffer's kept view of its first pos bytes, one made and kept
                # for the second reply as long in a row, else a copy (see _Buf.rcut; every
                # server buffer is a _Buf, and what the socket does not take at once is
                # copied: no view is used after the write)
                if pos == buf.rcut_end:
                    data = buf.rcut
                elif pos == buf.rcut_next:
                    data = buf.rcut = buf.whole[:pos]
                    buf.rcut_end = pos
                else:
                    buf.rcut_next = pos
                    data = buf[:pos] if pos <= _SLICE_MAX else memoryview(buf)[:pos]
                try:
                    # the client's FileIO write kept on the relay while fast (Relay.c_write:
                    # not None only there), so the common case loads one slot, where the
                    # client, its io and the method were three loads and a test; _send_now's
                    # common case inline (None at EAGAIN)
                    write = self.c_write
                    if write is not None and self.pending is None:
                        n = write(data)
                        if n != pos:
                            self.pending = [(self.client.io, bytes(memoryview(data)[n or 0:]), 0)]
                    elif self.fast:
                        # (no local for the client's io: see the skip above)
                        if self.pending is None:    # no FileIO (yet): the fd
                            try:
                                n = _write(self.client.io._raw.fileno(), data)
                            except BlockingIOError:
                                n = 0
                            if n != pos:
                                self.pending = [(self.client.io, bytes(memoryview(data)[n:]), 0)]
                        else:
                            self._send_now(self.client.io, data, 0)
                    else:
                        self.client.io.write(data)
                except (OSError, ValueError) as e:  # (ValueError: the FileIO of a socket closed)
                    raise ClientGone(Status.ECLIENT_WRITE, e) from None
            if rest:
                buf[:rest] = buf[pos:end]
                # (s_buf None: buf is the scratch; else buf is s_buf, the only buffer the callback
                # and the coroutine read into where it is set: a load and a None test where
                # `buf is not self.s_buf` adds a load and an identity test)
                if self.s_buf is None:      # the scratch: now the relay's, and the thread
                    self.s_buf = buf        # takes another (see _FreeList; no local: see the skip above)
                    self.free.scratch = self.free.pop() if self.free else _new_buf()
            else:
                if self.s_buf is not None:      # (buf is s_buf: see above)
                    if len(self.free) < 256:     # s_buf is always BUF_SIZE (never grown, unlike c_buf)
                        self.free.append(buf)
                    self.s_buf = None
                # detach only at a message boundary (a message after the 'Z' may still be arriving:
                # here no bytes are held back); truth tests, as the jump over the detach is long (no
                # specialized compare)
                if settled or self.s_ready and not self.s_skip:     # (settled: nothing held back, no skip)
                    self.s_ready = False
                    # the transaction status, read once: the inline detach below tests it too.
                    # Settled, txs is the head branch's (read there after the ReadyForQuery was
                    # told; nothing since changes it), so it is read only where not settled, in
                    # the test of what the server still owes (a walrus whose `is None` is never
                    # true: tx_status is always a one-byte bytes). c_skip by its truth (an int,
                    # never negative: one load and jump where `!= 0` adds a constant and a compare)
                    if not settled and (proto.syncs or proto.unsynced or proto.queue
                                        or (txs := proto.tx_status) is None) or self.c_skip or server.broken:
                        pass
                    elif not self.walk_plain or txs is not _TX_IDLE and txs != _TX_IDLE:
                        # (before the common case, its body short: see below) a transaction not
                        # over, which transaction pooling keeps the server for, session pooling's
                        # server, or any other relay's detach (_detach_unplain)
                        if txs is not _TX_IDLE and txs != _TX_IDLE and self.mode_transaction:
                            pass
                        elif self.mode_transaction or self.mode_statement:
                            reason = self._detach_unplain(server)
                    else:
                        # the fast path's detach of a plain relay (Relay.walk_plain: fast, transaction
                        # or statement pooling, workers 1, the frontend's detach_plain; one test for
                        # the four, kept by _park) of a server whose transaction is over, in the hub
                        # (reason None: done), or _DETACH: the coroutine detaches. server_clean
                        # holds here: nothing half-relayed, no batch open
                        reason = _DETACH
                        sw = self.s_watch
                        # (the common case under the `else`s below, the rare ones first: their
                        # bodies are short, so every jump the common case runs is short, where a
                        # jump over the common case's long body needs an EXTENDED_ARG, a
                        # dispatch more each time it runs, taken or not)
                        if sw is None:
                            if self.pending is None and self.fe.detach_walked():
                                reason = None
                        else:
                            # pooled with its watcher started, its reader the instance (idle_readable)
                            # before the detach can hand it over; its callback stays (Server.on_read
                            # tells by the reader), so the next attach starts nothing: no stop now
                            # (gevent stops a watcher stopped in its own callback a second time), no
                            # start or re-pointing and no epoll_ctl at the next attach
                            self.s_watch = None
                            server.reader = self.instance
                            try:
                                route = server.route
                                if self.pending is not None:
                                    pass        # the coroutine detaches once the client took the rest
                                elif not (settled or proto.output is None and (
                                            proto.phase is _READY_PHASE or proto.phase not in _COPY_PHASES)) \
                                        or server.held or server.io is None or not route.plain \
                                        or server.state is not _S_ACTIVE:
                                    if self.fe.detach_walked():
                                        reason = None
                                else:
                                    # Frontend.detach_walked's common case inline (once per transaction,
                                    # where its frame costs more than this copy; test_frontend_fast keeps
                                    # the two in step): a plain detach (workers 1, no lock) of a server
                                    # that settled, back on the idle list or handed to the first waiter
                                    # of a route not paused; anything else is detach_walked's
                                    # (Route.plain: not obsolete, its router one thread and nothing
                                    # paused, one test for four, without the router's load; a paused
                                    # router's detach is detach_walked's, waiters or not; Server.held:
                                    # cancels, drop or offline, one test for three)
                                    # (settled: the head branch above left no output, its
                                    # splice took it, and set the READY phase: neither is tested
                                    # again; else READY by identity before the set's lookup)
                                    waiters = route.waiters
                                    client = self.client
                                    if server.deployed is not client.deploy_list:
                                        server.deployed = None      # (see Server.deployed)
                                    client.server = None
                                    if client.state is not _C_UNDEF:
                                        client.state = _C_PENDING
                                    # (idle_since stamped only where the server goes idle: cron's
                                    # pool_ttl reads it for idle servers alone; a server handed
                                    # over is stamped at the detach that makes it idle)
                                    # the clock read at the ReadyForQuery, or read now (see _on_client;
                                    # `now` itself, no second local: see the skip above)
                                    if now is None:
                                        now = _monotonic()
                                    if not waiters:
                                        server.idle_since = now
                                        server.client = None
                                        route.active.discard(server)
                                        server.state = _S_IDLE
                                        route.idle.append(server)
                                        reason = None
                                    else:
                                        waiter = waiters.popleft()
                                        taker = waiter.client
                                        server.client = taker
                                        taker.server = server
                                        taker.state = _C_ACTIVE
                                        stats = route.stats
                                        stats.count_server_assignment += 1
                                        stats.wait_time += now - waiter.since
                                        reason = None
                                        cb = waiter.callback
                                        if cb is None:      # a coroutine's wait
                                            waiter.server = server
                                            waiter.wake()
                                        else:
                                            # a relay queued in the hub (Relay._on_handed):
                                            # its continuation runs here and now, as Wakeup
                                            # lets a waker in the waiter's own hub (workers 1:
                                            # this one) do, not as a loop callback (wake()'s
                                            # frame, run_callback and the loop's call: about
                                            # 2,000 instructions per queued transaction).
                                            # reason is None first, so the finally leaves the
                                            # server (the taker's now) alone; _on_handed raises
                                            # nothing (its errors go to its own coroutine).
                                            # No waiter.server or waiter.woken store: a
                                            # callback wait's are read by nobody (the taker
                                            # is linked: client.server, which
                                            # router.attach_queued reads; woken is read by
                                            # park() alone, after an arm() that resets it)
                                            cb(now)
                                    # the end's common case (below) here, where this
                                    # relay is known fast with nothing pending (tested
                                    # above): its wait starts at the detach's clock
                                    if not self.instance.shutting_down and not client.killed:
                                        self.wait_start = now
                                        return None
                            finally:
                                if reason is not None:
                                    server.reader = None
                                    sw.stop()       # the coroutine's detach reads the socket
            if not self.fast:       # the coroutine's call (_from_server)
                return reason
            if reason is None:
                if self.pending is None and not self.instance.shutting_down and not self.client.killed:
                    # the clock read at the ReadyForQuery if it was (microseconds ago; a second
                    # read costs about 335 instructions)
                    self.wait_start = now if now is not None else _monotonic()
                    return None
                reason = _AGAIN
        except Exception as e:          # noqa: BLE001 - re-raised by the coroutine
            if not self.fast:
                raise
            reason = e
        self.glet.switch(reason)
        return None

    def _detach_unplain(self, server):
        """The reply walk's detach (Relay._server_data) of a settled server in transaction or
        statement pooling where the relay is not walk_plain (workers > 1, a frontend without
        detach_plain), or statement pooling's in a transaction: all of it detach_walked's (the
        coroutine's call: Frontend.detach). Returns the walk's reason: None where detached or
        left to the coroutine's call, _DETACH where the coroutine detaches. A method of its own,
        off the walk's common path: the jumps that path runs stay short (no EXTENDED_ARG)."""
        if not self.fast:
            self.fe.detach()
            return None
        reason = _DETACH
        sw = self.s_watch
        if sw is not None and self.keep_watch:
            # the watcher kept started (see the walk's plain detach)
            self.s_watch = None
            server.reader = self.instance
            try:
                if self.pending is None and self.fe.detach_walked():
                    reason = None
            finally:
                if reason is not None:
                    server.reader = None
                    sw.stop()
        else:
            if sw is not None:
                self.s_watch = None
                sw.stop()
            if self.pending is None and self.fe.detach_walked():
                reason = None
        return reason

    def _server_error(self, server, buf, start: int, end: int) -> None:
        """server_drop_on_cached_plan_error: a server whose cached plan broke (0A000 `cached
        plan must not change result type`) is closed once the client is done with it."""
        body = bytes(buf[start:end])
        if b"C0A000\0" in body and b"cached plan must not change result type" in body:
            if self.client.rule.server_drop_on_cached_plan_error:
                # under the router's lock, as Server.held's other writers (cancel_done reads
                # drop to work it out)
                with self.instance.router.lock:
                    server.drop = server.held = True

    def _miscounted(self, server) -> None:
        """A reply nobody asked for: our counting of this client's protocol went wrong. The
        server must never serve anyone else: keep it to this client and close it at the end."""
        if not server.broken:
            server.broken = True
            self.fe.logger.error("relay", self.client, server,
                                 "protocol out of step (%s): the server will be closed", server.proto.broken)

    def _parameter_status(self, server, buf, start: int, end: int) -> None:
        try:
            name, value, _ = bytes(buf[start:end]).split(b"\0", 2)
            name, value = name.decode(), value.decode()
        except ValueError:
            return
        key = name.lower()
        server.params[key] = value
        client = self.client
        client.vars[key] = value
        client.deploy_list = client.vars_key = None


# The layouts' unpack formats (see _C_SHAPES, _layout_format): little-endian, a header (a type
# byte and a big-endian length) read as an "I" of the type byte and the length's three high bytes
# and a "B" of its low byte. For a length under 256 (the common case) both are the interpreter's
# small ints (cached: no allocation, and the tuple compare finds them identical), and "<I" is a
# plain copy on a little-endian machine where "!I" is put together byte by byte. A run of
# _RUN_MIN headers or more with no body between (ParseComplete, BindComplete and the next
# header: 15 bytes) is one bytes field, one object for six ints. Each field stands for its bytes
# one to one, so a read's fields equal the layout's exactly where the bytes the old "!BI"
# fields read are equal: the same reads are accepted (callgrind micro-benchmark, instructions
# a check and compare: pgbench -M extended's request 1,878 -> 1,672, its reply 2,149 -> 1,779,
# a simple reply 1,774 -> 1,616; a run of two headers as "10s" costs about 15 more than "IBIB")
_RUN_MIN = 3


def _layout_format(lengths: list, status: bool) -> str:
    """The struct format of a layout's headers (see above): the messages from offset 0 whose
    length fields are `lengths`, each header read and its body skipped; with `status`, the last
    is a ReadyForQuery whose status byte is read too, as the last field (a "c": the
    interpreter's cached one-byte bytes)."""
    fmt = ["<"]
    run = 0
    last = len(lengths) - 1
    for i, length in enumerate(lengths):
        run += 1
        if length > 4 or status and i == last:
            fmt.append(f"{5 * run}s" if run >= _RUN_MIN else "IB" * run)
            run = 0
            fmt.append("c" if status and i == last else f"{length - 4}x")
    if run:
        fmt.append(f"{5 * run}s" if run >= _RUN_MIN else "IB" * run)
    return "".join(fmt)


def _client_shape(buf, end: int, sent: list):
    """The _C_SHAPES entry for the whole client messages buf[:end] (their told types `sent`):
    an unpack of every header (type and length, the bodies skipped) and what it gives, the
    types and the effect kiwi remembers for them (or None), or _NEVER for a read of more than
    _SHAPE_MESSAGES messages."""
    lengths = []
    pos = 0
    while pos < end:
        length = _unpack_len(buf, pos + 1)[0]
        lengths.append(length)
        pos += 1 + length
    if len(lengths) > _SHAPE_MESSAGES:
        return _NEVER
    unpack = struct.Struct(_layout_format(lengths, False)).unpack_from
    types = bytes(sent)
    # the batch's effect as kiwi remembers it (Conversation.send_many, told these types when
    # such a request was first seen; None where it did not remember it), its queued entries None
    # where none (the relay's copies test them with `is`, not with a tuple's truth test)
    effect = _BATCHES.get(types)
    if effect is not None and not effect[0]:
        effect = (None,) + effect[1:]
    return unpack, unpack(buf, 0), types, effect


def _server_shape(buf, end: int, kinds: tuple):
    """The _S_SHAPES entry for the server bytes buf[:end]: the whole messages before the first
    one the walk reads whole (`kinds`, _S_KIND or _S_KIND_PREPARED, other than _SK_TELL) or the
    first not whole, as an unpack
    of their headers and what it gives, the told ones (type, start, end; None for none), where the walk goes
    on, the told types (bytes), where the read ends with a ReadyForQuery (its header checked
    too) and every told message is a completion (kiwi's _POPS), the queue that the whole read
    answers in receive's common cases (their plain requests and a plain Sync: see
    _server_data), else None, the status the layout holds for that ReadyForQuery (_TX_IDLE;
    None without one: it also tells whether the layout checks one) and the length of that
    queue (0 without one); _NEVER for fewer than two such
    messages (that ReadyForQuery counted) or more than _SHAPE_MESSAGES, or for a message whose
    length the walk refuses."""
    lengths = []
    told = []
    pos = 0
    head = False
    while pos <= end - 5:
        t, length = _unpack_head(buf, pos)
        if length < 4:      # the walk refuses it (made before the walk: see _server_data)
            return _NEVER
        msg_end = pos + 1 + length
        kind = kinds[t]
        if msg_end > end or kind > _SK_TELL:
            if t == _S_READY and length == 5 and msg_end == end:
                # the read ends with a ReadyForQuery: its header and status byte are checked
                # with the rest (the layout holds the idle status: see _server_data) and the
                # walk takes it without reading it again
                lengths.append(length)
                head = True
            break
        if kind:
            told.append((t, pos, msg_end))
        lengths.append(length)
        pos = msg_end
    if not 2 <= len(lengths) <= _SHAPE_MESSAGES:
        return _NEVER
    unpack = struct.Struct(_layout_format(lengths, head)).unpack_from
    whole = None
    if head and told and all(_POPS[t] >= 0 for t, _, _ in told):
        # (the object send_many's remembered batch marks the Conversation with: see
        # Conversation.batch, tested by identity)
        whole = shared_entries(tuple(_POPS[t] for t, _, _ in told) + (_C_SYNC,))
    headers = unpack(buf, 0)
    status = None
    if head:
        headers = headers[:-1] + (_TX_IDLE,)
        status = _TX_IDLE
    return (unpack, headers, tuple(told) or None, pos, bytes(t for t, _, _ in told), whole, status,
            0 if whole is None else len(whole))


def _sketch_times(stats, query: float, txs: bytes, t0, now: float) -> None:
    """A ReadyForQuery's times (seconds) added to the route's sketches (quantiles on: Route
    makes query_sketch and tx_sketch together, so one is None where the other is): the query's,
    and where it ends a transaction (txs idle) that started at t0 (None: no start kept), the
    transaction's. The reply walk calls it where the query's sketch is not None, before it
    moves q_start and tx_start on, so its common case (quantiles off) tests one sketch per
    transaction, not both."""
    stats.query_sketch.add(query * 1e6)
    if t0 is not None and (txs is _TX_IDLE or txs == _TX_IDLE):
        stats.tx_sketch.add((now - t0) * 1e6)


def _splice(out: list | None, buf, seg: int, pos: int, data: bytes) -> list:
    """`out` (started if None) with buf[seg:pos] and then `data` appended."""
    if out is None:
        out = []
    if pos > seg:
        out.append(memoryview(buf)[seg:pos])
    out.append(data)
    return out


def _ready_received(proto, status: bytes, out: list | None, buf, seg: int, pos: int, end: int) -> tuple:
    """The reply walk's remembered ReadyForQuery at buf[pos:end] told by Conversation.receive
    (not its common case: see Relay._server_data) and acted on as the walk acts on a whole
    message: `out` and `seg` afterwards."""
    action = proto.receive(_S_READY, status)
    if action != 0:
        if out is None:
            out = []
        if pos > seg:
            out.append(memoryview(buf)[seg:pos])
        if action == REPLACE:
            out.append(proto.replacement)
        seg = end
    return out, seg


def _maybe_sql(buf, pos: int, end: int) -> bool:
    """Could the partly received Query at `pos` be a PREPARE/EXECUTE/DEALLOCATE (which the
    prepared-statement layer needs whole)? Large queries that cannot are streamed as usual."""
    head = bytes(buf[pos + 5:min(end, pos + 5 + 64)])
    if len(head.lstrip()) < 11:
        return True
    return _SQL_HEAD.match(head) is not None


_new = object.__new__


def _on_read(server):
    """The server's read watcher's callback for its life (Server.on_read), made at its first
    fast-path attach: the reply walk bound to the server (see Relay._server_data)."""
    cb = server.on_read = _MethodType(Relay._server_data, server)
    return cb


def new_relay(frontend, client, prepared=None):
    """A session's Relay (Relay(...) is this too): Frontend.run calls it without the class
    call, which 3.11 does not specialize (type_call and slot_tp_init run apart, about 1,000
    instructions a login). A unit test's stand-in frontend or route may lack what a Frontend's
    has (read with try: a try costs nothing unless it raises, getattr() is a call)."""
    self = _new(Relay)
    self.fe = frontend
    self.client = client
    self.c_buf = None       # client bytes held back (partial header), c_len of them
    self.c_len = 0
    self.c_skip = 0         # bytes of the current client message still to be forwarded ...
    self.c_drop = False     # ... or swallowed (a stray COPY message with no server)
    self.s_buf = None
    self.s_len = 0
    self.s_skip = 0         # bytes of the current server message still to come ...
    self.s_drop = False     # ... and whether they are swallowed rather than forwarded
    self.s_ready = False    # a ReadyForQuery was relayed since the last detach check
    route = client.route
    try:
        facts = route.relay_facts
    except AttributeError:          # a stand-in route (unit tests): worked out each time
        facts = None
    if facts is None:
        facts = _rule_facts(client.rule)
        if hasattr(route, "relay_facts"):
            route.relay_facts = facts
    self.mode_transaction, self.mode_statement, request_timeout, sweepable, q_timeout = facts
    self.stats = route.stats
    self.prepared = prepared
    # the reply walk's layouts (see _S_SHAPES): with the prepared-statement layer its walk tells more
    self.s_shapes = _S_SHAPES if prepared is None else _S_SHAPES_PREPARED
    # attributes a stand-in frontend may lack (unit tests) are read with try, not getattr with
    # a default: a try costs nothing unless it raises, getattr() is a call
    try:
        instance = frontend.instance
    except AttributeError:
        instance = _NEVER_STOPPING
    self.instance = instance
    self.waiting = False    # parked in the wait for either side: wake_relays() may wake it
    self.woken = False      # ... and was woken (not a timeout)
    self.may_sleep = False  # parked in an idle wait the sweep may end (_sweep) ...
    self.marked = False     # ... seen there by the last sweep ...
    self.sleepy = False     # ... and woken by it to go dormant
    self.glet = None
    # the hub of the client's socket is this thread's (an Io belongs to the machine that made
    # or attached it): no get_hub() call; what the thread's relays share found by it (_HUBS)
    hub = self.hub = client.io.sock.hub
    try:
        shared = _HUBS[hub]
    except KeyError:
        shared = _hub_state(hub)
    # the loop and thread the relay runs in (wake()); SHOW STATS times: the loop's clock
    # (libev's time of the current loop iteration, the moment the bytes were found readable;
    # as C's machine_time_us) costs less than a clock call; the thread's free list, borrowed
    # from and given back to inline on the hot path
    self.loop, self.ident, self.free, _ = shared
    # q_start: when the request being answered reached the relay; tx_start: the first
    # request of the open transaction (None: none; the callbacks test them with `is`, where a
    # truth test of a float calls PyObject_IsTrue)
    self.q_start = None
    self.tx_start = None
    # pool_idle_in_request_timeout_ms: the wait's timeout while a request is unfinished
    self.request_timeout = request_timeout
    self.timers = None      # wait_any's reusable timeout timers, made at the first timed wait
    # the callback-driven fast path (_park): for plain sockets, a frontend that can attach
    # and detach without waiting, and timeouts the 1 s sweep can keep (FAST_MIN_TIMEOUT_MS)
    self.fast_ok = sweepable and not client.io._tls and hasattr(frontend, "attach_now")
    self.fast = False       # parked in the fast path: the callbacks relay
    self.walk_plain = False  # ... and the reply walk's detach may take its plain case (plain_walk)
    # ... and the queued hand-over's copy of ready_now's per-session tests (hand_flags)
    self.hand_plain = self.hand_deploy = self.hand_check = False
    self.pending = None     # [(io, bytes, to_server)] the fast path could not write at once
    self.wait_start = 0.0   # time.monotonic() when the present wait started (the sweep's timeouts)
    self.swept = 0.0        # wait_start as the last sweep (or the park) found it (_sweep_fast)
    self.expired = False    # the sweep found the fast path's wait over its timeout
    self.s_watch = None     # the attached server's read watcher, started by the fast path
    self.on_client = self._on_client
    # the fast path's queued attach (in _on_client): queued in the route's queue with a callback
    # wake-up (on_handed); pool_timeout (seconds, None: none) by a timer made at the first one
    self.queued = False
    self.q_timeout = q_timeout
    self.q_timer = None
    self.on_handed = _NO_HAND_OVER  # self._on_handed, made at the first queued wait (_on_client): most never queue
    self.c_watch = None     # the client socket's read watcher, set by _park for the queued attach
    self.c_first = None     # the first byte of the request held while queued (set where it queues)
    # the client's FileIO write (Io.use_file's _fwrite) while the relay is fast, else None: the
    # reply walk's write to the client, one slot load. Kept by its writers: _park (set from the
    # client's io at its start, None at its end) and the sweep where it gives the client its
    # FileIO (the only use_file of a client's io). The client's io itself is not replaced
    # while the relay runs (TLS is done before it); a FileIO closed with its socket (Io.close)
    # makes the kept write raise ValueError, a ClientGone as the closed socket's EBADF is
    self.c_write = None
    # the client's FileIO readinto (Io.use_file's _fread) while the relay is fast, else None:
    # the client callback's read (_on_client), one slot load. Kept by the same writers as
    # c_write, with it; a FileIO closed with its socket makes the kept read raise ValueError,
    # a ClientGone as for the write
    self.c_read = None
    # workers 1: a server the fast path detaches is pooled with its read watcher started
    # (server.idle_readable); with more workers a pooled server is a bare fd (server.park)
    try:
        self.keep_watch = instance.workers <= 1
    except AttributeError:
        self.keep_watch = False
    return self
