"""Server connections to PostgreSQL: connect, startup, login, service queries
(mirrors Odyssey sources/backend.c).
"""
from __future__ import annotations

import os
import time

import machinarium
from machinarium import tls
from kiwi import fe_read, fe_write
from kiwi.errors import KiwiError
from kiwi.protocol import Conversation
from kiwi.header import BE, FE
from odyssey_gevent import auth, storage, tsa
from odyssey_gevent.io import read_message
from odyssey_gevent.server import unwatch
from odyssey_gevent.status import BackendError


def endpoint_address(endpoint, config) -> tuple[str, object]:
    """("unix", path) or ("tcp", (host, port)) for a storage endpoint."""
    if endpoint.is_unix:
        path = endpoint.host
        if not os.path.basename(path).startswith(".s.PGSQL."):
            path = os.path.join(path, f".s.PGSQL.{endpoint.port}")
        return "unix", path
    return "tcp", (endpoint.host, endpoint.port)


def storage_endpoints(storage, config) -> list:
    if storage.endpoints:
        return storage.endpoints
    from odyssey_gevent.config import Endpoint  # storage with no host: the unix socket directory
    return [Endpoint(host=config.unix_socket_dir, port=storage.port, address_type="unix")]


def open_connection(endpoint, config, timeout_ms: int):
    kind, addr = endpoint_address(endpoint, config)
    if kind == "unix":
        return machinarium.connect_unix(addr, timeout_ms)
    io = machinarium.connect(addr[0], addr[1], timeout_ms)
    if config.nodelay:
        io.set_nodelay()
    return io


class TsaMismatch(BackendError):
    """No host of the storage fits the client's target_session_attrs."""

    def __init__(self, value: str):
        super().__init__(f"no host fits target_session_attrs '{value}'")
        self.value = value


def connect(instance, server, client=None, replication: str | None = None) -> None:
    """Connect `server` to one of its storage's endpoints and log in; fills server.params and the
    cancel key. The endpoints are tried in storage.candidates() order, each once; a host that
    does not fit the effective target_session_attrs (tsa.py) is left for the next one.
    `replication` goes into the startup packet (a replication connection, replication.py).
    Raises BackendError (TsaMismatch), machinarium.TimedOut or OSError; the caller closes on
    error."""
    config = instance.config
    rule = server.route.rule
    timeout = config.backend_connect_timeout_ms
    want = tsa.effective(client, rule)
    endpoints = storage.candidates(rule.storage, storage_endpoints(rule.storage, config), want,
                                   storage.effective_catchup(client, rule), instance.next_endpoint(),
                                   storage.load_of(instance, client, rule),
                                   storage.zone_of(instance, rule.storage))
    last_error: Exception | None = None
    mismatch = False
    for endpoint in endpoints:
        try:
            login(instance, server, client, endpoint, timeout, replication)
            role = storage.role_from_login(server)     # PostgreSQL 14+ reports it at login
            if want == "any":
                if role is not None:
                    storage.note_role(endpoint, *role)
                return
            if role is None:
                if replication is not None:               # no SQL on a physical replication connection
                    return
                role = storage.query_role(instance, server, timeout)
            storage.note_role(endpoint, *role)
            status = storage.get(endpoint)
            if status is None or tsa.matches(want, status):
                return
            mismatch = True
            instance.logger.debug("connect", client, server, "%s does not fit target_session_attrs '%s'",
                                  endpoint, want)
            close(instance, server)
        except BackendError as e:
            last_error = e
            if e.fields is None or e.fields.sqlstate.startswith("57P"):
                storage.note_dead(endpoint)       # cannot connect, or shutting down / starting up
            _abandon(server)
        except (OSError, machinarium.TimedOut, KiwiError) as e:
            last_error = e
            storage.note_dead(endpoint)
            instance.logger.error("connect", client, server, "failed to connect to %s: %s", endpoint, e)
            _abandon(server)
    if mismatch:
        raise TsaMismatch(want)
    if isinstance(last_error, BackendError):
        raise last_error
    # the socket error stays the cause: login_retry tells a PostgreSQL that is down by it
    raise BackendError(f"failed to connect to remote server {server.id}: {last_error}") from last_error


def _abandon(server) -> None:
    """Forget a failed login attempt, so the next endpoint starts clean."""
    io = server.io
    server.io = None
    if io is not None:
        io.close()
    server.endpoint = None
    server.params = {}
    server.deployed = None
    server.login_params = []
    server.proto = Conversation()


def login(instance, server, client, endpoint, timeout: int, replication: str | None = None) -> None:
    """Connect to one endpoint and log in (TLS as the storage says, then the startup packet)."""
    config = instance.config
    route = server.route
    rule = route.rule
    if server.io is not None:
        _abandon(server)
    server.params = {}
    server.deployed = None
    server.login_params = []
    server.proto = Conversation()
    server.io = open_connection(endpoint, config, timeout)
    server.endpoint = endpoint
    server.endpoint_host = str(endpoint.host)
    if tls.sslmode_tries_tls_first(rule.storage.tls):
        start_tls(instance, server, rule.storage, timeout)
    # the relay reads and writes a plain server through its FileIO (Io.use_file: no keyword
    # parsing per read); a TLS one keeps none
    server.io.use_file()
    params = {"user": route.user, "database": route.db}
    if replication is not None:
        params["replication"] = replication
    params.update(rule.backend_startup_options or {})
    server.io.write(fe_write.startup_message(params))
    startup(instance, server, client, timeout)


def start_tls(instance, server, storage, timeout_ms: int) -> None:
    """SSLRequest and the TLS handshake with PostgreSQL, as libpq's sslmode says: prefer falls
    back to plaintext on 'N'; require/verify-ca/verify-full refuse it."""
    io = server.io
    io.write(fe_write.ssl_request())
    answer = io.read(1, timeout_ms)
    if answer == b"S":
        hostname = None if server.endpoint.is_unix else server.endpoint.host
        io.tls_client(instance.storage_tls_context(storage), hostname, timeout_ms)
    elif answer == b"N":
        if tls.sslmode_requires_tls(storage.tls):
            raise BackendError(f"server does not support SSL, but storage tls is '{storage.tls}'")
    else:
        raise BackendError(f"unexpected answer {answer!r} to SSLRequest")


def startup(instance, server, client, timeout_ms: int) -> None:
    """Read the login exchange up to the first ReadyForQuery."""
    io = server.io
    while True:
        mtype, payload = read_message(io, timeout_ms)
        if mtype == BE.AUTHENTICATION:
            auth.backend_authenticate(instance, server, client, fe_read.read_authentication(payload),
                                      timeout_ms)
        elif mtype == BE.PARAMETER_STATUS:
            name, value = fe_read.read_parameter_status(payload)
            server.params[name.lower()] = value
            server.deployed = None
            server.login_params.append((name, value))
        elif mtype == BE.BACKEND_KEY_DATA:
            server.key_pid, server.key_secret = fe_read.read_backend_key_data(payload)
        elif mtype == BE.READY_FOR_QUERY:
            server.proto.tx_status = fe_read.read_ready_for_query(payload)
            server.baseline = dict(server.params)     # what DISCARD ALL restores (reset.py)
            return
        elif mtype == BE.ERROR_RESPONSE:
            fields = fe_read.read_error(payload)
            raise BackendError(f"{fields.severity} {fields.sqlstate}: {fields.message}", fields)
        elif mtype == BE.NOTICE_RESPONSE:
            continue
        elif mtype == BE.NEGOTIATE_PROTOCOL_VERSION:
            continue
        else:
            raise BackendError(f"unexpected message {chr(mtype)!r} during backend startup")


def query(instance, server, sql: str, timeout_ms: int, context: str = "query"):
    """Run one simple query on a synchronized server and read to ReadyForQuery. Returns the
    ErrorFields of an ErrorResponse, or None. Raises on IO errors and timeouts."""
    server.proto.send(int(FE.QUERY))
    server.io.write(fe_write.query(sql))
    return wait_ready(instance, server, timeout_ms)


def query_rows(instance, server, sql: str, timeout_ms: int) -> list[tuple]:
    """Run one simple query on a synchronized server; its rows (bytes or None per column).
    A PostgreSQL error raises BackendError (with its ErrorFields)."""
    rows: list[tuple] = []
    server.proto.send(int(FE.QUERY))
    server.io.write(fe_write.query(sql))
    error = wait_ready(instance, server, timeout_ms, rows)
    if error is not None:
        raise BackendError(f"{error.sqlstate}: {error.message}", error)
    return rows


def wait_ready(instance, server, timeout_ms: int | None, rows: list | None = None):
    """Read server output until it is synchronized; return the last error, if any. DataRows go
    into `rows` when given, else are dropped. `timeout_ms` bounds the whole drain. A server that
    asks for COPY data is broken here: nobody will feed it (BackendError)."""
    error = None
    io = server.io
    deadline = None if timeout_ms is None else time.monotonic() + timeout_ms / 1000.0
    while not server.synchronized:
        left = None if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
        mtype, payload = read_message(io, left)
        status = fe_read.read_ready_for_query(payload) if mtype == BE.READY_FOR_QUERY else None
        server.proto.receive(int(mtype), status)
        if mtype == BE.DATA_ROW:
            if rows is not None:
                rows.append(fe_read.read_data_row(payload))
        elif mtype == BE.ERROR_RESPONSE:
            error = fe_read.read_error(payload)
        elif mtype == BE.PARAMETER_STATUS:
            name, value = fe_read.read_parameter_status(payload)
            server.params[name.lower()] = value
            server.deployed = None
        elif mtype in (BE.COPY_IN_RESPONSE, BE.COPY_BOTH_RESPONSE):
            raise BackendError("the server asks for COPY data during a service query")
        if server.proto.broken:
            raise BackendError(f"protocol out of step: {server.proto.broken}")
    return error


def close(instance, server, terminate: bool = True) -> None:
    """Close a server connection (politely with Terminate when it is healthy)."""
    io = server.io
    server.io = None
    if io is None:
        if server.fd is not None:
            try:
                os.close(server.fd)
            except OSError:
                pass
            server.fd = None
        return
    unwatch(instance, server, io)   # an idle pooled server's started read watcher (server.idle_readable)
    if terminate and not server.broken:
        try:
            io.write(fe_write.terminate())
        except Exception:
            pass
    io.close()
