"""Periodic service work: expiring idle servers (pool_ttl, server_lifetime), dropping obsolete
routes, the stats_interval averages with the stats log line, and the error window of SHOW
ERRORS (mirrors Odyssey sources/cron.c)."""
from __future__ import annotations

import time

import machinarium
from machinarium import tls
from odyssey_gevent import backend, host_watcher
from odyssey_gevent.route import averages
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


def stat_tick(instance, log: bool, now: float | None = None) -> None:
    """Every stats_interval (as C's od_cron_stat): each route's averages since the last tick,
    the `log_stats` line when `log` (C's shape: rates per second, the average transaction and
    query times in µs), then the new snapshot (RouteStats.prev) and sketch window."""
    router = instance.router
    if now is None:
        now = time.monotonic()
    interval = now - router.stat_time
    for route in router.snapshot():
        st = route.stats
        cur = st.snapshot()
        avg = averages(cur, st.prev, interval)
        st.prev = cur
        st.rotate_sketches()
        if not log:
            continue
        with router.lock:
            counts = len(route.clients), len(route.active), len(route.idle)
        instance.logger.info("stats", None, None,
                             "[%s.%s%s] %d clients, %d active servers, %d idle servers, %d transactions/sec "
                             "(%d usec) %d queries/sec (%d usec) %d in bytes/sec, %d out bytes/sec",
                             route.db, route.user, " obsolete" if route.obsolete else "", *counts,
                             avg[0], avg[5], avg[1], avg[6], avg[3], avg[4])
    router.stat_time = now


def cron_main(instance) -> None:
    """The cron loop; also owns the Prometheus exporter (promhttp_server_port), the group checker
    (group.py), the soft_oom checker and the storage watchdog (watchdog.py): started here, in the system machine, and stopped when the system cancels this
    coroutine."""
    exporter = None
    from odyssey_gevent import supervisor
    if instance.config.promhttp_server_port:
        from odyssey_gevent import metrics
        # processes N: each process exports its own figures, process i on the port + i
        exporter = metrics.start(instance, instance.config.promhttp_server_port + supervisor.INDEX)
    from odyssey_gevent import group, soft_oom, watchdog
    checkers = [machinarium.coroutine_create(group.checker_main, instance, name="group checker"),
                machinarium.coroutine_create(soft_oom.checker_main, instance, name="soft oom checker"),
                machinarium.coroutine_create(watchdog.watchdog_main, instance, name="watchdog")]
    try:
        _cron_loop(instance)
    finally:
        for checker in checkers:
            checker.cancel()
        if exporter is not None:
            exporter.stop(timeout=1)


def _cron_loop(instance) -> None:
    last_stats = time.monotonic()
    while True:
        machinarium.sleep(1000)
        try:
            expire(instance)
            fill_min_pool(instance)
            config = instance.config
            now = time.monotonic()
            if config.stats_interval > 0 and now - last_stats >= config.stats_interval:
                stat_tick(instance, config.log_stats)
                last_stats = now
            instance.router.errors.tick(instance.router.snapshot())
            if config.enable_host_watcher:          # SHOW HOST_UTILIZATION's figures
                host_watcher.tick(instance)
        except Exception as e:  # cron must never die
            instance.logger.error("cron", None, None, "cron failed: %r", e)


def close_all_servers(instance) -> None:
    router = instance.router
    for route in router.snapshot():
        for server in router.remove_idle_if(route, lambda server, obsolete: True):
            backend.close(instance, server)
