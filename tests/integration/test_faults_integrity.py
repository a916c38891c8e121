"""Transaction integrity under injected faults: concurrent clients in transaction pooling each
update their own row, commit or roll back, while backends are terminated, queries cancelled and
every pooler-PostgreSQL connection reset (tests/integration/faultproxy.py) at random. Afterwards every acknowledged COMMIT is visible, no rolled-back transaction is, and
no client ever received a result meant for another (each statement echoes a per-client token).

A COMMIT whose answer was lost to a fault may or may not have happened (as with any database
connection); such commits are counted apart and bound the result from above.
"""
from __future__ import annotations

import random
import threading
import time

import psycopg2
import pytest

from scripts.pooler import PoolerProcess
from tests.integration.conftest import assert_alive, direct, ensure_roles, odyssey_config, rule, scalar, wait_for
from tests.integration.faultproxy import FaultProxy

USER = "integrity_user"
CLIENTS = 8
SECONDS = 4.0


@pytest.fixture(scope="module")
def ip(pg, roles):
    ensure_roles(pg, USER)
    pg.psql("drop table if exists t_acct; create table t_acct (id int primary key, v int not null);"
            f"insert into t_acct select g, 0 from generate_series(0, {CLIENTS - 1}) g;"
            f"grant all on t_acct to {USER}", db="db1")
    proxy = FaultProxy(pg.host, pg.port)
    p = PoolerProcess(odyssey_config(rule(USER, pool="transaction", pool_size=4, pool_timeout=5000)),
                      pg=pg, pg_port=proxy.port)
    p.proxy = proxy
    try:
        yield p
        assert_alive(p)
    finally:
        p.stop()
        proxy.close()


class Account:
    def __init__(self, i: int):
        self.i = i
        self.acked = 0          # COMMIT answered OK
        self.unknown = 0        # COMMIT sent, its answer lost to a fault
        self.rolled_back = 0
        self.failed = 0
        self.mixups: list = []
        self.con = None


def _work(p, acct: Account, stop: threading.Event) -> None:
    rnd = random.Random(acct.i)
    while not stop.is_set():
        try:
            if acct.con is None or acct.con.closed:
                acct.con = psycopg2.connect(p.dsn(USER, "db1", connect_timeout=5))
            cur = acct.con.cursor()
            token = f"c{acct.i}-{rnd.random()}"
            cur.execute("update t_acct set v = v + 1 where id = %s returning id, %s::text", (acct.i, token))
            row = cur.fetchone()
            if row != (acct.i, token):
                acct.mixups.append((row, acct.i, token))
            cur.execute("select %s::text, pg_sleep(%s)", (token, rnd.choice((0, 0, 0.01, 0.03))))
            if cur.fetchone()[0] != token:
                acct.mixups.append(("echo", acct.i, token))
        except psycopg2.Error:
            acct.failed += 1
            _drop(acct)
            continue
        if rnd.random() < 0.25:
            try:
                acct.con.rollback()
                acct.rolled_back += 1
            except psycopg2.Error:
                acct.failed += 1
                _drop(acct)
            continue
        try:
            acct.con.commit()
            acct.acked += 1
        except psycopg2.Error:
            acct.unknown += 1
            _drop(acct)


def _drop(acct: Account) -> None:
    try:
        if acct.con is not None:
            acct.con.close()
    except psycopg2.Error:
        pass
    acct.con = None


# the faults, in turn (targets at random): the pattern guarantees each kind happens in a run
FAULTS = ["terminate", "cancel", "terminate", "cancel", "reset"]


def _inject(pg, proxy, accounts: list[Account], stop: threading.Event, counts: dict) -> None:
    rnd = random.Random(15)
    i = 0
    while not stop.is_set():
        time.sleep(rnd.uniform(0.05, 0.2))
        kind = FAULTS[i % len(FAULTS)]
        i += 1
        counts["injected"] = i
        if kind == "reset":
            proxy.reset_all()                        # every server connection at once
            counts["resets"] += 1
        elif kind == "terminate":
            with direct(pg) as d, d.cursor() as cur:
                cur.execute("select pg_terminate_backend(pid) from pg_stat_activity where usename = %s "
                            "and backend_type = 'client backend' order by random() limit 1", (USER,))
                counts["terminated"] += cur.rowcount
        else:
            con = rnd.choice(accounts).con
            if con is not None and not con.closed:
                try:
                    con.cancel()
                    counts["cancelled"] += 1
                except psycopg2.Error:
                    pass


@pytest.mark.timeout(60)
def test_transactions_survive_terminations_and_cancels(ip, pg):
    accounts = [Account(i) for i in range(CLIENTS)]
    stop = threading.Event()
    counts = {"terminated": 0, "cancelled": 0, "resets": 0, "injected": 0}
    workers = [threading.Thread(target=_work, args=(ip, a, stop)) for a in accounts]
    injector = threading.Thread(target=_inject, args=(pg, ip.proxy, accounts, stop, counts))
    for t in workers + [injector]:
        t.start()
    time.sleep(SECONDS)
    # at least two rounds of every kind of fault, however slow the machine
    wait_for(lambda: counts["injected"] >= 2 * len(FAULTS), timeout=30, what="two rounds of faults")
    stop.set()
    for t in workers + [injector]:
        t.join(20)
    for a in accounts:
        _drop(a)
    assert not any(t.is_alive() for t in workers + [injector])
    assert counts["terminated"] > 0 and counts["cancelled"] > 0 and counts["resets"] > 0, counts
    assert sum(a.failed + a.unknown for a in accounts) > 0      # the faults did hit transactions
    assert sum(a.acked for a in accounts) > CLIENTS                # and work went on between them
    assert [a.mixups for a in accounts if a.mixups] == []
    with direct(pg, "db1") as d, d.cursor() as cur:
        cur.execute("select id, v from t_acct order by id")
        final = dict(cur.fetchall())
    for a in accounts:
        assert a.acked <= final[a.i] <= a.acked + a.unknown, (a.i, final[a.i], vars(a))
    assert_alive(ip)
    assert scalar(ip.dsn(USER, "db1")) == 1
