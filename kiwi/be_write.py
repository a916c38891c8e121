"""kiwi.be_write: what the pooler, acting as a PostgreSQL server, sends to clients
(Odyssey kiwi be_write.h). Every builder returns the whole message as ``bytes``.

Strings may be ``str`` (encoded as UTF-8) or ``bytes``; a NUL inside a string field is a
``ValueError`` (it would corrupt the framing).
"""
from __future__ import annotations

import struct
from typing import Iterable, Sequence

from kiwi._build import I16, I32, cstr, message, to_bytes
from kiwi.header import BE

__all__ = [
    "AUTH_OK", "AUTH_CLEARTEXT_PASSWORD", "AUTH_MD5_PASSWORD", "AUTH_SASL",
    "AUTH_SASL_CONTINUE", "AUTH_SASL_FINAL", "ERROR_FIELDS", "auth_ok", "auth_cleartext",
    "auth_md5", "auth_sasl", "auth_sasl_continue", "auth_sasl_final", "parameter_status",
    "backend_key_data", "ready_for_query", "error_response", "notice_response",
    "row_description", "data_row", "command_complete", "empty_query_response",
    "negotiate_protocol_version", "parse_complete", "bind_complete", "close_complete",
    "no_data", "portal_suspended", "TYPLEN",
]

AUTH_OK = 0
AUTH_CLEARTEXT_PASSWORD = 3
AUTH_MD5_PASSWORD = 5
AUTH_SASL = 10
AUTH_SASL_CONTINUE = 11
AUTH_SASL_FINAL = 12

_R = BE.AUTHENTICATION.value
# the type bytes as plain ints: loading an IntEnum member (BE.X) costs about 800 instructions
# in 3.11 (a class attribute behind a metaclass is not specialized), more than some builders
_S = BE.PARAMETER_STATUS.value
_K = BE.BACKEND_KEY_DATA.value
_Z = BE.READY_FOR_QUERY.value
_E = BE.ERROR_RESPONSE.value
_N = BE.NOTICE_RESPONSE.value
_C = BE.COMMAND_COMPLETE.value
_D = BE.DATA_ROW.value
_T = BE.ROW_DESCRIPTION.value
_AUTH_CODE = struct.Struct("!BIi")
_KEY = struct.Struct("!BIII")
_RFQ = struct.Struct("!BIc")
_COLUMN = struct.Struct("!IhIhih")
_NPV = struct.Struct("!ii")

# ErrorResponse/NoticeResponse fields in the order PostgreSQL sends them, with the
# keyword names error_response() accepts (the one-letter codes are accepted too).
ERROR_FIELDS: dict[str, str] = {
    "severity": "S", "severity_nonlocalized": "V", "sqlstate": "C", "message": "M",
    "detail": "D", "hint": "H", "position": "P", "internal_position": "p",
    "internal_query": "q", "where": "W", "schema": "s", "table": "t", "column": "c",
    "data_type": "d", "constraint": "n", "file": "F", "line": "L", "routine": "R",
}
_FIELD_ORDER = "SVCMDHPpqWstcdnFLR"


def _auth(code: int, data: bytes = b"") -> bytes:
    return _AUTH_CODE.pack(_R, 8 + len(data), code) + data


def auth_ok() -> bytes:
    return _auth(AUTH_OK)


def auth_cleartext() -> bytes:
    return _auth(AUTH_CLEARTEXT_PASSWORD)


def auth_md5(salt4: bytes) -> bytes:
    if len(salt4) != 4:
        raise ValueError("the md5 salt is 4 bytes")
    return _auth(AUTH_MD5_PASSWORD, bytes(salt4))


def auth_sasl(mechanisms: Iterable[str] = ("SCRAM-SHA-256",)) -> bytes:
    return _auth(AUTH_SASL, b"".join(cstr(m, "mechanism") for m in mechanisms) + b"\0")


def auth_sasl_continue(data) -> bytes:
    return _auth(AUTH_SASL_CONTINUE, to_bytes(data))


def auth_sasl_final(data) -> bytes:
    return _auth(AUTH_SASL_FINAL, to_bytes(data))


def parameter_status(name, value) -> bytes:
    return message(_S, cstr(name, "name") + cstr(value, "value"))


def backend_key_data(pid: int, key: int) -> bytes:
    """pid and key as unsigned 32-bit (negative ints are taken modulo 2**32)."""
    return _KEY.pack(_K, 12, pid & 0xFFFFFFFF, key & 0xFFFFFFFF)


def ready_for_query(status=b"I") -> bytes:
    """status: b"I" idle, b"T" in a transaction, b"E" in a failed transaction."""
    raw = to_bytes(status, "status")
    if raw not in (b"I", b"T", b"E"):
        raise ValueError("ReadyForQuery status must be I, T or E")
    return _RFQ.pack(_Z, 5, raw)


def _fields(severity, sqlstate, message_text, detail, hint, fields) -> bytes:
    values: dict[str, object] = {"S": severity, "V": severity, "C": sqlstate,
                                 "M": message_text, "D": detail, "H": hint}
    for key, value in fields.items():
        code = ERROR_FIELDS.get(key, key)
        if len(code) != 1 or code not in _FIELD_ORDER:
            raise TypeError(f"unknown error field {key!r}")
        values[code] = value
    out = []
    for code in _FIELD_ORDER:
        value = values.get(code)
        if value is None:
            continue
        if isinstance(value, int):
            value = str(value)
        out.append(code.encode() + cstr(value, f"error field {code}"))
    out.append(b"\0")
    return b"".join(out)


def error_response(severity, sqlstate, message, detail=None, hint=None, **fields) -> bytes:
    """ErrorResponse with S and V = severity, C, M, and D/H when given. ``fields`` adds any
    other field by keyword name (``position``, ``where``, ``routine``, ... see
    ``ERROR_FIELDS``) or one-letter code (``P=5``); ``V=None`` omits V."""
    return _message_fields(_E, severity, sqlstate, message, detail, hint, fields)


def notice_response(severity, sqlstate, message, detail=None, hint=None, **fields) -> bytes:
    """NoticeResponse; same fields as ``error_response``."""
    return _message_fields(_N, severity, sqlstate, message, detail, hint, fields)


def _message_fields(t, severity, sqlstate, message_text, detail, hint, fields) -> bytes:
    if len(sqlstate) != 5:
        raise ValueError(f"SQLSTATE must be 5 characters: {sqlstate!r}")
    return message(t, _fields(severity, sqlstate, message_text, detail, hint, fields))


# typlen of common types, so RowDescription matches what PostgreSQL itself sends.
TYPLEN = {16: 1, 18: 1, 19: 64, 20: 8, 21: 2, 23: 4, 26: 4, 28: 4, 700: 4, 701: 8,
          1082: 4, 1083: 8, 1114: 8, 1184: 8, 2950: 16}


def row_description(columns: Sequence) -> bytes:
    """columns: ``(name, type_oid)`` or the full ``(name, type_oid, table_oid, attnum,
    typlen, typmod, format)``. Defaults: table 0, attnum 0, typlen from ``TYPLEN``
    (else -1), typmod -1, text format."""
    out = [I16.pack(len(columns))]
    for col in columns:
        name, type_oid, *rest = col
        table_oid, attnum, typlen, typmod, fmt = (
            list(rest) + [0, 0, TYPLEN.get(type_oid, -1), -1, 0][len(rest):])
        out.append(cstr(name, "column name"))
        out.append(_COLUMN.pack(table_oid, attnum, type_oid, typlen, typmod, fmt))
    return message(_T, b"".join(out))


def data_row(values: Sequence) -> bytes:
    """values: bytes, str (UTF-8), int/float (their text form) or None for NULL."""
    out = [I16.pack(len(values))]
    for v in values:
        if v is None:
            out.append(I32.pack(-1))
            continue
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            v = str(v)
        raw = to_bytes(v, "column value")
        out.append(I32.pack(len(raw)))
        out.append(raw)
    return message(_D, b"".join(out))


def command_complete(tag) -> bytes:
    return message(_C, cstr(tag, "tag"))


def empty_query_response() -> bytes:
    return message(BE.EMPTY_QUERY_RESPONSE)


def negotiate_protocol_version(newest_minor: int, unrecognized_options: Sequence = ()) -> bytes:
    payload = _NPV.pack(newest_minor, len(unrecognized_options))
    payload += b"".join(cstr(o, "option") for o in unrecognized_options)
    return message(BE.NEGOTIATE_PROTOCOL_VERSION, payload)


def parse_complete() -> bytes:
    return message(BE.PARSE_COMPLETE)


def bind_complete() -> bytes:
    return message(BE.BIND_COMPLETE)


def close_complete() -> bytes:
    return message(BE.CLOSE_COMPLETE)


def no_data() -> bytes:
    return message(BE.NO_DATA)


def portal_suspended() -> bytes:
    return message(BE.PORTAL_SUSPENDED)
