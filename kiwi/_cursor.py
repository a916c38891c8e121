"""kiwi._cursor: bounds-checked reading of one message payload (internal).

Every payload reader goes through ``Cursor`` so that truncated or garbled payloads become
``ProtocolError`` and never IndexError, struct.error or UnicodeDecodeError.
"""
from __future__ import annotations

import struct

from kiwi.errors import CLIENT, ProtocolError

_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")
_U32 = struct.Struct("!I")


def decode_strict(raw: bytes, what: str, side: str) -> str:
    """UTF-8 or ProtocolError (startup packet, SASL mechanism names)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(f"{what}: invalid UTF-8", side=side) from None


def decode_lossless(raw: bytes) -> str:
    """UTF-8 where possible, other bytes kept as surrogates (``surrogateescape``).

    Used for SQL text, names and server messages, which arrive in client_encoding and need
    not be UTF-8; ``s.encode("utf-8", "surrogateescape")`` gives the original bytes back.
    """
    return raw.decode("utf-8", "surrogateescape")


class Cursor:
    __slots__ = ("data", "pos", "what", "side")

    def __init__(self, payload, what: str, side: str = CLIENT) -> None:
        self.data = bytes(payload)
        self.pos = 0
        self.what = what
        self.side = side

    def error(self, why: str) -> ProtocolError:
        return ProtocolError(f"invalid {self.what} message: {why}", side=self.side)

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def cstring(self) -> bytes:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise self.error("missing string terminator")
        raw = self.data[self.pos:end]
        self.pos = end + 1
        return raw

    def text(self) -> str:
        return decode_lossless(self.cstring())

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise self.error("truncated")
        raw = self.data[self.pos:self.pos + n]
        self.pos += n
        return raw

    def byte(self) -> bytes:
        return self.take(1)

    def int16(self) -> int:
        return _I16.unpack(self.take(2))[0]

    def int32(self) -> int:
        return _I32.unpack(self.take(4))[0]

    def uint32(self) -> int:
        return _U32.unpack(self.take(4))[0]

    def count16(self) -> int:
        n = self.int16()
        if n < 0:
            raise self.error("negative count")
        return n

    def rest(self) -> bytes:
        raw = self.data[self.pos:]
        self.pos = len(self.data)
        return raw

    def done(self) -> None:
        if self.pos != len(self.data):
            raise self.error("unexpected trailing bytes")
