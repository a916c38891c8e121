"""Client isolation under transaction/statement pooling: a randomized, seeded multi-client stress.

Several raw-wire clients share a pool of 2 (transaction mode) or 1 (statement mode) servers and
run a fixed random sequence of simple queries, extended-protocol batches (pipelined, with a late
Sync), transactions, errors, COPY in both directions (simple and extended protocol), cancels and
abrupt disconnects at awkward points. Every value a client asks for is unique to (client, op), so
a result relayed to the wrong client, a response sequence cut short or a stale reply left in a
pooled server shows up as a wrong row, a wrong message or a timeout.

Reproduce a failure with ISOLATION_SEED=<seed printed in the failure>.
"""
from __future__ import annotations

import collections
import os
import random
import re
import socket
import struct
import threading
import time
import traceback

import pytest

from tests.integration.conftest import (
    assert_alive,
    direct,
    ensure_roles,
    rule,
    wait_for,
)
from tests.integration.wire import Wire, cancel_request, decode_row, parse_fields, query
from tests.integration.wire import message as msg

SEED = int(os.environ.get("ISOLATION_SEED", "20240611"))
TX_USER, STMT_USER = "iso_tx_user", "iso_stmt_user"
TX_POOL, STMT_POOL = 2, 1
TX_CLIENTS, STMT_CLIENTS, OPS = 6, 1, 60
ANSWER_TIMEOUT = 4.5          # no single answer may take longer (pool_timeout is 4 s)
DB = "db1"
TABLE = "iso_t"

# every backend message the test clients may legitimately receive
_ALLOWED = set(b"123CDTnIEN ZSHGdcts".replace(b" ", b""))


# -- wire helpers ---------------------------------------------------------------------------------
def parse(sql: str) -> bytes:
    return msg(b"P", b"\0" + sql.encode() + b"\0" + struct.pack("!H", 0))


def bind(*params: str) -> bytes:
    body = b"\0\0" + struct.pack("!HH", 0, len(params))
    for p in params:
        raw = p.encode()
        body += struct.pack("!i", len(raw)) + raw
    return msg(b"B", body + struct.pack("!H", 0))


DESCRIBE = msg(b"D", b"P\0")
EXECUTE = msg(b"E", b"\0" + struct.pack("!I", 0))
SYNC = msg(b"S")
COPY_DONE = msg(b"c")
FLUSH = msg(b"H")


def parse_named(name: str, sql: str) -> bytes:
    return msg(b"P", name.encode() + b"\0" + sql.encode() + b"\0" + struct.pack("!H", 0))


def bind_named(name: str, *params: str) -> bytes:
    body = b"\0" + name.encode() + b"\0" + struct.pack("!HH", 0, len(params))
    for p in params:
        raw = p.encode()
        body += struct.pack("!i", len(raw)) + raw
    return msg(b"B", body + struct.pack("!H", 0))


def close_named(name: str) -> bytes:
    return msg(b"C", b"S" + name.encode() + b"\0")


def batch(sql: str, *params: str, describe: bool = True, sync: bool = True) -> bytes:
    return parse(sql) + bind(*params) + (DESCRIBE if describe else b"") + EXECUTE + (SYNC if sync else b"")


def copy_data(line: str) -> bytes:
    return msg(b"d", line.encode())


class Resp:
    """What came back for a request sequence, summarized."""

    def __init__(self, msgs):
        self.msgs = msgs
        self.tags = bytes(t[0] for t, _ in msgs)
        self.rows = [decode_row(b) for t, b in msgs if t == b"D"]
        self.errors = [parse_fields(b).get("C") for t, b in msgs if t == b"E"]
        self.status = "".join(b.decode() for t, b in msgs if t == b"Z")
        self.copy = [b.decode() for t, b in msgs if t == b"d"]
        self.complete = [b.rstrip(b"\0").decode() for t, b in msgs if t == b"C"]

    def __repr__(self):
        return f"Resp(tags={self.tags!r}, rows={self.rows}, errors={self.errors}, status={self.status!r})"


class Client:
    """One raw-wire client with bookkeeping of what it asked for."""

    def __init__(self, port: int, user: str, owner: tuple[str, int] | None = None):
        # owner (prefix, cid): every value of this test run in a row or COPY line must be ours
        self.values = re.compile(re.escape(owner[0]).encode() + rb"c(\d+)n") if owner else None
        self.cid = owner[1] if owner else None
        self.w = Wire(port, timeout=ANSWER_TIMEOUT)
        err = self.w.login(user, DB)
        assert err is None, f"login failed: {err}"
        self.max_wait = 0.0

    def read(self, stop_z: int, stop_on_copy_in: bool = False, stop_on: bytes = b"") -> Resp:
        """Read until `stop_z` ReadyForQuery (or a CopyInResponse, or a `stop_on` message); any
        answer slower than ANSWER_TIMEOUT fails (socket timeout)."""
        msgs, z = [], 0
        while z < stop_z:
            t0 = time.monotonic()
            try:
                tag, body = self.w.read_message()
            except TimeoutError:
                raise AssertionError(f"no answer within {ANSWER_TIMEOUT}s; so far {Resp(msgs)}") from None
            self.max_wait = max(self.max_wait, time.monotonic() - t0)
            assert tag[0] in _ALLOWED, f"unexpected message {tag!r} {body[:80]!r}; so far {Resp(msgs)}"
            msgs.append((tag, body))
            if self.values is not None and tag in (b"D", b"d"):
                for m in self.values.finditer(body):
                    assert int(m.group(1)) == self.cid, (
                        f"LEAK: client {self.cid} received client {m.group(1).decode()}'s data {body[:100]!r}; "
                        f"so far {Resp(msgs)}")
            if tag == b"Z":
                z += 1
            elif tag == b"G" and stop_on_copy_in or tag == stop_on:
                break
        return Resp(msgs)

    def q(self, sql: str, nz: int = 1) -> Resp:
        self.w.send(query(sql))
        return self.read(nz)

    def close(self, abort: bool = False):
        try:
            if not abort:
                self.w.send(msg(b"X"))
        except OSError:
            pass
        self.w.close(abort=abort)


def expect(r: Resp, rows=None, status=None, errors=(), tags=None):
    if rows is not None:
        assert r.rows == rows, f"rows {r.rows} != {rows}: {r}"
    if status is not None:
        assert r.status == status, f"status {r.status!r} != {status!r}: {r}"
    assert r.errors == list(errors), f"errors {r.errors} != {list(errors)}: {r}"
    if tags is not None:
        assert r.tags == tags, f"tags {r.tags!r} != {tags!r}: {r}"


# -- the operations ---------------------------------------------------------------------------------
class Worker:
    def __init__(self, port, user, cid, rng, prefix, mode, ledger):
        self.port, self.user, self.cid, self.rng = port, user, cid, rng
        self.prefix, self.mode, self.ledger = prefix, mode, ledger
        self.c = Client(port, user, (prefix, cid))
        self.n = 0
        self.ops_done = 0
        self.named = {}
        self.log = []
        self.max_wait = 0.0

    def val(self) -> str:
        self.n += 1
        return f"{self.prefix}c{self.cid}n{self.n}"

    def reconnect(self):
        self.max_wait = max(self.max_wait, self.c.max_wait)
        self.c = Client(self.port, self.user, (self.prefix, self.cid))
        self.named = {}

    # named prepared statements (pool_reserve_prepared_statement): every client uses the same
    # few names, some for the same text as other clients and some for its own
    NAMES = ("s0", "s1", "s2")

    def _named_sql(self, name: str) -> str:
        if name == "s0":                      # one text shared by every client
            return "select $1::text"
        return f"select $1::text || '{name}c{self.cid}'"

    def _named_expect(self, name: str, v: str) -> str:
        return v if name == "s0" else f"{v}{name}c{self.cid}"

    def op_named(self):
        # Bind/Execute of a statement that may exist on another server only; Parse when new
        name = self.rng.choice(self.NAMES)
        v = self.val()
        data, tags = b"", b""
        if name not in self.named:
            data += parse_named(name, self._named_sql(name))
            tags += b"1"
            self.named[name] = True
        data += bind_named(name, v) + EXECUTE + SYNC
        self.c.w.send(data)
        expect(self.c.read(1), rows=[[self._named_expect(name, v)]], status="I", tags=tags + b"2DCZ")

    def op_named_pipeline(self):
        # several statements in one batch with a late Sync, then Close of one and a re-Parse
        vs = [self.val() for _ in range(3)]
        data, tags, rows = b"", b"", []
        for name, v in zip(self.NAMES, vs):
            if name not in self.named:
                data += parse_named(name, self._named_sql(name))
                tags += b"1"
                self.named[name] = True
            data += bind_named(name, v) + EXECUTE
            tags += b"2DC"
            rows.append([self._named_expect(name, v)])
        victim = self.rng.choice(self.NAMES)
        data += close_named(victim)
        tags += b"3"
        del self.named[victim]
        self.c.w.send(data)
        time.sleep(self.rng.choice([0, 0.01]))
        self.c.w.send(SYNC)
        expect(self.c.read(1), rows=rows, status="I", tags=tags + b"Z")

    def op_named_error(self):
        # a duplicate Parse: 42P05, the rest of the batch skipped, the statement still usable
        name = self.rng.choice(self.NAMES)
        v = self.val()
        data = b""
        if name not in self.named:
            data += parse_named(name, self._named_sql(name)) + SYNC
            self.named[name] = True
            self.c.w.send(data)
            expect(self.c.read(1), status="I", tags=b"1Z")
        self.c.w.send(parse_named(name, "select 1") + bind_named(name, v) + EXECUTE + SYNC
                      + bind_named(name, v) + EXECUTE + SYNC)
        expect(self.c.read(2), rows=[[self._named_expect(name, v)]], status="II", errors=["42P05"],
               tags=b"EZ2DCZ")

    def op_sql_prepared(self):
        name = f"q{self.rng.randint(0, 1)}"
        v = self.val()
        if name not in self.named:
            expect(self.c.q(f"PREPARE {name}(text) AS select $1 || '{name}c{self.cid}'"), status="I", tags=b"CZ")
            self.named[name] = True
        expect(self.c.q(f"EXECUTE {name}('{v}')"), rows=[[f"{v}{name}c{self.cid}"]], status="I")
        if self.rng.random() < 0.3:
            expect(self.c.q(f"DEALLOCATE {name}"), status="I", tags=b"CZ")
            del self.named[name]

    # simple protocol
    def op_simple(self):
        v = self.val()
        expect(self.c.q(f"select '{v}'::text"), rows=[[v]], status="I", tags=b"TDCZ")

    def op_simple_multi(self):
        a, b = self.val(), self.val()
        expect(self.c.q(f"select '{a}'::text; select '{b}'::text, 2"), rows=[[a], [b, "2"]], status="I")

    def op_pipelined_simple(self):
        # two Query messages in one write, the second slower: two separate ReadyForQuery
        a, b = self.val(), self.val()
        d = self.rng.choice(["0", "0.02", "0.08"])
        self.c.w.send(query(f"select '{a}'::text") + query(f"select '{b}'::text from pg_sleep({d})"))
        expect(self.c.read(2), rows=[[a], [b]], status="II")

    # extended protocol
    def op_ext(self):
        v = self.val()
        self.c.w.send(batch("select $1::text, $2::int + 1", v, str(self.n)))
        expect(self.c.read(1), rows=[[v, str(self.n + 1)]], status="I", tags=b"12TDCZ")

    def op_ext_two(self):
        a, b = self.val(), self.val()
        d = self.rng.choice(["0", "0.03"])
        self.c.w.send(batch("select $1::text", a) + batch(f"select $1::text from pg_sleep({d})", b, describe=False))
        expect(self.c.read(2), rows=[[a], [b]], status="II")

    def op_ext_late_sync(self):
        # the first batch completes while the second waits for its Sync in a later write: the server
        # must stay with this client until that Sync has been answered
        a, b = self.val(), self.val()
        self.c.w.send(batch("select $1::text", a) + batch("select $1::text", b, sync=False))
        time.sleep(self.rng.choice([0.01, 0.05]))
        self.c.w.send(SYNC)
        expect(self.c.read(2), rows=[[a], [b]], status="II")

    def op_ext_error(self):
        a = self.val()
        self.c.w.send(batch("select 1 / $1::int", "0") + batch("select $1::text", a))
        r = self.c.read(2)
        expect(r, rows=[[a]], status="II", errors=["22012"])

    def op_flush(self):
        # Flush instead of Sync: the whole result arrives with no ReadyForQuery; the server must
        # stay with this client until the Sync that comes later
        a = self.val()
        self.c.w.send(batch("select $1::text", a, sync=False) + FLUSH)
        expect(self.c.read(1, stop_on=b"C"), rows=[[a]], tags=b"12TDC")
        time.sleep(self.rng.choice([0.005, 0.03]))
        self.c.w.send(SYNC)
        expect(self.c.read(1), status="I", tags=b"Z")

    def op_mixed_pipeline(self):
        a, b, c = self.val(), self.val(), self.val()
        self.c.w.send(query(f"select '{a}'::text") + batch("select $1::text", b)
                      + query(f"select '{c}'::text from pg_sleep(0.01)"))
        expect(self.c.read(3), rows=[[a], [b], [c]], status="III")

    def op_split(self):
        # one request written in pieces (cut inside headers and bodies), with pauses between
        a, b = self.val(), self.val()
        data = query(f"select '{a}'::text") if self.rng.random() < 0.5 else batch("select $1::text", a)
        data += batch("select $1::text", b)
        cuts = sorted(self.rng.sample(range(1, len(data)), 3))
        for x, y in zip([0] + cuts, cuts + [len(data)]):
            self.c.w.send(data[x:y])
            time.sleep(0.003)
        expect(self.c.read(2), rows=[[a], [b]], status="II")

    def op_large(self):
        # messages longer than the relay's 32 KiB buffer, both ways
        v = self.val()
        big = (v + "-") * self.rng.randint(2000, 6000)
        self.c.w.send(batch("select $1::text || $2::text, length($1)", big, v))
        expect(self.c.read(1), rows=[[big + v, str(len(big))]], status="I")
        k = self.rng.randint(1000, 3000)
        r = self.c.q(f"copy (select '{v}_' || g || repeat('x', 40) from generate_series(1, {k}) g) to stdout")
        expect(r, status="I")
        assert r.copy == [f"{v}_{g}{'x' * 40}\n" for g in range(1, k + 1)], "large COPY TO data differs"

    # errors
    def op_error(self):
        v = self.val()
        expect(self.c.q("select 1/0"), status="I", errors=["22012"])
        expect(self.c.q(f"select '{v}'::text"), rows=[[v]], status="I")

    def op_tx_error(self):
        v = self.val()
        expect(self.c.q("begin"), status="T")
        expect(self.c.q("select 1/0"), status="E", errors=["22012"])
        expect(self.c.q(f"select '{v}'::text"), status="E", errors=["25P02"])
        expect(self.c.q("rollback"), status="I")
        expect(self.c.q(f"select '{v}'::text"), rows=[[v]], status="I")

    # transactions
    def op_tx(self):
        a, b = self.val(), self.val()
        expect(self.c.q("begin"), status="T")
        expect(self.c.q(f"insert into {TABLE} (v) values ('{a}')"), status="T")
        expect(self.c.q(f"select v from {TABLE} where v = '{a}'"), rows=[[a]], status="T")
        self.c.w.send(batch("select $1::text from pg_sleep(0.01)", b))
        expect(self.c.read(1), rows=[[b]], status="T")
        expect(self.c.q("select txid_current_if_assigned() is not null"), rows=[["t"]], status="T")
        commit = self.rng.random() < 0.5
        expect(self.c.q("commit" if commit else "rollback"), status="I")
        expect(self.c.q(f"select count(*) from {TABLE} where v = '{a}'"), rows=[["1" if commit else "0"]])
        self.ledger["committed" if commit else "absent"].append(a)

    # COPY
    def op_copy_out(self):
        v = self.val()
        k = self.rng.randint(1, 6)
        r = self.c.q(f"copy (select '{v}_' || g from generate_series(1, {k}) g) to stdout")
        expect(r, status="I", tags=b"H" + b"d" * k + b"cCZ")
        assert r.copy == [f"{v}_{g}\n" for g in range(1, k + 1)], r.copy

    def op_copy_in_simple(self):
        v = self.val()
        k = self.rng.randint(1, 5)
        expect(self.c.q("begin; create temp table iso_tmp (v text) on commit drop"), status="T")
        self.c.w.send(query("copy iso_tmp from stdin"))
        expect(self.c.read(1, stop_on_copy_in=True), tags=b"G")
        data = [copy_data(f"{v}_{g}\n") for g in range(k)]
        cut = self.rng.randint(0, k)
        self.c.w.send(b"".join(data[:cut]))
        if self.rng.random() < 0.5:
            time.sleep(0.01)
        self.c.w.send(b"".join(data[cut:]) + COPY_DONE)
        r = self.c.read(1)
        expect(r, status="T", tags=b"CZ")
        assert r.complete == [f"COPY {k}"], r
        expect(self.c.q("select count(*), min(v), max(v) from iso_tmp"),
               rows=[[str(k), f"{v}_0", f"{v}_{k - 1}"]], status="T")
        expect(self.c.q("commit"), status="I")

    def op_copy_in_ext(self):
        # libpq's PQexecParams: P B D E S, wait for CopyInResponse, then data, CopyDone, Sync (the
        # first Sync is ignored by PostgreSQL in COPY-in mode)
        v = self.val()
        k = self.rng.randint(1, 4)
        self.c.w.send(batch(f"copy {TABLE} (v) from stdin"))
        expect(self.c.read(1, stop_on_copy_in=True), tags=b"12nG")
        self.c.w.send(b"".join(copy_data(f"{v}_{g}\n") for g in range(k)) + COPY_DONE + SYNC)
        r = self.c.read(1)
        expect(r, status="I", tags=b"CZ")
        assert r.complete == [f"COPY {k}"], r
        expect(self.c.q(f"select count(*) from {TABLE} where v like '{v}\\_%'"), rows=[[str(k)]], status="I")
        self.ledger["committed"].extend(f"{v}_{g}" for g in range(k))

    def op_copy_in_one_write(self):
        # the whole COPY in one write, before the server asks for the data: extended (P B D E S
        # d c S; PostgreSQL ignores only the first Sync) or simple (Q d c)
        v = self.val()
        k = self.rng.randint(1, 4)
        data = b"".join(copy_data(f"{v}_{g}\n") for g in range(k)) + COPY_DONE
        if self.rng.random() < 0.5:
            self.c.w.send(batch(f"copy {TABLE} (v) from stdin") + data + SYNC)
            r = self.c.read(1)
            expect(r, status="I", tags=b"12nGCZ")
        else:
            self.c.w.send(query(f"copy {TABLE} (v) from stdin") + data)
            r = self.c.read(1)
            expect(r, status="I", tags=b"GCZ")
        assert r.complete == [f"COPY {k}"], r
        expect(self.c.q(f"select count(*) from {TABLE} where v like '{v}\\_%'"), rows=[[str(k)]], status="I")
        self.ledger["committed"].extend(f"{v}_{g}" for g in range(k))

    # cancel
    def op_cancel(self):
        v = self.val()
        self.c.w.send(query(f"select pg_sleep(5), '{v}'::text"))
        time.sleep(0.15)
        s = socket.create_connection(("127.0.0.1", self.port), timeout=ANSWER_TIMEOUT)
        s.sendall(cancel_request(*self.c.w.key))
        s.close()
        r = self.c.read(1)
        # the cancel may (rarely) land before the query started on the server: then it completes
        if r.errors:
            expect(r, status="I", errors=["57014"])
        else:
            expect(r, rows=[["", v]], status="I")
        self.op_simple()

    # abrupt disconnects: each ends with a new client
    def op_disconnect(self):
        kind = self.rng.choice(["half", "unsynced", "mid_tx", "mid_copy", "mid_query", "mid_ext_copy", "mid_result",
                                "after_flush"]
                               if self.mode == "transaction" else ["half", "unsynced", "mid_query", "mid_result"])
        self.log.append(f"disconnect:{kind}")
        w = self.c.w
        v = self.val()
        if kind == "half":
            m = query(f"select '{v}'::text")
            w.send(m[:self.rng.randint(1, len(m) - 1)])
        elif kind == "unsynced":
            w.send(batch("select $1::text", v, sync=False))
        elif kind == "mid_tx":
            expect(self.c.q("begin"), status="T")
            expect(self.c.q(f"insert into {TABLE} (v) values ('{v}')"), status="T")
            if self.rng.random() < 0.5:
                w.send(query(f"insert into {TABLE} (v) values ('{v}x')"))
            self.ledger["absent"] += [v, v + "x"]
        elif kind == "mid_copy":
            w.send(query(f"copy {TABLE} (v) from stdin"))
            expect(self.c.read(1, stop_on_copy_in=True), tags=b"G")
            w.send(copy_data(f"{v}\n") + copy_data(f"{v}y\n")[:7])
            self.ledger["absent"] += [v]
        elif kind == "mid_ext_copy":
            w.send(batch(f"copy {TABLE} (v) from stdin"))
            expect(self.c.read(1, stop_on_copy_in=True), tags=b"12nG")
            w.send(copy_data(f"{v}\n"))
            self.ledger["absent"] += [v]
        elif kind == "mid_result":
            # a big result still streaming to us when we vanish
            w.send(query(f"select '{v}' || repeat('z', 2000) from generate_series(1, 3000)"))
            self.c.read(1, stop_on=b"D")
        elif kind == "after_flush":
            w.send(batch("select $1::text", v, sync=False) + FLUSH)
            self.c.read(1, stop_on=b"C")
        elif kind == "mid_query":
            w.send(query(f"select pg_sleep(0.2), '{v}'::text"))
        if self.rng.random() < 0.5:
            time.sleep(0.02)
        self.c.close(abort=self.rng.random() < 0.5)
        self.reconnect()

    TX_OPS = (("simple", 6), ("simple_multi", 2), ("pipelined_simple", 3), ("ext", 5), ("ext_two", 3),
              ("ext_late_sync", 3), ("ext_error", 2), ("error", 2), ("tx_error", 2), ("tx", 4),
              ("copy_out", 2), ("copy_in_simple", 2), ("copy_in_ext", 2), ("copy_in_one_write", 2), ("cancel", 1),
              ("disconnect", 5),
              ("flush", 2), ("mixed_pipeline", 2), ("split", 3), ("large", 1))
    STMT_OPS = (("simple", 6), ("simple_multi", 2), ("pipelined_simple", 3), ("ext", 5), ("ext_two", 3),
                ("ext_late_sync", 3), ("ext_error", 2), ("error", 2), ("copy_out", 2), ("disconnect", 3),
                ("flush", 2), ("mixed_pipeline", 2), ("split", 3), ("large", 1))

    NAMED_OPS = (("named", 6), ("named_pipeline", 3), ("named_error", 2), ("sql_prepared", 3))

    def run(self, nops: int, prepared: bool = False):
        table = self.TX_OPS if self.mode == "transaction" else self.STMT_OPS
        if prepared:
            table = table + self.NAMED_OPS
        names = [n for n, _ in table]
        weights = [w for _, w in table]
        for i in range(nops):
            name = self.rng.choices(names, weights)[0]
            self.log.append(name)
            getattr(self, "op_" + name)()
            self.ops_done += 1
        self.c.close()


# -- backend monitor --------------------------------------------------------------------------------
class Monitor(threading.Thread):
    """Samples the test roles' backends in pg_stat_activity; remembers samples over the limit."""

    def __init__(self, pg, limits: dict[str, int]):
        super().__init__(daemon=True)
        self.pg, self.limits = pg, limits
        self.stop_event = threading.Event()
        self.samples = 0
        self.max_seen = {u: 0 for u in limits}
        self.over: list[tuple[str, list[int]]] = []
        self.error = None

    def run(self):
        try:
            with direct(self.pg) as con, con.cursor() as cur:
                while not self.stop_event.is_set():
                    cur.execute("select usename, array_agg(pid) from pg_stat_activity where "
                                "backend_type = 'client backend' and usename = any(%s) group by usename",
                                (list(self.limits),))
                    for user, pids in cur.fetchall():
                        self.max_seen[user] = max(self.max_seen[user], len(pids))
                        if len(pids) > self.limits[user]:
                            self.over.append((user, pids))
                    self.samples += 1
                    self.stop_event.wait(0.02)
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.error = e

    def stop(self):
        self.stop_event.set()
        self.join(5)


def real_overflows(pg, over) -> list:
    """A sample over pool_size may catch a backend the pooler already closed but PostgreSQL has not
    yet removed; count only samples whose extra pids outlived it by seconds (they are real)."""
    if not over:
        return []
    bad = []
    with direct(pg) as con, con.cursor() as cur:
        for user, pids in over:
            cur.execute("select count(*) from pg_stat_activity where pid = any(%s)", (pids,))
            alive = cur.fetchone()[0]
            limit = TX_POOL if user == TX_USER else STMT_POOL
            if alive > limit:
                bad.append((user, pids, alive))
    return bad


# -- the test ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def iso_roles(pg, roles):
    ensure_roles(pg, TX_USER, STMT_USER, db=DB)
    pg.psql(f"drop table if exists {TABLE}; create table {TABLE} (v text); "
            f"grant all on {TABLE} to {TX_USER}, {STMT_USER};", db=DB)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("discard,prepared", [(False, False), (True, False), (False, True)],
                         ids=["discard_no", "discard_yes", "prepared_statements"])
def test_clients_never_see_each_others_results(pg, iso_roles, odyssey, discard, prepared):
    seed = SEED
    p = odyssey(
        rule(TX_USER, pool="transaction", pool_size=TX_POOL, pool_timeout=4000, pool_discard=discard,
             pool_reserve_prepared_statement=prepared),
        rule(STMT_USER, pool="statement", pool_size=STMT_POOL, pool_timeout=4000, pool_discard=discard,
             pool_reserve_prepared_statement=prepared),
    )
    tag = f"s{seed % 100000}{'y' if discard else 'n'}{'p' if prepared else ''}"
    ledger = {"committed": [], "absent": []}
    monitor = Monitor(pg, {TX_USER: TX_POOL, STMT_USER: STMT_POOL})
    monitor.start()
    workers, failures = [], []
    specs = [(TX_USER, "transaction")] * TX_CLIENTS + [(STMT_USER, "statement")] * STMT_CLIENTS
    for cid, (user, mode) in enumerate(specs):
        rng = random.Random(f"{seed}/{discard}/{prepared}/{cid}")
        workers.append(Worker(p.port, user, cid, rng, f"{tag}_", mode, ledger))

    def body(wk):
        try:
            wk.run(OPS, prepared)
        except BaseException as e:  # noqa: BLE001 - reported below with the seed
            failures.append((wk.cid, wk.ops_done, wk.log[-3:], "".join(
                traceback.format_exception_only(type(e), e)).strip()))

    t0 = time.monotonic()
    threads = [threading.Thread(target=body, args=(wk,), daemon=True) for wk in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(40)
    elapsed = time.monotonic() - t0
    monitor.stop()

    def fail(what):
        pytest.fail(f"ISOLATION_SEED={seed} discard={discard}: {what}\n--- pooler log tail ---\n"
                    f"{p.log()[-3000:]}", pytrace=False)

    if any(t.is_alive() for t in threads):
        fail("a client thread is still running after 40 s")
    if failures:
        fail("client failures (cid, ops done, last ops, error):\n" + "\n".join(map(repr, failures)))
    total = sum(wk.ops_done for wk in workers)
    assert total == OPS * len(workers)
    assert monitor.error is None, monitor.error
    assert monitor.samples > 10
    bad = real_overflows(pg, monitor.over)
    if bad:
        fail(f"more backends than pool_size: {bad}")

    # afterwards: the pooler lives, fresh clients work, no server is left in a transaction or
    # holding locks, and what was rolled back or abandoned is not in the table
    assert_alive(p)
    for user in (TX_USER, STMT_USER):
        c = Client(p.port, user)
        expect(c.q("select 'fresh'::text"), rows=[["fresh"]], status="I")
        c.w.send(batch("select $1::text", "fresh2"))
        expect(c.read(1), rows=[["fresh2"]], status="I")
        c.close()

    busy = []

    def settled():
        busy[:] = _busy(pg)
        return not busy
    try:
        wait_for(settled, timeout=5, what="test backends all idle, holding no locks")
    except AssertionError:
        fail(f"backends left busy (pid, state, lock): {busy}")
    with direct(pg, DB) as con, con.cursor() as cur:
        cur.execute(f"select v from {TABLE} where v = any(%s)", (ledger["absent"],))
        assert cur.fetchall() == [], "rolled back / abandoned rows were committed"
        cur.execute(f"select count(*) from {TABLE} where v = any(%s)", (ledger["committed"],))
        assert cur.fetchone()[0] == len(ledger["committed"])
    kinds = collections.Counter(k for wk in workers for k in wk.log)
    print(f"ISOLATION_SEED={seed} discard={discard}: {total} ops in {elapsed:.1f}s, {dict(kinds)}, "
          f"max backends {monitor.max_seen}, {monitor.samples} samples, "
          f"max single wait {max(max(wk.max_wait, wk.c.max_wait) for wk in workers):.2f}s")


def _busy(pg) -> list:
    with direct(pg) as con, con.cursor() as cur:
        cur.execute("select a.pid, a.state, l.locktype from pg_stat_activity a left join pg_locks l "
                    "on l.pid = a.pid where a.usename = any(%s) and a.backend_type = 'client backend' "
                    "and (a.state <> 'idle' or l.pid is not null)", ([TX_USER, STMT_USER],))
        return cur.fetchall()
