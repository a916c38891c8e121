"""kiwi.framer: split a byte stream into typed messages (Odyssey kiwi io.h, kiwi_validate_header).

A typed message is ``type byte, int32 length, payload`` where the length counts itself and
the payload but not the type byte. The read contract:

* ``read_header`` looks at the 5 header bytes only and returns ``(type_byte, payload_len)``
  or ``None`` when fewer than 5 bytes are there. The relay's fast path does the same check
  inline against ``FE_RELAY_LIMITS`` (one chained comparison per message) and forwards raw
  bytes; it reads payloads only of the few messages it must understand.
* ``read_message`` returns ``(type_byte, payload memoryview, end)`` for a whole message, or
  ``None`` ("need more"), never a partial message.
* Both check the declared length against the per-type limit *before* any body is buffered:
  a declared length below 4, a payload over the limit or a type byte below 0x20 (as Odyssey)
  raises ``ProtocolError`` at once, so a hostile length never causes a large allocation.

Limits are in payload bytes (declared length minus 4), as PostgreSQL's ``pq_getmessage
(buf, maxlen)``. ``FE_LIMITS`` bound what frontends send (PostgreSQL's ``SocketBackend``
choices; ``p`` gets PG_MAX_AUTH_TOKEN_LENGTH), ``BE_LIMITS`` what PostgreSQL sends (libpq's
30000-byte rule for short types), ``FE_RELAY_LIMITS`` what a logged-in client may send (every
other type byte forbidden). ``fe_limits()``/``be_limits()`` build configured tables. These are
the only message limits in the project: the relay and every whole-message reader use them.
"""
from __future__ import annotations

from typing import Iterator, Mapping

from kiwi.errors import CLIENT, SERVER, ProtocolError
from kiwi.header import BE, FE, HEADER_B, be_name, fe_name

__all__ = [
    "MAX_SMALL_MESSAGE", "MAX_LARGE_MESSAGE", "MAX_AUTH_MESSAGE", "MAX_BE_SHORT_MESSAGE",
    "MAX_TINY_MESSAGE", "MAX_BACKEND_KEY_DATA", "Limits", "fe_limits", "be_limits",
    "fe_relay_limits", "FE_LIMITS", "FE_RELAY_LIMITS", "BE_LIMITS", "DEFAULT_LIMITS", "read_header", "message_need",
    "read_message", "Framer",
]

MAX_SMALL_MESSAGE = 10000                # PQ_SMALL_MESSAGE_LIMIT
MAX_LARGE_MESSAGE = 0x3FFFFFFF - 1       # PQ_LARGE_MESSAGE_LIMIT (MaxAllocSize - 1)
MAX_AUTH_MESSAGE = 65535                 # PG_MAX_AUTH_TOKEN_LENGTH (password / SASL / 'R')
MAX_BE_SHORT_MESSAGE = 30000             # libpq: longer non-"long" backend messages are corrupt
MAX_TINY_MESSAGE = 256                   # ReadyForQuery, ParseComplete and other near-empty ones
MAX_BACKEND_KEY_DATA = 4 + 256           # pid + the longest cancel key of protocol 3.2
_FORBIDDEN = -1
_HEADER = HEADER_B


class Limits(tuple):
    """256 payload limits indexed by type byte (-1 = type byte not allowed) plus the side
    that sent the messages (used for the errors). Build with ``fe_limits``/``be_limits``."""

    side: str
    name: str

    def __new__(cls, table, side: str = CLIENT, name: str = "messages"):
        self = super().__new__(cls, table)
        if len(self) != 256:
            raise ValueError("Limits needs 256 entries")
        self.side = side
        self.name = name
        return self

    def __repr__(self) -> str:
        return f"<Limits {self.name} side={self.side}>"

    def __reduce__(self):
        return (Limits, (tuple(self), self.side, self.name))


def _build(default: int, overrides: Mapping[int, int], side: str, name: str) -> Limits:
    table = [_FORBIDDEN] * 0x20 + [default] * (256 - 0x20)
    for t, limit in overrides.items():
        table[int(t)] = limit
    return Limits(table, side, name)


def fe_limits(large: int = MAX_LARGE_MESSAGE, small: int = MAX_SMALL_MESSAGE,
              auth: int = MAX_AUTH_MESSAGE) -> Limits:
    """Limits for frontend messages: Query/Parse/Bind/FunctionCall/CopyData get ``large``,
    PasswordMessage/SASL get ``auth``, all other types (Sync, Terminate, ...) ``small``."""
    over = {t: large for t in (FE.QUERY, FE.PARSE, FE.BIND, FE.FUNCTION_CALL, FE.COPY_DATA)}
    over[FE.PASSWORD_MESSAGE] = auth
    return _build(small, over, CLIENT, "frontend")


def be_limits(large: int = MAX_LARGE_MESSAGE, short: int = MAX_BE_SHORT_MESSAGE,
              auth: int = MAX_AUTH_MESSAGE) -> Limits:
    """Limits for backend messages: DataRow/RowDescription/CopyData/Error/Notice/Notification/
    FunctionCallResponse/ParameterDescription get ``large``; Authentication ``auth``;
    ReadyForQuery, BackendKeyData and the empty completions tiny limits; others ``short``."""
    over = {t: large for t in (BE.DATA_ROW, BE.ROW_DESCRIPTION, BE.COPY_DATA, BE.ERROR_RESPONSE,
                               BE.NOTICE_RESPONSE, BE.NOTIFICATION_RESPONSE,
                               BE.FUNCTION_CALL_RESPONSE, BE.PARAMETER_DESCRIPTION)}
    over[BE.AUTHENTICATION] = auth
    over[BE.BACKEND_KEY_DATA] = MAX_BACKEND_KEY_DATA
    for t in (BE.READY_FOR_QUERY, BE.PARSE_COMPLETE, BE.BIND_COMPLETE, BE.CLOSE_COMPLETE,
              BE.NO_DATA, BE.PORTAL_SUSPENDED, BE.EMPTY_QUERY_RESPONSE, BE.COPY_DONE):
        over[t] = MAX_TINY_MESSAGE
    return _build(short, over, SERVER, "backend")


def fe_relay_limits(large: int = MAX_LARGE_MESSAGE, small: int = MAX_SMALL_MESSAGE) -> Limits:
    """``fe_limits`` narrowed to the messages a logged-in client may send (PostgreSQL's
    SocketBackend: Bind, Close, Describe, Execute, FunctionCall, Flush, Parse, Query, Sync,
    Terminate and the COPY messages); any other type byte is forbidden."""
    full = fe_limits(large, small)
    allowed = {int(t) for t in (FE.BIND, FE.CLOSE, FE.DESCRIBE, FE.EXECUTE, FE.FUNCTION_CALL, FE.FLUSH,
                                FE.PARSE, FE.QUERY, FE.SYNC, FE.TERMINATE, FE.COPY_DATA, FE.COPY_DONE,
                                FE.COPY_FAIL)}
    table = [full[t] if t in allowed else _FORBIDDEN for t in range(256)]
    return Limits(table, CLIENT, "frontend")


FE_LIMITS = fe_limits()
FE_RELAY_LIMITS = fe_relay_limits()
BE_LIMITS = be_limits()
# Used when no limits are given: any type >= 0x20 up to the large limit.
DEFAULT_LIMITS = _build(MAX_LARGE_MESSAGE, {}, CLIENT, "messages")


def _check(type_byte: int, declared: int, limits: Limits) -> int:
    limit = limits[type_byte]
    size = declared - 4
    if 0 <= size <= limit:
        return size
    namer = be_name if limits.side == SERVER else fe_name
    if limit < 0:
        raise ProtocolError(f"invalid {limits.name} message type 0x{type_byte:02x}",
                            side=limits.side)
    if size < 0:
        raise ProtocolError(f"invalid message length {declared} for {namer(type_byte)}",
                            side=limits.side)
    raise ProtocolError(f"{namer(type_byte)} message too long: {size} bytes, limit {limit}",
                        side=limits.side)


def read_header(buf, offset: int = 0, limits: Limits | None = None):
    """``(type_byte, payload_len)`` from the 5 header bytes at ``offset``, or ``None`` when
    fewer than 5 are available. Raises ``ProtocolError`` on a bad type or length.
    The relay's hot path uses only this."""
    if len(buf) - offset < 5:
        return None
    type_byte, declared = _HEADER.unpack_from(buf, offset)
    return type_byte, _check(type_byte, declared, limits or DEFAULT_LIMITS)


def message_need(buf, offset: int = 0, limits: Limits | None = None) -> int:
    """How many more bytes the message at ``offset`` needs (0 = it is whole).
    With fewer than 5 bytes it is the count missing from the header."""
    avail = len(buf) - offset
    hdr = read_header(buf, offset, limits)
    if hdr is None:
        return 5 - avail
    return max(0, 5 + hdr[1] - avail)


def read_message(buf, offset: int = 0, limits: Limits | None = None):
    """``(type_byte, payload, end)`` for the whole message at ``buf[offset:]`` or ``None``.

    ``payload`` is a memoryview into ``buf`` (no copy; release it before resizing a
    bytearray), ``end`` the offset just past the message; bytes after ``end`` are not
    looked at."""
    hdr = read_header(buf, offset, limits)
    if hdr is None:
        return None
    type_byte, size = hdr
    start = offset + 5
    end = start + size
    if len(buf) < end:
        return None
    return type_byte, memoryview(buf)[start:end], end


class Framer:
    """Incremental framer over one direction of a connection.

    ``feed(data)`` appends bytes; iterating yields ``(type_byte, payload bytes)`` for every
    whole message buffered; ``next()`` gives one or ``None``; ``next_raw()`` gives a whole
    message's raw bytes (header included) for forwarding; ``need()`` is how many bytes the
    next message still lacks. The untyped first packet is read with ``read_startup()``
    (and ``need_startup()``), which may be called again after an SSLRequest/GSSENCRequest.
    """

    __slots__ = ("_buf", "_pos", "limits")

    _COMPACT = 64 * 1024

    def __init__(self, limits: Limits | None = None) -> None:
        self._buf = bytearray()
        self._pos = 0
        self.limits = limits or DEFAULT_LIMITS

    def feed(self, data) -> None:
        if self._pos and (self._pos >= self._COMPACT or self._pos * 2 >= len(self._buf)):
            del self._buf[:self._pos]
            self._pos = 0
        self._buf += data

    def __len__(self) -> int:
        """Bytes buffered and not yet returned."""
        return len(self._buf) - self._pos

    pending = __len__

    def need(self) -> int:
        return message_need(self._buf, self._pos, self.limits)

    def _take(self, start: int, end: int) -> bytes:
        with memoryview(self._buf) as mv:
            data = mv[start:end].tobytes()
        self._pos = end
        return data

    def next(self):
        hdr = read_header(self._buf, self._pos, self.limits)
        if hdr is None:
            return None
        end = self._pos + 5 + hdr[1]
        if len(self._buf) < end:
            return None
        return hdr[0], self._take(self._pos + 5, end)

    def next_raw(self) -> bytes | None:
        hdr = read_header(self._buf, self._pos, self.limits)
        if hdr is None:
            return None
        end = self._pos + 5 + hdr[1]
        if len(self._buf) < end:
            return None
        return self._take(self._pos, end)

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        while True:
            msg = self.next()
            if msg is None:
                return
            yield msg

    def read_startup(self):
        """The first (untyped) packet as ``kiwi.be_read.read_startup`` parses it, or ``None``."""
        from kiwi.be_read import read_startup
        msg, used = read_startup(self._buf, self._pos)
        self._pos += used
        return msg

    def need_startup(self) -> int:
        from kiwi.be_read import startup_need
        return startup_need(self._buf, self._pos)

    def take_all(self) -> bytes:
        """Every buffered byte not yet returned (e.g. to hand a stream over, or to detect
        bytes sent after an SSLRequest, which must abort the connection: CVE-2021-23214)."""
        return self._take(self._pos, len(self._buf))
