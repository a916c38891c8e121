"""The Prometheus collector (odyssey_gevent/metrics.py) against a real Instance/Router/Route."""
from __future__ import annotations

from prometheus_client import generate_latest

from odyssey_gevent import metrics
from odyssey_gevent.client import Client, ClientState
from odyssey_gevent.config.model import Config, Rule
from odyssey_gevent.instance import Instance
from odyssey_gevent.logger import Logger
from odyssey_gevent.route import Route


def _instance():
    return Instance(Config(), Logger("%l (%c) %m\n", to_stdout=False), "test.conf")


def test_collector_reads_route_counters_and_gauges():
    inst = _instance()
    rule = Rule(db_name="sales", user_name="bob", authentication="none", pool="transaction", db_is_default=False,
                user_is_default=False)
    key = ("sales", "bob", id(rule))
    route = inst.router.routes[key] = Route(key, rule, "sales", "bob")
    active, queued = Client(None), Client(None)
    active.state, queued.state = ClientState.ACTIVE, ClientState.QUEUE
    route.clients.update({active, queued})
    st = route.stats
    st.count_tx, st.count_query, st.bytes_recv, st.bytes_sent = 7, 11, 1234, 5678
    st.count_server_assignment, st.count_cancel = 9, 2
    st.count_parse, st.count_parse_reuse = 3, 5
    st.tx_time, st.query_time, st.wait_time = 2.5, 1.5, 0.25          # seconds
    inst.router.errors.router_error("OD_ROUTER_ERROR_NOT_FOUND")
    inst.router.errors.session_ended("OD_ECLIENT_KILLED", route)
    inst.router.pause("sales")
    inst.clients = 2
    text = generate_latest(metrics.registry_for(inst)).decode()
    lab = 'database="sales",user="bob"'
    for line in (
        f'odyssey_route_clients{{database="sales",state="active",user="bob"}} 1.0',
        f'odyssey_route_clients{{database="sales",state="waiting",user="bob"}} 1.0',
        f'odyssey_route_clients{{database="sales",state="pending",user="bob"}} 0.0',
        f'odyssey_route_servers{{database="sales",state="active",user="bob"}} 0.0',
        f'odyssey_route_servers{{database="sales",state="idle",user="bob"}} 0.0',
        f'odyssey_route_transactions_total{{{lab}}} 7.0',
        f'odyssey_route_queries_total{{{lab}}} 11.0',
        f'odyssey_route_bytes_received_total{{{lab}}} 1234.0',
        f'odyssey_route_bytes_sent_total{{{lab}}} 5678.0',
        f'odyssey_route_server_assignments_total{{{lab}}} 9.0',
        f'odyssey_route_cancels_total{{{lab}}} 2.0',
        f'odyssey_route_parses_total{{{lab}}} 3.0',
        f'odyssey_route_parse_reuses_total{{{lab}}} 5.0',
        f'odyssey_route_transaction_time_seconds_total{{{lab}}} 2.5',
        f'odyssey_route_query_time_seconds_total{{{lab}}} 1.5',
        f'odyssey_route_wait_time_seconds_total{{{lab}}} 0.25',
        f'odyssey_route_paused{{{lab}}} 1.0',
        f'odyssey_route_max_wait_seconds{{{lab}}} 0.0',
        f'odyssey_route_errors{{database="sales",error_type="OD_ECLIENT_KILLED",user="bob"}} 1.0',
        'odyssey_errors{error_type="OD_ROUTER_ERROR_NOT_FOUND"} 1.0',
        'odyssey_errors{error_type="OD_ECLIENT_KILLED"} 1.0',
        'odyssey_errors{error_type="OD_EOOM"} 0.0',
        'odyssey_clients 2.0',
    ):
        assert line in text.splitlines(), (line, text)
    assert "odyssey_uptime_seconds " in text
    assert 'odyssey_info{odyssey_compat_version=' in text


def test_collector_with_no_routes():
    text = generate_latest(metrics.registry_for(_instance())).decode()
    assert "odyssey_clients 0.0" in text.splitlines()
    assert "odyssey_route_transactions_total{" not in text
