"""Console operations against a real PostgreSQL and real clients (psycopg2, pgbench, raw wire):
KILL_CLIENT wherever the victim is, PAUSE/RESUME, SHOW ERRORS/ERRORS_PER_ROUTE counts, SHOW
STATS times and averages, SHOW POOLS_EXTENDED quantiles (the reference §4, C's console.c)."""
from __future__ import annotations

import os
import re
import subprocess
import time

import psycopg2
import pytest

from kiwi import fe_write
from tests.integration.conftest import (backends, ensure_roles, module_pooler, odyssey_config, odyssey_text, rule,
                                       start_pooler,
                                       wait_for)
from tests.integration.wire import Wire, parse_fields, query

USER = "ops_user"        # transaction pool of 2 servers, quantiles on
SOLO = "ops_solo"        # transaction pool of 1 server: a second transaction must wait
TMO = "ops_tmo"          # ... and waits 300 ms at most (pool_timeout)
PREP = "ops_prep"        # transaction pool of 1 server, prepared statements across servers
DROP = "ops_drop"        # transaction pool of 2 servers for DROP SERVERS
KILLED_DETAIL = "Connection was killed by Odyssey configuration reloading or console command"


@pytest.fixture(scope="module")
def ops(pg, roles):
    ensure_roles(pg, USER, SOLO, TMO, PREP, DROP)
    text = odyssey_config(
        rule(PREP, "db1", pool="transaction", pool_size=1, pool_reserve_prepared_statement=True),
        rule(DROP, "db1", pool="transaction", pool_size=2),
        rule(USER, "db1", pool="transaction", pool_size=2, quantiles="0.5,0.99"),
        rule(SOLO, "db1", pool="transaction", pool_size=1, pool_timeout=0),
        rule(TMO, "db1", pool="transaction", pool_size=1, pool_timeout=300),
        rule("default", "console", pool="session", storage="local", role="admin", quantiles="0.5,0.99"),
        stats_interval=2,
    )
    text += 'storage "local" {\n    type "local"\n}\n'
    yield from module_pooler(pg, text)


def _console(p):
    w = Wire(p.port)
    assert w.login("admin", "console") is None
    return w


def _show(p, what: str) -> list[dict]:
    con = psycopg2.connect(p.dsn("admin", "console"))
    con.autocommit = True
    try:
        with con.cursor() as cur:
            cur.execute(f"SHOW {what}")
            names = [d.name for d in cur.description]
            return [dict(zip(names, r)) for r in cur.fetchall()]
    finally:
        con.close()


def _client_ids(p, user: str, state: str | None = None) -> list[str]:
    return [r["id"] for r in _show(p, "CLIENTS") if r["user"] == user and (state is None or r["state"] == state)]


def _errors(p) -> dict[str, int]:
    return {r["error_type"]: r["count"] for r in _show(p, "ERRORS")}


def _kill(p, client_id: str) -> None:
    con = _console(p)
    try:
        rows, err, status = con.simple_query(f"KILL_CLIENT {client_id}")
        assert (rows, err, status) == ([], None, "I")          # ReadyForQuery alone, as C
    finally:
        con.close()


def _assert_killed_fatal(w: Wire) -> None:
    """The victim reads C's FATAL and then the close."""
    got = w.read_until_closed(10)
    errs = [m for m in got if m[0] == b"E"]
    assert errs, got
    err = parse_fields(errs[-1][1])
    assert (err["S"], err["C"]) == ("FATAL", "08006"), err
    odyssey_text(err["M"], "Odyssey has dropped the connection")
    assert err["D"] == KILLED_DETAIL and err["H"] == "Try to reconnect", err


def _wire_client(p, user: str) -> tuple[Wire, str]:
    """A raw client logged in (ran one query) and its console id."""
    before = set(_client_ids(p, user))
    w = Wire(p.port)
    assert w.login(user, "db1") is None
    rows, err, _ = w.simple_query("select 1")
    assert err is None and rows == [["1"]]
    [cid] = set(_client_ids(p, user)) - before
    return w, cid


# -- KILL_CLIENT -------------------------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_kill_an_idle_client(ops):
    errors_before = _errors(ops)
    w, cid = _wire_client(ops, USER)
    try:
        _kill(ops, cid)
        _assert_killed_fatal(w)
    finally:
        w.close()
    wait_for(lambda: cid not in _client_ids(ops, USER), what="the killed client gone from SHOW CLIENTS")
    after = _errors(ops)
    assert after["OD_ECLIENT_KILLED"] == errors_before["OD_ECLIENT_KILLED"] + 1
    per_route = [r for r in _show(ops, "ERRORS_PER_ROUTE") if (r["user"], r["database"]) == (USER, "db1")]
    assert {r["error_type"]: r["count"] for r in per_route}["OD_ECLIENT_KILLED"] >= 1


@pytest.mark.timeout(30)
def test_kill_a_psycopg2_client_in_a_transaction_releases_its_server(ops, pg):
    con = psycopg2.connect(ops.dsn(USER, "db1"))
    try:
        cur = con.cursor()
        cur.execute("select pg_advisory_xact_lock(4242)")       # held until the transaction ends
        [cid] = _client_ids(ops, USER, "active")
        _kill(ops, cid)
        with pytest.raises(psycopg2.OperationalError):
            cur.execute("select 1")
        assert con.closed
    finally:
        con.close()
    # the server was rolled back (or closed): the lock is free for the next client
    other = psycopg2.connect(ops.dsn(USER, "db1"))
    try:
        cur = other.cursor()
        cur.execute("select pg_try_advisory_xact_lock(4242)")
        assert cur.fetchone() == (True,)
        other.rollback()
    finally:
        other.close()
    with psycopg2.connect(pg.dsn("postgres", "postgres")) as direct:
        cur = direct.cursor()
        cur.execute("select count(*) from pg_stat_activity where usename = %s and state like 'idle in%%'", (USER,))
        assert cur.fetchone() == (0,)


@pytest.mark.timeout(30)
def test_kill_a_client_waiting_for_a_server(ops):
    holder = psycopg2.connect(ops.dsn(SOLO, "db1"))
    waiter = None
    try:
        hcur = holder.cursor()
        hcur.execute("select 1")                                 # BEGIN: the only server is held
        waiter = Wire(ops.port)
        assert waiter.login(SOLO, "db1") is None
        waiter.send(b"Q" + (len(b"select 2\0") + 4).to_bytes(4, "big") + b"select 2\0")
        [cid] = wait_for(lambda: _client_ids(ops, SOLO, "queue"), what="a client queued for the server")
        pools = [r for r in _show(ops, "POOLS") if r["user"] == SOLO]
        assert pools and pools[0]["sv_active"] == 1
        assert pools[0]["maxwait"] * 1_000_000 + pools[0]["maxwait_us"] > 0     # it has been waiting
        _kill(ops, cid)
        _assert_killed_fatal(waiter)
        holder.commit()                                          # the holder is untouched
        hcur.execute("select 3")
        assert hcur.fetchone() == (3,)
        holder.commit()
    finally:
        holder.close()
        if waiter is not None:
            waiter.close()


@pytest.mark.timeout(20)
def test_kill_client_unknown_and_malformed_ids(ops):
    con = _console(ops)
    try:
        assert con.simple_query("KILL_CLIENT c000000000000") == ([], None, "I")   # no such client: no error
        _, err, status = con.simple_query("KILL_CLIENT c12")
        assert err is not None and err["C"] == "42601" and status == "I", err
        odyssey_text(err["M"], "console command error: KILL_CLIENT c12")
    finally:
        con.close()


# -- PAUSE / RESUME ---------------------------------------------------------------------------------
@pytest.mark.timeout(40)
def test_pause_holds_new_transactions_and_lets_running_ones_finish(ops):
    running = psycopg2.connect(ops.dsn(USER, "db1"))
    waiting = None
    con = _console(ops)
    try:
        rcur = running.cursor()
        rcur.execute("select 1")                                  # a transaction holds a server
        waiting = Wire(ops.port)
        assert waiting.login(USER, "db1") is None
        assert con.simple_query("PAUSE") == ([], None, "I")
        assert _show(ops, "IS_PAUSED") == [{"is_paused": True}]
        assert {r["name"]: r["paused"] for r in _show(ops, "DATABASES")}["db1"] == 1
        waiting.send(b"Q" + (len(b"select 2\0") + 4).to_bytes(4, "big") + b"select 2\0")
        wait_for(lambda: _client_ids(ops, USER, "queue"), what="the new transaction queued while paused")
        rcur.execute("select 11")                                 # the running transaction goes on ...
        assert rcur.fetchone() == (11,)
        running.commit()                                          # ... and ends
        assert _client_ids(ops, USER, "queue"), "a paused transaction got a server"
        assert con.simple_query("RESUME") == ([], None, "I")
        tag, _ = waiting.read_message()
        while tag != b"D":
            assert tag in (b"T",), tag
            tag, body = waiting.read_message()
        assert body.endswith(b"2")
        assert _show(ops, "IS_PAUSED") == [{"is_paused": False}]
        # a pause of another database does not hold db1
        assert con.simple_query("PAUSE postgres") == ([], None, "I")
        rcur.execute("select 12")
        assert rcur.fetchone() == (12,)
        running.commit()
        assert con.simple_query("RESUME postgres") == ([], None, "I")
    finally:
        con.simple_query("RESUME")
        con.close()
        running.close()
        if waiting is not None:
            waiting.close()


# -- SHOW ERRORS ------------------------------------------------------------------------------------
@pytest.mark.timeout(20)
def test_show_errors_counts_a_route_not_found(ops):
    before = _errors(ops)["OD_ROUTER_ERROR_NOT_FOUND"]
    w = Wire(ops.port)
    try:
        err = w.login("nobody_here", "db1")
        assert err is not None and err["C"] == "3D000", err
    finally:
        w.close()
    assert _errors(ops)["OD_ROUTER_ERROR_NOT_FOUND"] == before + 1


@pytest.mark.timeout(20)
def test_show_errors_counts_a_pool_timeout(ops):
    before = _errors(ops)["OD_EATTACH_TOO_MANY_CONNECTIONS"]
    holder = psycopg2.connect(ops.dsn(TMO, "db1"))
    try:
        holder.cursor().execute("select 1")                     # holds the only server
        late = Wire(ops.port)
        try:
            assert late.login(TMO, "db1") is None
            late.send(b"Q" + (len(b"select 2\0") + 4).to_bytes(4, "big") + b"select 2\0")
            errs = [parse_fields(body) for tag, body in late.read_until_closed(10) if tag == b"E"]
            assert errs and errs[0]["C"] == "53300", errs
            odyssey_text(errs[0]["M"], "too many active clients")
        finally:
            late.close()
    finally:
        holder.close()
    assert _errors(ops)["OD_EATTACH_TOO_MANY_CONNECTIONS"] == before + 1
    per_route = {r["error_type"]: r["count"] for r in _show(ops, "ERRORS_PER_ROUTE")
                 if (r["user"], r["database"]) == (TMO, "db1")}
    assert per_route["OD_EATTACH_TOO_MANY_CONNECTIONS"] == 1


# -- SHOW STATS / POOLS_EXTENDED with pgbench -------------------------------------------------------------
@pytest.mark.timeout(60)
def test_stats_times_and_quantiles_move_as_pgbench_runs(ops, tmp_path):
    script = tmp_path / "q.sql"
    script.write_text("select pg_sleep(0.002);\n")
    env = dict(os.environ, PGHOST="127.0.0.1", PGPORT=str(ops.port), PGUSER=USER, PGSSLMODE="disable")
    out = subprocess.run(["pgbench", "-n", "-c", "2", "-t", "50", "-f", str(script), "db1"], env=env,
                         capture_output=True, text=True, timeout=40)
    assert out.returncode == 0, out.stdout + out.stderr
    failed = re.search(r"number of failed transactions: (\d+)", out.stdout)
    assert failed is None or failed.group(1) == "0", out.stdout
    # quantiles first: the sketches cover the last two stats intervals
    ext = [r for r in _show(ops, "POOLS_EXTENDED") if r["user"] == USER]
    assert ext and ext[0]["bytes_received"] > 0 and ext[0]["bytes_sent"] > 0 and ext[0]["tcp_conn_count"] >= 2
    assert ext[0]["query_0.99"] >= ext[0]["query_0.5"] >= 1900          # µs, 1% relative accuracy
    assert ext[0]["transaction_0.5"] >= 1900
    agg = _show(ops, "POOLS_EXTENDED")[-1]
    assert agg["database"] == agg["user"] == "aggregated" and agg["cl_active"] is None
    assert agg["query_0.5"] >= 1900
    stats = {r["database"]: r for r in _show(ops, "STATS")}["db1"]
    assert stats["total_xact_count"] >= 100 and stats["total_query_count"] >= 100
    # each query sleeps 2 ms: the µs totals must show at least that
    assert stats["total_query_time"] >= 100 * 2000 and stats["total_xact_time"] >= 100 * 2000
    assert stats["total_server_assignment_count"] >= 100

    # the averages are over the time since the last stats_interval tick (2 s): run slow queries
    # until a SHOW STATS falls in an interval that saw only those
    con = psycopg2.connect(ops.dsn(USER, "db1"))
    con.autocommit = True
    try:
        def averaged():
            with con.cursor() as cur:
                for _ in range(5):
                    cur.execute("select pg_sleep(0.02)")
            row = {r["database"]: r for r in _show(ops, "STATS")}["db1"]
            # once an interval holds only these 20 ms queries (pgbench's 2 ms ones are older) and
            # at least one was sent in it (one sent before the tick may end just after it)
            ok = row["avg_query_count"] > 0 and row["avg_recv"] > 0 and row["avg_query_time"] >= 15000
            return row if ok else None
        row = wait_for(averaged, timeout=20, what="averages over an interval of 20 ms queries")
    finally:
        con.close()
    assert row["avg_xact_time"] >= 15000
    assert row["avg_xact_count"] > 0 and row["avg_recv"] > 0 and row["avg_sent"] > 0, row


@pytest.mark.timeout(20)
def test_the_console_client_shows_as_active(ops):
    rows = [r for r in _show(ops, "POOLS") if r["database"] == "console"]
    assert rows and rows[0]["cl_active"] >= 1 and rows[0]["cl_waiting"] == 0


@pytest.mark.timeout(40)
def test_kill_client_across_worker_threads(pg, roles):
    """workers 2: the console and its victim are accepted one after the other, so they run in
    different worker threads; the victim's relay is woken in its own hub."""
    ensure_roles(pg, USER)
    text = odyssey_config(rule(USER, "db1", pool="transaction", pool_size=2),
                          rule("default", "console", pool="session", storage="local", role="admin"), workers=2,
                          log_format=r"%p %T %l [%i %s] (%c) %m\n")
    text += 'storage "local" {\n    type "local"\n}\n'
    p = start_pooler(pg, text)
    victim = console = None
    try:
        victim = Wire(p.port)
        assert victim.login(USER, "db1") is None
        assert victim.simple_query("select 1")[1] is None
        console = _console(p)
        rows, err, _ = console.simple_query("show clients")
        assert err is None
        [cid] = [r[13] for r in rows if r[1] == USER]
        assert console.simple_query(f"kill_client {cid}") == ([], None, "I")
        _assert_killed_fatal(victim)
        rows, _, _ = console.simple_query("show errors")
        assert ["OD_ECLIENT_KILLED", "1"] in rows
        # the log's thread ids (%T): the console ran KILL_CLIENT in one worker, the victim
        # was told in the other
        log = p.log()
        killer_tid = re.search(rf"^\d+ (\S+) info \[\S+ \S+\] \(console\) KILL_CLIENT {cid}$", log, re.M)
        victim_tid = re.search(rf"^\d+ (\S+) info \[{cid} \S+\] \(main\) client killed by", log, re.M)
        assert killer_tid and victim_tid, log[-3000:]
        assert killer_tid.group(1) != victim_tid.group(1)
    finally:
        for w in (victim, console):
            if w is not None:
                w.close()
        p.stop()


@pytest.mark.timeout(40)
def test_show_errors_counts_client_max_refusals(pg, roles):
    """Global client_max (refused at accept: OD_ROUTER_ERROR_LIMIT) and a route's client_max
    (OD_ROUTER_ERROR_LIMIT_ROUTE, also per route), as C counts them."""
    ensure_roles(pg, USER)
    text = odyssey_config(rule(USER, "db1", pool="transaction", client_max=1),
                          rule("default", "console", pool="session", storage="local", role="admin"), client_max=3)
    text += 'storage "local" {\n    type "local"\n}\n'
    p = start_pooler(pg, text)
    held = []
    try:
        held.append(Wire(p.port))
        assert held[0].login(USER, "db1") is None
        w = Wire(p.port)
        err = w.login(USER, "db1")                              # the route's client_max
        w.close()
        assert err is not None and err["C"] == "53300", err
        held.append(Wire(p.port))
        held.append(Wire(p.port))                                 # accepted: 3 of client_max 3
        w = Wire(p.port)
        with pytest.raises((EOFError, ConnectionError)):
            err = w.login(USER, "db1")                           # the 4th socket: refused at accept
            assert err is not None and err["C"] == "53300", err
            w.read_message()
        w.close()
        for h in held[1:]:
            h.close()
        del held[1:]
        con = wait_for(lambda: _try_console(p), what="a console connection under client_max")
        try:
            rows, _, _ = con.simple_query("show errors")
            counts = dict((r[0], int(r[1])) for r in rows)
            # (a console login racing the close of the held sockets may be refused too)
            assert counts["OD_ROUTER_ERROR_LIMIT"] >= 1 and counts["OD_ROUTER_ERROR_LIMIT_ROUTE"] == 1, counts
            rows, _, _ = con.simple_query("show errors_per_route")
            assert ["OD_ROUTER_ERROR_LIMIT_ROUTE", USER, "db1", "1"] in rows, rows
        finally:
            con.close()
    finally:
        for h in held:
            h.close()
        p.stop()


def _try_console(p):
    try:
        return _console(p)
    except (EOFError, AssertionError, ConnectionError):
        return None


@pytest.mark.timeout(30)
def test_kill_a_console_client(ops):
    victim = _console(ops)
    try:
        assert victim.simple_query("show version")[1] is None
        # console clients now: the victim and the psycopg2 connection that asks (closed after)
        before = {r["id"] for r in _show(ops, "CLIENTS") if r["database"] == "console"}
        killer = _console(ops)
        try:
            rows, _, _ = killer.simple_query("show clients")
            [victim_id] = before & {r[13] for r in rows if r[2] == "console"}
            assert killer.simple_query(f"kill_client {victim_id}") == ([], None, "I")
        finally:
            killer.close()
        _assert_killed_fatal(victim)
    finally:
        victim.close()


# -- DROP SERVERS ------------------------------------------------------------------------------------
def _pid(con) -> int:
    with con.cursor() as cur:
        cur.execute("select pg_backend_pid()")
        return cur.fetchone()[0]


@pytest.mark.timeout(30)
def test_drop_servers_closes_the_old_servers_and_new_transactions_get_new_ones(ops, pg):
    holder = psycopg2.connect(ops.dsn(DROP, "db1"))           # keeps its server in a transaction
    other = psycopg2.connect(ops.dsn(DROP, "db1"))
    other.autocommit = True                                   # its server goes back to the pool
    console = _console(ops)
    try:
        held, idle = _pid(holder), _pid(other)
        assert held != idle
        assert {pid for pid, *_ in backends(pg, DROP)} == {held, idle}
        console.send(query("DROP SERVERS;"))                    # must end the input, as C
        assert [t for t, _ in _messages_until_ready(console)] == [b"E", b"Z"]
        console.send(query("DROP SERVERS"))
        assert [t for t, _ in _messages_until_ready(console)] == [b"Z"]     # no CommandComplete, as C
        servers = [r for r in _show(ops, "SERVERS") if r["user"] == DROP]
        assert len(servers) == 2 and {r["offline"] for r in servers} == {"1"}, servers
        # the idle one is closed (by the cron's expire or the next attach), not reused
        wait_for(lambda: idle not in {pid for pid, *_ in backends(pg, DROP)}, what="the idle server closed")
        new = _pid(other)
        assert new not in (held, idle)
        # the one inside a transaction serves it to the end, then is closed at its release
        assert _pid(holder) == held
        holder.commit()
        wait_for(lambda: held not in {pid for pid, *_ in backends(pg, DROP)}, what="the released server closed")
        assert _pid(holder) not in (held, idle)
        holder.commit()
        servers = [r for r in _show(ops, "SERVERS") if r["user"] == DROP]
        assert servers and {r["offline"] for r in servers} == {"0"}, servers
    finally:
        console.close()
        holder.close()
        other.close()


def _messages_until_ready(w: Wire) -> list[tuple[bytes, bytes]]:
    got = []
    while True:
        got.append(w.read_message())
        if got[-1][0] == b"Z":
            return got


# -- SHOW STATS parse counts -----------------------------------------------------------------------
def _parse_counts(p) -> tuple[int, int]:
    row = {r["database"]: r for r in _show(p, "STATS")}["db1"]
    return row["total_parse_count"], row["total_parse_count_reuse"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["extended", "simple"])
def test_stats_count_repeated_requests_exactly(ops, tmp_path, mode):
    """pgbench repeats one request, so the relay soon knows how the request and its reply are
    laid out and no longer walks them message by message: SHOW STATS still counts every
    transaction and query once, and a second run, which the remembered layouts serve from its
    first transaction, moves the byte counters exactly as the first run did."""
    script = tmp_path / "one.sql"
    script.write_text("select 1;\n")
    env = dict(os.environ, PGHOST="127.0.0.1", PGPORT=str(ops.port), PGUSER=USER, PGSSLMODE="disable")
    columns = ("total_xact_count", "total_query_count", "total_received", "total_sent")

    def totals():       # no row before the database's first traffic
        row = {r["database"]: r for r in _show(ops, "STATS")}.get("db1", dict.fromkeys(columns, 0))
        return [row[c] for c in columns]

    moved = []
    for _ in range(2):
        before = totals()
        out = subprocess.run(["pgbench", "-n", "-c", "2", "-t", "50", "-M", mode, "-f", str(script), "db1"],
                             env=env, capture_output=True, text=True, timeout=40)
        assert out.returncode == 0, out.stdout + out.stderr
        moved.append([b - a for a, b in zip(before, totals())])
    for xacts, queries, received, sent in moved:
        assert (xacts, queries) == (100, 100)
        assert received > 100 * len("select 1") and sent > 0
    assert moved[0] == moved[1]


@pytest.mark.timeout(30)
def test_show_stats_counts_parses_sent_and_reused(ops):
    """pool_reserve_prepared_statement: total_parse_count counts the Parses sent to a server for a
    client's statement, total_parse_count_reuse the times the server already had it (C's meaning)."""
    parse, reuse = _parse_counts(ops)
    a, b = Wire(ops.port), Wire(ops.port)
    try:
        assert a.login(PREP, "db1") is None and b.login(PREP, "db1") is None
        sql = "select 40 + 2 /* parse counts */"
        a.send(fe_write.parse("s1", sql) + fe_write.bind("", "s1") + fe_write.execute() + fe_write.sync())
        assert [t for t, _ in _messages_until_ready(a)] == [b"1", b"2", b"D", b"C", b"Z"]
        # the Parse had to prepare it on the server; the Bind after it found it there (as C counts)
        assert _parse_counts(ops) == (parse + 1, reuse + 1)
        a.send(fe_write.bind("", "s1") + fe_write.execute() + fe_write.sync())
        assert [t for t, _ in _messages_until_ready(a)] == [b"2", b"D", b"C", b"Z"]
        assert _parse_counts(ops) == (parse + 1, reuse + 2)
        # another client, its own name for the same text, on the route's one server
        b.send(fe_write.parse("mine", sql) + fe_write.bind("", "mine") + fe_write.execute() + fe_write.sync())
        assert [t for t, _ in _messages_until_ready(b)] == [b"1", b"2", b"D", b"C", b"Z"]
        assert _parse_counts(ops) == (parse + 1, reuse + 4)             # its Parse and its Bind
    finally:
        a.close()
        b.close()


@pytest.mark.timeout(60)
def test_drop_servers_under_pgbench_fails_no_transaction(ops, pg, tmp_path):
    """Servers dropped while pgbench runs finish what they serve; every transaction succeeds."""
    env = dict(os.environ, PGHOST="127.0.0.1", PGPORT=str(ops.port), PGUSER=DROP, PGSSLMODE="disable")
    script = tmp_path / "q.sql"
    script.write_text("select 1;\n")
    bench = subprocess.Popen(["pgbench", "-n", "-c", "4", "-T", "2", "-f", str(script), "db1"], env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    pids_seen = set()
    drops = 0
    try:
        while bench.poll() is None:
            con = _console(ops)
            try:
                con.send(query("DROP SERVERS"))
                assert [t for t, _ in _messages_until_ready(con)] == [b"Z"]
                drops += 1
            finally:
                con.close()
            pids_seen |= {pid for pid, *_ in backends(pg, DROP)}
            time.sleep(0.1)
        out, err = bench.communicate(timeout=30)
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.communicate()
    assert bench.returncode == 0, out + err
    failed = re.search(r"number of failed transactions: (\d+)", out)
    assert failed is None or failed.group(1) == "0", out
    assert drops >= 1 and len(pids_seen) > 2, (drops, pids_seen)        # servers were replaced
