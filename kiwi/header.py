"""kiwi.header: message type bytes and the 5-byte typed-message header (Odyssey kiwi header.h).

``FE`` holds the type bytes a frontend (client) sends, ``BE`` those a backend (PostgreSQL)
sends. Both are ``IntEnum`` over the byte's integer value, so they compare equal to the
``type_byte`` ints that ``kiwi.framer.read_message`` returns; ``.label`` is the protocol
documentation's name for logs and ``.byte`` the one-byte ``bytes``.
"""
from __future__ import annotations

import enum
import struct

__all__ = ["FE", "BE", "HEADER", "HEADER_B", "LENGTH", "fe_name", "be_name",
           "SSL_REQUEST_CODE", "GSSENC_REQUEST_CODE", "CANCEL_REQUEST_CODE",
           "PROTOCOL_3_0", "protocol_code"]

HEADER = struct.Struct("!cI")    # type as bytes, declared length (counts itself, not the type)
HEADER_B = struct.Struct("!BI")  # type as int: the form the framer uses
LENGTH = struct.Struct("!I")     # the untyped first packet's length word


def protocol_code(major: int, minor: int) -> int:
    """PostgreSQL's PG_PROTOCOL(major, minor)."""
    return (major << 16) | minor


PROTOCOL_3_0 = protocol_code(3, 0)
CANCEL_REQUEST_CODE = protocol_code(1234, 5678)   # 80877102
SSL_REQUEST_CODE = protocol_code(1234, 5679)      # 80877103
GSSENC_REQUEST_CODE = protocol_code(1234, 5680)   # 80877104


class _TypeByte(enum.IntEnum):
    label: str

    def __new__(cls, char: str, label: str):
        obj = int.__new__(cls, ord(char))
        obj._value_ = ord(char)
        obj.label = label
        return obj

    @property
    def byte(self) -> bytes:
        return bytes((self.value,))

    def __str__(self) -> str:
        return self.label


class FE(_TypeByte):
    """Type bytes of messages a frontend sends. ``p`` covers PasswordMessage,
    SASLInitialResponse, SASLResponse and GSSResponse: the auth state tells them apart."""
    BIND = ("B", "Bind")
    CLOSE = ("C", "Close")
    COPY_DATA = ("d", "CopyData")
    COPY_DONE = ("c", "CopyDone")
    COPY_FAIL = ("f", "CopyFail")
    DESCRIBE = ("D", "Describe")
    EXECUTE = ("E", "Execute")
    FLUSH = ("H", "Flush")
    FUNCTION_CALL = ("F", "FunctionCall")
    PARSE = ("P", "Parse")
    PASSWORD_MESSAGE = ("p", "PasswordMessage")
    QUERY = ("Q", "Query")
    SYNC = ("S", "Sync")
    TERMINATE = ("X", "Terminate")


class BE(_TypeByte):
    """Type bytes of messages a backend sends."""
    AUTHENTICATION = ("R", "Authentication")
    BACKEND_KEY_DATA = ("K", "BackendKeyData")
    BIND_COMPLETE = ("2", "BindComplete")
    CLOSE_COMPLETE = ("3", "CloseComplete")
    COMMAND_COMPLETE = ("C", "CommandComplete")
    COPY_BOTH_RESPONSE = ("W", "CopyBothResponse")
    COPY_DATA = ("d", "CopyData")
    COPY_DONE = ("c", "CopyDone")
    COPY_IN_RESPONSE = ("G", "CopyInResponse")
    COPY_OUT_RESPONSE = ("H", "CopyOutResponse")
    DATA_ROW = ("D", "DataRow")
    EMPTY_QUERY_RESPONSE = ("I", "EmptyQueryResponse")
    ERROR_RESPONSE = ("E", "ErrorResponse")
    FUNCTION_CALL_RESPONSE = ("V", "FunctionCallResponse")
    NEGOTIATE_PROTOCOL_VERSION = ("v", "NegotiateProtocolVersion")
    NO_DATA = ("n", "NoData")
    NOTICE_RESPONSE = ("N", "NoticeResponse")
    NOTIFICATION_RESPONSE = ("A", "NotificationResponse")
    PARAMETER_DESCRIPTION = ("t", "ParameterDescription")
    PARAMETER_STATUS = ("S", "ParameterStatus")
    PARSE_COMPLETE = ("1", "ParseComplete")
    PORTAL_SUSPENDED = ("s", "PortalSuspended")
    READY_FOR_QUERY = ("Z", "ReadyForQuery")
    ROW_DESCRIPTION = ("T", "RowDescription")


_FE_NAMES = {m.value: m.label for m in FE}
_BE_NAMES = {m.value: m.label for m in BE}


def _unknown(type_byte: int) -> str:
    ch = chr(type_byte)
    return f"Unknown({ch!r})" if ch.isprintable() else f"Unknown(0x{type_byte:02x})"


def fe_name(type_byte: int) -> str:
    """Log name of a frontend type byte (int); ``Unknown('x')`` when it is not one."""
    return _FE_NAMES.get(type_byte) or _unknown(type_byte)


def be_name(type_byte: int) -> str:
    """Log name of a backend type byte (int); ``Unknown('x')`` when it is not one."""
    return _BE_NAMES.get(type_byte) or _unknown(type_byte)
