"""Pool exhaustion: 500 clients at once on a transaction pool of 5 with pool_timeout. Each client
either gets its result or FATAL 53300, nothing else and never a hang; PostgreSQL never sees more
than pool_size servers; the pooler keeps serving afterwards.

The clients are raw protocol v3 over asyncio streams (no driver, no threads), so 500 of them
cost little.
"""
from __future__ import annotations

import asyncio
import collections
import struct

import pytest

from tests.integration.conftest import assert_alive, backends, ensure_roles, module_pooler, odyssey_config, rule, \
    scalar
from tests.integration.wire import parse_fields, query, startup

USER = "exhaust_user"
CLIENTS = 500
POOL_SIZE = 5


@pytest.fixture(scope="module")
def ep(pg, roles):
    ensure_roles(pg, USER)
    yield from module_pooler(pg, odyssey_config(
        rule(USER, pool="transaction", pool_size=POOL_SIZE, pool_timeout=300)))


async def _read(reader) -> tuple[bytes, bytes]:
    head = await reader.readexactly(5)
    (length,) = struct.unpack("!I", head[1:])
    return head[:1], await reader.readexactly(length - 4)


async def _client(port: int) -> str:
    """One client: log in, run a short query. Returns 'ok', the SQLSTATE it got, or what broke."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as e:
        return f"connect: {e}"
    try:
        writer.write(startup(USER, "db1"))
        while True:
            tag, body = await _read(reader)
            if tag == b"E":
                return parse_fields(body)["C"]
            if tag == b"Z":
                break
        writer.write(query("select 7 from pg_sleep(0.02)"))
        result = None
        while True:
            tag, body = await _read(reader)
            if tag == b"E":
                fields = parse_fields(body)
                return fields["C"] if fields["S"] == "FATAL" else f"error {fields}"
            if tag == b"D":
                result = body
            if tag == b"Z":
                return "ok" if result is not None and result.endswith(b"7") else f"result {result!r}"
    except (asyncio.IncompleteReadError, ConnectionError) as e:
        return f"closed: {e!r}"
    finally:
        writer.close()


async def _storm(port: int) -> collections.Counter:
    outcomes = await asyncio.wait_for(
        asyncio.gather(*(_client(port) for _ in range(CLIENTS))), timeout=60)
    return collections.Counter(outcomes)


@pytest.mark.timeout(90)
def test_500_clients_on_a_pool_of_5(ep, pg):
    outcomes = asyncio.run(_storm(ep.port))
    assert sum(outcomes.values()) == CLIENTS
    assert set(outcomes) <= {"ok", "53300"}, outcomes
    # both outcomes happen: the pool served while it could, then refused
    assert outcomes["ok"] >= POOL_SIZE and outcomes["53300"] > 0, outcomes
    assert len(backends(pg, USER)) <= POOL_SIZE
    assert_alive(ep)
    assert scalar(ep.dsn(USER, "db1"), "select 8") == 8
