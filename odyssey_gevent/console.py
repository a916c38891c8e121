"""The admin console: a `local` storage answering SHOW commands (mirrors Odyssey
sources/console.c).

It answers SHOW VERSION, VERSION_EXTENDED, POOLS, POOLS_EXTENDED, DATABASES, CLIENTS, SERVERS,
LISTS, RULES, IS_PAUSED, SERVER_PREP_STMTS, GLOBAL_PREPARED_STATEMENTS, STATS, ERRORS,
ERRORS_PER_ROUTE, LISTEN, STORAGES, HOST_UTILIZATION, FDS and HELP with Odyssey's column names
and types, plus KILL_CLIENT, PAUSE and RESUME, RELOAD, SET (a no-op), DROP SERVERS and
CREATE/DROP MODULE (Python auth modules, auth_module.py). Roles: admin may do everything, stat only SHOW, notallow
nothing. Commands are dispatched through a table. Rows are built under the router's lock (the
rule is in route.py), which is never held across IO: the reply is written after it is released.
"""
from __future__ import annotations

import platform
import re
import struct
import time

from kiwi import be_read, be_write, error_codes
from kiwi.header import FE
from machinarium import wait_any
from odyssey_gevent import ODYSSEY_COMPAT_VERSION, __version__, relay
from odyssey_gevent.client import ClientState
from odyssey_gevent.err_logger import FRONTEND_ERRORS, ROUTE_ROUTER_ERRORS, ROUTER_ERRORS
from odyssey_gevent.route import averages
from odyssey_gevent.io import FE_LIMITS, read_message
from odyssey_gevent.rules import show_rules_rows
from odyssey_gevent.status import FrontendError, Status, error_message, error_prefix

KILL_POLL_MS = 1000

TEXT, INT4, INT8, BOOL, FLOAT4 = 25, 23, 20, 16, 700


def login_parameters(instance) -> list[tuple[str, str]]:
    return [("server_version", f"{ODYSSEY_COMPAT_VERSION}.0 (odyssey-gevent {__version__})"),
            ("server_encoding", "UTF-8"), ("client_encoding", "UTF-8"), ("DateStyle", "ISO"),
            ("TimeZone", "GMT")]


def _version_string() -> str:
    """Shaped like C Odyssey's 'Odyssey 1.5.1 release, compiled by gcc-12.2.0, 64-bit'."""
    return (f"Odyssey {ODYSSEY_COMPAT_VERSION} odyssey-gevent {__version__}, compiled by CPython "
            f"{platform.python_version()}, {struct.calcsize('P') * 8}-bit")


def show_version(instance, client=None):
    return [("version", TEXT)], [[_version_string()]]


def show_version_extended(instance, client=None):
    """C's version, build_type, compiler, compiler_version, arch: here the Odyssey version we
    answer as with ours, and the Python that runs us."""
    cols = [("version", TEXT), ("build_type", TEXT), ("compiler", TEXT), ("compiler_version", TEXT),
            ("arch", TEXT)]
    return cols, [[f"{ODYSSEY_COMPAT_VERSION}-odyssey-gevent-{__version__}", "release",
                   platform.python_implementation(), platform.python_version(), platform.machine()]]


def show_host_utilization(instance, client=None):
    """cpu and mem in percent ("%.2f", float4) from the host watcher (host_watcher.py): 0.00
    without enable_host_watcher, as C."""
    from odyssey_gevent.host_watcher import utilization
    cpu, mem = utilization(instance)
    return [("cpu", FLOAT4), ("mem", FLOAT4)], [[f"{cpu:.2f}", f"{mem:.2f}"]]


def _server_fd(server) -> int:
    io = server.io
    if io is not None:
        try:
            return io.fileno()
        except OSError:
            return -1
    return server.fd if server.fd is not None else -1


def show_fds(instance, client=None):
    """One row per pooled server socket, active then idle per route, as C (which lists no client
    sockets): type "S", ptr (the server id), its fd, and C's "machine fd mask" column, which C
    derives from the fd number's two low bits ("R"/"NOR", "W"/"NOW"); kept so for exporters."""
    rows = []
    router = instance.router
    with router.lock:
        servers = [s for r in router.routes.values() for s in list(r.active) + list(r.idle)]
    for s in servers:
        fd = _server_fd(s)
        mask = f"{'R' if fd & 1 else 'NOR'}/{'W' if fd & 2 else 'NOW'}" if fd >= 0 else "NOR/NOW"
        rows.append(["S", s.id, fd, mask])
    return [("type", TEXT), ("ptr", TEXT), ("machine fd", INT4), ("machine fd mask", TEXT)], rows


POOLS_COLUMNS = [("database", TEXT), ("user", TEXT), ("cl_active", INT8), ("cl_waiting", INT8),
                 ("sv_active", INT8), ("sv_idle", INT8), ("sv_used", INT8), ("sv_tested", INT8),
                 ("sv_login", INT8), ("maxwait", INT8), ("maxwait_us", INT8), ("pool_mode", TEXT)]


def _pool_rows(instance) -> list[tuple]:
    """(route, row) per route: C's POOLS columns. cl_waiting counts the clients that hold no
    server and are not queued for one (C's "pending"); maxwait/maxwait_us how long the first
    client queued for a server has been waiting (seconds and the microseconds beyond them; C
    always shows 0)."""
    out = []
    router = instance.router
    now = time.monotonic()
    with router.lock:
        for r in router.routes.values():
            c = r.client_counts()
            waited = now - r.waiters[0].since if r.waiters else 0.0
            out.append((r, [r.db, r.user, c["active"], c["pending"], len(r.active), len(r.idle), 0,
                            0, 0, int(waited), int((waited - int(waited)) * 1e6), r.rule.pool]))
    return out


def show_pools(instance, client=None):
    return POOLS_COLUMNS, [row for _, row in _pool_rows(instance)]


def _quantile_name(q: float) -> str:
    return f"{q:.6g}"


def show_pools_extended(instance, client=None):
    """POOLS plus bytes_received, bytes_sent, tcp_conn_count and, per quantile of the console
    user's own rule (`quantiles`), query_<q> and transaction_<q> in µs from the route's
    sketches of the last two stats intervals; a last row 'aggregated' merges every route."""
    from odyssey_gevent.route import new_sketch
    quantiles = list(getattr(client.rule, "quantiles", None) or []) if client is not None else []
    cols = POOLS_COLUMNS + [("bytes_received", INT4), ("bytes_sent", INT4), ("tcp_conn_count", INT4)]
    for q in quantiles:
        cols += [(f"query_{_quantile_name(q)}", INT4), (f"transaction_{_quantile_name(q)}", INT4)]
    all_query, all_tx = new_sketch(), new_sketch()

    def values(query, tx) -> list[int]:
        out = []
        for q in quantiles:
            for sketch in (query, tx):
                v = sketch.get_quantile_value(q) if sketch is not None and sketch.count else None
                out.append(int(v) if v is not None and v > 0 else 0)
        return out

    rows = []
    for r, row in _pool_rows(instance):
        st = r.stats
        sketches = st.sketches()
        if sketches is not None:
            for total, part in zip((all_query, all_tx), sketches):
                if part.count:
                    total.merge(part)
        query, tx = sketches if sketches is not None else (None, None)
        rows.append(row + [st.bytes_recv, st.bytes_sent, r.tcp_connections] + values(query, tx))
    rows.append(["aggregated", "aggregated"] + [None] * 13 + values(all_query, all_tx))
    return cols, rows


def show_databases(instance, client=None):
    cols = [("name", TEXT), ("host", TEXT), ("port", INT8), ("database", TEXT), ("force_user", TEXT),
            ("pool_size", INT8), ("reserve_pool", INT8), ("pool_mode", TEXT), ("max_connections", INT8),
            ("current_connections", INT8), ("paused", INT8), ("disabled", INT8)]
    rows = []
    router = instance.router
    with router.lock:
        for r in router.routes.values():
            st = r.rule.storage
            rows.append([r.db, st.host if st else None, st.port if st else 0, r.rule.db_name, r.rule.user_name,
                         r.rule.pool_size, 0, r.rule.pool, r.rule.client_max or 0, len(r.clients),
                         1 if router.is_paused(r) else 0, 0])
    return cols, rows


def show_clients(instance, client=None):
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


def show_servers(instance, client=None):
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


def show_lists(instance, client=None):
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


def show_rules(instance, client=None):
    cols = [("database", TEXT), ("user", TEXT), ("address", TEXT), ("connection_type", TEXT), ("obsolete", BOOL)]
    return cols, [list(r) for r in show_rules_rows(instance.rules)]


def show_is_paused(instance, client=None):
    """True while a global PAUSE (PAUSE without a database) is on, as C's global flag."""
    return [("is_paused", BOOL)], [[instance.router.paused_all]]


def _server_statements(server) -> list:
    cache = server.prepared
    for _ in range(3):          # another machine may change it meanwhile (workers > 1)
        try:
            return list(cache.values()) if cache else []
        except RuntimeError:
            continue
    return []


def show_server_prep_stmts(instance, client=None):
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


def show_global_prepared_statements(instance, client=None):
    """The pool-wide statements of every route and how many client statements map to each."""
    cols = [("name", TEXT), ("definition", TEXT), ("refcount", TEXT)]
    rows = []
    for r in instance.router.snapshot():
        for stmt in r.prepared.snapshot():
            rows.append([stmt.name, stmt.definition, stmt.refcount])
    return cols, rows


# RouteStats.COUNTERS in this order: the 8 total_* columns, total_cancel_count, the parse counts
STATS_COUNTERS = ("count_tx", "count_query", "count_server_assignment", "bytes_recv", "bytes_sent", "tx_time",
                  "query_time", "wait_time", "count_cancel", "count_parse", "count_parse_reuse")
STATS_COLUMNS = ["total_xact_count", "total_query_count", "total_server_assignment_count", "total_received",
                 "total_sent", "total_xact_time", "total_query_time", "total_wait_time", "avg_xact_count",
                 "avg_query_count", "avg_server_assignment_count", "avg_recv", "avg_sent", "avg_xact_time",
                 "avg_query_time", "avg_wait_time", "total_parse_count", "total_parse_count_reuse",
                 "total_cancel_count"]


def show_stats(instance, client=None):
    """One row per database, summed over its routes (RouteStats): the totals, and the averages
    since the last stats_interval tick, as C computes them (od_stat_average: rates per second,
    times in µs per transaction, query and server assignment). total_parse_count counts the
    Parses the prepared-statement layer sent to servers, total_parse_count_reuse the times a
    server already had the statement a client's Parse, Bind, Describe or EXECUTE needed."""
    cols = [("database", TEXT)] + [(c, INT8) for c in STATS_COLUMNS]
    n = len(STATS_COUNTERS)
    cur: dict[str, list[int]] = {}
    prev: dict[str, list[int]] = {}
    for r in instance.router.snapshot():
        st = r.stats
        for acc, values in ((cur, st.snapshot()), (prev, st.prev)):
            t = acc.setdefault(r.db, [0] * n)
            for i, v in enumerate(values):
                t[i] += v
    interval = time.monotonic() - instance.router.stat_time
    rows = []
    for db in sorted(cur):
        c = cur[db]
        rows.append([db] + c[:8] + averages(tuple(c), tuple(prev[db]), interval) + [c[9], c[10], c[8]])
    return cols, rows


def show_errors(instance, client=None):
    """The router's errors, then the frontend's, each counted over the last five minutes
    (err_logger.py), in C's order and with C's names."""
    errors = instance.router.errors
    rows = [list(r) for r in errors.router.counts(ROUTER_ERRORS)]
    rows += [list(r) for r in errors.frontend.counts(FRONTEND_ERRORS)]
    return [("error_type", TEXT), ("count", INT8)], rows


def show_errors_per_route(instance, client=None):
    """Per route, as C: the frontend errors (kept for routes of rules naming both database and
    user; 0 for the others) and the per-route client_max refusals, with the rule's names."""
    rows = []
    for r in instance.router.snapshot():
        user, db = r.rule.user_name, r.rule.db_name
        for name, count in r.errors.counts(FRONTEND_ERRORS + ROUTE_ROUTER_ERRORS):
            rows.append([name, user, db, count])
    return [("error_type", TEXT), ("user", TEXT), ("database", TEXT), ("count", INT8)], rows


def _tls_columns(block) -> list:
    return [block.tls or "(None)", block.tls_cert_file or "(None)", block.tls_key_file or "(None)",
            block.tls_ca_file or "(None)", block.tls_protocols or "(None)"]


TLS_COLUMNS = [("tls", TEXT), ("tls_cert_file", TEXT), ("tls_key_file", TEXT), ("tls_ca_file", TEXT),
               ("tls_protocols", TEXT)]


def show_listen(instance, client=None):
    cols = [("host", TEXT), ("port", INT4)] + TLS_COLUMNS
    return cols, [[lst.host or "(None)", lst.port] + _tls_columns(lst) for lst in instance.config.listen]


def show_storages(instance, client=None):
    cols = [("type", TEXT), ("host", TEXT), ("port", INT4)] + TLS_COLUMNS
    rows = [[st.type or "remote", st.host or "(None)", st.port or 0] + _tls_columns(st)
            for st in instance.config.storages.values()]
    return cols, rows


HELP_TEXT = """Console usage
	SHOW COMMANDS|HELP
	SHOW STATS|POOLS|POOLS_EXTENDED|DATABASES|CLIENTS|SERVERS|LISTS|RULES|IS_PAUSED|VERSION
	SHOW ERRORS|ERRORS_PER_ROUTE|LISTEN|STORAGES|SERVER_PREP_STMTS|GLOBAL_PREPARED_STATEMENTS
	SHOW VERSION_EXTENDED|HOST_UTILIZATION|FDS
	KILL_CLIENT <client_id>
	PAUSE [database]
	RESUME [database]
	RELOAD
	SET key = arg (ignored)
	CREATE MODULE "python:<module>"
	DROP SERVERS
	DROP MODULE "python:<module>\""""


SHOW = {
    "stats": show_stats, "listen": show_listen, "storages": show_storages,
    "server_prep_stmts": show_server_prep_stmts, "global_prepared_statements": show_global_prepared_statements,
    "errors": show_errors, "errors_per_route": show_errors_per_route, "pools_extended": show_pools_extended,
    "version": show_version, "pools": show_pools, "databases": show_databases, "clients": show_clients,
    "servers": show_servers, "lists": show_lists, "rules": show_rules, "is_paused": show_is_paused,
    "version_extended": show_version_extended, "host_utilization": show_host_utilization, "fds": show_fds,
}
SHOW_TAGS = {"host_utilization": "HOST_UTILIZATION"}     # C's tag for it; every other SHOW says "SHOW"


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
    if verb in ("drop", "create"):
        reply = drop_create(instance, client, _words(query), query)
        if reply is not None:
            return reply
    if verb == "show" and len(tokens) >= 2 and tokens[1].lower() in ("help", "commands"):
        return be_write.notice_response("NOTICE", "00000", HELP_TEXT) + be_write.command_complete("SHOW")
    if verb == "reload" and len(tokens) == 1:
        instance.reload()
        return be_write.command_complete("RELOAD")
    if verb == "set":
        return be_write.command_complete("SET")
    if verb == "kill_client" and len(tokens) >= 2 and len(tokens[1]) == 13:
        return kill_client(instance, client, tokens[1])
    if verb in ("pause", "resume"):
        db = tokens[1] if len(tokens) >= 2 else None
        return pause_resume(instance, client, verb, db)
    if verb == "show" and len(tokens) >= 2:
        what = tokens[1].lower()
        handler = SHOW.get(what)
        if handler is not None:
            cols, rows = handler(instance, client)
            return _result(cols, rows, SHOW_TAGS.get(what, "SHOW"))
    raise FrontendError(error_codes.SYNTAX_ERROR, f"console command error: {query}")


def kill_client(instance, client, token: str) -> bytes:
    """KILL_CLIENT c<12 hex>: as C, the first character is skipped and the next 12 name the
    client; a token of another length is a command error, an unknown id is no error (the reply
    is ReadyForQuery alone, no CommandComplete, as C's). The victim ends at its next step with
    FATAL 08006 (frontend.py): a relay parked in its wait is woken in its own thread, a client
    waiting for a server is signalled by the router."""
    victim_id = "c" + token[1:].lower()
    instance.logger.info("console", client, None, "KILL_CLIENT %s", victim_id)
    victim = instance.router.kill(victim_id)
    if victim is not None and victim.relay is not None:
        relay.wake(victim.relay)
    return b""


_WORD = re.compile(r"""\s*(?:([A-Za-z][A-Za-z0-9_]*)|"((?:[^"\\\n]|\\.)*)"|'((?:[^'\\\n]|\\.)*)'|(\S))""")


def _words(query: str) -> list[tuple[str, str]]:
    """The console parser's tokens for DROP/CREATE: ("word", lower-case keyword), ("string",
    text of a "..." or '...' string) or ("symbol", one character), as C's od_parser reads them."""
    out = []
    pos = 0
    while True:
        m = _WORD.match(query, pos)
        if m is None or m.end() == pos:
            return out
        pos = m.end()
        word, dq, sq, sym = m.groups()
        if word is not None:
            out.append(("word", word.lower()))
        elif dq is not None or sq is not None:
            out.append(("string", dq if dq is not None else sq))
        else:
            out.append(("symbol", sym))


def drop_create(instance, client, words: list, query: str) -> bytes | None:
    """DROP SERVERS, CREATE MODULE "path", DROP MODULE "path" (admin); None for a command error.
    DROP SERVERS must end the input (`drop servers;` is an error) and its reply is ReadyForQuery
    alone, as C means it (C 1.5.1 answers every DROP SERVERS with 42601: its parser takes the
    query's terminating NUL for a token). The module commands answer INFO and no CommandComplete;
    a failure is C's pair of errors, 58000 and then 42601 `console command error` (what libpq
    clients report), ours with the reason in the first one's DETAIL."""
    verb = words[0][1]
    what = words[1] if len(words) > 1 else None
    if verb == "drop" and what == ("word", "servers") and len(words) == 2:
        marked = instance.router.drop_servers()
        instance.logger.info("console", client, None, "DROP SERVERS: %d servers marked offline", marked)
        return b""
    if what != ("word", "module") or len(words) < 3 or words[2][0] != "string":
        return None
    path = words[2][1]
    from odyssey_gevent import auth_module
    action = "loaded" if verb == "create" else "unloaded"
    instance.logger.info("console", client, None, "%s module with path %s",
                         "loading" if verb == "create" else "unloading", path)
    try:
        if verb == "create":
            auth_module.load(instance, path)
        else:
            auth_module.unload(instance, path)
    except auth_module.ModuleError as e:
        instance.logger.error("console", client, None, "module %s was not %s: %s", path, action, e)
        err = FrontendError(error_codes.SYSTEM_ERROR, f"module was NOT successfully {action}! Check logs for details",
                            detail=str(e))
        then = FrontendError(error_codes.SYNTAX_ERROR, f"console command error: {query}")
        show_id = client.rule.client_show_id
        return error_message(err, client.id, show_id) + error_message(then, client.id, show_id)
    prefix = error_prefix(client.id, client.rule.client_show_id)
    return be_write.notice_response("INFO", "00000", f"{prefix}module was successfully {action}!")


def pause_resume(instance, client, verb: str, db: str | None) -> bytes:
    """PAUSE / RESUME, for every database or one (C Odyssey's are global only): while paused,
    clients that hold no server get none (new transactions wait, running ones finish)."""
    router = instance.router
    where = f"database {db}" if db else "global"
    if verb == "pause":
        router.pause(db)
        instance.logger.info("pause", client, None, "%s pause is on", where)
        return be_write.command_complete("PAUSE")
    router.resume(db)
    instance.logger.info("pause", client, None, "%s pause is off", where)
    return be_write.command_complete("RESUME")


def _message_name(mtype: int) -> str:
    try:
        return FE(mtype).name.replace("_", " ").title().replace(" ", "")
    except ValueError:
        return chr(mtype)


def run(instance, client) -> Status:
    """The console's request loop: returns TERMINATE; client IO errors propagate (status.py)."""
    with instance.router.lock:       # a console client is served at once: SHOW POOLS says active
        if client.route is not None and client in client.route.clients:
            client.state = ClientState.ACTIVE
    only = (client.io,)
    while True:
        # KILL_CLIENT of a console client: seen within KILL_POLL_MS while it is silent (C looks
        # once a minute and before each command)
        while not client.killed and not wait_any(only, KILL_POLL_MS):
            pass
        if client.killed:
            return Status.ECLIENT_KILLED
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
