"""Reading whole protocol messages from a machinarium Io, outside the relay fast path
(mirrors Odyssey sources/io.c: od_read, od_write).

Used for the startup phase, authentication, backend login and the reset/deploy queries. The
relay (relay.py) never calls these: it forwards raw bytes and reads only message headers.
"""
from __future__ import annotations

import struct

from kiwi import be_read
from kiwi.errors import ProtocolError

_HEADER = struct.Struct("!BI")

# The largest message we read whole here; bigger ones are a protocol violation.
MAX_SERVICE_MESSAGE = 64 * 1024 * 1024
MAX_AUTH_MESSAGE = 64 * 1024


def read_message(io, timeout_ms: int | None, limit: int = MAX_SERVICE_MESSAGE) -> tuple[int, bytes]:
    """Read one typed message: (type byte as int, payload). Raises ProtocolError for a length
    below 4 or over `limit`, machinarium.TimedOut, or an OSError/ConnectionClosed."""
    header = io.read(5, timeout_ms)
    mtype, length = _HEADER.unpack(header)
    if length < 4 or length - 4 > limit:
        raise ProtocolError(f"invalid message length {length} for message type {chr(mtype)!r}")
    payload = io.read(length - 4, timeout_ms) if length > 4 else b""
    return mtype, payload


def read_startup(io, timeout_ms: int | None):
    """Read the untyped first packet: StartupMessage, SSLRequest, GSSENCRequest or CancelRequest."""
    head = io.read(4, timeout_ms)
    buf = bytearray(head)
    while True:
        msg, consumed = be_read.read_startup(buf)
        if msg is not None:
            return msg
        need = be_read.startup_need(buf)
        buf += io.read(need, timeout_ms)
