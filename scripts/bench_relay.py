"""The relay's own Python cost per transaction, without sockets or PostgreSQL.

    python scripts/bench_relay.py [--transactions 200000] [--mode simple|extended|prepared]

A fake client Io hands the relay one request per call and a fake server Io one reply; writes go
nowhere. Each transaction is one client read, one server read and the detach of a transaction
pool, so the figure is what the relay and kiwi.protocol add on top of the system calls that
scripts/bench.py measures end to end. `prepared` runs the prepared-statement layer (Bind of a
named statement the server already has).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from types import SimpleNamespace

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from gevent import get_hub  # noqa: E402
from kiwi import be_write, fe_write  # noqa: E402
from odyssey_gevent.prepared import Prepared, Registry  # noqa: E402
from odyssey_gevent.relay import Relay  # noqa: E402
from odyssey_gevent.route import RouteStats  # noqa: E402
from odyssey_gevent.server import Server  # noqa: E402

ROWS = be_write.row_description([("a", 23)]) + be_write.data_row([b"1"]) + be_write.command_complete("SELECT 1")
REQUESTS = {
    "simple": (fe_write.query("select 1"), ROWS + be_write.ready_for_query(b"I")),
    "extended": (fe_write.parse("", "select 1") + fe_write.bind() + fe_write.describe("P") + fe_write.execute()
                 + fe_write.sync(),
                 be_write.parse_complete() + be_write.bind_complete() + ROWS + be_write.ready_for_query(b"I")),
    "prepared": (fe_write.bind("", "P_1") + fe_write.execute() + fe_write.sync(),
                 be_write.bind_complete() + ROWS[len(be_write.row_description([("a", 23)])):]
                 + be_write.ready_for_query(b"I")),
}


class _Io:
    _tls = False                # plain sockets (machinarium.Io's attribute the relay reads)

    def __init__(self, data: bytes):
        self.data = data
        self.sock = SimpleNamespace(hub=get_hub())   # an Io's socket knows its machine's hub

    def read_into(self, view, timeout_ms) -> int:
        n = len(self.data)
        view[:n] = self.data
        return n

    def write(self, data) -> None:
        pass


def run(mode: str, n: int) -> float:
    request, reply = REQUESTS[mode]
    server = Server(None)
    server.io = _Io(reply)
    client = SimpleNamespace(io=_Io(request), rule=SimpleNamespace(pool="transaction", server_drop_on_cached_plan_error=True),
                             route=SimpleNamespace(stats=RouteStats()), server=None, vars={}, prepared=None)

    class Frontend:
        logger = None

        def attach(self):
            client.server = server
            return server

        def detach(self):
            client.server = None

    prepared = None
    if mode == "prepared":
        prepared = Prepared(client, Registry())
        body = fe_write.parse("", "select 1")[6:]            # the Parse payload after the name
        stmt, _ = prepared._map("P_1", body, body)
        server.prepared = None
        prepared._statements(server)[stmt.name] = stmt       # the server has it already
    relay = Relay(Frontend(), client, prepared)
    t0 = time.process_time()
    for _ in range(n):
        relay._from_client()
        relay._from_server(server)
    elapsed = time.process_time() - t0
    if client.server is not None or server.broken:
        raise RuntimeError("the relay did not end each transaction cleanly")
    return elapsed / n * 1e6


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--transactions", type=int, default=200000)
    ap.add_argument("--mode", choices=sorted(REQUESTS), action="append")
    a = ap.parse_args(argv)
    for mode in a.mode or ["simple", "extended", "prepared"]:
        print(f"{mode:9} {run(mode, a.transactions):6.2f} µs of relay CPU per transaction")
    return 0


if __name__ == "__main__":
    sys.exit(main())
