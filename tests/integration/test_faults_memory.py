"""Huge messages are streamed, not buffered: a 48 MiB Query, a 48 MiB result row and 48 MiB of
COPY data pass through the pooler (transaction pooling with prepared statements on, the layer
that reads some messages whole) while its RSS stays flat (within 16 MiB)."""
from __future__ import annotations

import struct

import pytest

from scripts.pooler import rss_kib
from tests.integration.conftest import assert_alive, ensure_roles, module_pooler, odyssey_config, rule
from tests.integration.wire import Wire, message, query

USER = "huge_user"
SIZE = 48 << 20
FLAT_KIB = 16 << 10


@pytest.fixture(scope="module")
def hp(pg, roles):
    ensure_roles(pg, USER)
    pg.psql(f"drop table if exists t_huge; create table t_huge (b text); grant all on t_huge to {USER}", db="db1")
    yield from module_pooler(pg, odyssey_config(
        rule(USER, pool="transaction", pool_size=1, pool_reserve_prepared_statement=True)))



def _drain(w: Wire) -> tuple[list[bytes], int]:
    """Read to ReadyForQuery without keeping big bodies: (message types, bytes of DataRow and
    CopyData bodies). Reads the socket directly: Wire's buffer is made for small replies."""
    sock = w.sock
    pending = bytearray(w.buf)
    w.buf = b""
    tags, data, skip = [], 0, 0
    chunk = bytearray(1 << 20)
    while True:
        while True:
            if skip:                                      # the rest of a body, dropped as it comes
                take = min(skip, len(pending))
                del pending[:take]
                skip -= take
                if skip:
                    break
                continue
            if len(pending) < 5:
                break
            tag = bytes(pending[:1])
            (length,) = struct.unpack_from("!I", pending, 1)
            if tag in (b"D", b"d"):
                tags.append(tag)
                data += length - 4
                skip = length - 4
                del pending[:5]
                continue
            if len(pending) < 1 + length:
                break
            body = bytes(pending[5:1 + length])
            del pending[:1 + length]
            if tag == b"E":
                raise AssertionError(body)
            tags.append(tag)
            if tag == b"Z":
                return tags, data
        n = sock.recv_into(chunk)
        if n == 0:
            raise EOFError("closed")
        pending += chunk[:n]


@pytest.mark.timeout(120)
def test_huge_query_result_and_copy_are_streamed(hp):
    w = Wire(hp.port, timeout=60)
    assert w.login(USER, "db1") is None
    assert w.simple_query("select 1")[1:] == (None, "I")
    before = rss_kib(hp.pid)
    # a 48 MiB query text (a literal PostgreSQL measures)
    w.send(query("select length('" + "x" * SIZE + "')"))
    tags, _ = _drain(w)
    assert tags[-1] == b"Z" and b"D" in tags
    # a 48 MiB result row
    w.send(query(f"select repeat('y', {SIZE})"))
    tags, data = _drain(w)
    assert data >= SIZE
    # 48 MiB of COPY data in 1 MiB messages
    w.send(query("copy t_huge from stdin"))
    assert w.read_message()[0] == b"G"
    chunk = message(b"d", b"z" * ((1 << 20) - 1) + b"\n")
    for _ in range(SIZE >> 20):
        w.send(chunk)
    w.send(message(b"c"))
    tags, _ = _drain(w)
    assert tags[0] == b"C", tags
    after = rss_kib(hp.pid)
    assert after - before < FLAT_KIB, f"pooler RSS grew from {before} KiB to {after} KiB"
    w.close()
    assert_alive(hp)
