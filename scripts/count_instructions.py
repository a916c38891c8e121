"""User-space instructions a pooler executes per pgbench transaction, counted by callgrind.

    python scripts/count_instructions.py [--clients 10] [--mode simple] [--connect]
        [--transactions 3000] [--odyssey-bin PATH] [--auth none|md5|scram] [--keep-out DIR]

Wall-clock TPS on this shared 2-core machine moves by 15-20 % between rounds; an instruction
count does not (repeatable to about 0.1 %), so A/B decisions about the hot path use this. It
starts a throwaway PostgreSQL (or uses --pg-host/--pg-port), runs the pooler under
`valgrind --tool=callgrind --instr-atstart=no` with bench.py's config, warms up with pgbench
(instrumentation off), switches instrumentation on with callgrind_control for
`--transactions` transactions per client, switches it off and prints the count of the pooler
process (all its threads) divided by the transactions pgbench reports.

With --odyssey-bin the same is counted for C Odyssey on the same config (kernel time is not
in either count: see docs/performance.md for the CPU split). With --auth md5 or scram the
client logs in with a password checked by the pooler (use with --connect for the login path).
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from scripts.bench import POOLER_HEADER  # noqa: E402
from scripts.pgcluster import PgCluster, wait_port  # noqa: E402
from scripts.pooler import PoolerProcess  # noqa: E402

AUTH = {
    "none": 'authentication "none"',
    "md5": 'authentication "md5"\n        password "benchpass"',
    "scram": 'authentication "scram-sha-256"\n        password "benchpass"',
}

TEMPLATE = POOLER_HEADER + """\
database default {
    user default {
        ${auth}
        storage "postgres_server"
        storage_user "${pg_user}"
        pool "transaction"
        pool_size ${pool_size}
        pool_discard no
        pool_reserve_prepared_statement ${reserve_prepared}
    }
}
"""


def add_cell_args(ap, clients: int) -> None:
    """The options that name the PostgreSQL and the pgbench cell (shared with sched_split.py)."""
    ap.add_argument("--pg-host")
    ap.add_argument("--pg-port", type=int)
    ap.add_argument("--pg-user", default="postgres")
    ap.add_argument("--db", default="bench")
    ap.add_argument("--clients", type=int, default=clients)
    ap.add_argument("--mode", default="simple", choices=("simple", "extended", "prepared"))


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_cell_args(ap, clients=10)
    ap.add_argument("--connect", action="store_true", help="pgbench -C: a new connection per transaction")
    ap.add_argument("--transactions", type=int, default=3000, help="counted transactions in all (default 3000)")
    ap.add_argument("--warmup", type=int, default=500, help="uncounted transactions first (default 500)")
    ap.add_argument("--pool-size", type=int, default=20)
    ap.add_argument("--auth", default="none", choices=sorted(AUTH))
    ap.add_argument("--odyssey-bin", help="count C Odyssey (this binary) instead of odyssey-gevent")
    ap.add_argument("--keep-out", help="keep the callgrind output file in this directory "
                    "(callgrind_annotate reads it)")
    a = ap.parse_args(argv)
    if (a.pg_host is None) != (a.pg_port is None):
        ap.error("--pg-host and --pg-port go together")
    return a


def total_instructions(path: str) -> int:
    """The Ir total of a callgrind output file: its `totals:` line (with instrumentation
    switched on later than the start, the `summary:` line says 0)."""
    found = None
    with open(path) as f:
        for line in f:
            if line.startswith(("summary:", "totals:")):
                found = max(found or 0, int(line.split()[1]))
    if found is None:
        raise ValueError(f"{path}: no summary or totals line")
    return found


def pgbench(a, port: int, transactions: int, user: str) -> int:
    per_client = max(1, transactions // a.clients)
    cmd = ["pgbench", "-n", "-S", "-j", "2", "-c", str(a.clients), "-t", str(per_client), "-M", a.mode,
           *(["-C"] if a.connect else []), "-h", "127.0.0.1", "-p", str(port), "-U", user, a.db]
    env = dict(os.environ, PGSSLMODE="disable", PGPASSWORD="benchpass")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    m = re.search(r"number of transactions actually processed: (\d+)", out.stdout)
    if out.returncode != 0 or not m:
        raise RuntimeError(f"pgbench failed:\n{out.stdout}\n{out.stderr}")
    return int(m.group(1))


def cell_name(a) -> str:
    """The pgbench cell `a` describes, as the counting scripts print it."""
    return f"-c {a.clients} -M {a.mode}{' -C' if a.connect else ''}, auth {a.auth}"


def bench_postgres(a) -> tuple:
    """(cluster, host, port): a throwaway PostgreSQL with pgbench's tables in --db (the caller
    destroys the cluster), or (None, --pg-host, --pg-port)."""
    if a.pg_port is not None:
        return None, a.pg_host, a.pg_port
    cluster = PgCluster()
    try:
        cluster.init()
        cluster.start()
        cluster.psql(f"CREATE DATABASE {a.db};")
        subprocess.run(["pgbench", "-i", "-q", "-s", "1", "-h", cluster.host, "-p", str(cluster.port), "-U",
                        a.pg_user, a.db], check=True, capture_output=True)
    except BaseException:
        cluster.destroy()
        raise
    return cluster, cluster.host, cluster.port


@contextlib.contextmanager
def warmed_pooler(a, binary: str, start_timeout: float = 120):
    """A PostgreSQL (a throwaway one unless --pg-host/--pg-port) with pgbench's tables, and the
    pooler run by `binary` (a command line) on TEMPLATE in front of it, warmed up with
    --warmup transactions. Yields (pooler, pgbench user); stops and removes both after."""
    cluster = pooler = None
    try:
        cluster, pg_host, pg_port = bench_postgres(a)
        user = a.pg_user if a.auth == "none" else "bench_client"
        pooler = PoolerProcess(TEMPLATE, pg_host=pg_host, pg_port=pg_port, binary=binary, wait=False,
                               pool_size=a.pool_size, auth=AUTH[a.auth], pg_user=a.pg_user,
                               reserve_prepared="yes" if a.mode == "prepared" else "no")
        wait_port("127.0.0.1", pooler.port, timeout=start_timeout, proc=pooler.proc)
        pgbench(a, pooler.port, a.warmup, user)
        yield pooler, user
    finally:
        if pooler is not None:
            pooler.stop()
            shutil.rmtree(pooler.tmp, ignore_errors=True)
        if cluster is not None:
            cluster.destroy()


def main(argv=None) -> int:
    a = parse_args(argv)
    if not shutil.which("valgrind") or not shutil.which("callgrind_control"):
        print("count_instructions: valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 1
    outdir = tempfile.mkdtemp(prefix="odyssey-gevent-callgrind-")
    try:
        out_file = os.path.join(outdir, "callgrind.out.%p")
        valgrind = f"valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file={out_file}"
        target = a.odyssey_bin or f"{sys.executable} -m odyssey_gevent"
        with warmed_pooler(a, f"{valgrind} {target}") as (pooler, user):
            subprocess.run(["callgrind_control", "-i", "on", str(pooler.pid)], check=True, capture_output=True)
            n = pgbench(a, pooler.port, a.transactions, user)
            subprocess.run(["callgrind_control", "-i", "off", str(pooler.pid)], check=True, capture_output=True)
            pooler.stop()
        files = glob.glob(os.path.join(outdir, "callgrind.out.*"))
        total = sum(total_instructions(f) for f in files)
        what = "C Odyssey" if a.odyssey_bin else "odyssey-gevent"
        print(f"{what}, pgbench -S {cell_name(a)}: {total:,} instructions over {n:,} transactions = "
              f"{total / n:,.0f} per transaction")
        if a.keep_out:
            os.makedirs(a.keep_out, exist_ok=True)
            for f in files:
                shutil.copy(f, a.keep_out)
            print(f"callgrind output kept in {a.keep_out}")
        return 0
    finally:
        shutil.rmtree(outdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
