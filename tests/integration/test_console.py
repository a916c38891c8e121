"""The admin console (reference §4): `database "console"` on a `local` storage. SHOW column names
and types are an API (the Prometheus exporter reads them), so they are checked in order; plus the
console's error replies and roles.
"""
from __future__ import annotations

import os
import socket
import struct

import psycopg
import psycopg.errors
import psycopg2
import pytest

from tests.integration.conftest import (ensure_roles, module_pooler, odyssey_config, odyssey_text, rule,
                                       start_pooler, wait_for)
from tests.integration.wire import Wire, message, parse_fields

USER = "console_pool_user"
TEXT, INT4, INT8, BOOL, FLOAT4 = 25, 23, 20, 16, 700
t, i4, i8, b, f4 = TEXT, INT4, INT8, BOOL, FLOAT4

SHOW_COLUMNS = {
    "version": [("version", t)],
    "pools": [("database", t), ("user", t), ("cl_active", i8), ("cl_waiting", i8), ("sv_active", i8),
              ("sv_idle", i8), ("sv_used", i8), ("sv_tested", i8), ("sv_login", i8), ("maxwait", i8),
              ("maxwait_us", i8), ("pool_mode", t)],
    "databases": [("name", t), ("host", t), ("port", i8), ("database", t), ("force_user", t), ("pool_size", i8),
                  ("reserve_pool", i8), ("pool_mode", t), ("max_connections", i8), ("current_connections", i8),
                  ("paused", i8), ("disabled", i8)],
    "clients": [("type", t), ("user", t), ("database", t), ("state", t), ("storage_user", t), ("addr", t),
                ("port", i4), ("local_addr", t), ("local_port", i4), ("connect_time", t), ("request_time", t),
                ("wait", i4), ("wait_us", i4), ("id", t), ("ptr", t), ("coro", i4), ("remote_pid", i4),
                ("tls", t)],
    "servers": [("type", t), ("user", t), ("database", t), ("state", t), ("addr", t), ("port", i4),
                ("local_addr", t), ("local_port", i4), ("connect_time", t), ("request_time", t), ("wait", i4),
                ("wait_us", i4), ("ptr", t), ("link", t), ("remote_pid", i4), ("tls", t), ("offline", t)],
    "lists": [("list", t), ("items", i4)],
    "rules": [("database", t), ("user", t), ("address", t), ("connection_type", t), ("obsolete", b)],
    "is_paused": [("is_paused", b)],
    "stats": [("database", t)] + [(c, i8) for c in (
        "total_xact_count", "total_query_count", "total_server_assignment_count", "total_received", "total_sent",
        "total_xact_time", "total_query_time", "total_wait_time", "avg_xact_count", "avg_query_count",
        "avg_server_assignment_count", "avg_recv", "avg_sent", "avg_xact_time", "avg_query_time",
        "avg_wait_time", "total_parse_count", "total_parse_count_reuse", "total_cancel_count")],
    "listen": [("host", t), ("port", i4), ("tls", t), ("tls_cert_file", t), ("tls_key_file", t),
               ("tls_ca_file", t), ("tls_protocols", t)],
    "storages": [("type", t), ("host", t), ("port", i4), ("tls", t), ("tls_cert_file", t), ("tls_key_file", t),
                 ("tls_ca_file", t), ("tls_protocols", t)],
    "errors": [("error_type", t), ("count", i8)],
    "errors_per_route": [("error_type", t), ("user", t), ("database", t), ("count", i8)],
    "server_prep_stmts": [("type", t), ("user", t), ("database", t), ("sid", t), ("name", t), ("definition", t),
                          ("refcount", t)],
    "global_prepared_statements": [("name", t), ("definition", t), ("refcount", t)],
    "version_extended": [("version", t), ("build_type", t), ("compiler", t), ("compiler_version", t), ("arch", t)],
    "host_utilization": [("cpu", f4), ("mem", f4)],
    "fds": [("type", t), ("ptr", t), ("machine fd", i4), ("machine fd mask", t)],
}
# POOLS_EXTENDED: POOLS, three int4 counters, then query_<q>/transaction_<q> (int4, C's "%.6g"
# names) per quantile of the console user's own rule: quantiles "0.5,0.99" below
SHOW_COLUMNS["pools_extended"] = SHOW_COLUMNS["pools"] + [
    ("bytes_received", i4), ("bytes_sent", i4), ("tcp_conn_count", i4),
    ("query_0.5", i4), ("transaction_0.5", i4), ("query_0.99", i4), ("transaction_0.99", i4)]
LISTS = ["databases", "users", "pools", "free_clients", "used_clients", "login_clients", "routing_clients",
         "free_servers", "used_servers", "dns_names", "dns_zones", "dns_queries", "dns_pending"]


@pytest.fixture(scope="module")
def console_pooler(pg, roles):
    ensure_roles(pg, USER)
    text = odyssey_config(
        rule(USER, "db1", pool="session"),
        rule("default", "console", pool="session", storage="local", role="admin", quantiles="0.5,0.99"),
        rule("viewer", "console", pool="session", storage="local", role="notallow"),
        rule("watcher", "console", pool="session", storage="local", role="stat"),
        enable_host_watcher=True,
    )
    text += 'storage "local" {\n    type "local"\n}\n'
    yield from module_pooler(pg, text)


def _console(p, user: str = "admin"):
    con = psycopg2.connect(p.dsn(user, "console"))
    con.autocommit = True
    return con


def _show(con, what: str):
    with con.cursor() as cur:
        cur.execute(f"SHOW {what}")
        cols = [(d.name, d.type_code) for d in cur.description]
        return cols, cur.fetchall()


@pytest.mark.timeout(20)
@pytest.mark.parametrize("what", list(SHOW_COLUMNS))
def test_show_columns(console_pooler, what):
    con = _console(console_pooler)
    try:
        cols, rows = _show(con, what)
        assert cols == SHOW_COLUMNS[what]
        for row in rows:
            assert len(row) == len(cols)
        if what == "version":
            assert len(rows) == 1 and rows[0][0].lower().startswith("odyssey ")
        if what == "version_extended":
            assert len(rows) == 1 and rows[0][1] == "release" and rows[0][2] == "CPython"
        if what == "lists":
            assert [r[0] for r in rows] == LISTS
        if what == "is_paused":
            assert rows == [(False,)]
        if what == "rules":
            assert ("console", "viewer", "<default>", "all", False) in rows
            assert ("db1", USER, "<default>", "all", False) in rows
    finally:
        con.close()


@pytest.mark.timeout(20)
def test_show_is_case_insensitive_and_ignores_a_semicolon(console_pooler):
    con = _console(console_pooler)
    try:
        with con.cursor() as cur:
            cur.execute("show Version;")
            assert [d.name for d in cur.description] == ["version"]
    finally:
        con.close()


@pytest.mark.timeout(20)
def test_show_pools_counts_an_active_client(console_pooler):
    client = psycopg2.connect(console_pooler.dsn(USER, "db1"))
    client.autocommit = True
    con = _console(console_pooler)
    try:
        with client.cursor() as cur:
            cur.execute("select 1")
        cols, rows = _show(con, "POOLS")
        names = [c[0] for c in cols]
        mine = [dict(zip(names, r)) for r in rows if r[0] == "db1" and r[1] == USER]
        assert len(mine) == 1, rows
        assert mine[0]["cl_active"] == 1
        assert mine[0]["sv_active"] == 1          # session pooling: the client holds its server
        assert mine[0]["pool_mode"] == "session"
        _, clients = _show(con, "CLIENTS")
        assert any(r[1] == USER and r[2] == "db1" for r in clients), clients
        _, servers = _show(con, "SERVERS")
        assert any(r[1] == USER and r[2] == "db1" for r in servers), servers
    finally:
        con.close()
        client.close()


@pytest.mark.timeout(20)
def test_show_clients_gives_both_ends_of_a_client_connection(console_pooler):
    """addr/port: the client's end; local_addr/local_port: the pooler's (asked of the socket
    when SHOW CLIENTS wants it, not at every accept)."""
    client = psycopg2.connect(console_pooler.dsn(USER, "db1"))
    con = _console(console_pooler)
    sock = socket.socket(fileno=os.dup(client.fileno()))
    try:
        host, port = sock.getsockname()[:2]          # the client's end, as the pooler sees it
        cols, rows = _show(con, "CLIENTS")
        names = [c[0] for c in cols]
        mine = [dict(zip(names, r)) for r in rows if r[1] == USER and r[6] == port]
        assert len(mine) == 1, rows
        assert mine[0]["addr"] == host == "127.0.0.1"
        assert (mine[0]["local_addr"], mine[0]["local_port"]) == ("127.0.0.1", console_pooler.port)
        # the console's own session is listed too, with its own ends
        admin = [dict(zip(names, r)) for r in rows if r[1] == "admin"]
        assert admin and admin[0]["local_port"] == console_pooler.port
    finally:
        sock.close()
        con.close()
        client.close()


@pytest.mark.timeout(20)
def test_show_host_utilization(console_pooler):
    """enable_host_watcher yes: CPU and memory in use, in percent, C's tag HOST_UTILIZATION."""
    con = _console(console_pooler)
    try:
        def sampled():
            with con.cursor() as cur:
                cur.execute("SHOW HOST_UTILIZATION")
                assert cur.statusmessage == "HOST_UTILIZATION"
                [(cpu, mem)] = cur.fetchall()
            return (cpu, mem) if mem > 0 else None
        cpu, mem = wait_for(sampled, what="the host watcher's first samples")
        assert 0.0 <= cpu <= 100.0 and 0.0 < mem < 100.0
    finally:
        con.close()


@pytest.mark.timeout(20)
def test_show_fds_lists_the_pooled_server_sockets(console_pooler):
    client = psycopg2.connect(console_pooler.dsn(USER, "db1"))      # session: holds its server
    client.autocommit = True          # every transaction ends (SHOW STATS times stay consistent)
    con = _console(console_pooler)
    try:
        with client.cursor() as cur:
            cur.execute("select 1")
        _, servers = _show(con, "SERVERS")
        ptrs = {r[12] for r in servers if r[1] == USER}
        _, fds = _show(con, "FDS")
        mine = [r for r in fds if r[1] in ptrs]
        assert mine and all(r[0] == "S" for r in mine), fds
        for _, _, fd, mask in mine:
            assert os.readlink(f"/proc/{console_pooler.pid}/fd/{fd}").startswith("socket:")
            assert mask == f"{'R' if fd & 1 else 'NOR'}/{'W' if fd & 2 else 'NOW'}"    # as C derives it
    finally:
        con.close()
        client.close()


@pytest.mark.timeout(20)
def test_unknown_command(console_pooler):
    w = Wire(console_pooler.port)
    try:
        assert w.login("admin", "console") is None
        assert w.key is None                                  # no BackendKeyData on the console
        _, err, status = w.simple_query("show nothing")
        assert err is not None and err["C"] == "42601", err
        odyssey_text(err["M"], "console command error: show nothing")
        assert status == "I"
        rows, err, _ = w.simple_query("show is_paused")    # still usable
        assert err is None and rows == [["f"]]
    finally:
        w.close()


@pytest.mark.timeout(20)
def test_extended_protocol_is_unsupported(console_pooler):
    w = Wire(console_pooler.port)
    try:
        assert w.login("admin", "console") is None
        w.send(message(b"P", b"\0show version\0" + struct.pack("!H", 0)))
        tag, body = w.read_message()
        assert tag == b"E"
        err = parse_fields(body)
        assert err["C"] == "0A000", err
        odyssey_text(err["M"], "unsupported request 'Parse'")
        assert w.read_message()[0] == b"Z"
    finally:
        w.close()
    with psycopg.connect(f"host=127.0.0.1 port={console_pooler.port} user=admin dbname=console sslmode=disable",
                         autocommit=True) as con:
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="unsupported request"):
            con.execute("show version %s", ["x"])


@pytest.mark.timeout(20)
def test_notallow_role(console_pooler):
    w = Wire(console_pooler.port)
    try:
        assert w.login("viewer", "console") is None
        _, err, _ = w.simple_query("show version")
        assert err is not None and err["C"] == "42501", err
        odyssey_text(err["M"], "Unsuitable user role to emit console command")
    finally:
        w.close()


@pytest.mark.timeout(20)
def test_show_stats_grow_after_queries(console_pooler):
    con = _console(console_pooler)
    client = psycopg2.connect(console_pooler.dsn(USER, "db1"))
    client.autocommit = True
    try:
        def db1():
            cols, rows = _show(con, "STATS")
            names = [c[0] for c in cols]
            mine = [dict(zip(names, r)) for r in rows if r[0] == "db1"]
            return mine[0] if mine else dict.fromkeys(names[1:], 0)
        before = db1()
        with client.cursor() as cur:
            for _ in range(3):
                cur.execute("select 1")
        after = db1()
        assert after["total_query_count"] >= before["total_query_count"] + 3
        assert after["total_xact_count"] >= before["total_xact_count"] + 3
        assert after["total_received"] > before["total_received"]
        assert after["total_sent"] > before["total_sent"]
        assert after["total_server_assignment_count"] >= 1
        assert after["total_query_time"] > before["total_query_time"]      # µs, measured
        assert after["total_xact_time"] > before["total_xact_time"]
        assert after["total_xact_time"] >= after["total_query_time"] > 0
    finally:
        client.close()
        con.close()


@pytest.mark.timeout(20)
def test_show_listen_storages_and_help(console_pooler):
    con = _console(console_pooler)
    try:
        _, rows = _show(con, "LISTEN")
        assert rows == [("127.0.0.1", console_pooler.port, "disable", "(None)", "(None)", "(None)", "(None)")]
        _, rows = _show(con, "STORAGES")
        assert sorted(r[0] for r in rows) == ["local", "remote"]
        with con.cursor() as cur:
            cur.execute("SHOW HELP")
            assert cur.description is None
            assert cur.statusmessage == "SHOW"
        assert any("Console usage" in n for n in con.notices)
        with con.cursor() as cur:
            cur.execute("SET anything = 1")
            assert cur.statusmessage == "SET"
    finally:
        con.close()


@pytest.mark.timeout(20)
def test_stat_role_may_show_but_not_reload(console_pooler):
    w = Wire(console_pooler.port)
    try:
        assert w.login("watcher", "console") is None
        rows, err, _ = w.simple_query("show is_paused")
        assert err is None and rows == [["f"]]
        for q in ("reload", "kill_client c0123456789ab", "set x = 1"):
            _, err, status = w.simple_query(q)
            assert err is not None and err["C"] == "42501", (q, err)
            odyssey_text(err["M"], "Unsuitable user role to emit console command")
            assert status == "I"
    finally:
        w.close()


@pytest.mark.timeout(40)
def test_reload_picks_up_a_changed_config_file(pg, roles):
    ensure_roles(pg, USER)
    console_rule = rule("default", "console", pool="session", storage="local", role="admin")
    local = 'storage "local" {\n    type "local"\n}\n'
    p = start_pooler(pg, odyssey_config(console_rule) + local)
    try:
        with pytest.raises(psycopg2.OperationalError):
            psycopg2.connect(p.dsn(USER, "db1")).close()
        with open(p.config_path) as f:
            text = f.read()
        extra = odyssey_config(rule(USER, "db1", pool="session"))
        extra = extra[extra.index("database "):]
        with open(p.config_path, "w") as f:
            f.write(text + extra)
        con = _console(p)
        try:
            with con.cursor() as cur:
                cur.execute("RELOAD")
                assert cur.statusmessage == "RELOAD"
        finally:
            con.close()
        client = psycopg2.connect(p.dsn(USER, "db1"))
        try:
            with client.cursor() as cur:
                cur.execute("select current_user")
                assert cur.fetchone() == (USER,)
        finally:
            client.close()
    finally:
        p.stop()
