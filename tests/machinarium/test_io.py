"""IO: listen/accept/connect, reads and writes with timeouts, unix sockets, socket options, moving
a connection between machines."""
from __future__ import annotations

import errno
import os
import socket
import stat
import threading
import time

import pytest

import machinarium as mm

from .conftest import run_in_machine


def _pair():
    """A connected (server_io, client_io) pair over loopback TCP in the current machine."""
    (lst,) = mm.listen("127.0.0.1", 0, backlog=8)
    port = lst.local[1]
    client = mm.connect("127.0.0.1", port, timeout_ms=2000)
    server = lst.accept(2000)
    lst.close()
    return server, client


def _tcp_and_unix_pairs(path: str) -> tuple:
    """Two connected (accepted_io, connected_io) pairs in the current machine: loopback TCP
    (_pair) and a Unix socket at `path`."""
    server, client = _pair()
    (lst,) = [mm.listen_unix(path)]
    uclient = mm.connect_unix(path, timeout_ms=2000)
    userver = lst.accept(2000)
    lst.close()
    return (server, client), (userver, uclient)


def test_accept_connect_read_write_roundtrip():
    def body():
        server, client = _pair()
        client.set_nodelay()
        client.write(b"hello world")
        assert server.read(5, 1000) == b"hello"
        buf = bytearray(64)
        n = server.read_into(buf, 1000)
        server.writev([b"ab", memoryview(b"cd"), bytearray(b"ef")], 1000)
        back = client.read(6, 1000)
        peer = server.peer
        server.close(), client.close()
        return bytes(buf[:n]), back, peer[0]

    assert run_in_machine(body) == (b" world", b"abcdef", "127.0.0.1")


def test_a_connected_io_holds_the_socket_an_accepted_one_holds(tmp_path):
    """connect() and connect_unix() keep the connected socket as accept keeps one (machinarium's
    socket object, its read watcher a plain slot, where gevent's socket class has a __getattr__
    that leaves 3.11's attribute loads on it unspecialized): reads and writes both ways, the
    peer and the close work as before."""
    path = str(tmp_path / "s.sock")

    def body():
        out = []
        for accepted, connected in _tcp_and_unix_pairs(path):
            assert type(connected.sock) is type(accepted.sock)
            assert connected.sock._read_event is not None and not connected.sock.closed
            connected.write(b"ping")
            assert accepted.read(4, 1000) == b"ping"
            accepted.write(b"pong")
            assert connected.read(4, 1000) == b"pong"
            out.append(connected.peer)
            connected.close()
            assert connected.sock.closed
            with pytest.raises(mm.ConnectionClosed):   # the peer sees the close
                accepted.read(1, 1000)
            accepted.close()
        return out

    tcp, unix = run_in_machine(body)
    assert tcp[0] == "127.0.0.1" and unix == path


def test_use_file_reads_and_writes_the_socket_until_closed_detached_or_tls(tmp_path):
    """Io.use_file keeps a FileIO's readinto and write over a plain socket's fd (the relay reads
    and writes a pooled server through them): they move the socket's bytes, None where the
    socket has none to give; they go, the FileIO closed, with the socket's close, detach and
    TLS upgrade (a late caller gets ValueError, never the bytes of a socket that took the fd's
    number); a TLS or detached socket keeps none, and a second call keeps the first."""
    path = str(tmp_path / "s.sock")

    def body():
        for accepted, connected in _tcp_and_unix_pairs(path):
            assert connected._fread is None and accepted._fread is None    # none unless asked
            assert connected._fwrite is None and accepted._fwrite is None
            connected.use_file()
            read, write = connected._fread, connected._fwrite
            f = read.__self__
            assert write.__self__ is f and f.fileno() == connected.fileno()
            connected.use_file()
            assert connected._fread.__self__ is f
            buf = bytearray(16)
            assert read(buf) is None            # nothing to read: no BlockingIOError
            accepted.write(b"ping")
            deadline = time.monotonic() + 2
            n = None
            while n is None and time.monotonic() < deadline:
                n = read(buf)
            assert bytes(buf[:n]) == b"ping"
            assert write(b"pong") == 4
            assert accepted.read(4, 1000) == b"pong"
            connected.close()
            assert connected._fread is None and connected._fwrite is None and f.closed
            with pytest.raises(ValueError):
                read(buf)
            with pytest.raises(ValueError):
                write(b"x")
            accepted.close()
        # detached: they go with the fd; a detached Io keeps none, nor one attached
        server, client = _pair()
        client.use_file()
        f = client._fread.__self__
        fd = client.detach()
        assert client._fread is None and client._fwrite is None and f.closed
        client.use_file()
        assert client._fread is None
        io = mm.Io.attach(fd)
        assert io._fread is None
        io.close()
        server.close()
        return True

    assert run_in_machine(body)


def test_large_write_completes_while_peer_reads_slowly():
    payload = os.urandom(4 * 1024 * 1024)

    def body():
        server, client = _pair()
        got = bytearray()

        def reader():
            buf = bytearray(65536)
            while len(got) < len(payload):
                n = server.read_into(buf, 5000, wait_first=True)
                assert n
                got.extend(buf[:n])

        r = mm.Coroutine(reader, name="reader")
        client.write(payload, 5000)
        r.join(5000)
        server.close(), client.close()
        return bytes(got) == payload

    assert run_in_machine(body)


def test_read_on_silent_peer_times_out():
    def body():
        server, client = _pair()
        t = time.monotonic()
        with pytest.raises(mm.TimedOut):
            server.read(1, 50)
        with pytest.raises(mm.TimedOut):
            server.read_into(bytearray(8), 20)
        with pytest.raises(mm.TimedOut):
            server.wait_readable(20)
        elapsed = time.monotonic() - t
        server.close(), client.close()
        return elapsed

    assert 0.08 <= run_in_machine(body) < 2.0


def test_closed_peer_gives_connection_closed_and_zero():
    def body():
        server, client = _pair()
        client.write(b"ab")
        client.close()
        with pytest.raises(mm.ConnectionClosed) as ei:
            server.read(5, 1000)
        assert isinstance(ei.value, OSError)
        assert server.read_into(bytearray(8), 1000) == 0
        server.close()

    run_in_machine(body)


def test_accept_timeout():
    def body():
        (lst,) = mm.listen("127.0.0.1", 0)
        with pytest.raises(mm.TimedOut):
            lst.accept(30)
        lst.close()

    run_in_machine(body)


def test_connect_to_closed_port_is_quick_oserror():
    def body():
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()  # nothing listens there now
        t = time.monotonic()
        with pytest.raises(ConnectionRefusedError):
            mm.connect("127.0.0.1", port, timeout_ms=2000)
        return time.monotonic() - t

    assert run_in_machine(body) < 0.5


def test_connect_times_out_when_listener_backlog_is_full():
    def body():
        (lst,) = mm.listen("127.0.0.1", 0, backlog=0)  # never accepts
        port = lst.local[1]
        ok, timed_out = [], 0
        for _ in range(8):
            try:
                ok.append(mm.connect("127.0.0.1", port, timeout_ms=100))
            except mm.TimedOut:
                timed_out += 1
                break
        for io in ok:
            io.close()
        lst.close()
        return timed_out

    assert run_in_machine(body) == 1


def test_ipv6_loopback():
    if not socket.has_ipv6:
        pytest.skip("no IPv6")

    def body():
        try:
            (lst,) = mm.listen("::1", 0)
        except OSError as e:
            pytest.skip(f"IPv6 loopback unavailable: {e}")
        c = mm.connect("::1", lst.local[1], timeout_ms=1000)
        s = lst.accept(1000)
        c.write(b"v6")
        data = s.read(2, 1000)
        for io in (s, c, lst):
            io.close()
        return data

    assert run_in_machine(body) == b"v6"


def test_listen_all_interfaces_and_reuseport():
    def body():
        ios = mm.listen("127.0.0.1", 0, reuseport=True)
        port = ios[0].local[1]
        again = mm.listen("127.0.0.1", port, reuseport=True)  # SO_REUSEPORT allows a twin
        for io in ios + again:
            io.close()
        return len(ios), len(again)

    assert run_in_machine(body) == (1, 1)


def test_unix_socket_mode_stale_file_and_roundtrip(tmp_path):
    path = str(tmp_path / "s.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)  # bound but never listening: a stale file
    stale.close()

    def body():
        lst = mm.listen_unix(path, mode=0o600, backlog=4)
        mode = stat.S_IMODE(os.stat(path).st_mode)
        c = mm.connect_unix(path, 1000)
        s = lst.accept(1000)
        c.set_nodelay(), c.set_keepalive(10, 5, 3, 1000)  # no-ops on unix sockets
        c.write(b"unix")
        data = s.read(4, 1000)
        with pytest.raises(OSError) as ei:
            mm.listen_unix(path)  # a live listener is not "stale" (its probe shows up as a connection)
        assert ei.value.errno == errno.EADDRINUSE
        for io in (s, c, lst):
            io.close()
        return mode, data

    assert run_in_machine(body) == (0o600, b"unix")


def test_listen_unix_refuses_regular_file(tmp_path):
    path = tmp_path / "not-a-socket"
    path.write_text("x")
    with pytest.raises(FileExistsError):
        run_in_machine(mm.listen_unix, str(path))


def test_socket_options():
    def body():
        server, client = _pair()
        client.set_nodelay()
        client.set_keepalive(idle=15, interval=5, probes=3, user_timeout=2000)
        client.set_linger0()
        s = client.sock
        opts = (s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY),
                s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
                s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
                s.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT))
        client.close()
        # linger 0: the close is a reset, so the server sees an error or EOF, never a hang
        with pytest.raises((mm.ConnectionClosed, ConnectionResetError)):
            server.read(1, 1000)
        server.close()
        return opts

    assert run_in_machine(body) == (1, 1, 15, 5, 3, 2000)


def test_cancel_interrupts_blocked_read():
    def body():
        server, client = _pair()

        def blocked():
            server.read(1)

        c = mm.Coroutine(blocked, name="blocked-read")
        mm.sleep(10)
        c.cancel()
        c.join(1000)
        cancelled = c.cancelled
        server.close(), client.close()
        return cancelled

    assert run_in_machine(body)


def test_move_connection_between_machines():
    handoff = mm.Channel()
    done = threading.Event()
    box = {}

    def worker():
        fd = handoff.read(5000).data
        io = mm.Io.attach(fd)
        io.write(b"from-worker:" + io.read(4, 2000))
        box["worker_thread"] = threading.current_thread().name
        io.close()
        done.set()

    def acceptor():
        w = mm.Machine("worker", worker).start()
        server, client = _pair()
        client.write(b"ping")
        handoff.write(mm.Msg("fd", server.detach()))
        reply = client.read(len(b"from-worker:ping"), 3000)
        assert client.read_into(bytearray(4), 2000) == 0  # worker closed it
        client.close()
        w.join(5000)
        return reply

    assert run_in_machine(acceptor, name="acceptor") == b"from-worker:ping"
    assert done.is_set() and box["worker_thread"] == "worker"


def test_an_attached_fd_moves_again_and_closes_like_an_accepted_socket():
    """Io.attach wraps the fd as accept does (a pooled server with workers > 1 is attached at
    every transaction): reads and writes, detaches again for the next machine, and a close wakes
    a reader waiting on it with EBADF."""
    def body():
        server, client = _pair()
        io = mm.Io.attach(server.detach())
        client.write(b"one")
        assert io.read(3, 2000) == b"one"
        io = mm.Io.attach(io.detach())          # moved a second time
        assert io.peer is not None
        io.write(b"two")
        assert client.read(3, 2000) == b"two"
        errors = []

        def reader():
            try:
                io.read(1, 2000)
            except OSError as e:
                errors.append(e.errno)

        r = mm.Coroutine(reader, name="reader")
        mm.sleep(10)
        io.close()
        r.join(1000)
        assert client.read_into(bytearray(4), 2000) == 0
        client.close()
        return errors

    assert run_in_machine(body) == [errno.EBADF]


def test_an_accepted_socket_has_its_read_watcher_and_the_native_calls_until_closed():
    """An accepted Io's socket object: its read watcher from the start (None once closed), the
    native socket's calls by name, and no catch-all delegation (an unknown name is an error)."""
    def body():
        server, client = _pair()
        sock = server.sock
        watcher = sock._read_event
        got = (watcher is not None and watcher.fd == server.fileno(), sock.family == socket.AF_INET,
               sock.getpeername() == client.local, sock.getsockname() == client.peer,
               sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE) == socket.SOCK_STREAM)
        with pytest.raises(AttributeError):
            sock.makefile
        server.close(), client.close()
        return got, sock._read_event, sock.closed

    got, after, closed = run_in_machine(body)
    assert got == (True, True, True, True, True)
    assert after is None and closed


def test_closing_io_wakes_a_waiting_reader_with_oserror():
    def body():
        server, client = _pair()
        errors = []

        def reader():
            try:
                server.read(1, 2000)
            except OSError as e:
                errors.append(e)

        r = mm.Coroutine(reader, name="reader")
        mm.sleep(10)
        server.close()
        r.join(1000)
        client.close()
        return len(errors)

    assert run_in_machine(body) == 1


def test_reverse_dns_confirms_loopback_and_rejects_garbage():
    import socket
    expected = socket.gethostbyaddr("127.0.0.1")[0]     # the system resolver's own answer

    def body():
        return mm.reverse_dns("127.0.0.1"), mm.reverse_dns("not an address")
    name, bad = run_in_machine(body)
    assert name == expected
    assert bad is None


def test_readable_now_sees_data_and_eof_without_consuming():
    def body():
        from gevent import socket as gsocket
        a, b = gsocket.socketpair()
        ia, ib = mm.Io(a), mm.Io(b)
        try:
            quiet = ia.readable_now()
            ib.write(b"x")
            mm.sleep(0)
            with_data = ia.readable_now()
            byte = ia.read(1, 1000)                  # the check consumed nothing
            ib.close()
            mm.sleep(0)
            at_eof = ia.readable_now()
        finally:
            ia.close()
        return quiet, with_data, byte, at_eof
    assert run_in_machine(body) == (False, True, b"x", True)


def test_wait_any_with_kept_timers_times_out_each_wait_in_full():
    """A caller's kept timeout timer (the relay's) must wait the whole timeout on every reuse: a
    fired one-shot libev timer started again fires at once, so every later wait returned 0
    immediately (a busy loop that never saw the socket become readable)."""
    def body():
        server, client = _pair()
        timers = {}
        spans = []
        for _ in range(3):
            t0 = time.monotonic()
            assert mm.wait_any((server,), 100, timers) == 0
            spans.append(time.monotonic() - t0)
        client.write(b"x")
        assert mm.wait_any((server,), 100, timers) == 1
        server.close(), client.close()
        return spans

    spans = run_in_machine(body)
    assert all(s >= 0.08 for s in spans), spans


def test_timed_read_waits_for_late_bytes_in_pieces_and_times_out():
    """read(n, timeout_ms) that finds nothing waits on a bare timer and the read watcher: the
    late bytes (here in two pieces), the timeout as TimedOut, and the watcher free afterwards."""
    def body():
        server, client = _pair()
        client.set_nodelay()

        def later():
            mm.sleep(20)
            client.write(b"ab")
            mm.sleep(20)
            client.write(b"cdef")

        mm.Coroutine(later, name="writer")
        got = server.read(6, 2000)
        with pytest.raises(mm.TimedOut):
            server.read(1, 30)
        client.write(b"z")
        after = server.read(1, 2000)        # the watcher is usable again after a timeout
        server.close(), client.close()
        return got, after

    assert run_in_machine(body) == (b"abcdef", b"z")


def test_timed_read_ends_with_ebadf_when_closed_and_with_cancel():
    def body():
        server, client = _pair()
        errors = []

        def waiting():
            try:
                server.read(4, 5000)
            except OSError as e:
                errors.append(e.errno)

        c = mm.Coroutine(waiting, name="waiting")
        mm.sleep(10)
        server.close()
        c.join(2000)
        server2, client2 = _pair()
        c2 = mm.Coroutine(lambda: server2.read(4, 5000), name="cancelled")
        mm.sleep(10)
        c2.cancel()
        c2.join(2000)
        client.close(), server2.close(), client2.close()
        return errors, c2.cancelled

    assert run_in_machine(body) == ([errno.EBADF], True)


def test_accept_now_makes_each_socket_with_its_listeners_kind(tmp_path):
    """accept_now reads a listener's family, type, proto, hub and loop once (Io._kind) and makes
    every accepted socket with them: a TCP listener's clients are TCP sockets, a unix listener's
    unix ones, each with its own fd and its read watcher on the listener's loop; nothing waiting
    gives None."""
    path = str(tmp_path / "k.sock")

    def body():
        (tcp,) = mm.listen("127.0.0.1", 0)
        unix = mm.listen_unix(path)
        out = []
        for lst, connect in ((tcp, lambda: mm.connect("127.0.0.1", tcp.local[1], timeout_ms=1000)),
                             (unix, lambda: mm.connect_unix(path, 1000))):
            peers = [connect(), connect()]
            got = []
            for _ in range(200):
                io = lst.accept_now()
                if io is not None:
                    got.append(io)
                    if len(got) == 2:
                        break
                else:
                    mm.sleep(5)
            raw = lst._raw
            hub = lst.sock.hub
            assert lst._kind == (raw.family, raw.type, raw.proto, hub, hub.loop)
            assert all(io.sock.hub is hub and io.sock.loop is hub.loop for io in got)
            assert all(io.sock._read_event.loop is hub.loop for io in got)
            assert [(io._raw.family, io._raw.type) for io in got] == [(raw.family, socket.SOCK_STREAM)] * 2
            assert got[0].fileno() != got[1].fileno() and lst.accept_now() is None
            peers[0].write(b"x")
            out.append(got[0].read(1, 1000))
            for io in got + peers + [lst]:
                io.close()
        return out

    assert run_in_machine(body) == [b"x", b"x"]
