"""kiwi.be_read: what the pooler, acting as a PostgreSQL server, reads from clients
(Odyssey kiwi be_read.h).

The untyped first packet (StartupMessage, SSLRequest, GSSENCRequest, CancelRequest) has its
own reader, ``read_startup``; its length word is checked against
``MAX_STARTUP_PACKET_LENGTH`` before any body is waited for. The other readers take the
payload of one typed message (as ``kiwi.framer`` returns it) and return a value or a small
frozen dataclass. Every reader raises only ``ProtocolError`` (side "client") on bad bytes.

SQL text and object names are decoded as UTF-8 with ``surrogateescape``: a client whose
client_encoding is not UTF-8 is not rejected and the original bytes can be recovered.
"""
from __future__ import annotations

from dataclasses import dataclass
from operator import itemgetter

from kiwi._cursor import Cursor, decode_strict
from kiwi.errors import CLIENT, ProtocolError
from kiwi.header import (CANCEL_REQUEST_CODE, GSSENC_REQUEST_CODE, LENGTH, PROTOCOL_3_0,
                         SSL_REQUEST_CODE)

__all__ = [
    "MAX_STARTUP_PACKET_LENGTH", "StartupMessage", "SSLRequest", "GSSENCRequest",
    "CancelRequest", "read_startup", "startup_need", "startup_length", "read_password",
    "read_sasl_initial_response", "read_sasl_response", "read_query", "Parse", "Bind",
    "Describe", "Close", "Execute", "read_parse", "read_bind", "read_describe",
    "read_close", "read_execute", "read_copy_fail",
]

# PostgreSQL's MAX_STARTUP_PACKET_LENGTH: the packet minus its own length word. A
# declared length below 8 (length word + protocol code) or above 4 + this is rejected.
MAX_STARTUP_PACKET_LENGTH = 10000
_MIN_STARTUP = 8


class StartupMessage(tuple):
    """Protocol ``major.minor`` and the parameters in the order sent (the last of a
    duplicated name wins). For a major version other than 3 the body is not parsed and
    ``params`` is empty: the pooler answers 0A000 "unsupported frontend protocol".

    Immutable, compared by all three and hashed by ``(major, minor)``, as the frozen dataclass
    it was; a tuple subclass because a frozen dataclass's constructor stores each field with
    ``object.__setattr__`` (three calls per login; ``read_startup``'s common case makes one
    with ``tuple.__new__`` alone, no Python frame)."""
    __slots__ = ()

    def __new__(cls, major: int, minor: int, params: dict[str, str] | None = None):
        return _tuple_new(cls, (major, minor, {} if params is None else params))

    major = property(itemgetter(0), doc="protocol major version")
    minor = property(itemgetter(1), doc="protocol minor version")
    params = property(itemgetter(2), doc="the parameters, name -> value")

    # (never equal to a plain tuple: returning NotImplemented would let tuple's own == answer)
    def __eq__(self, other):
        return other.__class__ is StartupMessage and _tuple_eq(self, other)

    def __ne__(self, other):
        return other.__class__ is not StartupMessage or not _tuple_eq(self, other)

    def __hash__(self):
        return hash((self[0], self[1]))

    def __repr__(self):
        return f"StartupMessage(major={self[0]!r}, minor={self[1]!r}, params={self[2]!r})"

    def __reduce__(self):
        return StartupMessage, tuple(self)

    @property
    def user(self) -> str | None:
        return self[2].get("user")

    @property
    def database(self) -> str | None:
        """``database``, defaulting to ``user`` as PostgreSQL does."""
        return self[2].get("database") or self[2].get("user")


_tuple_new = tuple.__new__
_tuple_eq = tuple.__eq__


@dataclass(frozen=True)
class SSLRequest:
    pass


@dataclass(frozen=True)
class GSSENCRequest:
    pass


@dataclass(frozen=True)
class CancelRequest:
    pid: int
    key: int


def _startup_length(buf, offset: int = 0) -> int | None:
    """The first packet's declared length (its length word included) once its 4-byte length
    word is there, else None. Raises ``ProtocolError`` for a bad one."""
    if len(buf) - offset < 4:
        return None
    declared = LENGTH.unpack_from(buf, offset)[0]
    if declared < _MIN_STARTUP or declared - 4 > MAX_STARTUP_PACKET_LENGTH:
        raise ProtocolError(f"invalid length of startup packet: {declared}", side=CLIENT)
    return declared


def startup_need(buf, offset: int = 0) -> int:
    """Bytes still missing before ``read_startup`` can return the first packet (0 = none).
    Raises ``ProtocolError`` as soon as the 4-byte length word is bad."""
    declared = _startup_length(buf, offset)
    avail = len(buf) - offset
    if declared is None:
        return _MIN_STARTUP - avail
    need = declared - avail
    return need if need > 0 else 0      # not max(): a builtin that parses keywords, once a login


# the protocol code of a 3.0 StartupMessage as it is sent
_CODE_3_0 = LENGTH.pack(PROTOCOL_3_0)


# (the same function, not a wrapper: a frame fewer at each login)
startup_length = _startup_length


def read_startup(buf, offset: int = 0, declared: int | None = None):
    """``(msg, consumed)`` for the untyped first packet at ``buf[offset:]``, or
    ``(None, 0)`` when more bytes are needed. Bytes after the packet are left alone
    (``consumed`` says where it ended). ``declared``: its length word as ``startup_length``
    returned it, when the caller asked already."""
    if declared is None:
        declared = _startup_length(buf, offset)
    if declared is None or len(buf) - offset < declared:
        return None, 0
    if type(buf) is bytes and buf[offset + 4:offset + 8] == _CODE_3_0:
        # the common packet, a 3.0 StartupMessage with a well-formed parameter list, without
        # the cursor (anything else, or an error, is found by the general reading below)
        body = buf[offset + 8:offset + declared]
        params = _PARAMS.get(body)
        if params is None:
            params = _params_fast(body)
            if params is not None and len(body) <= _PARAMS_BODY_MAX:
                if len(_PARAMS) >= _PARAMS_MAX:
                    _PARAMS.clear()
                _PARAMS[body] = params
        if params is not None:
            # (each message its own dict: a caller may change it)
            return _tuple_new(StartupMessage, (3, 0, params.copy())), declared
    cur = Cursor(buf[offset + 4:offset + declared], "startup packet", CLIENT)
    code = cur.uint32()
    if code == SSL_REQUEST_CODE or code == GSSENC_REQUEST_CODE:
        if declared != 8:
            raise ProtocolError(f"invalid length of {'SSL' if code == SSL_REQUEST_CODE else 'GSSENC'}"
                                f"Request packet: {declared}", side=CLIENT)
        return (SSLRequest() if code == SSL_REQUEST_CODE else GSSENCRequest()), declared
    if code == CANCEL_REQUEST_CODE:
        if declared != 16:
            raise ProtocolError(f"invalid length of CancelRequest packet: {declared}", side=CLIENT)
        return CancelRequest(cur.uint32(), cur.uint32()), declared
    major, minor = code >> 16, code & 0xFFFF
    if major != 3:
        return StartupMessage(major, minor, {}), declared
    return StartupMessage(major, minor, _read_params(cur)), declared


# the fast reader's dicts by the parameter list's bytes: a pooler's clients mostly send the
# same few packets (the same user, database and application), and a lookup of the bytes costs
# a fraction of the decode, split and loop. Bounded: at most _PARAMS_MAX lists of at most
# _PARAMS_BODY_MAX bytes, cleared when full.
_PARAMS: dict[bytes, dict[str, str]] = {}
_PARAMS_MAX = 1024
_PARAMS_BODY_MAX = 1024


def _params_fast(body: bytes) -> dict[str, str] | None:
    """The common well-formed parameter list (``name\0value\0...\0``, UTF-8) in one decode
    and one split; None for anything else, which ``_read_params`` then reads or rejects with its
    precise error. (A NUL byte never occurs inside a UTF-8 sequence, so splitting the decoded
    text is splitting the bytes.)"""
    try:
        parts = body.decode("utf-8").split("\0")
    except UnicodeDecodeError:
        return None
    # name, value, ..., "" (the terminator), "" (after it): an even count, ending in two
    # empty strings, and no empty name before them. A plain loop: dict(zip(...)) over the
    # pairs and all() over the names cost half again as much for a login's few parameters
    n = len(parts)
    if n & 1 or parts[-2] or parts[-1]:
        return None
    n -= 2
    params = {}
    i = 0
    while i < n:
        name = parts[i]
        if not name:
            return None
        params[name] = parts[i + 1]
        i += 2
    return params


def _read_params(cur: Cursor) -> dict[str, str]:
    fast = _params_fast(cur.data[cur.pos:])
    return fast if fast is not None else _read_params_cursor(cur)


def _read_params_cursor(cur: Cursor) -> dict[str, str]:
    data = cur.data
    if not data.endswith(b"\0"):
        raise ProtocolError("invalid startup packet layout: expected terminator as last byte",
                            side=CLIENT)
    params: dict[str, str] = {}
    while True:
        name = cur.cstring()
        if not name:
            break
        if cur.remaining() == 0:
            raise ProtocolError(f"invalid startup packet layout: no value for {name!r}",
                                side=CLIENT)
        value = cur.cstring()
        params[decode_strict(name, "startup parameter name", CLIENT)] = \
            decode_strict(value, "startup parameter value", CLIENT)
    if cur.remaining():
        raise ProtocolError("invalid startup packet layout: expected terminator as last byte",
                            side=CLIENT)
    return params


def read_password(payload) -> bytes:
    """A cleartext or md5 PasswordMessage: one NUL-terminated string, no NUL inside
    (PostgreSQL: "invalid password packet size"). Returns the bytes without the NUL."""
    cur = Cursor(payload, "password", CLIENT)
    value = cur.cstring()
    cur.done()
    return value


def read_sasl_initial_response(payload) -> tuple[str, bytes | None]:
    """``(mechanism, data)``; ``data`` is ``None`` when the client sent length -1."""
    cur = Cursor(payload, "SASLInitialResponse", CLIENT)
    mechanism = decode_strict(cur.cstring(), "SASL mechanism", CLIENT)
    n = cur.int32()
    if n < -1:
        raise cur.error("negative length")
    data = None if n == -1 else cur.take(n)
    cur.done()
    return mechanism, data


def read_sasl_response(payload) -> bytes:
    return bytes(payload)


def read_query(payload) -> str:
    cur = Cursor(payload, "Query", CLIENT)
    sql = cur.text()
    cur.done()
    return sql


@dataclass(frozen=True)
class Parse:
    name: str
    query: str
    param_oids: tuple[int, ...] = ()


@dataclass(frozen=True)
class Bind:
    portal: str
    statement: str
    param_formats: tuple[int, ...] = ()
    params: tuple[bytes | None, ...] = ()
    result_formats: tuple[int, ...] = ()


@dataclass(frozen=True)
class Describe:
    kind: str   # "S" prepared statement, "P" portal
    name: str


@dataclass(frozen=True)
class Close:
    kind: str   # "S" prepared statement, "P" portal
    name: str


@dataclass(frozen=True)
class Execute:
    portal: str
    max_rows: int = 0


def read_parse(payload) -> Parse:
    cur = Cursor(payload, "Parse", CLIENT)
    name = cur.text()
    query = cur.text()
    oids = tuple(cur.uint32() for _ in range(cur.count16()))
    cur.done()
    return Parse(name, query, oids)


def read_bind(payload) -> Bind:
    cur = Cursor(payload, "Bind", CLIENT)
    portal = cur.text()
    statement = cur.text()
    formats = tuple(cur.int16() for _ in range(cur.count16()))
    params = []
    for _ in range(cur.count16()):
        n = cur.int32()
        if n < -1:
            raise cur.error("negative parameter length")
        params.append(None if n == -1 else cur.take(n))
    results = tuple(cur.int16() for _ in range(cur.count16()))
    cur.done()
    return Bind(portal, statement, formats, tuple(params), results)


def _kind_name(payload, what: str) -> tuple[str, str]:
    cur = Cursor(payload, what, CLIENT)
    kind = cur.byte()
    if kind not in (b"S", b"P"):
        raise cur.error(f"invalid subtype {kind!r}")
    name = cur.text()
    cur.done()
    return kind.decode("ascii"), name


def read_describe(payload) -> Describe:
    return Describe(*_kind_name(payload, "Describe"))


def read_close(payload) -> Close:
    return Close(*_kind_name(payload, "Close"))


def read_execute(payload) -> Execute:
    cur = Cursor(payload, "Execute", CLIENT)
    portal = cur.text()
    max_rows = cur.int32()
    cur.done()
    return Execute(portal, max_rows)


def read_copy_fail(payload) -> str:
    cur = Cursor(payload, "CopyFail", CLIENT)
    msg = cur.text()
    cur.done()
    return msg
