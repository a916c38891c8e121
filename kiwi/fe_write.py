"""kiwi.fe_write: what the pooler, acting as a PostgreSQL client, sends to PostgreSQL
(Odyssey kiwi fe_write.h). Every builder returns the whole message as ``bytes``.

Strings may be ``str`` (UTF-8; surrogate-escaped bytes from kiwi's readers round-trip) or
``bytes``. A NUL inside a string field is a ``ValueError``.
"""
from __future__ import annotations

import struct
from typing import Mapping, Sequence

from kiwi._build import I16, I32, U32, cstr, kind_byte, message, to_bytes
from kiwi.header import (CANCEL_REQUEST_CODE, FE, GSSENC_REQUEST_CODE, SSL_REQUEST_CODE,
                         protocol_code)

__all__ = [
    "startup_message", "ssl_request", "gssenc_request", "cancel_request", "password_message",
    "sasl_initial_response", "sasl_response", "query", "parse", "bind", "describe", "execute",
    "sync", "flush", "close", "terminate", "copy_data", "copy_done", "copy_fail",
]

_CODE = struct.Struct("!II")
_CANCEL = struct.Struct("!IIII")
_EXECUTE_TAIL = struct.Struct("!i")


def startup_message(params: Mapping[str, str], major: int = 3, minor: int = 0) -> bytes:
    parts = []
    for name, value in params.items():
        if not name:
            raise ValueError("a startup parameter name must not be empty")
        parts.append(cstr(name, "parameter name") + cstr(value, "parameter value"))
    body = b"".join(parts) + b"\0"
    return _CODE.pack(8 + len(body), protocol_code(major, minor)) + body


def ssl_request() -> bytes:
    return _CODE.pack(8, SSL_REQUEST_CODE)


def gssenc_request() -> bytes:
    return _CODE.pack(8, GSSENC_REQUEST_CODE)


def cancel_request(pid: int, key: int) -> bytes:
    return _CANCEL.pack(16, CANCEL_REQUEST_CODE, pid & 0xFFFFFFFF, key & 0xFFFFFFFF)


def password_message(data) -> bytes:
    """Cleartext or md5 PasswordMessage: the string and its NUL terminator. ``data`` may
    already end with that one NUL (it is not doubled); any other NUL is a ValueError."""
    raw = to_bytes(data, "password")
    if raw.endswith(b"\0"):
        raw = raw[:-1]
    return message(FE.PASSWORD_MESSAGE, cstr(raw, "password"))


def sasl_initial_response(mechanism, data) -> bytes:
    """``data=None`` sends length -1 (no initial response)."""
    if data is None:
        return message(FE.PASSWORD_MESSAGE, cstr(mechanism, "mechanism") + I32.pack(-1))
    raw = to_bytes(data)
    return message(FE.PASSWORD_MESSAGE, cstr(mechanism, "mechanism") + I32.pack(len(raw)) + raw)


def sasl_response(data) -> bytes:
    return message(FE.PASSWORD_MESSAGE, to_bytes(data))


def query(sql) -> bytes:
    return message(FE.QUERY, cstr(sql, "query"))


def parse(name, query, param_oids: Sequence[int] = ()) -> bytes:
    return message(FE.PARSE, cstr(name, "statement name") + cstr(query, "query")
                   + I16.pack(len(param_oids)) + b"".join(U32.pack(o) for o in param_oids))


def bind(portal="", statement="", params: Sequence = (), param_formats: Sequence[int] = (),
         result_formats: Sequence[int] = ()) -> bytes:
    """params: bytes/str values or None for NULL."""
    out = [cstr(portal, "portal name"), cstr(statement, "statement name"),
           I16.pack(len(param_formats))]
    out.extend(I16.pack(f) for f in param_formats)
    out.append(I16.pack(len(params)))
    for p in params:
        if p is None:
            out.append(I32.pack(-1))
        else:
            raw = to_bytes(p, "parameter")
            out.append(I32.pack(len(raw)))
            out.append(raw)
    out.append(I16.pack(len(result_formats)))
    out.extend(I16.pack(f) for f in result_formats)
    return message(FE.BIND, b"".join(out))


def describe(kind, name="") -> bytes:
    """kind: "S" (prepared statement) or "P" (portal)."""
    return message(FE.DESCRIBE, kind_byte(kind) + cstr(name, "name"))


def execute(portal="", max_rows: int = 0) -> bytes:
    return message(FE.EXECUTE, cstr(portal, "portal name") + _EXECUTE_TAIL.pack(max_rows))


_SYNC = message(FE.SYNC)
_FLUSH = message(FE.FLUSH)
_TERMINATE = message(FE.TERMINATE)
_COPY_DONE = message(FE.COPY_DONE)


def sync() -> bytes:
    return _SYNC


def flush() -> bytes:
    return _FLUSH


def close(kind, name="") -> bytes:
    """kind: "S" (prepared statement) or "P" (portal)."""
    return message(FE.CLOSE, kind_byte(kind) + cstr(name, "name"))


def terminate() -> bytes:
    return _TERMINATE


def copy_data(data) -> bytes:
    return message(FE.COPY_DATA, to_bytes(data))


def copy_done() -> bytes:
    return _COPY_DONE


def copy_fail(reason) -> bytes:
    return message(FE.COPY_FAIL, cstr(reason, "reason"))
