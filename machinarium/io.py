"""Network IO: listen, accept, connect, read, write, socket options, TLS upgrade and moving a
connection between machines (mirrors machinarium io.c, bind.c, accept.c, connect.c, read.c,
write.c, tls.c).

Hot path rules (docs/performance.md has how the relay's time is measured): no gevent
``sendall`` (it calls getsockopt on every call) but a ``send()`` loop that waits for writability
only on EAGAIN or a partial send; ``recv_into`` a caller's reusable buffer; optionally wait for
readability before the first recv to skip the speculative recv that returns EAGAIN.

An ``Io`` belongs to the machine (hub) that created or attached it. To move a plain connection:
``fd = io.detach()`` in machine A, send ``fd`` over a channel, ``Io.attach(fd)`` in machine B.
"""
from __future__ import annotations

import errno
import os
import select
import socket as _std
from _socket import socket as _native_socket
from io import FileIO as _FileIO
import ssl
import stat
import struct
from time import monotonic as _monotonic

import gevent.ssl
from gevent import get_hub, getcurrent
from gevent import socket as gsocket
from gevent._hub_primitives import wait_on_socket as _wait_on_socket
from gevent._socketcommon import cancel_wait_ex as _cancel_wait_ex

from ._clock import deadline, seconds
from .coroutine import sleep
from .errors import ConnectionClosed, MachineError, TimedOut

_INET = (_std.AF_INET, _std.AF_INET6)
_new = object.__new__
_POLL_READABLE = select.POLLIN | select.POLLPRI | select.POLLRDHUP | select.POLLERR | select.POLLHUP
_IOV_MAX = 1024
_LINGER_0 = struct.pack("ii", 1, 0)
_LINGER_OFF = struct.pack("ii", 0, 0)


class _Socket:
    """An accepted client's socket: the native non-blocking socket with gevent-style read and
    write watchers, and the few methods of gevent's socket object an Io and its users call
    (``_wait``, ``_read_event``/``_write_event``, ``close``, ``detach``, ``closed``, ``fileno``,
    and the native socket's own ones listed below). gevent's own object made both watchers up
    front and closes through several Python-level steps: about 40,000 instructions a
    connection more. Closing wakes a coroutine waiting on it with EBADF, as gevent's does; a
    TLS upgrade swaps it for a gevent socket first (``Io._tls_upgrade``).

    The read watcher is made at once (each client's reads, the relay's callbacks and a pooled
    server's watch use it) and is a plain slot, None once closed; the write watcher is made on
    first use. No ``__getattr__``: a class with one has every attribute of its instances looked
    up through it (a Python-level hook, no specialization), about 600 instructions a login."""

    # loop: the hub's (hub.loop is an attribute load of a greenlet, which 3.11 does not specialize)
    __slots__ = ("_sock", "hub", "loop", "_read_event", "_w", "_closed")
    timeout = None                  # gevent's wait_on_socket reads it: no socket-level timeout

    def __init__(self, raw, hub):
        self._sock = raw
        self.hub = hub
        loop = self.loop = hub.loop
        self._read_event = loop.io(raw.fileno(), 1)
        self._w = None
        self._closed = False

    @property
    def _write_event(self):
        w = self._w
        if w is None and not self._closed:
            w = self._w = self.loop.io(self._sock.fileno(), 2)
        return w

    @property
    def closed(self) -> bool:
        return self._closed

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        r, w = self._read_event, self._w
        self._read_event = self._w = None
        if (r is None or r.callback is None) and (w is None or w.callback is None):
            # no wait to cancel (the usual close: the relay stopped its watcher): what gevent's
            # cancel_waits_close_and_then does then, without its list and call
            if r is None and w is None:
                self._sock.close()
                return
            if r is not None:
                r.close()
            if w is not None:
                w.close()
            raw = self._sock
            # _close_native inline (a frame fewer per connection)
            if self.loop.closing_fd(raw.fileno()):
                self._close_later(raw)
            else:
                raw.close()
        else:
            self.hub.cancel_waits_close_and_then((r, w), _cancel_wait_ex, self._close_native, self._sock)

    def _close_native(self, raw) -> None:
        # as gevent's socket: libev is told first so that watchers it still has for the fd end
        # before the number can be reused
        if self.loop.closing_fd(raw.fileno()):
            self._close_later(raw)
        else:
            raw.close()

    def _close_later(self, raw) -> None:
        """libev has events queued for the fd's watchers: close it at the loop's next turn."""
        check = self.loop.check()

        def later(s):
            try:
                s.close()
            except OSError:
                pass
            finally:
                check.stop()
                check.close()
        check.start(later, raw)

    def detach(self) -> int:
        """Give the fd up without closing it (its watchers are closed)."""
        for w in (self._read_event, self._w):
            if w is not None:
                w.close()
        self._read_event = self._w = None
        self._closed = True
        return self._sock.detach()


def _native(name: str):
    return property(lambda self: getattr(self._sock, name), doc=f"The native socket's ``{name}``.")


# the native socket's attributes callers use (an Io's own reads and writes use the native socket
# directly): each delegated by name
for _name in ("family", "type", "proto", "getpeername", "getsockname", "setsockopt", "getsockopt", "shutdown",
              "settimeout", "gettimeout", "setblocking", "recv", "recv_into", "send", "sendall"):
    setattr(_Socket, _name, _native(_name))
del _name

_Socket._wait = _wait_on_socket     # as gevent's socket: wait(watcher), EBADF once closed


class Io:
    """machine_io: a stream socket (TCP or unix) owned by the current machine.

    ``sock`` is the underlying gevent socket (``gevent.ssl.SSLSocket`` after a TLS upgrade) for
    callers that want it raw. Every blocking method takes ``timeout_ms`` (None = no limit) that
    bounds the *whole* call and raises ``TimedOut``; IO errors are ``OSError`` (``ssl.SSLError``
    included), EOF where bytes were required is ``ConnectionClosed``; cancellation propagates.
    After a TimedOut in the middle of ``read``/``write``/``writev`` some bytes may have moved:
    treat the connection as broken.
    """

    # _kind: a listener's (family, type, proto, hub, loop), set by its first accept_now (unset
    # elsewhere)
    # _fread, _fwrite: the socket's FileIO's readinto and write, or None (see use_file)
    __slots__ = ("sock", "_raw", "_tls", "_peer", "_poller", "_kind", "_fread", "_fwrite")

    def __init__(self, sock):
        self.sock = sock
        self._raw = sock._sock  # the non-blocking native socket inside the gevent one
        self._tls = False
        self._peer = None
        self._poller = None     # readable_now()'s poll object, made at its first call
        self._fread = self._fwrite = None

    # -- construction --------------------------------------------------------------------
    @classmethod
    def attach(cls, fd: int) -> "Io":
        """Wrap a file descriptor detached in another machine (family/type detected), as an
        accepted socket is (``_Socket``: with workers > 1 a pooled server is attached again at
        every transaction, where gevent's socket object cost about 20,000 instructions more)."""
        raw = _native_socket(fileno=fd)
        raw.setblocking(False)
        return cls(_Socket(raw, get_hub()))

    def detach(self) -> int:
        """Give up the socket without closing it and return its fd for ``Io.attach`` elsewhere.

        Raises ``MachineError`` for a TLS connection: its state lives in this machine's SSL
        object and cannot move (hand the plain connection over before the TLS upgrade instead).
        """
        if self._tls:
            raise MachineError("a TLS connection cannot move between machines")
        self._drop_file()
        self._raw = None
        return self.sock.detach()

    def use_file(self) -> None:
        """Keep a FileIO over the plain socket's fd (closefd off) for a hot path's reads and
        writes: its readinto and write, bound, in ``_fread`` and ``_fwrite`` (``_fread(buf)``,
        ``_fwrite(data)``; each returns None where the socket would raise BlockingIOError). They
        take their arguments positionally, where the native socket's ``recv_into`` parses them
        as keywords and ``os.write`` needs ``fileno()`` called first; bound, as a FileIO's own
        instance dict leaves a method load on it unspecialized in 3.11 (each socket's dict has
        its own keys). Making one costs about 5,000 instructions and an fstat, so it is for a
        long-lived socket (a pooled server's connection); nothing else reads through it. It goes
        (closed: a late caller gets ValueError, never another socket's bytes) when the socket is
        closed, detached or upgraded to TLS. No-op on a TLS or detached socket, or when one is
        kept already."""
        if self._fread is None and not self._tls and self._raw is not None:
            f = _FileIO(self._raw.fileno(), "r+", closefd=False)
            self._fread, self._fwrite = f.readinto, f.write

    def _drop_file(self) -> None:
        read = self._fread
        if read is not None:
            self._fread = self._fwrite = None
            read.__self__.close()       # (closefd off: the fd stays the socket's)

    # -- state ---------------------------------------------------------------------------
    def fileno(self) -> int:
        return self.sock.fileno()

    @property
    def closed(self) -> bool:
        return self.sock.closed

    @property
    def is_tls(self) -> bool:
        return self._tls

    @property
    def peer(self):
        """The peer address (cached), or None if unknown / not connected."""
        if self._peer is None:
            try:
                self._peer = self.sock.getpeername()
            except OSError:
                return None
        return self._peer

    @property
    def local(self):
        """The local address (getsockname)."""
        return self._opt_sock().getsockname()

    # how long close() may spend sending a TLS close_notify
    TLS_CLOSE_TIMEOUT_MS = 100

    def close(self) -> None:
        """Close the socket. Idempotent. Coroutines waiting on it get an ``OSError`` (EBADF).

        A TLS connection first sends its close_notify (bounded by TLS_CLOSE_TIMEOUT_MS), as
        PostgreSQL does: libpq >= 17 sends CancelRequests inside TLS and reports an EOF without
        close_notify as an error."""
        if self._fread is not None:
            self._drop_file()
        sock = self.sock
        if self._tls and not sock.closed:
            try:
                with deadline(self.TLS_CLOSE_TIMEOUT_MS, "TLS close"):
                    sock = sock.unwrap() or sock
            except Exception:
                pass
            finally:
                self.sock.close()
        sock.close()

    def __repr__(self):
        return f"<Io fd={self.sock.fileno()} peer={self._peer!r}{' tls' if self._tls else ''}>"

    # -- waiting -------------------------------------------------------------------------
    def _wait_read(self):
        sock = self.sock
        sock._wait(sock._read_event)  # raises if closed or already waited on by another coroutine

    def _wait_read_timed(self, timeout_ms):
        """Wait for readability at most ``timeout_ms``: True when readable (or woken), False at
        the timeout, None when this socket cannot be waited on so (no plain watcher to use: the
        caller takes the general path). A close from another coroutine raises EBADF here, as
        gevent's wait does (its cancel_wait throws into the greenlet whose switch the watcher
        holds)."""
        sock = self.sock
        watcher = sock._read_event
        if watcher is None or watcher.callback is not None:
            return None
        loop = watcher.loop
        switch = getcurrent().switch
        timer = loop.timer(seconds(timeout_ms))
        watcher.start(switch, True)
        timer.start(switch, False)
        try:
            return sock.hub.switch() is not False
        finally:
            watcher.stop()
            timer.close()

    def _wait_write(self):
        sock = self.sock
        sock._wait(sock._write_event)

    def pending(self) -> int:
        """Bytes already decrypted and buffered in the TLS object (0 for plain sockets): data a
        poll on the fd would not report."""
        return self.sock.pending() if self._tls else 0

    def wait_readable(self, timeout_ms=None) -> bool:
        """Wait until a read would not block (or the peer closed); return True.

        Raises ``TimedOut`` after ``timeout_ms``. For TLS, bytes already decrypted count.
        """
        if self._tls and self.sock.pending():
            return True
        with deadline(timeout_ms, "wait readable"):
            self._wait_read()
        return True

    def readable_now(self) -> bool:
        """True when a read would not block right now (data, EOF or an error is waiting), without
        consuming anything: one poll() with a zero timeout. An idle pooled connection that is
        readable was closed or messaged by its peer (Odyssey's pool_attach_check).

        Over TLS, raw records are then read through the TLS layer without blocking: a session
        ticket (TLS 1.3 sends them after the handshake) leaves nothing to read and does not
        count; an alert, a close or application data does (the byte read is lost, but such a
        connection is closed anyway)."""
        sock = self.sock
        if self._tls and sock.pending():
            return True
        poller = self._poller          # registered once: asked on every attach of a pooled server
        if poller is None:
            poller = self._poller = select.poll()
            poller.register(sock.fileno(), _POLL_READABLE)
        if not poller.poll(0):
            return False
        if not self._tls:
            return True
        try:
            sock._sslobj.read(1)
        except ssl.SSLWantReadError:
            return False
        except (ssl.SSLError, OSError, ValueError):
            return True
        return True

    # -- accept --------------------------------------------------------------------------
    def accept(self, timeout_ms=None) -> "Io":
        """Accept one connection on a listening Io (machine_accept).

        Raises ``TimedOut`` after ``timeout_ms``; accept errors (EMFILE, ECONNABORTED...) are
        raised as ``OSError`` for the caller's accept loop to back off on.
        """
        io = self.accept_now()
        if io is None:
            with deadline(timeout_ms, "accept"):
                while True:
                    self._wait_read()
                    io = self.accept_now()
                    if io is not None:
                        break
        return io

    def accept_now(self):
        """One accept on a listening Io that never waits: the new connection's Io, or None when
        none is waiting; errors as ``accept``'s."""
        raw = self._raw
        try:
            fd, addr = raw._accept()
        except BlockingIOError:
            return None
        # the listener's ints, hub and loop, read once (a native socket's int members, a gevent
        # socket's hub and a greenlet's loop are attribute loads 3.11 does not specialize: about
        # 1,000 instructions a login)
        try:
            family, type_, proto, hub, loop = self._kind
        except AttributeError:
            hub = self.sock.hub
            family, type_, proto, hub, loop = self._kind = (raw.family, raw.type, raw.proto, hub, hub.loop)
        client = _native_socket(family, type_, proto, fd)
        client.setblocking(False)
        # Io(_Socket(client, hub)) with both __init__s inline (two frames fewer per client)
        sock = _new(_Socket)
        sock._sock = client
        sock.hub = hub
        sock.loop = loop
        sock._read_event = loop.io(fd, 1)
        sock._w = None
        sock._closed = False
        io = _new(Io)
        io.sock = sock
        io._raw = client
        io._tls = False
        io._peer = addr or None
        io._poller = None
        io._fread = io._fwrite = None
        return io

    def refuse_pending(self) -> bool:
        """Accept one connection waiting on a listening Io and close it at once with a reset
        (nolinger), without waiting. False when none waits or accept fails (the caller keeps a
        descriptor in reserve for this when the process is out of them)."""
        try:
            fd, _ = self._raw._accept()
        except OSError:
            return False
        s = _std.socket(fileno=fd)
        try:
            s.setsockopt(_std.SOL_SOCKET, _std.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        s.close()
        return True

    # -- read ----------------------------------------------------------------------------
    def recv_now(self, n: int):
        """One recv of up to ``n`` bytes that never waits: the bytes (b"" at EOF), or None when
        nothing is there yet. Plain (not TLS) connections only."""
        try:
            return self._raw.recv(n)
        except BlockingIOError:
            return None

    def read(self, n: int, timeout_ms=None) -> bytes:
        """Read exactly ``n`` bytes (machine_read). EOF first raises ``ConnectionClosed``."""
        if timeout_ms is None:
            return self._read_exact(n)
        data = b""
        blocked = False
        if not self._tls and n > 0:
            # usually all there already (a login's packets): no deadline to set up for it
            try:
                data = self._raw.recv(n)
            except BlockingIOError:
                blocked = True          # the read below waits first: no second failing recv
            else:
                if len(data) == n:
                    return data
                if not data:
                    raise ConnectionClosed(f"connection closed by peer (0 of {n} bytes)")
            if blocked:
                # nothing there yet (a login's next packet after our message): one bare wait
                # with a loop timer, then the read; the deadline below only if bytes still lack
                end = _monotonic() + timeout_ms / 1000.0
                waited = self._wait_read_timed(timeout_ms)
                if waited is False:
                    raise TimedOut("read timed out")
                if waited:
                    try:
                        data = self._raw.recv(n)
                    except BlockingIOError:
                        data = b""              # (a wake-up with nothing to read: wait again)
                    else:
                        if len(data) == n:
                            return data
                        if not data:
                            raise ConnectionClosed(f"connection closed by peer (0 of {n} bytes)")
                        blocked = False
                    timeout_ms = max(0, int((end - _monotonic()) * 1000))
        with deadline(timeout_ms, "read"):
            return data + self._read_exact(n - len(data)) if data else self._read_exact(n, blocked)

    def _read_exact(self, n, wait_first: bool = False):
        if n <= 0:
            return b""
        if self._tls:
            recv, recv_into, wait = self.sock.recv, self.sock.recv_into, None
        else:
            raw = self._raw
            recv, recv_into, wait = raw.recv, raw.recv_into, self._wait_read
            if wait_first:
                wait()
        try:
            data = recv(n)
        except BlockingIOError:
            data = None
        if data is not None:
            if len(data) == n:
                return data
            if not data:
                raise ConnectionClosed(f"connection closed by peer (0 of {n} bytes)")
        buf = bytearray(n)
        got = 0
        if data:
            got = len(data)
            buf[:got] = data
        mv = memoryview(buf)
        while got < n:
            try:
                k = recv_into(mv[got:])
            except BlockingIOError:
                wait()
                continue
            if not k:
                raise ConnectionClosed(f"connection closed by peer ({got} of {n} bytes)")
            got += k
        return bytes(buf)

    def read_into(self, buf, timeout_ms=None, wait_first: bool = False) -> int:
        """Read what is available (at least 1 byte) into ``buf``; return the count, 0 on EOF.

        ``wait_first=True`` waits for readability before the first recv, saving the recv that
        would return EAGAIN when the caller knows the socket was just drained.
        """
        if self._tls:
            sock = self.sock
            with deadline(timeout_ms, "read"):
                return sock.recv_into(buf)
        raw = self._raw
        if not wait_first:
            try:
                return raw.recv_into(buf)
            except BlockingIOError:
                pass
        with deadline(timeout_ms, "read"):
            while True:
                self._wait_read()
                try:
                    return raw.recv_into(buf)
                except BlockingIOError:
                    continue

    # -- write ---------------------------------------------------------------------------
    def write(self, data, timeout_ms=None) -> None:
        """Write all of ``data`` (bytes-like, byte items) with a send() loop (machine_write).

        Waits for writability only after EAGAIN or a partial send. ``TimedOut`` after
        ``timeout_ms``; a reset/broken peer raises ``OSError``.
        """
        if self._tls:
            with deadline(timeout_ms, "write"):
                self.sock.sendall(data)
            return
        raw = self._raw
        try:
            n = raw.send(data)
        except BlockingIOError:
            n = 0
        if n == len(data):
            return
        mv = memoryview(data).cast("B")[n:]
        with deadline(timeout_ms, "write"):
            while mv:
                self._wait_write()
                try:
                    n = raw.send(mv)
                except BlockingIOError:
                    continue
                mv = mv[n:]

    def writev(self, buffers, timeout_ms=None) -> None:
        """Write several buffers in order with sendmsg (machine_writev); like ``write``."""
        if self._tls:
            self.write(b"".join(buffers), timeout_ms)
            return
        raw = self._raw
        bufs = [memoryview(b).cast("B") for b in buffers]
        bufs = [b for b in bufs if b]
        with deadline(timeout_ms, "write"):
            while bufs:
                try:
                    n = raw.sendmsg(bufs[:_IOV_MAX])
                except BlockingIOError:
                    self._wait_write()
                    continue
                while n:
                    first = bufs[0]
                    if n >= len(first):
                        n -= len(first)
                        bufs.pop(0)
                    else:
                        bufs[0] = first[n:]
                        n = 0

    # -- socket options ------------------------------------------------------------------
    # set on the native socket when there is one: gevent's wrappers convert every option and
    # the family to enums (about a tenth of the Python calls of a login)
    def _opt_sock(self):
        raw = self._raw
        return raw if raw is not None else self.sock

    def set_nodelay(self, on: bool = True) -> None:
        """TCP_NODELAY (no-op on unix sockets)."""
        s = self._opt_sock()
        if s.family in _INET:
            s.setsockopt(_std.IPPROTO_TCP, _std.TCP_NODELAY, int(on))

    def set_keepalive(self, idle=None, interval=None, probes=None, user_timeout=None,
                      on: bool = True) -> None:
        """SO_KEEPALIVE with TCP_KEEPIDLE=``idle`` s, TCP_KEEPINTVL=``interval`` s,
        TCP_KEEPCNT=``probes`` and TCP_USER_TIMEOUT=``user_timeout`` **ms** (Odyssey's
        keepalive, keepalive_keep_interval, keepalive_probes, keepalive_usr_timeout). None keeps
        the system default. No-op on unix sockets."""
        s = self._opt_sock()
        if s.family not in _INET:
            return
        s.setsockopt(_std.SOL_SOCKET, _std.SO_KEEPALIVE, int(on))
        if not on:
            return
        for opt, val in (("TCP_KEEPIDLE", idle), ("TCP_KEEPINTVL", interval),
                         ("TCP_KEEPCNT", probes), ("TCP_USER_TIMEOUT", user_timeout)):
            if val is not None and hasattr(_std, opt):
                s.setsockopt(_std.IPPROTO_TCP, getattr(_std, opt), int(val))

    def set_linger0(self) -> None:
        """SO_LINGER on with 0 s: close() sends RST and frees the port at once."""
        self._opt_sock().setsockopt(_std.SOL_SOCKET, _std.SO_LINGER, _LINGER_0)

    def set_linger_off(self) -> None:
        """SO_LINGER off (the default): close() ends the connection with an orderly FIN."""
        self._opt_sock().setsockopt(_std.SOL_SOCKET, _std.SO_LINGER, _LINGER_OFF)

    # -- TLS -----------------------------------------------------------------------------
    def tls_server(self, context, timeout_ms=None) -> None:
        """Upgrade to TLS as the server (after answering 'S' to SSLRequest).

        ``context``: an ``ssl.SSLContext`` (see ``tls.server_context``). The handshake is bounded
        by ``timeout_ms`` (``TimedOut``); a failed handshake (e.g. a required client certificate
        missing) raises ``ssl.SSLError`` (an ``OSError``). On any failure the Io is closed.
        """
        self._tls_upgrade(context, True, None, timeout_ms)

    def tls_client(self, context, server_hostname=None, timeout_ms=None) -> None:
        """Upgrade to TLS as the client (after the server answered 'S'); see ``tls_server``."""
        self._tls_upgrade(context, False, server_hostname, timeout_ms)

    def _tls_upgrade(self, context, server_side, server_hostname, timeout_ms):
        if self._tls:
            raise MachineError("connection is already TLS")
        self._drop_file()
        if isinstance(self.sock, _Socket):      # gevent's SSL socket wraps a gevent socket
            raw = self._raw
            family, type_, proto = raw.family, raw.type, raw.proto
            self.sock = gsocket.socket(family, type_, proto, fileno=self.sock.detach())
        try:
            ssock = gevent.ssl.SSLSocket(sock=self.sock, server_side=server_side,
                                         server_hostname=server_hostname,
                                         do_handshake_on_connect=False, _context=context)
        except BaseException:
            self.sock.close()
            raise
        self.sock = ssock
        self._raw = None
        self._tls = True
        try:
            with deadline(timeout_ms, "TLS handshake"):
                ssock.do_handshake()
        except BaseException:
            ssock.close()
            raise

    def tls_peer_certificate(self):
        """The peer's certificate as a dict (``getpeercert()``), or None."""
        return self.sock.getpeercert() if self._tls else None


# -- address resolution ----------------------------------------------------------------------
def _resolve(host, port, passive):
    flags = _std.AI_PASSIVE if passive else 0
    if host in (None, "", "*"):
        host = None
        flags |= _std.AI_PASSIVE
    try:  # numeric addresses resolve without the hub's resolver threadpool
        infos = _std.getaddrinfo(host, port, _std.AF_UNSPEC, _std.SOCK_STREAM, 0,
                                 flags | _std.AI_NUMERICHOST)
    except _std.gaierror:
        infos = gsocket.getaddrinfo(host, port, _std.AF_UNSPEC, _std.SOCK_STREAM, 0, flags)
    seen, out = set(), []
    for info in infos:
        key = (info[0], info[4])
        if key not in seen:
            seen.add(key)
            out.append(info)
    return out


# -- listen ----------------------------------------------------------------------------------
def listen(host, port: int, backlog: int = 128, reuseport: bool = False,
           reuseaddr: bool = True, setup=None) -> list:
    """Bind and listen on every address ``host`` resolves to (machine_bind); return [Io].

    ``host`` None/""/"*" means all interfaces (IPv4 and IPv6). SO_REUSEADDR by default,
    SO_REUSEPORT on request; IPv6 sockets are IPV6_V6ONLY so both families can share a port.
    ``setup(io)``, when given, runs on each socket before it listens (options that accepted
    sockets are to inherit from their first). Create listeners in the machine that accepts on
    them.
    """
    ios = []
    try:
        for family, type_, proto, _c, addr in _resolve(host, port, True):
            s = gsocket.socket(family, _std.SOCK_STREAM, proto)
            ios.append(Io(s))
            if reuseaddr:
                s.setsockopt(_std.SOL_SOCKET, _std.SO_REUSEADDR, 1)
            if reuseport:
                s.setsockopt(_std.SOL_SOCKET, _std.SO_REUSEPORT, 1)
            if family == _std.AF_INET6:
                s.setsockopt(_std.IPPROTO_IPV6, _std.IPV6_V6ONLY, 1)
            s.bind(addr)
            if setup is not None:
                setup(ios[-1])
            s.listen(backlog)
    except BaseException:
        for io in ios:
            io.close()
        raise
    return ios


def _remove_stale_unix_socket(path):
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise FileExistsError(errno.EEXIST, "exists and is not a socket", path)
    probe = _std.socket(_std.AF_UNIX, _std.SOCK_STREAM)
    probe.setblocking(False)
    try:
        err = probe.connect_ex(path)
    finally:
        probe.close()
    if err == errno.ECONNREFUSED:
        os.unlink(path)  # nobody listens: stale file from a previous run
    elif err == errno.ENOENT:
        return
    elif err in (0, errno.EAGAIN, errno.EINPROGRESS):
        raise OSError(errno.EADDRINUSE, "a server is already listening on", path)
    else:
        raise OSError(err, os.strerror(err), path)


def listen_unix(path: str, mode: int = 0o777, backlog: int = 128) -> Io:
    """Listen on a unix socket at ``path`` with file mode ``mode``.

    A stale socket file (nobody accepts on it) is removed first; a live one raises
    ``OSError(EADDRINUSE)``; a non-socket file raises ``FileExistsError``.
    """
    _remove_stale_unix_socket(path)
    s = gsocket.socket(_std.AF_UNIX, _std.SOCK_STREAM)
    try:
        s.bind(path)
        os.chmod(path, mode)
        s.listen(backlog)
    except BaseException:
        s.close()
        raise
    return Io(s)


# -- connect ---------------------------------------------------------------------------------
def _connect_sock(s, addr):
    raw = s._sock
    while True:
        err = raw.connect_ex(addr)
        if err == 0 or err == errno.EISCONN:
            return
        if err in (errno.EINPROGRESS, errno.EALREADY):
            s._wait(s._write_event)
            err = s.getsockopt(_std.SOL_SOCKET, _std.SO_ERROR)
            if err:
                raise OSError(err, os.strerror(err))
            return
        if err == errno.EAGAIN and s.family == _std.AF_UNIX:
            sleep(5)  # unix listener's backlog is full: retry until the deadline
            continue
        raise OSError(err, os.strerror(err))


# Once connected, a socket's Io holds a _Socket, as an accepted one's does, instead of the
# gevent socket that waited for the connect: gevent's class has a __getattr__, so 3.11 leaves
# every attribute load on it unspecialized (about 300 instructions each), and the relay reads a
# pooled server's read watcher from it at each attach. A TLS upgrade swaps it for a gevent
# socket again (Io._tls_upgrade), as for an accepted one.
def connect(host: str, port: int, timeout_ms=None) -> Io:
    """Connect over TCP to ``host:port`` (IPv4, IPv6 literal or name) (machine_connect).

    Each resolved address is tried in turn within one ``timeout_ms`` deadline (``TimedOut``);
    a refused connection raises ``ConnectionRefusedError`` at once.
    """
    with deadline(timeout_ms, f"connect {host}:{port}"):
        last = None
        for family, _t, proto, _c, addr in _resolve(host, port, False):
            s = gsocket.socket(family, _std.SOCK_STREAM, proto)
            try:
                _connect_sock(s, addr)
            except OSError as e:
                s.close()
                last = e
                continue
            except BaseException:
                s.close()
                raise
            io = Io.attach(s.detach())      # connected: see above connect()
            io._peer = addr
            return io
        raise last if last is not None else OSError(errno.EADDRNOTAVAIL, f"no address for {host}")


def connect_unix(path: str, timeout_ms=None) -> Io:
    """Connect to a unix socket; ``TimedOut`` while its backlog stays full past ``timeout_ms``."""
    with deadline(timeout_ms, f"connect {path}"):
        s = gsocket.socket(_std.AF_UNIX, _std.SOCK_STREAM)
        try:
            _connect_sock(s, path)
        except BaseException:
            s.close()
            raise
        io = Io.attach(s.detach())          # connected: see above connect()
        io._peer = path
        return io


__all__ = ["Io", "listen", "listen_unix", "connect", "connect_unix"]


def reverse_dns(addr: str) -> str | None:
    """The host name of ``addr`` by reverse DNS, confirmed by a forward lookup (as pg_hba and
    Odyssey's hostname rules do); None when either lookup fails or they disagree. Runs in the
    calling machine's resolver threadpool, so only the calling coroutine waits."""
    try:
        name = gsocket.gethostbyaddr(addr)[0]
        infos = gsocket.getaddrinfo(name, None, 0, _std.SOCK_STREAM)
    except (OSError, UnicodeError):
        return None
    return name if any(info[4][0] == addr for info in infos) else None

