"""Server logins tried again within the rule's pool_timeout: a login PostgreSQL refuses with 53300
(`server_login_retry`, as Odyssey sources/frontend.c's attach), and, ours only, a login that
fails because PostgreSQL is unreachable, so that clients ride through a PostgreSQL restart.

With `pool_timeout` > 0, a failed login that may be tried again frees its pool slot (another
client, or another route of a shared pool, may take it), the client waits a little and attaches
again: an idle server of its route if one came back meanwhile, else a new login. When
pool_timeout has passed since the first failure the client gets the error it would have got at
once without the retry (PostgreSQL's own with client_fwd_error). With pool_timeout 0 nothing is
retried.

Which failures, and how long between attempts:

* 53300 (PostgreSQL's max_connections, a role's CONNECTION LIMIT): `server_login_retry` ms
  (global, default 1), as C Odyssey;
* PostgreSQL unreachable: the connection refused, reset or closed during the login, no route to
  it, its unix socket missing, `backend_connect_timeout_ms` passed, or PostgreSQL's FATAL 57P03
  (starting up, shutting down, in recovery): 100 ms, doubling up to 1 s. C Odyssey gives these
  clients the error at once.

The wait between attempts ends early, with the client's session, on KILL_CLIENT (ECLIENT_KILLED),
a graceful shutdown (EGRACEFUL_SHUTDOWN: the client holds no server) and the client closing its
connection (ECLIENT_READ). It is looked at every POLL_MS; the client's socket is watched, so a
client that goes away is noticed at once.
"""
from __future__ import annotations

import errno
import socket
import ssl
import time

import machinarium
from kiwi import error_codes
from odyssey_gevent.status import BackendError, ClientGone, FrontendError, Status

TOO_MANY_CONNECTIONS = "53300"
CANNOT_CONNECT_NOW = "57P03"          # PostgreSQL starting up, shutting down or in recovery
FIRST_BACKOFF_MS = 100
MAX_BACKOFF_MS = 1000
POLL_MS = 100                         # how often a waiting client looks at KILL_CLIENT and shutdown

# the socket errors of a PostgreSQL that is down or out of reach (not of a wrong config: DNS,
# TLS and authentication failures are not retried)
_UNREACHABLE_ERRNOS = frozenset({errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE,
                                 errno.ENOENT, errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ETIMEDOUT})


class Retry(Exception):
    """A failed login that may be tried again; `.error` is the backend's error, `.unreachable`
    whether PostgreSQL was out of reach (else it refused with 53300)."""

    def __init__(self, error, unreachable: bool = False):
        super().__init__(str(error))
        self.error = error
        self.unreachable = unreachable


class Window:
    """One client's retries: the deadline (pool_timeout after the first failure), the attempts
    so far and the last failure (what the client is told when the deadline passes)."""

    __slots__ = ("until", "attempts", "retry", "server_id")

    def __init__(self, until: float):
        self.until = until
        self.attempts = 0
        self.retry = None
        self.server_id = ""

    def left_ms(self) -> int:
        """What is left of the window, for the next wait in the pool's queue (at least 1 ms)."""
        return max(1, int((self.until - time.monotonic()) * 1000))


def unreachable(error) -> bool:
    """Did the login fail because PostgreSQL is down or out of reach? `error` is what
    backend.connect raised: a BackendError (the socket error as its __cause__, or PostgreSQL's
    ErrorResponse as .fields), or the socket error itself."""
    fields = getattr(error, "fields", None)
    if fields is not None:
        return fields.sqlstate == CANNOT_CONNECT_NOW
    cause = error.__cause__ if isinstance(error, BackendError) else error
    if isinstance(cause, machinarium.TimedOut):          # backend_connect_timeout_ms
        return True
    if isinstance(cause, ssl.SSLError) or not isinstance(cause, OSError):
        return False
    if isinstance(cause, machinarium.ConnectionClosed):   # closed during the login
        return True
    return cause.errno in _UNREACHABLE_ERRNOS


def applies(rule, fields, error=None) -> bool:
    """May this failed login be tried again? (`fields`: PostgreSQL's ErrorResponse, or None.)"""
    if rule.pool_timeout <= 0:
        return False
    if fields is not None and fields.sqlstate == TOO_MANY_CONNECTIONS:
        return True
    return error is not None and unreachable(error)


def retry_for(rule, error) -> Retry | None:
    """The Retry to raise for a failed login, or None when it is not tried again."""
    fields = getattr(error, "fields", None)
    if not applies(rule, fields, error):
        return None
    return Retry(error, unreachable=not (fields is not None and fields.sqlstate == TOO_MANY_CONNECTIONS))


def give_up(client, window: Window) -> None:
    """Raise the FrontendError the client gets when its window has passed: what it would have got
    at once without the retry (the backend's own error with client_fwd_error)."""
    fields = getattr(window.retry.error, "fields", None)
    if client.rule.client_fwd_error and fields is not None:
        raise FrontendError(fields.sqlstate, fields.message, severity=fields.severity, detail=fields.detail,
                            hint=fields.hint, status=Status.ESERVER_CONNECT) from None
    raise FrontendError(error_codes.CONNECTION_FAILURE, f"failed to connect to remote server {window.server_id}",
                        severity="FATAL", status=Status.ESERVER_CONNECT) from None


def backoff_ms(attempts: int) -> int:
    """The wait after the attempts-th failure (0 = the first) of a PostgreSQL out of reach."""
    return min(MAX_BACKOFF_MS, FIRST_BACKOFF_MS << min(attempts, 8))


def pause(instance, client, retry: Retry, server_id: str, window: Window | None) -> Window:
    """Wait before the next attempt and return the client's Window (None at the first failure);
    past pool_timeout raise the FrontendError the client gets, and on KILL_CLIENT, shutdown or
    the client closing, ClientGone."""
    now = time.monotonic()
    if window is None:
        window = Window(now + client.rule.pool_timeout / 1000.0)
    window.retry = retry
    window.server_id = server_id
    if now >= window.until:
        give_up(client, window)
    if retry.unreachable:
        step = backoff_ms(window.attempts)
        if window.attempts == 0:
            instance.logger.info("attach", client, None, "PostgreSQL is unreachable, the client waits up to "
                                 "pool_timeout %d ms for it", client.rule.pool_timeout)
    else:
        step = instance.config.server_login_retry
        instance.logger.debug("attach", client, None, "server login refused with 53300, retrying in %d ms", step)
    window.attempts += 1
    wait(instance, client, max(0, min(step, int((window.until - now) * 1000) + 1)))
    return window


def wait(instance, client, ms: int) -> None:
    """Sleep `ms` holding no server; raise ClientGone when the client is killed, the pooler shuts
    down or the client goes away meanwhile."""
    end = time.monotonic() + ms / 1000.0
    io = client.io
    watch = io is not None          # the client's socket: its EOF ends the wait at once
    while True:
        if client.killed:
            raise ClientGone(Status.ECLIENT_KILLED, "killed while waiting for PostgreSQL")
        if getattr(instance, "shutting_down", False):
            raise ClientGone(Status.EGRACEFUL_SHUTDOWN, "shutdown while waiting for PostgreSQL")
        left = int((end - time.monotonic()) * 1000)
        if left <= 0:
            return
        chunk = min(left, POLL_MS)
        if not watch:
            machinarium.sleep(chunk)
        elif machinarium.wait_any((io,), chunk):
            if closed(io):
                raise ClientGone(Status.ECLIENT_READ, "client closed while waiting for PostgreSQL")
            watch = False           # it sent more (a pipeline): its bytes wait for the server


def closed(io) -> bool:
    """Has the peer of a readable socket closed it (EOF or reset)? Peeks at the raw socket
    (under TLS too: any record means it is still there), consuming nothing."""
    try:
        s = socket.socket(fileno=io.fileno())
    except OSError:
        return True
    try:
        return s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        s.detach()
