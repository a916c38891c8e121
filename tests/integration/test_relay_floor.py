"""scripts/relay_floor.py: the v3 header walk and the table (pure), and every relay variant
carrying real psycopg2 sessions to PostgreSQL."""
from __future__ import annotations

import random
import time

import psycopg2
import pytest

from kiwi import be_write
from scripts import relay_floor
from scripts.relay_floor import ReadyWalker, RelayProcess

ROWS = be_write.row_description([("a", 23)]) + be_write.data_row([b"1"]) + be_write.command_complete("SELECT 1")
# three transactions' replies: idle, in a transaction, failed transaction; a long row in between
STREAM = (ROWS + be_write.ready_for_query(b"I")
          + be_write.data_row([b"x" * 300]) + be_write.ready_for_query(b"T")
          + be_write.ready_for_query(b"E"))
STATUSES = [ord("I"), ord("T"), ord("E")]


def walk(chunks) -> list:
    walker, found = ReadyWalker(), []
    for chunk in chunks:
        buf = bytearray(chunk) + bytearray(b"\xff" * 7)        # bytes past n must be ignored
        status = walker.feed(buf, len(chunk))
        if status is not None:
            found.append(status)
    return found, walker


def test_ready_walker_whole_stream_reports_the_last_status():
    found, walker = walk([STREAM])
    assert found == [ord("E")] and walker.ready == 3 and walker.at_ready


def test_ready_walker_at_ready_only_when_the_chunk_ends_with_ready_for_query():
    first = len(ROWS) + 6                                   # T, D, C and Z(I)
    for cut in range(1, len(STREAM)):
        walker = ReadyWalker()
        status = walker.feed(bytearray(STREAM[:cut]), cut)
        ends = cut in (first, first + len(be_write.data_row([b"x" * 300])) + 6, len(STREAM))
        assert walker.at_ready == ends, cut
        if cut == first:
            assert status == ord("I")
        status = walker.feed(bytearray(STREAM[cut:]), len(STREAM) - cut)
        assert status == ord("E") and walker.at_ready and walker.ready == 3
    walker = ReadyWalker()
    walker.feed(bytearray(STREAM[:first - 1]), first - 1)     # Z's status byte not yet here
    assert not walker.at_ready
    assert walker.feed(bytearray(STREAM[first - 1:first]), 1) == ord("I") and walker.at_ready


def test_startup_packet_round_trip_and_login_reply():
    packet = relay_floor.startup_packet({"user": "u", "database": "d", "application_name": "x y"})
    assert int.from_bytes(packet[:4], "big") == len(packet)
    assert relay_floor.parse_startup(packet[4:]) == {"user": "u", "database": "d", "application_name": "x y"}
    assert relay_floor.parse_startup((80877102).to_bytes(4, "big") + bytes(8)) is None     # cancel request
    assert relay_floor.parse_startup(b"\0\0") is None
    status = b"S" + (4 + 18).to_bytes(4, "big") + b"server_version\0" + b"16\0"
    reply = relay_floor.login_reply(status, 7, 9)
    walker = ReadyWalker()
    assert walker.feed(bytearray(reply), len(reply)) == ord("I") and walker.at_ready
    assert reply.startswith(b"R\0\0\0\x08\0\0\0\0" + status + b"K\0\0\0\x0c\0\0\0\x07\0\0\0\x09")


@pytest.mark.parametrize("cut", range(1, len(STREAM)))
def test_ready_walker_any_split_in_two(cut):
    found, walker = walk([STREAM[:cut], STREAM[cut:]])
    assert walker.ready == 3
    assert found[-1] == ord("E")
    assert all(s in STATUSES for s in found)


def test_ready_walker_byte_by_byte_and_random_chunks():
    found, walker = walk([STREAM[i:i + 1] for i in range(len(STREAM))])
    assert found == STATUSES and walker.ready == 3
    rng = random.Random(7)
    for _ in range(200):
        chunks, pos = [], 0
        while pos < len(STREAM):
            step = rng.randint(1, 12)
            chunks.append(STREAM[pos:pos + step])
            pos += step
        found, walker = walk(chunks * 2)           # the stream twice: state carries across
        assert walker.ready == 6 and found[-1] == ord("E")
        assert [s for s in found if s not in STATUSES] == []


def test_parse_args_and_targets(monkeypatch):
    monkeypatch.delenv("ODYSSEY_BIN", raising=False)
    a = relay_floor.parse_args(["--measure"])
    assert a.variants == list(relay_floor.VARIANTS) and (a.clients, a.seconds, a.rounds) == (10, 10, 3)
    assert relay_floor.targets_of(a) == list(relay_floor.VARIANTS) + ["direct"]
    a = relay_floor.parse_args(["--measure", "--variants", "epoll", "--odyssey-bin", "/opt/odyssey"])
    assert relay_floor.targets_of(a) == ["epoll", "odyssey", "direct"] and not a.connect
    a = relay_floor.parse_args(["--measure", "--variants", "epoll-pool", "--connect", "--ours"])
    assert relay_floor.targets_of(a) == ["epoll-pool", "odyssey-gevent", "direct"] and a.connect
    a = relay_floor.parse_args(["--serve", "epoll", "--listen-port", "1", "--pg-port", "2"])
    assert (a.serve, a.listen_port, a.pg_host, a.pg_port) == ("epoll", 1, "127.0.0.1", 2)
    for bad in ([], ["--measure", "--serve", "epoll"], ["--serve", "epoll"], ["--measure", "--variants", "uv"],
                ["--measure", "--rounds", "0"]):
        with pytest.raises(SystemExit):
            relay_floor.parse_args(bad)


def test_floor_table_medians_and_per_round_ratios():
    results = {"epoll": [dict(tps=100, user_us=4.0, sys_us=6.0), dict(tps=300, user_us=6.0, sys_us=8.0),
                         dict(tps=200, user_us=5.0, sys_us=7.0)],
               "direct": [dict(tps=400, user_us=None, sys_us=None)]}
    table = relay_floor.format_floor_table(["epoll", "direct"], results, {"epoll": 12345})
    assert "| epoll             | 200 | 5.0        | 7.0          | 12.0      | 12,345          |" in table
    assert "| direct PostgreSQL | 400 | -          | -            | -         | -               |" in table
    assert "C Odyssey" not in table
    # per round: TPS 100/50, 300/300, 200/400 -> 2.0, 1.0, 0.5; CPU 10/20, 14/7, 12/12 -> 0.5, 2.0, 1.0
    results["odyssey"] = [dict(tps=50, user_us=5.0, sys_us=15.0), dict(tps=300, user_us=2.0, sys_us=5.0),
                          dict(tps=400, user_us=4.0, sys_us=8.0)]
    table = relay_floor.format_floor_table(["epoll", "odyssey", "direct"], results, {})
    lines = {ln.split("|")[1].strip(): [c.strip() for c in ln.split("|")[2:-1]] for ln in table.splitlines()[2:]}
    assert lines["epoll"][-2:] == ["1.00", "1.00"]
    assert lines["C Odyssey (pools)"][-2:] == ["1.00", "1.00"] and lines["C Odyssey (pools)"][3] == "12.0"
    assert lines["direct PostgreSQL"][-2:] == ["8.00", "-"]          # its one round: 400 / 50


def test_cpu_split_of_this_process():
    import os
    user, system = relay_floor.cpu_split(os.getpid())
    assert user > 0 and system >= 0


@pytest.mark.parametrize("variant", relay_floor.VARIANTS)
def test_each_variant_relays_sessions(pg, variant):
    relay = RelayProcess(variant, pg.host, pg.port)
    try:
        conns = [psycopg2.connect(f"host=127.0.0.1 port={relay.port} user=postgres dbname=postgres "
                                  "sslmode=disable") for _ in range(3)]
        for i, con in enumerate(conns):
            with con.cursor() as cur:
                cur.execute("select pg_backend_pid(), %s", (i,))
                pid, echo = cur.fetchone()
                assert echo == i
                # a reply larger than the relay's buffer and than a socket send
                cur.execute("select repeat('x', 1000) from generate_series(1, 2000)")
                rows = cur.fetchall()
                assert len(rows) == 2000 and rows[-1][0] == "x" * 1000
                cur.execute("select pg_backend_pid()")
                assert cur.fetchone()[0] == pid                  # 1:1: the same backend throughout
            con.commit()
        pids = set()
        for con in conns:
            with con.cursor() as cur:
                cur.execute("select pg_backend_pid()")
                pids.add(cur.fetchone()[0])
            con.close()
        assert len(pids) == 3
        # a closed client closes its server connection: no backend left behind
        deadline = time.monotonic() + 10
        while pg.psql(f"select count(*) from pg_stat_activity where pid in ({','.join(map(str, pids))})") != "0":
            assert time.monotonic() < deadline, "a relay kept a server connection after its client left"
            time.sleep(0.05)
        assert relay.proc.poll() is None
    finally:
        err = relay.stop()
    assert "Traceback" not in err, err


def test_epoll_pool_shares_few_servers_and_keeps_transactions(pg):
    import threading
    relay = RelayProcess("epoll-pool", pg.host, pg.port, pool_size=2)
    dsn = f"host=127.0.0.1 port={relay.port} user=trust_user dbname=postgres sslmode=disable"
    errors, seen = [], set()

    def client(i):
        try:
            con = psycopg2.connect(dsn)
            with con.cursor() as cur:
                for j in range(20):
                    cur.execute("select pg_backend_pid(), %s", (j,))    # a transaction each
                    pid, echo = cur.fetchone()
                    assert echo == j
                    cur.execute("select pg_backend_pid()")
                    assert cur.fetchone()[0] == pid                   # the same server until commit
                    seen.add(pid)
                    con.commit()
            con.close()
        except Exception as e:              # noqa: BLE001 - reported by the main thread
            errors.append(e)

    try:
        threads = [threading.Thread(target=client, args=(i,)) for i in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        assert 1 <= len(seen) <= 2                  # five clients, two servers at most
        backends = pg.psql("select count(*) from pg_stat_activity where usename = 'trust_user'")
        assert backends == str(len(seen))           # the pool keeps its servers, nothing more
        assert relay.proc.poll() is None
    finally:
        err = relay.stop()
    assert "Traceback" not in err, err
