"""How a client's session ends, and the errors the pooler itself sends (mirrors Odyssey
sources/status.h and the od_frontend_error/od_frontend_fatal part of sources/frontend.c).

The error model, in one place:

* A stage of `frontend.Frontend.run` either returns or raises. The request loop (the relay or
  the console) returns the `Status` it ended with: TERMINATE, or an idle timeout of the pooler.
* Every other end is one of three exceptions:
  - `FrontendError`: something the client must be told (routing, auth, limits, protocol);
  - `ClientGone(status)`: the client's socket failed (ECLIENT_READ / ECLIENT_WRITE);
  - `ServerError(status, cause)`: the server's socket or stream failed (ESERVER_READ /
    ESERVER_WRITE); that server is closed, never reused.
  During login the client's socket may also raise machinarium's OSError/TimedOut or kiwi's
  ProtocolError directly; `Frontend.run` counts them as ECLIENT_READ / ECLIENT_PROTOCOL_ERROR.
* `Frontend.run` turns each into a `Status`, and `Frontend.cleanup(status)` alone decides what
  the client is told and whether its server is reset and reused or closed. Exception texts
  (`[Errno 104] ...`) go to the log only; clients get PostgreSQL-style messages, all built by
  `error_message()`.

`BackendError` is the backend module's own: PostgreSQL refused a login or broke a service
exchange (reset, deploy). Whoever calls the backend turns it into one of the above.

Only the statuses something produces are listed; their values are C Odyssey's names (logged at
disconnect); SHOW ERRORS counts the error ones under those names (err_logger.py).
"""
from __future__ import annotations

import enum

from kiwi import be_write


class Status(enum.Enum):
    OK = "OK"
    TERMINATE = "OD_TERMINATE"          # the client said Terminate
    # the client went away or broke its connection: the server can be reused after a reset
    ECLIENT_READ = "OD_ECLIENT_READ"
    ECLIENT_WRITE = "OD_ECLIENT_WRITE"
    ECLIENT_PROTOCOL_ERROR = "OD_ECLIENT_PROTOCOL_ERROR"
    # the server side failed: close that server
    ESERVER_READ = "OD_ESERVER_READ"
    ESERVER_WRITE = "OD_ESERVER_WRITE"
    # the pooler dropped the client
    EIDLE_TIMEOUT = "OD_EIDLE_TIMEOUT"
    EIDLE_IN_TRANSACTION_TIMEOUT = "OD_EIDLE_IN_TRANSACTION_TIMEOUT"
    # pool_idle_in_request_timeout_ms: silent in the middle of a request while holding a server
    EIDLE_IN_REQUEST_TIMEOUT = "OD_EIDLE_IN_REQUEST_TIMEOUT"
    EGRACEFUL_SHUTDOWN = "OD_EGRACEFUL_SHUTDOWN"   # SIGTERM/SIGINT: closed at its next idle point
    ECLIENT_KILLED = "OD_ECLIENT_KILLED"           # KILL_CLIENT from the console
    # no server for the client: pool_timeout expired (53300) / the server refused or failed / no
    # host of the storage fits target_session_attrs
    EATTACH_TOO_MANY_CONNECTIONS = "OD_EATTACH_TOO_MANY_CONNECTIONS"
    ESERVER_CONNECT = "OD_ESERVER_CONNECT"
    EATTACH_TARGET_SESSION_ATTRS_MISMATCH = "OD_EATTACH_TARGET_SESSION_ATTRS_MISMATCH"   # no host fits


class FrontendError(Exception):
    """An error the pooler reports to its client: SQLSTATE, severity and text (without prefix)."""

    def __init__(self, sqlstate: str, message: str, severity: str = "ERROR",
                 detail: str | None = None, hint: str | None = None, status: "Status | None" = None):
        super().__init__(message)
        self.status = status          # how the session ends, where it is not plain OK (SHOW ERRORS)
        self.sqlstate = sqlstate
        self.message = message
        self.severity = severity
        self.detail = detail
        self.hint = hint


class ClientGone(Exception):
    """Reading from (ECLIENT_READ) or writing to (ECLIENT_WRITE) the client failed."""

    def __init__(self, status: Status, cause: BaseException | str):
        super().__init__(str(cause))
        self.status = status
        self.cause = cause


class ServerError(Exception):
    """Reading from (ESERVER_READ) or writing to (ESERVER_WRITE) the server failed, or it sent
    something unusable. `cause` is for the log, never for the client."""

    def __init__(self, status: Status, cause: BaseException | str):
        super().__init__(str(cause))
        self.status = status
        self.cause = cause


class BackendError(Exception):
    """PostgreSQL refused a login or broke a service exchange; `.fields` is its ErrorResponse
    (kiwi ErrorFields), if it sent one."""

    def __init__(self, message: str, fields=None):
        super().__init__(message)
        self.fields = fields


def error_prefix(client_id: str | None, show_id: bool = True) -> str:
    """`odyssey: c<12hex>: ` (just `odyssey: ` when the rule has client_show_id no)."""
    if show_id and client_id:
        return f"odyssey: {client_id}: "
    return "odyssey: "


def error_message(err: FrontendError, client_id: str | None = None, show_id: bool = True) -> bytes:
    """The ErrorResponse for `err`, prefixed the way Odyssey prefixes its own messages."""
    return be_write.error_response(err.severity, err.sqlstate, error_prefix(client_id, show_id) + err.message,
                                   detail=err.detail, hint=err.hint)
