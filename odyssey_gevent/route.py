"""A route: the pool of one (database, user, rule) key (mirrors Odyssey sources/route.c,
route_pool.c, server_pool.c and client_pool.c).

All fields but `prepared` (which has its own lock) are guarded by the router's lock; a server
changes list only in `set_server_state`.
"""
from __future__ import annotations

import collections

from odyssey_gevent.client import ClientState
from odyssey_gevent.prepared import Registry
from odyssey_gevent.server import Server, ServerState


class RouteStats:
    """Counters the relay bumps; read by the console and the stats log (mirrors od_stat_t)."""
    __slots__ = ("count_query", "count_tx", "bytes_recv", "bytes_sent", "query_time_us", "tx_time_us",
                 "wait_time_us", "count_server_assignment", "count_cancel")

    def __init__(self):
        for name in self.__slots__:
            setattr(self, name, 0)


class Waiter:
    """A client queued for a server; the router fills `.server` and signals `.event`."""
    __slots__ = ("client", "event", "server")

    def __init__(self, client, event):
        self.client = client
        self.event = event
        self.server = None


class Route:
    def __init__(self, key: tuple, rule, db: str, user: str):
        self.key = key
        self.rule = rule
        self.db = db                 # the database and user the server pool logs in with
        self.user = user
        self.idle: list[Server] = []          # LIFO: the most recently used server first
        self.active: set[Server] = set()
        self.clients: set = set()
        self.waiters: collections.deque[Waiter] = collections.deque()
        self.params: list[tuple[str, str]] | None = None   # cached ParameterStatus of the route
        self.stats = RouteStats()
        self.obsolete = False
        self.prepared = Registry()           # pool-wide prepared statements (its own lock)

    # -- state changes ---------------------------------------------------------------------
    def set_server_state(self, server: Server, state: ServerState) -> None:
        old = server.state
        if old is ServerState.IDLE:
            self.idle.remove(server)
        elif old is ServerState.ACTIVE:
            self.active.discard(server)
        server.state = state
        if state is ServerState.IDLE:
            self.idle.append(server)
        elif state is ServerState.ACTIVE:
            self.active.add(server)

    def take_idle(self) -> Server:
        """The most recently used idle server, now ACTIVE (LIFO, O(1))."""
        server = self.idle.pop()
        server.state = ServerState.ACTIVE
        self.active.add(server)
        return server

    @property
    def server_count(self) -> int:
        return len(self.idle) + len(self.active)

    def client_counts(self) -> dict:
        counts = collections.Counter(c.state for c in list(self.clients))
        return {"active": counts[ClientState.ACTIVE], "pending": counts[ClientState.PENDING],
                "queue": counts[ClientState.QUEUE]}

    def __repr__(self) -> str:
        return f"<Route {self.db}.{self.user}>"
