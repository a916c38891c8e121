"""The relay's fast detach (Frontend.detach_now) decides as the slow path's reset.quick does,
whose test it copies inline, for every state a server can come back in; the fast attach
(Frontend.attach_now) and the queued client's hand-over (Relay._on_handed) as ready_now does,
whose common case they copy. A real Router, Route,
Client and Server (the router's idle list tells what happened; the attach's servers are socket
pairs, one end written to when the server is to have something to say)."""
from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest
from gevent import get_hub
from gevent import socket as gsocket
from hypothesis import given, settings
from hypothesis import strategies as st

import machinarium as mm
from kiwi import be_write, fe_write
from kiwi.protocol import Phase
from odyssey_gevent import deploy, reset
from odyssey_gevent.client import Client, ClientState
from odyssey_gevent.config.model import Endpoint, Rule
from odyssey_gevent.frontend import Frontend
from odyssey_gevent.logger import Logger
from odyssey_gevent import relay as relay_mod
from tests.odyssey_gevent.test_relay import _sbuf
from odyssey_gevent import route as route_mod
from odyssey_gevent.route import Route
from odyssey_gevent.relay import Relay, _new_buf
from odyssey_gevent.router import Router
from odyssey_gevent.server import ServerState

pytestmark = pytest.mark.timeout(30)

RULES = {     # pool_discard is on by default
    "transaction": dict(pool="transaction", pool_discard=False),
    "statement": dict(pool="statement", pool_discard=False),
    "session": dict(pool="session", pool_discard=False),
    "pool_discard": dict(pool="transaction", pool_discard=True),
    "pool_smart_discard": dict(pool="transaction", pool_discard=False, pool_smart_discard=True),
    "pool_discard_query": dict(pool="transaction", pool_discard=False, pool_discard_query="SELECT 1"),
}


class _Rules:
    def __init__(self, rule):
        self.rule = rule

    def match(self, db, user, client_addr, conn_type, tls):
        return self.rule


class _Instance:
    def __init__(self, rule, workers=1):
        self.config = SimpleNamespace(client_max=None)
        self.rules = _Rules(rule)
        self.logger = Logger(to_stdout=False)
        self.workers = workers
        self.closed = []
        self.router = Router(self)

    def close_server_later(self, server):
        self.closed.append(server)


def _frontend(kind: str):
    rule = Rule(db_name="default", user_name="default", authentication="none", **RULES[kind])
    instance = _Instance(rule)
    client = Client(None, conn_type="host", peer=("127.0.0.1", 5555))
    client.database, client.user = "db", "user"
    fe = Frontend(instance, client)
    fe.route()
    return fe, instance.router, client


@pytest.mark.parametrize("kind", sorted(RULES))
def test_the_fast_detach_is_plain_only_for_a_rule_that_resets_nothing(kind):
    fe, _, client = _frontend(kind)
    assert fe.detach_plain is (kind in ("transaction", "statement"))
    assert reset.rule_resets(client.rule) is (kind not in ("transaction", "statement"))


def test_a_routes_logins_share_what_its_rule_decides_and_queue_now_binds_once():
    """What the rule and the instance decide for every login (console, NOTICE, the plain fast
    detach) is worked out by the route's first login and kept (Route.login_facts); queue_now
    binds router.queue_now to the client at its first call only."""
    fe, router, client = _frontend("transaction")
    route = client.route
    assert route.login_facts == (False, False, True)
    assert fe.detach_plain and not client.is_console
    other = Client(None, conn_type="host", peer=("127.0.0.1", 5556))
    other.database, other.user = "db", "user"
    fe2 = Frontend(router.instance, other)
    fe2.route()
    assert other.route is route and fe2.detach_plain
    assert "queue_now" not in vars(fe2)              # not bound at login
    # no idle server, room in the pool (pool_size 0: no limit): a new server linked to it
    server = fe2.queue_now(other, lambda: None, None, 0)
    assert server is not None and server is other.server
    assert "queue_now" in vars(fe2)                  # bound at the first call, kept


def _two_clients(instance) -> list:
    """Two clients of one route (the rule's db and user), routed by their Frontends: [(fe, client)]."""
    pairs = []
    for port in (5555, 5556):
        c = Client(None, conn_type="host", peer=("127.0.0.1", port))
        c.database, c.user = "db", "user"
        fe = Frontend(instance, c)
        fe.route()
        pairs.append((fe, c))
    return pairs


class _CountingLock:
    """A threading.Lock that counts its acquires and releases."""

    def __init__(self):
        self.lock = threading.Lock()
        self.acquired = self.released = 0

    def acquire(self, *args):
        self.acquired += 1
        return self.lock.acquire(*args)

    def release(self):
        self.released += 1
        self.lock.release()

    def __enter__(self):
        self.acquire()

    def __exit__(self, *exc):
        self.release()


@pytest.mark.parametrize("workers", [1, 2])
def test_the_per_transaction_calls_take_the_lock_only_with_more_workers(workers):
    """attach_now, queue_now and the detach (detach_now's inline copy with one worker; with more
    it parks the server's socket and calls router.detach, here called directly), the last one
    handing the server to the queued client: each takes the router's lock once and gives it
    back where more than one thread calls the router; with one worker none of them calls it
    (Router.mt_lock is None: the stand-in's calls do nothing). The pool ends the same."""
    rule = Rule(db_name="default", user_name="default", authentication="none", pool_size=1,
                **RULES["transaction"])
    instance = _Instance(rule, workers=workers)
    router = instance.router
    counting = _CountingLock()
    router.lock = counting
    if router.mt_lock is not None:
        router.mt_lock = counting
    (fe, client), (fe2, other) = _two_clients(instance)
    server = router.attach(client, None)
    server.io = SimpleNamespace(_tls=True)      # attach_now leaves its checks to ready_now (False)
    route = client.route

    def detach():
        if workers > 1:
            router.detach(client)
        else:
            assert fe.detach_now(True) is True

    taken = counting.acquired
    detach()
    assert route.idle == [server] and client.server is None
    assert fe.attach_now() is False and client.server is server and route.idle == []
    ran = []
    assert fe2.queue_now(other, lambda: ran.append(other.server), None, 0) is None     # queued
    detach()
    assert other.server is server and server.client is other and client.server is None
    calls = counting.acquired - taken
    assert calls == (4 if workers > 1 else 0)
    assert counting.released == counting.acquired and not counting.lock.locked()


@pytest.mark.parametrize("workers", [1, 2])
def test_the_login_routing_takes_the_lock_only_with_more_workers(workers):
    """Router.route and unroute (each login's) take the router's lock once each and give it back
    where more than one thread calls the router; with one worker neither calls it (mt_lock is
    None). The route's clients and the cancel keys are the same either way."""
    rule = Rule(db_name="default", user_name="default", authentication="none", **RULES["transaction"])
    instance = _Instance(rule, workers=workers)
    router = instance.router
    counting = _CountingLock()
    router.lock = counting
    if router.mt_lock is not None:
        router.mt_lock = counting
    client = Client(None, conn_type="host", peer=("127.0.0.1", 5555))
    client.database, client.user = "db", "user"
    route = router.route(client)
    assert client.route is route and route.clients == {client}
    assert router.keys[(client.key_pid, client.key_secret)] is client
    assert counting.acquired == (1 if workers > 1 else 0)
    router.unroute(client)
    assert not route.clients and not router.keys
    assert counting.acquired == counting.released == (2 if workers > 1 else 0) and not counting.lock.locked()


# a server that comes back settled, and each way it may not be (one at a time below; mixed
# by hypothesis after)
SETTLED = dict(clean=True, syncs=0, tx=b"I", output=False, cancels=0, drop=False, broken=False, io=True,
               phase=Phase.READY, offline=False, obsolete=False)
DEVIATIONS = [{}, {"tx": bytes(bytearray(b"I"))}, {"phase": Phase.SKIP}, {"clean": False}, {"syncs": 1},
              {"tx": b"T"}, {"tx": b"E"}, {"output": True}, {"cancels": 1}, {"drop": True}, {"broken": True},
              {"io": False}, {"phase": Phase.BUSY}, {"phase": Phase.COPY_IN}, {"phase": Phase.COPY_OUT},
              {"phase": Phase.COPY_BOTH}, {"offline": True}, {"obsolete": True}]


def _check(kind, clean, syncs, tx, output, cancels, drop, broken, io, phase, offline, obsolete,
           walked=False) -> bool:
    """`walked`: detach_walked, the reply walk's call, in a state the walk lets through."""
    fe, router, client = _frontend(kind)
    server = router.attach(client, None)
    route = client.route
    server.io = object() if io else None
    proto = server.proto
    proto.syncs, proto.tx_status, proto.phase = syncs, tx, phase
    if output:
        proto.output = [b"x"]
    server.cancels, server.drop, server.broken, server.offline = cancels, drop, broken, offline
    route.obsolete = obsolete
    want = reset.quick(server, clean) and not offline and not obsolete
    if walked:
        assert clean and syncs == 0 and not broken     # what the walk tested before the call
        assert fe.detach_walked() is want
    else:
        assert fe.detach_now(clean) is want
    if want:
        assert client.server is None and route.idle == [server] and server.state is ServerState.IDLE
    else:
        assert client.server is server and not route.idle
    return want


@pytest.mark.parametrize("kind", sorted(RULES))
@pytest.mark.parametrize("deviation", DEVIATIONS, ids=lambda d: ",".join(f"{k}={v!r}" for k, v in d.items()) or "settled")
def test_detach_now_decides_as_reset_quick_one_deviation_at_a_time(kind, deviation):
    pooled = _check(kind, **{**SETTLED, **deviation})
    # the settled server is pooled at once by a rule that resets nothing, and only then
    assert pooled is (kind in ("transaction", "statement") and deviation in ({}, {"tx": bytes(bytearray(b"I"))},
                                                                           {"phase": Phase.SKIP},
                                                                           {"phase": Phase.BUSY}))


@given(kind=st.sampled_from(sorted(RULES)), clean=st.booleans(), syncs=st.sampled_from([0, 1]),
       tx=st.sampled_from([b"I", bytes(bytearray(b"I")), b"T", b"E"]), output=st.booleans(),
       cancels=st.sampled_from([0, 1]), drop=st.booleans(), broken=st.booleans(), io=st.booleans(),
       phase=st.sampled_from([Phase.READY, Phase.BUSY, Phase.COPY_IN, Phase.COPY_OUT, Phase.COPY_BOTH,
                              Phase.SKIP]),
       offline=st.booleans(), obsolete=st.booleans())
@settings(max_examples=300, deadline=None)
def test_detach_now_decides_as_reset_quick(kind, clean, syncs, tx, output, cancels, drop, broken, io, phase,
                                           offline, obsolete):
    _check(kind, clean, syncs, tx, output, cancels, drop, broken, io, phase, offline, obsolete)


# the states the reply walk lets through to detach_walked: clean, owing nothing, not broken
WALKED = [d for d in DEVIATIONS if not {"clean", "syncs", "broken"} & set(d)]


@pytest.mark.parametrize("kind", sorted(RULES))
@pytest.mark.parametrize("deviation", WALKED, ids=lambda d: ",".join(f"{k}={v!r}" for k, v in d.items()) or "settled")
def test_detach_walked_decides_as_reset_quick_one_deviation_at_a_time(kind, deviation):
    """detach_walked leaves out the tests the reply walk made before calling it (server_clean,
    no syncs, not broken): in every state that walk lets through it decides as reset.quick."""
    pooled = _check(kind, **{**SETTLED, **deviation}, walked=True)
    assert pooled is (kind in ("transaction", "statement") and deviation in ({}, {"tx": bytes(bytearray(b"I"))},
                                                                           {"phase": Phase.SKIP},
                                                                           {"phase": Phase.BUSY}))


@given(kind=st.sampled_from(sorted(RULES)),
       tx=st.sampled_from([b"I", bytes(bytearray(b"I")), b"T", b"E"]), output=st.booleans(),
       cancels=st.sampled_from([0, 1]), drop=st.booleans(), io=st.booleans(),
       phase=st.sampled_from([Phase.READY, Phase.BUSY, Phase.COPY_IN, Phase.COPY_OUT, Phase.COPY_BOTH,
                              Phase.SKIP]),
       offline=st.booleans(), obsolete=st.booleans())
@settings(max_examples=200, deadline=None)
def test_detach_walked_decides_as_reset_quick(kind, tx, output, cancels, drop, io, phase, offline, obsolete):
    _check(kind, True, 0, tx, output, cancels, drop, False, io, phase, offline, obsolete, walked=True)


def _pooled_state(case: str, fast: bool):
    """A server detached by detach_now (the checks, then router.detach) or by
    router.detach itself, in each case: what the router's lists and the objects say after."""
    rule = Rule(db_name="default", user_name="default", authentication="none", pool_size=1,
                **RULES["transaction"])
    instance = _Instance(rule)
    router = instance.router
    clients = _two_clients(instance)
    (fe, client), (_, other) = clients
    server = router.attach(client, None)
    server.io = object()
    route = client.route
    ran = []
    if case in ("waiter", "paused"):    # the pool is full: the other client queued (a callback)
        assert router.queue_now(other, lambda: ran.append(other.server), None, 0) is None
        if case == "paused":        # then the server goes idle, the waiter waits
            router.pause(None)
    elif case == "unrouted":    # the client left its route first (its state stays UNDEF)
        router.unroute(client)
    elif case == "deployed":    # the relay wrote params: the server no longer holds the list
        server.deployed = object()
    assert fe.detach_plain
    server.idle_since = 0.0         # the detach stamps it where the server goes idle
    if fast:
        assert fe.detach_now(True) is True
    else:
        if server.deployed is not client.deploy_list:
            server.deployed = None
        router.detach(client)
    # the objects by their part here, so that two runs compare
    name = {id(client): "client", id(other): "other", id(server): "server", id(None): None}.get
    return (name(id(client.server)), name(id(server.client)), client.state, server.state,
            [name(id(x)) for x in route.idle], sorted(name(id(x)) for x in route.active),
            server.idle_since > 0, server.deployed, name(id(other.server)), other.state,
            len(route.waiters), [name(id(x)) for x in ran], route.stats.count_server_assignment,
            len(instance.closed))


def _taken_state(case: str, fast: bool):
    """An idle server taken by attach_now (its inline copy of router.attach_idle) or by
    router.attach_idle itself: what the router's lists and the objects say after."""
    fe, router, client = _frontend("transaction")
    server = router.attach(client, None)
    server.io = None            # attach_now's checks after the take: left to ready_now (False)
    router.detach(client)
    route = client.route
    if case == "offline":
        server.offline = True
    elif case == "paused":
        router.pause(None)
    elif case == "paused_db":
        router.pause(route.db)
    elif case == "other_db_paused":
        router.pause(route.db + "_other")
    before = route.stats.count_server_assignment
    if fast:
        fe.attach_now()
    else:
        router.attach_idle(client)
    linked = client.server is server
    return (linked, server.client is client, client.state, server.state, len(route.idle), len(route.active),
            route.stats.count_server_assignment - before)


@pytest.mark.parametrize("case", ["idle", "offline", "paused", "paused_db", "other_db_paused"])
def test_attach_now_takes_as_router_attach_idle_does(case):
    """attach_now takes the same idle server, or leaves it, as router.attach_idle does."""
    fast, slow = _taken_state(case, True), _taken_state(case, False)
    assert fast == slow
    assert fast[0] is (case in ("idle", "other_db_paused"))
    assert fast[4] == (0 if fast[0] else 1) and fast[6] == (1 if fast[0] else 0)


@pytest.mark.parametrize("case", ["idle", "waiter", "paused", "unrouted", "deployed"])
def test_detach_now_pools_as_router_detach_does(case):
    """detach_now pools a settled server as router.detach does (no waiter: back on the idle
    list; a waiter: handed to it; a paused route's waiter: left waiting), and drops the deploy
    mark where the relay wrote params."""
    fast, slow = _pooled_state(case, True), _pooled_state(case, False)
    assert fast == slow
    if case == "waiter":
        assert fast[8] == "server" and fast[4] == [] and fast[10] == 0     # handed over
    elif case == "paused":
        assert fast[8] is None and fast[4] == ["server"] and fast[10] == 1
    else:
        assert fast[0] is None and fast[4] == ["server"] and fast[5] == [] and fast[3] is ServerState.IDLE
        assert fast[2] is (ClientState.UNDEF if case == "unrouted" else ClientState.PENDING)
    assert fast[7] is None if case == "deployed" else True
    # idle_since stamped where the server went idle (cron's pool_ttl reads it for idle servers
    # alone), not where it was handed over
    assert fast[6] is (fast[4] == ["server"])


# ----------------------------------------------------------------------------------------------
# the relay's fast attach copies ready_now's common case: both decide alike

def _attach_case(kind_plain: bool, check: bool, readable: bool, polled, deploy_state: str, use):
    """A client of a transaction rule whose route has one idle, connected server (a socket
    pair's end), in the given state; `use(fe, router, client, server)` decides. polled: True
    (its poll object made), False, or "watched": pooled as the relay's fast detach leaves it,
    its read watcher started and its reader the instance; readable then also means the loop's
    poll found it so and its callback has not run yet (the watcher's event pending)."""
    a, b = gsocket.socketpair()
    sio, peer = mm.Io(a), mm.Io(b)
    watcher = None
    try:
        rule = Rule(db_name="default", user_name="default", authentication="none", pool="transaction",
                    pool_discard=False, pool_attach_check=check, maintain_params=True,
                    target_session_attrs=None if kind_plain else "read-write")
        instance = _Instance(rule)
        router = instance.router
        client = Client(None, conn_type="host", peer=("127.0.0.1", 5555))
        client.database, client.user = "db", "user"
        client.vars = {"application_name": "me"}
        fe = Frontend(instance, client)
        fe.route()
        server = router.attach(client, None)
        server.io = sio
        server.endpoint = Endpoint(host="127.0.0.1", port=5432)     # as a logged-in server's
        server.params = {"application_name": "other" if deploy_state == "differs" else "me"}
        if deploy_state == "marked":
            assert not deploy.needed(client, server) and server.deployed is client.deploy_list
        elif deploy_state == "remarked":    # the client's list known, the server's params changed since
            assert not deploy.needed(client, server) and client.deploy_list is not None
            server.params = {"application_name": "other"}
            server.deployed = None          # (whoever writes params resets the mark)
        router.detach(client)
        if polled == "watched":
            watcher = sio.sock._read_event
            server.reader = instance
            watcher.start(relay_mod._on_read(server))       # (idle_readable while so pooled)
        elif polled:
            assert sio.readable_now() is False      # its poll object made
        if readable:
            peer.write(b"N")
            if watcher is not None:     # found by the loop's poll, its callback not run yet
                watcher.feed(1, watcher.callback, *watcher.args)
                assert watcher.pending
        return use(fe, router, client, server)
    finally:
        if watcher is not None:
            watcher.stop()
        sio.close(), peer.close()


def ready_now_cases(test):
    """The cases in which a copy of ready_now's common case must decide as ready_now: a client
    with or without host checks, pool_attach_check on or off, a quiet or readable server, its
    poll object made or not or its watcher started (pool_attach_check reads the watcher's
    pending event then: server.attach_check_failed), and its deploy mark set, holding the
    client's vars, or not."""
    for name, values, ids in (("plain", [True, False], ["plain", "tsa"]),
                              ("check", [True, False], ["check", "nocheck"]),
                              ("readable", [False, True], ["quiet", "readable"]),
                              ("polled", [True, False, "watched"], ["polled", "unpolled", "watched"]),
                              ("deploy_state", ["marked", "holds", "differs", "remarked"], None)):
        test = pytest.mark.parametrize(name, values, ids=ids)(test)
    return test


@ready_now_cases
def test_attach_now_decides_as_ready_now(in_machine, plain, check, readable, polled, deploy_state):
    def fast(fe, router, client, server):
        got = fe.attach_now()
        assert client.server is server          # taken either way
        return got

    def slow(fe, router, client, server):
        assert router.attach_idle(client) is server
        return fe.ready_now(server)

    def body():
        got = _attach_case(plain, check, readable, polled, deploy_state, fast)
        want = _attach_case(plain, check, readable, polled, deploy_state, slow)
        assert got is not None and want is not None
        assert (got is False) == (want is False)
        # and what each says: a server for a quiet, fitting one with nothing to deploy
        assert (got is not False) == (plain and not (check and readable) and deploy_state not in ("differs", "remarked"))
        return True

    assert in_machine(body)


def _hand_over(fe, router, client, server):
    """The server handed to the queued client (linked as the router links it), and the relay's
    continuation run: the server when it relayed the held request at once, else False (what
    it switched into the coroutine with said the server needs the coroutine's checks)."""
    assert router.attach_idle(client) is server
    a, b = gsocket.socketpair()
    cio, app = mm.Io(a), mm.Io(b)
    client.io = cio
    fe.instance.shutting_down = False
    relay = Relay(fe, client)
    try:
        q = fe_write.query("select 1")
        buf = _new_buf()              # (a relay buffer: its length field in view, _Buf.head)
        buf[:len(q)] = q
        relay.c_buf, relay.c_len = buf, len(q)
        relay.c_first = q[0]        # (as _on_client queues it)
        relay.c_watch = cio.sock._read_event
        relay.c_watch.start(relay.on_client)
        relay.queued = relay.fast = True
        relay.hand_flags()          # (as _park sets them for its wait)
        switched = []
        relay.glet = SimpleNamespace(switch=switched.append)
        relay._on_handed()
        if switched:
            assert switched == [(len(q), server)]
            return False
        return server
    finally:
        relay.c_watch.stop()
        if relay.s_watch is not None:
            relay.s_watch.stop()
        relay.close()
        cio.close(), app.close()


@ready_now_cases
def test_the_hand_over_decides_as_ready_now(in_machine, plain, check, readable, polled, deploy_state):
    def slow(fe, router, client, server):
        assert router.attach_idle(client) is server
        return fe.ready_now(server)

    def body():
        got = _attach_case(plain, check, readable, polled, deploy_state, _hand_over)
        want = _attach_case(plain, check, readable, polled, deploy_state, slow)
        assert (got is False) == (want is False)
        assert (got is not False) == (plain and not (check and readable) and deploy_state not in ("differs", "remarked"))
        return True

    assert in_machine(body)


@pytest.mark.parametrize("maintain", [True, False], ids=["maintain", "nomaintain"])
@pytest.mark.parametrize("check", [True, False], ids=["check", "nocheck"])
@pytest.mark.parametrize("plain", [True, False], ids=["plain", "tsa"])
def test_the_hand_overs_flags_are_the_frontends_and_the_rules(in_machine, plain, check, maintain):
    """Relay.hand_flags (what _park sets for its wait; the queued hand-over tests the three
    flags instead of the frontend's attach_plain and the rule's maintain_params and
    pool_attach_check): False until set, then each what it stands for, the rule's two False
    where attach_plain is (the "tsa" case: a route with target_session_attrs is not plain)."""
    def body():
        rule = Rule(db_name="default", user_name="default", authentication="none", pool="transaction",
                    pool_discard=False, pool_attach_check=check, maintain_params=maintain,
                    target_session_attrs=None if plain else "read-write")
        instance = _Instance(rule)
        client = Client(None, conn_type="host", peer=("127.0.0.1", 5555))
        client.database, client.user = "db", "user"
        fe = Frontend(instance, client)
        fe.route()
        assert fe.attach_plain is plain
        a, b = gsocket.socketpair()
        client.io = mm.Io(a)
        try:
            relay = Relay(fe, client)
            assert (relay.hand_plain, relay.hand_deploy, relay.hand_check) == (False, False, False)
            relay.hand_flags()
            got = (relay.hand_plain, relay.hand_deploy, relay.hand_check)
        finally:
            client.io.close()
            b.close()
        return got

    assert in_machine(body) == (plain, plain and maintain, plain and check)


@pytest.mark.parametrize("kind", ["transaction", "session"])
def test_new_relay_makes_what_relay_init_makes(in_machine, kind):
    """Frontend.run makes its relay with relay.new_relay (without the class call), which
    Relay(fe, client) calls too: every slot alike (the bound callbacks each relay's own), and
    the thread's shared state (loop, ident, free list: relay._HUBS) the one both find;
    the queued wait's callback is made at the first queue only."""
    from odyssey_gevent import relay as relay_mod

    def body():
        fe, _, client = _frontend(kind)
        a, b = gsocket.socketpair()
        client.io = mm.Io(a)
        try:
            relay_mod._HUBS.clear()
            made = relay_mod.new_relay(fe, client, None)
            ref = Relay(fe, client)
            for name in Relay.__slots__:
                got, want = getattr(made, name), getattr(ref, name)
                if name == "on_client":
                    assert got.__self__ is made and got.__func__ is want.__func__, name
                else:
                    assert got == want, name
            assert made.loop is client.io.sock.hub.loop and made.ident == threading.get_ident()
            assert made.free is relay_mod._free_buffers() and made.on_handed is relay_mod._NO_HAND_OVER
            return True
        finally:
            client.io.close(), b.close()

    assert in_machine(body)


# the states a server may be in when the reply walk detaches it (each one at a time)
WALK_CASES = ["idle", "waiter_loop", "waiter_coroutine", "paused", "paused_db", "paused_alone", "unrouted",
              "deployed", "cancels", "cancel_done", "drop", "offline", "obsolete", "tx_in_statement"]


def _walked(kind: str, case: str, inline: bool, at_once: list | None = None, started: bool = True):
    """A transaction's reply (CommandComplete, ReadyForQuery) walked by the relay's fast path
    (Relay._server_data, as the server's read watcher calls it) for a real Frontend: its inline
    copy of detach_walked's common case (`inline`), or detach_walked itself (the relay given a
    frontend without detach_plain that calls the real one). What the router's lists and the
    objects say after, and what the walk switched into the coroutine with. `at_once` gets
    whether a queued hand-over's continuation had run when the walk returned (before a loop turn).
    Not `started`: the relay holds no request start (no clock read at the ReadyForQuery)."""
    rule = Rule(db_name="default", user_name="default", authentication="none", pool_size=1, **RULES[kind])
    instance = _Instance(rule)
    instance.shutting_down = False
    router = instance.router
    a, b = gsocket.socketpair()
    c, d = gsocket.socketpair()
    sio, pg, cio, app = mm.Io(a), mm.Io(b), mm.Io(c), mm.Io(d)
    clients = _two_clients(instance)
    (fe, client), (_, other) = clients
    client.io = cio
    server = router.attach(client, None)
    server.io = sio
    route = client.route
    ran = []
    handed_at = []
    co = None
    try:
        if case in ("waiter_loop", "paused", "paused_db"):  # the pool is full: the other client queued (a callback)
            loop = get_hub().loop
            # (the continuation's argument: the clock the walk read, when the walk runs it)
            assert router.queue_now(other, lambda now=None: ran.append(other.server) or handed_at.append(now),
                                    loop, threading.get_ident()) is None
            if case == "paused":
                router.pause(None)
            elif case == "paused_db":   # (the route's database paused: not plain either)
                router.pause(route.db)
        elif case == "paused_alone":    # paused with nobody waiting: pooled all the same
            router.pause(None)
        elif case == "waiter_coroutine":        # ... a coroutine waiting in router.attach
            co = mm.Coroutine(lambda: ran.append(router.attach(other, None)), name="waiter")
            mm.sleep(0)
            assert len(route.waiters) == 1
        elif case == "unrouted":
            router.unroute(client)
        elif case == "deployed":
            server.deployed = object()
        elif case in ("cancels", "cancel_done"):     # (through their writers: see Server.held)
            server.endpoint = object()
            assert router.cancel_target(client.key_pid, client.key_secret)[-1] is server
            if case == "cancel_done":
                router.cancel_done(server)
            assert server.cancels == (case == "cancels")
        elif case == "offline":
            assert router.drop_servers() >= 1 and server.offline
        elif case == "obsolete":     # (a reload's: Route.plain cleared with it)
            assert router.mark_obsolete(set()) == 1 and route.obsolete
        relay = Relay(fe, client)
        if case == "drop":          # server_drop_on_cached_plan_error (the rule's default)
            err = b"SERROR\0C0A000\0Mcached plan must not change result type\0\0"
            relay._server_error(server, err, 0, len(err))
            assert server.drop
        relay.keep_watch = relay.fast = True
        relay.s_watch = sio.sock._read_event
        server.reader = relay
        switched = []
        relay.glet = SimpleNamespace(switch=switched.append)
        if not inline:
            relay.fe = SimpleNamespace(detach_plain=False, detach_walked=fe.detach_walked)
        relay.walk_plain = relay.plain_walk()       # (as _park sets it for its wait)
        status = b"T" if case == "tx_in_statement" else b"I"
        server.proto.send(relay_mod._C_QUERY)
        if started:
            relay.q_start = relay.tx_start = 1.0        # (the request's and its transaction's start)
        reply = be_write.command_complete("SELECT 1") + be_write.ready_for_query(status)
        server.idle_since = 0.0
        relay._server_data(server, _sbuf(reply), len(reply))   # (a relay buffer: see relay._Buf)
        if at_once is not None:
            # run before the walk returned, and with the walk's clock (the one its own relay's
            # wait starts at) or, as the waiter's loop callback, none
            at_once.append((ran == [server], handed_at == [relay.wait_start] and relay.wait_start > 0 if ran
                            else list(handed_at)))
        assert app.read(len(reply), 2000) == reply
        if co is not None:
            if other.waiter.woken:      # (left waiting where the coroutine must detach)
                co.join(2000)
        else:
            mm.sleep(0)         # a queued hand-over's continuation runs
        name = {id(client): "client", id(other): "other", id(server): "server", id(None): None}.get
        return (switched, name(id(client.server)), name(id(server.client)), client.state, server.state,
                [name(id(x)) for x in route.idle], sorted(name(id(x)) for x in route.active),
                server.idle_since > 0, server.deployed is None, name(id(other.server)), other.state,
                len(route.waiters), [name(id(x)) for x in ran], route.stats.count_server_assignment,
                len(instance.closed), server.reader is instance,
                # (a coroutine's wait: woken; a callback wait's woken is read by nobody, and the
                # walk's inline hand-over runs the callback without it)
                other.waiter is not None and other.waiter.callback is None and other.waiter.woken,
                relay.tx_start is not None, client.server is not None or relay.q_start is None)
    finally:
        if co is not None and not co.dead:
            co.cancel()
        for io in (sio, pg, cio, app):
            io.close()


@pytest.mark.parametrize("kind", ["transaction", "statement", "session", "pool_discard"])
@pytest.mark.parametrize("case", WALK_CASES)
def test_the_walks_detach_pools_as_detach_walked_does(in_machine, kind, case):
    """The reply walk's inline copy of detach_walked's common case (a plain detach: back on the
    idle list, or handed to the first waiter and woken) leaves what
    detach_walked leaves, in each state the walk may meet, and leaves anything else to it."""
    got = in_machine(_walked, kind, case, True)
    want = in_machine(_walked, kind, case, False)
    assert got == want
    if kind in ("transaction", "statement") and case in ("idle", "waiter_loop", "waiter_coroutine", "unrouted",
                                                         "deployed", "cancel_done"):
        assert got[0] == [] and got[1] is None      # detached in the hub
    if kind == "session":
        assert got[0] == [] and got[1] == "server"  # not detached
    # a client the walk leaves without a server has no request start (the hand-over of its next
    # request, queued, stores q_start without a test); a transaction's start stays across
    # statement pooling's detach (the hand-over tests tx_start)
    assert got[-1] is True
    assert got[-2] is (case == "tx_in_statement")
    # idle_since stamped where the server went idle, not where it was handed to a waiter (cron's
    # pool_ttl reads it for idle servers alone: test_cron)
    assert got[7] is (got[5] == ["server"])


def test_the_walks_detach_reads_the_clock_where_the_reply_did_not(in_machine):
    """A reply whose request start the relay does not hold (no clock read at its ReadyForQuery)
    is detached with a clock all the same: the server going idle is stamped with it, and a
    waiter handed the server gets it as its relay's wait starts at it."""
    got = in_machine(_walked, "transaction", "idle", True, None, False)
    assert got[0] == [] and got[5] == ["server"] and got[7] is True
    at_once = []
    got = in_machine(_walked, "transaction", "waiter_loop", True, at_once, False)
    assert got[0] == [] and at_once == [(True, True)]


def test_the_walks_plain_flag_needs_all_four(in_machine):
    """Relay.plain_walk (the flag _park sets for its wait, one test in the reply walk for its
    inline detach): a fast relay, transaction or statement pooling, workers 1 (keep_watch) and
    the frontend's detach_plain; with any one of them off the walk's detach is detach_walked's."""
    def body():
        got = {}
        for kind in ("transaction", "statement", "session", "pool_discard"):
            fe, _, client = _frontend(kind)
            a, b = gsocket.socketpair()
            client.io = mm.Io(a)
            try:
                relay = Relay(fe, client)
                assert relay.walk_plain is False and relay.plain_walk() is False    # not fast
                relay.fast = relay.keep_watch = True
                got[kind] = relay.plain_walk()
                relay.keep_watch = False
                assert relay.plain_walk() is False
                relay.keep_watch = True
                if got[kind]:
                    relay.mode_transaction = relay.mode_statement = False
                    assert relay.plain_walk() is False
                    relay.mode_statement = True
                    assert relay.plain_walk() is True
                    fe.detach_plain = False
                    assert relay.plain_walk() is False
            finally:
                client.io.close()
                b.close()
        return got

    assert in_machine(body) == {"transaction": True, "statement": True, "session": False, "pool_discard": False}


def test_the_walk_runs_a_queued_relays_hand_over_before_it_returns(in_machine):
    """With one worker the reply walk runs the continuation of the relay it hands the server to
    itself (Wakeup's callback, run in the waiter's own hub), not at the loop's next turn as
    router.detach's wake-up does; a paused route's waiter is not handed anything."""
    for inline, case, want in ((True, "waiter_loop", [(True, True)]), (False, "waiter_loop", [(False, [])]),
                               (True, "paused", [(False, [])])):
        at_once = []
        got = in_machine(_walked, "transaction", case, inline, at_once)
        assert at_once == want
        assert got[12] == (["server"] if case == "waiter_loop" else [])     # ran, after a turn


def _relay_attach(fe, router, client, server):
    """A lone Query read by the relay's client callback (Relay._on_client, its inline copy of
    attach_now): the server when it was taken and the request sent on at once, False when it
    was taken and the callback switched into the coroutine with it (checks), None when nothing
    was taken (the callback left the attach to the coroutine)."""
    a, b = gsocket.socketpair()
    cio, app = mm.Io(a), mm.Io(b)
    client.io = cio
    fe.instance.shutting_down = False
    relay = Relay(fe, client)
    try:
        q = fe_write.query("select 1")
        app.write(q)
        relay.fast = True
        relay.hand_flags()          # (as _park sets them for its wait)
        switched = []
        relay.glet = SimpleNamespace(switch=switched.append)
        relay._on_client()
        if not switched:
            assert client.server is server and server.reader is relay
            return server
        assert len(switched) == 1
        end, taken = switched[0]
        assert end == len(q) and taken is client.server
        return False if taken is not None else None
    finally:
        if relay.s_watch is not None:
            relay.s_watch.stop()
        relay.close()
        cio.close(), app.close()


@ready_now_cases
def test_the_client_callback_attaches_as_attach_now(in_machine, plain, check, readable, polled, deploy_state):
    """_on_client's copy of attach_now takes the idle server and decides about it as attach_now
    does: relays at once where it gives the server, switches into the coroutine with it where
    it gives False."""
    def fast(fe, router, client, server):
        got = fe.attach_now()
        assert client.server is server
        return got

    def relay(fe, router, client, server):
        asked = []
        attach_now = fe.attach_now
        fe.attach_now = lambda: asked.append(1) or attach_now()
        assert client.route.plain       # (a route the router made, nothing paused, not obsolete)
        got = _relay_attach(fe, router, client, server)
        assert (not asked) is plain     # the inline copy where the client is attach_plain
        return got

    def body():
        got = _attach_case(plain, check, readable, polled, deploy_state, relay)
        want = _attach_case(plain, check, readable, polled, deploy_state, fast)
        assert got is not None and want is not None
        assert (got is False) == (want is False)
        return True

    assert in_machine(body)


@pytest.mark.parametrize("case", ["offline", "paused", "paused_db", "other_db_paused", "obsolete"])
def test_the_client_callback_takes_as_attach_now(in_machine, case):
    """_on_client's copy of attach_now leaves an offline idle server, or a paused route's, as
    attach_now does (nothing taken), and takes it where another database is paused or the route
    is obsolete (a reload's: attach_now's, which takes it)."""
    def setup(router, client, server):
        if case == "offline":
            server.offline = True
        elif case == "obsolete":
            assert router.mark_obsolete(set()) == 1 and not client.route.plain
        elif case == "paused":
            router.pause(None)
        elif case == "paused_db":
            router.pause(client.route.db)
        else:
            router.pause(client.route.db + "_other")

    def relay(fe, router, client, server):
        setup(router, client, server)
        got = _relay_attach(fe, router, client, server)
        return "server" if got is server else got, client.server is server, client.state, server.state, len(client.route.idle), \
            client.route.stats.count_server_assignment

    def fast(fe, router, client, server):
        setup(router, client, server)
        got = fe.attach_now()
        return "server" if got is server else got, client.server is server, client.state, server.state, \
            len(client.route.idle), client.route.stats.count_server_assignment

    def body():
        got = _attach_case(True, False, False, False, "marked", relay)
        want = _attach_case(True, False, False, False, "marked", fast)
        assert got == want
        assert (got[0] is None) is (case not in ("other_db_paused", "obsolete"))
        return True

    assert in_machine(body)


QUEUE_CASES = ["armed", "unarmed", "coroutine", "room", "unlimited", "paused", "paused_db", "queue_odd", "idle_offline", "obsolete"]


def _relay_queue(case: str, inline: bool):
    """A lone Query read by the relay's client callback (Relay._on_client) for a client of a full
    pool (pool_size 1, its server another client's): queued by its inline copy of
    router.queue_now's common case (`inline`), or by Frontend.queue_now (the relay given a router
    with a lock, so that it calls the frontend). What the router, the client, its waiter and
    the relay say after."""
    rule = Rule(db_name="default", user_name="default", authentication="none", pool_size=1,
                **RULES["transaction"])
    instance = _Instance(rule)
    instance.shutting_down = False
    router = instance.router
    clients = _two_clients(instance)
    (_, holder), (fe, client) = clients
    route = client.route
    router.attach(holder, None)
    a, b = gsocket.socketpair()
    cio, app = mm.Io(a), mm.Io(b)
    client.io = cio
    relay = Relay(fe, client)
    asked = []                  # Frontend.queue_now's calls
    queue_now = fe.queue_now
    fe.queue_now = lambda *args: asked.append(args) or queue_now(*args)
    try:
        if case == "coroutine":
            # the waiter armed by a wait in the coroutine (Wakeup.callback None), the relay's
            # hand-over not made (no queued wait in the hub yet): queue_now's, which arms it
            client.waiter = route_mod.Waiter(client)
            assert client.waiter.callback is None
        else:
            relay.on_handed = relay._on_handed
        if case not in ("unarmed", "coroutine"):    # an earlier wait armed the waiter with this relay's hand-over
            assert router.queue_now(client, relay.on_handed, get_hub().loop, threading.get_ident()) is None
            router.leave_queue(client)
            assert not route.waiters and client.waiter.callback is relay.on_handed
            client.waiter.server = holder.server    # (as an earlier hand-over leaves it)
            client.waiter.since = 0.0
        if case == "idle_offline":  # an idle server, offline: nothing to take, nothing to queue for
            rule.pool_size = 2
            spare = router.attach(client, None)
            router.detach(client)
            spare.offline = True
            rule.pool_size = 1
            assert route.idle == [spare]
        elif case in ("room", "unlimited"):     # a pool with room (a new server to connect); its
            rule.pool_size = 2 if case == "room" else 0     # rule's now (a rule is fixed in
            route.queue_rule()                              # a route: queue_rule once)
        elif case == "paused":
            router.pause(None)
        elif case == "paused_db":
            router.pause(route.db)
        elif case == "queue_odd":   # NOTICEs while waiting: queue_now's queue
            rule.pool_notice_after_waiting_ms = 0
            route.queue_rule()
        elif case == "obsolete":    # (a reload's: Route.plain cleared with it)
            assert router.mark_obsolete(set()) == 1
        assert route.plain is (case not in ("paused", "paused_db", "obsolete"))
        # queue_at kept with plain (Route.set_plain): the inline queueing's one compare
        assert (route.queue_at == route_mod.QUEUE_NEVER) is (not route.plain or route.queue_pool == route_mod.QUEUE_NEVER)
        if not inline:
            route.set_plain(False)  # (as a lock or a pause leaves it: the callback asks queue_now)
        q = fe_write.query("select 1")
        app.write(q)
        relay.fast = True
        switched = []
        relay.glet = SimpleNamespace(switch=switched.append)
        relay._on_client()
        waiter = client.waiter
        assert (not asked) is (inline and case == "armed")     # the inline copy queued, or queue_now
        return (switched if not switched or switched[0][1] is None else [(switched[0][0], "server")],
                relay.queued, relay.c_len, client.state, len(route.waiters),
                waiter is not None and route.waiters and route.waiters[-1] is waiter,
                waiter is not None and waiter.server is None, waiter is not None and waiter.since > 0,
                waiter is not None and waiter.callback is relay.on_handed, client.server is None,
                len(route.active), len(route.idle))
    finally:
        if relay.q_timer is not None:
            relay.q_timer.stop()
        relay.close()
        cio.close(), app.close()


def test_a_routes_queue_rule_says_where_the_callback_queues():
    """Route.queue_at, the count of active servers at which the relay's inline copy of
    queue_now queues a client: the pool size of a pool of its own without NOTICEs, else a
    one-digit int no pool reaches (no limit, a shared pool, pool_notice_after_waiting_ms), and
    that int too while the route is not plain (Route.set_plain keeps the two together: a route
    is made not plain, the router's route() sets it)."""
    def route(**kw):
        rule = Rule(db_name="default", user_name="default", authentication="none", **RULES["transaction"])
        for k, v in kw.items():
            setattr(rule, k, v)
        r = Route(("default", "default", 0), rule, "default", "default")
        assert not r.plain and r.queue_at == route_mod.QUEUE_NEVER
        r.set_plain(True)
        return r

    assert route_mod.QUEUE_NEVER < 1 << 30
    assert (route(pool_size=5).queue_at, route(pool_size=5).queue_odd) == (5, False)
    assert route(pool_size=0).queue_at == route_mod.QUEUE_NEVER
    for odd in ({"shared_pool": "shared"}, {"pool_notice_after_waiting_ms": 0},
                {"pool_notice_after_waiting_ms": 100}):
        r = route(pool_size=5, **odd)
        assert r.queue_odd and r.queue_at == route_mod.QUEUE_NEVER
    r = route(pool_size=5, pool_notice_after_waiting_ms=-1)
    assert r.queue_at == 5
    r.set_plain(False)
    assert (r.plain, r.queue_at, r.queue_pool) == (False, route_mod.QUEUE_NEVER, 5)
    r.set_plain(True)
    assert (r.plain, r.queue_at) == (True, 5)


@pytest.mark.parametrize("case", QUEUE_CASES)
def test_the_client_callback_queues_as_queue_now(in_machine, case):
    """_on_client's copy of router.queue_now's common case (a full pool, the waiter armed by an
    earlier wait) queues the client as queue_now does, and leaves anything else to it (a first
    wait, room for a new server, a paused route, a shared pool or NOTICE's queue, an idle
    server offline)."""
    got = in_machine(_relay_queue, case, True)
    want = in_machine(_relay_queue, case, False)
    assert got == want
    # queued where the pool is full and nothing else is due (an obsolete route's too)
    assert got[1] is (case in ("armed", "unarmed", "coroutine", "obsolete"))
    if got[1]:
        assert got[0] == [] and got[4] == 1 and got[5]
    else:
        assert got[0] and got[4] == 0
