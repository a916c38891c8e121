"""Clients and servers that go away: the pooler cleans up, survives and keeps serving."""
from __future__ import annotations

import threading
import time

import psycopg2
import pytest

from scripts.pgcluster import PgCluster
from scripts.pooler import PoolerProcess
from tests.integration.conftest import (assert_alive, backends, direct, ensure_roles, module_pooler, odyssey_config,
                                        odyssey_text, rule, wait_for)
from tests.integration.wire import Wire, errors_in

DROPPED = "Odyssey has dropped the connection"


@pytest.fixture(scope="module")
def failures_pooler(pg, roles):
    text = odyssey_config(
        rule("leave_user", pool="transaction", pool_size=1, pool_timeout=5000),
        rule("kill_user", pool="session", pool_size=2, pool_timeout=5000),
        rule("idle_user", pool="session", pool_size=2, pool_client_idle_timeout=1),
        rule("idle_tx_user", pool="transaction", pool_size=2, pool_idle_in_transaction_timeout=1),
    )
    yield from module_pooler(pg, text)


@pytest.fixture
def leave_table(pg):
    with direct(pg, "db1") as d, d.cursor() as cur:
        cur.execute("drop table if exists t_leave; create table t_leave (id int);"
                    "grant all on t_leave to leave_user")
    return "t_leave"


def locks_on(pg, table: str) -> int:
    with direct(pg, "db1") as d, d.cursor() as cur:
        cur.execute("select count(*) from pg_locks where relation = %s::regclass", (table,))
        return cur.fetchone()[0]


@pytest.mark.timeout(30)
def test_client_vanishes_mid_transaction(failures_pooler, pg, leave_table):
    w = Wire(failures_pooler.port)
    assert w.login("leave_user", "db1") is None
    rows, err, status = w.simple_query(
        f"begin; insert into {leave_table} values (1); lock table {leave_table} in access exclusive mode")
    assert (err, status) == (None, "T")
    assert locks_on(pg, leave_table) >= 1
    w.close(abort=True)                                  # RST, no Terminate, no ROLLBACK
    wait_for(lambda: locks_on(pg, leave_table) == 0, timeout=5, what="the lock to be released")
    # pool_size 1: the same server is rolled back and handed to the next client
    con = psycopg2.connect(failures_pooler.dsn("leave_user", "db1"))
    try:
        cur = con.cursor()
        cur.execute(f"select count(*) from {leave_table}")
        assert cur.fetchone() == (0,)
        con.rollback()
    finally:
        con.close()
    assert len(backends(pg, "leave_user")) == 1


@pytest.mark.timeout(30)
def test_client_vanishes_mid_query(failures_pooler, pg):
    w = Wire(failures_pooler.port)
    assert w.login("leave_user", "db1") is None
    w.send(b"Q" + (len("select pg_sleep(20)") + 5).to_bytes(4, "big") + b"select pg_sleep(20)\0")
    wait_for(lambda: any(b[1] == "active" for b in backends(pg, "leave_user")), timeout=5,
             what="the sleep to start")
    w.close(abort=True)
    # the pooler cancels (or closes) the busy server; the next client does not wait 20 s for it
    t0 = time.monotonic()
    con = psycopg2.connect(failures_pooler.dsn("leave_user", "db1"))
    try:
        cur = con.cursor()
        cur.execute("select 1")
        assert cur.fetchone() == (1,)
    finally:
        con.close()
    assert time.monotonic() - t0 < 5


@pytest.mark.timeout(30)
def test_backend_terminated_under_a_session_client(failures_pooler, pg):
    con = psycopg2.connect(failures_pooler.dsn("kill_user", "db1"))
    con.autocommit = True
    cur = con.cursor()
    cur.execute("select pg_backend_pid()")
    pid = cur.fetchone()[0]
    with direct(pg) as d, d.cursor() as dcur:
        dcur.execute("select pg_terminate_backend(%s)", (pid,))
    wait_for(lambda: all(b[0] != pid for b in backends(pg, "kill_user")), what="the backend to exit")
    try:
        with pytest.raises(psycopg2.Error) as e:
            cur.execute("select 1")
            cur.fetchone()
        assert isinstance(e.value, (psycopg2.OperationalError, psycopg2.InterfaceError)) \
            or e.value.pgcode in ("08006", "57P01"), repr(e.value)
    finally:
        con.close()
    assert_alive(failures_pooler)
    # the pool recovers: new clients get a fresh server
    for _ in range(2):
        c2 = psycopg2.connect(failures_pooler.dsn("kill_user", "db1"))
        try:
            c2.autocommit = True
            cur2 = c2.cursor()
            cur2.execute("select pg_backend_pid()")
            assert cur2.fetchone()[0] != pid
        finally:
            c2.close()


@pytest.mark.timeout(30)
def test_pool_client_idle_timeout_drops_the_session_client(failures_pooler):
    w = Wire(failures_pooler.port)
    try:
        assert w.login("idle_user", "db1") is None
        assert w.simple_query("select 1")[1] is None        # now attached to a server, idle
        t0 = time.monotonic()
        msgs = w.read_until_closed(6)
        assert time.monotonic() - t0 >= 0.5
        errs = errors_in(msgs)
        assert errs and errs[-1]["C"] == "08006", msgs
        odyssey_text(errs[-1]["M"], DROPPED)
    finally:
        w.close()


@pytest.mark.timeout(30)
def test_pool_client_idle_timeout_next_query_fails(failures_pooler):
    con = psycopg2.connect(failures_pooler.dsn("idle_user", "db1"))
    con.autocommit = True
    try:
        con.cursor().execute("select 1")
        time.sleep(3)
        with pytest.raises(psycopg2.Error) as e:
            con.cursor().execute("select 1")
        assert e.value.pgcode in (None, "08006"), repr(e.value)
    finally:
        con.close()


@pytest.mark.timeout(30)
def test_idle_in_transaction_timeout_drops_the_client(failures_pooler, pg):
    w = Wire(failures_pooler.port)
    try:
        assert w.login("idle_tx_user", "db1") is None
        rows, err, status = w.simple_query("begin; select 1")
        assert (err, status) == (None, "T")
        msgs = w.read_until_closed(6)
        errs = errors_in(msgs)
        assert errs and errs[-1]["C"] == "08006", msgs
        odyssey_text(errs[-1]["M"], DROPPED)
    finally:
        w.close()
    # its server was rolled back, not left idle in transaction
    wait_for(lambda: all(b[1] != "idle in transaction" for b in backends(pg, "idle_tx_user")),
             what="no idle-in-transaction backend")


@pytest.mark.timeout(30)
def test_idle_timeout_spares_a_client_that_keeps_working(failures_pooler):
    con = psycopg2.connect(failures_pooler.dsn("idle_user", "db1"))
    con.autocommit = True
    try:
        cur = con.cursor()
        for _ in range(6):
            cur.execute("select pg_sleep(0.4)")         # 2.4 s of activity, never idle for 1 s
    finally:
        con.close()


# -- PostgreSQL restart: a private cluster, the session one is never restarted ---------------------
@pytest.fixture
def own_pg():
    cluster = PgCluster()
    try:
        cluster.init().start().create_roles()
        yield cluster
    finally:
        cluster.destroy()


@pytest.mark.timeout(90)
def test_postgres_restart_under_load(own_pg):
    p = PoolerProcess(odyssey_config(rule("trust_user", pool="transaction", pool_size=2,
                                          pool_timeout=2000)), pg=own_pg)
    stop = threading.Event()
    counts = {"ok": 0, "err": 0}

    def load():
        while not stop.is_set():
            try:
                con = psycopg2.connect(p.dsn("trust_user", "db1", connect_timeout=3))
                try:
                    con.autocommit = True
                    cur = con.cursor()
                    for _ in range(5):
                        cur.execute("select 1")
                        counts["ok"] += 1
                finally:
                    con.close()
            except psycopg2.Error:
                counts["err"] += 1
                time.sleep(0.05)

    threads = [threading.Thread(target=load) for _ in range(2)]
    try:
        for t in threads:
            t.start()
        wait_for(lambda: counts["ok"] > 20, timeout=15, what="load before the restart")
        own_pg.stop("fast")
        time.sleep(0.3)
        # while PostgreSQL is down a new client gets an error (at login or at its first query)
        with pytest.raises(psycopg2.Error):
            con = psycopg2.connect(p.dsn("trust_user", "db1", connect_timeout=3))
            try:
                con.cursor().execute("select 1")
            finally:
                con.close()
        assert_alive(p)
        own_pg.start()

        def works():
            try:
                con = psycopg2.connect(p.dsn("trust_user", "db1", connect_timeout=3))
                try:
                    cur = con.cursor()
                    cur.execute("select 1")
                    return cur.fetchone() == (1,)
                finally:
                    con.close()
            except psycopg2.Error:
                return False

        wait_for(works, timeout=15, interval=0.2, what="service after the restart")
        ok_before = counts["ok"]
        wait_for(lambda: counts["ok"] > ok_before + 20, timeout=10, what="the load to resume")
        # after recovery, fresh clients succeed every time
        assert all(works() for _ in range(5))
        assert_alive(p)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        p.stop()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("check,survives", [(True, True), (False, False)])
def test_idle_server_terminated_in_the_pool(pg, odyssey, check, survives):
    """pool_attach_check (default yes): an idle pooled server that PostgreSQL terminated is noticed
    at attach and replaced, so the client's next transaction does not fail."""
    ensure_roles(pg, "attach_check_user")
    p = odyssey(rule("attach_check_user", pool="transaction", pool_size=1, pool_attach_check=check))
    con = psycopg2.connect(p.dsn("attach_check_user", "db1"))
    con.autocommit = True
    try:
        cur = con.cursor()
        cur.execute("select pg_backend_pid()")
        pid = cur.fetchone()[0]
        with direct(pg) as d:
            d.cursor().execute("select pg_terminate_backend(%s)", (pid,))
        deadline = time.monotonic() + 5
        while any(b[0] == pid for b in backends(pg, "attach_check_user")) and time.monotonic() < deadline:
            time.sleep(0.05)
        if survives:
            cur.execute("select pg_backend_pid()")
            assert cur.fetchone()[0] != pid
        else:
            with pytest.raises(psycopg2.Error):
                cur.execute("select 1")
    finally:
        con.close()
