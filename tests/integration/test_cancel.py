"""CancelRequest through the pooler: the running query stops, the connection stays usable."""
from __future__ import annotations

import threading
import time

import psycopg2
import psycopg2.errors
import pytest

from tests.integration.conftest import module_pooler, odyssey_config, rule
from tests.integration.wire import Wire, cancel_request


@pytest.fixture(scope="module")
def cancel_pooler(pg, roles):
    text = odyssey_config(
        rule("cancel_tx_user", pool="transaction", pool_size=2),
        rule("cancel_sess_user", pool="session", pool_size=2),
    )
    yield from module_pooler(pg, text)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("user", ["cancel_tx_user", "cancel_sess_user"])
def test_cancel_running_query(cancel_pooler, user):
    con = psycopg2.connect(cancel_pooler.dsn(user, "db1"))
    con.autocommit = True
    try:
        cur = con.cursor()
        cur.execute("select 1")
        timer = threading.Timer(0.5, con.cancel)
        timer.start()
        t0 = time.monotonic()
        with pytest.raises(psycopg2.errors.QueryCanceled) as e:
            cur.execute("select pg_sleep(10)")
        timer.join()
        assert time.monotonic() - t0 < 5
        assert e.value.pgcode == "57014"
        assert "canceling statement due to user request" in str(e.value)
        cur.execute("select 42")
        assert cur.fetchone() == (42,)
    finally:
        con.close()


@pytest.mark.timeout(30)
def test_cancel_with_a_wrong_key_does_nothing(cancel_pooler):
    con = psycopg2.connect(cancel_pooler.dsn("cancel_sess_user", "db1"))
    con.autocommit = True
    try:
        w = Wire(cancel_pooler.port)
        w.send(cancel_request(12345, 67890))
        w.read_until_closed(5)                  # no reply, just a close
        w.close()
        cur = con.cursor()
        cur.execute("select pg_sleep(0.3), 1")
        assert cur.fetchone()[1] == 1
    finally:
        con.close()
