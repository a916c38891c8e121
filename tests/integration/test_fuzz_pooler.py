"""A protocol fuzzer against a running pooler (issue 15, hostile input): hypothesis builds random
and mutated message sequences (startup, SSLRequest, CancelRequest, md5 and SCRAM logins, simple
and extended queries, COPY, the console, truncated and absurdly sized frames) and sends each on a
fresh connection, which then ends with a close or a reset.

What must hold: the pooler stays up; a client connected beside the fuzzer keeps getting correct
results; no server beyond pool_size is opened; and once the fuzz connections are gone, the
pooler's open file descriptors return to their baseline and its memory stays put. Bounded:
max_examples keeps it to 10 to 20 s (up to 30 s on a loaded machine), and each connection is
read for a fraction of a second only.
"""
from __future__ import annotations

import socket
import struct

import psycopg2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scripts.pooler import open_fds, rss_kib
from tests.integration.conftest import (assert_alive, backends, ensure_roles, module_pooler, odyssey_config, rule,
                                        wait_for)
from tests.integration.wire import (CANCEL_REQUEST, GSSENC_REQUEST, SSL_REQUEST, message, password, query, startup,
                                    terminate)

USERS = ("fuzz_tx_user", "fuzz_sess_user")
POOL_SIZE = 2


@pytest.fixture(scope="module")
def zp(pg, roles):
    ensure_roles(pg, *USERS)
    pg.psql("drop table if exists t_fuzz; create table t_fuzz (a int, b text);"
            + "".join(f"grant all on t_fuzz to {u};" for u in USERS), db="db1")
    text = odyssey_config(
        rule("fuzz_tx_user", pool="transaction", pool_size=POOL_SIZE, pool_timeout=1000,
             pool_reserve_prepared_statement=True, pool_idle_in_request_timeout_ms=500),
        rule("fuzz_sess_user", pool="session", pool_size=POOL_SIZE, pool_timeout=1000),
        rule("auth_md5", "db1", authentication="md5", password="md5secret"),
        rule("auth_scram", "db1", authentication="scram-sha-256", password="scramsecret"),
        rule("admin", "console", pool="session", storage="local", role="admin"),
        listen={"client_login_timeout": 1000},
    )
    text += 'storage "local" {\n    type "local"\n}\n'
    yield from module_pooler(pg, text)




# -- what the fuzzer sends ------------------------------------------------------------------------
def _c_str(s: str) -> bytes:
    return s.encode() + b"\0"


SQL = st.sampled_from([
    "select 1", "select pg_sleep(0.05)", "begin", "commit", "rollback", "insert into t_fuzz values (1, 'x')",
    "copy t_fuzz from stdin", "copy t_fuzz to stdout", "prepare p as select 1", "execute p",
    "deallocate all", "discard all", "set application_name = 'fuzz'", "listen ch", "select repeat('x', 100000)",
    "show pools", "show servers", "show clients", "", ";", "selec", "select * from nowhere", "\\x00",
])
NAMES = st.sampled_from(["", "s1", "P_1", "x" * 70])

VALID = st.one_of(
    SQL.map(query),
    st.tuples(NAMES, SQL).map(lambda t: message(b"P", _c_str(t[0]) + _c_str(t[1]) + struct.pack("!H", 0))),
    st.tuples(NAMES, NAMES).map(lambda t: message(b"B", _c_str(t[0]) + _c_str(t[1]) + struct.pack("!HHH", 0, 0, 0))),
    st.sampled_from([message(b"D", b"S\0"), message(b"D", b"Ps1\0"), message(b"E", b"\0" + struct.pack("!I", 0)),
                     message(b"S"), message(b"H"), message(b"C", b"Ss1\0"), message(b"C", b"P\0"),
                     message(b"d", b"1\tx\n"), message(b"c"), message(b"f", b"stop\0"), terminate(),
                     message(b"F", struct.pack("!I", 1234) + struct.pack("!HH", 0, 0) + struct.pack("!H", 0)),
                     password("md5secret"), password("")]),
)


@st.composite
def frame(draw):
    """A message: a valid one, or one with a random type, body or declared length."""
    kind = draw(st.integers(0, 5))
    if kind <= 2:
        return draw(VALID)
    if kind == 3:                                   # any type byte, random body, honest length
        t = draw(st.integers(0, 255))
        return message(bytes([t]), draw(st.binary(max_size=64)))
    if kind == 4:                                   # a declared length that lies
        t = draw(st.sampled_from(b"QPBEDSHCdcfFXp"))
        length = draw(st.sampled_from([0, 1, 3, 4, 5, 1 << 20, (1 << 30) + 1, 0x7FFFFFFF, 0xFFFFFFFF]))
        return bytes([t]) + struct.pack("!I", length) + draw(st.binary(max_size=16))
    return draw(st.binary(min_size=1, max_size=48))  # raw junk


@st.composite
def opening(draw):
    """How the connection starts: a login (maybe after SSL/GSS requests), or something else."""
    kind = draw(st.integers(0, 6))
    user, db = draw(st.sampled_from([("fuzz_tx_user", "db1"), ("fuzz_sess_user", "db1"), ("admin", "console"),
                                     ("auth_md5", "db1"), ("auth_scram", "db1"), ("nobody", "nowhere")]))
    if kind <= 3:
        pre = draw(st.lists(st.sampled_from([SSL_REQUEST, GSSENC_REQUEST]), max_size=2))
        params = draw(st.dictionaries(st.sampled_from(["application_name", "options", "client_encoding",
                                                      "_pq_.x", "DateStyle"]),
                                      st.sampled_from(["fuzz", "-c work_mem=1MB", "UTF8", "\u00e9", "ISO"]),
                                      max_size=2))
        protocol = draw(st.sampled_from([196608, 196608, 196609, 131072, 1234]))
        return b"".join(struct.pack("!II", 8, c) for c in pre) + startup(user, db, protocol, **params)
    if kind == 4:
        return struct.pack("!IIII", 16, CANCEL_REQUEST, draw(st.integers(0, 2**32 - 1)),
                           draw(st.integers(0, 2**32 - 1)))
    if kind == 5:                                   # a startup packet cut or with a lying length
        packet = startup(user, db)
        cut = draw(st.integers(1, len(packet)))
        return struct.pack("!I", draw(st.sampled_from([len(packet), 8, 7, 10001, 0xFFFFFFFF]))) + packet[4:cut]
    return draw(st.binary(min_size=1, max_size=64))


SESSION = st.tuples(opening(), st.lists(frame(), max_size=8), st.booleans(), st.integers(1, 4))


def _run(port: int, opening_bytes: bytes, frames: list[bytes], reset: bool, chunks: int) -> None:
    s = socket.create_connection(("127.0.0.1", port), timeout=2)
    s.settimeout(0.05)
    try:
        data = opening_bytes + b"".join(frames)
        step = max(1, len(data) // chunks)
        for i in range(0, len(data), step):
            try:
                s.sendall(data[i:i + step])
            except OSError:
                break
            try:
                while s.recv(65536):
                    pass
            except (socket.timeout, OSError):
                pass
    finally:
        if reset:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()


class Neighbour:
    """A client beside the fuzzer that must keep getting its own correct answers."""

    def __init__(self, p):
        self.p = p
        self.con = psycopg2.connect(p.dsn("fuzz_tx_user", "db1"))
        self.con.autocommit = True
        self.n = 0

    def check(self) -> None:
        self.n += 1
        try:
            cur = self.con.cursor()
            cur.execute("select %s::int * 2", (self.n,))
        except psycopg2.Error as e:     # say why, from the pooler's side (psycopg2 may hide the FATAL)
            raise AssertionError(f"the neighbour failed: {e}\n{self.p.log()[-6000:]}") from e
        assert cur.fetchone() == (self.n * 2,)


@pytest.mark.timeout(180)
def test_fuzzed_sessions_harm_nobody(zp, pg):
    neighbour = Neighbour(zp)
    neighbour.check()
    baseline = open_fds(zp.pid)
    rss_before = rss_kib(zp.pid)
    count = [0]

    @settings(max_examples=200, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(SESSION)
    def fuzz(session):
        _run(zp.port, *session)
        count[0] += 1
        if count[0] % 25 == 0:
            assert_alive(zp)
            neighbour.check()

    try:
        fuzz()
        assert_alive(zp)
        neighbour.check()
        for user in USERS:
            assert len(backends(pg, user)) <= POOL_SIZE
    finally:
        neighbour.con.close()
    # the neighbour is gone too: at most its server stays open, and the pool may keep idle servers
    wait_for(lambda: open_fds(zp.pid) <= baseline + POOL_SIZE * len(USERS), timeout=15,
             what="the pooler's fds to return to baseline")
    assert "Traceback" not in zp.log()
    # memory: sessions came one at a time, so nothing they used may stay (a run: +68 KiB)
    assert rss_kib(zp.pid) - rss_before < 4096, (rss_before, rss_kib(zp.pid))
