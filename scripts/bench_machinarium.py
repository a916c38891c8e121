#!/usr/bin/env python
"""Micro-benchmark of machinarium: channel throughput (shared and non-shared) and cross-machine
ping-pong latency. Run: .venv/bin/python scripts/bench_machinarium.py  (about 10-20 s)."""
from __future__ import annotations

import os
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import machinarium as mm  # noqa: E402

N = 200_000
ROUNDS = 5000


def same_machine_stream(shared: bool) -> float:
    """One writer coroutine and one reader coroutine in one machine; writer yields every 64."""
    def body():
        ch = mm.Channel(shared=shared)
        msg = mm.Msg(1, None)

        def writer():
            for i in range(N):
                ch.write(msg)
                if i & 63 == 63:
                    mm.sleep(0)

        t = time.perf_counter()
        w = mm.Coroutine(writer, name="writer")
        for _ in range(N):
            ch.read()
        w.join()
        return N / (time.perf_counter() - t)

    return _run(body)


def cross_machine_stream() -> float:
    """A plain thread writes N messages to a shared channel read by a machine."""
    ch = mm.Channel()
    go = threading.Event()

    def body():
        go.set()
        t = time.perf_counter()
        for _ in range(N):
            ch.read(10_000)
        return N / (time.perf_counter() - t)

    msg = mm.Msg(1, None)
    th = threading.Thread(target=lambda: (go.wait(), [ch.write(msg) for _ in range(N)]))
    th.start()
    r = _run(body)
    th.join()
    return r


def ping_pong() -> list:
    """Strict request/reply between two machines over two shared channels; RTT in µs."""
    ping, pong = mm.Channel(), mm.Channel()

    def echo():
        while True:
            m = ping.read()
            if m.type == 0:
                return
            pong.write(m)

    def body():
        e = mm.Machine("echo", echo).start()
        rtts = []
        msg = mm.Msg(1, None)
        for i in range(ROUNDS + 200):
            t = time.perf_counter_ns()
            ping.write(msg)
            pong.read(10_000)
            if i >= 200:  # warm-up
                rtts.append((time.perf_counter_ns() - t) / 1000)
        ping.write(mm.Msg(0))
        e.join(5000)
        return rtts

    return _run(body)


def _run(fn):
    box = {}
    mm.Machine("bench", lambda: box.setdefault("r", fn())).start().join(60_000)
    return box["r"]


def main():
    print(f"python {sys.version.split()[0]}, switchinterval {sys.getswitchinterval()*1e3:.1f} ms")
    for name, f in (("non-shared channel, same machine", lambda: same_machine_stream(False)),
                    ("shared channel, same machine", lambda: same_machine_stream(True)),
                    ("shared channel, thread -> machine", cross_machine_stream)):
        runs = [f() for _ in range(3)]
        print(f"{name:38s} {statistics.median(runs)/1e6:6.2f} M msg/s  (runs: "
              + ", ".join(f"{r/1e6:.2f}" for r in runs) + ")")
    rtts = sorted(ping_pong())
    med = statistics.median(rtts)
    p99 = rtts[int(len(rtts) * 0.99) - 1]
    print(f"{'cross-machine ping-pong RTT':38s} median {med:7.1f} µs   p99 {p99:8.1f} µs  "
          f"({len(rtts)} rounds)")


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"total {time.perf_counter() - t0:.1f} s")
