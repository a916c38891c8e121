"""Real clients through session and transaction pools: psql, pgbench, psycopg2, psycopg 3, asyncpg."""
from __future__ import annotations

import asyncio
import os
import re
import subprocess

import asyncpg
import psycopg
import psycopg2
import pytest

from tests.integration.conftest import direct, module_pooler, odyssey_config, rule

MODES = {"session": "sess_user", "transaction": "tx_user"}


@pytest.fixture(scope="module")
def clients_pooler(pg, roles):
    text = odyssey_config(
        rule("tx_user", pool="transaction", pool_size=4),
        rule("sess_user", pool="session", pool_size=8),
        # asyncpg's unnamed statements span two Syncs: one server keeps them together
        rule("async_tx_user", pool="transaction", pool_size=1),
    )
    yield from module_pooler(pg, text)


@pytest.fixture(scope="module")
def bench_db(pg, roles):
    """A scratch database `bench` filled by `pgbench -i` straight on PostgreSQL."""
    if pg.psql("select 1 from pg_database where datname = 'bench'") != "1":
        pg.psql("CREATE DATABASE bench;")
    pg.run(["pgbench", "-i", "-s", "1", "-q", "-h", pg.sockdir, "-p", str(pg.port), "-U", "postgres",
            "bench"])
    pg.psql("GRANT SELECT ON ALL TABLES IN SCHEMA public TO tx_user, sess_user;", db="bench")
    return "bench"


def client_env(port: int, user: str, db: str, **extra) -> dict:
    env = dict(os.environ, PGHOST="127.0.0.1", PGPORT=str(port), PGUSER=user, PGDATABASE=db,
               PGSSLMODE="disable", PGCONNECT_TIMEOUT="10")
    env.pop("PGPASSWORD", None)
    env.pop("PGOPTIONS", None)
    env.update(extra)
    return env


# -- psql --------------------------------------------------------------------------------------------
@pytest.mark.timeout(30)
@pytest.mark.parametrize("mode", MODES)
def test_psql_select(clients_pooler, mode):
    out = subprocess.run(["psql", "-X", "-A", "-t", "-c", "select 1", "-c", "select current_user"],
                         env=client_env(clients_pooler.port, MODES[mode], "db1"),
                         capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", MODES[mode]]


# -- pgbench -----------------------------------------------------------------------------------------
def run_pgbench(port: int, user: str, db: str, *args: str) -> tuple[int, str]:
    out = subprocess.run(["pgbench", "-n", "-S", "-T", "2", "-c", "4", "-j", "2", *args, db],
                         env=client_env(port, user, db), capture_output=True, text=True, timeout=40)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    m = re.search(r"number of transactions actually processed: (\d+)", text)
    assert m, text
    failed = re.search(r"number of failed transactions: (\d+)", text)
    assert failed is None or failed.group(1) == "0", text
    return int(m.group(1)), text


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode,protocol", [("transaction", "simple"), ("transaction", "extended"),
                                           ("session", "simple"), ("session", "extended")])
def test_pgbench_select_only(clients_pooler, bench_db, mode, protocol):
    n, text = run_pgbench(clients_pooler.port, MODES[mode], bench_db, "-M", protocol)
    assert n > 0, text
    assert "error" not in text.lower(), text


# -- psycopg2 ----------------------------------------------------------------------------------------
@pytest.mark.timeout(30)
@pytest.mark.parametrize("mode", MODES)
def test_psycopg2_queries_and_transactions(clients_pooler, pg, mode):
    user = MODES[mode]
    table = f"t_psycopg2_{mode}"
    with direct(pg, "db1") as d, d.cursor() as cur:
        cur.execute(f"drop table if exists {table}; create table {table} (id int, v text);"
                    f"grant all on {table} to {user}")
    con = psycopg2.connect(clients_pooler.dsn(user, "db1"))
    try:
        cur = con.cursor()
        cur.execute("select %s::int + 1, %s::text", (41, "x"))
        assert cur.fetchone() == (42, "x")
        cur.executemany(f"insert into {table} values (%s, %s)", [(i, str(i)) for i in range(50)])
        con.commit()
        cur.execute(f"insert into {table} values (999, 'gone')")
        con.rollback()
        cur.execute(f"select count(*), max(id) from {table}")
        assert cur.fetchone() == (50, 49)
        cur.execute("select generate_series(1, 20000)")          # a reply bigger than one buffer
        assert len(cur.fetchall()) == 20000
        con.commit()
    finally:
        con.close()


# -- psycopg 3 ---------------------------------------------------------------------------------------
@pytest.mark.timeout(30)
@pytest.mark.parametrize("mode", MODES)
def test_psycopg3_queries(clients_pooler, mode):
    # no server-side prepared statements in transaction mode (prepare_threshold=None)
    with psycopg.connect(clients_pooler.dsn(MODES[mode], "db1"), autocommit=True,
                         prepare_threshold=None) as con:
        assert con.execute("select %s::int * 2", (21,)).fetchone() == (42,)
        with con.transaction():
            con.execute("create temp table if not exists tmp3 (x int) on commit drop")
            con.execute("insert into tmp3 select generate_series(1, 10)")
            assert con.execute("select sum(x) from tmp3").fetchone() == (55,)
        rows = con.execute("select generate_series(1, 1000)").fetchall()
        assert len(rows) == 1000


@pytest.mark.timeout(30)
@pytest.mark.parametrize("mode", MODES)
def test_psycopg3_pipeline(clients_pooler, mode):
    with psycopg.connect(clients_pooler.dsn(MODES[mode], "db1"), autocommit=True,
                         prepare_threshold=None) as con:
        with con.pipeline():
            curs = [con.execute("select %s::int", (i,)) for i in range(20)]
        assert [c.fetchone()[0] for c in curs] == list(range(20))
        with con.transaction(), con.pipeline():
            a = con.execute("select 1")
            b = con.execute("select 2")
        assert (a.fetchone(), b.fetchone()) == ((1,), (2,))


@pytest.mark.timeout(30)
def test_psycopg3_prepared_statements_session_mode(clients_pooler):
    with psycopg.connect(clients_pooler.dsn("sess_user", "db1"), autocommit=True) as con:
        for i in range(10):
            assert con.execute("select %s::int + 100", (i,), prepare=True).fetchone() == (i + 100,)
        names = con.execute("select count(*) from pg_prepared_statements").fetchone()[0]
        assert names >= 1           # a named statement lives on this client's server


# -- asyncpg -----------------------------------------------------------------------------------------
async def _asyncpg_client(port: int, user: str, **kw) -> None:
    """asyncpg (extended protocol throughout): parameters, a transaction with executemany, a
    large result; in session mode also a named prepared statement reused across calls."""
    con = await asyncpg.connect(host="127.0.0.1", port=port, user=user, database="db1",
                                ssl=False, timeout=10, **kw)
    try:
        assert await con.fetchval("select $1::int + 1", 1) == 2
        if kw.get("statement_cache_size", 1):
            stmt = await con.prepare("select $1::text || '!'")
            for i in range(5):
                assert await stmt.fetchval(str(i)) == f"{i}!"
        else:
            assert await con.fetchval("select 'x'") == "x"
        async with con.transaction():
            await con.execute("create temp table ta (x int) on commit drop")
            await con.executemany("insert into ta values ($1)", [(i,) for i in range(10)])
            assert await con.fetchval("select count(*) from ta") == 10
        rows = await con.fetch("select generate_series(1, 500) as g")
        assert rows[-1]["g"] == 500
    finally:
        await con.close()


@pytest.mark.timeout(30)
def test_asyncpg_session_mode(clients_pooler):
    asyncio.run(_asyncpg_client(clients_pooler.port, "sess_user"))


@pytest.mark.timeout(30)
def test_asyncpg_transaction_mode_without_statement_cache(clients_pooler):
    asyncio.run(_asyncpg_client(clients_pooler.port, "async_tx_user", statement_cache_size=0))


# -- errors pass through -----------------------------------------------------------------------------
@pytest.mark.timeout(30)
@pytest.mark.parametrize("mode", MODES)
def test_postgres_errors_pass_through_unchanged(clients_pooler, pg, mode):
    def errors(dsn):
        con = psycopg2.connect(dsn)
        con.autocommit = True
        out = []
        try:
            for sql in ("select 1/0", "selec 1", "select * from no_such_table"):
                with pytest.raises(psycopg2.Error) as e:
                    con.cursor().execute(sql)
                out.append((e.value.pgcode, e.value.diag.severity, e.value.diag.message_primary))
            cur = con.cursor()
            cur.execute("select 7")                  # the connection is still usable
            assert cur.fetchone() == (7,)
        finally:
            con.close()
        return out

    through = errors(clients_pooler.dsn(MODES[mode], "db1"))
    assert [code for code, _, _ in through] == ["22012", "42601", "42P01"]
    assert through == errors(pg.dsn(MODES[mode], "db1"))
