"""kiwi.fe_read: what the pooler, acting as a PostgreSQL client, reads from PostgreSQL
(Odyssey kiwi fe_read.h).

Each reader takes the payload of one typed message (as ``kiwi.framer`` returns it) and
returns a value or a small frozen dataclass; malformed payloads raise ``ProtocolError``
with side "server". Text from the server is decoded as UTF-8 with ``surrogateescape``
(it arrives in client_encoding), so reading never fails on encoding.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

from kiwi._cursor import Cursor, decode_strict
from kiwi.errors import SERVER

__all__ = [
    "ErrorFields", "Authentication", "Column", "read_error", "read_notice",
    "read_parameter_status", "read_backend_key_data", "read_ready_for_query",
    "read_authentication", "read_command_complete", "read_negotiate_protocol_version",
    "read_row_description", "read_data_row",
]


@dataclass(frozen=True)
class ErrorFields:
    """ErrorResponse/NoticeResponse. ``severity`` is the non-localized V field when present
    (PostgreSQL >= 9.6), else S. ``fields`` maps every one-letter code to its text, in the
    order received. Missing S/C/M read as ""."""
    severity: str
    sqlstate: str
    message: str
    detail: str | None = None
    hint: str | None = None
    fields: Mapping[str, str] = field(default_factory=dict, hash=False)

    def get(self, code: str, default=None):
        return self.fields.get(code, default)


def read_error(payload) -> ErrorFields:
    cur = Cursor(payload, "ErrorResponse", SERVER)
    fields: dict[str, str] = {}
    while True:
        code = cur.byte()
        if code == b"\0":
            break
        fields[code.decode("latin-1")] = cur.text()
    cur.done()
    return ErrorFields(fields.get("V") or fields.get("S", ""), fields.get("C", ""),
                       fields.get("M", ""), fields.get("D"), fields.get("H"),
                       MappingProxyType(fields))


read_notice = read_error


def read_parameter_status(payload) -> tuple[str, str]:
    cur = Cursor(payload, "ParameterStatus", SERVER)
    name = cur.text()
    value = cur.text()
    cur.done()
    return name, value


def read_backend_key_data(payload) -> tuple[int, int]:
    """``(pid, key)`` as unsigned ints; exactly 8 bytes (protocol 3.0)."""
    cur = Cursor(payload, "BackendKeyData", SERVER)
    pid = cur.uint32()
    key = cur.uint32()
    cur.done()
    return pid, key


def read_ready_for_query(payload) -> bytes:
    """b"I" (idle), b"T" (in transaction) or b"E" (failed transaction)."""
    cur = Cursor(payload, "ReadyForQuery", SERVER)
    status = cur.byte()
    cur.done()
    if status not in (b"I", b"T", b"E"):
        raise cur.error(f"invalid transaction status {status!r}")
    return status


@dataclass(frozen=True)
class Authentication:
    """An Authentication request: ``code`` (0 ok, 3 cleartext, 5 md5, 10 SASL,
    11 SASLContinue, 12 SASLFinal, ...) and the bytes after it."""
    code: int
    data: bytes = b""

    @property
    def salt(self) -> bytes:
        """The md5 salt (code 5)."""
        return self.data

    @property
    def mechanisms(self) -> tuple[str, ...]:
        """The SASL mechanism list (code 10)."""
        return _mechanisms(self.data)


_AUTH_DATA_LEN = {0: 0, 2: 0, 3: 0, 5: 4, 6: 0, 7: 0, 9: 0}


def _mechanisms(data: bytes) -> tuple[str, ...]:
    cur = Cursor(data, "AuthenticationSASL", SERVER)
    out = []
    while True:
        name = cur.cstring()
        if not name:
            break
        out.append(decode_strict(name, "SASL mechanism", SERVER))
    cur.done()
    return tuple(out)


def read_authentication(payload) -> Authentication:
    """Checks the data length for the fixed-size codes and the SASL mechanism list."""
    cur = Cursor(payload, "Authentication", SERVER)
    code = cur.int32()
    data = cur.rest()
    want = _AUTH_DATA_LEN.get(code)
    if want is not None and len(data) != want:
        raise cur.error(f"code {code} with {len(data)} data bytes")
    if code == 10:
        _mechanisms(data)
    return Authentication(code, data)


def read_command_complete(payload) -> str:
    cur = Cursor(payload, "CommandComplete", SERVER)
    tag = cur.text()
    cur.done()
    return tag


def read_negotiate_protocol_version(payload) -> tuple[int, tuple[str, ...]]:
    """``(newest_minor, unrecognized_options)``."""
    cur = Cursor(payload, "NegotiateProtocolVersion", SERVER)
    minor = cur.int32()
    n = cur.int32()
    if n < 0:
        raise cur.error("negative option count")
    options = []
    for _ in range(n):
        options.append(cur.text())
    cur.done()
    return minor, tuple(options)


@dataclass(frozen=True)
class Column:
    name: str
    table_oid: int = 0
    attnum: int = 0
    type_oid: int = 25
    typlen: int = -1
    typmod: int = -1
    format: int = 0


def read_row_description(payload) -> tuple[Column, ...]:
    cur = Cursor(payload, "RowDescription", SERVER)
    cols = []
    for _ in range(cur.count16()):
        name = cur.text()
        cols.append(Column(name, cur.uint32(), cur.int16(), cur.uint32(), cur.int16(),
                           cur.int32(), cur.int16()))
    cur.done()
    return tuple(cols)


def read_data_row(payload) -> tuple[bytes | None, ...]:
    """Column values as raw bytes, None for NULL (e.g. an auth_query result)."""
    cur = Cursor(payload, "DataRow", SERVER)
    values = []
    for _ in range(cur.count16()):
        n = cur.int32()
        if n < -1:
            raise cur.error("negative value length")
        values.append(None if n == -1 else cur.take(n))
    cur.done()
    return tuple(values)


