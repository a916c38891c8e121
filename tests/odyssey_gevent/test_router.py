"""The router: routing with client_max limits, attach/detach with pool_size, LIFO reuse, FIFO
waiting (also across machines), pool_timeout, close, cancel-key lookup (reference 3.1 and 6)."""
from __future__ import annotations

import collections
import threading
import time

from types import SimpleNamespace

import pytest

import machinarium as mm
from kiwi import error_codes
from odyssey_gevent.client import Client, ClientState
from odyssey_gevent.config.model import Rule
from odyssey_gevent.router import AttachTimeout, Router
from odyssey_gevent.server import ServerState
from odyssey_gevent.status import FrontendError

pytestmark = pytest.mark.timeout(10)


class FakeRules:
    """`match` returns the rule registered for (db, user), else the default one (or None)."""

    def __init__(self, default=None, **named):
        self.default = default
        self.named = named      # "db.user" -> Rule

    def match(self, db, user, client_addr, conn_type, tls):
        return self.named.get(f"{db}.{user}", self.default)


class FakeInstance:
    def __init__(self, rules, client_max=None):
        self.config = SimpleNamespace(client_max=client_max)
        self.rules = rules
        self.logger = None
        self.closed = []

    def close_server_later(self, server):
        self.closed.append(server)


def make_rule(pool_size=0, client_max=None, pool="transaction", **kw):
    return Rule(db_name="default", user_name="default", authentication="none", pool=pool,
                pool_size=pool_size, client_max=client_max, **kw)


def make_router(pool_size=0, client_max=None, global_max=None, rules=None):
    rules = rules or FakeRules(make_rule(pool_size, client_max))
    return Router(FakeInstance(rules, global_max))


def client(db="db", user="user"):
    c = Client(None, conn_type="host", peer=("127.0.0.1", 5555))
    c.database, c.user = db, user
    return c


def routed(router, db="db", user="user"):
    c = client(db, user)
    router.route(c)
    return c


# ----------------------------------------------------------------------------------------------
# routing

def test_route_registers_client_and_key():
    router = make_router()
    c1, c2 = routed(router), routed(router)
    route = c1.route
    assert c2.route is route
    assert route.clients == {c1, c2}
    assert router.keys[(c1.key_pid, c1.key_secret)] is c1
    assert c1.rule is route.rule and c1.state is ClientState.PENDING
    assert (route.db, route.user) == ("db", "user")
    other = routed(router, "db2", "user")
    assert other.route is not route
    assert len(router.snapshot()) == 2


def test_route_uses_storage_db_and_user():
    router = make_router(rules=FakeRules(make_rule(storage_db="real_db", storage_user="real_user")))
    c = routed(router)
    assert (c.route.db, c.route.user) == ("real_db", "real_user")


def test_unknown_route_is_3d000():
    router = make_router(rules=FakeRules(None))
    c = client("nodb", "nouser")
    with pytest.raises(FrontendError) as ei:
        router.route(c)
    assert ei.value.sqlstate == error_codes.INVALID_CATALOG_NAME == "3D000"
    assert ei.value.message == "route for 'nodb.nouser' is not found"
    assert not router.routes and not router.keys and c.route is None


def test_global_client_max_is_not_the_routers():
    """The global client_max is counted once, at accept (Instance.client_opened)."""
    router = make_router(global_max=1)
    a, b = routed(router), routed(router, "other", "u")
    assert a.route.clients == {a} and b.route.clients == {b}


def test_per_route_client_max():
    router = make_router(client_max=1)
    a = routed(router, "db", "alice")
    c = client("db", "alice")
    with pytest.raises(FrontendError) as ei:
        router.route(c)
    assert ei.value.sqlstate == "53300"
    assert ei.value.message == "too many client tcp connections (client_max for user db.alice 1)"
    assert a.route.clients == {a} and (c.key_pid, c.key_secret) not in router.keys
    # another route has its own count
    routed(router, "db", "bob")
    router.unroute(a)
    assert a.route.clients == set() and a.state is ClientState.UNDEF
    router.route(c)
    assert c in c.route.clients


def test_unroute_twice_is_harmless():
    router = make_router()
    a = routed(router)
    router.unroute(a)
    router.unroute(a)
    assert not a.route.clients and not router.keys
    router.unroute(client())      # never routed: no-op


# ----------------------------------------------------------------------------------------------
# attach / detach without waiting

def test_attach_gives_new_unconnected_servers_up_to_pool_size():
    router = make_router(pool_size=2)
    a, b = routed(router), routed(router)
    sa = router.attach(a, 0)
    sb = router.attach(b, 0)
    assert sa is not sb
    for c, s in ((a, sa), (b, sb)):
        assert not s.connected
        assert s.state is ServerState.ACTIVE and s.client is c and c.server is s
        assert c.state is ClientState.ACTIVE
    route = a.route
    assert route.active == {sa, sb} and route.server_count == 2
    assert route.stats.count_server_assignment == 2
    # full: a third client times out at once with timeout 0
    c = routed(router)
    with pytest.raises(AttachTimeout):
        router.attach(c, 0)
    assert not route.waiters and c.state is ClientState.PENDING


def test_pool_size_zero_is_unlimited():
    router = make_router(pool_size=0)
    servers = {router.attach(routed(router), 0) for _ in range(20)}
    assert len(servers) == 20


def test_detach_parks_idle_and_reuse_is_lifo():
    router = make_router(pool_size=3)
    cs = [routed(router) for _ in range(3)]
    s = [router.attach(c, 0) for c in cs]
    route = cs[0].route
    router.detach(cs[0])
    router.detach(cs[2])
    assert route.idle == [s[0], s[2]]
    assert cs[0].server is None and s[0].client is None
    assert cs[0].state is ClientState.PENDING
    n1, n2 = routed(router), routed(router)
    assert router.attach(n1, 0) is s[2]          # the most recently used first
    assert router.attach(n2, 0) is s[0]
    assert route.idle == [] and route.server_count == 3


@pytest.mark.parametrize("workers", [1, 2])
def test_the_lock_is_a_real_one_only_with_more_than_one_worker(workers):
    """workers 1: every router call runs in one thread and the lock excludes nothing there, so
    it is a stand-in whose acquire does not block (a held threading.Lock would); with more
    workers a threading.Lock. Either way the pool works the same, and an exception inside
    `with router.lock` is not swallowed."""
    inst = FakeInstance(FakeRules(make_rule(pool_size=2)))
    inst.workers = workers
    router = Router(inst)
    lock = router.lock
    assert isinstance(lock, type(threading.Lock())) is (workers > 1)
    # the per-transaction calls take it only where it is a real one
    assert router.mt_lock is (lock if workers > 1 else None)
    lock.acquire()
    try:
        if workers > 1:
            assert lock.acquire(False) is False     # held
        else:
            lock.acquire()      # again, in the same thread: a held real lock would never give it
            lock.release()
    finally:
        lock.release()
    with pytest.raises(ZeroDivisionError):
        with router.lock:
            1 / 0
    cs = [routed(router) for _ in range(3)]
    s = [router.attach(c, 0) for c in cs[:2]]
    route = cs[0].route
    with pytest.raises(AttachTimeout):
        router.attach(cs[2], 0)
    router.detach(cs[0])
    assert route.idle == [s[0]] and cs[0].server is None and cs[0].state is ClientState.PENDING
    assert router.attach_idle(cs[2]) is s[0] and cs[2].server is s[0] and route.idle == []
    router.detach(cs[1])
    router.detach(cs[2])
    assert route.idle == [s[1], s[0]] and route.active == set()


def test_detach_of_unrouted_client_keeps_its_state():
    router = make_router(pool_size=1)
    a = routed(router)
    s = router.attach(a, 0)
    a.route.clients.discard(a)      # as if unrouted meanwhile
    a.state = ClientState.UNDEF
    router.detach(a)
    assert a.state is ClientState.UNDEF and s.state is ServerState.IDLE


def test_take_skips_offline_idle_servers():
    router = make_router(pool_size=2)
    a, b = routed(router), routed(router)
    sa, sb = router.attach(a, 0), router.attach(b, 0)
    router.detach(a)
    router.detach(b)
    sb.offline = True               # most recent idle one, e.g. after a reload
    c = routed(router)
    got = router.attach(c, 0)
    assert got is sa
    assert router.instance.closed == [sb] and sb.state is ServerState.UNDEF
    assert c.route.server_count == 1


def test_detach_offline_server_without_waiters_closes_it():
    router = make_router(pool_size=1)
    a = routed(router)
    s = router.attach(a, 0)
    s.offline = True
    router.detach(a)
    assert router.instance.closed == [s] and s.state is ServerState.UNDEF
    assert a.route.server_count == 0


def test_obsolete_route_closes_servers_on_detach():
    router = make_router(pool_size=1)
    a = routed(router)
    s = router.attach(a, 0)
    a.route.obsolete = True
    router.detach(a)
    assert router.instance.closed == [s] and a.route.server_count == 0


def test_close_drops_the_server_and_frees_the_slot():
    router = make_router(pool_size=1)
    a, b = routed(router), routed(router)
    s = router.attach(a, 0)
    assert router.close(a) is s
    assert s.state is ServerState.UNDEF and a.server is None and s.client is None
    assert a.state is ClientState.PENDING
    assert router.close(a) is None
    s2 = router.attach(b, 0)
    assert s2 is not s and not s2.connected


def test_remove_idle_if_takes_only_idle_servers_that_match():
    router = make_router(pool_size=3)
    a, b, c = routed(router), routed(router), routed(router)
    sa, sb, sc = router.attach(a, 0), router.attach(b, 0), router.attach(c, 0)
    router.detach(a)
    router.detach(b)
    seen = []

    def expired(server, obsolete):
        seen.append((server, obsolete))
        return server is sa or server is sc
    assert router.remove_idle_if(a.route, expired) == [sa]       # sc is active: never asked
    assert {s for s, _ in seen} == {sa, sb} and not any(o for _, o in seen)
    assert sa.state is ServerState.UNDEF and a.route.idle == [sb] and a.route.server_count == 2
    a.route.obsolete = True
    assert router.remove_idle_if(a.route, lambda s, obsolete: obsolete) == [sb]


def test_a_freed_server_is_linked_to_the_waiter_under_the_lock(in_machine):
    """client.server/server.client change only under the router's lock: a waiter is linked to
    its server by whoever frees it, before the waiter even wakes."""
    def body():
        router = make_router(pool_size=1)
        a, b = routed(router), routed(router)
        s = router.attach(b, 0)
        got = {}
        co = mm.Coroutine(lambda: got.setdefault("server", router.attach(a, 2000)))
        _wait_for(lambda: len(a.route.waiters) == 1)
        router.detach(b)                       # no switch before the checks below
        linked = (a.server is s, s.client is a, a.state is ClientState.ACTIVE, s.state is ServerState.ACTIVE)
        co.join(2000)
        return linked, got["server"] is s, a.route.stats.count_server_assignment

    assert in_machine(body) == ((True, True, True, True), True, 2)


def test_mark_obsolete_counts_each_route_once():
    rule_a, rule_b = make_rule(), make_rule()
    router = make_router(rules=FakeRules(rule_a, **{"db.b": rule_b}))
    a, b = routed(router, "db", "a"), routed(router, "db", "b")
    assert router.mark_obsolete({id(rule_b)}) == 1
    assert a.route.obsolete and not b.route.obsolete
    assert router.mark_obsolete({id(rule_b)}) == 0


def test_obsolete_routes_get_no_new_servers_and_are_forgotten_when_empty():
    router = make_router()
    a = routed(router)
    route = a.route
    router.forget_if_unused(route)
    assert route.key in router.routes                 # not obsolete: kept even if unused
    route.obsolete = True
    assert router.reserve(route, 10) is None          # min_pool_size pre-opening stops
    router.forget_if_unused(route)
    assert route.key in router.routes                 # a client is still routed
    router.unroute(a)
    router.forget_if_unused(route)
    assert route.key not in router.routes


# ----------------------------------------------------------------------------------------------
# waiting

@pytest.mark.parametrize("workers", [1, 2])
def test_plain_says_one_thread_and_nothing_paused_through_pause_and_resume(workers):
    """Router.plain, the one flag the relay's inline attach and queueing test for the lock and
    the pause state: true with one worker while nothing is paused, false while the whole
    router or any database is paused and always with more workers (a real lock)."""
    inst = FakeInstance(FakeRules(make_rule(pool_size=2)))
    inst.workers = workers
    router = Router(inst)
    one = workers == 1

    def plain():
        # what it stands for, as the routines test it
        assert router.plain == (router.mt_lock is None and not router.paused_all and not router.paused_dbs)
        return router.plain

    assert plain() is one
    router.pause("db1")
    assert plain() is False
    router.pause("db2")
    router.resume("db1")
    assert plain() is False                 # db2 still paused
    router.resume("db2")
    assert plain() is one
    router.pause(None)
    router.pause("db1")
    router.resume("db1")
    assert plain() is False                 # the global pause holds
    router.resume(None)
    assert plain() is one


@pytest.mark.parametrize("workers", [1, 2])
def test_a_routes_plain_flag_is_its_routers_and_not_obsolete(workers):
    """Route.plain, the one flag the reply walk's inline detach tests for the route's obsolete
    flag and Router.plain: set where a route is made (one made while paused is not plain),
    cleared by any pause, set again by the last resume for the routes not obsolete, cleared by
    mark_obsolete; always false with more workers."""
    rule_a, rule_b = make_rule(pool_size=2), make_rule(pool_size=2)
    inst = FakeInstance(FakeRules(rule_a, **{"b.user": rule_b}))
    inst.workers = workers
    router = Router(inst)
    one = workers == 1

    def plain(*routes):
        for route in routes:
            # what it stands for, as detach_walked tests it
            assert route.plain == (router.plain and not route.obsolete)
        return [route.plain for route in routes]

    a = routed(router, "a").route
    assert plain(a) == [one]
    router.pause("a")
    b = routed(router, "b").route       # made while paused
    assert plain(a, b) == [False, False]
    router.resume("a")
    assert plain(a, b) == [one, one]
    router.pause("other")               # another database's pause: the router is not plain
    assert plain(a, b) == [False, False]
    router.resume(None)
    assert plain(a, b) == [one, one]
    assert router.mark_obsolete({id(rule_a)}) == 1
    assert plain(a, b) == [one, False] and b.obsolete
    router.pause(None)
    router.resume(None)
    assert plain(a, b) == [one, False]  # obsolete stays not plain


def _wait_for(pred, ms=3000):
    for _ in range(ms):
        if pred():
            return
        mm.sleep(1)
    raise AssertionError("condition not reached")


def test_waiters_are_served_fifo(in_machine):
    def body():
        router = make_router(pool_size=1)
        holder = routed(router)
        s = router.attach(holder, 0)
        route = holder.route
        order = []

        def waiter(c):
            got = router.attach(c, 5000)
            order.append(c)
            assert got is s
            mm.sleep(2)
            router.detach(c)

        waiters = [routed(router) for _ in range(5)]
        coros = []
        for i, c in enumerate(waiters):
            coros.append(mm.Coroutine(waiter, c, name=f"w{i}"))
            _wait_for(lambda: len(route.waiters) == i + 1)
            assert c.state is ClientState.QUEUE
        assert route.client_counts() == {"active": 1, "pending": 0, "queue": 5}
        router.detach(holder)
        for co in coros:
            co.join(5000)
        assert order == waiters
        assert not route.waiters and route.idle == [s] and route.server_count == 1
        return True

    assert in_machine(body)


def test_pool_timeout_raises_and_leaves_no_waiter(in_machine):
    def body():
        router = make_router(pool_size=1)
        a, b = routed(router), routed(router)
        router.attach(a, 0)
        t0 = mm.time_ms()
        with pytest.raises(AttachTimeout):
            router.attach(b, 60)
        assert mm.time_ms() - t0 >= 50
        assert not b.route.waiters and b.state is ClientState.PENDING and b.server is None
        # the server freed later goes idle, not to the departed waiter
        router.detach(a)
        assert b.route.idle and b.server is None
        return True

    assert in_machine(body)


def test_close_gives_the_slot_to_the_first_waiter(in_machine):
    def body():
        router = make_router(pool_size=1)
        a, b, c = routed(router), routed(router), routed(router)
        s = router.attach(a, 0)
        got = {}

        def wait(cl):
            got[cl] = router.attach(cl, 5000)

        cb = mm.Coroutine(wait, b)
        _wait_for(lambda: len(a.route.waiters) == 1)
        cc = mm.Coroutine(wait, c)
        _wait_for(lambda: len(a.route.waiters) == 2)
        assert router.close(a) is s
        cb.join(2000)
        assert got[b] is not s and not got[b].connected and got[b].client is b
        assert len(a.route.waiters) == 1 and c not in got
        router.close(b)
        cc.join(2000)
        assert got[c].client is c and a.route.server_count == 1
        return True

    assert in_machine(body)


def test_waiter_in_another_machine_is_woken(in_machine):
    def body():
        router = make_router(pool_size=1)
        a, b = routed(router), routed(router)
        s = router.attach(a, 0)
        box = {}

        def other():
            try:
                box["server"] = router.attach(b, 5000)
                box["machine"] = mm.current_machine().name
            except BaseException as e:  # noqa: BLE001
                box["error"] = e

        m = mm.Machine("other", other).start()
        _wait_for(lambda: len(a.route.waiters) == 1)
        t0 = mm.time_ms()
        router.detach(a)
        m.join(5000)
        assert "error" not in box, box.get("error")
        assert box["server"] is s and box["machine"] == "other" and s.client is b
        assert mm.time_ms() - t0 < 2000
        return True

    assert in_machine(body)


def test_unroute_removes_waiter_and_key(in_machine):
    def body():
        router = make_router(pool_size=1)
        a, b = routed(router), routed(router)
        s = router.attach(a, 0)
        result = {}

        def wait():
            try:
                router.attach(b, 150)
            except AttachTimeout:
                result["timeout"] = True

        co = mm.Coroutine(wait)
        _wait_for(lambda: len(a.route.waiters) == 1)
        router.unroute(b)
        assert not a.route.waiters and (b.key_pid, b.key_secret) not in router.keys
        assert b not in a.route.clients and a.route.clients == {a}
        router.detach(a)                     # nobody waits: goes idle
        assert a.route.idle == [s]
        co.join(2000)
        assert result == {"timeout": True}
        return True

    assert in_machine(body)


def test_held_says_cancels_drop_or_offline_through_their_writers():
    """Server.held, the one flag the reply walk's inline detach tests for a cancel on its way
    and a server to be closed (drop, offline), follows cancel_target and cancel_done (two
    cancels at once, the flag clear only after both), drop_servers and a drop (the relay's
    cached-plan error: the flag stays after the cancels are done)."""
    from odyssey_gevent.server import held

    router = make_router(pool_size=2)
    a, b = routed(router), routed(router)
    s, t = router.attach(a, 0), router.attach(b, 0)
    for x in (s, t):
        x.endpoint = object()

    def is_held(x):
        assert x.held == held(x)
        return x.held

    assert not is_held(s) and not is_held(t)
    router.cancel_target(a.key_pid, a.key_secret)
    router.cancel_target(a.key_pid, a.key_secret)
    assert is_held(s) and not is_held(t)
    router.cancel_done(s)
    assert is_held(s)                       # one cancel still on its way
    router.cancel_done(s)
    assert not is_held(s)
    router.cancel_target(b.key_pid, b.key_secret)
    t.drop = t.held = True                  # (as the relay's _server_error writes them)
    router.cancel_done(t)
    assert is_held(t) and t.cancels == 0
    assert router.drop_servers() == 2
    assert is_held(s) and s.offline
    router.cancel_target(a.key_pid, a.key_secret)
    router.cancel_done(s)
    assert is_held(s)                       # offline stays


# ----------------------------------------------------------------------------------------------
# cancel

def test_cancel_target():
    router = make_router(pool_size=2)
    a, b = routed(router), routed(router)
    s = router.attach(a, 0)
    assert router.cancel_target(a.key_pid, a.key_secret) is None      # no endpoint yet
    s.endpoint = endpoint = object()
    s.key_pid, s.key_secret = 4242, 99
    assert router.cancel_target(a.key_pid, a.key_secret) == (endpoint, 4242, 99, a.rule, a.server)
    assert a.server.cancels == 1           # until cancel_done: reset will not hand it on meanwhile
    router.cancel_done(a.server)
    assert a.server.cancels == 0
    assert a.route.stats.count_cancel == 1
    assert router.cancel_target(b.key_pid, b.key_secret) is None      # routed, no server
    assert router.cancel_target(a.key_pid ^ 1, a.key_secret) is None  # unknown key
    router.detach(a)
    assert router.cancel_target(a.key_pid, a.key_secret) is None
    router.unroute(a)
    assert (a.key_pid, a.key_secret) not in router.keys


def test_detach_offline_server_gives_the_slot_to_a_waiter(in_machine):
    def body():
        router = make_router(pool_size=1)
        a, b = routed(router), routed(router)
        s = router.attach(a, 0)
        got = {}
        co = mm.Coroutine(lambda: got.setdefault("s", router.attach(b, 1000)))
        _wait_for(lambda: len(a.route.waiters) == 1)
        s.offline = True
        router.detach(a)
        co.join(3000)
        assert router.instance.closed == [s] and s.state is ServerState.UNDEF
        assert got["s"] is not s and got["s"].client is b and a.route.server_count == 1
        return True
    assert in_machine(body)


def test_pause_holds_new_attaches_without_pool_timeout_and_resume_serves_them(in_machine):
    """PAUSE: a client that holds no server gets none (it queues; pool_timeout does not end the
    wait while paused), a freed server goes idle; RESUME gives the queue the idle server and
    free slots. Another database's pause does not hold this route."""
    def body():
        router = make_router(pool_size=2)
        running, late = routed(router), routed(router)
        s = router.attach(running, 0)
        route = running.route
        router.pause("other_db")
        router.detach(running)
        assert router.attach(running, 0) is s                 # not paused: served
        router.pause(None)
        got = {}

        def wait():
            got["server"] = router.attach(late, 30)           # 30 ms pool_timeout
        co = mm.Coroutine(wait, name="late")
        _wait_for(lambda: late.state is ClientState.QUEUE)
        mm.sleep(80)                                           # well past pool_timeout: still queued
        assert late.state is ClientState.QUEUE and not got
        router.detach(running)                                 # a running transaction ends
        assert route.idle == [s] and late.server is None       # ... its server is not handed on
        router.resume(None)
        co.join(2000)
        assert got["server"] is s and late.state is ClientState.ACTIVE
        assert route.stats.wait_time > 0
        return True

    assert in_machine(body)


def test_kill_wakes_a_queued_client(in_machine):
    def body():
        router = make_router(pool_size=1)
        holder, victim = routed(router), routed(router)
        router.attach(holder, 0)
        raised = []

        def wait():
            try:
                router.attach(victim, None)                    # no pool_timeout: forever
            except AttachTimeout:
                raised.append(victim.killed)
        co = mm.Coroutine(wait, name="victim")
        _wait_for(lambda: victim.state is ClientState.QUEUE)
        assert router.kill("c000000000000") is None           # unknown id
        assert router.kill(victim.id) is victim
        co.join(2000)
        assert raised == [True] and not victim.route.waiters and victim.server is None
        return True

    assert in_machine(body)


def test_kill_takes_a_queued_client_out_of_the_queue_and_its_waiter_is_reused(in_machine):
    """KILL_CLIENT takes a queued client out of the queue (the one wake-up it gets): a server
    freed next goes to the pool, not to the killed client. Each wait of a client uses its one
    Waiter."""
    def body():
        router = make_router(pool_size=1)
        holder, victim = routed(router), routed(router)
        s = router.attach(holder, 0)
        out = {}

        def wait():
            try:
                router.attach(victim, None)
            except AttachTimeout:
                out["killed"] = victim.killed
        co = mm.Coroutine(wait, name="victim")
        _wait_for(lambda: victim.state is ClientState.QUEUE)
        waiter = victim.waiter
        router.kill(victim.id)
        queued_after_kill = list(victim.route.waiters)
        router.detach(holder)                     # before the victim runs: nobody to hand it to
        idle = list(victim.route.idle)
        co.join(2000)
        victim.killed = False
        router.attach(holder, 0)
        co = mm.Coroutine(lambda: out.setdefault("second", router.attach(victim, None)), name="again")
        _wait_for(lambda: victim.state is ClientState.QUEUE)
        router.detach(holder)
        co.join(2000)
        return (out["killed"], queued_after_kill, idle == [s], out["second"] is s,
                victim.waiter is waiter, victim.route.stats.count_server_assignment)

    assert in_machine(body) == (True, [], True, True, True, 3)


def test_a_timeout_racing_a_hand_over_takes_the_server_and_nothing_resumes_it_later(in_machine):
    """The waiter's timer and a hand-over both due in the same loop iteration (the machine's
    thread was busy): whichever resumes it, it gets the server, and the other wake-up does not
    resume it later (it sleeps its full 30 ms afterwards)."""
    def body():
        router = make_router(pool_size=1)
        holder, late = routed(router), routed(router)
        s = router.attach(holder, 0)
        out = {}

        def wait():
            out["server"] = router.attach(late, 20)
            t = mm.time_ms()
            mm.sleep(30)
            out["slept"] = mm.time_ms() - t
        co = mm.Coroutine(wait, name="late")
        _wait_for(lambda: late.state is ClientState.QUEUE)
        time.sleep(0.05)                          # the thread blocks: the 20 ms timer is due
        router.detach(holder)                     # ... and so is the hand-over's wake-up
        co.join(2000)
        return out["server"] is s, out["slept"] >= 25, late.route.waiters

    assert in_machine(body) == (True, True, collections.deque())


def test_a_client_cancelled_after_a_hand_over_is_not_resumed_by_it(in_machine):
    """A queued client's coroutine cancelled while a server is being handed to it: the
    wake-up queued for it is dropped (it would switch into a finished coroutine) and the
    server stays linked to the client, whose cleanup returns it."""
    def body():
        router = make_router(pool_size=1)
        holder, victim, other = routed(router), routed(router), routed(router)
        s = router.attach(holder, 0)
        out = {}

        def wait():
            try:
                router.attach(victim, None)
            except mm.Cancelled:
                t = mm.time_ms()
                mm.sleep(30)                      # a stale wake-up would end this sleep early
                out["slept"] = mm.time_ms() - t >= 25
                raise
        co = mm.Coroutine(wait, name="victim")
        _wait_for(lambda: victim.state is ClientState.QUEUE)
        co.cancel()                               # runs in the next loop iteration ...
        router.detach(holder)                     # ... after this hand-over queued its wake-up
        co.join(2000)
        linked = victim.server is s and s.client is victim
        router.detach(victim)                     # the killed client's cleanup
        got = router.attach(other, 0)
        return out, co.cancelled, linked, got is s

    assert in_machine(body) == ({"slept": True}, True, True, True)


def test_a_client_cancelled_while_queued_leaves_the_queue(in_machine):
    def body():
        router = make_router(pool_size=1)
        holder, victim = routed(router), routed(router)
        s = router.attach(holder, 0)
        co = mm.Coroutine(lambda: router.attach(victim, None), name="victim")
        _wait_for(lambda: victim.state is ClientState.QUEUE)
        co.cancel()
        co.join(2000)
        queued, state = list(victim.route.waiters), victim.state
        router.detach(holder)
        return queued, state, victim.route.idle == [s], victim.server

    assert in_machine(body) == ([], ClientState.PENDING, True, None)


# ----------------------------------------------------------------------------------------------
# the relay fast path's queued attach (queue_now): a callback wake-up instead of a coroutine's

def _queue_now(router, c, ran):
    """queue_now as the relay calls it in the hub; `ran` records (client, its server, thread)."""
    import threading
    from gevent import get_hub
    loop = get_hub().loop
    return router.queue_now(c, lambda: ran.append((c, c.server, threading.get_ident())), loop,
                            threading.get_ident())


def test_queue_now_takes_a_free_slot_or_leaves_idle_servers_and_pauses_to_attach():
    router = make_router(pool_size=2)
    a, b = routed(router), routed(router)
    s = _queue_now(router, a, [])
    assert s is not None and s is not False and a.server is s and s.client is a and not s.connected
    router.detach(a)                              # idle now: the coroutine's attach looks at it
    assert _queue_now(router, b, []) is False and b.server is None and not b.route.waiters
    router.pause(None)
    assert _queue_now(router, b, []) is False and not b.route.waiters
    router.resume(None)
    rule = make_rule(2, pool_notice_after_waiting_ms=0)
    r2 = make_router(rules=FakeRules(rule))
    c = routed(r2)
    assert r2.attach(c, 0) is not None and r2.attach(routed(r2), 0) is not None
    assert _queue_now(r2, routed(r2), []) is False           # NOTICEs while waiting: the coroutine
    rule = make_rule(1, shared_pool="sp")
    r3 = make_router(rules=FakeRules(rule))
    assert _queue_now(r3, routed(r3), []) is False           # a shared pool: the coroutine, room or not
    rule = make_rule(1, pool_notice_after_waiting_ms=-1)     # no NOTICE: queued in the hub
    r4 = make_router(rules=FakeRules(rule))
    assert r4.attach(routed(r4), 0) is not None
    d = routed(r4)
    assert _queue_now(r4, d, []) is None and d.route.waiters and d.state is ClientState.QUEUE
    r4.unroute(d)


def test_callback_and_coroutine_waiters_are_served_fifo_together(in_machine):
    """Queued clients of both kinds are served in the order they queued; the hand-over runs a
    callback waiter's continuation in the hub, with the server linked and counted."""
    import threading

    def body():
        router = make_router(pool_size=1)
        holder = routed(router)
        s = router.attach(holder, 0)
        route = holder.route
        a, b, c = routed(router), routed(router), routed(router)
        ran, order = [], []
        assert _queue_now(router, a, ran) is None and a.state is ClientState.QUEUE

        def wait_b():
            assert router.attach(b, 5000) is s
            order.append(b)
            router.detach(b)
        co = mm.Coroutine(wait_b, name="b")
        _wait_for(lambda: len(route.waiters) == 2)
        assert _queue_now(router, c, ran) is None
        assert route.client_counts()["queue"] == 3
        router.detach(holder)
        _wait_for(lambda: len(ran) == 1)
        assert ran[0] == (a, s, threading.get_ident()) and a.state is ClientState.ACTIVE
        assert route.stats.wait_time > 0
        order.append(a)
        router.detach(a)                          # a's transaction ends: b's turn
        co.join(2000)
        _wait_for(lambda: len(ran) == 2)
        order.append(ran[1][0])
        assert ran[1][1] is s and order == [a, b, c] and not route.waiters
        assert route.stats.count_server_assignment == 4
        return True

    assert in_machine(body)


def test_a_callback_waiter_queued_again_with_the_same_continuation(in_machine):
    """The relay queues with the same continuation each time: its waiter is armed once and each
    hand-over runs it again; a coroutine's wait in between (attach) makes queue_now arm it
    anew, so the hand-over after that runs the continuation, not the coroutine's resume."""
    import threading

    from gevent import get_hub

    def body():
        router = make_router(pool_size=1)
        holder, a = routed(router), routed(router)
        s = router.attach(holder, 0)
        ran = []

        def cont():
            ran.append((a.server, threading.get_ident()))
        loop, ident = get_hub().loop, threading.get_ident()
        for i in range(3):
            assert router.queue_now(a, cont, loop, ident) is None
            assert a.waiter.callback is cont
            router.detach(holder)
            _wait_for(lambda: len(ran) == i + 1)
            assert ran[i] == (s, ident) and a.state is ClientState.ACTIVE
            router.detach(a)                      # a's transaction ends; the holder takes s again
            assert router.attach(holder, 0) is s
        # a coroutine's wait with the same waiter, then the continuation again
        box = {}
        co = mm.Coroutine(lambda: box.setdefault("got", router.attach(a, 2000)), name="a")
        _wait_for(lambda: len(a.route.waiters) == 1)
        assert a.waiter.callback is None
        router.detach(holder)
        co.join(2000)
        assert box["got"] is s and len(ran) == 3
        router.detach(a)
        assert router.attach(holder, 0) is s
        assert router.queue_now(a, cont, loop, ident) is None and a.waiter.callback is cont
        router.detach(holder)
        _wait_for(lambda: len(ran) == 4)
        return ran[3] == (s, ident)

    assert in_machine(body)


def test_a_callback_waiter_in_another_machine_runs_in_its_own_thread(in_machine):
    """workers N: a hand-over from another thread runs the continuation in the waiter's hub."""
    import threading

    def body():
        router = make_router(pool_size=1)
        a, b = routed(router), routed(router)
        s = router.attach(a, 0)
        ran, box = [], {}

        def other():
            box["ident"] = threading.get_ident()
            assert _queue_now(router, b, ran) is None
            _wait_for(lambda: len(ran) == 1)

        m = mm.Machine("other", other).start()
        _wait_for(lambda: len(a.route.waiters) == 1)
        router.detach(a)
        m.join(5000)
        return ran == [(b, s, box["ident"])] and box["ident"] != threading.get_ident()

    assert in_machine(body)


def test_attach_queued_takes_over_the_wait_from_its_place(in_machine):
    """pool_timeout counts from when the client queued; a takeover keeps its place (FIFO)."""
    def body():
        router = make_router(pool_size=1)
        holder, a, b = routed(router), routed(router), routed(router)
        s = router.attach(holder, 0)
        ran = []
        assert _queue_now(router, a, ran) is None
        assert _queue_now(router, b, ran) is None
        box = {}

        def take_over_a():
            box["a"] = router.attach_queued(a, None)     # no pool_timeout: waits on
        co = mm.Coroutine(take_over_a, name="a")
        mm.sleep(5)
        assert list(a.route.waiters) == [a.waiter, b.waiter]   # same place
        router.detach(holder)
        co.join(2000)
        assert box["a"] is s and ran == []            # the coroutine got it, not a callback
        mm.sleep(20)
        probe = []
        mm.Coroutine(lambda: probe.append(1), name="probe")   # runs at the next switch
        with pytest.raises(AttachTimeout):            # b queued > 20 ms ago: 20 ms is up
            router.attach_queued(b, 20)
        # counted from when b queued, its time was up: it raised without waiting at all (a
        # wait counted from the takeover would have switched away and let the probe run)
        assert probe == []
        mm.sleep(1)
        assert probe == [1]
        assert not b.route.waiters and b.state is ClientState.PENDING and b.server is None
        router.detach(a)
        mm.sleep(5)
        assert ran == [] and a.route.idle == [s]
        return True

    assert in_machine(body)


def test_attach_queued_after_a_hand_over_drops_the_continuation(in_machine):
    def body():
        router = make_router(pool_size=1)
        holder, a = routed(router), routed(router)
        s = router.attach(holder, 0)
        ran = []
        assert _queue_now(router, a, ran) is None
        router.detach(holder)                     # the continuation is queued, not run yet
        got = router.attach_queued(a, 1000)
        mm.sleep(5)
        return got is s, ran

    assert in_machine(body) == (True, [])


def test_kill_of_a_callback_waiter_and_its_takeover(in_machine):
    def body():
        router = make_router(pool_size=1)
        holder, victim, other = routed(router), routed(router), routed(router)
        s = router.attach(holder, 0)
        ran = []
        assert _queue_now(router, victim, ran) is None
        assert router.kill(victim.id) is victim
        assert not victim.route.waiters and victim.state is ClientState.PENDING
        with pytest.raises(AttachTimeout):
            router.attach_queued(victim, None)    # killed: nothing handed over
        mm.sleep(5)
        router.detach(holder)
        assert ran == [] and router.attach(other, 0) is s
        # a kill whose continuation runs: it finds no server
        ran2 = []
        assert _queue_now(router, victim, ran2) is None
        router.kill(victim.id)
        _wait_for(lambda: len(ran2) == 1)
        assert ran2[0][1] is None
        return True

    assert in_machine(body)


def test_a_callback_waits_server_is_never_read_from_the_waiter(in_machine):
    """A callback wait's waiter.server is neither reset nor read (the queueing and the reply
    walk's inline hand-over store none): it may hold an earlier hand-over's server, and
    attach_queued tells a hand-over from a kill by the client's server, and resets the waiter's
    where its coroutine takes the wait over (router._wait reads it)."""
    def body():
        router = make_router(pool_size=1)
        holder, victim = routed(router), routed(router)
        s = router.attach(holder, 0)
        ran = []
        assert _queue_now(router, victim, ran) is None
        router.detach(holder)                     # handed over: waiter.server is s
        _wait_for(lambda: len(ran) == 1)
        router.detach(victim)
        assert router.attach(holder, 0) is s
        assert victim.waiter.server is s          # (as a hand-over leaves it: stale from now on)
        # killed while queued again: nothing handed over, whatever the waiter holds
        assert _queue_now(router, victim, ran) is None
        router.kill(victim.id)
        with pytest.raises(AttachTimeout):
            router.attach_queued(victim, None)
        assert victim.server is None and holder.server is s
        # queued again, its coroutine takes the wait over, then killed: router._wait's read
        victim.killed = False
        victim.waiter.server = s
        assert _queue_now(router, victim, ran) is None
        out = []

        def take_over():
            try:
                router.attach_queued(victim, None)
            except AttachTimeout:
                out.append(victim.killed)
        co = mm.Coroutine(take_over, name="victim")
        _wait_for(lambda: victim.waiter.callback is None)
        router.kill(victim.id)
        co.join(2000)
        mm.sleep(5)
        return out, victim.server, holder.server is s, len(ran)

    assert in_machine(body) == ([True], None, True, 1)


def test_leave_queue_and_the_paused_takeover(in_machine):
    def body():
        router = make_router(pool_size=1)
        holder, a = routed(router), routed(router)
        s = router.attach(holder, 0)
        assert _queue_now(router, a, []) is None
        router.leave_queue(a)
        assert not a.route.waiters and a.state is ClientState.PENDING
        assert _queue_now(router, a, []) is None
        router.pause(None)
        box = {}
        co = mm.Coroutine(lambda: box.setdefault("got", router.attach_queued(a, 10)), name="a")
        mm.sleep(40)                              # paused: no pool_timeout
        assert "got" not in box and list(a.route.waiters) == [a.waiter]
        router.detach(holder)                     # paused: the server goes idle
        router.resume(None)
        co.join(2000)
        return box["got"] is s

    assert in_machine(body)
