"""backend.py without PostgreSQL: endpoint addressing, connect/login against a scripted fake
server (kiwi.be_write on the other end of a socket pair or a loopback listener), service queries,
wait_ready's drain rules and close (Odyssey backend.c)."""
from __future__ import annotations

import itertools
import os
import re
import socket
import struct
import tempfile
from types import SimpleNamespace

import pytest
from gevent import socket as gsocket

import machinarium as mm
from kiwi import be_read, be_write
from kiwi.be_read import SSLRequest, StartupMessage
from kiwi.header import FE
from kiwi.md5 import md5_salted
from odyssey_gevent import backend
from odyssey_gevent.config.model import Config, Endpoint, Rule, Storage
from odyssey_gevent.io import FE_LIMITS, read_message, read_startup
from odyssey_gevent.logger import Logger
from odyssey_gevent.route import Route
from odyssey_gevent.server import Server
from odyssey_gevent.status import BackendError

pytestmark = pytest.mark.timeout(10)


# ----------------------------------------------------------------------------------------------
# harness

def _pair():
    a, b = gsocket.socketpair()
    return mm.Io(a), mm.Io(b)


def _instance(log_file=None, **config):
    config.setdefault("backend_connect_timeout_ms", 2000)
    rr = itertools.count()
    return SimpleNamespace(config=Config(**config), next_endpoint=lambda: next(rr),
                           logger=Logger("%l (%c) %m\n", to_stdout=False, log_file=log_file),
                           storage_tls_context=lambda storage: None)


def _server(io=None, storage=None, db="appdb", user="app", **rule_kw):
    rule = Rule(db_name=db, user_name=user, authentication="none", pool="session",
                storage=storage or Storage("pg", type="remote"), **rule_kw)
    server = Server(Route((db, user, 0), rule, db, user))
    server.io = io
    return server


def _login(pid=4242, secret=7777, status=b"I") -> bytes:
    return (be_write.auth_ok() + be_write.parameter_status("server_version", "16.2")
            + be_write.parameter_status("TimeZone", "UTC") + be_write.backend_key_data(pid, secret)
            + be_write.ready_for_query(status))


def _unused_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _copy_response(kind: bytes) -> bytes:
    """CopyInResponse ('G') / CopyOutResponse ('H'): text format, no columns."""
    return kind + struct.pack("!IbH", 7, 0, 0)


def nothing_more(io, ms=20):
    with pytest.raises(mm.TimedOut):
        io.read(1, ms)


# ----------------------------------------------------------------------------------------------
# addressing (pure)

def test_endpoint_address_unix_directory_gets_the_socket_name():
    cfg = Config()
    assert backend.endpoint_address(Endpoint("/var/run/postgresql", 5433, address_type="unix"), cfg) == \
        ("unix", "/var/run/postgresql/.s.PGSQL.5433")
    # a host starting with "/" is a unix socket whatever address_type says
    assert backend.endpoint_address(Endpoint("/tmp", 5432), cfg) == ("unix", "/tmp/.s.PGSQL.5432")


def test_endpoint_address_full_socket_path_is_kept():
    ep = Endpoint("/tmp/pg/.s.PGSQL.6000", 5432, address_type="unix")
    assert backend.endpoint_address(ep, Config()) == ("unix", "/tmp/pg/.s.PGSQL.6000")


def test_endpoint_address_tcp():
    assert backend.endpoint_address(Endpoint("db.example", 6543), Config()) == ("tcp", ("db.example", 6543))
    assert backend.endpoint_address(Endpoint("::1", 5432), Config()) == ("tcp", ("::1", 5432))


def test_storage_endpoints_default_to_the_unix_socket_dir():
    eps = [Endpoint("10.0.0.1", 5432), Endpoint("10.0.0.2", 5432)]
    assert backend.storage_endpoints(Storage("s", type="remote", endpoints=eps), Config()) is eps
    [ep] = backend.storage_endpoints(Storage("s", type="remote", port=5434), Config(unix_socket_dir="/run/pg"))
    assert ep.is_unix and (ep.host, ep.port) == ("/run/pg", 5434)
    assert backend.endpoint_address(ep, Config()) == ("unix", "/run/pg/.s.PGSQL.5434")


# ----------------------------------------------------------------------------------------------
# open_connection over loopback and unix sockets

@pytest.mark.parametrize("nodelay", [True, False])
def test_open_connection_tcp_sets_nodelay_as_configured(in_machine, nodelay):
    def body():
        [lst] = mm.listen("127.0.0.1", 0)
        try:
            port = lst.local[1]
            io = backend.open_connection(Endpoint("127.0.0.1", port), Config(nodelay=nodelay), 2000)
            peer = lst.accept(2000)
            try:
                flag = io.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                io.write(b"ping")
                return bool(flag), peer.read(4, 2000)
            finally:
                io.close(), peer.close()
        finally:
            lst.close()

    assert in_machine(body) == (nodelay, b"ping")


def test_open_connection_unix_socket_directory(in_machine):
    def body():
        with tempfile.TemporaryDirectory(dir="/tmp") as d:
            lst = mm.listen_unix(os.path.join(d, ".s.PGSQL.5999"))
            try:
                io = backend.open_connection(Endpoint(d, 5999, address_type="unix"), Config(), 2000)
                peer = lst.accept(2000)
                io.write(b"hi")
                got = peer.read(2, 2000)
                io.close(), peer.close()
                return got
            finally:
                lst.close()

    assert in_machine(body) == b"hi"


# ----------------------------------------------------------------------------------------------
# startup: the login exchange up to ReadyForQuery

def test_startup_records_params_key_and_status(in_machine):
    def body():
        pooler, pg = _pair()
        try:
            server = _server(pooler)
            pg.write(be_write.auth_ok() + be_write.notice_response("NOTICE", "00000", "hello")
                     + be_write.negotiate_protocol_version(0, ["_pq_.x"])
                     + be_write.parameter_status("server_version", "16.2")
                     + be_write.parameter_status("TimeZone", "Europe/Oslo")
                     + be_write.parameter_status("DateStyle", "ISO, MDY")
                     + be_write.backend_key_data(31337, 0xDEADBEEF) + be_write.ready_for_query(b"I"))
            backend.startup(_instance(), server, None, 2000)
            return server
        finally:
            pooler.close(), pg.close()

    server = in_machine(body)
    assert server.params == {"server_version": "16.2", "timezone": "Europe/Oslo", "datestyle": "ISO, MDY"}
    assert server.login_params == [("server_version", "16.2"), ("TimeZone", "Europe/Oslo"),
                                   ("DateStyle", "ISO, MDY")]
    assert (server.key_pid, server.key_secret) == (31337, 0xDEADBEEF)
    assert server.tx_status == b"I" and server.synchronized


def test_startup_error_response_raises_with_the_fields(in_machine):
    def body():
        pooler, pg = _pair()
        try:
            pg.write(be_write.error_response("FATAL", "3D000", 'database "nope" does not exist'))
            with pytest.raises(BackendError) as e:
                backend.startup(_instance(), _server(pooler), None, 2000)
            return e.value
        finally:
            pooler.close(), pg.close()

    err = in_machine(body)
    assert err.fields.sqlstate == "3D000" and err.fields.severity == "FATAL"
    assert str(err) == 'FATAL 3D000: database "nope" does not exist'


def test_startup_unexpected_message_raises(in_machine):
    def body():
        pooler, pg = _pair()
        try:
            pg.write(be_write.auth_ok() + be_write.data_row(["x"]))
            with pytest.raises(BackendError, match="unexpected message 'D' during backend startup"):
                backend.startup(_instance(), _server(pooler), None, 2000)
            return True
        finally:
            pooler.close(), pg.close()

    assert in_machine(body)


def test_startup_eof_and_timeout(in_machine):
    def body():
        pooler, pg = _pair()
        try:
            with pytest.raises(mm.TimedOut):
                backend.startup(_instance(), _server(pooler), None, 30)
            pg.write(be_write.auth_ok())
            pg.close()
            with pytest.raises(mm.ConnectionClosed):
                backend.startup(_instance(), _server(pooler), None, 2000)
            return True
        finally:
            pooler.close()

    assert in_machine(body)


def test_startup_answers_md5_with_the_storage_password(in_machine):
    def body():
        pooler, pg = _pair()
        try:
            # storage_password wins over the rule's password; the route's user salts the hash
            server = _server(pooler, user="app", password="client-side", storage_password="s3cret")
            salt = b"\x01\x02\x03\x04"
            pg.write(be_write.auth_md5(salt))
            got = {}

            def fake_pg():
                t, payload = read_message(pg, 2000, FE_LIMITS)
                got["msg"] = (t, be_read.read_password(payload))
                pg.write(_login())

            co = mm.Coroutine(fake_pg)
            backend.startup(_instance(), server, None, 2000)
            co.join(2000)
            return got["msg"], md5_salted("app", "s3cret", salt).encode(), server.key_pid
        finally:
            pooler.close(), pg.close()

    (t, password), expected, pid = in_machine(body)
    assert t == FE.PASSWORD_MESSAGE and password == expected and pid == 4242


# ----------------------------------------------------------------------------------------------
# connect: endpoints, startup packet, TLS negotiation

class FakePostgres:
    """A loopback listener answering `answers` connections; records each first packet."""

    def __init__(self, answers=1, ssl_answer=None, reply=None):
        [self.listener] = mm.listen("127.0.0.1", 0)
        self.port = self.listener.local[1]
        self.packets = []
        self.ssl_answer = ssl_answer
        self.reply = reply or _login()
        self.conns = []
        self.co = mm.Coroutine(self._run, answers, name="fake-pg")

    def _run(self, answers):
        try:
            self._serve(answers)
        except (OSError, mm.TimedOut):
            pass            # the pooler side gave up (a refusal test)

    def _serve(self, answers):
        for _ in range(answers):
            io = self.listener.accept(3000)
            self.conns.append(io)
            msg = read_startup(io, 2000)
            if isinstance(msg, SSLRequest):
                self.packets.append(msg)
                io.write(self.ssl_answer)
                if self.ssl_answer != b"N":
                    continue
                msg = read_startup(io, 2000)
            self.packets.append(msg)
            io.write(self.reply)

    def close(self):
        self.listener.close()
        for io in self.conns:
            io.close()


def test_connect_sends_startup_with_route_and_backend_options(in_machine):
    def body():
        pg = FakePostgres()
        try:
            storage = Storage("pg", type="remote", endpoints=[Endpoint("127.0.0.1", pg.port)])
            server = _server(storage=storage, db="sales", user="bob",
                             backend_startup_options={"application_name": "pooler"})
            backend.connect(_instance(), server, None)
            pg.co.join(2000)
            try:
                return pg.packets, server.endpoint, server.endpoint_host, server.params, server.io is not None
            finally:
                backend.close(None, server)
        finally:
            pg.close()

    packets, endpoint, host, params, connected = in_machine(body)
    [msg] = packets
    assert isinstance(msg, StartupMessage) and (msg.major, msg.minor) == (3, 0)
    assert msg.params == {"user": "bob", "database": "sales", "application_name": "pooler"}
    assert endpoint.host == "127.0.0.1" and host == "127.0.0.1"
    assert params["server_version"] == "16.2" and connected


def test_connect_skips_a_dead_endpoint_and_logs_it(in_machine, tmp_path):
    log = tmp_path / "log"

    def body():
        pg = FakePostgres()
        dead = _unused_port()
        try:
            storage = Storage("pg", type="remote",
                              endpoints=[Endpoint("127.0.0.1", dead), Endpoint("127.0.0.1", pg.port)])
            server = _server(storage=storage)
            backend.connect(_instance(str(log)), server, None)
            pg.co.join(2000)
            try:
                return dead, pg.port, server.endpoint.port
            finally:
                backend.close(None, server)
        finally:
            pg.close()

    dead, live, used = in_machine(body)
    assert used == live
    assert f"failed to connect to 127.0.0.1:{dead}" in log.read_text()


def test_connect_round_robins_the_first_endpoint(in_machine):
    def body():
        a, b = FakePostgres(), FakePostgres()
        try:
            storage = Storage("pg", type="remote",
                              endpoints=[Endpoint("127.0.0.1", a.port), Endpoint("127.0.0.1", b.port)])
            inst = _instance()
            used = []
            for _ in range(2):
                server = _server(storage=storage)
                backend.connect(inst, server, None)
                used.append(server.endpoint.port)
                backend.close(None, server)
            return used, [a.port, b.port]
        finally:
            a.close(), b.close()

    used, ports = in_machine(body)
    assert used == ports


def test_connect_tries_every_endpoint_once(in_machine, tmp_path):
    """Failover order: whatever endpoint the round robin starts at, each is tried exactly once."""
    log = tmp_path / "log"

    def body():
        ports = [_unused_port() for _ in range(4)]
        storage = Storage("pg", type="remote", endpoints=[Endpoint("127.0.0.1", p) for p in ports])
        with pytest.raises(BackendError):
            backend.connect(_instance(str(log)), _server(storage=storage), None)
        return ports

    ports = in_machine(body)
    tried = [int(p) for p in re.findall(r"failed to connect to 127\.0\.0\.1:(\d+)", log.read_text())]
    assert sorted(tried) == sorted(ports)


def test_connect_all_endpoints_dead_raises(in_machine):
    def body():
        storage = Storage("pg", type="remote", endpoints=[Endpoint("127.0.0.1", _unused_port())])
        server = _server(storage=storage)
        with pytest.raises(BackendError, match=f"failed to connect to remote server {server.id}"):
            backend.connect(_instance(), server, None)
        return server.io

    assert in_machine(body) is None


def test_connect_tls_prefer_falls_back_to_plaintext_on_N(in_machine):
    def body():
        pg = FakePostgres(ssl_answer=b"N")
        try:
            storage = Storage("pg", type="remote", tls="prefer", endpoints=[Endpoint("127.0.0.1", pg.port)])
            server = _server(storage=storage)
            backend.connect(_instance(), server, None)
            pg.co.join(2000)
            backend.close(None, server)
            return [type(p).__name__ for p in pg.packets]
        finally:
            pg.close()

    assert in_machine(body) == ["SSLRequest", "StartupMessage"]


@pytest.mark.parametrize("mode, answer, message", [
    ("require", b"N", "server does not support SSL, but storage tls is 'require'"),
    ("verify_full", b"N", "server does not support SSL, but storage tls is 'verify_full'"),
    ("prefer", b"E", "unexpected answer b'E' to SSLRequest"),
])
def test_connect_tls_refusals(in_machine, mode, answer, message):
    def body():
        pg = FakePostgres(ssl_answer=answer)
        try:
            storage = Storage("pg", type="remote", tls=mode, endpoints=[Endpoint("127.0.0.1", pg.port)])
            server = _server(storage=storage)
            with pytest.raises(BackendError) as e:
                backend.connect(_instance(), server, None)
            backend.close(None, server)
            return str(e.value)
        finally:
            pg.close()

    assert in_machine(body) == message


# ----------------------------------------------------------------------------------------------
# query and wait_ready

def test_query_reads_to_ready_for_query_and_tracks_state(in_machine):
    def body():
        pooler, pg = _pair()
        try:
            server = _server(pooler)
            got = {}

            def fake_pg():
                t, payload = read_message(pg, 2000, FE_LIMITS)
                got["q"] = (t, be_read.read_query(payload))
                pg.write(be_write.command_complete("BEGIN") + be_write.parameter_status("search_path", "x")
                         + be_write.ready_for_query(b"T"))

            co = mm.Coroutine(fake_pg)
            error = backend.query(_instance(), server, "BEGIN", 2000)
            co.join(2000)
            return error, got["q"], server.params, server.tx_status, server.synchronized, server.sync_reply
        finally:
            pooler.close(), pg.close()

    error, q, params, status, synced, replies = in_machine(body)
    assert error is None and q == (FE.QUERY, "BEGIN")
    assert params == {"search_path": "x"} and status == b"T" and synced and replies == 1


def test_query_returns_the_error_and_still_drains(in_machine):
    def body():
        pooler, pg = _pair()
        try:
            server = _server(pooler)
            pg.write(be_write.error_response("ERROR", "42601", "syntax error")
                     + be_write.ready_for_query(b"E"))
            error = backend.query(_instance(), server, "SELEC", 2000)
            assert read_message(pg, 2000, FE_LIMITS)[0] == FE.QUERY
            nothing_more(pooler)               # every byte of the answer was read
            return error.sqlstate, error.message, server.tx_status, server.synchronized
        finally:
            pooler.close(), pg.close()

    assert in_machine(body) == ("42601", "syntax error", b"E", True)


def test_query_keeps_only_the_last_error(in_machine):
    def body():
        pooler, pg = _pair()
        try:
            server = _server(pooler)
            pg.write(be_write.error_response("ERROR", "22012", "first")
                     + be_write.error_response("ERROR", "XX000", "second") + be_write.ready_for_query())
            return backend.query(_instance(), server, "SELECT 1/0", 2000).message
        finally:
            pooler.close(), pg.close()

    assert in_machine(body) == "second"


def test_wait_ready_on_a_synchronized_server_reads_nothing(in_machine):
    def body():
        pooler, pg = _pair()
        try:
            pg.write(be_write.ready_for_query())      # must stay unread
            server = _server(pooler)
            assert backend.wait_ready(_instance(), server, None) is None
            return pooler.read(6, 1000)
        finally:
            pooler.close(), pg.close()

    assert in_machine(body) == be_write.ready_for_query()


def test_wait_ready_drains_copy_out(in_machine):
    def body():
        pooler, pg = _pair()
        try:
            server = _server(pooler)
            server.proto.send(int(FE.QUERY))
            pg.write(_copy_response(b"H") + b"d" + struct.pack("!I", 8) + b"row\n"
                     + b"c" + struct.pack("!I", 4) + be_write.command_complete("COPY 1")
                     + be_write.ready_for_query())
            error = backend.wait_ready(_instance(), server, 2000)
            return error, server.synchronized, server.copy_mode
        finally:
            pooler.close(), pg.close()

    assert in_machine(body) == (None, True, False)


@pytest.mark.parametrize("kind", [b"G", b"W"])
def test_wait_ready_refuses_a_server_asking_for_copy_data(in_machine, kind):
    def body():
        pooler, pg = _pair()
        try:
            server = _server(pooler)
            server.proto.send(int(FE.QUERY))
            pg.write(_copy_response(kind))
            with pytest.raises(BackendError, match="asks for COPY data"):
                backend.wait_ready(_instance(), server, 2000)
            return True
        finally:
            pooler.close(), pg.close()

    assert in_machine(body)


def test_wait_ready_protocol_out_of_step(in_machine):
    def body():
        pooler, pg = _pair()
        try:
            server = _server(pooler)
            server.proto.send(int(FE.QUERY))
            pg.write(be_write.parse_complete())       # no Parse outstanding
            with pytest.raises(BackendError, match="protocol out of step"):
                backend.wait_ready(_instance(), server, 2000)
            return server.proto.broken
        finally:
            pooler.close(), pg.close()

    assert in_machine(body)


def test_wait_ready_timeout_bounds_the_whole_drain(in_machine):
    """A server that keeps talking but never sends ReadyForQuery: each message arrives well
    within the timeout, yet the drain as a whole must give up."""
    def body():
        pooler, pg = _pair()
        sent = []

        def chatter():
            for _ in range(300):                # bounded: about 6 s at most
                pg.write(be_write.notice_response("NOTICE", "00000", "still here"))
                sent.append(1)
                mm.sleep(20)

        co = mm.Coroutine(chatter)
        try:
            server = _server(pooler)
            server.proto.send(int(FE.QUERY))
            with pytest.raises(mm.TimedOut):
                backend.wait_ready(_instance(), server, 200)
            return len(sent)
        finally:
            co.cancel()
            pooler.close(), pg.close()

    assert in_machine(body) < 300


# ----------------------------------------------------------------------------------------------
# close

def test_close_healthy_sends_terminate(in_machine):
    def body():
        pooler, pg = _pair()
        try:
            server = _server(pooler)
            backend.close(None, server)
            t, payload = read_message(pg, 2000, FE_LIMITS)
            eof = pg.read_into(bytearray(1), 2000)
            backend.close(None, server)                # idempotent
            return t, payload, eof, server.io, server.connected
        finally:
            pg.close()

    assert in_machine(body) == (FE.TERMINATE, b"", 0, None, False)


@pytest.mark.parametrize("why", ["broken", "no_terminate"])
def test_close_without_terminate(in_machine, why):
    def body():
        pooler, pg = _pair()
        try:
            server = _server(pooler)
            if why == "broken":
                server.broken = True
                backend.close(None, server)
            else:
                backend.close(None, server, terminate=False)
            return pg.read_into(bytearray(16), 2000)
        finally:
            pg.close()

    assert in_machine(body) == 0        # EOF, not a Terminate


def test_close_a_parked_fd(in_machine):
    def body():
        pooler, pg = _pair()
        try:
            server = _server()
            server.fd = pooler.detach()
            assert server.connected
            backend.close(None, server)
            eof = pg.read_into(bytearray(16), 2000)
            return eof, server.fd, server.connected
        finally:
            pg.close()

    assert in_machine(body) == (0, None, False)
