"""cron.py without PostgreSQL: which idle servers expire (pool_ttl, server_lifetime, offline,
obsolete routes), what is closed and how, min_pool_size pre-opening against a fake server, the
stats line and shutdown (Odyssey cron.c). Ages are set on the servers, never slept for."""
from __future__ import annotations

import time

import pytest
from gevent import socket as gsocket

import machinarium as mm
from kiwi import be_write
from kiwi.be_read import StartupMessage
from kiwi.header import FE
from odyssey_gevent import cron
from odyssey_gevent.client import Client, ClientState
from odyssey_gevent.config.model import Config, Endpoint, Rule, Storage
from odyssey_gevent.instance import Instance
from odyssey_gevent.io import FE_LIMITS, read_message, read_startup
from odyssey_gevent.logger import Logger
from odyssey_gevent.route import Route
from odyssey_gevent.server import ServerState

pytestmark = pytest.mark.timeout(10)


# ----------------------------------------------------------------------------------------------
# harness: a real Instance and Router; servers on socket pairs

def _instance(log_file=None, **config):
    config.setdefault("backend_connect_timeout_ms", 2000)
    return Instance(Config(**config), Logger("%l (%c) %m\n", to_stdout=False, log_file=log_file), "test.conf")


def _route(inst, db="db", user="u", **rule_kw):
    rule_kw.setdefault("pool", "transaction")
    rule = Rule(db_name=db, user_name=user, authentication="none", **rule_kw)
    key = (db, user, id(rule))
    route = inst.router.routes[key] = Route(key, rule, db, user)
    return route


def _idle(inst, route, idle_for=0.0, age=0.0):
    """A connected idle server (pooler end of a socket pair) and PostgreSQL's end."""
    a, b = gsocket.socketpair()
    server = inst.router.reserve(route, 1_000_000)
    server.io = mm.Io(a)
    now = time.monotonic()
    server.created_at = now - age
    inst.router.put_idle(route, server)
    server.idle_since = now - idle_for
    return server, mm.Io(b)


def _active(inst, route, age=0.0):
    a, b = gsocket.socketpair()
    server = inst.router.reserve(route, 1_000_000)
    server.io = mm.Io(a)
    server.created_at = server.idle_since = time.monotonic() - age
    return server, mm.Io(b)


def _got_terminate(pg) -> bool:
    t, _ = read_message(pg, 2000, FE_LIMITS)
    return t == FE.TERMINATE and pg.read_into(bytearray(1), 2000) == 0


def _still_open(pg) -> bool:
    with pytest.raises(mm.TimedOut):
        pg.read(1, 10)
    return True


# ----------------------------------------------------------------------------------------------
# expire

def test_pool_ttl_reads_the_idle_time_the_detach_that_left_the_server_idle_stamped(in_machine):
    """A server's idle_since is stamped only where it goes idle (a detach's pooled branches), not
    where it is handed to a waiter: expire reads it for idle servers alone, so an active server's
    stale stamp (a hand-over's) is never read, and the detach that makes it idle stamps it anew."""
    def body():
        inst = _instance()
        route = _route(inst, pool_ttl=60, server_lifetime=0)
        server, pg = _active(inst, route)
        server.idle_since = time.monotonic() - 3600     # stale, as a server handed over keeps it
        client = Client(None, conn_type="host", peer=("127.0.0.1", 5555))
        client.server, server.client, client.state = server, client, ClientState.ACTIVE
        while_active = cron.expire(inst)
        inst.router.detach(client)
        once_idle = cron.expire(inst)
        return while_active, once_idle, route.idle == [server], server.state, _still_open(pg)

    assert in_machine(body) == (0, 0, True, ServerState.IDLE, True)


def test_nothing_expires_when_ttl_and_lifetime_are_off(in_machine):
    def body():
        inst = _instance()
        route = _route(inst, pool_ttl=0, server_lifetime=0)
        s, pg = _idle(inst, route, idle_for=10 ** 6, age=10 ** 6)
        closed = cron.expire(inst)
        return closed, route.idle == [s], s.state, _still_open(pg)

    assert in_machine(body) == (0, True, ServerState.IDLE, True)


def test_pool_ttl_closes_servers_idle_that_long(in_machine):
    def body():
        inst = _instance()
        route = _route(inst, pool_ttl=60, server_lifetime=0)
        old, old_pg = _idle(inst, route, idle_for=61)
        edge, edge_pg = _idle(inst, route, idle_for=60.0)       # >= pool_ttl
        young, young_pg = _idle(inst, route, idle_for=30)
        closed = cron.expire(inst)
        return (closed, route.idle == [young], old.state, old.io, edge.io,
                _got_terminate(old_pg), _got_terminate(edge_pg), _still_open(young_pg))

    closed, idle, state, io, edge_io, term, edge_term, young_open = in_machine(body)
    assert closed == 2 and idle and state is ServerState.UNDEF and io is None and edge_io is None
    assert term and edge_term and young_open


def test_server_lifetime_closes_old_servers_even_just_used(in_machine):
    def body():
        inst = _instance()
        route = _route(inst, pool_ttl=0, server_lifetime=3600)
        old, old_pg = _idle(inst, route, idle_for=0, age=3600.5)
        new, new_pg = _idle(inst, route, idle_for=0, age=100)
        closed = cron.expire(inst)
        return closed, route.idle == [new], _got_terminate(old_pg), _still_open(new_pg)

    assert in_machine(body) == (1, True, True, True)


def test_offline_idle_server_is_closed(in_machine):
    def body():
        inst = _instance()
        route = _route(inst, pool_ttl=0, server_lifetime=0)
        s, pg = _idle(inst, route)
        s.offline = True
        return cron.expire(inst), route.idle, _got_terminate(pg)

    assert in_machine(body) == (1, [], True)


def test_active_servers_never_expire(in_machine):
    def body():
        inst = _instance()
        route = _route(inst, pool_ttl=1, server_lifetime=1)
        s, pg = _active(inst, route, age=10 ** 6)
        s.offline = True
        closed = cron.expire(inst)
        return closed, s in route.active, s.io is not None, _still_open(pg)

    assert in_machine(body) == (0, True, True, True)


def test_expiry_frees_the_slot_for_the_pool(in_machine):
    """pool_size 1: once cron closes the expired idle server, the route may open a new one."""
    def body():
        inst = _instance()
        route = _route(inst, pool_ttl=5, server_lifetime=0, pool_size=1)
        _idle(inst, route, idle_for=10)
        assert inst.router.reserve(route, 1) is None           # the pool is full
        cron.expire(inst)
        return route.server_count, inst.router.reserve(route, 1) is not None

    assert in_machine(body) == (0, True)


def test_obsolete_route_is_emptied_and_forgotten(in_machine):
    def body():
        inst = _instance()
        route = _route(inst, pool_ttl=0, server_lifetime=0)
        _, pg1 = _idle(inst, route)
        _, pg2 = _idle(inst, route)
        route.obsolete = True
        closed = cron.expire(inst)
        return closed, route.key in inst.router.routes, _got_terminate(pg1), _got_terminate(pg2)

    assert in_machine(body) == (2, False, True, True)


@pytest.mark.parametrize("busy", ["active server", "client"])
def test_obsolete_route_in_use_is_kept(in_machine, busy):
    def body():
        inst = _instance()
        route = _route(inst, pool_ttl=0, server_lifetime=0)
        _idle(inst, route)
        if busy == "client":
            route.clients.add(Client(None))
        else:
            _active(inst, route)
        route.obsolete = True
        closed = cron.expire(inst)
        return closed, route.idle, route.key in inst.router.routes

    assert in_machine(body) == (1, [], True)


def test_expire_walks_every_route(in_machine):
    def body():
        inst = _instance()
        a = _route(inst, db="a", pool_ttl=10, server_lifetime=0)
        b = _route(inst, db="b", pool_ttl=0, server_lifetime=10)
        _idle(inst, a, idle_for=11)
        _idle(inst, b, age=11)
        keep, _ = _idle(inst, b, age=1)
        return cron.expire(inst), a.idle, b.idle == [keep]

    assert in_machine(body) == (2, [], True)


def test_close_all_servers_closes_idle_only(in_machine):
    def body():
        inst = _instance()
        route = _route(inst)
        _, idle_pg = _idle(inst, route)
        active, active_pg = _active(inst, route)
        cron.close_all_servers(inst)
        return route.idle, route.active == {active}, _got_terminate(idle_pg), _still_open(active_pg)

    assert in_machine(body) == ([], True, True, True)


# ----------------------------------------------------------------------------------------------
# fill_min_pool against a fake PostgreSQL

class FakePostgres:
    def __init__(self):
        [self.listener] = mm.listen("127.0.0.1", 0)
        self.port = self.listener.local[1]
        self.startups = []
        self.conns = []
        self.co = mm.Coroutine(self._run, name="fake-pg")

    def _run(self):
        while True:
            try:
                io = self.listener.accept()
                self.conns.append(io)
                msg = read_startup(io, 2000)
            except OSError:
                return
            self.startups.append(msg)
            io.write(be_write.auth_ok() + be_write.parameter_status("TimeZone", "UTC")
                     + be_write.parameter_status("server_version", "16.2")
                     + be_write.backend_key_data(len(self.startups), 99) + be_write.ready_for_query())

    def close(self):
        self.listener.close()
        for io in self.conns:
            io.close()


def _storage(port, tls="disable"):
    return Storage("pg", type="remote", tls=tls, endpoints=[Endpoint("127.0.0.1", port)])


def test_fill_min_pool_opens_idle_servers_up_to_the_minimum(in_machine):
    def body():
        pg = FakePostgres()
        try:
            inst = _instance()
            route = _route(inst, db="sales", user="bob", min_pool_size=2, storage=_storage(pg.port))
            opened = cron.fill_min_pool(inst)
            again = cron.fill_min_pool(inst)
            servers = list(route.idle)
            result = (opened, again, len(servers), [s.io is not None for s in servers],
                      [s.baseline for s in servers], route.params,
                      [(type(m), m.params["user"], m.params["database"]) for m in pg.startups],
                      sorted(s.key_pid for s in servers))
            cron.close_all_servers(inst)
            return result
        finally:
            pg.close()

    opened, again, n, connected, baselines, params, startups, pids = in_machine(body)
    assert (opened, again, n) == (2, 0, 2) and all(connected)
    assert baselines == [{"timezone": "UTC", "server_version": "16.2"}] * 2
    assert params == [("TimeZone", "UTC"), ("server_version", "16.2")]
    assert startups == [(StartupMessage, "bob", "sales")] * 2
    assert pids == [1, 2]


def test_fill_min_pool_counts_existing_servers(in_machine):
    def body():
        pg = FakePostgres()
        try:
            inst = _instance()
            route = _route(inst, min_pool_size=3, storage=_storage(pg.port))
            _idle(inst, route)
            _active(inst, route)
            opened = cron.fill_min_pool(inst)
            result = opened, route.server_count, len(pg.startups)
            cron.close_all_servers(inst)
            return result
        finally:
            pg.close()

    assert in_machine(body) == (1, 3, 1)


def test_fill_min_pool_failure_frees_the_slot_and_logs(in_machine, tmp_path):
    log = tmp_path / "log"

    def body():
        [lst] = mm.listen("127.0.0.1", 0)
        port = lst.local[1]
        lst.close()                                  # nobody listens: connection refused
        inst = _instance(str(log))
        route = _route(inst, min_pool_size=2, storage=_storage(port))
        return cron.fill_min_pool(inst), route.server_count, route.idle, route.active

    assert in_machine(body) == (0, 0, [], set())
    assert "failed to pre-open a server" in log.read_text()


def test_fill_min_pool_skips_obsolete_routes_and_zero_minimum(in_machine):
    def body():
        pg = FakePostgres()
        try:
            inst = _instance()
            obsolete = _route(inst, db="a", min_pool_size=2, storage=_storage(pg.port))
            obsolete.obsolete = True
            _route(inst, db="b", min_pool_size=0, storage=_storage(pg.port))
            return cron.fill_min_pool(inst), len(pg.startups)
        finally:
            pg.close()

    assert in_machine(body) == (0, 0)


def test_fill_min_pool_with_workers_parks_servers_as_fds(in_machine):
    def body():
        pg = FakePostgres()
        try:
            inst = _instance(workers=2)
            route = _route(inst, min_pool_size=1, storage=_storage(pg.port))
            opened = cron.fill_min_pool(inst)
            [s] = route.idle
            result = opened, s.io, isinstance(s.fd, int), s.connected
            cron.close_all_servers(inst)
            return result + (s.fd,)
        finally:
            pg.close()

    assert in_machine(body) == (1, None, True, True, None)


def test_fill_min_pool_with_workers_skips_tls_storages(in_machine):
    """A TLS connection opened in the cron's machine could not move to a worker."""
    def body():
        pg = FakePostgres()
        try:
            inst = _instance(workers=2)
            route = _route(inst, min_pool_size=1, storage=_storage(pg.port, tls="require"))
            return cron.fill_min_pool(inst), route.server_count, len(pg.startups)
        finally:
            pg.close()

    assert in_machine(body) == (0, 0, 0)


# ----------------------------------------------------------------------------------------------
# stats line

def test_log_stats_reports_per_second_rates(tmp_path):
    """C's line: rates per second over the interval and the average transaction and query
    times in µs (od_cron_stat_cb), from the snapshot of the previous tick."""
    log = tmp_path / "log"
    inst = _instance(str(log))
    route = _route(inst, db="sales", user="bob")
    route.clients.update({Client(None), Client(None)})
    st = route.stats
    st.count_tx, st.count_query, st.bytes_recv, st.bytes_sent = 10, 20, 4000, 8000
    st.tx_time, st.query_time = 10 * 0.0003, 20 * 0.0001          # seconds
    inst.router.stat_time = 100.0
    cron.stat_tick(inst, True, now=102.0)
    st.count_tx, st.count_query, st.bytes_recv, st.bytes_sent = 16, 29, 4000, 8300
    st.tx_time, st.query_time = 0.003 + 6 * 0.00005, 0.002 + 9 * 0.00002
    cron.stat_tick(inst, True, now=105.0)
    cron.stat_tick(inst, False, now=106.0)
    lines = [line for line in log.read_text().splitlines() if "(stats)" in line]
    assert lines == [
        "info (stats) [sales.bob] 2 clients, 0 active servers, 0 idle servers, 5 transactions/sec (300 usec) "
        "10 queries/sec (100 usec) 2000 in bytes/sec, 4000 out bytes/sec",
        "info (stats) [sales.bob] 2 clients, 0 active servers, 0 idle servers, 2 transactions/sec (50 usec) "
        "3 queries/sec (20 usec) 0 in bytes/sec, 100 out bytes/sec",
    ]
    assert st.prev == st.snapshot() and inst.router.stat_time == 106.0
