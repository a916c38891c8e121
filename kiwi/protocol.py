"""kiwi.protocol: what a PostgreSQL server still owes the pooler, as a sans-IO state machine.

One ``Conversation`` follows one server connection. The pooler tells it every message it sends
to the server (``send``) and every message the server sends back (``receive``): the relay on its
fast path, the backend module for service queries (reset, deploy). In return it answers the
questions the pooler has to ask before it can detach, reuse or reset a server:
is every request answered (``synchronized``), is an extended-protocol batch still open
(``unsynced``), is the server in COPY, in which transaction state is it. It never touches a socket.

The requests the server still has to answer wait in a FIFO (PgBouncer's "outstanding
requests"): Parse, Bind and Close until their ParseComplete/BindComplete/CloseComplete, Sync,
Query and FunctionCall until their ReadyForQuery, and in `exact` mode (with prepared
statements) Describe until RowDescription/NoData and Execute until CommandComplete,
EmptyQueryResponse or PortalSuspended. Flush and CopyData are never queued. PostgreSQL's rules
the machine follows:

* after an ErrorResponse to an extended-protocol message the server skips every message up to
  the next Sync (``SKIP``): the requests queued before that Sync are dropped unanswered, and a
  Query or FunctionCall sent meanwhile is ignored too;
* in COPY-in mode the server ignores Sync and Flush: the Syncs a client sent after the COPY's
  Execute and before its CopyDone/CopyFail earn no ReadyForQuery;
* a ReadyForQuery ends COPY and SKIP and carries the transaction status.

A queued entry is either a bare type byte (the usual case, cheap) or a ``Request`` carrying what
the prepared-statement layer needs: hide the reply from the client, replace an error with its
own, call back when the request succeeds or fails, or answer the client locally (``LOCAL``) at
exactly the point in the reply stream where PostgreSQL would have answered.

The phase of the connection is data: ``TRANSITIONS`` maps (phase, event) to the next phase and
``receive``/``send`` apply it; tests walk that table. A reply the machine did not expect (a
ReadyForQuery nobody asked for, a ParseComplete with no Parse queued) sets ``broken``: the pooler
must never give that server to another client.
"""
from __future__ import annotations

from collections import deque

from kiwi.header import BE, FE

__all__ = ["Conversation", "Request", "Phase", "TRANSITIONS", "FORWARD", "DROP", "REPLACE", "LOCAL"]

# what the relay does with a server message (the answer of `receive`)
FORWARD = 0     # pass it to the client
DROP = 1        # swallow it (the reply to a request the pooler made itself)
REPLACE = 2     # swallow it and send `Conversation.replacement` instead

LOCAL = 0       # Request.type of an answer the pooler gives itself (no server message)

# plain ints (not the IntEnum members): queued entries are told apart from Requests by class
_P, _B, _C, _S, _Q, _F = (int(x) for x in (FE.PARSE, FE.BIND, FE.CLOSE, FE.SYNC, FE.QUERY, FE.FUNCTION_CALL))
_D, _E, _H = int(FE.DESCRIBE), int(FE.EXECUTE), int(FE.FLUSH)
_COPY_DONE, _COPY_FAIL = int(FE.COPY_DONE), int(FE.COPY_FAIL)
_SYNC_POINTS = frozenset((_S, _Q, _F))          # requests answered by ReadyForQuery
_EXTENDED = frozenset((_P, _B, _C, _D, _E))      # they open a batch that only Sync closes
_QUEUED = frozenset((_P, _B, _C, _S, _Q, _F))    # requests that wait in the FIFO

# a completion message -> the request it completes
_READY, _ERROR, _EMPTY = int(BE.READY_FOR_QUERY), int(BE.ERROR_RESPONSE), int(BE.EMPTY_QUERY_RESPONSE)
_COPY_IN, _COPY_OUT = int(BE.COPY_IN_RESPONSE), int(BE.COPY_OUT_RESPONSE)
_COPY_BOTH, _SERVER_COPY_DONE = int(BE.COPY_BOTH_RESPONSE), int(BE.COPY_DONE)
_ENDS_EXECUTE = frozenset((int(BE.COMMAND_COMPLETE), _EMPTY, int(BE.PORTAL_SUSPENDED)))
_ENDS_DESCRIBE = frozenset((int(BE.ROW_DESCRIPTION), int(BE.NO_DATA)))
COMPLETES = {int(BE.PARSE_COMPLETE): _P, int(BE.BIND_COMPLETE): _B, int(BE.CLOSE_COMPLETE): _C}
# a backend message type -> the plain queued request it answers when that request is at the
# head of the queue (the completions; in exact mode the ends of Describe and Execute, an
# Execute's only when no CopyDone flag is set on it), -1 for the rest: one tuple index
_POPS = [COMPLETES.get(_t, -1) for _t in range(256)]
for _t in _ENDS_DESCRIBE:
    _POPS[_t] = _D
for _t in _ENDS_EXECUTE:
    _POPS[_t] = _E
_POPS = tuple(_POPS)


class Phase:
    """Where the server's input stream is."""
    READY = "ready"          # every request answered, no batch open
    BUSY = "busy"            # requests outstanding, none of the states below
    COPY_IN = "copy_in"      # the server reads CopyData and ignores Sync/Flush
    COPY_OUT = "copy_out"    # the server sends CopyData until CopyDone
    COPY_BOTH = "copy_both"  # replication-style COPY both ways, until the connection ends
    SKIP = "skip"            # an extended-protocol error: messages are ignored until Sync


_READY_PHASE, _BUSY_PHASE = Phase.READY, Phase.BUSY
_FAST_QUEUED = frozenset((_P, _B, _C))

# send_many's inline cases by type (a tuple: 3.11 specializes indexing it with an int); 0: send()
_K_QUEUED, _K_DESCRIBE, _K_EXECUTE, _K_SYNC, _K_QUERY, _K_FLUSH, _K_FUNCTION, _K_COPY_END = range(1, 9)
_SEND_KIND = [0] * 256
for _t, _k in ((_P, _K_QUEUED), (_B, _K_QUEUED), (_C, _K_QUEUED), (_D, _K_DESCRIBE), (_E, _K_EXECUTE),
               (_S, _K_SYNC), (_Q, _K_QUERY), (_H, _K_FLUSH), (_F, _K_FUNCTION), (_COPY_DONE, _K_COPY_END),
               (_COPY_FAIL, _K_COPY_END)):
    _SEND_KIND[_t] = _k
_SEND_KIND = tuple(_SEND_KIND)
del _t, _k
# send_many's remembered batches: the types (bytes) -> (queue entries added, Syncs/Queries
# added, unsynced, flushed, _exec_syncs, _copy_ended after it); bounded, process-wide (a batch's
# effect depends on its types alone)
_BATCHES: dict = {}
_BATCHES_EXACT: dict = {}           # ... with exact counting (see _exact_rememberable)
_BATCHES_MAX = 256
_BATCH_TYPES_MAX = 16
# one tuple object per value of a remembered batch's queued entries, so that a reader holding an
# equal tuple from shared_entries (the relay's reply layouts) tests Conversation.batch by
# identity; bounded like the batches (past it an equal tuple is simply another object)
_ENTRIES: dict = {}


def shared_entries(entries: tuple) -> tuple:
    """`entries`, or the equal tuple kept first (see _ENTRIES)."""
    kept = _ENTRIES.get(entries)
    if kept is None:
        kept = entries
        if len(_ENTRIES) < _BATCHES_MAX:
            _ENTRIES[entries] = entries
    return kept


def _exact_rememberable(types) -> bool:
    """With exact counting a batch's effect depends on its types alone when it has an Execute,
    no Sync before its first Execute or Query (a Sync is flagged by the Execute before it) and
    no CopyDone/CopyFail (they flag an Execute already queued)."""
    reset = False
    for t in types:
        if t == _E or t == _Q:
            reset = True
        elif t == _S:
            if not reset:
                return False
        elif t == _COPY_DONE or t == _COPY_FAIL:
            return False
    return _E in types

# (phase, event) -> next phase; an event missing for a phase leaves it unchanged.
# Events: the server's CopyIn/CopyOut/CopyBoth responses and CopyDone, the client's
# CopyDone/CopyFail, an extended-protocol error with no Sync queued yet ("error_unsynced"),
# a Sync reaching a skipping server ("sync"), and ReadyForQuery ("ready").
TRANSITIONS = {
    (Phase.BUSY, "copy_in_response"): Phase.COPY_IN,
    (Phase.BUSY, "copy_out_response"): Phase.COPY_OUT,
    (Phase.BUSY, "copy_both_response"): Phase.COPY_BOTH,
    (Phase.BUSY, "error_unsynced"): Phase.SKIP,
    (Phase.COPY_IN, "client_copy_end"): Phase.BUSY,
    (Phase.COPY_IN, "error"): Phase.BUSY,
    (Phase.COPY_IN, "error_unsynced"): Phase.SKIP,
    (Phase.COPY_OUT, "server_copy_done"): Phase.BUSY,
    (Phase.COPY_OUT, "error"): Phase.BUSY,
    (Phase.COPY_OUT, "error_unsynced"): Phase.SKIP,
    (Phase.SKIP, "sync"): Phase.BUSY,
    (Phase.BUSY, "ready"): Phase.READY,
    (Phase.COPY_IN, "ready"): Phase.READY,
    (Phase.COPY_OUT, "ready"): Phase.READY,
    (Phase.COPY_BOTH, "ready"): Phase.READY,
    (Phase.SKIP, "ready"): Phase.READY,
}


class Request:
    """A queued request with instructions. `type` is the frontend type byte it stands for
    (or LOCAL). `hide`: drop its success reply (for Q: every message up to and including its
    ReadyForQuery). `error`: bytes that replace the ErrorResponse it gets. `empty`: bytes that
    replace its EmptyQueryResponse (a Query the pooler answered with ';'). `local`: the bytes
    a LOCAL entry sends. `on_done`/`on_fail`: called when it succeeds, or fails or is skipped."""

    __slots__ = ("type", "hide", "error", "empty", "local", "on_done", "on_fail", "failed")

    def __init__(self, type_: int, hide: bool = False, error: bytes | None = None,
                 empty: bytes | None = None, local: bytes | None = None, on_done=None, on_fail=None):
        self.type = type_
        self.hide = hide
        self.error = error
        self.empty = empty
        self.local = local
        self.on_done = on_done
        self.on_fail = on_fail
        self.failed = False

    def __repr__(self) -> str:
        kind = "LOCAL" if self.type == LOCAL else chr(self.type)
        return f"<Request {kind}{' hide' if self.hide else ''}{' error' if self.error else ''}>"


# flags on queued ints (exact mode): a Sync sent after an Execute and before any CopyDone/
# CopyFail (PostgreSQL ignores it if that Execute turns out to be a COPY FROM STDIN), and an
# Execute whose CopyDone/CopyFail has already been sent
_AFTER_EXECUTE = 0x100
_COPY_SENT = 0x200


def _type(entry) -> int:
    return entry & 0xFF if entry.__class__ is int else entry.type


class Conversation:
    """The request/reply bookkeeping of one server connection (see the module docstring)."""

    __slots__ = ("queue", "syncs", "phase", "unsynced", "tx_status", "broken", "output",
                 "replacement", "replies", "exact", "_exec_syncs", "_copy_ended", "flushed", "batch")

    def __init__(self, exact: bool = False) -> None:
        self.queue: deque = deque()
        # exact: Describe and Execute are queued too (until RowDescription/NoData and
        # CommandComplete/EmptyQueryResponse/PortalSuspended), so that an answer the pooler
        # gives itself can never overtake their replies. Needed with prepared statements only.
        self.exact = exact
        self.syncs = 0              # Sync/Query/FunctionCall still owed a ReadyForQuery
        self.phase = Phase.READY
        self.unsynced = False       # extended-protocol messages sent since the last Sync
        self.tx_status = b"I"
        self.broken: str | None = None
        # LOCAL answers now due to the client, in order; None while there are none (the relay
        # tests it once or twice a message with `is`, where an empty list's truth test calls
        # PyObject_IsTrue)
        self.output: list[bytes] | None = None
        self.replacement = b""           # what to send instead of a REPLACEd message
        self.replies = 0            # ReadyForQuery received so far (for logs and tests)
        self._exec_syncs = -1       # Syncs sent since the last Execute (-1: last was a Query)
        self._copy_ended = False    # CopyDone/CopyFail sent before the server's CopyInResponse
        self.flushed = False        # the last extended-protocol message was followed by a Flush
        # None, or the queued entries (a tuple) of the remembered batch send_many added last,
        # with nothing added or changed since but entries popped from the left: then the queue
        # is a tail of what it held before plus `batch`, so it equals `batch` where the two
        # lengths are equal (the relay's reply walk tests that instead of making a tuple of the
        # queue). Every change other than a pop from the left (or a popped entry put back) sets
        # it to None
        self.batch: tuple | None = None

    # -- questions ------------------------------------------------------------------------
    @property
    def synchronized(self) -> bool:
        """Every Sync, Query and FunctionCall has its ReadyForQuery."""
        return self.syncs == 0

    @property
    def idle(self) -> bool:
        """Nothing owed and no batch open: the server may be detached or reset."""
        return self.syncs == 0 and not self.unsynced and not self.queue

    @property
    def in_transaction(self) -> bool:
        return self.tx_status != b"I"

    @property
    def skipping(self) -> bool:
        return self.phase == Phase.SKIP

    @property
    def copy_mode(self) -> bool:
        return self.phase in (Phase.COPY_IN, Phase.COPY_OUT, Phase.COPY_BOTH)

    def _go(self, event: str) -> None:
        self.phase = TRANSITIONS.get((self.phase, event), self.phase)

    # -- the pooler sends ----------------------------------------------------------------
    def send(self, t: int) -> None:
        """A frontend message of type `t` (an int) was (or is about to be) written to the server."""
        self.batch = None       # (every branch below may add to the queue or change an entry)
        phase = self.phase
        if t == _Q and (phase == _READY_PHASE or phase == _BUSY_PHASE):
            # the common case, inline: a simple query outside COPY and SKIP (the relay has a
            # copy of it: tests/odyssey_gevent/test_relay.py keeps the two in step)
            self._exec_syncs = -1
            self._copy_ended = False
            self.phase = _BUSY_PHASE
            self.queue.append(_Q)
            self.syncs += 1
            return
        if t in _FAST_QUEUED and (phase == _BUSY_PHASE or phase == _READY_PHASE):
            # the common case, inline: Parse/Bind/Close of an extended batch
            self.unsynced = True
            self.flushed = False
            self.phase = _BUSY_PHASE
            self.queue.append(t)
            return
        if phase == _BUSY_PHASE and self.exact:
            # the same with `exact` counting (the prepared-statement layer): Describe and
            # Execute are queued, a Sync after an Execute is flagged (what _queue does, BUSY)
            if t == _E:
                self.unsynced = True
                self.flushed = False
                self._exec_syncs = 0
                self._copy_ended = False
                self.queue.append(_E)
                return
            if t == _S:
                self.unsynced = False
                if self._exec_syncs >= 0 and not self._copy_ended:
                    self._exec_syncs += 1
                    self.queue.append(_S | _AFTER_EXECUTE)
                else:
                    self.queue.append(_S)
                self.syncs += 1
                return
            if t == _D:
                self.unsynced = True
                self.flushed = False
                self.queue.append(_D)
                return
        elif phase == _BUSY_PHASE:
            # the common cases of an extended batch without `exact` counting, inline (what the
            # general branches below do with them)
            if t == _E:
                self.unsynced = True
                self.flushed = False
                self._exec_syncs = 0
                self._copy_ended = False
                return
            if t == _S:
                self.unsynced = False
                if self._exec_syncs >= 0 and not self._copy_ended:
                    self._exec_syncs += 1
                self.queue.append(_S)
                self.syncs += 1
                return
            if t == _D:
                self.unsynced = True
                self.flushed = False
                return
        if phase == Phase.SKIP:
            if t == _S:                      # the Sync that ends the skip
                self._go("sync")
                self._queue(_S)
                self.unsynced = False
            return                           # everything else is ignored by the server
        if t in _EXTENDED:
            self.unsynced = True
            self.flushed = False
            if t == _E:
                self._exec_syncs = 0
                self._copy_ended = False
                if self.exact:
                    self._queue(t)
            elif t != _D or self.exact:
                self._queue(t)
        elif t == _S:
            if phase == Phase.COPY_IN:       # PostgreSQL ignores Sync in COPY-in mode
                return
            self.unsynced = False
            if self._exec_syncs >= 0 and not self._copy_ended:
                self._exec_syncs += 1
                self._queue(_S | _AFTER_EXECUTE if self.exact else _S)
            else:
                self._queue(_S)
        elif t == _Q or t == _F:
            if t == _Q:
                self._exec_syncs = -1
                self._copy_ended = False
            self._queue(t)
        elif t == _H:
            self.flushed = True              # the client waits for what it has asked so far
        elif t == _COPY_DONE or t == _COPY_FAIL:
            if phase == Phase.COPY_IN:
                self._go("client_copy_end")
            else:                            # ... or ends one the server has not started yet
                self._copy_ended = True
                if self.exact:               # ... that of the latest Execute
                    queue = self.queue
                    for i in range(len(queue) - 1, -1, -1):
                        entry = queue[i]
                        if entry.__class__ is int and entry & 0xFF == _E:
                            queue[i] = entry | _COPY_SENT
                            break

    def send_many(self, types) -> None:
        """`send` for each frontend message type in `types` (ints: a list or bytes), in order: the relay tells one
        read's messages in one call. Outside COPY and SKIP (where sending never changes the
        phase but to BUSY), a batch with an Execute is applied from memory, and without `exact`
        counting any other batch with the state kept in locals and written back once: a Python
        call and attribute stores per message cost more than the work. (The relay has a copy of
        the remembered case: tests/odyssey_gevent/test_relay_fast.py keeps the two in step.)"""
        phase = self.phase
        if not (phase == _BUSY_PHASE or phase == _READY_PHASE):
            for t in types:
                self.send(t)
            return
        queue = self.queue
        # a batch with an Execute leaves the same state whatever the state before it (the
        # Execute sets every flag below), so its effect is remembered by its types: a client
        # sends the same few batches again and again (pgbench -M extended: P B D E S)
        key = bytes(types)
        exact = self.exact
        effect = _BATCHES_EXACT.get(key) if exact else _BATCHES.get(key)
        if effect is not None:
            queued, added, self.unsynced, self.flushed, self._exec_syncs, self._copy_ended = effect
            if queued:
                self.batch = queued
                queue.extend(queued)
                self.syncs += added
                self.phase = _BUSY_PHASE
            return
        before = len(queue)
        self.batch = None
        if exact:
            syncs = self.syncs
            for t in types:
                self.send(t)
            if len(_BATCHES_EXACT) < _BATCHES_MAX and len(key) <= _BATCH_TYPES_MAX and _exact_rememberable(types):
                _BATCHES_EXACT[key] = (shared_entries(tuple(queue)[before:]), self.syncs - syncs, self.unsynced, self.flushed,
                                       self._exec_syncs, self._copy_ended)
            return
        unsynced = self.unsynced
        flushed = self.flushed
        ex = self._exec_syncs
        ended = self._copy_ended
        syncs = self.syncs
        for t in types:
            kind = _SEND_KIND[t]
            if kind == _K_QUEUED:               # Parse, Bind, Close
                unsynced = True
                flushed = False
                queue.append(t)
            elif kind == _K_SYNC:
                unsynced = False
                if ex >= 0 and not ended:
                    ex += 1
                queue.append(_S)
                syncs += 1
            elif kind == _K_DESCRIBE:
                unsynced = True
                flushed = False
            elif kind == _K_EXECUTE:
                unsynced = True
                flushed = False
                ex = 0
                ended = False
            elif kind == _K_QUERY:
                ex = -1
                ended = False
                queue.append(_Q)
                syncs += 1
            elif kind == _K_FLUSH:
                flushed = True
            elif kind == _K_FUNCTION:
                queue.append(_F)
                syncs += 1
            elif kind == _K_COPY_END:           # ends a COPY the server has not started yet
                ended = True
        if _E in types and len(_BATCHES) < _BATCHES_MAX and len(key) <= _BATCH_TYPES_MAX:
            queued = shared_entries(tuple(queue)[before:])
            _BATCHES[key] = (queued, syncs - self.syncs, unsynced, flushed, ex, ended)
        self.unsynced = unsynced
        self.flushed = flushed
        self._exec_syncs = ex
        self._copy_ended = ended
        self.syncs = syncs
        if queue:
            self.phase = _BUSY_PHASE

    def _queue(self, t: int) -> None:
        if self.phase == Phase.READY:
            self.phase = Phase.BUSY
        self.queue.append(t)
        if t & 0xFF in _SYNC_POINTS:
            self.syncs += 1

    def send_request(self, request: Request) -> None:
        """Queue a request with instructions (it stands for one message of `request.type`,
        already counted by this call; do not also call `send` for it). A LOCAL request at
        the head of the queue is answered at once (see `output`)."""
        self.batch = None
        if self.phase == Phase.SKIP and request.type != _S:
            if request.on_fail is not None:
                request.on_fail()
            return
        t = request.type
        if t in _EXTENDED:
            self.unsynced = True
            self.flushed = False
        elif t == _S:
            self.unsynced = False
        if self.phase == Phase.READY:
            self.phase = Phase.BUSY
        self.queue.append(request)
        if t in _SYNC_POINTS:
            self.syncs += 1
        self._flush_local()

    def _flush_local(self) -> None:
        queue = self.queue
        while queue:
            head = queue[0]
            if head.__class__ is int or head.type != LOCAL:
                break
            queue.popleft()
            out = self.output
            if out is None:
                self.output = [head.local]
            else:
                out.append(head.local)
            if head.on_done is not None:
                head.on_done()
        if not queue and self.phase == Phase.BUSY and not self.unsynced and self.syncs == 0:
            self.phase = Phase.READY

    def take_output(self) -> bytes:
        out = self.output
        if out is None:
            return b""
        self.output = None
        return b"".join(out)

    # -- the server sends ----------------------------------------------------------------
    def receive(self, t: int, status: bytes | None = None) -> int:
        """A backend message of type `t` arrived (for ReadyForQuery, `status` is its
        transaction status byte). Returns FORWARD, DROP or REPLACE (then see `replacement`);
        afterwards `output` may hold LOCAL answers due right after this message."""
        queue = self.queue
        # the common cases inline, each test one the interpreter specializes (an int compared
        # with an int, a str with a str; no dict call, no & unless the head is a flagged Sync)
        if t == _READY:
            if queue:
                # (the relay's reply walk has a copy of this case for a lone Query or Sync:
                # tests/odyssey_gevent/test_relay.py keeps the two in step)
                # the ReadyForQuery of a plain Query or Sync: popped at once (a deque's [0] is
                # not specialized: it costs about what the popleft does), put back if not
                head = queue.popleft()
                if head.__class__ is int and (head == _Q or head == _S or head & 0xFF == _S) \
                        and self.phase == _BUSY_PHASE:
                    self.syncs -= 1
                    self.replies += 1
                    self.tx_status = status or b"I"
                    if not queue:
                        if not self.syncs and not self.unsynced:
                            self.phase = _READY_PHASE
                    elif queue[0].__class__ is not int:
                        self._flush_local()
                    return FORWARD
                queue.appendleft(head)
            head = queue[0] if queue else None
        else:
            head = queue[0] if queue else None
            if head.__class__ is int and head == _POPS[t]:
                # ParseComplete/BindComplete/CloseComplete, and in exact mode the end of a
                # Describe or an Execute: the plain request at the head is answered
                queue.popleft()
                if queue and queue[0].__class__ is not int:
                    self._flush_local()
                return FORWARD
        hiding = head is not None and head.__class__ is not int and head.hide and head.type == _Q
        action = DROP if hiding else FORWARD
        if t == _READY:
            if head is not None and head.__class__ is not int and head.hide:
                action = DROP                  # a Sync or Query the pooler sent itself
            self._ready(status or b"I")
        elif t in COMPLETES:
            want = COMPLETES[t]
            if head is None or _type(head) != want:
                self.broken = f"{chr(t)} with no {chr(want)} outstanding"
                return FORWARD
            queue.popleft()
            if head.__class__ is not int:
                if head.on_done is not None:
                    head.on_done()
                if head.hide:
                    action = DROP
        elif t in _ENDS_EXECUTE or t in _ENDS_DESCRIBE:
            if head is not None and _type(head) == (_E if t in _ENDS_EXECUTE else _D) and \
                    (t != _EMPTY or head.__class__ is int or head.empty is None):
                queue.popleft()
                if head.__class__ is not int and head.on_done is not None:
                    head.on_done()
            if t == _EMPTY and head is not None and head.__class__ is not int and head.empty is not None:
                self.replacement = head.empty
                action = REPLACE
        elif t == _ERROR:
            action = self._error(head)
        elif t == _COPY_IN:
            self._copy_in()
        elif t == _COPY_OUT:
            self._go("copy_out_response")
        elif t == _COPY_BOTH:
            self._go("copy_both_response")
        elif t == _SERVER_COPY_DONE:
            self._go("server_copy_done")
        if queue and queue[0].__class__ is not int:
            self._flush_local()
        return action

    def receive_completions(self, types) -> int:
        """`receive` for the backend message types in `types` (ints), in order, for as long as
        each is the completion of the plain request at the head of the queue with a plain
        entry or nothing after it: receive's common case, where it pops the head, returns
        FORWARD and nothing becomes due (`output`). Returns how many it took; the caller
        tells the rest with `receive`, one by one (the relay's remembered reply layouts: one
        call for a reply's ParseComplete and BindComplete; the relay's reply walk has a copy
        of this loop: tests/odyssey_gevent/test_relay.py keeps the two in step)."""
        queue = self.queue
        n = 0
        for t in types:
            if not queue:
                break
            head = queue.popleft()
            if head.__class__ is not int or head != _POPS[t] or queue and queue[0].__class__ is not int:
                queue.appendleft(head)
                break
            n += 1
        return n

    def _ready(self, status: bytes) -> None:
        queue = self.queue
        if not queue or _type(queue[0]) not in _SYNC_POINTS:
            self.broken = "ReadyForQuery with no request outstanding" if not queue else \
                f"ReadyForQuery while {chr(_type(queue[0]))} is outstanding"
            return
        head = queue.popleft()
        self.syncs -= 1
        self.replies += 1
        self.tx_status = status
        if head.__class__ is not int:
            if head.failed:
                if head.on_fail is not None:
                    head.on_fail()
            elif head.on_done is not None:
                head.on_done()
        if self.syncs == 0 and not self.unsynced and not queue:
            self._go("ready")
        elif self.phase != Phase.SKIP:
            self.phase = Phase.BUSY

    def _error(self, head) -> int:
        action = FORWARD
        if head is not None and head.__class__ is not int:
            if head.error is not None:
                self.replacement = head.error
                action = REPLACE
            elif head.hide and head.type != _Q:
                action = FORWARD           # the client must learn why its request failed
        head_type = _type(head) if head is not None else None
        if head_type == _Q or head_type == _F:
            # a simple query or function call: its ReadyForQuery follows
            if head.__class__ is not int:
                head.failed = True
            self._go("error")
            return action
        # an extended-protocol error: the server skips to the next Sync
        queue = self.queue
        while queue and _type(queue[0]) != _S:
            entry = queue.popleft()
            if entry.__class__ is not int:
                entry.failed = True
                if entry.on_fail is not None:
                    entry.on_fail()
            elif entry & 0xFF in _SYNC_POINTS:   # an ignored Query/FunctionCall
                self.syncs -= 1
        if queue:
            self._go("error")
        else:
            self._go("error_unsynced")     # only a Sync ends the skip
        return action

    def _copy_in(self) -> None:
        """CopyInResponse: the Syncs sent since the COPY's Execute (before any CopyDone) are
        ignored by PostgreSQL; a CopyDone already sent means the COPY is over already.

        In exact mode the COPY's Execute is at the head of the queue and each entry knows
        what it needs; otherwise the counters say it for the latest Execute only (enough
        unless a client pipelines more Executes behind a COPY before the server answers)."""
        self.batch = None       # (entries are taken out of the middle, the queue replaced)
        queue = self.queue
        if self.exact and queue and queue[0].__class__ is int and queue[0] & 0xFF == _E:
            head = queue.popleft()
            while queue and queue[0].__class__ is int and queue[0] == _S | _AFTER_EXECUTE:
                queue.popleft()
                self.syncs -= 1
            queue.appendleft(head)
            if not head & _COPY_SENT:
                self._go("copy_in_response")
            self._exec_syncs = -1
            self._copy_ended = False
            return
        drop = self._exec_syncs if self._exec_syncs > 0 else 0
        if drop:
            queue = self.queue
            kept = deque()
            while drop and queue:
                entry = queue.popleft()
                if _type(entry) == _S:
                    self.syncs -= 1
                    drop -= 1
                else:
                    kept.append(entry)
            kept.extend(queue)
            self.queue = kept
        if not self._copy_ended:
            self._go("copy_in_response")
        self._exec_syncs = -1
        self._copy_ended = False
