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


@pytest.mark.timeout(30)
@pytest.mark.parametrize("user", ["cancel_tx_user", "cancel_sess_user"])
def test_psycopg3_cancel_safe_sees_a_clean_close(cancel_pooler, user):
    """libpq 17+'s blocking cancel (psycopg 3 `cancel_safe`) waits for the server to close the
    cancel connection and calls a reset a failure: the pooler must close it as PostgreSQL does."""
    import psycopg
    import psycopg.errors

    with psycopg.connect(f"host=127.0.0.1 port={cancel_pooler.port} user={user} dbname=db1 sslmode=disable",
                         autocommit=True) as con:
        problems: list[BaseException] = []

        def cancel_when_running():
            try:
                with psycopg.connect(f"host=127.0.0.1 port={cancel_pooler.port} user={user} "
                                     f"dbname=db1 sslmode=disable", autocommit=True) as watcher:
                    for _ in range(200):
                        row = watcher.execute("select count(*) from pg_stat_activity where query = "
                                              "'select pg_sleep(10)' and state = 'active'").fetchone()
                        if row[0]:
                            break
                        threading.Event().wait(0.02)
                con.cancel_safe()
            except BaseException as e:       # noqa: BLE001 - reported below
                problems.append(e)

        t = threading.Thread(target=cancel_when_running)
        t.start()
        with pytest.raises(psycopg.errors.QueryCanceled):
            con.execute("select pg_sleep(10)")
        t.join(20)
        assert problems == []
        assert con.execute("select 42").fetchone() == (42,)
