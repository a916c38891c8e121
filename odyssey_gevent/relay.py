"""The relay fast path: client <-> server byte forwarding that reads only message headers
(mirrors Odyssey sources/relay.c and the request loop of sources/frontend.c).

Bytes are received with recv_into into a buffer and forwarded as memoryview slices in the same
chunks they arrived in. Per message the relay looks at the 5-byte header only, except for the
few messages whose payload it must understand, which are then held back until whole:

  client -> server: 'Q' simple query and 'S' Sync (each earns one ReadyForQuery: the server is
                    synchronized when replies == requests), 'F' function call (likewise),
                    'X' Terminate (not forwarded: the server stays pooled); extended-protocol
                    messages (P B D E C) leave the client "unsynced" until its Sync, and a
                    Sync that PostgreSQL ignores in COPY-in mode is not counted.
  server -> client: 'Z' ReadyForQuery (transaction status; the detach point), 'S' ParameterStatus
                    (kept on both client and server, as Odyssey does), CopyIn/Out/Both responses.

A body longer than the chunk is forwarded as it streams (`skip` counts what is still to come),
so large results and COPY never buffer whole messages. Buffers are borrowed from a per-thread
free list while a relay holds unfinished bytes and returned when it goes idle, so idle clients
cost no buffer.

Hooks for later features (prepared statements, stats) sit in `_client_message` and
`_server_message`, which are called only for the message types listed above.
"""
from __future__ import annotations

import struct
import threading

import machinarium
from machinarium import wait_any
from kiwi import error_codes
from odyssey_gevent.status import FrontendError, Status

BUF_SIZE = 32 * 1024
_LEN = struct.Struct("!I")
_unpack_len = _LEN.unpack_from

# client -> server message types
_C_QUERY, _C_SYNC, _C_FUNCTION, _C_TERMINATE, _C_EXECUTE, _C_COPY_DONE, _C_COPY_FAIL = b"QSFXEcf"
# every frontend message type valid after login
_C_VALID = bytearray(256)
for _t in b"BCDEFHPQSXcdfp":
    _C_VALID[_t] = 1
_C_VALID = bytes(_C_VALID)
_C_INTEREST = bytearray(256)
for _t in b"QSFXcf":
    _C_INTEREST[_t] = 1
for _t in b"PBDEC":            # extended-protocol messages: they need a Sync to finish
    _C_INTEREST[_t] = 2
_C_INTEREST = bytes(_C_INTEREST)

# server -> client message types
_S_READY, _S_PARAM, _S_COPY_IN, _S_COPY_OUT, _S_COPY_BOTH, _S_COPY_DONE = b"ZSGHWc"
_S_INTEREST = bytearray(256)
for _t in (_S_READY, _S_PARAM, _S_COPY_IN, _S_COPY_OUT, _S_COPY_BOTH, _S_COPY_DONE):
    _S_INTEREST[_t] = 1
_S_INTEREST = bytes(_S_INTEREST)
_S_WHOLE = bytearray(256)          # messages the relay must see whole
_S_WHOLE[_S_READY] = 1
_S_WHOLE[_S_PARAM] = 1
_S_WHOLE = bytes(_S_WHOLE)

MAX_CLIENT_MESSAGE = 256 * 1024 * 1024     # a declared length over this is a protocol violation

_local = threading.local()


def _borrow() -> bytearray:
    free = getattr(_local, "free", None)
    if free:
        return free.pop()
    return bytearray(BUF_SIZE)


def _give_back(buf: bytearray) -> None:
    free = getattr(_local, "free", None)
    if free is None:
        free = _local.free = []
    if len(free) < 256:
        free.append(buf)


class ClientGone(Exception):
    """Reading from or writing to the client failed."""


class ServerGone(Exception):
    """Reading from or writing to the server failed."""

    def __init__(self, status: Status, error: BaseException | str):
        super().__init__(str(error))
        self.status = status


class Relay:
    """The request loop of one client. `frontend` supplies attach()/detach()/idle_timeout()."""

    __slots__ = ("fe", "client", "c_buf", "c_len", "c_skip", "c_unsynced", "c_copy_in", "c_exec_syncs",
                 "c_copy_ended", "s_buf", "s_len", "s_skip", "s_ready", "mode_transaction", "mode_statement", "stats")

    def __init__(self, frontend, client):
        self.fe = frontend
        self.client = client
        self.c_buf = None       # client bytes held back (partial header), c_len of them
        self.c_len = 0
        self.c_skip = 0         # bytes of the current client message still to be forwarded
        self.c_unsynced = False  # extended-protocol messages forwarded since the last Sync
        self.c_copy_in = False  # the server is in COPY-in: it ignores Sync until CopyDone/CopyFail
        self.c_exec_syncs = -1  # Syncs forwarded since the last Execute (-1: last start was a Query)
        self.c_copy_ended = False  # CopyDone/CopyFail sent before the server asked for COPY data
        self.s_buf = None
        self.s_len = 0
        self.s_skip = 0
        self.s_ready = False    # a ReadyForQuery was relayed since the last detach check
        pool = client.rule.pool
        self.mode_transaction = pool == "transaction"
        self.mode_statement = pool == "statement"
        self.stats = client.route.stats

    # -- main loop ---------------------------------------------------------------------------
    def run(self) -> Status:
        client = self.client
        cio = client.io
        client_only = (cio,)
        try:
            while True:
                server = client.server
                if client.killed is not None:
                    return client.killed
                if server is None:
                    if not wait_any(client_only, self.fe.idle_timeout(None)):
                        status = self.fe.idle_expired(None)
                        if status is not None:
                            return status
                        continue
                    status = self._from_client()
                    if status is not None:
                        return status
                    continue
                timeout = self.fe.idle_timeout(server) if server.synchronized else None
                ready = wait_readable_any(cio, server.io, timeout)
                if ready == 0:
                    status = self.fe.idle_expired(server)
                    if status is not None:
                        return status
                    continue
                if ready & 2:
                    self._from_server(server)
                if ready & 1:
                    status = self._from_client()
                    if status is not None:
                        return status
        except ClientGone:
            return Status.ECLIENT_READ
        except ServerGone as e:
            self.fe.server_error = e
            return e.status
        finally:
            self._release_buffers()

    def _release_buffers(self) -> None:
        if self.c_buf is not None and self.c_len == 0:
            _give_back(self.c_buf)
            self.c_buf = None
        if self.s_buf is not None and self.s_len == 0:
            _give_back(self.s_buf)
            self.s_buf = None

    @property
    def server_clean(self) -> bool:
        """Nothing half-relayed in either direction (no partial message, no extended-protocol
        batch without its Sync): the server can be reset and reused."""
        return self.s_len == 0 and self.s_skip == 0 and self.c_skip == 0 and not self.c_unsynced

    @property
    def _client_at_boundary(self) -> bool:
        return self.c_skip == 0 and not self.c_unsynced and not self.c_copy_in

    # -- client -> server --------------------------------------------------------------------
    def _from_client(self) -> Status | None:
        buf = self.c_buf
        if buf is None:
            buf = self.c_buf = _borrow()
        start = self.c_len
        try:
            n = self.client.io.read_into(memoryview(buf)[start:], 0)
        except machinarium.TimedOut:
            return None
        except OSError as e:
            raise ClientGone(e) from None
        if n == 0:
            raise ClientGone("client closed the connection")
        end = start + n
        # scan the headers
        pos = self.c_skip
        syncs = 0
        terminate = -1
        if pos >= end:
            self.c_skip = pos - end
            pos = end
        else:
            self.c_skip = 0
            valid = _C_VALID
            interest = _C_INTEREST
            while pos + 5 <= end:
                t = buf[pos]
                length = _unpack_len(buf, pos + 1)[0]
                if not valid[t] or length < 4 or length > MAX_CLIENT_MESSAGE:
                    raise FrontendError(error_codes.PROTOCOL_VIOLATION,
                                        "unexpected message type from client or other protocol violation",
                                        severity="FATAL")
                kind = interest[t]
                if kind == 2:
                    self.c_unsynced = True
                    if t == _C_EXECUTE:
                        self.c_exec_syncs = 0
                        self.c_copy_ended = False
                elif kind:
                    if t == _C_SYNC:
                        if not self.c_copy_in:      # PostgreSQL ignores Sync in COPY-in mode
                            syncs += 1
                            self.c_unsynced = False
                            if self.c_exec_syncs >= 0 and not self.c_copy_ended:
                                self.c_exec_syncs += 1
                    elif t == _C_QUERY:
                        syncs += 1
                        self.c_exec_syncs = -1
                        self.c_copy_ended = False
                    elif t == _C_TERMINATE:
                        terminate = pos
                        break
                    elif t == _C_FUNCTION:
                        syncs += 1
                    elif self.c_copy_in:            # CopyDone / CopyFail end COPY-in
                        self.c_copy_in = False
                    else:                           # ... or end one the server has not started yet
                        self.c_copy_ended = True
                pos += 1 + length
                if pos >= end:
                    self.c_skip = pos - end
                    pos = end
                    break
        forward_end = terminate if terminate >= 0 else pos
        if forward_end > 0:
            server = self.client.server
            if server is None:
                server = self.fe.attach()
            server.sync_request += syncs
            self.stats.bytes_recv += forward_end
            try:
                server.io.write(memoryview(buf)[:forward_end])
            except OSError as e:
                raise ServerGone(Status.ESERVER_WRITE, e) from None
        if terminate >= 0:
            self.c_len = 0
            return Status.TERMINATE
        rest = end - pos
        if rest:
            buf[:rest] = buf[pos:end]
        self.c_len = rest
        if rest == 0:
            _give_back(buf)
            self.c_buf = None
        return None

    # -- server -> client --------------------------------------------------------------------
    def _from_server(self, server) -> None:
        buf = self.s_buf
        if buf is None:
            buf = self.s_buf = _borrow()
        start = self.s_len
        try:
            n = server.io.read_into(memoryview(buf)[start:], 0)
        except machinarium.TimedOut:
            return
        except OSError as e:
            raise ServerGone(Status.ESERVER_READ, e) from None
        if n == 0:
            raise ServerGone(Status.ESERVER_READ, "server closed the connection")
        end = start + n
        pos = self.s_skip
        if pos >= end:
            self.s_skip = pos - end
            pos = end
        else:
            self.s_skip = 0
            interest = _S_INTEREST
            while pos + 5 <= end:
                t = buf[pos]
                length = _unpack_len(buf, pos + 1)[0]
                if length < 4:
                    raise ServerGone(Status.ESERVER_READ, f"invalid message length {length} from server")
                msg_end = pos + 1 + length
                if interest[t]:
                    if _S_WHOLE[t] and msg_end > end:
                        if 1 + length > len(buf):
                            raise ServerGone(Status.ESERVER_READ, "server message too long")
                        break          # hold it back until whole
                    if t == _S_READY:
                        server.sync_reply += 1
                        if server.sync_reply > server.sync_request:
                            self._miscounted(server)
                        server.tx_status = bytes(buf[msg_end - 1:msg_end])
                        server.copy_mode = False
                        self.stats.count_query += 1
                        if server.tx_status == b"I":
                            self.stats.count_tx += 1
                        self.s_ready = True
                    elif t == _S_PARAM:
                        self._parameter_status(server, buf, pos + 5, msg_end)
                    elif t == _S_COPY_DONE:
                        server.copy_mode = False
                    else:
                        server.copy_mode = True
                        if t == _S_COPY_IN:
                            self._copy_in_started(server)
                pos = msg_end
                if pos >= end:
                    self.s_skip = pos - end
                    pos = end
                    break
        rest = end - pos
        self.s_len = rest           # before writing: a failed write must leave the state honest
        if pos > 0:
            self.stats.bytes_sent += pos
            try:
                self.client.io.write(memoryview(buf)[:pos])
            except OSError as e:
                raise ClientGone(e) from None
        if rest:
            buf[:rest] = buf[pos:end]
        if rest == 0:
            _give_back(buf)
            self.s_buf = None
        # detach only at a message boundary (a message after the 'Z' may still be arriving)
        if self.s_ready and rest == 0 and self.s_skip == 0:
            self.s_ready = False
            if not server.synchronized or not self._client_at_boundary:
                return
            if self.mode_transaction:
                if server.tx_status == b"I":
                    self.fe.detach()
            elif self.mode_statement:
                self.fe.detach()

    def _copy_in_started(self, server) -> None:
        """CopyInResponse: PostgreSQL now ignores Sync until CopyDone/CopyFail, including the
        Syncs already sent between the COPY's Execute and the client's CopyDone (libpq sends
        P B E S, then d... c S; a client may also send P B E S d c S in one write)."""
        if self.c_exec_syncs > 0:
            server.sync_request -= self.c_exec_syncs
        self.c_copy_in = not self.c_copy_ended    # the data may all be on its way already
        self.c_exec_syncs = -1
        self.c_copy_ended = False

    def _miscounted(self, server) -> None:
        """More ReadyForQuery than requests: our counting of this client's protocol went wrong.
        The server must never serve anyone else: keep it to this client and close it at the end."""
        if not server.broken:
            server.broken = True
            self.fe.logger.error("relay", self.client, server,
                                 "ReadyForQuery count exceeds requests (%d > %d): the server will be closed",
                                 server.sync_reply, server.sync_request)

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
        client.deploy_list = None


# -- waiting for either side ------------------------------------------------------------------
def wait_readable_any(cio, sio, timeout_ms) -> int:
    """Wait until the client (bit 1) or the server (bit 2) is readable; 0 on timeout."""
    return wait_any((cio, sio), timeout_ms)
