"""The Prometheus exporter (`promhttp_server_port`; C Odyssey's sources/prom_metrics.c).

A custom prometheus_client Collector reads the router snapshot at scrape time, so nothing is
updated on the hot path: the relay keeps bumping its RouteStats counters and the route lists are
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

BIND_HOST = "0.0.0.0"

_COUNTERS = (  # metric name, RouteStats field, help
    ("odyssey_route_transactions_total", "count_tx", "Transactions completed on the route"),
    ("odyssey_route_queries_total", "count_query", "Queries completed on the route"),
    ("odyssey_route_bytes_received_total", "bytes_recv", "Bytes received from clients"),
    ("odyssey_route_bytes_sent_total", "bytes_sent", "Bytes sent to clients"),
    ("odyssey_route_server_assignments_total", "count_server_assignment",
     "Servers attached to clients of the route"),
    ("odyssey_route_cancels_total", "count_cancel", "Cancel requests for the route"),
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
        for route in router.snapshot():
            lv = [str(route.db), str(route.user)]
            with router.lock:
                cc = route.client_counts()
                active, idle = len(route.active), len(route.idle)
            clients.add_metric(lv + ["active"], cc["active"])
            clients.add_metric(lv + ["waiting"], cc["queue"])
            clients.add_metric(lv + ["pending"], cc["pending"])
            servers.add_metric(lv + ["active"], active)
            servers.add_metric(lv + ["idle"], idle)
            for family, field in counters:
                family.add_metric(lv, getattr(route.stats, field))
        yield clients
        yield servers
        for family, _ in counters:
            yield family
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
