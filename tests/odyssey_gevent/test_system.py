"""system.py without PostgreSQL: listener setup (TCP, names, unix socket mode, failures), the
accept loop's socket options, hand-off and global client_max, reject's clean close, and the
system machine's signal loop in the main thread (Odyssey system.c)."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import struct
import tempfile

import pytest
from gevent import get_hub, getcurrent

import machinarium as mm
from kiwi import be_write, error_codes, fe_read, fe_write
from kiwi.framer import Framer
from kiwi.header import BE
from odyssey_gevent import system
from odyssey_gevent.client import Client
from odyssey_gevent.config import reader
from odyssey_gevent.config.model import Config, Listen
from odyssey_gevent.instance import Instance
from odyssey_gevent.logger import Logger

pytestmark = pytest.mark.timeout(10)


def _instance(log_file=None, **config):
    return Instance(Config(**config), Logger("%l (%c) %m\n", to_stdout=False, log_file=log_file), "test.conf")


def _read_all(io, timeout_ms=2000) -> bytes:
    out = bytearray()
    buf = bytearray(4096)
    while (n := io.read_into(buf, timeout_ms)) > 0:
        out += buf[:n]
    return bytes(out)


def _errors(data: bytes):
    framer = Framer()
    framer.feed(data)
    return [fe_read.read_error(p) for t, p in framer if t == BE.ERROR_RESPONSE]


def _ipv6_loopback() -> bool:
    try:
        s = socket.socket(socket.AF_INET6)
        s.bind(("::1", 0))
        s.close()
        return True
    except OSError:
        return False


# ----------------------------------------------------------------------------------------------
# start_listeners

def test_listen_on_an_address(in_machine):
    def body():
        inst = _instance(listen=[Listen(host="127.0.0.1", port=0)])
        [srv] = system.start_listeners(inst)
        try:
            port = srv.io.local[1]
            c = mm.connect("127.0.0.1", port, 2000)
            c.close()
            return srv.name, port, srv.unix_path, srv.listen is inst.config.listen[0]
        finally:
            srv.io.close()

    name, port, unix_path, same = in_machine(body)
    assert name == f"127.0.0.1:{port}" and unix_path is None and same


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback")
def test_ipv6_listener_name_is_bracketed(in_machine):
    def body():
        inst = _instance(listen=[Listen(host="::1", port=0)])
        [srv] = system.start_listeners(inst)
        port = srv.io.local[1]
        srv.io.close()
        return srv.name, port

    name, port = in_machine(body)
    assert name == f"[::1]:{port}"


def test_a_host_name_binds_only_its_first_address(in_machine):
    def body():
        inst = _instance(listen=[Listen(host="localhost", port=0)])
        servers = system.start_listeners(inst)
        for s in servers:
            s.io.close()
        return len(servers)

    assert in_machine(body) == 1


def test_star_binds_every_address(in_machine):
    def body():
        inst = _instance(listen=[Listen(host="*", port=0)])
        servers = system.start_listeners(inst)
        try:
            return [(s.name, s.io.local) for s in servers]
        finally:
            for s in servers:
                s.io.close()

    found = in_machine(body)
    assert found
    for name, local in found:
        assert name in (f"{local[0]}:{local[1]}", f"[{local[0]}]:{local[1]}")
    assert any(local[0] == "0.0.0.0" for _, local in found)


@pytest.mark.parametrize("mode, expected", [("0600", 0o600), ("0644", 0o644), (None, 0o777)])
def test_unix_listener_path_and_mode(in_machine, mode, expected):
    def body():
        with tempfile.TemporaryDirectory(dir="/tmp") as d:
            inst = _instance(unix_socket_dir=d, unix_socket_mode=mode, listen=[Listen(host=None, port=6111)])
            [srv] = system.start_listeners(inst)
            try:
                path = os.path.join(d, ".s.PGSQL.6111")
                st = os.stat(path)
                c = mm.connect_unix(path, 2000)
                c.close()
                return srv.name == path, srv.unix_path == path, stat.S_ISSOCK(st.st_mode), stat.S_IMODE(st.st_mode)
            finally:
                srv.io.close()

    assert in_machine(body) == (True, True, True, expected)


def test_a_failing_listen_block_is_logged_and_the_others_still_listen(in_machine, tmp_path):
    log = tmp_path / "log"

    def body():
        [taken] = mm.listen("127.0.0.1", 0, reuseport=False)
        busy = taken.local[1]
        try:
            inst = _instance(str(log), bindwith_reuseport=False, unix_socket_dir="/nonexistent/dir",
                             unix_socket_mode="0644",
                             listen=[Listen(host="127.0.0.1", port=busy), Listen(host=None, port=6112),
                                     Listen(host="127.0.0.1", port=0)])
            servers = system.start_listeners(inst)
            for s in servers:
                s.io.close()
            return busy, [s.listen.port for s in servers]
        finally:
            taken.close()

    busy, ports = in_machine(body)
    assert ports == [0]
    text = log.read_text()
    assert f"error (server) failed to listen on 127.0.0.1:{busy}:" in text
    assert "error (server) failed to listen on unix socket:6112:" in text


def test_system_main_without_any_listener_returns_1(tmp_path):
    """Run as the pooler runs it, in the main thread (it watches signals before it listens); the
    signal handlers it installed are gone again."""
    log = tmp_path / "log"
    inst = _instance(str(log), unix_socket_dir="/nonexistent/dir", unix_socket_mode="0644",
                     listen=[Listen(host=None, port=6113)])
    before = signal.getsignal(signal.SIGHUP)
    assert mm.Machine("system", system.system_main, inst).run() == 1
    assert "fatal (server) failed to bind any listen address" in log.read_text()
    assert signal.getsignal(signal.SIGHUP) == before


def test_system_main_watches_signals_before_it_listens(tmp_path, monkeypatch):
    """A signal sent as soon as the port accepts finds its handler (SIGHUP's default action ends
    the process): start_listeners runs with the watcher already installed."""
    def caught() -> set[int]:
        """The signals this process catches (SigCgt of /proc/self/status: libev's handlers are
        installed in C, where signal.getsignal does not see them)."""
        with open("/proc/self/status") as f:
            mask = int(next(line for line in f if line.startswith("SigCgt:")).split()[1], 16)
        return {n for n in range(1, 65) if mask >> (n - 1) & 1}

    seen = []

    def listeners(instance):
        seen.append(caught())
        return []
    monkeypatch.setattr(system, "start_listeners", listeners)
    inst = _instance(str(tmp_path / "log"))
    assert mm.Machine("system", system.system_main, inst).run() == 1
    assert {signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM} <= seen[0]


# ----------------------------------------------------------------------------------------------
# accept_loop

class HandOff:
    """Stands in for the worker pool at the hand-off: records what accept_loop feeds it. With
    count 1 accept_loop starts each client with worker._spawn (the listener's hub callback
    does, or the loop itself), which _serve then has record the same, and whether it ran in
    the hub (in_hub)."""

    def __init__(self, count=2):
        self.count = count      # several workers: accept_loop hands each client to feed()
        self.fed = []
        self.in_hub = []
        self.event = mm.Event()

    def spawn(self, instance, io, listen, conn_type, peer, local):
        self.in_hub.append(getcurrent() is get_hub())
        self.feed(io, listen, conn_type, peer, local)
        return True

    def feed(self, io, listen, conn_type, peer, local):
        self.fed.append((io, listen, conn_type, peer, local))
        self.event.signal()

    def wait(self, n):
        while len(self.fed) < n:
            assert self.event.wait(3000), "nothing was fed"
            self.event = mm.Event()
        return self.fed


@pytest.fixture(params=[2, 1], ids=["workers2", "workers1"])
def workers(request):
    return request.param


def _serve(inst, workers=2, monkeypatch=None):
    [srv] = system.start_listeners(inst)
    pool = HandOff(workers)
    if workers == 1:
        monkeypatch.setattr(system, "_spawn", pool.spawn)
    co = mm.Coroutine(system.accept_loop, inst, srv, pool, name="accept")
    return srv, pool, co


def _sockopt(io, level, opt, size=None):
    return io.sock.getsockopt(level, opt, size) if size else io.sock.getsockopt(level, opt)


def test_accept_feeds_tcp_clients_with_addresses_and_options(in_machine, workers, monkeypatch):
    def body():
        inst = _instance(listen=[Listen(host="127.0.0.1", port=0)], keepalive=7, keepalive_keep_interval=3,
                         keepalive_probes=4)
        srv, pool, co = _serve(inst, workers, monkeypatch)
        try:
            c = mm.connect("127.0.0.1", srv.io.local[1], 2000)
            [(io, listen, conn_type, peer, local)] = pool.wait(1)
            linger = struct.unpack("ii", _sockopt(io, socket.SOL_SOCKET, socket.SO_LINGER, 8))
            opts = (_sockopt(io, socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0, linger,
                    _sockopt(io, socket.SOL_SOCKET, socket.SO_KEEPALIVE) != 0,
                    _sockopt(io, socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                    _sockopt(io, socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
                    _sockopt(io, socket.IPPROTO_TCP, socket.TCP_KEEPCNT))
            # the local address is not asked at accept: the client asks its socket when wanted
            client = Client(io, listen, conn_type, peer, local)
            local_ok = local is None and (client.local_host, client.local_port) == tuple(c.peer)
            result = (listen is srv.listen, conn_type, peer == c.local, local_ok, opts, inst.clients)
            io.close(), c.close()
            return result
        finally:
            srv.io.close()
            co.join(2000)

    listen_ok, conn_type, peer_ok, local_ok, opts, clients = in_machine(body)
    assert listen_ok and conn_type == "host" and peer_ok and local_ok
    assert opts == (True, (1, 0), True, 7, 3, 4)
    assert clients == 1


def test_accept_honours_nodelay_and_nolinger_settings(in_machine):
    def body():
        inst = _instance(listen=[Listen(host="127.0.0.1", port=0)], nodelay=False, disable_nolinger=True,
                         keepalive=0)
        srv, pool, co = _serve(inst)
        try:
            c = mm.connect("127.0.0.1", srv.io.local[1], 2000)
            [(io, *_)] = pool.wait(1)
            linger = struct.unpack("ii", _sockopt(io, socket.SOL_SOCKET, socket.SO_LINGER, 8))
            result = (_sockopt(io, socket.IPPROTO_TCP, socket.TCP_NODELAY), linger[0],
                      _sockopt(io, socket.SOL_SOCKET, socket.SO_KEEPALIVE))
            io.close(), c.close()
            return result
        finally:
            srv.io.close()
            co.join(2000)

    assert in_machine(body) == (0, 0, 0)


def _client_options(io):
    linger = struct.unpack("ii", _sockopt(io, socket.SOL_SOCKET, socket.SO_LINGER, 8))
    return (_sockopt(io, socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0, linger[0],
            _sockopt(io, socket.SOL_SOCKET, socket.SO_KEEPALIVE) != 0,
            _sockopt(io, socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
            _sockopt(io, socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT))


def test_accept_follows_a_reload_of_the_socket_options(in_machine, workers, monkeypatch):
    """The options live on the listener (accepted sockets inherit them on Linux): a reload that
    changes them reaches the client accepted next and every one after it, off included."""
    def body():
        inst = _instance(listen=[Listen(host="127.0.0.1", port=0)], keepalive=9, keepalive_usr_timeout=4000)
        srv, pool, co = _serve(inst, workers, monkeypatch)
        try:
            port = srv.io.local[1]
            seen = []
            for i, config in enumerate([None, Config(listen=inst.config.listen, nodelay=False, keepalive=0,
                                                     disable_nolinger=True),
                                        None, Config(listen=inst.config.listen, keepalive=11), None]):
                if config is not None:
                    inst.config = config
                c = mm.connect("127.0.0.1", port, 2000)
                io = pool.wait(i + 1)[i][0]
                seen.append(_client_options(io))
                io.close(), c.close()
            return seen
        finally:
            srv.io.close()
            co.join(2000)

    on, off, again = (True, 1, True, 9, 4000), (False, 0, False, 9, 0), (True, 1, True, 11, 0)
    assert in_machine(body) == [on, off, off, again, again]


def test_accept_unix_clients_are_local_without_addresses(in_machine, workers, monkeypatch):
    def body():
        with tempfile.TemporaryDirectory(dir="/tmp") as d:
            inst = _instance(unix_socket_dir=d, unix_socket_mode="0700", listen=[Listen(host=None, port=6114)])
            srv, pool, co = _serve(inst, workers, monkeypatch)
            try:
                c = mm.connect_unix(srv.unix_path, 2000)
                [(io, _, conn_type, peer, local)] = pool.wait(1)
                io.close(), c.close()
                return conn_type, peer, local, inst.clients
            finally:
                srv.io.close()
                co.join(2000)

    assert in_machine(body) == ("local", None, None, 1)


def test_accept_loop_ends_when_its_listener_closes(in_machine, workers, monkeypatch):
    def body():
        inst = _instance(listen=[Listen(host="127.0.0.1", port=0)])
        srv, pool, co = _serve(inst, workers, monkeypatch)
        mm.sleep(0)
        srv.io.close()
        return co.join(2000), co.dead, pool.fed

    assert in_machine(body) == (None, True, [])


def test_one_worker_starts_the_usual_client_in_the_hub(in_machine, monkeypatch):
    """With workers 1 the listener's hub callback starts a client counted under client_max
    on a listener with current options; a client after a reload (options to set) and one over
    client_max are left to the accept loop, which sets the options and refuses as before."""
    def body():
        inst = _instance(listen=[Listen(host="127.0.0.1", port=0)], client_max=2, keepalive=9)
        srv, pool, co = _serve(inst, 1, monkeypatch)
        try:
            port = srv.io.local[1]
            apps, seen = [], []
            for i, config in enumerate([None, Config(listen=inst.config.listen, client_max=2, keepalive=11)]):
                if config is not None:
                    inst.config = config
                apps.append(mm.connect("127.0.0.1", port, 2000))
                seen.append(_client_options(pool.wait(i + 1)[i][0])[3])
            over = mm.connect("127.0.0.1", port, 2000)
            over.write(fe_write.startup_message({"user": "u", "database": "d"}))
            [err] = _errors(_read_all(over))
            for io, *_ in pool.fed:
                io.close()
            for app in apps + [over]:
                app.close()
            return pool.in_hub, seen, err.sqlstate, inst.clients
        finally:
            srv.io.close()
            co.join(2000)

    in_hub, seen, sqlstate, clients = in_machine(body)
    assert in_hub == [True, False] and seen == [9, 11]
    assert (sqlstate, clients) == (error_codes.TOO_MANY_CONNECTIONS, 2)


def test_one_worker_accepts_clients_waiting_together_in_the_hub_in_order(in_machine, monkeypatch):
    """Clients already waiting in the listen queue are each accepted and started in the hub
    (one per loop turn), in the order they connected."""
    def body():
        inst = _instance(listen=[Listen(host="127.0.0.1", port=0)])
        [srv] = system.start_listeners(inst)
        apps = [mm.connect("127.0.0.1", srv.io.local[1], 2000) for _ in range(3)]
        pool = HandOff(1)
        monkeypatch.setattr(system, "_spawn", pool.spawn)
        co = mm.Coroutine(system.accept_loop, inst, srv, pool, name="accept")
        try:
            fed = pool.wait(3)
            order = [peer for _, _, _, peer, _ in fed] == [app.local for app in apps]
            for io, *_ in fed:
                io.close()
            for app in apps:
                app.close()
            return pool.in_hub, order, inst.clients
        finally:
            srv.io.close()
            co.join(2000)

    assert in_machine(body) == ([True, True, True], True, 3)


def test_global_client_max_rejects_at_accept(in_machine, workers, monkeypatch):
    def body():
        inst = _instance(listen=[Listen(host="127.0.0.1", port=0)], client_max=1)
        srv, pool, co = _serve(inst, workers, monkeypatch)
        try:
            port = srv.io.local[1]
            first = mm.connect("127.0.0.1", port, 2000)
            pool.wait(1)
            second = mm.connect("127.0.0.1", port, 2000)
            second.write(fe_write.startup_message({"user": "u", "database": "d"}))
            reply = _read_all(second)                  # the error, then a clean EOF
            fed, clients = len(pool.fed), inst.clients
            pool.fed[0][0].close(), first.close(), second.close()
            return reply, fed, clients
        finally:
            srv.io.close()
            co.join(2000)

    reply, fed, clients = in_machine(body)
    [err] = _errors(reply)
    assert (err.severity, err.sqlstate) == ("ERROR", error_codes.TOO_MANY_CONNECTIONS)
    assert err.message.startswith("odyssey: c") and \
        err.message.endswith(": too many tcp connections (global client_max 1)")
    assert (fed, clients) == (1, 1)


# ----------------------------------------------------------------------------------------------
# reject

def test_reject_delivers_the_error_then_a_clean_eof(in_machine):
    """The client already sent its startup packet, which nobody reads: closing at once could
    make the kernel send a reset that destroys the error. reject drains and closes with a FIN."""
    def body():
        [lst] = mm.listen("127.0.0.1", 0)
        try:
            c = mm.connect("127.0.0.1", lst.local[1], 2000)
            c.write(fe_write.startup_message({"user": "u", "database": "d", "application_name": "x" * 2000}))
            io = lst.accept(2000)
            message = be_write.error_response("ERROR", "53300", "go away")
            co = mm.Coroutine(system.reject, io, message)
            got = _read_all(c)            # raises ConnectionResetError on a reset
            c.close()
            co.join(3000)
            return got == message, io.closed
        finally:
            lst.close()

    assert in_machine(body) == (True, True)


# ----------------------------------------------------------------------------------------------
# the system machine in the main thread: serve, signals, shutdown

CONFIG = """
log_format "%l (%c) %m\\n"
log_file "{log}"
enable_online_restart no
unix_socket_dir "{dir}"
unix_socket_mode "0700"
listen {{
    port 6115
}}
storage "pg" {{
    type "remote"
    host "127.0.0.1"
    port 1
}}
database "only" {{
    user "only" {{
        authentication "none"
        storage "pg"
        pool "session"
    }}
}}
"""


HANDLED = ["SIGUSR1 received, reopening the log file", "SIGHUP received", "importing changes from",
           "online restart signal ignored: enable_online_restart is no"]   # (yes would start a copy of pytest)


@pytest.mark.timeout(40)
def test_system_main_serves_reloads_and_stops_on_sigterm(tmp_path):
    sock_dir = tempfile.mkdtemp(dir="/tmp")
    log = tmp_path / "log"
    conf = tmp_path / "odyssey.conf"
    conf.write_text(CONFIG.format(log=log, dir=sock_dir))
    config = reader.load(str(conf))
    inst = Instance(config, Logger(config.log_format, to_stdout=False, log_file=config.log_file), str(conf))
    sock_path = os.path.join(sock_dir, ".s.PGSQL.6115")
    box = {}

    def client_then_signals(system_machine):
        try:
            # the file exists from bind() on, but connections are refused until listen(): try
            # until one is taken (generous: a loaded 2-core CI machine is slow)
            io = None
            for _ in range(1500):
                if os.path.exists(sock_path):
                    try:
                        io = mm.connect_unix(sock_path, 2000)
                        break
                    except ConnectionRefusedError:
                        pass
                mm.sleep(10)
            assert io is not None, "the system machine never listened on " + sock_path
            io.write(fe_write.startup_message({"user": "nobody", "database": "nodb"}))
            box["reply"] = _read_all(io)
            io.close()
            # the reply proves the signal watcher is installed
            for sig in (signal.SIGUSR1, signal.SIGHUP, signal.SIGUSR2):
                os.kill(os.getpid(), sig)
            for _ in range(1500):       # pending signals arrive in any order: wait for all three
                text = log.read_text()
                if all(s in text for s in HANDLED):
                    break
                mm.sleep(10)
        finally:
            if "reply" in box:
                os.kill(os.getpid(), signal.SIGTERM)
            else:
                system_machine.stop()

    system_machine = mm.Machine("system", system.system_main, inst)
    helper = mm.Machine("helper", client_then_signals, system_machine).start()
    try:
        rc = system_machine.run()
    finally:
        helper.join(3000)
        shutil.rmtree(sock_dir, ignore_errors=True)
    [err] = _errors(box["reply"])
    assert (err.sqlstate, err.message.split(": ", 2)[2]) == ("3D000", "route for 'nodb.nobody' is not found")
    assert rc == 0
    assert not os.path.exists(sock_path)              # the unix socket is removed on the way out
    text = log.read_text()
    for line in HANDLED:
        assert line in text
    assert text.index("SIGHUP received") < text.index("importing changes from")
    assert text.index("SIGTERM received, shutting down") > max(text.index(line) for line in HANDLED)
