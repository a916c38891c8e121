"""Statuses of the client lifecycle and the errors the pooler itself sends (mirrors Odyssey
sources/status.h and the od_frontend_error/od_frontend_fatal part of sources/frontend.c).

Every stage of the frontend returns a `Status`; `frontend.cleanup()` alone decides from it what
the client is told and what happens to its server. Messages the pooler writes itself are built
in exactly one place, `error_message()`.
"""
from __future__ import annotations

import enum

from kiwi import be_write


class Status(enum.Enum):
    OK = "OK"
    # the client went away or broke its connection: the server can be reused after a reset
    ECLIENT_READ = "OD_ECLIENT_READ"
    ECLIENT_WRITE = "OD_ECLIENT_WRITE"
    ECLIENT_PROTOCOL_ERROR = "OD_ECLIENT_PROTOCOL_ERROR"
    # the server side failed: close that server
    ESERVER_CONNECT = "OD_ESERVER_CONNECT"
    ESERVER_READ = "OD_ESERVER_READ"
    ESERVER_WRITE = "OD_ESERVER_WRITE"
    # no server could be had
    EATTACH = "OD_EATTACH"
    EATTACH_TOO_MANY_CONNECTIONS = "OD_EATTACH_TOO_MANY_CONNECTIONS"
    # the pooler dropped the client
    EIDLE_TIMEOUT = "OD_EIDLE_TIMEOUT"
    EIDLE_IN_TRANSACTION_TIMEOUT = "OD_EIDLE_IN_TRANSACTION_TIMEOUT"
    ECLIENT_KILLED = "OD_ECLIENT_KILLED"
    EGRACEFUL_SHUTDOWN = "OD_EGRACEFUL_SHUTDOWN"
    # the client said Terminate
    TERMINATE = "OD_TERMINATE"


class FrontendError(Exception):
    """An error the pooler reports to its client: SQLSTATE, severity and text (without prefix)."""

    def __init__(self, sqlstate: str, message: str, severity: str = "ERROR",
                 detail: str | None = None, hint: str | None = None):
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message
        self.severity = severity
        self.detail = detail
        self.hint = hint


def error_prefix(client_id: str | None, show_id: bool = True) -> str:
    """`odyssey: c<12hex>: ` (just `odyssey: ` when the rule has client_show_id no)."""
    if show_id and client_id:
        return f"odyssey: {client_id}: "
    return "odyssey: "


def error_message(err: FrontendError, client_id: str | None = None, show_id: bool = True) -> bytes:
    """The ErrorResponse for `err`, prefixed the way Odyssey prefixes its own messages."""
    return be_write.error_response(err.severity, err.sqlstate, error_prefix(client_id, show_id) + err.message,
                                   detail=err.detail, hint=err.hint)


class BackendError(Exception):
    """PostgreSQL refused us or broke the protocol during login; `.fields` is its ErrorResponse."""

    def __init__(self, message: str, fields=None):
        super().__init__(message)
        self.fields = fields
