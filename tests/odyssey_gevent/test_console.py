"""console.py without PostgreSQL: every SHOW's column names and types and its rows over a real
router, command tokenizing, the 42601 `console command error: ...`, roles (notallow gets 42501)
and the request loop over a socket pair (Odyssey console.c)."""
from __future__ import annotations

import socket

import time

import pytest
from gevent import socket as gsocket

import machinarium as mm
from kiwi import be_write, error_codes, fe_read, fe_write
from kiwi.framer import Framer
from kiwi.header import BE
from odyssey_gevent import ODYSSEY_COMPAT_VERSION, __version__, console
from odyssey_gevent.client import Client
from odyssey_gevent.config import reader
from odyssey_gevent.config.model import Endpoint
from odyssey_gevent.instance import Instance
from odyssey_gevent.logger import Logger
from odyssey_gevent.prepared import ServerStatements, Statement
from odyssey_gevent.status import FrontendError, Status

pytestmark = pytest.mark.timeout(10)

TEXT, INT4, INT8, BOOL, FLOAT4 = 25, 23, 20, 16, 700

CONFIG = """
log_format "%l (%c) %m\\n"
listen {
    host "127.0.0.1"
    port 6432
}
storage "local" {
    type "local"
}
storage "pg" {
    type "remote"
    host "10.0.0.5"
    port 5433
    tls "prefer"
}
database "console" {
    user "admin" {
        authentication "none"
        role "admin"
        storage "local"
        pool "session"
    }
    user "intruder" {
        authentication "none"
        role "notallow"
        storage "local"
        pool "session"
        client_show_id no
    }
    user default {
        authentication "none"
        storage "local"
        pool "session"
    }
}
database "sales" {
    user "bob" {
        authentication "none"
        storage "pg"
        pool "transaction"
        pool_size 10
        client_max 50
    }
}
database default {
    user default {
        authentication "none"
        storage "pg"
        pool "session"
    }
}
"""


# ----------------------------------------------------------------------------------------------
# harness

def _instance():
    config = reader.loads(CONFIG, "console.conf")
    return Instance(config, Logger(to_stdout=False), "console.conf")


def _client(inst, db, user, peer=("10.1.2.3", 40001)):
    c = Client(None, conn_type="host", peer=peer, local=("127.0.0.1", 6432))
    c.database, c.user = db, user
    inst.router.route(c)
    return c


def _console(inst, user="admin"):
    c = Client(None, conn_type="host", peer=("127.0.0.1", 40000))
    c.database, c.user = "console", user
    c.rule = inst.rules.match("console", user, "127.0.0.1", "host", False)
    assert c.rule.storage.is_local
    return c


def _busy_instance():
    """sales.bob: two clients (one attached to an active server, one pending), one idle offline
    server with a prepared statement; default route: one pending client."""
    inst = _instance()
    router = inst.router
    c1 = _client(inst, "sales", "bob", ("10.1.2.3", 40001))
    c2 = _client(inst, "sales", "bob", ("10.1.2.4", 40002))
    _client(inst, "other", "carol", ("10.1.2.5", 40003))
    active = router.attach(c1, 0)
    active.endpoint, active.key_pid = Endpoint("10.0.0.5", 5433), 777
    route = c1.route
    idle = router.reserve(route, 10)
    idle.endpoint, idle.key_pid, idle.offline = Endpoint("10.0.0.5", 5433), 888, True
    router.put_idle(route, idle)
    stmt = route.prepared.acquire(b"k1", b"SELECT $1\0\0\1\0\0\0\x17")
    idle.prepared = ServerStatements()
    idle.prepared[stmt.name] = stmt
    return inst, (c1, c2), (active, idle), stmt


def _messages(data: bytes):
    framer = Framer()
    framer.feed(data)
    return list(framer)


def _table(data: bytes):
    """(columns as (name, type oid), rows as tuples of str/None, CommandComplete tag)."""
    msgs = _messages(data)
    assert [t for t, _ in msgs][0] == BE.ROW_DESCRIPTION
    assert msgs[-1][0] == BE.COMMAND_COMPLETE
    cols = [(c.name, c.type_oid) for c in fe_read.read_row_description(msgs[0][1])]
    rows = []
    for t, payload in msgs[1:-1]:
        assert t == BE.DATA_ROW
        rows.append(tuple(None if v is None else bytes(v).decode() for v in fe_read.read_data_row(payload)))
    return cols, rows, fe_read.read_command_complete(msgs[-1][1])


def _error(fn):
    with pytest.raises(FrontendError) as e:
        fn()
    return e.value


# ----------------------------------------------------------------------------------------------
# columns of every SHOW

EXPECTED_COLUMNS = {
    "version": [("version", TEXT)],
    "pools": [("database", TEXT), ("user", TEXT), ("cl_active", INT8), ("cl_waiting", INT8),
              ("sv_active", INT8), ("sv_idle", INT8), ("sv_used", INT8), ("sv_tested", INT8),
              ("sv_login", INT8), ("maxwait", INT8), ("maxwait_us", INT8), ("pool_mode", TEXT)],
    "databases": [("name", TEXT), ("host", TEXT), ("port", INT8), ("database", TEXT), ("force_user", TEXT),
                  ("pool_size", INT8), ("reserve_pool", INT8), ("pool_mode", TEXT), ("max_connections", INT8),
                  ("current_connections", INT8), ("paused", INT8), ("disabled", INT8)],
    "clients": [("type", TEXT), ("user", TEXT), ("database", TEXT), ("state", TEXT), ("storage_user", TEXT),
                ("addr", TEXT), ("port", INT4), ("local_addr", TEXT), ("local_port", INT4),
                ("connect_time", TEXT), ("request_time", TEXT), ("wait", INT4), ("wait_us", INT4),
                ("id", TEXT), ("ptr", TEXT), ("coro", INT4), ("remote_pid", INT4), ("tls", TEXT)],
    "servers": [("type", TEXT), ("user", TEXT), ("database", TEXT), ("state", TEXT), ("addr", TEXT),
                ("port", INT4), ("local_addr", TEXT), ("local_port", INT4), ("connect_time", TEXT),
                ("request_time", TEXT), ("wait", INT4), ("wait_us", INT4), ("ptr", TEXT), ("link", TEXT),
                ("remote_pid", INT4), ("tls", TEXT), ("offline", TEXT)],
    "lists": [("list", TEXT), ("items", INT4)],
    "rules": [("database", TEXT), ("user", TEXT), ("address", TEXT), ("connection_type", TEXT),
              ("obsolete", BOOL)],
    "is_paused": [("is_paused", BOOL)],
    "server_prep_stmts": [("type", TEXT), ("user", TEXT), ("database", TEXT), ("sid", TEXT), ("name", TEXT),
                          ("definition", TEXT), ("refcount", TEXT)],
    "global_prepared_statements": [("name", TEXT), ("definition", TEXT), ("refcount", TEXT)],
    "stats": [("database", TEXT)] + [(c, INT8) for c in (
        "total_xact_count", "total_query_count", "total_server_assignment_count", "total_received", "total_sent",
        "total_xact_time", "total_query_time", "total_wait_time", "avg_xact_count", "avg_query_count",
        "avg_server_assignment_count", "avg_recv", "avg_sent", "avg_xact_time", "avg_query_time",
        "avg_wait_time", "total_parse_count", "total_parse_count_reuse", "total_cancel_count")],
    "listen": [("host", TEXT), ("port", INT4), ("tls", TEXT), ("tls_cert_file", TEXT), ("tls_key_file", TEXT),
               ("tls_ca_file", TEXT), ("tls_protocols", TEXT)],
    "storages": [("type", TEXT), ("host", TEXT), ("port", INT4), ("tls", TEXT), ("tls_cert_file", TEXT),
                 ("tls_key_file", TEXT), ("tls_ca_file", TEXT), ("tls_protocols", TEXT)],
    "errors": [("error_type", TEXT), ("count", INT8)],
    "errors_per_route": [("error_type", TEXT), ("user", TEXT), ("database", TEXT), ("count", INT8)],
    "version_extended": [("version", TEXT), ("build_type", TEXT), ("compiler", TEXT), ("compiler_version", TEXT),
                         ("arch", TEXT)],
    "host_utilization": [("cpu", FLOAT4), ("mem", FLOAT4)],
    "fds": [("type", TEXT), ("ptr", TEXT), ("machine fd", INT4), ("machine fd mask", TEXT)],
}
# POOLS_EXTENDED: POOLS + these, then query_<q>/transaction_<q> per quantile of the console rule
EXPECTED_COLUMNS["pools_extended"] = EXPECTED_COLUMNS["pools"] + [
    ("bytes_received", INT4), ("bytes_sent", INT4), ("tcp_conn_count", INT4)]


def test_every_show_command_is_covered():
    assert set(console.SHOW) == set(EXPECTED_COLUMNS)


@pytest.mark.parametrize("what", sorted(EXPECTED_COLUMNS))
def test_show_columns_and_row_shapes(what):
    inst, *_ = _busy_instance()
    cols, rows, tag = _table(console.execute(inst, _console(inst), f"SHOW {what}"))
    assert cols == EXPECTED_COLUMNS[what]
    assert tag == ("HOST_UTILIZATION" if what == "host_utilization" else "SHOW")
    assert rows, "the busy instance has something to show everywhere"
    for row in rows:
        assert len(row) == len(cols)
        for (name, oid), value in zip(cols, row):
            if value is None:
                continue
            if oid in (INT4, INT8):
                int(value)                                  # integer text
            elif oid == FLOAT4:
                float(value)
            elif oid == BOOL:
                assert value in ("t", "f"), (name, value)


# ----------------------------------------------------------------------------------------------
# rows

def test_show_pools_rows():
    inst, *_ = _busy_instance()
    _, rows, _ = _table(console.execute(inst, _console(inst), "show pools"))
    assert sorted(rows) == [
        ("other", "carol", "0", "1", "0", "0", "0", "0", "0", "0", "0", "session"),
        ("sales", "bob", "1", "1", "1", "1", "0", "0", "0", "0", "0", "transaction"),
    ]


def test_show_databases_rows():
    inst, *_ = _busy_instance()
    _, rows, _ = _table(console.execute(inst, _console(inst), "show databases"))
    assert sorted(rows) == [
        ("other", "10.0.0.5", "5433", "default_db", "default_user", "0", "0", "session", "0", "1", "0", "0"),
        ("sales", "10.0.0.5", "5433", "sales", "bob", "10", "0", "transaction", "50", "2", "0", "0"),
    ]


def test_show_clients_rows():
    inst, (c1, c2), _, _ = _busy_instance()
    _, rows, _ = _table(console.execute(inst, _console(inst), "show clients"))
    by_id = {r[13]: r for r in rows}
    assert len(rows) == 3
    assert by_id[c1.id][:9] == ("C", "bob", "sales", "active", "bob", "10.1.2.3", "40001", "127.0.0.1", "6432")
    assert by_id[c2.id][3] == "pending"
    assert by_id[c1.id][9:11] == (None, None)      # connect_time, request_time: NULL


def test_show_servers_rows():
    inst, _, (active, idle), _ = _busy_instance()
    _, rows, _ = _table(console.execute(inst, _console(inst), "show servers"))
    by_ptr = {r[12]: r for r in rows}
    assert set(by_ptr) == {active.id, idle.id}
    assert by_ptr[active.id][:6] == ("S", "bob", "sales", "active", "10.0.0.5", "5433")
    assert (by_ptr[active.id][14], by_ptr[active.id][15], by_ptr[active.id][16]) == ("777", "prefer", "0")
    assert (by_ptr[idle.id][3], by_ptr[idle.id][14], by_ptr[idle.id][16]) == ("idle", "888", "1")


def test_show_lists_rows():
    inst, *_ = _busy_instance()
    _, rows, _ = _table(console.execute(inst, _console(inst), "show lists"))
    assert dict(rows) == {"databases": "2", "users": "2", "pools": "2", "free_clients": "0", "used_clients": "3",
                          "login_clients": "0", "routing_clients": "0", "free_servers": "1", "used_servers": "1",
                          "dns_names": "0", "dns_zones": "0", "dns_queries": "0", "dns_pending": "0"}
    assert [r[0] for r in rows][:3] == ["databases", "users", "pools"]


def test_show_lists_on_an_empty_router():
    inst = _instance()
    _, rows, _ = _table(console.execute(inst, _console(inst), "show lists"))
    assert all(items == "0" for _, items in rows) and len(rows) == 13


def test_show_rules_rows_in_matching_order():
    inst = _instance()
    _, rows, _ = _table(console.execute(inst, _console(inst), "show rules"))
    assert rows == [
        ("console", "admin", "<default>", "all", "f"),
        ("console", "intruder", "<default>", "all", "f"),
        ("sales", "bob", "<default>", "all", "f"),
        ("console", "default_user", "<default>", "all", "f"),
        ("default_db", "default_user", "<default>", "all", "f"),
    ]


def test_show_version_and_is_paused():
    inst = _instance()
    _, rows, _ = _table(console.execute(inst, _console(inst), "show version"))
    [(version,)] = rows
    assert version.startswith(f"Odyssey {ODYSSEY_COMPAT_VERSION} odyssey-gevent {__version__}, compiled by CPython ")
    assert version.endswith("-bit")
    _, rows, _ = _table(console.execute(inst, _console(inst), "show is_paused"))
    assert rows == [("f",)]


def test_show_prepared_statements():
    inst, _, (_, idle), stmt = _busy_instance()
    _, rows, _ = _table(console.execute(inst, _console(inst), "show server_prep_stmts"))
    assert rows == [("S", "bob", "sales", idle.id, stmt.name, "SELECT $1", "1")]
    _, rows, _ = _table(console.execute(inst, _console(inst), "show global_prepared_statements"))
    assert rows == [(stmt.name, "SELECT $1", "1")]


def test_values_are_rendered_as_postgres_text():
    assert [console._value(v) for v in (None, True, False, 0, 42, "x")] == [None, "t", "f", "0", "42", "x"]


# ----------------------------------------------------------------------------------------------
# tokenizing and errors

@pytest.mark.parametrize("query", ["SHOW POOLS", "show pools;", "  Show\tPools ; ", "show pools extra words",
                                   "show\npools", ";show pools"])
def test_command_tokenizing(query):
    inst, *_ = _busy_instance()
    cols, _, _ = _table(console.execute(inst, _console(inst), query))
    assert cols == EXPECTED_COLUMNS["pools"]


@pytest.mark.parametrize("query", ["", "   ", ";", " ;; ", "\n"])
def test_empty_query(query):
    inst = _instance()
    assert console.execute(inst, _console(inst), query) == be_write.empty_query_response()


@pytest.mark.parametrize("query", ["show", "SHOW;", "show nothing", "select 1", "pools", "show errorz",
                                   "kill_client c0123", "kill_client", "kill_client c0123456789abc", "reload now", "show  'pools'",
                                   "drop servers;", "drop servers now", "drop", "drop server", "create module",
                                   "create module python:x", "drop module", "create", "create servers"])
def test_unknown_command_is_42601_with_the_query_text(query):
    inst = _instance()
    err = _error(lambda: console.execute(inst, _console(inst), query))
    assert (err.sqlstate, err.severity) == (error_codes.SYNTAX_ERROR, "ERROR")
    assert err.message == f"console command error: {query}"


def test_notallow_role_gets_42501():
    inst = _instance()
    err = _error(lambda: console.execute(inst, _console(inst, "intruder"), "show version"))
    assert err.sqlstate == error_codes.INSUFFICIENT_PRIVILEGE
    assert err.message == "Unsuitable user role to emit console command"


def test_notallow_role_gets_42501_even_for_an_empty_query():
    inst = _instance()
    err = _error(lambda: console.execute(inst, _console(inst, "intruder"), ";"))
    assert err.sqlstate == error_codes.INSUFFICIENT_PRIVILEGE


@pytest.mark.parametrize("user, role", [("admin", "admin"), ("someone", "stat")])
def test_admin_and_stat_roles_may_show(user, role):
    inst = _instance()
    client = _console(inst, user)
    assert client.rule.effective_role() == role
    cols, _, _ = _table(console.execute(inst, client, "show version"))
    assert cols == EXPECTED_COLUMNS["version"]


def test_show_stats_sums_route_counters_per_database():
    inst, (c1, _), *_ = _busy_instance()
    st = c1.route.stats
    st.count_tx, st.count_query, st.bytes_recv, st.bytes_sent, st.count_cancel = 3, 7, 100, 200, 1
    st.count_parse, st.count_parse_reuse = 4, 11
    _, rows, _ = _table(console.execute(inst, _console(inst), "show stats"))
    by_db = {r[0]: r for r in rows}
    assert set(by_db) == {"sales", "other"}
    sales = list(by_db["sales"])
    assert sales[1:6] == ["3", "7", sales[3], "100", "200"] and int(sales[3]) >= 1
    assert sales[17:19] == ["4", "11"]                     # total_parse_count, total_parse_count_reuse
    assert sales[19] == "1"


def test_show_stats_averages_since_the_last_tick():
    """od_stat_average: rates per second over the time since the last stats tick, times in µs
    per transaction / query / server assignment."""
    inst, (c1, _), *_ = _busy_instance()
    st = c1.route.stats
    st.prev = st.snapshot()
    st.count_tx, st.count_query, st.tx_time, st.query_time = 4, 10, 4 * 0.0015, 10 * 0.0002
    st.count_server_assignment, st.wait_time = st.count_server_assignment + 2, 2 * 0.00007
    inst.router.stat_time = time.monotonic() - 1000.0     # a long interval: rates round to 0
    _, rows, _ = _table(console.execute(inst, _console(inst), "show stats"))
    cols = [c for c, _ in EXPECTED_COLUMNS["stats"]]
    sales = dict(zip(cols, [r for r in rows if r[0] == "sales"][0]))
    assert (sales["total_xact_time"], sales["total_query_time"], sales["total_wait_time"]) == ("6000", "2000", "140")
    assert (sales["avg_xact_time"], sales["avg_query_time"], sales["avg_wait_time"]) == ("1500", "200", "70")
    assert sales["avg_xact_count"] == "0" and sales["avg_query_count"] == "0"


def test_kill_client_marks_the_client_and_an_unknown_id_is_no_error():
    inst, (c1, c2), *_ = _busy_instance()
    assert console.execute(inst, _console(inst), f"KILL_CLIENT {c2.id}") == b""   # no CommandComplete, as C
    assert c2.killed and not c1.killed
    assert console.execute(inst, _console(inst), "kill_client c0123456789ab") == b""
    assert console.execute(inst, _console(inst), f"kill_client x{c1.id[1:]}") == b""  # the first char is skipped
    assert c1.killed


def test_pause_resume_per_database_and_global():
    inst, *_ = _busy_instance()
    con = _console(inst)

    def paused():
        _, rows, _ = _table(console.execute(inst, con, "show databases"))
        return {r[0]: r[10] for r in rows}, _table(console.execute(inst, con, "show is_paused"))[1]

    assert _messages(console.execute(inst, con, "PAUSE sales"))[0][0] == BE.COMMAND_COMPLETE
    assert paused() == ({"sales": "1", "other": "0"}, [("f",)])
    console.execute(inst, con, "resume sales")
    assert paused() == ({"sales": "0", "other": "0"}, [("f",)])
    msgs = _messages(console.execute(inst, con, "pause"))
    assert b"PAUSE" in msgs[0][1]
    assert paused() == ({"sales": "1", "other": "1"}, [("t",)])
    console.execute(inst, con, "resume")
    assert paused() == ({"sales": "0", "other": "0"}, [("f",)])


def test_show_errors_lists_c_error_types_in_order():
    inst, (c1, _), *_ = _busy_instance()
    router = inst.router
    router.errors.router_error("OD_ROUTER_ERROR_NOT_FOUND")
    router.errors.session_ended("OD_ECLIENT_KILLED", c1.route)
    router.errors.session_ended("OD_TERMINATE", c1.route)            # not an error
    _, rows, _ = _table(console.execute(inst, _console(inst), "show errors"))
    names = [r[0] for r in rows]
    assert names[:7] == ["OD_ROUTER_ERROR", "OD_ROUTER_ERROR_NOT_FOUND", "OD_ROUTER_ERROR_LIMIT",
                         "OD_ROUTER_ERROR_LIMIT_ROUTE", "OD_ROUTER_ERROR_TIMEDOUT", "OD_ROUTER_ERROR_REPLICATION",
                         "OD_ROUTER_CLIENT_DISCONNECTED"]
    assert len(names) == 27 and names[7] == "OD_EOOM" and names[-1] == "OD_EIDLE_IN_TRANSACTION_TIMEOUT"
    counts = dict(rows)
    assert counts["OD_ROUTER_ERROR_NOT_FOUND"] == "1" and counts["OD_ECLIENT_KILLED"] == "1"
    assert sum(int(v) for v in counts.values()) == 2
    _, rows, _ = _table(console.execute(inst, _console(inst), "show errors_per_route"))
    sales = [r for r in rows if r[1:3] == ("bob", "sales")]
    assert len(sales) == 21 and ("OD_ECLIENT_KILLED", "bob", "sales", "1") in sales
    assert sales[-1][0] == "OD_ROUTER_ERROR_LIMIT_ROUTE"
    for _ in range(300):                                   # five minutes of cron ticks: forgotten
        router.errors.tick(router.snapshot())
    _, rows, _ = _table(console.execute(inst, _console(inst), "show errors"))
    assert all(count == "0" for _, count in rows)


def test_show_listen_and_storages_rows():
    inst = _instance()
    _, rows, _ = _table(console.execute(inst, _console(inst), "show listen"))
    assert rows == [("127.0.0.1", "6432", "disable", "(None)", "(None)", "(None)", "(None)")]
    _, rows, _ = _table(console.execute(inst, _console(inst), "show storages"))
    assert rows == [("local", "(None)", "0", "disable", "(None)", "(None)", "(None)", "(None)"),
                    ("remote", "10.0.0.5", "5433", "prefer", "(None)", "(None)", "(None)", "(None)")]


def test_show_help_is_a_notice_and_no_rows():
    inst = _instance()
    msgs = _messages(console.execute(inst, _console(inst), "show help"))
    assert [m[0] for m in msgs] == [BE.NOTICE_RESPONSE, BE.COMMAND_COMPLETE]
    assert b"Console usage" in msgs[0][1] and b"RELOAD" in msgs[0][1]
    for command in (b"DROP SERVERS", b"CREATE MODULE", b"DROP MODULE", b"HOST_UTILIZATION", b"FDS",
                    b"VERSION_EXTENDED"):
        assert command in msgs[0][1], command


def test_set_is_a_no_op_and_reload_reads_the_config(monkeypatch):
    inst = _instance()
    calls = []
    monkeypatch.setattr(inst, "reload", lambda: calls.append(1) or True)
    assert _messages(console.execute(inst, _console(inst), "SET foo = 1"))[0][0] == BE.COMMAND_COMPLETE
    assert calls == []
    msgs = _messages(console.execute(inst, _console(inst), "RELOAD;"))
    assert [m[0] for m in msgs] == [BE.COMMAND_COMPLETE] and b"RELOAD" in msgs[0][1]
    assert calls == [1]


@pytest.mark.parametrize("query", ["reload", "set x = 1", "kill_client c0123456789ab"])
def test_stat_role_may_only_show(query):
    inst = _instance()
    client = _console(inst, "someone")
    assert client.rule.effective_role() == "stat"
    err = _error(lambda: console.execute(inst, client, query))
    assert err.sqlstate == error_codes.INSUFFICIENT_PRIVILEGE
    assert err.message == "Unsuitable user role to emit console command"


# ----------------------------------------------------------------------------------------------
# DROP SERVERS, CREATE/DROP MODULE, VERSION_EXTENDED, HOST_UTILIZATION, FDS

@pytest.mark.parametrize("query", ["DROP SERVERS", "drop servers", "  Drop\tServers  "])
def test_drop_servers_marks_every_server_offline_with_no_command_complete(query):
    inst, _, (active, idle), _ = _busy_instance()
    idle.offline = False
    assert console.execute(inst, _console(inst), query) == b""      # ReadyForQuery alone, as C
    assert active.offline and idle.offline
    _, rows, _ = _table(console.execute(inst, _console(inst), "show servers"))
    assert [r[-1] for r in rows] == ["1", "1"]


def test_drop_servers_is_admin_only():
    inst, _, (active, _), _ = _busy_instance()
    err = _error(lambda: console.execute(inst, _console(inst, "someone"), "drop servers"))
    assert err.sqlstate == error_codes.INSUFFICIENT_PRIVILEGE
    assert not active.offline


def test_console_words():
    assert console._words("""drop module "python:a.b" 'x' ; 7""") == [
        ("word", "drop"), ("word", "module"), ("string", "python:a.b"), ("string", "x"), ("symbol", ";"),
        ("symbol", "7")]
    assert console._words("  ") == []


def _notice_or_error(data: bytes):
    """(type, payload) of what a module command answers, no CommandComplete as C: an INFO
    notice, or C's pair of errors (58000, then 42601 console command error) joined."""
    msgs = _messages(data)
    if msgs[0][0] == BE.ERROR_RESPONSE:
        assert [t for t, _ in msgs] == [BE.ERROR_RESPONSE, BE.ERROR_RESPONSE]
        assert b"42601" in bytes(msgs[1][1]) and b"console command error: " in bytes(msgs[1][1])
        return BE.ERROR_RESPONSE, bytes(msgs[0][1])
    [(t, payload)] = msgs
    return t, bytes(payload)


def test_create_and_drop_module(tmp_path, monkeypatch):
    (tmp_path / "ogunit_consolemod.py").write_text("def check(user, password, info):\n    return True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    inst = _instance()
    admin = _console(inst)
    from odyssey_gevent import auth_module
    t, text = _notice_or_error(console.execute(inst, admin, 'CREATE MODULE "python:ogunit_consolemod"'))
    assert t == BE.NOTICE_RESPONSE and b"INFO" in text and b"module was successfully loaded!" in text
    assert "python:ogunit_consolemod" in auth_module.loaded(inst)
    # loaded twice: C's error
    t, text = _notice_or_error(console.execute(inst, admin, 'create module "python:ogunit_consolemod"'))
    assert t == BE.ERROR_RESPONSE and b"58000" in text and b"module was NOT successfully loaded!" in text
    t, text = _notice_or_error(console.execute(inst, admin, "drop module 'python:ogunit_consolemod'"))
    assert t == BE.NOTICE_RESPONSE and b"module was successfully unloaded!" in text
    assert "python:ogunit_consolemod" not in auth_module.loaded(inst)
    t, text = _notice_or_error(console.execute(inst, admin, 'drop module "python:ogunit_consolemod"'))
    assert t == BE.ERROR_RESPONSE and b"58000" in text and b"NOT successfully unloaded" in text


@pytest.mark.parametrize("path, reason", [("/usr/lib/odyssey/mod.so", b"C modules (.so) can't be loaded"),
                                          ("python:no_such_module_ogunit", b"failed to import"),
                                          ("python:os", b"has no check("),
                                          ("python:1bad", b"expected python:<dotted module name>")])
def test_create_module_errors_are_58000_with_the_reason(path, reason):
    inst = _instance()
    t, text = _notice_or_error(console.execute(inst, _console(inst), f'CREATE MODULE "{path}"'))
    assert t == BE.ERROR_RESPONSE and b"58000" in text and reason in text
    from odyssey_gevent import auth_module
    assert path not in auth_module.loaded(inst)


def test_show_version_extended_row():
    inst = _instance()
    _, [row], _ = _table(console.execute(inst, _console(inst), "show version_extended"))
    assert row[0] == f"{ODYSSEY_COMPAT_VERSION}-odyssey-gevent-{__version__}"
    assert row[1] == "release" and row[2] == "CPython" and row[3] and row[4]


def test_show_host_utilization_is_zero_without_the_watcher():
    inst = _instance()
    assert _table(console.execute(inst, _console(inst), "show host_utilization"))[1] == [("0.00", "0.00")]


def test_show_fds_lists_servers_with_cs_mask():
    inst, _, (active, idle), _ = _busy_instance()
    a, b = socket.socketpair()
    try:
        active.io = mm.Io(gsocket.socket(fileno=a.detach()))
        idle.fd = 6
        _, rows, _ = _table(console.execute(inst, _console(inst), "show fds"))
        fd = active.io.fileno()
        mask = f"{'R' if fd & 1 else 'NOR'}/{'W' if fd & 2 else 'NOW'}"
        assert rows == [("S", active.id, str(fd), mask), ("S", idle.id, "6", "NOR/W")]
    finally:
        active.io.close()
        b.close()


def test_login_parameters():
    params = dict(console.login_parameters(_instance()))
    assert params["server_version"].startswith(f"{ODYSSEY_COMPAT_VERSION}.0 ")
    assert {k: params[k] for k in ("server_encoding", "client_encoding", "DateStyle", "TimeZone")} == \
        {"server_encoding": "UTF-8", "client_encoding": "UTF-8", "DateStyle": "ISO", "TimeZone": "GMT"}


# ----------------------------------------------------------------------------------------------
# the request loop over a socket pair

def _run_console(in_machine, user, requests: bytes, close_after=False):
    def body():
        a, b = gsocket.socketpair()
        pooler, app = mm.Io(a), mm.Io(b)
        try:
            inst = _instance()
            client = _console(inst, user)
            client.io = pooler
            app.write(requests)
            if close_after:
                app.sock.shutdown(socket.SHUT_WR)         # EOF after the requests
            try:
                status = console.run(inst, client)
            except OSError as e:              # client IO errors may propagate to the frontend
                status = e
            pooler.close()
            out = bytearray()
            buf = bytearray(65536)
            while (n := app.read_into(buf, 2000)) > 0:
                out += buf[:n]
            return status, client.id, bytes(out)
        finally:
            pooler.close(), app.close()

    return in_machine(body)


def test_run_answers_each_query_then_ready_for_query(in_machine):
    status, cid, out = _run_console(
        in_machine, "admin",
        fe_write.query("show version") + fe_write.query("show bogus") + fe_write.query("") + fe_write.terminate())
    assert status is Status.TERMINATE
    msgs = _messages(out)
    types = [chr(t) for t, _ in msgs]
    assert types == ["T", "D", "C", "Z", "E", "Z", "I", "Z"]
    err = fe_read.read_error(msgs[4][1])
    assert (err.sqlstate, err.message) == ("42601", f"odyssey: {cid}: console command error: show bogus")
    assert all(fe_read.read_ready_for_query(p) == b"I" for t, p in msgs if t == BE.READY_FOR_QUERY)


def test_run_refuses_other_messages_and_carries_on(in_machine):
    status, cid, out = _run_console(
        in_machine, "admin",
        fe_write.parse("s", "show pools") + fe_write.sync() + fe_write.query("show is_paused") + fe_write.terminate())
    assert status is Status.TERMINATE
    msgs = _messages(out)
    assert [chr(t) for t, _ in msgs] == ["E", "Z", "E", "Z", "T", "D", "C", "Z"]
    first, second = fe_read.read_error(msgs[0][1]), fe_read.read_error(msgs[2][1])
    assert (first.sqlstate, first.message) == ("0A000", f"odyssey: {cid}: unsupported request 'Parse'")
    assert second.message == f"odyssey: {cid}: unsupported request 'Sync'"


def test_run_notallow_without_client_id(in_machine):
    status, _, out = _run_console(in_machine, "intruder", fe_write.query("show pools") + fe_write.terminate())
    msgs = _messages(out)
    err = fe_read.read_error(msgs[0][1])
    assert status is Status.TERMINATE
    assert (err.sqlstate, err.message) == ("42501", "odyssey: Unsuitable user role to emit console command")


def test_run_client_gone(in_machine):
    """EOF ends the loop after everything sent before it was answered: as ECLIENT_READ, or as
    the read error itself for the frontend to turn into ECLIENT_READ."""
    status, _, out = _run_console(in_machine, "admin", fe_write.query("show is_paused"), close_after=True)
    assert status is Status.ECLIENT_READ or isinstance(status, mm.ConnectionClosed)
    assert [chr(t) for t, _ in _messages(out)] == ["T", "D", "C", "Z"]
