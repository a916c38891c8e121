"""A backend terminated (pg_terminate_backend) at every stage of a request: mid-query, mid-COPY
(in and out), mid-pipeline, mid-transaction. The client gets PostgreSQL's FATAL 57P01 and/or the
pooler's 08006 and its connection ends; the pooler stays up, the route serves the next client,
nothing the terminated transaction wrote is visible, and no pool slot leaks: the console's
server count matches pg_stat_activity."""
from __future__ import annotations

import struct

import pytest

from tests.integration.conftest import (assert_alive, backends, console_rows, direct, ensure_roles,
                                        module_pooler, odyssey_config, rule, scalar, wait_for)
from tests.integration.wire import Wire, errors_in, message, query

USERS = ("bk_tx_user", "bk_prep_user", "bk_sess_user")
TABLE = "t_bk"


@pytest.fixture(scope="module")
def bp(pg, roles):
    ensure_roles(pg, *USERS)
    pg.psql(f"drop table if exists {TABLE}; create table {TABLE} (id int, who text);"
            + "".join(f"grant all on {TABLE} to {u};" for u in USERS), db="db1")
    text = odyssey_config(
        rule("bk_tx_user", pool="transaction", pool_size=2),
        rule("bk_prep_user", pool="transaction", pool_size=2, pool_reserve_prepared_statement=True),
        rule("bk_sess_user", pool="session", pool_size=2),
        rule("admin", "console", pool="session", storage="local", role="admin"),
    )
    text += 'storage "local" {\n    type "local"\n}\n'
    yield from module_pooler(pg, text)


def pool_state(p, pg, user: str) -> str:
    """What the pooler and PostgreSQL hold for `user` now: for a failure's message (a stall)."""
    lines = []
    for command in ("show servers", "show clients", "show pools"):
        rows = [r for r in console_rows(p, command) if r.get("user") == user]
        lines.append(f"{command}: {rows}")
    with direct(pg) as d, d.cursor() as cur:
        cur.execute("select pid, state, wait_event_type, wait_event, left(query, 80) from pg_stat_activity "
                    "where usename = %s", (user,))
        lines.append(f"pg_stat_activity: {cur.fetchall()}")
    return "\n".join(lines)


def console_servers(p, user: str) -> int:
    """How many servers the pooler's console lists for `user` (SHOW SERVERS)."""
    return sum(1 for row in console_rows(p, "show servers") if row["user"] == user)


def assert_no_leak(p, pg, user: str) -> None:
    """The console's server count for `user` settles on what PostgreSQL runs for it."""
    wait_for(lambda: console_servers(p, user) == len(backends(pg, user)), timeout=10,
             what=f"console and pg_stat_activity to agree on {user}'s servers")


def parse(sql: str) -> bytes:
    return message(b"P", b"\0" + sql.encode() + b"\0" + struct.pack("!H", 0))


BIND = message(b"B", b"\0\0" + struct.pack("!HHH", 0, 0, 0))
EXECUTE = message(b"E", b"\0" + struct.pack("!I", 0))
SYNC = message(b"S")


def terminate_backend_of(pg, user: str, state: str = "active", contains: str = "") -> int:
    def find():
        with direct(pg) as d, d.cursor() as cur:
            cur.execute("select pid from pg_stat_activity where usename = %s and state = %s and query like %s",
                        (user, state, f"%{contains}%"))
            row = cur.fetchone()
            return row[0] if row else None
    pid = wait_for(find, timeout=10, what=f"a {state} backend of {user}")
    with direct(pg) as d:
        d.cursor().execute("select pg_terminate_backend(%s)", (pid,))
    return pid


def _start(stage: str, w: Wire, me: str) -> tuple[str, str]:
    """Begin `stage` on the logged-in client; returns (state, query text) to find its backend."""
    if stage == "query":
        w.send(query(f"insert into {TABLE} select 1, '{me}' from pg_sleep(20)"))
        return "active", "pg_sleep"
    if stage == "copy_in":
        w.send(query(f"copy {TABLE} from stdin"))
        assert w.read_message()[0] == b"G"
        w.send(message(b"d", f"2\t{me}\n".encode()))
        return "active", "copy"
    if stage == "copy_out":
        w.send(query("copy (select generate_series(1, 50000000)) to stdout"))
        assert w.read_message()[0] == b"H"
        return "active", "generate_series"
    if stage == "pipeline":
        w.send(parse(f"insert into {TABLE} values (3, '{me}')") + BIND + EXECUTE + SYNC
               + parse("select pg_sleep(20)") + BIND + EXECUTE + SYNC
               + parse("select 1") + BIND + EXECUTE + SYNC)
        return "active", "pg_sleep"
    if stage == "transaction":
        assert w.simple_query(f"begin; insert into {TABLE} values (4, '{me}')")[1:] == (None, "T")
        return "idle in transaction", TABLE
    raise AssertionError(stage)


CASES = [("bk_tx_user", s) for s in ("query", "copy_in", "copy_out", "pipeline", "transaction")] + [
    ("bk_prep_user", "pipeline"), ("bk_sess_user", "query"), ("bk_sess_user", "transaction")]


@pytest.mark.timeout(40)
@pytest.mark.parametrize("user,stage", CASES)
def test_backend_terminated(bp, pg, user, stage):
    me = f"{user}-{stage}"
    w = Wire(bp.port)
    assert w.login(user, "db1") is None
    try:
        state, text = _start(stage, w, me)
    except (OSError, AssertionError) as e:      # (a socket timeout is an OSError)
        raise AssertionError(f"{stage} did not start: {e!r}\n{pool_state(bp, pg, user)}") from e
    terminate_backend_of(pg, user, state, text)
    got = w.read_until_closed(15)
    errors = errors_in(got)
    codes = {e["C"] for e in errors}
    if stage == "copy_out" and not codes:
        # this client reads nothing until the terminate, so PostgreSQL may be blocked sending
        # to the pooler: a backend terminated then sends no FATAL (it could be mid-message) and
        # its stream may end inside a CopyData. The client then gets the COPY lines relayed and
        # the end of the connection; what it holds past the last whole message is part of one
        # CopyData, not an error spliced into it (test_faults_network's mid-row test makes the
        # cut on purpose)
        assert all(t == b"d" for t, _ in got), got[-5:]
        if w.buf:
            (length,) = struct.unpack("!I", w.buf[1:5]) if len(w.buf) >= 5 else (1 << 30,)
            assert w.buf[:1] == b"d" and len(w.buf) < 1 + length, w.buf[-100:]
            assert b"E" not in w.buf[5:], w.buf[-100:]
    else:
        assert codes & {"57P01", "08006"}, got[-5:]
    assert codes <= {"57P01", "08006"}, errors
    assert not any("Errno" in e["M"] for e in errors), errors
    if stage == "pipeline":
        # the batch before the one that was killed committed on its own, as PostgreSQL does
        assert b"C" in {t for t, _ in got}
    assert_alive(bp)
    # the route serves the next client, and the terminated work left nothing behind
    assert scalar(bp.dsn(user, "db1"), f"select count(*) from {TABLE} where who = '{me}' and id <> 3") == 0
    assert_no_leak(bp, pg, user)
