"""Dormant clients (issue 10, idle memory): a client idle for relay.DORMANT_AFTER_MS without a
server gives its coroutine up, and its socket's read watcher starts a new one when it speaks,
closes, or is woken by KILL_CLIENT or a graceful shutdown. Each test idles past that point and
checks that the session goes on exactly as before."""
from __future__ import annotations

import signal
import time

import psycopg2
import pytest

from odyssey_gevent.relay import DORMANT_AFTER_MS
from tests.integration.conftest import (console_client_ids, ensure_roles, module_pooler, odyssey_config, odyssey_text, rule, start_pooler,
                                        wait_for)
from tests.integration.wire import Wire, parse_fields

USER = "dormant_user"
DORMANT_S = 2 * DORMANT_AFTER_MS / 1000 + 0.5      # long enough to have gone dormant (one to two sweeps)
CONSOLE = 'storage "local" {\n    type "local"\n}\n'


@pytest.fixture(scope="module")
def dp(pg, roles):
    ensure_roles(pg, USER)
    text = odyssey_config(
        rule(USER, "db1", pool="transaction", pool_size=2),
        rule("default", "console", pool="session", storage="local", role="admin"),
    ) + CONSOLE
    yield from module_pooler(pg, text)


def _client_ids(p) -> list[str]:
    return console_client_ids(p, USER)


@pytest.mark.timeout(30)
def test_a_dormant_client_keeps_its_session(dp):
    """Its parameters stay (application_name is deployed to whichever server it gets next), and a
    transaction that spans an idle second keeps its server (no dormancy while a server is held)."""
    con = psycopg2.connect(dp.dsn(USER, "db1", application_name="sleeper"))
    con.autocommit = True
    try:
        with con.cursor() as cur:
            cur.execute("select 1")
            assert cur.fetchone() == (1,)
            time.sleep(DORMANT_S)                  # dormant, woken by its next query
            cur.execute("select %s::int, current_setting('application_name')", (7,))
            assert cur.fetchone() == (7, "sleeper")
            cur.execute("begin; select 2")         # a transaction spanning a pause keeps its server
            time.sleep(DORMANT_S)
            cur.execute("select txid_current_if_assigned() is null; commit")
    finally:
        con.close()


@pytest.mark.timeout(30)
def test_a_dormant_client_that_closes_is_cleaned_up(dp):
    before = set(_client_ids(dp))
    w = Wire(dp.port)
    assert w.login(USER, "db1") is None
    [cid] = set(_client_ids(dp)) - before
    time.sleep(DORMANT_S)
    w.close()                                      # EOF wakes the dormant relay, which ends the session
    wait_for(lambda: cid not in _client_ids(dp), what="the closed dormant client gone from SHOW CLIENTS")


@pytest.mark.timeout(30)
def test_kill_client_reaches_a_dormant_client(dp):
    before = set(_client_ids(dp))
    w = Wire(dp.port)
    assert w.login(USER, "db1") is None
    [cid] = set(_client_ids(dp)) - before
    time.sleep(DORMANT_S)
    con = Wire(dp.port)
    assert con.login("admin", "console") is None
    assert con.simple_query(f"KILL_CLIENT {cid}") == ([], None, "I")
    con.close()
    got = w.read_until_closed(10)
    errs = [parse_fields(m[1]) for m in got if m[0] == b"E"]
    assert errs and (errs[-1]["S"], errs[-1]["C"]) == ("FATAL", "08006"), got
    odyssey_text(errs[-1]["M"], "Odyssey has dropped the connection")
    w.close()


@pytest.mark.timeout(60)
def test_graceful_shutdown_closes_dormant_clients(pg, roles):
    ensure_roles(pg, USER)
    p = start_pooler(pg, odyssey_config(rule(USER, "db1", pool="transaction"), graceful_shutdown_timeout_ms=60000))
    try:
        w = Wire(p.port)
        assert w.login(USER, "db1") is None
        assert w.simple_query("select 1")[0] == [["1"]]
        time.sleep(DORMANT_S)
        p.signal(signal.SIGTERM)
        got = w.read_until_closed(10)              # told at once, not after the 60 s bound
        errs = [parse_fields(m[1]) for m in got if m[0] == b"E"]
        assert errs and errs[-1]["C"] == "57P01", got
        assert p.proc.wait(15) == 0, p.log()
        w.close()
    finally:
        p.stop()
