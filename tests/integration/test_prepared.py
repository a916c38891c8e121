"""Prepared statements in transaction and statement pooling (issue 8): with
`pool_reserve_prepared_statement yes` a client's named statements (protocol-level Parse and
SQL-level PREPARE) follow it to whichever server runs its next transaction, and everything the
client can observe (replies, errors, their order) is what a direct PostgreSQL connection gives.

Most checks run the same message sequence through the pooler and straight on PostgreSQL and
compare the whole replies. `Shuffler` makes a pool_size-2 route hand the test client the other
server at every step, so a pooler that forwards names unchanged is caught deterministically.
"""
from __future__ import annotations

import asyncio
import os
import re
import struct
import subprocess
import threading

import asyncpg
import psycopg
import psycopg2
import pytest

from kiwi import fe_write as fw
from kiwi.fe_read import read_row_description
from scripts.pooler import rss_kib
from tests.integration.conftest import (backends, direct, ensure_roles, module_pooler, odyssey_config,
                                        rule, wait_for)
from tests.integration.wire import Wire, decode_row, parse_fields

DB = "db1"
BENCH_DB = "pstmt_bench"

# one role (and route) per test, so backend counts in pg_stat_activity are the test's own
TX = dict(pool="transaction", pool_reserve_prepared_statement=True)
ROUTES = {
    "pstmt_async": dict(TX, pool_size=2),
    "pstmt_pg3": dict(TX, pool_size=2),
    "pstmt_dealloc": dict(TX, pool_size=1),
    "pstmt_bench": dict(TX, pool_size=4),
    "pstmt_raw": dict(TX, pool_size=2),
    "pstmt_err": dict(TX, pool_size=2, pool_timeout=4000),    # Shuffler routes: a server kept
    "pstmt_sql": dict(TX, pool_size=2, pool_timeout=4000),    # by mistake fails in 4 s
    "pstmt_mem": dict(TX, pool_size=1),
    "pstmt_stmt": dict(TX, pool="statement", pool_size=1),
    "pstmt_plan": dict(TX, pool_size=1, server_drop_on_cached_plan_error=True),
    "pstmt_console": dict(TX, pool_size=1),
}


@pytest.fixture(scope="module")
def pp(pg, roles):
    """The pooler with every route of this file and an admin console."""
    ensure_roles(pg, *ROUTES)
    text = odyssey_config(
        *(rule(user, **items) for user, items in ROUTES.items()),
        rule("default", "console", pool="session", storage="local", role="admin"),
    )
    text += 'storage "local" {\n    type "local"\n}\n'
    yield from module_pooler(pg, text)


def make_table(pg, name: str, ddl: str, user: str, db: str = DB) -> None:
    with direct(pg, db) as con, con.cursor() as cur:
        cur.execute(f"drop table if exists {name}; create table {name} ({ddl}); grant all on {name} to {user}")


def direct_count(pg, table: str, db: str = DB) -> int:
    with direct(pg, db) as con, con.cursor() as cur:
        cur.execute(f"select count(*) from {table}")
        return cur.fetchone()[0]


# -- raw protocol --------------------------------------------------------------------------------------
P = fw.parse
SYNC = fw.sync()


def B(stmt: str, *params: str) -> bytes:
    return fw.bind("", stmt, params)


def E() -> bytes:
    return fw.execute("", 0)


def DS(name: str) -> bytes:
    return fw.describe("S", name)


def CS(name: str) -> bytes:
    return fw.close("S", name)


Q = fw.query


def count_ready(data: bytes) -> int:
    """How many ReadyForQuery a batch of frontend messages earns (Sync and Query messages)."""
    n = pos = 0
    while pos < len(data):
        if data[pos:pos + 1] in (b"S", b"Q"):
            n += 1
        pos += 1 + struct.unpack_from("!I", data, pos + 1)[0]
    return n


class Raw:
    """A raw protocol client logged in to `port` (the pooler or PostgreSQL itself)."""

    def __init__(self, port: int, user: str, db: str = DB):
        self.w = Wire(port, timeout=20)
        err = self.w.login(user, db)
        assert err is None, f"login refused: {err}"
        self.pending = 0

    def send(self, *msgs: bytes) -> None:
        data = b"".join(msgs)
        self.pending += count_ready(data)
        self.w.send(data)

    def recv(self) -> list[tuple[bytes, bytes]]:
        """Every reply up to the ReadyForQuery of everything sent (ParameterStatus left out)."""
        got = []
        while self.pending:
            tag, body = self.w.read_message()
            if tag == b"S":
                continue
            got.append((tag, body))
            if tag == b"Z":
                self.pending -= 1
        return got

    def run(self, *msgs: bytes) -> list[tuple]:
        self.send(*msgs)
        return shape(self.recv())

    def rows(self, sql: str) -> list[list]:
        replies = self.run(Q(sql))
        errors = [r for r in replies if r[0] == "E"]
        assert not errors, f"{sql!r}: {errors}"
        return [list(r[1:]) for r in replies if r[0] == "D"]

    def close(self) -> None:
        try:
            self.w.send(fw.terminate())
        except OSError:
            pass
        self.w.close()


def shape(replies) -> list[tuple]:
    """Replies in a comparable form: errors as (E, severity, SQLSTATE, message), rows as text,
    command tags, ReadyForQuery status, column names and types; other messages by type."""
    out = []
    for tag, body in replies:
        t = tag.decode()
        if tag in (b"E", b"N"):
            f = parse_fields(body)
            out.append((t, f.get("S"), f.get("C"), f.get("M")))
        elif tag == b"D":
            out.append((t, *decode_row(body)))
        elif tag == b"C":
            out.append((t, body.rstrip(b"\0").decode()))
        elif tag == b"Z":
            out.append((t, body.decode()))
        elif tag == b"T":
            out.append((t, *((c.name, c.type_oid) for c in read_row_description(body))))
        elif tag == b"t":
            out.append((t, body.hex()))
        else:
            out.append((t,))
    return out


class Shuffler:
    """Two more clients of a pool_size-2 transaction route that keep one of its two servers in an
    open transaction, and swap which one at every step(): a third client that is between
    transactions when step() runs gets the other server for its next transaction.

    Precondition: no other client of the route holds a server while step() runs."""

    def __init__(self, pooler, user: str):
        self.holders = [psycopg2.connect(pooler.dsn(user, DB)) for _ in range(2)]   # not autocommit
        self.current = 0
        self.pids = [self._hold(0)]

    def _hold(self, i: int) -> int:
        cur = self.holders[i].cursor()
        cur.execute("select pg_backend_pid()")
        return cur.fetchone()[0]

    def step(self) -> None:
        other = 1 - self.current
        try:
            self.pids.append(self._hold(other))  # takes the server the test client just left
        except psycopg2.Error as e:
            raise AssertionError("the test client did not give its server back after its last step "
                                 f"(pool_timeout waiting for it): {e!r}") from None
        self.holders[self.current].rollback()    # and frees the one held so far
        self.current = other

    def close(self) -> None:
        for h in self.holders:
            h.close()


def compare_with_postgres(pp, pg, user: str, steps: list[list[bytes]], shuffle: bool = True):
    """Run `steps` (each a list of frontend messages sent in one write) through the pooler, with
    the client moved to the other server between steps, and on a direct PostgreSQL connection.
    Returns (pooler replies, direct replies), one shaped list per step."""
    ours, theirs = [], []
    shuffler = Shuffler(pp, user) if shuffle else None
    client = Raw(pp.port, user)
    try:
        for i, step in enumerate(steps):
            if shuffler is not None and i > 0:
                try:
                    shuffler.step()
                except AssertionError as e:
                    raise AssertionError(f"after step {i - 1} {ours[-1]}: {e}") from None
            ours.append(client.run(*step))
        if shuffler is not None:
            assert len(set(shuffler.pids)) == 2, f"the steps did not alternate servers: {shuffler.pids}"
    finally:
        client.close()
        if shuffler is not None:
            shuffler.close()
    ref = Raw(pg.port, user)
    try:
        for step in steps:
            theirs.append(ref.run(*step))
    finally:
        ref.close()
    return ours, theirs


def assert_same(ours, theirs):
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert a == b, f"step {i}: through the pooler {a}\n            directly       {b}"
    assert len(ours) == len(theirs)


# -- 1. asyncpg ---------------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_asyncpg_prepared_statements_on_a_small_transaction_pool(pp, pg):
    """8 asyncpg connections (named statements for every query, a cache of 3 for half of them so
    evicted statements are closed) on a pool of 2 servers."""
    user = "pstmt_async"
    make_table(pg, "pstmt_async_t", "k int, i int", user)

    async def client(k: int) -> None:
        cache = 3 if k % 2 else 100
        con = await asyncpg.connect(host="127.0.0.1", port=pp.port, user=user, database=DB, ssl=False,
                                    timeout=20, statement_cache_size=cache)
        try:
            for i in range(25):
                assert await con.fetchval("select $1::int + $2", i, k) == i + k
            stmt = await con.prepare("select $1::int * $2::int, $3::text")
            for i in range(20):
                assert tuple(await stmt.fetchrow(i, k, f"c{k}")) == (i * k, f"c{k}")
            for rnd in range(2):            # more distinct queries than the small cache holds
                for j in range(6):
                    assert await con.fetchval(f"select $1::int + {j}", rnd) == rnd + j
            await con.executemany("insert into pstmt_async_t (k, i) values ($1, $2)",
                                  [(k, i) for i in range(40)])
            assert await con.fetchval("select count(*) from pstmt_async_t where k = $1", k) == 40
            assert await stmt.fetchval(2, 21, "x") == 42       # still valid after all that
        finally:
            await con.close()

    async def main() -> None:
        await asyncio.gather(*(client(k) for k in range(8)))

    asyncio.run(main())
    assert direct_count(pg, "pstmt_async_t") == 8 * 40
    assert len(backends(pg, user)) <= 2


# -- 2. psycopg 3 -------------------------------------------------------------------------------------
def _psycopg3_client(port: int, user: str, k: int, threshold: int | None, prepared_max: int | None):
    kw = {} if threshold is None else {"prepare_threshold": threshold}
    with psycopg.connect(f"host=127.0.0.1 port={port} user={user} dbname={DB} sslmode=disable",
                         autocommit=True, **kw) as con:
        if prepared_max is not None:
            con.prepared_max = prepared_max            # evictions: psycopg sends Close (libpq >= 17)
        for i in range(12):                            # > 5: prepared also with the default threshold
            assert con.execute("select %s::int + %s::int", (i, k)).fetchone() == (i + k,)
            assert con.execute("select %s::text || 'x'", (str(i),)).fetchone() == (f"{i}x",)
        with con.pipeline():
            curs = [con.execute("select %s::int * 3, %s::int", (i, k)) for i in range(30)]
        assert [c.fetchone() for c in curs] == [(i * 3, k) for i in range(30)]
        with con.cursor() as cur:
            cur.executemany("insert into pstmt_pg3_t (k, i) values (%s, %s)", [(k, i) for i in range(30)])
        for _ in range(7):
            assert con.execute("select count(*) from pstmt_pg3_t where k = %s", (k,)).fetchone() == (30,)
        for rnd in range(2):
            for j in range(8):
                assert con.execute(f"select %s::int + {j}", (rnd,)).fetchone() == (rnd + j,)
        con.execute("DEALLOCATE ALL")
        for i in range(8):                            # psycopg 3 prepares them again
            assert con.execute("select %s::int + %s::int", (i, k)).fetchone() == (i + k,)
        with con.pipeline():
            curs = [con.execute("select %s::int * 3, %s::int", (i, k)) for i in range(10)]
        assert [c.fetchone() for c in curs] == [(i * 3, k) for i in range(10)]


@pytest.mark.timeout(60)
def test_psycopg3_prepared_statements_concurrently(pp, pg):
    """6 psycopg 3 threads on 2 servers: prepare_threshold 0, the default threshold, and a
    statement cache of 3 (evictions), with pipelines, executemany and DEALLOCATE ALL."""
    user = "pstmt_pg3"
    make_table(pg, "pstmt_pg3_t", "k int, i int", user)
    kinds = [(0, None), (None, None), (0, 3)] * 2
    errors: list[BaseException] = []

    def run(k, threshold, prepared_max):
        try:
            _psycopg3_client(pp.port, user, k, threshold, prepared_max)
        except BaseException as e:       # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(k, *kind)) for k, kind in enumerate(kinds)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(40)
    assert not any(t.is_alive() for t in threads), "a psycopg 3 client hangs"
    assert not errors, f"{len(errors)} client(s) failed, first: {errors[0]!r}"
    assert direct_count(pg, "pstmt_pg3_t") == len(kinds) * 30
    assert len(backends(pg, user)) <= 2


@pytest.mark.timeout(30)
def test_deallocate_all_of_one_client_leaves_the_others_statements(pp):
    """One server, two clients: B's DEALLOCATE ALL (and the DEALLOCATE ALL psycopg 3 sends after
    it to clear its cache) removes B's statements only; A's prepared statement still works."""
    dsn = pp.dsn("pstmt_dealloc", DB)
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=0) as a, \
            psycopg.connect(dsn, autocommit=True, prepare_threshold=0) as b:
        assert a.execute("select %s::int * 2", (21,)).fetchone() == (42,)
        assert b.execute("select %s::int * 3", (1,)).fetchone() == (3,)
        pid = a.execute("select pg_backend_pid()").fetchone()[0]
        assert b.execute("select pg_backend_pid()").fetchone()[0] == pid      # pool_size 1
        b.execute("DEALLOCATE ALL")
        assert a.execute("select %s::int * 2", (5,)).fetchone() == (10,)
        assert b.execute("select %s::int * 3", (2,)).fetchone() == (6,)
        a.execute("DEALLOCATE ALL")
        assert b.execute("select %s::int * 3", (3,)).fetchone() == (9,)
        assert a.execute("select %s::int * 2", (6,)).fetchone() == (12,)


# -- 3. pgbench -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bench_db(pg, pp):
    if pg.psql(f"select 1 from pg_database where datname = '{BENCH_DB}'") != "1":
        pg.psql(f"CREATE DATABASE {BENCH_DB};")
    pg.run(["pgbench", "-i", "-s", "1", "-q", "-h", pg.sockdir, "-p", str(pg.port), "-U", "postgres", BENCH_DB])
    pg.psql("GRANT SELECT ON ALL TABLES IN SCHEMA public TO pstmt_bench;", db=BENCH_DB)
    return BENCH_DB


@pytest.mark.timeout(60)
@pytest.mark.parametrize("protocol,seconds", [("prepared", 3), ("extended", 2), ("simple", 2)])
def test_pgbench_20_clients_on_4_servers(pp, pg, bench_db, protocol, seconds):
    env = dict(os.environ, PGHOST="127.0.0.1", PGPORT=str(pp.port), PGUSER="pstmt_bench",
               PGDATABASE=bench_db, PGSSLMODE="disable", PGCONNECT_TIMEOUT="10")
    env.pop("PGPASSWORD", None)
    env.pop("PGOPTIONS", None)
    out = subprocess.run(["pgbench", "-n", "-S", "-M", protocol, "-c", "20", "-j", "2", "-T", str(seconds),
                          bench_db], env=env, capture_output=True, text=True, timeout=45)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    processed = re.search(r"number of transactions actually processed: (\d+)", text)
    assert processed and int(processed.group(1)) > 0, text
    failed = re.search(r"number of failed transactions: (\d+)", text)
    assert failed is None or failed.group(1) == "0", text
    assert "error" not in out.stderr.lower(), text
    assert len(backends(pg, "pstmt_bench")) <= 4


# -- 4. raw protocol, JDBC style -----------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_two_clients_same_statement_name_different_queries(pp):
    """JDBC style: Parse "S_1" / Describe / Bind / Execute / Sync once, then only Bind "S_1".
    Two clients use the name "S_1" for different queries; each gets its own rows, on both
    servers of the pool (two more clients pin one server at a time)."""
    user = "pstmt_raw"
    ca, cb = Raw(pp.port, user), Raw(pp.port, user)
    h1 = psycopg2.connect(pp.dsn(user, DB))          # not autocommit: holds a server while in a transaction
    h2 = psycopg2.connect(pp.dsn(user, DB))
    qa = "select 'a'::text as who, $1::int as n, pg_backend_pid() as pid"
    qb = "select 'b'::text as who, $1::int * 10 as n, pg_backend_pid() as pid"
    pids = {"a": set(), "b": set()}

    def check(who: str, replies: list[tuple], n: int) -> None:
        rows = [r for r in replies if r[0] == "D"]
        assert [r[:3] for r in rows] == [("D", who, str(n))], replies
        assert replies[-1] == ("Z", "I"), replies
        pids[who].add(int(rows[0][3]))

    def exec_both(n: int) -> None:
        ca.send(B("S_1", str(n)), E(), SYNC)          # both in flight before either is read
        cb.send(B("S_1", str(n)), E(), SYNC)
        check("a", shape(ca.recv()), n)
        check("b", shape(cb.recv()), n * 10)

    try:
        c1 = h1.cursor()
        c1.execute("select pg_backend_pid()")           # h1 holds server X
        p1 = c1.fetchone()[0]
        ra = ca.run(P("S_1", qa), DS("S_1"), B("S_1", "1"), E(), SYNC)
        assert [r[0] for r in ra] == ["1", "t", "T", "2", "D", "C", "Z"], ra
        check("a", ra, 1)
        rb = cb.run(P("S_1", qb), DS("S_1"), B("S_1", "1"), E(), SYNC)
        assert [r[0] for r in rb] == ["1", "t", "T", "2", "D", "C", "Z"], rb
        check("b", rb, 10)
        c2 = h2.cursor()
        c2.execute("select pg_backend_pid()")           # h2 holds server Y, the one a and b used
        p2 = c2.fetchone()[0]
        h1.rollback()                                   # X is free: a and b go there now
        assert pids == {"a": {p2}, "b": {p2}} and p1 != p2
        for n in range(2, 6):
            exec_both(n)
        assert pids == {"a": {p1, p2}, "b": {p1, p2}}
        h2.rollback()
        for n in range(6, 16):                          # free for all
            exec_both(n)
        assert ca.run(CS("S_1"), SYNC) == [("3",), ("Z", "I")]
        assert cb.run(CS("S_1"), SYNC) == [("3",), ("Z", "I")]
        # the names are free again, also when reused for another query
        rb = cb.run(P("S_1", qa), B("S_1", "7"), E(), SYNC)
        assert [r[:3] for r in rb if r[0] == "D"] == [("D", "a", "7")], rb
        rb = cb.run(CS("S_1"), SYNC, B("S_1", "7"), E(), SYNC)
        assert rb == [("3",), ("Z", "I"), ("E", "ERROR", "26000", 'prepared statement "S_1" does not exist'),
                      ("Z", "I")]
    finally:
        for c in (ca, cb):
            c.close()
        h1.close()
        h2.close()


ERROR_SEQUENCES = {
    # Parse "S_1" twice without Close: 42P05 on the second, in a later transaction on another server
    "duplicate_parse": [
        [P("S_1", "select 1"), SYNC],
        [P("S_1", "select 1"), SYNC],
        [P("S_1", "select 2"), B("S_1"), E(), SYNC],
        [B("S_1"), E(), SYNC],
        [CS("S_1"), SYNC],
        [P("S_1", "select 3"), B("S_1"), E(), SYNC],
    ],
    # ... and twice in one pipeline
    "duplicate_parse_in_one_pipeline": [
        [P("S_1", "select 1"), P("S_1", "select 1"), B("S_1"), E(), SYNC],
        [B("S_1"), E(), SYNC],
    ],
    "unknown_name": [
        [B("nope"), E(), SYNC],
        [DS("nope"), SYNC],
        [P("S_1", "select 1"), SYNC],
        [DS("nope"), B("S_1"), E(), SYNC],
        [B("S_1"), E(), SYNC],
    ],
    # Close of a name that does not exist is not an error
    "close_unknown": [
        [CS("nope"), SYNC],
        [CS("nope"), CS(""), fw.close("P", "nope"), SYNC],
        [P("S_1", "select 1"), SYNC],
        [CS("S_1"), CS("S_1"), SYNC],
        [B("S_1"), E(), SYNC],
    ],
    # a statement prepared in one transaction is described, bound, closed in later ones
    "describe_bind_close_later": [
        [P("S_1", "select $1::int * 2 as double, 'x'::text as t"), SYNC],
        [DS("S_1"), SYNC],
        [B("S_1", "21"), fw.describe("P", ""), E(), SYNC],
        [P("S_2", "select $1::text || $2::text", [25, 25]), DS("S_2"), SYNC],
        [B("S_2", "a", "b"), E(), B("S_1", "4"), E(), SYNC],
        [CS("S_1"), SYNC],
        [B("S_1", "1"), E(), SYNC],
        [DS("S_1"), SYNC],
        [B("S_2", "c", "d"), E(), SYNC],
    ],
    # a statement prepared inside an explicit transaction survives its commit
    "inside_a_transaction": [
        [Q("begin"), P("S_1", "select 5"), B("S_1"), E(), SYNC, Q("commit")],
        [B("S_1"), E(), SYNC],
        [Q("begin"), P("S_1", "select 6"), SYNC, Q("rollback")],
        [B("S_1"), E(), SYNC],
        [Q("begin"), P("S_3", "select 7"), SYNC, Q("rollback")],   # Parse is not undone by ROLLBACK
        [B("S_3"), E(), SYNC],
    ],
    # a Parse PostgreSQL rejects leaves no statement, nor do the Parses it skips up to the Sync
    "failed_parse_leaves_no_statement": [
        [P("S_bad", "selec 1"), SYNC],
        [B("S_bad"), E(), SYNC],
        [P("S_ok", "select 1"), P("S_bad", "select 1 from no_such_table"), P("S_after", "select 3"), SYNC],
        [B("S_ok"), E(), SYNC],
        [B("S_after"), E(), SYNC],
        [DS("S_bad"), SYNC],
        [P("S_bad", "select 2"), P("S_after", "select 3"), B("S_bad"), E(), B("S_after"), E(), SYNC],
    ],
    # one query text under several names, and the same text with other parameter types:
    # replies in order, whichever of them the server already knows
    "same_text_several_names": [
        [P("S_1", "select 1 as one"), SYNC],
        [P("S_2", "select 2"), B("S_2"), E(), P("S_3", "select 1 as one"), B("S_3"), E(),
         B("S_1"), E(), P("S_4", "select 1 as one"), B("S_4"), E(), SYNC],
        [CS("S_1"), CS("S_3"), SYNC],
        [B("S_4"), E(), B("S_3"), E(), SYNC],
        [P("a", "select $1 as v", [23]), P("b", "select $1 as v", [25]), P("c", "select $1 as v"), SYNC],
        [DS("a"), DS("b"), SYNC],
        [B("a", "7"), E(), B("b", "x"), E(), DS("c"), SYNC],
    ],
    # named portals (inside a transaction) are the client's own; Execute with a row limit
    "named_portal": [
        [P("S_1", "select generate_series(1, 3) as g"), SYNC],
        [Q("begin"), fw.bind("p1", "S_1"), fw.execute("p1", 2), fw.execute("p1", 2), SYNC, Q("commit")],
        [Q("begin"), fw.bind("p1", "S_1"), fw.execute("p1", 1), fw.close("P", "p1"), fw.execute("p1", 1),
         SYNC, Q("rollback")],
    ],
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("name", list(ERROR_SEQUENCES))
def test_statement_names_and_errors_as_on_postgres(pp, pg, name):
    ours, theirs = compare_with_postgres(pp, pg, "pstmt_err", ERROR_SEQUENCES[name])
    assert_same(ours, theirs)
    flat = [m for step in theirs for m in step]
    if name.startswith("duplicate"):
        assert ("E", "ERROR", "42P05", 'prepared statement "S_1" already exists') in flat
    if name == "unknown_name":
        assert ("E", "ERROR", "26000", 'prepared statement "nope" does not exist') in flat


@pytest.mark.timeout(30)
def test_error_in_a_pipeline_skips_to_sync_and_rolls_back(pp, pg):
    """P S_2 (insert) / B / E / P S_1 (a duplicate) / B / E / S: PostgreSQL answers ParseComplete,
    BindComplete, CommandComplete, the 42P05 ErrorResponse, ReadyForQuery, skips the rest, and
    the insert is rolled back. The pooler must give the same, though S_1 was prepared on the
    other server."""
    user = "pstmt_err"
    make_table(pg, "pstmt_skip_t", "x int", user)
    steps = [
        [P("S_1", "select 1"), SYNC],
        [P("S_2", "insert into pstmt_skip_t values (1)"), B("S_2"), E(),
         P("S_1", "select 1"), B("S_1"), E(), SYNC],
        [Q("select count(*) from pstmt_skip_t")],
        [B("S_1"), E(), SYNC],
        [B("S_2"), E(), SYNC],                    # S_2 was parsed before the error: it exists
        [Q("select count(*) from pstmt_skip_t")],
        [Q("delete from pstmt_skip_t")],
    ]
    ours, theirs = compare_with_postgres(pp, pg, user, steps)
    assert theirs[1] == [("1",), ("2",), ("C", "INSERT 0 1"),
                         ("E", "ERROR", "42P05", 'prepared statement "S_1" already exists'), ("Z", "I")]
    assert theirs[2][1] == ("D", "0") and theirs[5][1] == ("D", "1")
    assert_same(ours, theirs)
    assert direct_count(pg, "pstmt_skip_t") == 0


@pytest.mark.timeout(30)
def test_copy_through_named_statements_in_pipelines(pp, pg):
    """COPY FROM STDIN and COPY TO STDOUT run through named statements, the data (and CopyDone)
    in the same write as the Parse/Bind/Execute and its Sync, with the statements prepared on
    demand on the other server: the reply stream is PostgreSQL's, message for message."""
    user = "pstmt_err"
    make_table(pg, "pstmt_copy_t", "x int", user)
    copy_in = [fw.copy_data(b"1\n"), fw.copy_data(b"2\n"), fw.copy_done()]
    steps = [
        [P("S_in", "copy pstmt_copy_t (x) from stdin"), B("S_in"), E(), *copy_in, SYNC],
        [B("S_in"), E(), *copy_in, SYNC],
        [P("S_out", "copy (select 42, 'x') to stdout"), B("S_out"), E(), SYNC],
        [B("S_out"), E(), B("S_in"), E(), *copy_in, SYNC, B("S_out"), E(), SYNC],
        [Q("select 1")],
    ]
    ours, theirs = compare_with_postgres(pp, pg, user, steps)
    assert ("C", "COPY 2") in theirs[0] and ("d",) in theirs[2]
    assert_same(ours, theirs)
    assert direct_count(pg, "pstmt_copy_t") == 2 * 3 * 2   # 3 copies of 2 rows in each run


def _until(raw: Raw, tag: bytes) -> list[tuple]:
    """Replies up to and including the first `tag` (ParameterStatus left out)."""
    got = []
    while True:
        t, body = raw.w.read_message()
        if t == b"S":
            continue
        got.append((t, body))
        if t == tag:
            return shape(got)


@pytest.mark.timeout(30)
def test_flush_before_sync_with_named_statements(pp, pg):
    """Flush instead of Sync (psycopg 3 pipelines fetch results this way): the replies to a batch
    that needs a hidden Parse, a local ParseComplete and a local CloseComplete all arrive before
    the Sync, in PostgreSQL's order, and the server stays with the client until that Sync."""
    user = "pstmt_raw"
    results = []
    for port in (pp.port, pg.port):
        shuffler = Shuffler(pp, user) if port == pp.port else None
        raw = Raw(port, user)
        try:
            assert raw.run(P("S_f", "select $1::int * 2"), SYNC) == [("1",), ("Z", "I")]
            if shuffler is not None:
                shuffler.step()                      # S_f now lives on the other server only
            raw.w.send(B("S_f", "21") + E() + P("S_g", "select $1::int * 2") + CS("S_g")
                       + B("S_f", "4") + E() + fw.flush())
            first = _until(raw, b"3")
            first += _until(raw, b"C")
            raw.w.send(SYNC)
            first += _until(raw, b"Z")
            results.append(first)
        finally:
            raw.close()
            if shuffler is not None:
                shuffler.close()
    ours, theirs = results
    assert theirs == [("2",), ("D", "42"), ("C", "SELECT 1"), ("1",), ("3",), ("2",), ("D", "8"),
                      ("C", "SELECT 1"), ("Z", "I")]
    assert ours == theirs


@pytest.mark.timeout(30)
def test_error_inside_transaction_block_with_named_statements(pp, pg):
    """An error in an explicit transaction (42P05 on a duplicate Parse) leaves it aborted (25P02)
    until ROLLBACK, exactly as PostgreSQL; the statements survive."""
    steps = [
        [P("S_1", "select 1"), SYNC],
        [Q("begin"), P("S_1", "select 1"), SYNC, B("S_1"), E(), SYNC, Q("select 2"), Q("rollback")],
        [B("S_1"), E(), SYNC],
    ]
    ours, theirs = compare_with_postgres(pp, pg, "pstmt_err", steps, shuffle=True)
    assert ("E", "ERROR", "25P02",
            "current transaction is aborted, commands ignored until end of transaction block") in theirs[1]
    assert_same(ours, theirs)


# -- 5. SQL-level PREPARE / EXECUTE / DEALLOCATE --------------------------------------------------------
@pytest.mark.timeout(30)
def test_sql_prepare_execute_deallocate(pp, pg):
    steps = [[Q(sql)] for sql in (
        "PREPARE q(int) AS select $1 * 2",
        "EXECUTE q(21)",
        "EXECUTE q(21)",
        "EXECUTE q(22)",
        "PREPARE q(int) AS select $1 * 3",          # 42P05
        "DEALLOCATE q",
        "EXECUTE q(1)",                              # 26000
        "DEALLOCATE q",                              # 26000
        "PREPARE q(int) AS select $1 * 3",
        "EXECUTE q(2)",
        "PREPARE r AS select 'r'",
        "DEALLOCATE PREPARE r",
        "PREPARE s AS select 's'",
        "PREPARE t AS select 't'",
        "EXECUTE s",
        "DEALLOCATE ALL",
        "EXECUTE s",                                 # 26000
        "EXECUTE t",                                 # 26000
        "EXECUTE q(3)",                              # 26000
        "PREPARE s AS select 's2'",
        "EXECUTE s",
    )] + [
        [Q("begin"), Q("PREPARE z AS select 'z'"), Q("rollback")],    # PREPARE is not undone by ROLLBACK
        [Q("EXECUTE z")],
        [Q("begin"), Q("DEALLOCATE z"), Q("rollback")],                # nor is DEALLOCATE
        [Q("EXECUTE z")],
        [Q("begin"), Q("PREPARE y AS select 'y'"), Q("select 1/0"), Q("rollback")],
        [Q("EXECUTE y")],
    ]
    ours, theirs = compare_with_postgres(pp, pg, "pstmt_sql", steps)
    assert theirs[1][:2] == [("T", ("?column?", 23)), ("D", "42")]
    assert ("E", "ERROR", "26000", 'prepared statement "q" does not exist') in theirs[7]
    assert ("E", "ERROR", "42P05", 'prepared statement "q" already exists') in theirs[4]
    assert_same(ours, theirs)


@pytest.mark.timeout(30)
def test_sql_prepare_and_protocol_parse_share_one_namespace(pp, pg):
    """PostgreSQL keeps PREPARE and Parse names in one namespace: EXECUTE runs a Parse'd statement,
    Bind runs a PREPAREd one, and the same name twice is 42P05 whichever way it comes."""
    steps = [
        [Q("PREPARE m(int) AS select $1 + 100")],
        [B("m", "1"), E(), SYNC],
        [P("m", "select 1"), SYNC],                  # 42P05
        [P("n", "select $1::int - 1"), SYNC],
        [Q("EXECUTE n(10)")],
        [Q("PREPARE n AS select 2")],                # 42P05
        [CS("m"), SYNC],
        [Q("EXECUTE m(1)")],                         # 26000
        [Q("DEALLOCATE n")],
        [B("n", "1"), E(), SYNC],                    # 26000
    ]
    ours, theirs = compare_with_postgres(pp, pg, "pstmt_sql", steps)
    assert_same(ours, theirs)


@pytest.mark.timeout(30)
def test_discard_all_forgets_the_clients_statements(pp, pg):
    """DISCARD ALL drops the session's prepared statements (both kinds) on PostgreSQL; psycopg 3
    clears its own cache when it sees it (as for DEALLOCATE ALL)."""
    steps = [
        [Q("PREPARE d1 AS select 'd1'")],
        [P("d2", "select 'd2'"), SYNC],
        [Q("EXECUTE d1")],
        [Q("DISCARD ALL")],
        [Q("EXECUTE d1")],                           # 26000
        [B("d2"), E(), SYNC],                        # 26000
        [Q("PREPARE d1 AS select 'd1 again'")],
        [P("d2", "select 'd2 again'"), B("d2"), E(), SYNC],
        [Q("EXECUTE d1")],
    ]
    ours, theirs = compare_with_postgres(pp, pg, "pstmt_sql", steps)
    assert ("E", "ERROR", "26000", 'prepared statement "d2" does not exist') in theirs[5]
    assert_same(ours, theirs)


# -- 6. many statements: bounded server state and pooler memory ------------------------------------------
@pytest.mark.timeout(120)
def test_100000_distinct_statements_prepared_and_closed(pp):
    """100 batches of 1000 Parse + Close with one Sync each, plus one statement per batch left
    open: the kept ones still work at the end, the server holds a bounded number of statements
    and the pooler's memory did not grow with the 100,000 texts."""
    user = "pstmt_mem"
    c = Raw(pp.port, user)
    try:
        def batch(b: int) -> list[bytes]:
            msgs = []
            for i in range(1000):
                n = b * 1000 + i
                msgs.append(P(f"S_{n}", f"select {n}::int as v{n}"))
                msgs.append(CS(f"S_{n}"))
            msgs.append(P(f"keep_{b}", f"select {b}::int as kept, 'k' as x"))
            msgs.append(SYNC)
            return msgs

        def run_batch(b: int) -> None:
            c.send(*batch(b))
            replies = c.recv()
            tags = b"".join(t for t, _ in replies)
            assert tags == b"13" * 1000 + b"1Z", (b, shape([r for r in replies if r[0] in b"EZ"]))

        run_batch(0)
        before = rss_kib(pp.proc.pid)
        for b in range(1, 100):
            run_batch(b)
        kept = [m for b in range(100) for m in (B(f"keep_{b}"), E())]
        got = c.run(*kept, SYNC)
        assert [r for r in got if r[0] == "D"] == [("D", str(b), "k") for b in range(100)], got[-3:]
        described = c.run(DS("keep_0"), DS("keep_99"), SYNC)
        assert [r[0] for r in described] == ["t", "T", "t", "T", "Z"], described
        assert c.run(*(CS(f"keep_{b}") for b in range(100)), SYNC) == [("3",)] * 100 + [("Z", "I")]
        (count,), = c.rows("select count(*) from pg_prepared_statements")
        assert int(count) < 2000
        after = rss_kib(pp.proc.pid)
        assert after - before < 64 * 1024, f"pooler RSS grew from {before} KiB to {after} KiB"
        assert c.run(B("S_5"), E(), SYNC) == [("E", "ERROR", "26000", 'prepared statement "S_5" does not exist'),
                                              ("Z", "I")]
    finally:
        c.close()


# -- 7. statement pooling ------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_statement_pool_prepared_statements(pp, pg):
    """4 asyncpg clients and 3 psycopg 3 clients (prepare_threshold 0: every one of them names its
    first statement "_pg3_0") on one server in statement pooling."""
    user = "pstmt_stmt"
    make_table(pg, "pstmt_stmt_t", "k int, i int", user)

    async def client(k: int) -> None:
        con = await asyncpg.connect(host="127.0.0.1", port=pp.port, user=user, database=DB, ssl=False, timeout=20)
        try:
            for i in range(15):
                assert await con.fetchval("select $1::int + $2", i, k) == i + k
            stmt = await con.prepare("select $1::int * 2, $2::text")
            for i in range(10):
                assert tuple(await stmt.fetchrow(i, str(k))) == (i * 2, str(k))
            await con.executemany("insert into pstmt_stmt_t values ($1, $2)", [(k, i) for i in range(20)])
            assert await con.fetchval("select count(*) from pstmt_stmt_t where k = $1", k) == 20
        finally:
            await con.close()

    async def main() -> None:
        await asyncio.gather(*(client(k) for k in range(4)))

    errors: list[BaseException] = []

    def psycopg3_client(k: int) -> None:
        try:
            with psycopg.connect(pp.dsn(user, DB), autocommit=True, prepare_threshold=0) as con:
                for i in range(15):
                    assert con.execute("select %s::int * %s::int", (i, k)).fetchone() == (i * k,)
                    assert con.execute("select %s::text", (f"p{k}",)).fetchone() == (f"p{k}",)
                with con.cursor() as cur:
                    cur.executemany("insert into pstmt_stmt_t values (%s, %s)", [(k, i) for i in range(20)])
                assert con.execute("select count(*) from pstmt_stmt_t where k = %s", (k,)).fetchone() == (20,)
        except BaseException as e:       # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=psycopg3_client, args=(k,)) for k in range(10, 13)]
    for t in threads:
        t.start()
    asyncio.run(main())
    for t in threads:
        t.join(40)
    assert not any(t.is_alive() for t in threads), "a psycopg 3 client hangs"
    assert not errors, f"{len(errors)} psycopg 3 client(s) failed, first: {errors[0]!r}"
    assert direct_count(pg, "pstmt_stmt_t") == 7 * 20
    assert len(backends(pg, user)) <= 1


# -- 8. cached plan must not change result type -------------------------------------------------------------
@pytest.mark.timeout(30)
def test_cached_plan_error_passes_through_and_drops_the_server(pp, pg):
    user = "pstmt_plan"

    def sequence(port: int, table: str, through_pooler: bool):
        make_table(pg, table, "x int", user)
        with direct(pg, DB) as d, d.cursor() as cur:
            cur.execute(f"insert into {table} values (1)")
        c = Raw(port, user)
        try:
            pid1 = int(c.rows("select pg_backend_pid()")[0][0])
            assert c.run(P("S_p", f"select * from {table}"), B("S_p"), E(), SYNC) == \
                [("1",), ("2",), ("D", "1"), ("C", "SELECT 1"), ("Z", "I")]
            with direct(pg, DB) as d, d.cursor() as cur:
                cur.execute(f"alter table {table} alter column x type bigint")
            c.send(B("S_p"), E(), SYNC)
            replies = c.recv()
            assert [t for t, _ in replies] == [b"E", b"Z"], shape(replies)
            error = parse_fields(replies[0][1])
            after = None
            if through_pooler:
                pid2 = int(c.rows("select pg_backend_pid()")[0][0])
                after = (pid1, pid2, c.run(B("S_p"), E(), SYNC))
            return error, after
        finally:
            c.close()

    theirs, _ = sequence(pg.port, "pstmt_plan_direct", False)
    assert (theirs["C"], theirs["M"]) == ("0A000", "cached plan must not change result type")
    ours, (pid1, pid2, rerun) = sequence(pp.port, "pstmt_plan_pooled", True)
    assert ours == theirs                   # every field, as PostgreSQL sent it
    assert pid2 != pid1, "server_drop_on_cached_plan_error: the next query ran on the same backend"
    wait_for(lambda: pid1 not in [b[0] for b in backends(pg, user)], what=f"backend {pid1} to be closed")
    # the statement is prepared again on the new backend, with the new column type
    assert rerun == [("2",), ("D", "1"), ("C", "SELECT 1"), ("Z", "I")]


# -- 9. console --------------------------------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_console_shows_server_and_global_prepared_statements(pp):
    user = "pstmt_console"
    text = "select 'console probe'::text as probe, $1::int as n"
    c = Raw(pp.port, user)
    con = psycopg2.connect(pp.dsn("admin", "console"))
    con.autocommit = True
    try:
        got = c.run(P("S_c", text), B("S_c", "3"), E(), SYNC)
        assert ("D", "console probe", "3") in got, got

        def show(what: str):
            with con.cursor() as cur:
                cur.execute(f"SHOW {what}")
                cols = [d.name for d in cur.description]
                return cols, [dict(zip(cols, r)) for r in cur.fetchall()]

        cols, rows = show("SERVER_PREP_STMTS")
        assert cols == ["type", "user", "database", "sid", "name", "definition", "refcount"]
        mine = [r for r in rows if text in str(r["definition"])]
        assert len(mine) == 1, rows
        assert (mine[0]["user"], mine[0]["database"]) == (user, DB)
        assert re.fullmatch(r"odyssey_pstmt_\d+", mine[0]["name"]), mine
        server_name = mine[0]["name"]

        cols, rows = show("GLOBAL_PREPARED_STATEMENTS")
        assert cols == ["name", "definition", "refcount"]
        mine = [r for r in rows if text in str(r["definition"])]
        assert [r["name"] for r in mine] == [server_name], rows

        # and PostgreSQL itself holds it under that name (pool_size 1: the same server)
        on_server = c.rows("select name, statement from pg_prepared_statements")
        assert [server_name, text] in on_server, on_server
    finally:
        c.close()
        con.close()
