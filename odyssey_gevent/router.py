"""The router: client routing, server attach/detach with pool limits, FIFO waiting and cancel-key
lookup (mirrors Odyssey sources/router.c).

Design choice: Odyssey's architecture document describes the router as a separate coroutine
that workers talk to by request/reply messages. Since 1.x C Odyssey calls a lock-guarded router
directly, and so do we: in transaction pooling every transaction attaches and detaches a
server, and a request/reply round trip through a channel costs a hub wake-up each way (~12 µs in
one machine, 100-250 µs across threads, see scripts/bench_machinarium.py), where taking an
uncontended lock costs well under a microsecond. The lock is a plain threading.Lock held only
for list operations, never across IO; what it guards is written once, in route.py. Waiting for
a server is the client's own reusable Waiter (a machinarium Wakeup: nothing allocated per
wait), queued FIFO under the lock; whoever frees a server takes the first waiter out of the
queue, links the server to it under the lock and wakes that client's coroutine (thread-safely),
so waiting is FIFO and nobody polls. Only who takes a waiter out of the queue wakes it (the
hand-over, KILL_CLIENT), once, which lets the wake-up switch straight into it (Wakeup's direct
mode); a wait that ends otherwise leaves the queue, or drops that wake-up, under the lock.
"""
from __future__ import annotations

import threading
import time

from kiwi import error_codes
from odyssey_gevent.client import ClientState
from odyssey_gevent.err_logger import Errors
from odyssey_gevent import shared_pool, waiting
from odyssey_gevent.route import Route, Waiter
from odyssey_gevent.rules import route_key
from odyssey_gevent.server import Server, ServerState, held
from odyssey_gevent.status import FrontendError

# Enum members read on every attach and detach, bound here (see route.py's _IDLE)
_C_ACTIVE, _C_PENDING, _C_QUEUE, _C_UNDEF = ClientState.ACTIVE, ClientState.PENDING, ClientState.QUEUE, ClientState.UNDEF
_S_IDLE, _S_ACTIVE = ServerState.IDLE, ServerState.ACTIVE


class _OneThread:
    """Router.lock with `workers 1`: every router call runs in one thread, the system machine's
    (its accept loop runs each client as its coroutine; cron, the console and the metrics
    exporter are its coroutines too), and the lock is never held across a switch (the lock rule
    in route.py), so holding it excludes nothing there. acquire and release are a C call that
    does nothing (tuple() gives the empty tuple): about 40 ns less than a threading.Lock's pair,
    which parses acquire's keywords and takes a mutex (twice per transaction: attach_idle and
    detach). `with` (cold paths) works as well."""
    __slots__ = ()
    acquire = release = __enter__ = tuple

    def __exit__(self, exc_type, exc, tb) -> None:
        return None


class AttachTimeout(Exception):
    """pool_timeout expired while waiting for a server."""


class Router:
    def __init__(self, instance):
        self.instance = instance
        # one thread (workers 1) needs no lock; an instance without a worker count (a test's
        # stand-in) gets the real one
        self.lock = _OneThread() if getattr(instance, "workers", 2) <= 1 else threading.Lock()
        # the lock the per-transaction calls take (Frontend.attach_now and detach_now, queue_now,
        # detach) and the login's (route, unroute): None with one thread, where they skip the
        # stand-in's calls altogether (a `tuple` class attribute: its method load is not
        # specialized and the call goes through tuple(), about 200 instructions a pair where an
        # `is not None` test costs a few)
        self.mt_lock = None if isinstance(self.lock, _OneThread) else self.lock
        self.routes: dict[tuple, Route] = {}
        self.keys: dict[tuple[int, int], object] = {}     # (pid, secret) -> client, for CancelRequest
        self.errors = Errors()                # SHOW ERRORS / ERRORS_PER_ROUTE (err_logger)
        # PAUSE/RESUME (console): while paused, a route's clients get no server; the waiting
        # ones queue as for a full pool and RESUME hands out servers
        self.paused_all = False
        self.paused_dbs: set[str] = set()
        # one thread (no mt_lock) and nothing paused: the relay's client callback tests this one
        # flag before its inline copies of attach_idle's and queue_now's common cases (once per
        # transaction), where the three tests it stands for cost about 160 instructions more;
        # kept by pause() and resume(), the only writers of the pause state (anything not plain
        # goes to the routines themselves, which test the pause state as it is)
        self.plain = self.mt_lock is None
        self.stat_time = time.monotonic()     # when cron last took the stats snapshots (RouteStats.prev)

    # -- routing -----------------------------------------------------------------------------
    def route(self, client) -> Route:
        """Match the client's rule and register it on its route; raises FrontendError. (The
        global client_max is checked once, at accept: Instance.client_opened.)"""
        inst = self.instance
        db, user = client.database, client.user
        rule = inst.rules.match(db, user, client.peer_host, client.conn_type, client.tls)
        if rule is None:
            self.errors.router_error("OD_ROUTER_ERROR_NOT_FOUND")
            raise FrontendError(error_codes.INVALID_CATALOG_NAME, f"route for '{db}.{user}' is not found")
        route_db = rule.storage_db or db
        route_user = rule.storage_user or user
        # looked up with a plain tuple (equal to its RouteKey, which is made only for a new route:
        # a named tuple's constructor is a Python-level call)
        lookup = (route_db, route_user, id(rule))
        lock = self.mt_lock         # None with one thread: see mt_lock
        if lock is not None:
            lock.acquire()          # not `with`: see attach_idle
        try:
            route = self.routes.get(lookup)
            if route is None:
                key = route_key(rule, db, user)
                route = self.routes[key] = Route(key, rule, route_db, route_user)
                route.set_plain(self.plain)     # (see Route.plain)
            route.tcp_connections += 1
            if rule.client_max and len(route.clients) >= rule.client_max:
                self.errors.router_error("OD_ROUTER_ERROR_LIMIT_ROUTE", route)
                raise FrontendError(error_codes.TOO_MANY_CONNECTIONS,
                                    f"too many client tcp connections (client_max for user {db}.{user} "
                                    f"{rule.client_max})")
            route.clients.add(client)
            self.keys[(client.key_pid, client.key_secret)] = client
            client.rule = rule
            client.route = route
            client.state = _C_PENDING
        finally:
            if lock is not None:
                lock.release()
        return route

    def unroute(self, client) -> None:
        route = client.route
        if route is None:
            return
        lock = self.mt_lock         # None with one thread: see mt_lock
        if lock is not None:
            lock.acquire()          # not `with`: see attach_idle
        try:
            route.clients.discard(client)
            self.keys.pop((client.key_pid, client.key_secret), None)
            waiter = client.waiter
            if waiter is not None and waiter in route.waiters:
                route.waiters.remove(waiter)
            client.state = _C_UNDEF
        finally:
            if lock is not None:
                lock.release()

    # -- attach / detach ---------------------------------------------------------------------
    def attach(self, client, timeout_ms: int | None) -> Server:
        """Give the client a server of its route: an idle one, a new (unconnected) one while the
        pool has room, or the next one freed, waiting FIFO up to timeout_ms (None = forever).
        The caller connects a server whose `connected` is False. Raises AttachTimeout (also
        when the client was killed meanwhile: client.killed). While its route is paused the
        client waits without a deadline; pool_timeout starts again once it is resumed."""
        route = client.route
        rule = client.rule
        offline: list[Server] = []
        after = rule.pool_notice_after_waiting_ms
        with self.lock:
            server = self._take(route, rule.pool_size, offline)
            if server is None:
                waiter = client.waiter
                if waiter is None:
                    waiter = client.waiter = Waiter(client)
                # direct wake-up (machinarium.Wakeup's contract) unless something may switch
                # this coroutine out before it parks: closing servers, NOTICEs
                direct = not offline and (after is None or after < 0)
                waiter.arm(direct)
                waiter.server = None
                waiter.since = time.monotonic()
                route.waiters.append(waiter)
                client.state = ClientState.QUEUE
            else:
                self._link(client, server)
        if offline:
            for dead in offline:             # closed outside the lock: closing may block
                self.instance.close_server_later(dead)
        if server is not None:
            return server
        return self._wait(client, route, waiter, timeout_ms, timeout_ms, direct, after)

    def attach_queued(self, client, timeout_ms: int | None) -> Server:
        """The client's coroutine takes over a wait queued by queue_now (the relay's fast path
        woke it for something else than the hand-over: pool_timeout's timer, a shutdown, a
        kill): the server handed over meanwhile, else it goes on waiting from its place in the
        queue, up to timeout_ms from when it was queued. Raises AttachTimeout as attach()."""
        route = client.route
        waiter = client.waiter
        with self.lock:
            if waiter not in route.waiters:
                waiter.cancel()              # the continuation the hand-over queued must not run
                # the client's server, not waiter.server: a callback wait's is stored by nobody
                # (the queueing, queue_now and Relay._on_client, and the reply walk's inline
                # hand-over leave it as an earlier hand-over left it: one store fewer in each
                # per queued transaction). Under this lock the two agree: whoever takes the
                # waiter out of the queue links the client (client.server) under it, a kill
                # links nothing, and the client was queued without a server
                server = client.server
                if server is not None:
                    return server
                if client.state is ClientState.QUEUE:
                    client.state = ClientState.PENDING
                raise AttachTimeout()        # killed (KILL_CLIENT)
            waiter.arm(False)                # the coroutine's wait from now on (guarded)
            waiter.server = None             # (_wait reads it: see above)
        wait_ms = timeout_ms
        if timeout_ms is not None:
            wait_ms = max(0, timeout_ms - int((time.monotonic() - waiter.since) * 1000.0))
        return self._wait(client, route, waiter, timeout_ms, wait_ms, False, None)

    def _wait(self, client, route: Route, waiter: Waiter, timeout_ms, wait_ms, direct: bool, after) -> Server:
        """attach()'s wait in the queue: wait_ms the first time, timeout_ms after a pause."""
        while True:
            try:
                if wait_ms == 0:
                    woken = False            # attach_queued: its time was up already
                elif after is None or after < 0:
                    woken = waiter.park(wait_ms)
                else:                        # NOTICEs while it waits (waiting.py)
                    woken = waiting.wait(waiter, client, wait_ms)
            except BaseException:            # cancelled while queued
                self._leave(route, client, waiter)
                raise
            if woken:
                server = waiter.server       # linked (and counted) by hand_to_waiter, then woken
                if server is not None:
                    return server
            with self.lock:
                if waiter in route.waiters:  # the timeout: nobody took it out of the queue
                    if self.is_paused(route) and not client.killed:
                        waiter.arm(direct)
                        wait_ms = timeout_ms
                        continue
                    route.waiters.remove(waiter)
                    client.state = ClientState.PENDING
                    raise AttachTimeout()
                # taken out by hand_to_waiter or kill: unless that wake-up resumed us, its
                # resume is still queued in our loop and must not run
                if not woken:
                    waiter.cancel()
                server = waiter.server
                if server is not None:
                    return server
                client.state = ClientState.PENDING      # killed (KILL_CLIENT)
                raise AttachTimeout()

    def _leave(self, route: Route, client, waiter: Waiter) -> None:
        """A queued client's wait ended by an exception (its coroutine cancelled): out of the
        queue, or, if a server was handed over meanwhile (it stays linked: the client's cleanup
        returns it), drop the wake-up queued for it."""
        with self.lock:
            if waiter in route.waiters:
                route.waiters.remove(waiter)
                if client.state is ClientState.QUEUE:
                    client.state = ClientState.PENDING
            else:
                waiter.cancel()

    def leave_queue(self, client) -> None:
        """A wait queued by queue_now ended by an exception in the client's coroutine: as
        _leave (a server handed over meanwhile stays linked; its continuation is dropped)."""
        waiter = client.waiter
        if waiter is not None:
            self._leave(client.route, client, waiter)

    def attach_idle(self, client) -> Server | None:
        """The non-waiting attach of the relay's fast path (run in the hub): the route's most
        recently used idle server, linked to the client, when one is there now and not marked
        offline, the route not paused; else None (the client then attaches as usual). Its
        one-worker case is copied by Relay._on_client (test_frontend_fast keeps the two in step)."""
        route = client.route
        # acquire/release, not `with`: once per transaction, and `with` costs about twice as
        # much (two special-method lookups, and acquire's argument parsing either way)
        lock = self.mt_lock             # None: one thread (see mt_lock)
        if lock is not None:
            lock.acquire()
        try:
            idle = route.idle
            if not idle or idle[-1].offline or self.paused_all or self.paused_dbs and route.db in self.paused_dbs:
                return None
            # route.take_idle() and _link() inline (once per transaction)
            server = idle.pop()
            server.state = _S_ACTIVE
            route.active.add(server)
            server.client = client
            client.server = server
            client.state = _C_ACTIVE
            route.stats.count_server_assignment += 1
        finally:
            if lock is not None:
                lock.release()
        return server

    def queue_now(self, client, cont, loop, ident):
        """The relay fast path's attach when attach_idle found no idle server (run in the hub,
        where nothing may wait): a new, unconnected server linked to the client while its pool
        has room (the coroutine connects it); False when the coroutine must attach as usual
        (idle servers to look at, a paused route, a shared pool); or None: the client is queued
        FIFO among all waiters with a callback wake-up, and whoever takes it out of the queue
        (hand_to_waiter, KILL_CLIENT) runs `cont` in the client's own hub (`loop`, thread
        `ident`), with the client linked (client.server), or None when killed. Its one-worker common case (a
        full pool, the waiter armed by an earlier wait) is copied by Relay._on_client
        (test_frontend_fast keeps the two in step)."""
        route = client.route
        rule = client.rule
        lock = self.mt_lock             # acquire/release, not `with`: see attach_idle; None:
        if lock is not None:            # one thread (see mt_lock)
            lock.acquire()
        try:
            if (route.idle or route.queue_odd      # a shared pool or pool_notice: see Route
                    or self.paused_all or self.paused_dbs and route.db in self.paused_dbs):
                return False
            pool_size = rule.pool_size
            if not pool_size or len(route.active) < pool_size:
                server = Server(route)
                route.set_server_state(server, _S_ACTIVE)
                self._link(client, server)
                return server
            waiter = client.waiter
            if waiter is None:
                waiter = client.waiter = Waiter(client)
            if waiter.callback is not cont:    # armed once, not per wait (Wakeup.callback)
                waiter.arm_callback(cont, loop, ident)
            # (no waiter.server store: a callback wait's is read by nobody, see attach_queued)
            waiter.since = time.monotonic()
            route.waiters.append(waiter)
            client.state = _C_QUEUE
        finally:
            if lock is not None:
                lock.release()
        return None

    # -- PAUSE / RESUME / KILL_CLIENT (console) ------------------------------------------------
    def is_paused(self, route: Route) -> bool:
        # under the lock, or a racy read for display
        return self.paused_all or (bool(self.paused_dbs) and route.db in self.paused_dbs)

    def pause(self, db: str | None) -> None:
        """Pause every route (db None) or the routes of one database: transactions that hold a
        server go on; new ones wait for RESUME (C Odyssey's PAUSE does not wait either)."""
        with self.lock:
            if db is None:
                self.paused_all = True
            else:
                self.paused_dbs.add(db)
            self.plain = False
            for route in self.routes.values():      # (see Route.plain)
                route.set_plain(False)

    def resume(self, db: str | None) -> None:
        """End a pause (db None: the global one and every per-database one) and give the
        waiting clients the idle servers and free pool slots."""
        offline: list[Server] = []
        with self.lock:
            if db is None:
                self.paused_all = False
                self.paused_dbs.clear()
            else:
                self.paused_dbs.discard(db)
            plain = self.plain = self.mt_lock is None and not self.paused_all and not self.paused_dbs
            for route in self.routes.values():
                route.set_plain(plain and not route.obsolete)   # (see Route.plain)
                while route.waiters and not self.is_paused(route):
                    server = self._take(route, route.rule.pool_size, offline)
                    if server is None:
                        break
                    self.hand_to_waiter(route, server)
        for dead in offline:
            self.instance.close_server_later(dead)

    def paused_db(self, db: str) -> bool:
        return self.paused_all or db in self.paused_dbs

    def drop_servers(self) -> int:
        """Console DROP SERVERS: mark every pooled server offline; each is closed when it is next
        released (detach) or found idle (attach, the cron's expire) instead of being reused.
        Returns how many were marked."""
        marked = 0
        with self.lock:
            for route in self.routes.values():
                for server in list(route.active) + route.idle:
                    server.offline = server.held = True     # (see Server.held)
                    marked += 1
        return marked

    def kill(self, client_id: str):
        """KILL_CLIENT: mark the client killed; if it is queued for a server, take it out of the
        queue and wake it (attach raises AttachTimeout); the caller wakes its relay
        (relay.wake). Returns the client, or None if there is none."""
        with self.lock:
            for route in self.routes.values():
                for client in route.clients:
                    if client.id == client_id:
                        client.killed = True
                        waiter = client.waiter
                        if waiter is not None and waiter in route.waiters:
                            route.waiters.remove(waiter)     # the one wake-up it gets
                            client.state = ClientState.PENDING
                            waiter.wake()
                        return client
        return None

    @staticmethod
    def _link(client, server: Server) -> None:
        # under the lock
        server.client = client
        client.server = server
        client.state = _C_ACTIVE
        server.route.stats.count_server_assignment += 1

    def _take(self, route: Route, pool_size: int, offline: list) -> Server | None:
        # under the lock; offline idle servers are taken out of the pool into `offline`
        if self.paused_all or self.paused_dbs and route.db in self.paused_dbs:
            return None
        idle = route.idle
        while idle:
            server = route.take_idle()
            if server.offline:
                route.set_server_state(server, ServerState.UNDEF)
                offline.append(server)
                continue
            return server
        if route.rule.shared_pool:
            if not shared_pool.has_room(self, route, pool_size, offline):
                return None
        elif pool_size and len(idle) + len(route.active) >= pool_size:     # the pool is full
            return None
        server = Server(route)
        route.set_server_state(server, ServerState.ACTIVE)
        return server

    def hand_to_waiter(self, route: Route, server: Server | None) -> None:
        """Give `server` (None: a new, not yet connected one for a free slot) to the first client
        queued on `route`, and wake it. Under the lock; the caller checked route.waiters."""
        waiter = route.waiters.popleft()
        if server is None:
            server = Server(route)
            route.set_server_state(server, ServerState.ACTIVE)
        # _link inline (once per queued transaction)
        client = waiter.client
        server.client = client
        client.server = server
        client.state = _C_ACTIVE
        server.route.stats.count_server_assignment += 1
        route.stats.wait_time += time.monotonic() - waiter.since
        waiter.server = server
        waiter.wake()

    def _give(self, route: Route, server: Server | None) -> None:
        """A server (or, when None, a pool slot) became free: hand it to the first waiter."""
        # under the lock
        if route.waiters and not (self.paused_all or self.paused_dbs and route.db in self.paused_dbs):
            self.hand_to_waiter(route, server)
            return
        if server is not None:
            route.set_server_state(server, _S_IDLE)
        else:
            shared_pool.give(self, route)      # the slot may go to another route of a shared pool

    def detach(self, client) -> None:
        """Return the client's (reset, healthy) server to its route's pool. Its two common
        cases with one worker are copied by Relay._server_data's fast detach
        (test_frontend_fast keeps them in step)."""
        server = client.server
        route = server.route
        lock = self.mt_lock             # acquire/release, not `with`: see attach_idle; None:
        if lock is not None:            # one thread (see mt_lock)
            lock.acquire()
        try:
            client.server = None
            server.client = None
            # still routed (in route.clients): its state says so (unroute sets UNDEF as it takes
            # it out), an identity test where a set lookup hashes the client (once per detach)
            if client.state is not _C_UNDEF:
                client.state = _C_PENDING
            # idle_since is stamped only where the server goes idle (cron's pool_ttl reads it for
            # idle servers alone): not where it is closed or handed to a waiter
            now = time.monotonic()
            if (server.offline or route.obsolete and not route.waiters
                    or route.rule.shared_pool and shared_pool.wanted(self, route)):
                route.set_server_state(server, ServerState.UNDEF)
                self._give(route, None)          # the freed slot goes to the first waiter
                server_to_close = server
            elif not route.waiters and server.state is _S_ACTIVE:
                # _give's common case inline (no waiter): the server goes back to the idle list
                server.idle_since = now
                route.active.discard(server)
                server.state = _S_IDLE
                route.idle.append(server)
                server_to_close = None
            elif route.waiters and not (self.paused_all or self.paused_dbs and route.db in self.paused_dbs):
                # _give's other common case, hand_to_waiter inline (once per queued transaction:
                # its frame costs more than this copy)
                waiter = route.waiters.popleft()
                taker = waiter.client
                server.client = taker
                taker.server = server
                taker.state = _C_ACTIVE
                stats = route.stats
                stats.count_server_assignment += 1
                stats.wait_time += now - waiter.since
                waiter.server = server
                waiter.wake()
                server_to_close = None
            else:
                server.idle_since = now     # (_give may leave it idle: a paused route)
                self._give(route, server)
                server_to_close = None
        finally:
            if lock is not None:
                lock.release()
        if server_to_close is not None:
            self.instance.close_server_later(server_to_close)

    def close(self, client) -> Server | None:
        """Drop the client's server from the pool (the caller closes its socket); frees the slot."""
        server = client.server
        if server is None:
            return None
        route = server.route
        with self.lock:
            client.server = None
            server.client = None
            if client in route.clients:
                client.state = ClientState.PENDING
            route.set_server_state(server, ServerState.UNDEF)
            self._give(route, None)
        return server

    def remove_idle_if(self, route: Route, expired) -> list[Server]:
        """Take out of the pool the idle servers for which `expired(server, obsolete)` is true
        (cron: pool_ttl, server_lifetime, obsolete routes); the caller closes them."""
        removed = []
        with self.lock:
            obsolete = route.obsolete
            for server in [s for s in route.idle if expired(s, obsolete)]:
                route.set_server_state(server, ServerState.UNDEF)
                self._give(route, None)
                removed.append(server)
        return removed

    def mark_obsolete(self, kept) -> int:
        """Config reload: mark the routes whose rule is not in `kept` (a set of rule ids)
        obsolete; their servers close as they come free. Returns how many were marked."""
        marked = 0
        with self.lock:
            for route in self.routes.values():
                if id(route.rule) not in kept and not route.obsolete:
                    route.obsolete = True
                    route.set_plain(False)  # (see Route.plain)
                    marked += 1
        return marked

    def reserve(self, route: Route, limit: int) -> Server | None:
        """A new, unconnected server counted in the route's pool while it has fewer than
        `limit` servers (min_pool_size pre-opening), else None (also for an obsolete route)."""
        with self.lock:
            if route.obsolete or route.server_count >= limit:
                return None
            server = Server(route)
            route.set_server_state(server, ServerState.ACTIVE)
            return server

    def put_idle(self, route: Route, server: Server) -> None:
        """A reserved server is connected: give it to a waiter or park it idle."""
        with self.lock:
            self._give(route, server)

    def discard(self, route: Route, server: Server) -> None:
        """A reserved server failed: free its slot."""
        with self.lock:
            route.set_server_state(server, ServerState.UNDEF)
            self._give(route, None)

    def forget_if_unused(self, route: Route) -> None:
        """Drop an obsolete route that has no clients and no servers left."""
        with self.lock:
            if (route.obsolete and not route.clients and not route.active and not route.idle
                    and self.routes.get(route.key) is route):
                del self.routes[route.key]

    def rekey(self, client, pid: int) -> None:
        """Hand the client a new BackendKeyData pid (its session server's real one)."""
        with self.lock:
            self.keys.pop((client.key_pid, client.key_secret), None)
            client.key_pid = pid
            self.keys[(pid, client.key_secret)] = client

    # -- cancel ------------------------------------------------------------------------------
    def cancel_target(self, pid: int, secret: int):
        """The server to cancel for a client's BackendKeyData, or None. The server is counted as
        being cancelled until cancel_done(): reset does not hand it to another client meanwhile,
        or the cancel could stop that client's query instead."""
        with self.lock:
            client = self.keys.get((pid, secret))
            if client is None:
                return None
            server = client.server
            if server is None or server.endpoint is None:
                return None
            client.route.stats.count_cancel += 1
            server.cancels += 1          # the caller must call cancel_done(server)
            server.held = True
            return server.endpoint, server.key_pid, server.key_secret, client.rule, server

    def cancel_done(self, server) -> None:
        with self.lock:
            server.cancels -= 1
            server.held = held(server)

    # -- introspection -----------------------------------------------------------------------
    def snapshot(self) -> list[Route]:
        """The routes (a copy of the list; their guarded fields are read under the lock)."""
        with self.lock:
            return list(self.routes.values())


