"""How a session ends (status.py's error model): `Frontend.run` turns each way a stage ends into
a Status, and `cleanup` alone decides what the client is told and what happens to its server.
Clients get PostgreSQL-style words; OS error texts go to the log only (Odyssey frontend.c)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
from gevent import socket as gsocket

import machinarium as mm
from kiwi import fe_read
from kiwi.header import BE
from odyssey_gevent.client import Client
from odyssey_gevent.config.model import Rule
from odyssey_gevent.frontend import Frontend
from odyssey_gevent.io import read_message
from odyssey_gevent.logger import Logger
from odyssey_gevent.server import Server
from odyssey_gevent.status import ClientGone, FrontendError, ServerError, Status

pytestmark = pytest.mark.timeout(10)


class FakeRouter:
    def __init__(self):
        self.calls = []

    def close(self, client):
        self.calls.append("close")
        server, client.server = client.server, None
        return server

    def detach(self, client):
        self.calls.append("detach")
        client.server = None

    def unroute(self, client):
        self.calls.append("unroute")


def _session(end, log_file, attached=True):
    """End a session with `end`: an exception its first stage raises (through Frontend.run), or
    the Status a request loop returned; returns (messages the client got, router calls, the
    server, the log)."""
    a, b = gsocket.socketpair()
    s1, s2 = gsocket.socketpair()
    app, pg = mm.Io(a), mm.Io(s2)
    router = FakeRouter()
    instance = SimpleNamespace(config=SimpleNamespace(log_session=False), router=router, workers=1, clients=1,
                               logger=Logger("%l (%c) %m\n", to_stdout=False, log_file=log_file),
                               client_closed=lambda *args: None, successor=None)
    client = Client(mm.Io(b), None, "host", ("127.0.0.1", 40000))
    client.rule = Rule(db_name="db", user_name="u", authentication="none", pool="session")
    server = Server(None)
    server.io = mm.Io(s1)
    if attached:
        client.server = server
    fe = Frontend(instance, client)
    if isinstance(end, Status):
        fe.cleanup(end)                 # what run does with the Status the request loop returned
    else:
        def stage():
            raise end
        fe.startup = stage
        fe.run()
    got = []
    while True:
        try:
            t, payload = read_message(app, 1000)
        except (OSError, mm.ConnectionClosed):
            break
        got.append((t, fe_read.read_error(payload) if t == BE.ERROR_RESPONSE else payload))
    app.close(), pg.close()
    return got, router.calls, server, open(log_file).read() if log_file else ""


def test_server_read_error_tells_postgresql_words_and_logs_the_os_error(in_machine, tmp_path):
    log = str(tmp_path / "log")
    cause = ConnectionResetError(104, "Connection reset by peer")
    got, calls, server, text = in_machine(_session, ServerError(Status.ESERVER_READ, cause), log)
    [(t, err)] = got
    assert t == BE.ERROR_RESPONSE and err.sqlstate == "08006" and err.severity == "ERROR"
    assert err.message.endswith(f"remote server read/write error {server.id}: could not receive data from server")
    assert "Errno" not in err.message and "reset by peer" not in err.message
    assert "[Errno 104] Connection reset by peer" in text and "OD_ESERVER_READ" in text
    assert calls == ["close", "unroute"] and server.broken and server.io is None     # never reused


def test_server_write_error(in_machine, tmp_path):
    got, calls, server, _ = in_machine(_session, ServerError(Status.ESERVER_WRITE, BrokenPipeError(32, "x")),
                                       str(tmp_path / "log"))
    [(_, err)] = got
    assert err.message.endswith(": could not send data to server") and calls == ["close", "unroute"]


@pytest.mark.parametrize("status", [Status.ECLIENT_READ, Status.ECLIENT_WRITE])
def test_client_gone_keeps_the_server_for_reset(in_machine, tmp_path, status, monkeypatch):
    from odyssey_gevent import frontend
    monkeypatch.setattr(frontend.reset, "reset", lambda instance, server, clean: True)
    got, calls, server, _ = in_machine(_session, ClientGone(status, "gone"), str(tmp_path / "log"))
    assert got == [] and calls == ["detach", "unroute"] and not server.broken


def test_frontend_error_is_sent_as_is(in_machine, tmp_path):
    err = FrontendError("53300", "too many active clients", severity="FATAL")
    got, calls, _, _ = in_machine(_session, err, str(tmp_path / "log"), False)
    [(_, sent)] = got
    assert (sent.sqlstate, sent.severity) == ("53300", "FATAL") and sent.message.endswith(": too many active clients")
    assert calls == ["unroute"]


@pytest.mark.parametrize("status, detail", [
    (Status.EIDLE_TIMEOUT, "Connection was dropped by Odyssey due to idle timeout"),
    (Status.EIDLE_IN_TRANSACTION_TIMEOUT, "Connection was dropped by Odyssey due to idle in transaction timeout"),
    (Status.EIDLE_IN_REQUEST_TIMEOUT, "Connection was dropped by Odyssey due to idle in the middle of a request "
                                      "timeout (pool_idle_in_request_timeout_ms)"),
])
def test_idle_timeouts_tell_odysseys_words(in_machine, tmp_path, status, detail):
    got, _, _, _ = in_machine(_session, status, str(tmp_path / "log"), False)
    [(_, err)] = got
    assert (err.sqlstate, err.severity, err.detail) == ("08006", "FATAL", detail)
    assert err.message.endswith(": Odyssey has dropped the connection") and err.hint is None


def test_only_produced_statuses_exist():
    """Every Status is produced somewhere (issue 9: nothing unused is kept)."""
    assert {s.name for s in Status} == {
        "OK", "TERMINATE", "ECLIENT_READ", "ECLIENT_WRITE", "ECLIENT_PROTOCOL_ERROR", "ESERVER_READ",
        "ESERVER_WRITE", "EIDLE_TIMEOUT", "EIDLE_IN_TRANSACTION_TIMEOUT", "EIDLE_IN_REQUEST_TIMEOUT",
        "EGRACEFUL_SHUTDOWN", "ECLIENT_KILLED", "EATTACH_TOO_MANY_CONNECTIONS", "ESERVER_CONNECT",
        "EATTACH_TARGET_SESSION_ATTRS_MISMATCH"}


def test_a_killed_client_is_told_odysseys_words(in_machine, tmp_path):
    """KILL_CLIENT: FATAL 08006 with C's detail and hint (od_frontend_report_drop)."""
    got, _, _, _ = in_machine(_session, Status.ECLIENT_KILLED, str(tmp_path / "log"), False)
    [(_, err)] = got
    assert (err.sqlstate, err.severity, err.hint) == ("08006", "FATAL", "Try to reconnect")
    assert err.detail == "Connection was killed by Odyssey configuration reloading or console command"
    assert err.message.endswith(": Odyssey has dropped the connection")


def test_graceful_shutdown_tells_57p01(in_machine, tmp_path):
    got, _, _, _ = in_machine(_session, Status.EGRACEFUL_SHUTDOWN, str(tmp_path / "log"), False)
    [(_, err)] = got
    assert (err.sqlstate, err.severity) == ("57P01", "FATAL")
    assert err.message.endswith(": Odyssey is shutting down: the connection is closed")
