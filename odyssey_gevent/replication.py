"""Replication connections: a client whose startup packet says `replication=true` (physical,
pg_basebackup, pg_receivewal) or `replication=database` (logical, pg_recvlogical) gets a server of
its own, logged in with the same `replication` value, and every byte is relayed both ways until
either side closes (mirrors the replication relay of Odyssey sources/frontend.c).

Such a client is routed and authenticated like any other (its rule, hba_file, client_max), but
its server never enters a pool: it is not counted in pool_size, no reset runs, nothing is
parsed after the login, and the server is closed when the client leaves. `replication=false`
(or off/no/0) is an ordinary connection.
"""
from __future__ import annotations

import machinarium
from kiwi import be_write, error_codes
from kiwi.errors import KiwiError
from machinarium.poll import wait_any
from odyssey_gevent import backend
from odyssey_gevent.server import Server
from odyssey_gevent.status import BackendError, FrontendError, Status

_TRUE = {"true", "on", "yes", "1"}
_FALSE = {"false", "off", "no", "0"}
_BUFFER = 64 * 1024


def mode(value: str) -> str | None:
    """The `replication` startup value as the server will get it: "database", "true", or None
    for an ordinary connection. Anything else is the client's error (08006, as C Odyssey)."""
    v = value.strip().lower()
    if v == "database":
        return "database"
    if v in _TRUE:
        return "true"
    if v in _FALSE:
        return None
    raise FrontendError(error_codes.CONNECTION_FAILURE, 'invalid value for parameter "replication"')


def setup(frontend) -> None:
    """Log the client's own server in and answer the client's login with that server's
    ParameterStatus, then BackendKeyData and ReadyForQuery."""
    instance = frontend.instance
    client = frontend.client
    server = Server(client.route)
    frontend.replication_server = server
    try:
        backend.connect(instance, server, client, replication=frontend.replication)
    except backend.TsaMismatch as e:
        raise FrontendError(error_codes.CONNECTION_FAILURE,
                            f"can't find suitable host for tsa '{e.value}' of user "
                            f"{client.database}.{client.user}", severity="FATAL") from None
    except (BackendError, OSError, machinarium.TimedOut, KiwiError) as e:
        instance.logger.error("replication", client, server, "failed to connect to the server: %s", e)
        fields = getattr(e, "fields", None)
        if fields is not None:      # e.g. no pg_hba line for replication: the client needs the reason
            raise FrontendError(fields.sqlstate, fields.message, severity=fields.severity,
                                detail=fields.detail, hint=fields.hint) from None
        raise FrontendError(error_codes.CONNECTION_FAILURE,
                            f"failed to connect to remote server {server.id}", severity="FATAL") from None
    if instance.config.log_session:
        instance.logger.info("replication", client, server, "replication connection (%s) to %s",
                             frontend.replication, server.endpoint)
    out = [be_write.parameter_status(name, value) for name, value in server.login_params]
    out.append(be_write.backend_key_data(client.key_pid, client.key_secret))
    out.append(be_write.ready_for_query(b"I"))
    try:
        client.io.write(b"".join(out))
    except BaseException:
        close(frontend)
        raise


def relay(frontend) -> Status:
    """Copy bytes both ways until one side closes; the server is closed in any case."""
    client = frontend.client
    server = frontend.replication_server
    ios = [client.io, server.io]
    buf = bytearray(_BUFFER)
    view = memoryview(buf)
    try:
        while True:
            ready = wait_any(ios)
            if ready & 1:
                try:
                    n = client.io.read_into(buf)
                except (OSError, machinarium.TimedOut):
                    return Status.ECLIENT_READ
                if n == 0:
                    return Status.OK
                try:
                    server.io.write(view[:n])
                except (OSError, machinarium.TimedOut):
                    return Status.ESERVER_WRITE
            if ready & 2:
                try:
                    n = server.io.read_into(buf)
                except (OSError, machinarium.TimedOut):
                    return Status.ESERVER_READ
                if n == 0:
                    return Status.OK       # the server ended the stream (after its own error, if any)
                try:
                    client.io.write(view[:n])
                except (OSError, machinarium.TimedOut):
                    return Status.ECLIENT_WRITE
    finally:
        close(frontend)


def close(frontend) -> None:
    server = frontend.replication_server
    if server is not None:
        frontend.replication_server = None
        server.broken = True        # no Terminate: the stream may be mid-message
        backend.close(frontend.instance, server)
