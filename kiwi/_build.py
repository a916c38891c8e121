"""kiwi._build: helpers shared by the builders (internal)."""
from __future__ import annotations

import struct

HEADER_B = struct.Struct("!BI")
I16 = struct.Struct("!h")
I32 = struct.Struct("!i")
U32 = struct.Struct("!I")


def message(type_byte: int, payload: bytes = b"") -> bytes:
    return HEADER_B.pack(type_byte, len(payload) + 4) + payload


def to_bytes(value, what: str = "value") -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"{what} must be str or bytes, not {type(value).__name__}")


def cstr(value, what: str = "string") -> bytes:
    raw = to_bytes(value, what)
    if 0 in raw:        # an int: `b"\0" in raw` first fails (and formats) a TypeError inside
        raise ValueError(f"{what} must not contain NUL bytes")
    return raw + b"\0"


def kind_byte(kind) -> bytes:
    raw = to_bytes(kind, "kind")
    if raw not in (b"S", b"P"):
        raise ValueError("kind must be 'S' (statement) or 'P' (portal)")
    return raw
