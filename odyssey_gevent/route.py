"""A route: the pool of one (database, user, rule) key (mirrors Odyssey sources/route.c,
route_pool.c, server_pool.c and client_pool.c).

The lock rule (written here only). `Router.lock` is a plain threading.Lock (with workers 1,
where one thread makes every router call, a stand-in that does nothing: router._OneThread,
whose calls the per-transaction paths skip: Router.mt_lock),
taken for list and field updates only, never across IO or anything that could switch
coroutines. It guards:

* the router's `routes` and `keys`;
* a Route's `idle`, `active`, `clients`, `waiters` and `obsolete`;
* a Server's `state` (changed only by `Route.set_server_state`/`take_idle`), `client` and
  `idle_since`;
* a Client's `server` and `state` (and `route`/`rule`, set once when it is routed);
* a Server's `cancels` (cancel requests on their way for it): counted in `cancel_target`,
  uncounted in `cancel_done`. Reset reads it without the lock before the detach that hands the
  server on; a cancel looked up in the instant between the two is not waited for (the window
  C Odyssey and PgBouncer leave open for every cancel).

Whoever reads those from another coroutine takes the lock (the console, cron, cancel). A
client's own coroutine reads its `server` and `state` without it: they change only through its
own router calls, or in `Router._give` while it is parked in `Router.attach`.

Not under the lock:

* set before the object is shared, then constant: a Route's `key`, `rule`, `db`, `user`, `stats`
  and `prepared` objects; a Server's `id`, `route`, `created_at`; a Client's identity and
  addresses;
* `Route.prepared` has its own lock (prepared.Registry);
* `Route.stats` counters are bumped by each client's relay without a lock: statistics, where
  workers > 1 may lose an increment;
* `Route.params` is written by whichever login first learns the route's ParameterStatus (a
  racing second login writes an equal list) and read without the lock;
* the rest of a Server (io, fd, proto, params, prepared, broken, drop ...) belongs to whoever
  holds it: the client it is attached to, or the cron coroutine that took it out of the pool.
  The console reads some of it for display only.
"""
from __future__ import annotations

import collections

from machinarium import Wakeup
from odyssey_gevent.client import ClientState
from odyssey_gevent.err_logger import ErrorLog
from odyssey_gevent.prepared import Registry
from odyssey_gevent.server import Server, ServerState

# an Enum class's attribute costs a call of type.__getattribute__ and EnumType.__getattr__
# through slot wrappers (about 800 instructions): the hot path reads the members from here
_IDLE, _ACTIVE = ServerState.IDLE, ServerState.ACTIVE
# Route.queue_at where the relay's inline queueing is not for the route: a count of active
# servers never reached, kept one 30-bit digit (3.11 specializes only a compare of such ints)
QUEUE_NEVER = (1 << 30) - 1


class RouteStats:
    """Per-route counters (mirrors od_stat_t). The relay bumps count_query, count_tx, the byte
    counts and the query/transaction times (float seconds, from the request that starts them to
    the ReadyForQuery that ends them: adding floats is the cheapest) without the lock (see
    above); the router bumps count_server_assignment, wait_time (seconds clients waited for
    their server) and count_cancel under it; the prepared-statement layer (prepared.py) bumps
    count_parse (a client statement had to be prepared on its server: a Parse sent) and
    count_parse_reuse (the server already had it). snapshot() gives the times in µs, as C counts them.
    `prev` is the snapshot taken at the last stats_interval tick (cron):
    the averages of SHOW STATS and the stats log line are the differences from it.

    With the rule's `quantiles`, `query_sketch`/`tx_sketch` are DDSketches of the query and
    transaction times of the current stats interval and `old_sketches` those of the previous
    one (C Odyssey keeps a window of two t-digests the same way); SHOW POOLS_EXTENDED merges
    them."""
    __slots__ = ("count_query", "count_tx", "bytes_recv", "bytes_sent", "count_server_assignment",
                 "count_cancel", "query_time", "tx_time", "wait_time", "count_parse", "count_parse_reuse", "prev",
                 "query_sketch", "tx_sketch", "old_sketches")

    COUNTERS = ("count_tx", "count_query", "count_server_assignment", "bytes_recv", "bytes_sent", "tx_time",
                "query_time", "wait_time", "count_cancel", "count_parse", "count_parse_reuse")

    def __init__(self, quantiles: bool = False):
        for name in self.COUNTERS:
            setattr(self, name, 0)
        self.tx_time = self.query_time = self.wait_time = 0.0
        self.prev = (0,) * len(self.COUNTERS)
        self.query_sketch = self.tx_sketch = None
        self.old_sketches = ()
        if quantiles:
            self.query_sketch, self.tx_sketch = new_sketch(), new_sketch()

    def snapshot(self) -> tuple:
        """The COUNTERS, times in whole µs."""
        return (self.count_tx, self.count_query, self.count_server_assignment, self.bytes_recv, self.bytes_sent,
                round(self.tx_time * 1e6), round(self.query_time * 1e6), round(self.wait_time * 1e6),
                self.count_cancel, self.count_parse, self.count_parse_reuse)

    def rotate_sketches(self) -> None:
        """A stats interval ended: the current sketches become the previous ones."""
        if self.query_sketch is not None:
            self.old_sketches = (self.query_sketch, self.tx_sketch)
            self.query_sketch, self.tx_sketch = new_sketch(), new_sketch()

    def sketches(self):
        """(query, transaction) sketches of the last two intervals merged, or None."""
        if self.query_sketch is None:
            return None
        query, tx = new_sketch(), new_sketch()
        for merged, parts in ((query, (self.query_sketch,) + self.old_sketches[:1]),
                              (tx, (self.tx_sketch,) + self.old_sketches[1:])):
            for part in parts:
                if part.count:
                    merged.merge(part)
        return query, tx


def averages(cur: tuple, prev: tuple, interval_s: float) -> list[int]:
    """C Odyssey's od_stat_average over two RouteStats.snapshot()s taken interval_s apart: the
    avg_* columns of SHOW STATS in their order (avg_xact_count, avg_query_count,
    avg_server_assignment_count, avg_recv, avg_sent as rates per second; avg_xact_time,
    avg_query_time, avg_wait_time as µs per transaction, query and server assignment)."""
    d = [c - p for c, p in zip(cur, prev)]
    tx, query, assign, recv, sent, tx_time, query_time, wait_time = d[:8]
    if interval_s <= 0:
        rates = [0] * 5
    else:
        rates = [int(v / interval_s) for v in (tx, query, assign, recv, sent)]
    return rates + [tx_time // tx if tx > 0 else 0, query_time // query if query > 0 else 0,
                    wait_time // assign if assign > 0 else 0]


def new_sketch():
    """A DDSketch with 1% relative accuracy (ddsketch, DataDog's reference implementation)."""
    from ddsketch import DDSketch
    return DDSketch(relative_accuracy=0.01)


class Waiter(Wakeup):
    """A client's place in its route's queue for a server, one per client, reused by each of its
    waits (client.waiter): the router arms it and queues it, whoever frees a server fills
    `.server` (linked) and wakes it (machinarium.Wakeup). `.server` is a coroutine's wait's
    (attach sets it None, router._wait reads it): a callback wait's (the relay's, queue_now) is
    neither reset nor read, and may hold an earlier hand-over's (router.attach_queued reads
    client.server instead and resets it where the coroutine takes the wait over)."""
    __slots__ = ("client", "server", "since")

    def __init__(self, client):
        super().__init__()
        self.client = client
        self.server = None
        self.since = 0.0             # time.monotonic() when it started waiting (SHOW POOLS maxwait)


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
        self.stats = RouteStats(bool(getattr(rule, "quantiles", None)))
        self.errors = ErrorLog()             # this route's SHOW ERRORS_PER_ROUTE counts (err_logger)
        self.tcp_connections = 0             # clients routed here, refused ones included (POOLS_EXTENDED)
        self.obsolete = False
        # not obsolete, and its router plain (Router.plain: one thread, nothing paused): the reply
        # walk's inline detach tests this one flag where it tested both (and loaded the router),
        # once per transaction. Kept by the router, where a route is made (router.route) and
        # where either changes (pause, resume, mark_obsolete: their only writers, through
        # set_plain, which keeps queue_at with it); False for a route the router did not make
        # (its detach is detach_walked's, which tests both)
        self.plain = False
        self.prepared = Registry()           # pool-wide prepared statements (its own lock)
        self.relay_facts = None              # what every relay takes from the rule (relay._rule_facts)
        self.tsa_memo = None                 # (listen, checks) for clients without hints (tsa.work_out)
        self.login_facts = None              # what every login takes from the rule (frontend._login_facts)
        self.params_wire = None              # the params' ParameterStatus messages (frontend.param_wire)
        self.queue_odd = self.queue_pool = self.queue_at = None
        self.queue_rule()

    def queue_rule(self) -> None:
        """Router.queue_now's rule half, once per route (a route's rule is fixed: routes are
        keyed by the rule's identity, and a reload keeps an unchanged rule's object): the
        relay's callback queue is for a pool of its own without pool_notice_after_waiting_ms
        (`queue_odd` false: one attribute test per queued transaction, not five). `queue_at`:
        the count of active servers at which the relay's inline copy of queue_now's common case
        queues a client, the pool size where that queue is for it, else a count never reached
        (no limit, or an odd queue: queue_now's), and that count too where the route is not
        plain (see set_plain); one compare per queued transaction where the route's plain flag,
        the rule's pool_size, its truth test and queue_odd were four tests and three loads.
        `queue_pool`: the rule's half of it, the pool size or the count never reached."""
        rule = self.rule
        after = getattr(rule, "pool_notice_after_waiting_ms", None)
        self.queue_odd = bool(getattr(rule, "shared_pool", None) or after is not None and after >= 0)
        pool_size = getattr(rule, "pool_size", 0)
        self.queue_pool = pool_size if pool_size and not self.queue_odd else QUEUE_NEVER
        self.set_plain(self.plain)         # queue_at follows (see set_plain)

    def set_plain(self, plain: bool) -> None:
        """Set Route.plain, and queue_at with it (a count never reached where the route is not
        plain, so the relay's inline queueing tests one compare for both): the router's way to
        change plain (where a route is made, pause, resume, mark_obsolete)."""
        self.plain = plain
        self.queue_at = self.queue_pool if plain else QUEUE_NEVER

    # -- state changes ---------------------------------------------------------------------
    def set_server_state(self, server: Server, state: ServerState) -> None:
        old = server.state
        if old is _IDLE:
            self.idle.remove(server)
        elif old is _ACTIVE:
            self.active.discard(server)
        server.state = state
        if state is _IDLE:
            self.idle.append(server)
        elif state is _ACTIVE:
            self.active.add(server)

    def take_idle(self) -> Server:
        """The most recently used idle server, now ACTIVE (LIFO, O(1))."""
        server = self.idle.pop()
        server.state = _ACTIVE
        self.active.add(server)
        return server

    @property
    def server_count(self) -> int:
        return len(self.idle) + len(self.active)

    def client_counts(self) -> dict:
        """Clients by state (under the router's lock)."""
        counts = collections.Counter(c.state for c in self.clients)
        return {"active": counts[ClientState.ACTIVE], "pending": counts[ClientState.PENDING],
                "queue": counts[ClientState.QUEUE]}

    def __repr__(self) -> str:
        return f"<Route {self.db}.{self.user}>"
