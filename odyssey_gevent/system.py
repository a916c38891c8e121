"""The system machine: listen servers, the accept loops, signals, cron and the worker pool
(mirrors Odyssey sources/system.c).

One listen server per resolved address of each `listen` block (`host "*"` binds every address,
a name only its first), or a unix socket `<unix_socket_dir>/.s.PGSQL.<port>` when the block has
no host. New clients are fed round-robin to the workers; with `workers 1` the single worker runs
as coroutines of the system machine itself (the seed's single-worker mode).
"""
from __future__ import annotations

import errno
import os
import signal
import socket
import sys

import machinarium
from gevent import getcurrent
from kiwi import error_codes
from odyssey_gevent import cron, restart, supervisor
from odyssey_gevent.id import new_id
from odyssey_gevent.status import FrontendError, error_message
from odyssey_gevent.worker import WorkerPool, _spawn


class ListenServer:
    def __init__(self, listen, io, name: str, unix_path: str | None = None):
        self.listen = listen
        self.io = io
        self.name = name
        self.unix_path = unix_path
        self.coroutine = None
        self.options_for = None     # the config whose client socket options the listener carries
        # the socket file as bound (st_dev, st_ino): after an online restart the path holds the
        # new process's socket, which the old one must not unlink
        self.file_id = _file_id(unix_path) if unix_path else None


def _file_id(path: str):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def start_listeners(instance) -> list[ListenServer]:
    config = instance.config
    log = instance.logger
    servers = []
    for listen in config.listen:
        try:
            if listen.host is None:
                if supervisor.INDEX != 0:      # processes N: a socket file has one owner, process 0
                    continue
                path = os.path.join(config.unix_socket_dir, f".s.PGSQL.{listen.port}")
                mode = int(config.unix_socket_mode, 8) if config.unix_socket_mode else 0o777
                if restart.taking_over(instance):   # online restart: take the file over
                    io = restart.listen_unix_over(path, mode, listen.backlog)
                else:
                    io = machinarium.listen_unix(path, mode, listen.backlog)
                servers.append(ListenServer(listen, io, path, path))
                log.info("server", None, None, "listening on %s", path)
                continue
            host = listen.host
            # after an online restart from a side with more sockets than ours, each address is
            # bound more than once (supervisor.LISTENERS): the steering needs as many (restart.py)
            for copy in range(supervisor.LISTENERS):
                ios = machinarium.listen(None if host == "*" else host, listen.port, listen.backlog,
                                         reuseport=config.bindwith_reuseport,
                                         setup=(lambda io: _socket_options(io, config, log, explicit=True))
                                         if _INHERITED else None)
                if host != "*":
                    for extra in ios[1:]:      # a name binds only its first address, as Odyssey does
                        extra.close()
                    ios = ios[:1]
                for io in ios:
                    addr = io.local
                    name = f"[{addr[0]}]:{addr[1]}" if io.sock.family == socket.AF_INET6 else f"{addr[0]}:{addr[1]}"
                    servers.append(ListenServer(listen, io, name))
                    servers[-1].options_for = config if _INHERITED else None
                    if copy == 0 and supervisor.LISTENERS > 1:
                        log.info("server", None, None, "listening on %s (%d sockets: the side this one took "
                                 "over from had more)", name, supervisor.LISTENERS)
                    elif copy == 0:
                        log.info("server", None, None, "listening on %s", name)
        except OSError as e:
            where = listen.host or "unix socket"
            log.error("server", None, None, "failed to listen on %s:%d: %s", where, listen.port, e)
    return servers


# Out of file descriptors (EMFILE/ENFILE), a client would wait in the listen queue until one
# frees. One descriptor is kept in reserve so that waiting clients can be accepted and refused at
# once with a reset, as C Odyssey does; the log says so at most once a second.
_OUT_OF_FDS = (errno.EMFILE, errno.ENFILE)
_reserve_fd: list = [None]


def _keep_reserve() -> None:
    if _reserve_fd[0] is None:
        try:
            _reserve_fd[0] = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            pass


def _refuse_queued(listen_io) -> int:
    """Reset the clients waiting in the listen queue, with the reserve descriptor."""
    n = 0
    while _reserve_fd[0] is not None:
        os.close(_reserve_fd[0])
        _reserve_fd[0] = None
        refused = listen_io.refuse_pending()
        _keep_reserve()
        if not refused:
            break
        n += 1
    return n


class _HubAccept:
    """With `workers 1`: the listener's read watcher accepts in the hub, and starts the usual
    client (counted under client_max, the listener's socket options current) there at once
    (Coroutine.start_yielding from the hub, as run_now), instead of waking the accept loop's
    greenlet for each: per login two greenlet switches, a loop callback and the loop's wait
    fewer. One accept per call, then another at the loop's next turn (a loop callback), as the
    loop accepted one client per turn until none was waiting. Anything
    else (an accept error, a client over client_max, socket options to set after a reload) is
    handed to the accept loop's greenlet, parked in wait(), which deals with it as before.

    The watcher's callback is a bound method of this object: a close of the listener throws
    into the greenlet its callback's __self__ names (gevent's cancel_wait, as for its Waiter),
    which throw() passes on to the accept loop."""

    __slots__ = ("instance", "server", "listen_io", "conn_type", "watcher", "hub", "glet", "run_callback",
                 "again")

    def __init__(self, instance, server, conn_type):
        self.instance = instance
        self.server = server
        self.listen_io = server.io
        self.conn_type = conn_type
        self.watcher = server.io.sock._read_event
        self.hub = server.io.sock.hub
        self.glet = None
        # ready()'s look at the loop's next turn: the loop's run_callback and this object's
        # ready, bound once (a hub attribute load, which 3.11 does not specialize on a greenlet,
        # and a bound method made per login cost about 500 instructions). (The bound method is a
        # reference cycle through this object: one per listener, freed by the collector.)
        self.run_callback = self.hub.loop.run_callback
        self.again = self.ready

    def wait(self):
        """From the accept loop: park until the callback hands over an accepted client (its Io)
        or an accept error (raised); a close of the listener raises EBADF (OSError)."""
        watcher = self.watcher
        self.glet = getcurrent()
        watcher.start(self.ready)
        try:
            while True:
                item = self.hub.switch()
                if item.__class__ is tuple:     # (anything else: a stray wake-up)
                    break
        finally:
            watcher.stop()
            self.glet = None            # (not parked: a queued ready() does nothing)
        io, exc = item
        if exc is not None:
            raise exc
        return io

    def throw(self, *args) -> None:
        self.glet.throw(*args)

    def ready(self) -> None:
        if self.glet is None:
            return
        try:
            io = self.listen_io.accept_now()
        except OSError as e:
            self.glet.switch((None, e))
            return
        if io is None:
            return
        instance = self.instance
        server = self.server
        peer = None
        if self.conn_type == "host":
            p = io._peer
            if p is None or server.options_for is not instance.config:
                self.glet.switch((io, None))
                return
            peer = (p[0], p[1])
        # Instance.client_opened's one-thread case inline (the hub accept runs with workers 1;
        # a frame fewer per login); a client over client_max is not counted: the loop asks again
        # and refuses it
        client_max = instance.config.client_max
        if client_max and instance.clients >= client_max:
            self.glet.switch((io, None))
            return
        instance.clients += 1
        _spawn(instance, io, server.listen, self.conn_type, peer, None)
        # the next client is often waiting already: accepted at the loop's next turn without a
        # poll for it, as the accept loop did (one callback; each poll of the listener is an
        # epoll_wait and a getpid more)
        self.run_callback(self.again)


def accept_loop(instance, server: ListenServer, pool: WorkerPool) -> None:
    log = instance.logger
    backoff = 0
    conn_type = "local" if server.unix_path else "host"
    _keep_reserve()
    refused = 0               # clients reset for want of descriptors since the last log line
    logged_at = None
    hub_accept = None
    if pool.count <= 1 and getattr(server.io.sock, "_read_event", None) is not None:
        hub_accept = _HubAccept(instance, server, conn_type)
    while True:
        try:
            io = server.io.accept() if hub_accept is None else hub_accept.wait()
        except OSError as e:
            if server.io.closed:
                return
            if e.errno in _OUT_OF_FDS:
                refused += _refuse_queued(server.io)
                backoff = min(max(backoff * 2, 10), 100)
                now = machinarium.time_ms()
                if logged_at is None or now - logged_at >= 1000:
                    logged_at = now
                    log.error("server", None, None, "accept failed on %s: %s: %d client(s) refused with a "
                              "reset (logged at most once a second)", server.name, e.strerror, refused)
                    refused = 0
                machinarium.sleep(backoff)
                continue
            backoff = min(max(backoff * 2, 10), 1000)
            log.error("server", None, None, "accept failed on %s: %s (retry in %d ms)", server.name, e, backoff)
            machinarium.sleep(backoff)
            continue
        backoff = 0
        config = instance.config
        if not instance.client_opened():
            err = FrontendError(error_codes.TOO_MANY_CONNECTIONS,
                                f"too many tcp connections (global client_max {config.client_max})")
            log.error("server", None, None, "%s", err.message)
            instance.router.errors.router_error("OD_ROUTER_ERROR_LIMIT")     # SHOW ERRORS, as C counts it
            machinarium.coroutine_create(reject, io, error_message(err, new_id("c")), name="reject")
            continue
        peer = None
        if conn_type == "host":
            if server.options_for is not config:
                _socket_options(io, config, log, explicit=_INHERITED)     # it has the old ones
                if _INHERITED:      # reloaded: the listener's for the next ones (see _INHERITED)
                    server.options_for = config
                    _socket_options(server.io, config, log, explicit=True)
            try:
                p = io._peer            # as accept() found it (Io.peer's frame only without it)
                if p is None:
                    p = io.peer
                peer = (p[0], p[1]) if p else None
            except OSError:               # the client is already gone
                io.close()
                instance.client_closed()
                continue
        # the local address: asked only if SHOW CLIENTS wants it (Client.local_host). The new
        # client runs before the next accept (up to its first wait): started at once with this
        # loop's turn given up (Coroutine.start_yielding), or by a yield here
        # (one worker: _spawn called here, feed's frame fewer per login)
        if pool.count <= 1:
            if not _spawn(instance, io, server.listen, conn_type, peer, None):
                machinarium.sleep(0)
        elif not pool.feed(io, server.listen, conn_type, peer, None):
            machinarium.sleep(0)


_option_errors_logged: set = set()

# Linux gives an accepted TCP socket a copy of its listener's options (TCP_NODELAY, SO_KEEPALIVE
# and the TCP_KEEP*/TCP_USER_TIMEOUT values, SO_LINGER): set once on the listener, they cost a
# login nothing, where six setsockopt calls per client cost about 15,000 instructions and six
# system calls (SO_LINGER's bytes value alone fails two argument parsings first). Elsewhere
# they are set on every accepted socket. They are set before the listener listens; after a
# reload, on the listener again (and on the client accepted then: clients that were already
# waiting in the listen queue keep the options of the config they arrived under).
_INHERITED = sys.platform.startswith("linux")


def _socket_options(io, config, log, explicit: bool = False) -> None:
    """TCP_NODELAY, keepalive (a negative keepalive_usr_timeout is computed from the other three,
    as C does) and nolinger on an accepted client or on its listener; `explicit` sets every
    option also when off (a socket may carry options inherited from an older config). An option
    the kernel refuses costs nothing but itself: the client is served without it, and each kind
    of failure is logged once."""
    steps = []
    if config.nodelay or explicit:
        steps.append(("TCP_NODELAY", io.set_nodelay, (config.nodelay,)))
    if config.keepalive > 0:
        steps.append(("keepalive", io.set_keepalive,
                      (config.keepalive, config.keepalive_keep_interval, config.keepalive_probes,
                       config.effective_keepalive_usr_timeout or (0 if explicit else None))))
    elif explicit:
        steps.append(("keepalive", _keepalive_off, (io,)))
    if not config.disable_nolinger:
        steps.append(("SO_LINGER", io.set_linger0, ()))
    elif explicit:
        steps.append(("SO_LINGER", io.set_linger_off, ()))
    for name, fn, args in steps:
        try:
            fn(*args)
        except OSError as e:
            key = (name, e.errno)
            if key not in _option_errors_logged:
                _option_errors_logged.add(key)
                log.error("server", None, None, "cannot set %s on client sockets (%s); serving them "
                          "without it (logged once)", name, e)


def _keepalive_off(io) -> None:
    """A listener's keepalive off again after a reload, with TCP_USER_TIMEOUT back at 0 (the
    kernel's default: a client accepted with keepalive 0 never had it set)."""
    io.set_keepalive(on=False)
    if hasattr(socket, "TCP_USER_TIMEOUT"):
        io.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 0)


REJECT_DRAIN_MS = 1000


def reject(io, message: bytes) -> None:
    """Send an error to a client refused at accept and close without losing it: closing with its
    startup packet still unread would make the kernel send a reset, and the client could see a
    reset instead of the error. So: write, shut our side, read and drop until EOF (bounded)."""
    try:
        io.write(message, REJECT_DRAIN_MS)
        io.sock.shutdown(socket.SHUT_WR)
        buf = bytearray(4096)
        deadline = machinarium.time_ms() + REJECT_DRAIN_MS
        while io.read_into(buf, max(0, deadline - machinarium.time_ms())) > 0:
            pass
    except (OSError, machinarium.TimedOut):
        pass
    finally:
        io.close()


def _close_listeners(servers) -> None:
    for s in servers:
        if not s.io.closed:
            s.io.close()
        if s.unix_path and _file_id(s.unix_path) == s.file_id:
            try:
                os.unlink(s.unix_path)
            except OSError:
                pass
        s.unix_path = None


SHUTDOWN_POLL_MS = 100       # how often the shutdown looks at the client count
SHUTDOWN_FORCE_GRACE_MS = 1000   # after the timeout: time for the dropped clients to be told


def graceful_shutdown(instance, watcher, pool) -> None:
    """After the first SIGTERM/SIGINT (listeners already closed), as C Odyssey: every client is
    closed at its next idle point (no server, or its server idle outside a transaction) with
    FATAL 57P01; the pooler exits when no client is left, or after graceful_shutdown_timeout_ms
    (the rest are dropped with the same error), or at once when the count of SIGTERM/SIGINT
    reaches max_sigterms_to_die."""
    log = instance.logger
    config = instance.config
    sigterms = 1
    if config.max_sigterms_to_die > 0 and sigterms >= config.max_sigterms_to_die:
        log.info("system", None, None, "max_sigterms_to_die %d reached, exiting at once",
                 config.max_sigterms_to_die)
        return
    timeout = max(0, config.graceful_shutdown_timeout_ms)
    instance.shutting_down = True
    pool.wake()
    log.info("system", None, None, "graceful shutdown: no new connections, waiting for %d client(s) "
             "to reach an idle point (graceful_shutdown_timeout_ms %d)", instance.clients, timeout)
    deadline = machinarium.time_ms() + timeout
    forced_until = None
    # an online restart drain ejects idle clients at the conn_drop_options rate: look again
    rewake = instance.successor is not None and config.conn_drop_options.drop_enabled
    while instance.clients > 0:
        now = machinarium.time_ms()
        if rewake and forced_until is None:
            pool.wake()
        if forced_until is None and now >= deadline:
            log.info("system", None, None, "graceful shutdown: timeout reached, dropping %d client(s)",
                     instance.clients)
            instance.shutdown_force = True
            pool.wake()
            forced_until = now + SHUTDOWN_FORCE_GRACE_MS
        if forced_until is not None and now >= forced_until:
            log.info("system", None, None, "graceful shutdown: exiting with %d client(s) left",
                     instance.clients)
            return
        try:
            sig = watcher.wait(SHUTDOWN_POLL_MS)
        except machinarium.TimedOut:
            continue
        if sig in (signal.SIGINT, signal.SIGTERM):
            sigterms += 1
            if config.max_sigterms_to_die > 0 and sigterms >= config.max_sigterms_to_die:
                log.info("system", None, None, "%s received (%d of max_sigterms_to_die %d), exiting at once",
                         signal.Signals(sig).name, sigterms, config.max_sigterms_to_die)
                return
            log.info("system", None, None, "%s received (%d of max_sigterms_to_die %d), still shutting down",
                     signal.Signals(sig).name, sigterms, config.max_sigterms_to_die)
        elif sig == signal.SIGUSR1:
            instance.logger.reopen()
    log.info("system", None, None, "graceful shutdown: all clients are gone")


def system_main(instance) -> int:
    log = instance.logger
    pool = WorkerPool(instance)
    pool.start()
    # signals are watched before the port opens: whoever waits for the port and then signals
    # (a reload, SIGUSR2, a stop) must find them handled, not the default action, which ends the
    # process for SIGHUP, SIGUSR1 and SIGUSR2; one that comes meanwhile waits in the channel
    watcher = machinarium.SignalWatcher()
    supervisor.signals_ready()
    servers = start_listeners(instance)
    if not servers:
        log.fatal("server", None, None, "failed to bind any listen address")
        watcher.close()
        pool.stop()
        return 1
    for s in servers:
        s.coroutine = machinarium.coroutine_create(accept_loop, instance, s, pool, name=f"listen {s.name}")
    cron_coro = machinarium.coroutine_create(cron.cron_main, instance, name="cron")
    supervisor.start_peer(instance)     # cancel requests from the other processes (or side of a restart)
    supervisor.tell_listening()         # processes N: the supervisor counts the processes that listen
    restart.announce(instance)          # started by an online restart: the old process may go
    rc = 0
    try:
        while True:
            poll_ms = restart.poll(instance, servers)
            try:
                sig = watcher.wait(poll_ms)
            except machinarium.TimedOut:
                continue
            if sig == signal.SIGHUP:
                log.info("system", None, None, "SIGHUP received")
                if instance.successor is not None:
                    log.info("system", None, None, "performing an online restart now, SIGHUP is ignored")
                    continue
                instance.reload()
            elif sig == signal.SIGUSR1:
                log.info("system", None, None, "SIGUSR1 received, reopening the log file")
                instance.logger.reopen()
            elif sig == signal.SIGUSR2:
                restart.request(instance)
            elif sig in (signal.SIGINT, signal.SIGTERM):
                log.info("system", None, None, "%s received, shutting down", signal.Signals(sig).name)
                if instance.successor is not None:
                    restart.hand_over(instance, servers)
                _close_listeners(servers)
                graceful_shutdown(instance, watcher, pool)
                break
    finally:
        watcher.close()
        _close_listeners(servers)
        cron_coro.cancel()
        supervisor.stop_peer(instance)
        pool.stop()
        cron.close_all_servers(instance)
    return rc
