"""The admin console: a `local` storage answering SHOW commands (mirrors Odyssey
sources/console.c).

It answers SHOW VERSION, POOLS, DATABASES, CLIENTS, SERVERS, LISTS, RULES, IS_PAUSED,
SERVER_PREP_STMTS, GLOBAL_PREPARED_STATEMENTS, STATS, LISTEN, STORAGES and HELP with Odyssey's
column names and types, plus RELOAD and SET (a no-op); ERRORS, KILL_CLIENT and PAUSE/RESUME are
not implemented yet. Roles: admin may do everything, stat only SHOW, notallow nothing.
Commands are dispatched through a table. Rows are built under the router's lock (the rule is in
route.py), which is never held across IO: the reply is written after it is released.
"""
from __future__ import annotations

import platform
import struct

from kiwi import be_read, be_write, error_codes
from kiwi.header import FE
from odyssey_gevent import ODYSSEY_COMPAT_VERSION, __version__
from odyssey_gevent.io import FE_LIMITS, read_message
from odyssey_gevent.rules import show_rules_rows
from odyssey_gevent.status import FrontendError, Status, error_message

TEXT, INT4, INT8, BOOL = 25, 23, 20, 16


def login_parameters(instance) -> list[tuple[str, str]]:
    return [("server_version", f"{ODYSSEY_COMPAT_VERSION}.0 (odyssey-gevent {__version__})"),
            ("server_encoding", "UTF-8"), ("client_encoding", "UTF-8"), ("DateStyle", "ISO"),
            ("TimeZone", "GMT")]


def _version_string() -> str:
    """Shaped like C Odyssey's 'Odyssey 1.5.1 release, compiled by gcc-12.2.0, 64-bit'."""
    return (f"Odyssey {ODYSSEY_COMPAT_VERSION} odyssey-gevent {__version__}, compiled by CPython "
            f"{platform.python_version()}, {struct.calcsize('P') * 8}-bit")


def show_version(instance):
    return [("version", TEXT)], [[_version_string()]]


def show_pools(instance):
    cols = [("database", TEXT), ("user", TEXT), ("cl_active", INT8), ("cl_waiting", INT8), ("sv_active", INT8),
            ("sv_idle", INT8), ("sv_used", INT8), ("sv_tested", INT8), ("sv_login", INT8), ("maxwait", INT8),
            ("maxwait_us", INT8), ("pool_mode", TEXT)]
    rows = []
    router = instance.router
    with router.lock:
        for r in router.routes.values():
            c = r.client_counts()
            rows.append([r.db, r.user, c["active"], c["pending"], len(r.active), len(r.idle), 0, 0, 0, 0, 0,
                         r.rule.pool])
    return cols, rows


def show_databases(instance):
    cols = [("name", TEXT), ("host", TEXT), ("port", INT8), ("database", TEXT), ("force_user", TEXT),
            ("pool_size", INT8), ("reserve_pool", INT8), ("pool_mode", TEXT), ("max_connections", INT8),
            ("current_connections", INT8), ("paused", INT8), ("disabled", INT8)]
    rows = []
    router = instance.router
    with router.lock:
        for r in router.routes.values():
            st = r.rule.storage
            rows.append([r.db, st.host if st else None, st.port if st else 0, r.rule.db_name, r.rule.user_name,
                         r.rule.pool_size, 0, r.rule.pool, r.rule.client_max or 0, r.server_count, 0, 0])
    return cols, rows


def show_clients(instance):
    cols = [("type", TEXT), ("user", TEXT), ("database", TEXT), ("state", TEXT), ("storage_user", TEXT),
            ("addr", TEXT), ("port", INT4), ("local_addr", TEXT), ("local_port", INT4), ("connect_time", TEXT),
            ("request_time", TEXT), ("wait", INT4), ("wait_us", INT4), ("id", TEXT), ("ptr", TEXT), ("coro", INT4),
            ("remote_pid", INT4), ("tls", TEXT)]
    rows = []
    router = instance.router
    with router.lock:
        for r in router.routes.values():
            for c in r.clients:
                rows.append(["C", c.user, c.database, c.state.value, r.user, c.peer_host or "", c.peer_port or 0,
                             c.local_host or "", c.local_port or 0, None, None, 0, 0, c.id, "", 0, 0, ""])
    return cols, rows


def show_servers(instance):
    cols = [("type", TEXT), ("user", TEXT), ("database", TEXT), ("state", TEXT), ("addr", TEXT), ("port", INT4),
            ("local_addr", TEXT), ("local_port", INT4), ("connect_time", TEXT), ("request_time", TEXT),
            ("wait", INT4), ("wait_us", INT4), ("ptr", TEXT), ("link", TEXT), ("remote_pid", INT4), ("tls", TEXT),
            ("offline", TEXT)]
    rows = []
    router = instance.router
    with router.lock:
        for r in router.routes.values():
            for s in list(r.idle) + list(r.active):
                ep = s.endpoint
                rows.append(["S", r.user, r.db, s.state.value, ep.host if ep else "", ep.port if ep else 0, "", 0,
                             None, None, 0, 0, s.id, "", s.key_pid, r.rule.storage.tls if r.rule.storage else "",
                             "1" if s.offline else "0"])
    return cols, rows


def show_lists(instance):
    router = instance.router
    with router.lock:
        routes = list(router.routes.values())
        used_clients = sum(len(r.clients) for r in routes)
        free_servers = sum(len(r.idle) for r in routes)
        used_servers = sum(len(r.active) for r in routes)
    users = {r.user for r in routes}
    dbs = {r.db for r in routes}
    items = [("databases", len(dbs)), ("users", len(users)), ("pools", len(routes)), ("free_clients", 0),
             ("used_clients", used_clients), ("login_clients", 0), ("routing_clients", 0),
             ("free_servers", free_servers), ("used_servers", used_servers), ("dns_names", 0), ("dns_zones", 0),
             ("dns_queries", 0), ("dns_pending", 0)]
    return [("list", TEXT), ("items", INT4)], [list(i) for i in items]


def show_rules(instance):
    cols = [("database", TEXT), ("user", TEXT), ("address", TEXT), ("connection_type", TEXT), ("obsolete", BOOL)]
    return cols, [list(r) for r in show_rules_rows(instance.rules)]


def show_is_paused(instance):
    return [("is_paused", BOOL)], [[False]]


def _server_statements(server) -> list:
    cache = server.prepared
    for _ in range(3):          # another machine may change it meanwhile (workers > 1)
        try:
            return list(cache.values()) if cache else []
        except RuntimeError:
            continue
    return []


def show_server_prep_stmts(instance):
    """One row per statement prepared on a pooled server (prepared.py)."""
    cols = [("type", TEXT), ("user", TEXT), ("database", TEXT), ("sid", TEXT), ("name", TEXT),
            ("definition", TEXT), ("refcount", TEXT)]
    rows = []
    router = instance.router
    with router.lock:
        servers = [(r, s) for r in router.routes.values() for s in list(r.idle) + list(r.active)]
    for r, s in servers:
        for stmt in _server_statements(s):
            rows.append(["S", r.user, r.db, s.id, stmt.name, stmt.definition, stmt.refcount])
    return cols, rows


def show_global_prepared_statements(instance):
    """The pool-wide statements of every route and how many client statements map to each."""
    cols = [("name", TEXT), ("definition", TEXT), ("refcount", TEXT)]
    rows = []
    for r in instance.router.snapshot():
        for stmt in r.prepared.snapshot():
            rows.append([stmt.name, stmt.definition, stmt.refcount])
    return cols, rows


STATS_COLUMNS = ["total_xact_count", "total_query_count", "total_server_assignment_count", "total_received",
                 "total_sent", "total_xact_time", "total_query_time", "total_wait_time", "avg_xact_count",
                 "avg_query_count", "avg_server_assignment_count", "avg_recv", "avg_sent", "avg_xact_time",
                 "avg_query_time", "avg_wait_time", "total_parse_count", "total_parse_count_reuse",
                 "total_cancel_count"]


def show_stats(instance):
    """One row per database, summed over its routes (RouteStats). Times are not measured and the
    averages (Odyssey's per-stats_interval rates) are not computed yet: both are 0."""
    cols = [("database", TEXT)] + [(c, INT8) for c in STATS_COLUMNS]
    totals: dict[str, list[int]] = {}
    for r in instance.router.snapshot():
        st = r.stats
        t = totals.setdefault(r.db, [0] * 6)
        for i, v in enumerate((st.count_tx, st.count_query, st.count_server_assignment, st.bytes_recv,
                               st.bytes_sent, st.count_cancel)):
            t[i] += v
    rows = []
    for db in sorted(totals):
        tx, q, assign, recv, sent, cancel = totals[db]
        rows.append([db, tx, q, assign, recv, sent, 0, 0, 0] + [0] * 8 + [0, 0, cancel])
    return cols, rows


def _tls_columns(block) -> list:
    return [block.tls or "(None)", block.tls_cert_file or "(None)", block.tls_key_file or "(None)",
            block.tls_ca_file or "(None)", block.tls_protocols or "(None)"]


TLS_COLUMNS = [("tls", TEXT), ("tls_cert_file", TEXT), ("tls_key_file", TEXT), ("tls_ca_file", TEXT),
               ("tls_protocols", TEXT)]


def show_listen(instance):
    cols = [("host", TEXT), ("port", INT4)] + TLS_COLUMNS
    return cols, [[lst.host or "(None)", lst.port] + _tls_columns(lst) for lst in instance.config.listen]


def show_storages(instance):
    cols = [("type", TEXT), ("host", TEXT), ("port", INT4)] + TLS_COLUMNS
    rows = [[st.type or "remote", st.host or "(None)", st.port or 0] + _tls_columns(st)
            for st in instance.config.storages.values()]
    return cols, rows


HELP_TEXT = """Console usage
	SHOW COMMANDS|HELP
	SHOW STATS|POOLS|DATABASES|CLIENTS|SERVERS|LISTS|RULES|IS_PAUSED|VERSION
	SHOW LISTEN|STORAGES|SERVER_PREP_STMTS|GLOBAL_PREPARED_STATEMENTS
	RELOAD
	SET key = arg (ignored)"""


SHOW = {
    "stats": show_stats, "listen": show_listen, "storages": show_storages,
    "server_prep_stmts": show_server_prep_stmts, "global_prepared_statements": show_global_prepared_statements,
    "version": show_version, "pools": show_pools, "databases": show_databases, "clients": show_clients,
    "servers": show_servers, "lists": show_lists, "rules": show_rules, "is_paused": show_is_paused,
}


def _value(v):
    if v is None:
        return None
    if v is True:
        return "t"
    if v is False:
        return "f"
    return str(v)


def _result(cols, rows, tag: str = "SHOW") -> bytes:
    out = [be_write.row_description(cols)]
    out += [be_write.data_row([_value(v) for v in row]) for row in rows]
    out.append(be_write.command_complete(tag))
    return b"".join(out)


def execute(instance, client, query: str) -> bytes:
    role = client.rule.effective_role() if hasattr(client.rule, "effective_role") else client.rule.role
    if role == "notallow":         # before anything else, an empty query included
        raise FrontendError(error_codes.INSUFFICIENT_PRIVILEGE, "Unsuitable user role to emit console command")
    tokens = query.replace(";", " ").split()
    if not tokens:
        return be_write.empty_query_response()
    verb = tokens[0].lower()
    if role != "admin" and not (verb == "show" and role == "stat"):
        raise FrontendError(error_codes.INSUFFICIENT_PRIVILEGE, "Unsuitable user role to emit console command")
    if verb == "show" and len(tokens) >= 2 and tokens[1].lower() in ("help", "commands"):
        return be_write.notice_response("NOTICE", "00000", HELP_TEXT) + be_write.command_complete("SHOW")
    if verb == "reload" and len(tokens) == 1:
        instance.reload()
        return be_write.command_complete("RELOAD")
    if verb == "set":
        return be_write.command_complete("SET")
    if verb == "show" and len(tokens) >= 2:
        handler = SHOW.get(tokens[1].lower())
        if handler is not None:
            cols, rows = handler(instance)
            return _result(cols, rows)
    raise FrontendError(error_codes.SYNTAX_ERROR, f"console command error: {query}")


def _message_name(mtype: int) -> str:
    try:
        return FE(mtype).name.replace("_", " ").title().replace(" ", "")
    except ValueError:
        return chr(mtype)


def run(instance, client) -> Status:
    """The console's request loop: returns TERMINATE; client IO errors propagate (status.py)."""
    while True:
        mtype, payload = read_message(client.io, None, FE_LIMITS)
        if mtype == FE.TERMINATE:
            return Status.TERMINATE
        if mtype != FE.QUERY:
            err = FrontendError(error_codes.FEATURE_NOT_SUPPORTED,
                                f"unsupported request '{_message_name(mtype)}'")
            client.io.write(error_message(err, client.id, client.rule.client_show_id) + be_write.ready_for_query())
            continue
        query = be_read.read_query(payload)
        try:
            reply = execute(instance, client, query)
        except FrontendError as err:
            reply = error_message(err, client.id, client.rule.client_show_id)
        client.io.write(reply + be_write.ready_for_query())
