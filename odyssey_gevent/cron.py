"""Periodic service work: expiring idle servers (pool_ttl, server_lifetime), dropping obsolete
routes and the stats log line (mirrors Odyssey sources/cron.c)."""
from __future__ import annotations

import time

import machinarium
from machinarium import tls
from odyssey_gevent import backend
from odyssey_gevent.server import movable, park


def expire(instance) -> int:
    """Close idle servers idle for pool_ttl seconds or older than server_lifetime (every idle
    server of an obsolete route); returns count."""
    now = time.monotonic()
    closed = 0
    router = instance.router
    for route in router.snapshot():
        rule = route.rule

        def expired(server, obsolete) -> bool:       # called under the router's lock
            return (obsolete or server.offline
                    or (rule.pool_ttl > 0 and now - server.idle_since >= rule.pool_ttl)
                    or (rule.server_lifetime > 0 and now - server.created_at >= rule.server_lifetime))

        for server in router.remove_idle_if(route, expired):
            instance.logger.debug("expire", None, server, "closing idle server connection")
            backend.close(instance, server)
            closed += 1
        router.forget_if_unused(route)
    return closed


def fill_min_pool(instance) -> int:
    """Pre-open idle servers up to each route's min_pool_size (routes exist once a client came);
    returns how many were opened."""
    opened = 0
    router = instance.router
    for route in router.snapshot():
        want = route.rule.min_pool_size
        if want <= 0:
            continue
        storage = route.rule.storage
        if storage is not None and not movable(tls.sslmode_tries_tls_first(storage.tls), instance.workers):
            continue    # its servers could not be pooled (server.movable)
        while True:
            server = router.reserve(route, want)     # None once full, or obsolete
            if server is None:
                break
            try:
                backend.connect(instance, server, None)
            except Exception as e:  # a failed pre-open is retried next tick
                instance.logger.error("min_pool", None, server, "failed to pre-open a server: %s", e)
                server.broken = True
                router.discard(route, server)
                backend.close(instance, server)
                break
            if route.params is None:
                route.params = list(server.login_params)
            if not park(server, instance.workers):
                router.discard(route, server)
                backend.close(instance, server)
                break
            router.put_idle(route, server)
            opened += 1
    return opened


class _Rates:
    def __init__(self):
        self.prev = {}


def log_stats(instance, rates: _Rates, interval: float) -> None:
    router = instance.router
    for route in router.snapshot():
        st = route.stats
        prev = rates.prev.get(route.key, (0, 0, 0, 0))
        cur = (st.count_tx, st.count_query, st.bytes_recv, st.bytes_sent)
        rates.prev[route.key] = cur
        d = [int((c - p) / interval) for c, p in zip(cur, prev)]
        with router.lock:
            counts = len(route.clients), len(route.active), len(route.idle)
        instance.logger.info("stats", None, None,
                             "[%s.%s] %d clients, %d active servers, %d idle servers, %d transactions/sec, "
                             "%d queries/sec, %d in bytes/sec, %d out bytes/sec",
                             route.db, route.user, *counts, d[0], d[1], d[2], d[3])


def cron_main(instance) -> None:
    """The cron loop; also owns the Prometheus exporter (promhttp_server_port): started here, in
    the system machine, and stopped when the system cancels this coroutine."""
    exporter = None
    if instance.config.promhttp_server_port:
        from odyssey_gevent import metrics
        exporter = metrics.start(instance, instance.config.promhttp_server_port)
    try:
        _cron_loop(instance)
    finally:
        if exporter is not None:
            exporter.stop(timeout=1)


def _cron_loop(instance) -> None:
    rates = _Rates()
    last_stats = time.monotonic()
    while True:
        machinarium.sleep(1000)
        try:
            expire(instance)
            fill_min_pool(instance)
            config = instance.config
            now = time.monotonic()
            if config.log_stats and config.stats_interval > 0 and now - last_stats >= config.stats_interval:
                log_stats(instance, rates, now - last_stats)
                last_stats = now
        except Exception as e:  # cron must never die
            instance.logger.error("cron", None, None, "cron failed: %r", e)


def close_all_servers(instance) -> None:
    router = instance.router
    for route in router.snapshot():
        for server in router.remove_idle_if(route, lambda server, obsolete: True):
            backend.close(instance, server)
