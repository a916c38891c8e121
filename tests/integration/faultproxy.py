"""A small TCP proxy for fault tests, put between the pooler and PostgreSQL.

    proxy = FaultProxy(pg.host, pg.port)       # listens on 127.0.0.1:proxy.port
    proxy.delay = 0.3                          # every chunk waits 0.3 s before it is passed on
    proxy.blackhole = True                     # bytes are swallowed both ways, new connections
                                               # are accepted and never answered
    proxy.reset_all()                          # every open connection gets a RST, both sides
    proxy.refuse = True                        # new connections get a RST at once
    proxy.cut_after = 5000                     # the first connection to pass on 5,000 more
                                               # bytes from PostgreSQL ends there with a FIN
                                               # both ways, wherever the bytes end
    proxy.close()

The proxy runs in a process of its own (a client library that keeps the GIL while it waits,
such as psycopg2's cancel(), would otherwise stall it); there one thread runs a selector loop
over every socket, so a fault is applied to all connections at the moment the test sets it, and
nothing blocks: a chunk is queued with the time it is due and written once due. No mocks: the
pooler and PostgreSQL see real TCP.
"""
from __future__ import annotations

import multiprocessing
import selectors
import socket
import struct
import threading
import time

_LINGER_RST = struct.pack("ii", 1, 0)


class _Pipe:
    """One proxied connection: the socket from the pooler (down) and the one to PostgreSQL (up)."""

    __slots__ = ("down", "up", "out", "ending")

    def __init__(self, down: socket.socket, up: socket.socket | None):
        self.down = down
        self.up = up
        self.out = {down: [], up: []}        # socket -> [(due, bytes)] still to write to it
        self.ending = False                  # one side closed: close both once `out` is written


class FaultProxy:
    """The test's handle on a _Proxy running in a child process."""

    _FIELDS = ("delay", "blackhole", "refuse", "cut_after")

    def __init__(self, target_host: str, target_port: int):
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, target_host, target_port), daemon=True,
                                 name="faultproxy")
        self._proc.start()
        object.__setattr__(self, "port", self._call("port"))

    def _call(self, *request):
        self._conn.send(request)
        if not self._conn.poll(10):
            raise TimeoutError(f"the fault proxy did not answer {request!r}")
        return self._conn.recv()

    def __setattr__(self, name, value):
        if name in self._FIELDS:
            self._call("set", name, value)
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name):
        if name in self._FIELDS or name == "accepted":
            return self._call("get", name)
        raise AttributeError(name)

    def reset_all(self) -> None:
        self._call("reset_all")

    def connections(self) -> int:
        return self._call("connections")

    def close(self) -> None:
        try:
            self._call("close")
        except (OSError, EOFError, TimeoutError):
            pass
        self._proc.join(5)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()
        self._conn.close()


def _serve(conn, target_host: str, target_port: int) -> None:
    """The child process: a _Proxy, driven by requests on `conn`."""
    proxy = _Proxy(target_host, target_port)
    while True:
        try:
            request = conn.recv()
        except EOFError:
            break
        op = request[0]
        if op == "port":
            conn.send(proxy.port)
        elif op == "set":
            if request[1] == "cut_after":
                proxy._cut_seen.clear()     # counted afresh from now
            setattr(proxy, request[1], request[2])
            conn.send(None)
        elif op == "get":
            conn.send(getattr(proxy, request[1]))
        elif op == "reset_all":
            proxy.reset_all()
            conn.send(None)
        elif op == "connections":
            conn.send(proxy.connections())
        elif op == "close":
            proxy.close()
            conn.send(None)
            break
    proxy.close()


class _Proxy:
    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self.delay = 0.0
        self.blackhole = False
        self.refuse = False
        self.cut_after = None       # bytes from PostgreSQL a connection still passes on before its cut
        self._cut_seen: dict = {}   # bytes each connection passed on since cut_after was set
        self.accepted = 0
        self._lock = threading.Lock()
        self._pipes: dict[socket.socket, _Pipe] = {}
        self._held: list[socket.socket] = []  # accepted while blackholed: never answered
        self._sel = selectors.DefaultSelector()
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self._listener.setblocking(False)
        self.port = self._listener.getsockname()[1]
        self._sel.register(self._listener, selectors.EVENT_READ)
        self._stop = False
        self._todo: list = []                  # callables run by the loop thread
        self._thread = threading.Thread(target=self._loop, name="faultproxy", daemon=True)
        self._thread.start()

    # -- what tests call -----------------------------------------------------------------
    def reset_all(self) -> None:
        """A RST on every open connection, to the pooler and to PostgreSQL."""
        done = threading.Event()
        with self._lock:
            self._todo.append(lambda: (self._reset_all(), done.set()))
        done.wait(5)

    def connections(self) -> int:
        with self._lock:
            return len({id(p) for p in self._pipes.values()})

    def close(self) -> None:
        if self._stop:
            return
        self._stop = True
        self._thread.join(5)
        self._reset_all()
        self._listener.close()
        self._sel.close()

    # -- the loop ------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop:
            with self._lock:
                todo, self._todo = self._todo, []
            for fn in todo:
                fn()
            for key, _ in self._sel.select(0.01):
                sock = key.fileobj
                if sock is self._listener:
                    self._accept()
                else:
                    self._read(sock)
            self._flush()

    def _accept(self) -> None:
        try:
            down, _ = self._listener.accept()
        except OSError:
            return
        self.accepted += 1
        if self.refuse:
            _rst(down)
            return
        if self.blackhole:
            self._held.append(down)
            return
        try:
            up = socket.create_connection(self.target, timeout=5)
        except OSError:
            _rst(down)
            return
        for s in (down, up):
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pipe = _Pipe(down, up)
        with self._lock:
            self._pipes[down] = pipe
            self._pipes[up] = pipe
        self._sel.register(down, selectors.EVENT_READ)
        self._sel.register(up, selectors.EVENT_READ)

    def _read(self, sock: socket.socket) -> None:
        pipe = self._pipes.get(sock)
        if pipe is None:
            return
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            # pass on what is still queued (a CancelRequest is followed by a close at once)
            pipe.ending = True
            try:
                self._sel.unregister(sock)
            except (KeyError, ValueError):
                pass
            return
        if self.blackhole:
            return
        if sock is pipe.up and self.cut_after is not None:
            # counted per connection: another connection's bytes (a server of another client)
            # do not move this one's cut
            seen = self._cut_seen.get(pipe, 0)
            if seen + len(data) >= self.cut_after:
                # the cut: pass on exactly cut_after bytes, read nothing more, and close both
                # sides with a FIN once they are written (_flush)
                data = data[:self.cut_after - seen]
                self.cut_after = None
                self._cut_seen.clear()
                pipe.ending = True
                for s in (pipe.up, pipe.down):
                    try:
                        self._sel.unregister(s)
                    except (KeyError, ValueError):
                        pass
            else:
                self._cut_seen[pipe] = seen + len(data)
        other = pipe.up if sock is pipe.down else pipe.down
        pipe.out[other].append((time.monotonic() + self.delay, data))

    def _flush(self) -> None:
        now = time.monotonic()
        for pipe in list({id(p): p for p in self._pipes.values()}.values()):
            for sock, queue in pipe.out.items():
                while queue and queue[0][0] <= now:
                    due, data = queue[0]
                    try:
                        n = sock.send(data)
                    except BlockingIOError:
                        break
                    except OSError:
                        self._drop(pipe, rst=True)
                        return
                    if n < len(data):
                        queue[0] = (due, data[n:])
                        break
                    queue.pop(0)
            if pipe.ending and not any(pipe.out.values()):
                self._drop(pipe, rst=False)

    def _drop(self, pipe: _Pipe, rst: bool) -> None:
        with self._lock:
            for s in (pipe.down, pipe.up):
                if self._pipes.pop(s, None) is not None:
                    try:
                        self._sel.unregister(s)
                    except (KeyError, ValueError):
                        pass
        for s in (pipe.down, pipe.up):
            if rst:
                _rst(s)
            else:
                s.close()

    def _reset_all(self) -> None:
        for pipe in list({id(p): p for p in self._pipes.values()}.values()):
            self._drop(pipe, rst=True)
        for s in self._held:
            _rst(s)
        self._held = []


def _rst(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    except OSError:
        pass
    sock.close()
