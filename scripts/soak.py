"""Soak: hours-long behaviour in minutes. pgbench with connection churn (-C: a new connection per
transaction) on transaction, session and statement pools at once, while the pooler's RSS and
open file descriptors are sampled; prints the samples and the growth. Not a CI test.

    python scripts/soak.py                       # throwaway PostgreSQL, 10 minutes, a sample every 5 s
    python scripts/soak.py --seconds 60 --interval 2 --clients 4

The three pgbench runs use -M extended (transaction pool, pool_reserve_prepared_statement yes),
-M prepared (session pool) and -M simple (statement pool), select-only (-S) on a scale-1
database. Growth compares the median of the samples in the first and the last fifth of the run
after a warm-up (the first 10 %): a leak shows up as steady growth, noise as a few hundred KiB
either way. Every process the script starts is stopped on exit, Ctrl-C or SIGTERM.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from scripts.bench import POOLER_HEADER  # noqa: E402
from scripts.pgcluster import PgCluster  # noqa: E402
from scripts.pooler import PoolerProcess, open_fds, rss_kib  # noqa: E402

CONFIG = POOLER_HEADER       # bench.py's globals, listen and storage; the routes follow
ROUTE = """\
database "{db}" {{
    user default {{
        authentication "none"
        storage "postgres_server"
        storage_db "bench"
        pool "{pool}"
        pool_size {pool_size}
        pool_timeout 10000
        pool_discard no
        pool_reserve_prepared_statement {prepared}
    }}
}}
"""
# (route database name, pool mode, pgbench -M, pool_reserve_prepared_statement)
LOADS = [("soak_tx", "transaction", "extended", "yes"), ("soak_session", "session", "prepared", "no"),
         ("soak_statement", "statement", "simple", "no")]


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=600, help="how long the load runs (600)")
    ap.add_argument("--interval", type=float, default=5.0, help="seconds between samples (5)")
    ap.add_argument("--clients", type=int, default=4, help="pgbench clients per pool (4)")
    ap.add_argument("--pool-size", type=int, default=4)
    a = ap.parse_args(argv)
    if a.seconds < 10 or a.interval <= 0 or a.clients < 1 or a.pool_size < 1:
        ap.error("--seconds >= 10, --interval > 0, --clients >= 1, --pool-size >= 1")
    return a


def config_text(pool_size: int) -> str:
    return CONFIG + "".join(ROUTE.format(db=db, pool=pool, pool_size=pool_size, prepared=prep)
                            for db, pool, _, prep in LOADS)


def sample(pid: int) -> tuple[int, int]:
    """(RSS in KiB, open file descriptors) of a process."""
    return rss_kib(pid), open_fds(pid)


def growth(values: list[int]) -> tuple[float, float]:
    """(median of the first fifth, median of the last fifth) after the first 10 % of samples."""
    rest = values[len(values) // 10:] or values
    k = max(1, len(rest) // 5)
    return statistics.median(rest[:k]), statistics.median(rest[-k:])


def parse_pgbench(text: str) -> tuple[int, int, float]:
    """(transactions processed, failed transactions, tps) from pgbench's report (0s if absent)."""
    n = re.search(r"number of transactions actually processed: (\d+)", text)
    failed = re.search(r"number of failed transactions: (\d+)", text)
    tps = re.search(r"^tps = ([0-9.]+)", text, re.M)
    return (int(n.group(1)) if n else 0, int(failed.group(1)) if failed else 0,
            float(tps.group(1)) if tps else 0.0)


class Soak:
    def __init__(self, args):
        self.a = args
        self.cluster = None
        self.pooler = None
        self.benches: list[subprocess.Popen] = []

    def run(self) -> int:
        a = self.a
        self.cluster = PgCluster()
        self.cluster.init()
        self.cluster.start()
        self.cluster.psql("CREATE DATABASE bench;")
        subprocess.run(["pgbench", "-i", "-q", "-s", "1", "-h", self.cluster.host, "-p", str(self.cluster.port),
                        "-U", "postgres", "bench"], check=True, capture_output=True)
        self.pooler = PoolerProcess(config_text(a.pool_size), pg=self.cluster)
        pid = self.pooler.pid
        print(f"pooler pid {pid}; PostgreSQL {self.cluster.host}:{self.cluster.port}; "
              f"{len(LOADS)} x pgbench -C -S -c {a.clients} for {a.seconds} s", flush=True)
        env = dict(os.environ, PGSSLMODE="disable")
        for db, _, mode, _ in LOADS:
            self.benches.append(subprocess.Popen(
                ["pgbench", "-n", "-C", "-S", "-M", mode, "-c", str(a.clients), "-j", "1", "-T", str(a.seconds),
                 "-h", "127.0.0.1", "-p", str(self.pooler.port), "-U", "postgres", db],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env))
        rss, fds, t0 = [], [], time.monotonic()
        print(f"{'t (s)':>6} {'RSS (KiB)':>10} {'fds':>5}", flush=True)
        while any(b.poll() is None for b in self.benches):
            r, f = sample(pid)
            rss.append(r)
            fds.append(f)
            print(f"{time.monotonic() - t0:6.0f} {r:10d} {f:5d}", flush=True)
            time.sleep(a.interval)
        rc = 0
        for (db, pool, mode, _), b in zip(LOADS, self.benches):
            out = b.communicate()[0]
            n, failed, tps = parse_pgbench(out)
            print(f"{pool:11} -M {mode:8}: {n} transactions, {failed} failed, {tps:.0f} tps (connections "
                  f"included), pgbench exit {b.returncode}", flush=True)
            if b.returncode != 0 or n == 0:
                rc = 1
                print(out[-1500:], flush=True)
        if self.pooler.proc.poll() is not None:
            print("the pooler exited", flush=True)
            return 1
        r0, r1 = growth(rss)
        f0, f1 = growth(fds)
        after = sample(pid)
        print(f"RSS: {r0:.0f} -> {r1:.0f} KiB ({r1 - r0:+.0f} KiB, {100 * (r1 - r0) / r0:+.1f} %) "
              f"min {min(rss)} max {max(rss)}; fds: {f0:.0f} -> {f1:.0f}, {after[1]} after the load "
              f"(RSS {after[0]} KiB); {len(rss)} samples", flush=True)
        return rc

    def cleanup(self) -> None:
        for b in self.benches:
            if b.poll() is None:
                b.kill()
                b.wait()
        if self.pooler is not None:
            self.pooler.stop()
            shutil.rmtree(self.pooler.tmp, ignore_errors=True)
            self.pooler = None
        if self.cluster is not None:
            self.cluster.destroy()
            self.cluster = None


def main(argv=None) -> int:
    soak = Soak(parse_args(argv))

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        return soak.run()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        soak.cleanup()


if __name__ == "__main__":
    sys.exit(main())
