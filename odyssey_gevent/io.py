"""Reading whole protocol messages from a machinarium Io, outside the relay fast path
(mirrors Odyssey sources/io.c: od_read, od_write).

Used for the startup phase, authentication, backend login and the reset/deploy queries. The
relay (relay.py) never calls these: it forwards raw bytes and reads only message headers.
"""
from __future__ import annotations

from kiwi import be_read
from kiwi.framer import BE_LIMITS, FE_LIMITS, Limits, read_header

__all__ = ["read_message", "read_startup", "BE_LIMITS", "FE_LIMITS"]


def read_message(io, timeout_ms: int | None, limits: Limits = BE_LIMITS) -> tuple[int, bytes]:
    """Read one typed message: (type byte as int, payload). `limits` is kiwi's per-type table
    for the side that sends (BE_LIMITS for PostgreSQL, FE_LIMITS for a client); a length below 4
    or over its type's limit raises ProtocolError before the body is read. Also raises
    machinarium.TimedOut, or an OSError/ConnectionClosed."""
    header = io.read(5, timeout_ms)
    mtype, size = read_header(header, 0, limits)
    payload = io.read(size, timeout_ms) if size else b""
    return mtype, payload


def read_startup(io, timeout_ms: int | None, head: bytes | None = None):
    """Read the untyped first packet: StartupMessage, SSLRequest, GSSENCRequest or CancelRequest.
    `head`: its first bytes when the caller already read some (b"": the read found EOF), never
    more than the packet."""
    if head is None:
        head = io.read(4, timeout_ms)
    elif len(head) < 4:
        head += io.read(4 - len(head), timeout_ms)
    declared = be_read.startup_length(head)     # the length word checked before the body is read
    rest = declared - len(head)
    if rest > 0:
        head += io.read(rest, timeout_ms)
    return be_read.read_startup(head, declared=declared)[0]
