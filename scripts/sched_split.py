"""Where the machine's CPU goes per pgbench transaction through a pooler, and how long the pooler
waits for a CPU: odyssey-gevent and, with --odyssey-bin (or ODYSSEY_BIN), C Odyssey, in
alternating rounds against one PostgreSQL.

    python scripts/sched_split.py [--clients 50] [--mode simple] [--rounds 4] [--seconds 10]
        [--nice N] [--odyssey-bin PATH]

For each round and pooler it runs pgbench -S (-j 2, -T --seconds, -l) and prints per
transaction: TPS; the CPU time (µs) of the pooler, of PostgreSQL's processes and of pgbench;
the machine's busy time and idle share; the pooler's time on a CPU and its time runnable but
waiting for one (/proc/PID/task/*/schedstat, all its threads), its time slices and voluntary and
involuntary context switches; PostgreSQL's run-queue wait; the pool's backends' own CPU time and
how often the scheduler moved them to another CPU; and latency percentiles from pgbench's log.
Then the medians. With a pooler that never sleeps (no voluntary context switch), its throughput
is one transaction per (on-CPU + waiting) time: docs/performance.md shows a run.
--nice N runs each pooler's threads at that nice value (negative values need root), to see how
much of the waiting is the scheduler's. --pin P,B,G pins the pooler's threads to CPU P, the
pool's backends to CPU B and pgbench to CPU G for the measured run (e.g. 0,1,0 gives the
backends a CPU of their own; a "-" leaves that one free, so 0,-,- pins the pooler alone), to see
what placement on shared CPUs costs.

Linux only (/proc). It starts a throwaway PostgreSQL unless --pg-host/--pg-port are given (that
database must have pgbench's tables). Not a test: nothing here asserts a speed.
"""
from __future__ import annotations

import glob
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from scripts.bench import cpu_seconds, parse_pgbench, pin_tree, proc_tree  # noqa: E402
from scripts.count_instructions import AUTH, TEMPLATE, add_cell_args, bench_postgres  # noqa: E402
from scripts.pgcluster import wait_port  # noqa: E402
from scripts.pooler import PoolerProcess  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def parse_args(argv=None):
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_cell_args(ap, clients=50)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--pool-size", type=int, default=20)
    ap.add_argument("--nice", type=int, help="run the poolers' threads at this nice value")
    ap.add_argument("--pin", type=cpu_triple, metavar="P,B,G",
                    help="pin the pooler to CPU P, the pool's backends to CPU B, pgbench to CPU G")
    ap.add_argument("--odyssey-bin", default=os.environ.get("ODYSSEY_BIN"),
                    help="C Odyssey's binary, measured as a second target (default: $ODYSSEY_BIN)")
    return ap.parse_args(argv)


def cpu_triple(text: str) -> tuple[int | None, int | None, int | None]:
    """--pin's value: three CPU numbers, "P,B,G"; "-" in a place leaves that one free."""
    import argparse
    try:
        p, b, g = (None if x.strip() == "-" else int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three CPU numbers (or -) P,B,G, got {text!r}") from None
    return p, b, g


# -- /proc readers (tested in tests/integration/test_scripts.py; CPU time is bench.cpu_seconds) ----
def sched(pid: int) -> list[int]:
    """Summed over process `pid`'s threads: ns on a CPU, ns runnable waiting for one, time slices,
    voluntary and involuntary context switches (zeros when it is gone)."""
    total = [0, 0, 0, 0, 0]
    for d in glob.glob(f"/proc/{pid}/task/*"):
        try:
            with open(d + "/schedstat") as f:
                run, wait, slices = map(int, f.read().split())
            with open(d + "/status") as f:
                status = f.read()
        except (FileNotFoundError, ProcessLookupError):
            continue
        vol = int(status.split("\nvoluntary_ctxt_switches:")[1].split()[0])
        invol = int(status.split("\nnonvoluntary_ctxt_switches:")[1].split()[0])
        for i, v in enumerate((run, wait, slices, vol, invol)):
            total[i] += v
    return total


def migrations(pid: int) -> int:
    """How often the scheduler moved process `pid` (its main thread) to another CPU
    (/proc/PID/sched's se.nr_migrations; 0 when it is gone or the kernel does not say)."""
    try:
        with open(f"/proc/{pid}/sched") as f:
            for line in f:
                if line.startswith("se.nr_migrations"):
                    return int(line.split(":")[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def pool_backends(postmaster: int, db: str) -> list[int]:
    """The postmaster's children that serve a client connected to `db` (the pool's backends:
    their title is "postgres: USER DB HOST(PORT) STATE")."""
    out = []
    for pid in proc_tree(postmaster):
        try:
            with open(f"/proc/{pid}/cmdline") as f:
                title = f.read().split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if len(title) > 2 and title[0] == "postgres:" and title[2] == db:
            out.append(pid)
    return out


def machine_time() -> tuple[float, float]:
    """(idle + iowait seconds, all seconds) of every CPU since boot (/proc/stat)."""
    with open("/proc/stat") as f:
        values = list(map(int, f.readline().split()[1:]))
    return (values[3] + values[4]) / TICK, sum(values) / TICK


def percentile(ordered: list, q: float):
    """The q-quantile (0..1) of an ascending list, nearest rank below."""
    return ordered[int(q * (len(ordered) - 1))]


def pgbench_latencies(prefix: str) -> list[int]:
    """Every transaction's latency (µs) from pgbench -l's files starting with `prefix`, sorted."""
    out = []
    for name in glob.glob(prefix + "*"):
        with open(name) as f:
            out.extend(int(line.split()[2]) for line in f if line.strip())
    out.sort()
    return out


# -- a round -----------------------------------------------------------------------------------
def measure(a, pooler, postmaster: int) -> dict:
    env = dict(os.environ, PGSSLMODE="disable")
    base = ["pgbench", "-n", "-S", "-j", "2", "-c", str(a.clients), "-M", a.mode, "-h", "127.0.0.1",
            "-p", str(pooler.port), "-U", a.pg_user]
    subprocess.run(base + ["-T", "2", a.db], check=True, capture_output=True, env=env)    # warm-up
    backends = pool_backends(postmaster, a.db)
    pin_pgbench = None
    if a.pin is not None:
        if a.pin[0] is not None:
            pin_tree(pooler.pid, {a.pin[0]})
        if a.pin[1] is not None:
            for pid in backends:
                pin_tree(pid, {a.pin[1]})
        if a.pin[2] is not None:
            pin_pgbench = lambda: os.sched_setaffinity(0, {a.pin[2]})     # noqa: E731 (in the child)
    logdir = tempfile.mkdtemp(prefix="odyssey-gevent-sched-")
    try:
        # PostgreSQL's CPU: the postmaster and its live processes (the pool's backends stay up)
        back = proc_tree(postmaster)
        cpu0, pg0, s0, m0 = cpu_seconds(pooler.pid), cpu_seconds(postmaster), sched(pooler.pid), machine_time()
        b_sched0 = {p: sched(p) for p in back}
        migr0 = {p: migrations(p) for p in backends}
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.monotonic()
        out = subprocess.run(base + ["-T", str(a.seconds), "-l", "--log-prefix", os.path.join(logdir, "l"), a.db],
                             check=True, capture_output=True, text=True, env=env, preexec_fn=pin_pgbench)
        t1 = time.monotonic()
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu1, pg1, s1, m1 = cpu_seconds(pooler.pid), cpu_seconds(postmaster), sched(pooler.pid), machine_time()
        b_sched1 = {p: sched(p) for p in back}
        migr1 = {p: migrations(p) for p in backends}
        lat = pgbench_latencies(os.path.join(logdir, "l"))
    finally:
        shutil.rmtree(logdir, ignore_errors=True)
    n = parse_pgbench(out.stdout)[1]
    idle, total = m1[0] - m0[0], m1[1] - m0[1]
    us = 1e6 / n
    return {
        "tps": n / (t1 - t0),
        "pooler_cpu": (cpu1 - cpu0) * us,
        "postgres_cpu": (pg1 - pg0) * us,
        "pgbench_cpu": (ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime) * us,
        "busy": (total - idle) * us,
        "idle_pct": 100 * idle / total,
        "on_cpu": (s1[0] - s0[0]) / 1e3 / n,
        "runq_wait": (s1[1] - s0[1]) / 1e3 / n,
        "slices": (s1[2] - s0[2]) / n,
        "vol_cs": (s1[3] - s0[3]) / n,
        "invol_cs": (s1[4] - s0[4]) / n,
        "backend_cpu": sum(b_sched1[p][0] - b_sched0[p][0] for p in backends if p in b_sched0) / 1e3 / n,
        "backend_migr": sum(migr1[p] - migr0[p] for p in backends) / n,
        "pg_runq_wait": sum(b_sched1[p][1] - b_sched0[p][1] for p in back) / 1e3 / n,
        "p50_us": percentile(lat, 0.5),
        "p90_us": percentile(lat, 0.9),
        "p99_us": percentile(lat, 0.99),
    }


def show(name: str, row: dict) -> str:
    return f"{name:<15}" + " ".join(f"{k}={v:.3g}" for k, v in row.items())


def main(argv=None) -> int:
    a = parse_args(argv)
    targets = [("odyssey-gevent", f"{sys.executable} -m odyssey_gevent")]
    if a.odyssey_bin:
        targets.append(("odyssey", a.odyssey_bin))
    cluster, host, port = bench_postgres(a)
    try:
        if cluster is not None:
            datadir = cluster.datadir
        else:
            datadir = subprocess.run(["psql", "-h", host, "-p", str(port), "-U", a.pg_user, "-Atc", "show data_directory",
                                      a.db], check=True, capture_output=True, text=True).stdout.strip()
        with open(os.path.join(datadir, "postmaster.pid")) as f:
            postmaster = int(f.readline())
        rows: dict[str, list[dict]] = {name: [] for name, _ in targets}
        for r in range(a.rounds):
            for name, binary in (targets if r % 2 == 0 else targets[::-1]):
                pooler = PoolerProcess(TEMPLATE, pg_host=host, pg_port=port, binary=binary, wait=False,
                                       pool_size=a.pool_size, auth=AUTH["none"], pg_user=a.pg_user,
                                       reserve_prepared="yes" if a.mode == "prepared" else "no")
                try:
                    wait_port("127.0.0.1", pooler.port, timeout=60, proc=pooler.proc)
                    if a.nice is not None:
                        for d in glob.glob(f"/proc/{pooler.pid}/task/*"):
                            os.setpriority(os.PRIO_PROCESS, int(os.path.basename(d)), a.nice)
                    row = measure(a, pooler, postmaster)
                finally:
                    pooler.stop()
                    shutil.rmtree(pooler.tmp, ignore_errors=True)
                rows[name].append(row)
                print(show(f"{name} {r + 1}", row), flush=True)
        print(f"medians, -c {a.clients} -M {a.mode}, {a.rounds} rounds of {a.seconds} s (µs per transaction):")
        for name, got in rows.items():
            print(show(name, {k: statistics.median(r[k] for r in got) for k in got[0]}))
    finally:
        if cluster is not None:
            cluster.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
