"""The Prometheus exporter (promhttp_server_port) and the stats log line (log_stats) end to end."""
from __future__ import annotations

import re
import urllib.request

import psycopg2

from scripts.pgcluster import free_port
from tests.integration.conftest import rule, wait_for


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        assert r.status == 200
        return r.read().decode()


def _value(text: str, name: str, **labels) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    m = re.search(rf"^{name}\{{{re.escape(want)}\}} (\S+)$", text, re.M)
    assert m, (name, labels, text)
    return float(m.group(1))


def test_metrics_endpoint_counts_the_route(odyssey):
    port = free_port()
    p = odyssey(rule("tx_user", pool="transaction", pool_size=2), promhttp_server_port=port)
    con = psycopg2.connect(p.dsn("tx_user", "db1"))
    con.autocommit = True
    try:
        cur = con.cursor()
        for _ in range(5):
            cur.execute("select 1")
            cur.fetchone()
        text = _metrics(port)
        lab = dict(database="db1", user="tx_user")
        assert _value(text, "odyssey_route_queries_total", **lab) >= 5
        assert _value(text, "odyssey_route_transactions_total", **lab) >= 5
        assert _value(text, "odyssey_route_bytes_received_total", **lab) > 0
        assert _value(text, "odyssey_route_bytes_sent_total", **lab) > 0
        assert _value(text, "odyssey_route_server_assignments_total", **lab) >= 1
        assert _value(text, "odyssey_route_clients", state="pending", **lab) == 1   # idle between transactions
        assert _value(text, "odyssey_route_clients", state="active", **lab) == 0
        assert _value(text, "odyssey_route_clients", state="waiting", **lab) == 0
        assert _value(text, "odyssey_route_servers", state="idle", **lab) >= 1
        assert re.search(r"^odyssey_clients 1\.0$", text, re.M), text
    finally:
        con.close()
    wait_for(lambda: re.search(r"^odyssey_clients 0\.0$", _metrics(port), re.M), what="client gone")


def test_log_stats_line(odyssey):
    p = odyssey(rule("tx_user", pool="transaction", pool_size=2), log_stats=True, stats_interval=1)
    con = psycopg2.connect(p.dsn("tx_user", "db1"))
    con.autocommit = True
    try:
        cur = con.cursor()
        for _ in range(3):
            cur.execute("select 1")
        pat = re.compile(r"\[db1\.tx_user\] \d+ clients, \d+ active servers, \d+ idle servers, "
                         r"\d+ transactions/sec \(\d+ usec\) \d+ queries/sec \(\d+ usec\) "
                         r"\d+ in bytes/sec, \d+ out bytes/sec")
        wait_for(lambda: pat.search(p.log()), timeout=5, what="a stats line")
    finally:
        con.close()


def test_metrics_times_and_errors_parse_with_prometheus_client(odyssey):
    """The new figures (SHOW STATS times, SHOW ERRORS counts) through prometheus_client's own
    text parser."""
    from prometheus_client.parser import text_string_to_metric_families

    port = free_port()
    p = odyssey(rule("tx_user", pool="transaction", pool_size=2), promhttp_server_port=port)
    con = psycopg2.connect(p.dsn("tx_user", "db1"))
    con.autocommit = True
    try:
        cur = con.cursor()
        for _ in range(3):
            cur.execute("select pg_sleep(0.001)")
        try:
            psycopg2.connect(p.dsn("no_such_user", "db1")).close()
        except psycopg2.OperationalError as e:
            assert "route for" in str(e)
        samples = [s for f in text_string_to_metric_families(_metrics(port)) for s in f.samples]
        lab = {"database": "db1", "user": "tx_user"}

        def sample(name: str, **labels) -> float:
            found = [s.value for s in samples
                     if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
            assert len(found) == 1, (name, labels, found)
            return found[0]

        assert sample("odyssey_route_query_time_seconds_total", **lab) >= 0.003
        assert sample("odyssey_route_transaction_time_seconds_total", **lab) >= 0.003
        assert sample("odyssey_route_wait_time_seconds_total", **lab) >= 0
        assert sample("odyssey_errors", error_type="OD_ROUTER_ERROR_NOT_FOUND") == 1
        assert sample("odyssey_route_paused", **lab) == 0
    finally:
        con.close()
