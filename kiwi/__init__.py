"""kiwi: the PostgreSQL v3 wire protocol, sans-IO (mirrors Odyssey's kiwi).

kiwi takes bytes and gives messages, and builds bytes from messages. It never touches a
socket and imports neither gevent nor machinarium. Modules are named by who sends and who
reads, as in Odyssey: ``be_read`` (the pooler, as a server, reads what clients send),
``be_write`` (it writes to clients), ``fe_write`` (the pooler, as a client, writes to
PostgreSQL), ``fe_read`` (it reads what PostgreSQL sends), plus ``header``, ``framer``,
``errors``, ``error_codes``, ``md5``, ``scram`` and ``saslprep``.

The read contract
-----------------
* A reader returns a whole message or "need more bytes" (``None``), never a partial one.
  ``be_read.read_startup(buf) -> (msg | None, consumed)`` reads the untyped first packet;
  ``framer.read_message(buf, offset, limits) -> (type_byte, payload, end) | None`` and the
  incremental ``framer.Framer`` read typed messages; ``need()``/``startup_need()`` say how
  many bytes are missing. Bytes after a message are never consumed.
* Declared lengths are checked against per-type limits from the header alone, before any
  body is buffered: a startup packet outside 8..4+10000 bytes, a typed message whose length
  is below 4 or whose payload exceeds its type's limit raises ``ProtocolError`` at once.
* The relay forwards raw bytes and checks 5-byte headers against ``framer.FE_RELAY_LIMITS``;
  ``protocol.Conversation`` follows what each server still owes. Payload
  readers (``read_error``, ``read_parse``, ...) are for the messages the pooler must
  understand: startup, auth, ParameterStatus, ReadyForQuery, errors, BackendKeyData and the
  extended-protocol names.
* On bad bytes every reader raises ``ProtocolError`` (a ``KiwiError`` with SQLSTATE 08P01
  and ``side`` "client" or "server") and nothing else; SCRAM raises ``ScramError``
  (also a ``KiwiError``) with the SQLSTATE the pooler should send.
"""
from kiwi import be_read, be_write, error_codes, fe_read, fe_write, md5, saslprep, scram
from kiwi.be_read import (Bind, CancelRequest, Close, Describe, Execute, GSSENCRequest,
                          Parse, SSLRequest, StartupMessage, read_startup, startup_need)
from kiwi.errors import KiwiError, ProtocolError
from kiwi.fe_read import Authentication, Column, ErrorFields
from kiwi.framer import (BE_LIMITS, FE_LIMITS, Framer, Limits, be_limits, fe_limits,
                         message_need, read_header, read_message)
from kiwi.header import BE, FE, HEADER, be_name, fe_name
from kiwi.md5 import md5_password, md5_salted, md5_verify
from kiwi.scram import (ScramClient, ScramError, ScramSecret, ScramServer, make_secret,
                        parse_secret)

__all__ = [
    # modules
    "be_read", "be_write", "fe_read", "fe_write", "error_codes", "md5", "scram", "saslprep",
    # errors
    "KiwiError", "ProtocolError", "ScramError",
    # header and framing
    "FE", "BE", "HEADER", "fe_name", "be_name", "Framer", "Limits", "FE_LIMITS", "BE_LIMITS",
    "fe_limits", "be_limits", "read_header", "read_message", "message_need",
    # first packet and messages
    "read_startup", "startup_need", "StartupMessage", "SSLRequest", "GSSENCRequest",
    "CancelRequest", "Parse", "Bind", "Describe", "Close", "Execute", "ErrorFields",
    "Authentication", "Column",
    # auth
    "md5_password", "md5_salted", "md5_verify", "ScramServer", "ScramClient", "ScramSecret",
    "parse_secret", "make_secret",
]
