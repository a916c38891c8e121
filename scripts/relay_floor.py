"""The floor of a Python relay: what the least a Python relay can do costs per transaction.

    python scripts/relay_floor.py --measure [--seconds 10] [--rounds 3] [--odyssey-bin PATH]
        [--variants gevent-greenlet,gevent-callback,epoll,epoll-framing] [--no-callgrind]
        [--connect --variants epoll-pool] [--ours]
    python scripts/relay_floor.py --serve VARIANT --listen-port P --pg-host H --pg-port Q

`--serve` runs one minimal 1:1 TCP relay in front of PostgreSQL: every client connection gets
its own server connection (no pooling) and the bytes go through untouched. The variants, each
as lean as Python allows:

- `gevent-greenlet`: a greenlet per direction, recv_into a preallocated buffer and a send loop
  (no sendall), waiting on a libev read watcher of the socket through the hub before each read
  (gevent's own socket tries the read first and waits on EAGAIN, with timeout bookkeeping);
- `gevent-callback`: persistent libev io watchers (gevent's loop.io) whose callbacks do
  recv_into + send in the hub itself, no greenlet switch at all;
- `epoll`: no gevent, a plain select.epoll loop over non-blocking sockets: the floor of
  Python-level event handling;
- `epoll-framing`: the epoll loop plus the v3 header walk of the server's bytes that a pooler
  needs at the least (find each ReadyForQuery 'Z' and its status byte: `ReadyWalker`);
- `epoll-pool`: epoll-framing plus the least transaction pool: the relay logs clients in itself
  (trust), takes an idle server (or logs a new one in, up to --pool-size, or queues the client)
  when a client speaks between transactions and gives it back when the reply ends with
  ReadyForQuery(I). No cancel, no pipelining across transactions, no parameter tracking.

`--measure` starts a throwaway PostgreSQL (pgbench -i -s 1), each variant, C Odyssey on
bench.py's config (--odyssey-bin or ODYSSEY_BIN; it pools, the relays but epoll-pool do not, so
with -c 10 all have 10 backends) and direct PostgreSQL as targets, runs `pgbench -n -S -c 10 -j 2 -M simple -T S`
per target per round with the order alternating every round, and reports the median TPS and the
median of each process's /proc user and system CPU µs per transaction. Then each relay runs
once more under `valgrind --tool=callgrind --instr-atstart=no` (the method and helpers of
scripts/count_instructions.py) for the user-space instructions per transaction.
"""
from __future__ import annotations

import argparse
import collections
import glob
import os
import random
import select
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
from types import SimpleNamespace

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

VARIANTS = ("gevent-greenlet", "gevent-callback", "epoll", "epoll-framing", "epoll-pool")
BUFSIZE = 65536
_LENGTH = struct.Struct("!I").unpack_from


# -- pure parts ------------------------------------------------------------------------------------
class ReadyWalker:
    """Walks a backend (server -> client) v3 message stream chunk by chunk, however the chunks
    split it, and finds every ReadyForQuery ('Z', length 5, one status byte: I, T or E).

    `feed(buf, n)` takes the first n bytes of a buffer and returns the status byte (an int) of
    the last ReadyForQuery whose status byte is in this chunk, or None; `at_ready` then says
    whether the chunk ended with that ReadyForQuery (the server is between transactions when
    its status is 'I'). `ready` counts them."""

    __slots__ = ("skip", "carry", "status_next", "ready", "at_ready")

    def __init__(self):
        self.skip = 0             # bytes of the current message body still to come
        self.carry = b""          # the start of a header split by the chunk end (1-4 bytes)
        self.status_next = False  # a 'Z' header ended the last chunk: byte 0 is its status
        self.ready = 0
        self.at_ready = False

    def feed(self, buf, n: int, _length=_LENGTH):
        status = None
        pos = self.skip
        end = -1                         # where the last ReadyForQuery walked ends
        if self.status_next or self.carry:
            pos, status, end = self._resume(buf, n)
            if pos is None:
                self.at_ready = False
                return None
        last = n - 5                     # a whole header and the byte after it are in the chunk
        while pos < last:
            if buf[pos] == 90:           # 'Z'
                status = buf[pos + 5]
                self.ready += 1
                end = pos + 6
            pos += 1 + _length(buf, pos + 1)[0]
        if pos < n:
            self.carry = bytes(buf[pos:n])
            self.skip = 0
        else:
            self.skip = pos - n
        self.at_ready = end == n == pos
        return status

    def _resume(self, buf, n: int):
        """The slow path: a ReadyForQuery status byte or a header cut by the last chunk's end.
        Returns (where the walk goes on, status, where that ReadyForQuery ends) or
        (None, None, -1) when the chunk is used up."""
        if self.status_next:
            self.status_next = False
            self.ready += 1
            return self.skip, buf[0], 1
        need = 5 - len(self.carry)
        if n < need:
            self.carry += bytes(buf[:n])
            return None, None, -1
        head = self.carry + bytes(buf[:need])
        self.carry = b""
        status, end = None, -1
        if head[0] == 90:
            if need < n:
                status = buf[need]
                self.ready += 1
                end = need + 1
            else:
                self.status_next = True
        return need + _LENGTH(head, 1)[0] - 4, status, end


PROTOCOL_3 = 196608
SSL_REQUEST, GSSENC_REQUEST = 80877103, 80877104


def parse_startup(body: bytes) -> dict | None:
    """The parameters of a v3 StartupMessage body (after its length word), None for another
    request code (a cancel request)."""
    if len(body) < 4 or _LENGTH(body, 0)[0] != PROTOCOL_3:
        return None
    parts = body[4:].split(b"\0")
    return {parts[i].decode(): parts[i + 1].decode() for i in range(0, len(parts) - 1, 2) if parts[i]}


def startup_packet(params: dict) -> bytes:
    body = struct.pack("!I", PROTOCOL_3) + b"".join(
        k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items()) + b"\0"
    return struct.pack("!I", len(body) + 4) + body


def login_reply(parameter_status: bytes, pid: int, key: int) -> bytes:
    """What a pooler answers a trusted client's startup with: AuthenticationOk, the server's
    ParameterStatus messages, BackendKeyData and ReadyForQuery(I)."""
    return (b"R" + struct.pack("!II", 8, 0) + parameter_status + b"K" + struct.pack("!III", 12, pid, key)
            + b"Z" + struct.pack("!I", 5) + b"I")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--serve", choices=VARIANTS, help="run this relay variant")
    ap.add_argument("--listen-port", type=int)
    ap.add_argument("--pg-host", default="127.0.0.1")
    ap.add_argument("--pg-port", type=int)
    ap.add_argument("--pool-size", type=int, default=20, help="epoll-pool's servers per user and database "
                    "(default 20, C Odyssey's in bench.py's config)")
    ap.add_argument("--measure", action="store_true", help="measure every variant, C Odyssey and direct PG")
    ap.add_argument("--variants", default=list(VARIANTS), type=lambda s: [x for x in s.split(",") if x],
                    help="comma list of relay variants to measure (default: all)")
    ap.add_argument("--odyssey-bin", default=None, help="C Odyssey binary (default: $ODYSSEY_BIN)")
    ap.add_argument("--connect", action="store_true",
                    help="pgbench -C, a new connection per transaction: the login's floor (use with "
                         "--variants epoll-pool: the other variants connect a server per client)")
    ap.add_argument("--ours", action="store_true", help="measure odyssey-gevent on bench.py's config too")
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--seconds", type=int, default=10, help="pgbench -T per run (default 10)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--transactions", type=int, default=3000, help="counted transactions under callgrind")
    ap.add_argument("--no-callgrind", action="store_true", help="skip the instruction counts")
    a = ap.parse_args(argv)
    if a.serve and a.measure:
        ap.error("--serve and --measure are two different modes")
    if not a.serve and not a.measure:
        ap.error("give --serve VARIANT or --measure")
    if a.serve and (a.listen_port is None or a.pg_port is None):
        ap.error("--serve needs --listen-port and --pg-port")
    bad = set(a.variants) - set(VARIANTS)
    if bad or not a.variants:
        ap.error(f"--variants takes {', '.join(VARIANTS)}")
    if a.odyssey_bin is None:
        a.odyssey_bin = os.environ.get("ODYSSEY_BIN") or None
    if min(a.clients, a.seconds, a.rounds, a.transactions, a.pool_size) < 1:
        ap.error("--clients, --seconds, --rounds, --transactions and --pool-size must be positive")
    return a


def targets_of(a) -> list[str]:
    return (list(a.variants) + (["odyssey-gevent"] if a.ours else []) + (["odyssey"] if a.odyssey_bin else [])
            + ["direct"])


def _round_ratio(runs: list, ref: list, key) -> float | None:
    """Median over the rounds of key(run) / key(ref's run of the same round)."""
    from scripts.bench import median
    return median([key(r) / key(c) for r, c in zip(runs, ref)
                   if key(r) is not None and key(c)])


def _cpu(r):
    return None if r.get("user_us") is None else r["user_us"] + r["sys_us"]


def format_floor_table(targets: list[str], results: dict, instructions: dict) -> str:
    """results[target] = list of dicts {tps, user_us, sys_us}, one per round in round order;
    instructions[target] = int or None. With C Odyssey ("odyssey") among the targets, two more
    columns: the medians of the per-round TPS and CPU ratios to it."""
    from scripts.bench import median
    names = {"odyssey": "C Odyssey (pools)", "direct": "direct PostgreSQL"}
    ref = results.get("odyssey")
    head = ["target", "TPS", "user µs/tx", "system µs/tx", "CPU µs/tx", "instructions/tx"]
    if ref:
        head += ["TPS / C Odyssey", "CPU / C Odyssey"]
    rows = []
    for t in targets:
        runs = results.get(t, [])
        tps = median([r["tps"] for r in runs])
        user = median([r.get("user_us") for r in runs])
        sys_ = median([r.get("sys_us") for r in runs])
        both = median([_cpu(r) for r in runs])
        ins = instructions.get(t)
        row = [names.get(t, t), "-" if tps is None else f"{tps:,.0f}",
               "-" if user is None else f"{user:.1f}", "-" if sys_ is None else f"{sys_:.1f}",
               "-" if both is None else f"{both:.1f}", "-" if ins is None else f"{ins:,.0f}"]
        if ref:
            for key in (lambda r: r["tps"], _cpu):
                ratio = _round_ratio(runs, ref, key)
                row.append("-" if ratio is None else f"{ratio:.2f}")
        rows.append(row)
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    fmt = lambda r: "| " + " | ".join(v.ljust(w) for v, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([fmt(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [fmt(r) for r in rows])


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process (all its threads) from /proc/PID/stat."""
    from scripts.bench import CLK_TCK
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


# -- the relays ------------------------------------------------------------------------------------
def _listener(port: int) -> socket.socket:
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", port))
    ls.listen(1024)
    ls.setblocking(False)
    return ls


def _epoll_setup(listen_port: int):
    """The epoll variants' start: the listener registered with a new epoll object, and the
    one read buffer (with its memoryview) the loop reuses."""
    ls = _listener(listen_port)
    ep = select.epoll()
    lfd = ls.fileno()
    ep.register(lfd, select.EPOLLIN)
    buf = bytearray(BUFSIZE)
    return ls, ep, lfd, buf, memoryview(buf)


def _pair(ls: socket.socket, upstream: tuple[str, int]):
    """Accept one client and connect its server; both non-blocking with TCP_NODELAY. None when
    the accept would block or the server cannot be reached (the client is then closed)."""
    try:
        client, _ = ls.accept()
    except BlockingIOError:
        return None
    try:
        server = socket.create_connection(upstream)
    except OSError:
        client.close()
        return None
    for s in (client, server):
        s.setblocking(False)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return client, server


def _send_blocking(sock: socket.socket, data) -> None:
    sock.setblocking(True)
    try:
        sock.sendall(data)
    finally:
        sock.setblocking(False)


def serve_epoll(listen_port: int, upstream: tuple[str, int], framing: bool = False) -> None:
    ls, ep, lfd, buf, view = _epoll_setup(listen_port)
    routes = {}             # fd -> (recv_into, send, walker or None, source socket, destination socket)
    poll, register, unregister = ep.poll, ep.register, ep.unregister

    def close(src, dst):
        for s in (src, dst):
            fd = s.fileno()
            if fd in routes:
                del routes[fd]
                unregister(fd)
            s.close()

    while True:
        for fd, _ in poll():
            if fd == lfd:
                pair = _pair(ls, upstream)
                if pair is not None:
                    client, server = pair
                    routes[client.fileno()] = (client.recv_into, server.send, None, client, server)
                    routes[server.fileno()] = (server.recv_into, client.send,
                                               ReadyWalker() if framing else None, server, client)
                    register(client.fileno(), select.EPOLLIN)
                    register(server.fileno(), select.EPOLLIN)
                continue
            route = routes.get(fd)
            if route is None:
                continue
            recv_into, send, walker, src, dst = route
            try:
                n = recv_into(buf)
            except BlockingIOError:
                continue
            except OSError:
                n = 0
            if not n:
                close(src, dst)
                continue
            if walker is not None:
                walker.feed(buf, n)
            try:
                sent = send(view[:n])
            except BlockingIOError:
                sent = 0
            except OSError:
                close(src, dst)
                continue
            if sent < n:                     # rare on loopback: finish it blocking this loop
                try:
                    _send_blocking(dst, view[sent:n])
                except OSError:
                    close(src, dst)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("connection closed during the login")
        data += chunk
    return data


def _read_startup(sock: socket.socket) -> dict | None:
    """A client's startup packet, read blocking (SSL and GSS requests answered with 'N')."""
    while True:
        length = _LENGTH(_recv_exact(sock, 4), 0)[0]
        if not 8 <= length <= 10000:
            raise ConnectionError(f"startup packet of {length} bytes")
        body = _recv_exact(sock, length - 4)
        if _LENGTH(body, 0)[0] in (SSL_REQUEST, GSSENC_REQUEST):
            sock.sendall(b"N")
            continue
        return parse_startup(body)


def _server_login(upstream: tuple[str, int], user: str, database: str) -> tuple[socket.socket, bytes]:
    """A new server connection logged in (trust authentication only), non-blocking; and its
    ParameterStatus messages."""
    sock = socket.create_connection(upstream)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(startup_packet({"user": user, "database": database}))
        status = []
        while True:
            head = _recv_exact(sock, 5)
            body = _recv_exact(sock, _LENGTH(head, 1)[0] - 4)
            if head[:1] == b"R" and _LENGTH(body, 0)[0] != 0:
                raise ConnectionError("the floor pool logs in to PostgreSQL with trust authentication only")
            if head[:1] == b"E":
                raise ConnectionError(f"PostgreSQL refused the login: {body!r}")
            if head[:1] == b"S":
                status.append(head + body)
            if head[:1] == b"Z":
                break
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return sock, b"".join(status)


class _Pool:
    __slots__ = ("user", "database", "idle", "size", "waiting", "parameter_status")

    def __init__(self, user: str, database: str):
        self.user, self.database = user, database
        self.idle: list = []
        self.size = 0
        self.waiting: collections.deque = collections.deque()
        self.parameter_status = None


class _End:
    """A client or a server of the pool: its socket, and the other end while attached."""
    __slots__ = ("sock", "fd", "pool", "peer", "walker", "handed")

    def __init__(self, sock: socket.socket, pool: _Pool, walker=None):
        self.sock, self.fd, self.pool, self.peer, self.walker = sock, sock.fileno(), pool, None, walker
        self.handed = False       # a server given to a waiting client that has not spoken yet


def serve_epoll_pool(listen_port: int, upstream: tuple[str, int], pool_size: int) -> None:
    """The least transaction pool: the epoll loop and the header walk, plus a server taken from
    the idle list when a client speaks and given back when the server's reply ends with
    ReadyForQuery(I). Trust authentication, one pool per user and database, no pipelining
    across transactions, no cancel requests, no parameter tracking: a floor, not a pooler."""
    ls, ep, lfd, buf, view = _epoll_setup(listen_port)
    clients: dict = {}
    servers: dict = {}
    pools: dict = {}
    poll, register, unregister, modify = ep.poll, ep.register, ep.unregister, ep.modify

    def new_server(pool: _Pool) -> _End:
        pool.size += 1
        try:
            sock, status = _server_login(upstream, pool.user, pool.database)
        except BaseException:
            pool.size -= 1
            raise
        if pool.parameter_status is None:
            pool.parameter_status = status
        server = _End(sock, pool, ReadyWalker())
        servers[server.fd] = server
        register(server.fd, select.EPOLLIN)
        return server

    def accept() -> None:
        try:
            sock, _ = ls.accept()
        except BlockingIOError:
            return
        try:
            params = _read_startup(sock)
            if params is None or "user" not in params:
                sock.close()
                return
            key = (params["user"], params.get("database") or params["user"])
            pool = pools.get(key)
            if pool is None:
                pool = pools[key] = _Pool(*key)
            if pool.parameter_status is None:
                pool.idle.append(new_server(pool))
            sock.sendall(login_reply(pool.parameter_status, sock.fileno(), random.getrandbits(31)))
        except (OSError, ValueError):
            sock.close()
            return
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client = _End(sock, pool)
        clients[client.fd] = client
        register(client.fd, select.EPOLLIN)

    def give(server: _End) -> None:
        """A server between transactions goes to the first waiting client, or to the idle list."""
        pool = server.pool
        if pool.waiting:
            client = pool.waiting.popleft()
            client.peer, server.peer = server, client
            server.handed = True
            modify(client.fd, select.EPOLLIN)
        else:
            server.peer = None
            pool.idle.append(server)

    def close_server(server: _End) -> None:
        del servers[server.fd]
        unregister(server.fd)
        server.sock.close()
        pool = server.pool
        pool.size -= 1
        if server in pool.idle:
            pool.idle.remove(server)
        server.handed = False
        client = server.peer
        if client is not None:
            client.peer = None
            close_client(client)

    def close_client(client: _End, server_idle: bool = False) -> None:
        """Close a client; its server goes back to the pool if it is between transactions
        (`server_idle`), else it is closed too (a transaction left open)."""
        del clients[client.fd]
        unregister(client.fd)
        client.sock.close()
        pool = client.pool
        if client in pool.waiting:
            pool.waiting.remove(client)
        server = client.peer
        if server is not None:
            client.peer = server.peer = None
            if server_idle:
                give(server)
            else:
                close_server(server)

    while True:
        for fd, _ in poll():
            client = clients.get(fd)
            if client is not None:
                server = client.peer
                if server is not None:
                    fresh = server.handed           # given while it waited: between transactions
                    server.handed = False
                else:                               # between transactions: take a server
                    fresh = True
                    pool = client.pool
                    if pool.idle:
                        server = pool.idle.pop()
                    elif pool.size < pool_size:
                        try:
                            server = new_server(pool)
                        except (OSError, ValueError):
                            close_client(client)
                            continue
                    else:
                        modify(fd, 0)               # until give() hands it a server
                        pool.waiting.append(client)
                        continue
                    client.peer, server.peer = server, client
                try:
                    n = client.sock.recv_into(buf)
                except BlockingIOError:
                    if fresh:
                        client.peer = None
                        give(server)
                    continue
                except OSError:
                    n = 0
                if not n or (fresh and buf[0] == 88):         # closed, or Terminate between transactions
                    close_client(client, server_idle=fresh)
                    continue
                to = server
            elif fd == lfd:
                accept()
                continue
            else:
                server = servers.get(fd)
                if server is None:
                    continue
                try:
                    n = server.sock.recv_into(buf)
                except BlockingIOError:
                    continue
                except OSError:
                    n = 0
                client = server.peer
                if not n or client is None:                   # closed, or talking while idle
                    close_server(server)
                    continue
                walker = server.walker
                if walker.feed(buf, n) == 73 and walker.at_ready:   # ReadyForQuery(I) ends it
                    client.peer = None
                    give(server)
                to = client
            try:
                sent = to.sock.send(view[:n])
                if sent < n:
                    _send_blocking(to.sock, view[sent:n])
            except BlockingIOError:
                try:
                    _send_blocking(to.sock, view[:n])
                except OSError:
                    (close_client if to is client else close_server)(to)
            except OSError:
                (close_client if to is client else close_server)(to)


def serve_gevent_greenlet(listen_port: int, upstream: tuple[str, int]) -> None:
    import gevent
    from gevent import get_hub
    hub = get_hub()
    loop = hub.loop
    wait = hub.wait

    def pump(src, dst, done):
        buf = bytearray(BUFSIZE)
        view = memoryview(buf)
        recv_into, send = src.recv_into, dst.send
        readable, writable = loop.io(src.fileno(), 1), loop.io(dst.fileno(), 2)
        try:
            while True:
                # wait first: a relay's next read almost always would block, and trying it
                # first costs a BlockingIOError raised and caught per message
                wait(readable)
                try:
                    n = recv_into(buf)
                except BlockingIOError:
                    continue
                if not n:
                    break
                sent = 0
                while sent < n:
                    try:
                        sent += send(view[sent:n])
                    except BlockingIOError:
                        wait(writable)
        except OSError:
            pass
        finally:
            readable.close()
            writable.close()
            if done:                          # the second pump to end closes both sockets
                src.close()
                dst.close()
            else:
                done.append(1)
                for s in (src, dst):         # wakes the other pump with EOF or an error
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

    ls = _listener(listen_port)
    accepting = loop.io(ls.fileno(), 1)
    while True:
        pair = _pair(ls, upstream)
        if pair is None:
            wait(accepting)
            continue
        client, server = pair
        done: list = []
        gevent.spawn_raw(pump, client, server, done)
        gevent.spawn_raw(pump, server, client, done)


def serve_gevent_callback(listen_port: int, upstream: tuple[str, int]) -> None:
    import gevent
    loop = gevent.get_hub().loop
    buf = bytearray(BUFSIZE)          # shared: each callback sends what it read before returning
    view = memoryview(buf)

    def connect(client, server):
        watchers = []

        def close():
            for w in watchers:
                w.close()
            client.close()
            server.close()

        def direction(src, dst):
            reading = loop.io(src.fileno(), 1)
            writing = loop.io(dst.fileno(), 2)
            watchers.extend((reading, writing))
            recv_into, send = src.recv_into, dst.send
            pending = []

            def on_readable():
                try:
                    n = recv_into(buf)
                except BlockingIOError:
                    return
                except OSError:
                    n = 0
                if not n:
                    close()
                    return
                try:
                    sent = send(view[:n])
                except BlockingIOError:
                    sent = 0
                except OSError:
                    close()
                    return
                if sent < n:                   # rare: stop reading until the rest is out
                    pending.append(bytes(view[sent:n]))
                    reading.stop()
                    writing.start(on_writable)

            def on_writable():
                try:
                    sent = send(pending[0])
                except BlockingIOError:
                    return
                except OSError:
                    close()
                    return
                if sent < len(pending[0]):
                    pending[0] = pending[0][sent:]
                    return
                pending.clear()
                writing.stop()
                reading.start(on_readable)

            reading.start(on_readable)

        direction(client, server)
        direction(server, client)

    ls = _listener(listen_port)

    def on_accept():
        pair = _pair(ls, upstream)
        if pair is not None:
            connect(*pair)

    accepting = loop.io(ls.fileno(), 1)
    accepting.start(on_accept)
    gevent.wait()


def serve(variant: str, listen_port: int, upstream: tuple[str, int], pool_size: int = 20) -> None:
    if variant == "gevent-greenlet":
        serve_gevent_greenlet(listen_port, upstream)
    elif variant == "gevent-callback":
        serve_gevent_callback(listen_port, upstream)
    elif variant == "epoll-pool":
        serve_epoll_pool(listen_port, upstream, pool_size)
    else:
        serve_epoll(listen_port, upstream, framing=variant == "epoll-framing")


class RelayProcess:
    """One relay variant as a subprocess (optionally under a command prefix such as valgrind)."""

    def __init__(self, variant: str, pg_host: str, pg_port: int, prefix: list[str] | None = None,
                 pool_size: int = 20):
        from scripts.pgcluster import free_port, wait_port
        self.port = free_port()
        argv = [*(prefix or []), sys.executable, os.path.abspath(__file__), "--serve", variant,
                "--listen-port", str(self.port), "--pg-host", pg_host, "--pg-port", str(pg_port),
                "--pool-size", str(pool_size)]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        try:
            wait_port("127.0.0.1", self.port, timeout=120 if prefix else 15, proc=self.proc)
        except Exception:
            err = self.stop()
            raise RuntimeError(f"relay {variant} did not start:\n{err}") from None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> str:
        """Stop it; returns what it wrote to stderr."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            _, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return err.decode("utf-8", "replace")


# -- the driver ------------------------------------------------------------------------------------
class Measure:
    def __init__(self, a):
        self.a = a
        self.cluster = None
        self.procs: dict = {}         # target -> RelayProcess or PoolerProcess
        self.pg_host = self.pg_port = None

    def log(self, msg: str) -> None:
        print(msg, flush=True)

    def setup_pg(self) -> None:
        from scripts.pgcluster import PgCluster
        self.cluster = PgCluster()
        self.cluster.init()
        self.cluster.start()
        self.cluster.psql("CREATE DATABASE bench;")
        self.pg_host, self.pg_port = self.cluster.host, self.cluster.port
        subprocess.run(["pgbench", "-i", "-q", "-s", "1", "-h", self.pg_host, "-p", str(self.pg_port),
                        "-U", "postgres", "bench"], check=True, capture_output=True)
        self.log(f"throwaway PostgreSQL on {self.pg_host}:{self.pg_port}, pgbench -i -s 1")

    def start(self, target: str, prefix: list[str] | None = None):
        if target in ("odyssey", "odyssey-gevent"):
            from scripts.bench import POOLER_TEMPLATE
            from scripts.pooler import PoolerProcess
            # ours as `python -m odyssey_gevent` (PoolerProcess would run $ODYSSEY_BIN otherwise)
            command = self.a.odyssey_bin if target == "odyssey" else f"{sys.executable} -m odyssey_gevent"
            binary = command if not prefix else " ".join([*prefix, command])
            proc = PoolerProcess(POOLER_TEMPLATE, pg_host=self.pg_host, pg_port=self.pg_port, binary=binary,
                                 wait=not prefix, pool_size=self.a.pool_size, reserve_prepared="no")
            if prefix:
                from scripts.pgcluster import wait_port
                wait_port("127.0.0.1", proc.port, timeout=120, proc=proc.proc)
        else:
            proc = RelayProcess(target, self.pg_host, self.pg_port, prefix, self.a.pool_size)
        self.procs[target] = proc
        return proc

    def stop(self, target: str) -> None:
        proc = self.procs.pop(target, None)
        if proc is not None:
            proc.stop()
            if hasattr(proc, "tmp"):
                shutil.rmtree(proc.tmp, ignore_errors=True)

    def port_of(self, target: str) -> int:
        return self.pg_port if target == "direct" else self.procs[target].port

    def pgbench_run(self, target: str) -> dict:
        from scripts.bench import parse_pgbench
        cmd = ["pgbench", "-n", "-S", "-j", "2", "-c", str(self.a.clients), "-T", str(self.a.seconds),
               "-M", "simple", *(["-C"] if self.a.connect else []), "-h", "127.0.0.1", "-p",
               str(self.port_of(target)), "-U", "postgres", "bench"]
        pid = self.procs[target].pid if target != "direct" else None
        before = cpu_split(pid) if pid else None
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=self.a.seconds + 60,
                             env=dict(os.environ, PGSSLMODE="disable"))
        after = cpu_split(pid) if pid else None
        if out.returncode != 0:
            raise RuntimeError(f"pgbench through {target} failed:\n{out.stdout}\n{out.stderr}")
        tps, n = parse_pgbench(out.stdout)
        r = dict(tps=tps, n=n, user_us=None, sys_us=None)
        if pid:
            r["user_us"] = (after[0] - before[0]) * 1e6 / n
            r["sys_us"] = (after[1] - before[1]) * 1e6 / n
        return r

    def tps_rounds(self, targets: list[str]) -> dict:
        from scripts.bench import round_order
        for t in targets:
            if t != "direct":
                self.start(t)
        results: dict = {}
        for rnd in range(self.a.rounds):
            order = round_order(targets, rnd)
            self.log(f"round {rnd + 1}/{self.a.rounds}: {' '.join(order)}")
            for t in order:
                r = self.pgbench_run(t)
                results.setdefault(t, []).append(r)
                cpu = "" if r["user_us"] is None else f", {r['user_us']:.1f} user + {r['sys_us']:.1f} system µs/tx"
                self.log(f"  {t:<16} {r['tps']:>9,.0f} tps{cpu}")
        for t in targets:
            self.stop(t)
        return results

    def callgrind(self, target: str) -> int:
        from scripts.count_instructions import pgbench, total_instructions
        outdir = tempfile.mkdtemp(prefix="relay-floor-callgrind-")
        try:
            prefix = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                      f"--callgrind-out-file={os.path.join(outdir, 'callgrind.out.%p')}"]
            proc = self.start(target, prefix)
            args = SimpleNamespace(clients=self.a.clients, mode="simple", connect=self.a.connect, db="bench")
            pgbench(args, proc.port, 500, "postgres")
            subprocess.run(["callgrind_control", "-i", "on", str(proc.pid)], check=True, capture_output=True)
            n = pgbench(args, proc.port, self.a.transactions, "postgres")
            subprocess.run(["callgrind_control", "-i", "off", str(proc.pid)], check=True, capture_output=True)
            self.stop(target)
            total = sum(total_instructions(f) for f in glob.glob(os.path.join(outdir, "callgrind.out.*")))
            self.log(f"  {target:<16} {total / n:>9,.0f} instructions/tx ({total:,} over {n:,})")
            return round(total / n)
        finally:
            self.stop(target)
            shutil.rmtree(outdir, ignore_errors=True)

    def main(self) -> None:
        self.setup_pg()
        targets = targets_of(self.a)
        results = self.tps_rounds(targets)
        instructions: dict = {}
        if not self.a.no_callgrind:
            if not shutil.which("valgrind") or not shutil.which("callgrind_control"):
                self.log("no valgrind: instruction counts skipped (apt-get install valgrind)")
            else:
                self.log("callgrind, instrumentation on for the counted transactions only")
                for t in targets:
                    if t != "direct":
                        instructions[t] = self.callgrind(t)
        print()
        print(f"pgbench -n -S -c {self.a.clients} -j 2 -M simple{' -C' if self.a.connect else ''} "
              f"-T {self.a.seconds}, {self.a.rounds} rounds, "
              f"order alternating, medians; instructions: callgrind over {self.a.transactions} transactions")
        print(format_floor_table(targets, results, instructions))

    def cleanup(self) -> None:
        for t in list(self.procs):
            self.stop(t)
        if self.cluster is not None:
            self.cluster.destroy()
            self.cluster = None


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.serve:
        serve(a.serve, a.listen_port, (a.pg_host, a.pg_port), a.pool_size)
        return 0
    m = Measure(a)
    try:
        m.main()
        return 0
    except RuntimeError as e:
        print(f"relay_floor: {e}", file=sys.stderr)
        return 1
    finally:
        m.cleanup()


if __name__ == "__main__":
    sys.exit(main())
