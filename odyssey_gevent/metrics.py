"""The Prometheus exporter (`promhttp_server_port`; C Odyssey's sources/prom_metrics.c).

A custom prometheus_client Collector reads the router snapshot at scrape time, so nothing is
updated on the hot path (the figures are SHOW POOLS', STATS' and ERRORS'): the relay keeps bumping its RouteStats counters and the route lists are
read under the router's lock (the lock rule in route.py). The HTTP endpoint is gevent's WSGI
server (gevent.pywsgi) around prometheus_client.make_wsgi_app, run as a coroutine of the system
machine (started by the cron coroutine, stopped when it is cancelled), so it never blocks a hub.
It binds every address (0.0.0.0), as C Odyssey does; firewall the port if that matters.
"""
from __future__ import annotations

import time

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import CollectorRegistry

from odyssey_gevent import ODYSSEY_COMPAT_VERSION, __version__
from odyssey_gevent.err_logger import FRONTEND_ERRORS, ROUTE_ROUTER_ERRORS, ROUTER_ERRORS

BIND_HOST = "0.0.0.0"

_COUNTERS = (  # metric name, RouteStats field, help
    ("odyssey_route_transactions_total", "count_tx", "Transactions completed on the route"),
    ("odyssey_route_queries_total", "count_query", "Queries completed on the route"),
    ("odyssey_route_bytes_received_total", "bytes_recv", "Bytes received from clients"),
    ("odyssey_route_bytes_sent_total", "bytes_sent", "Bytes sent to clients"),
    ("odyssey_route_server_assignments_total", "count_server_assignment",
     "Servers attached to clients of the route"),
    ("odyssey_route_cancels_total", "count_cancel", "Cancel requests for the route"),
    ("odyssey_route_parses_total", "count_parse",
     "Parses sent to servers for clients' prepared statements (SHOW STATS total_parse_count)"),
    ("odyssey_route_parse_reuses_total", "count_parse_reuse",
     "Times a server already had the prepared statement a client needed (total_parse_count_reuse)"),
)
_TIMES = (  # metric name, RouteStats field (seconds), help: SHOW STATS total_*_time
    ("odyssey_route_transaction_time_seconds_total", "tx_time",
     "Time transactions took, from the first request to the ReadyForQuery that ends them"),
    ("odyssey_route_query_time_seconds_total", "query_time",
     "Time queries took, from the request to its ReadyForQuery"),
    ("odyssey_route_wait_time_seconds_total", "wait_time", "Time clients waited for a server"),
)


class OdysseyCollector:
    """Reads instance.router at each scrape."""

    def __init__(self, instance):
        self.instance = instance
        self.started = time.time()

    def collect(self):
        inst = self.instance
        router = inst.router
        labels = ["database", "user"]
        clients = GaugeMetricFamily("odyssey_route_clients", "Clients of the route: active (a server attached), waiting (queued for one), pending (none)",
                                    labels=labels + ["state"])
        servers = GaugeMetricFamily("odyssey_route_servers", "Server connections of the route by state",
                                    labels=labels + ["state"])
        counters = [(CounterMetricFamily(name, text, labels=labels), field)
                    for name, field, text in _COUNTERS]
        times = [(CounterMetricFamily(name, text, labels=labels), field) for name, field, text in _TIMES]
        paused = GaugeMetricFamily("odyssey_route_paused", "1 while the route is paused (console PAUSE)",
                                   labels=labels)
        max_wait = GaugeMetricFamily("odyssey_route_max_wait_seconds",
                                     "How long the first client queued for a server has waited (SHOW POOLS maxwait)",
                                     labels=labels)
        route_errors = GaugeMetricFamily(
            "odyssey_route_errors", "Errors of the route in the last five minutes, by C Odyssey's name "
            "(SHOW ERRORS_PER_ROUTE; only the types seen)", labels=labels + ["error_type"])
        now = time.monotonic()
        for route in router.snapshot():
            lv = [str(route.db), str(route.user)]
            with router.lock:
                cc = route.client_counts()
                active, idle = len(route.active), len(route.idle)
                waited = now - route.waiters[0].since if route.waiters else 0.0
                is_paused = router.is_paused(route)
            clients.add_metric(lv + ["active"], cc["active"])
            clients.add_metric(lv + ["waiting"], cc["queue"])
            clients.add_metric(lv + ["pending"], cc["pending"])
            servers.add_metric(lv + ["active"], active)
            servers.add_metric(lv + ["idle"], idle)
            for family, field in counters:
                family.add_metric(lv, getattr(route.stats, field))
            for family, field in times:
                family.add_metric(lv, getattr(route.stats, field))
            paused.add_metric(lv, 1 if is_paused else 0)
            max_wait.add_metric(lv, waited)
            for name, count in route.errors.counts(FRONTEND_ERRORS + ROUTE_ROUTER_ERRORS):
                if count:
                    route_errors.add_metric(lv + [name], count)
        yield clients
        yield servers
        for family, _ in counters + times:
            yield family
        yield paused
        yield max_wait
        yield route_errors
        errors = GaugeMetricFamily("odyssey_errors", "Errors in the last five minutes, by C Odyssey's name "
                                   "(SHOW ERRORS: router and frontend errors)", labels=["error_type"])
        for log, names in ((router.errors.router, ROUTER_ERRORS), (router.errors.frontend, FRONTEND_ERRORS)):
            for name, count in log.counts(names):
                errors.add_metric([name], count)
        yield errors
        yield GaugeMetricFamily("odyssey_clients", "Accepted client connections (global client_max counts these)",
                                value=inst.clients)
        yield GaugeMetricFamily("odyssey_uptime_seconds", "Seconds since the exporter started",
                                value=time.time() - self.started)
        info = InfoMetricFamily("odyssey", "Pooler version")
        info.add_metric([], {"version": __version__, "odyssey_compat_version": str(ODYSSEY_COMPAT_VERSION)})
        yield info


def registry_for(instance) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(OdysseyCollector(instance))
    return registry


def start(instance, port: int, host: str = BIND_HOST):
    """Start the /metrics server in the current machine; returns the started WSGIServer (or None
    when the port cannot be bound, which is logged)."""
    from gevent.pywsgi import WSGIServer
    from prometheus_client import make_wsgi_app

    app = make_wsgi_app(registry_for(instance))
    server = WSGIServer((host, port), app, log=None, error_log=None)
    try:
        server.start()
    except OSError as e:
        instance.logger.error("metrics", None, None, "failed to listen on %s:%d for Prometheus: %s",
                              host, port, e)
        return None
    instance.logger.info("metrics", None, None, "Prometheus metrics on http://%s:%d/metrics", host, port)
    return server
