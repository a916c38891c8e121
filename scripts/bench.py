"""Benchmark: pgbench -S through odyssey-gevent (transaction pool) vs direct PostgreSQL vs PgBouncer.

    python scripts/bench.py                          # throwaway PostgreSQL, c10 and c50, 10 s, 3 rounds
    python scripts/bench.py --clients 10 --seconds 3 --rounds 2 --extended
    python scripts/bench.py --modes simple,extended,prepared   # pool_reserve_prepared_statement yes
    python scripts/bench.py --pg-host 127.0.0.1 --pg-port 5432 --pg-user bench --init
    python scripts/bench.py --idle-clients 5000      # pooler RSS before/after N idle clients

Method (the one behind the figures in docs/performance.md): every cell runs
`pgbench -n -S -j 2 -c C -T S -M simple|extended|prepared` once per target per round; the target order
alternates every round (A B C, then C B A) so drift and warm-up hit every target alike. Reported
per cell: median TPS, the median of the per-round ratios to PgBouncer and to direct PG, and the
pooler's and PgBouncer's CPU µs per transaction from /proc/PID/stat utime+stime deltas over each
run.

Every process this script starts is stopped on exit, Ctrl-C or SIGTERM.
"""
from __future__ import annotations

import argparse
import os
import pwd
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from scripts.pgcluster import PgCluster, free_port, wait_port  # noqa: E402
from scripts.pooler import PoolerProcess  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")

POOLER_TEMPLATE = """\
workers 1
log_format "%p %t %l [%i %s] (%c) %m\\n"
log_session no
log_config no
log_stats no
listen {
    host "127.0.0.1"
    port ${port}
}
storage "postgres_server" {
    type "remote"
    host "${pg_host}"
    port ${pg_port}
}
database default {
    user default {
        authentication "none"
        storage "postgres_server"
        pool "transaction"
        pool_size ${pool_size}
        pool_discard no
        pool_reserve_prepared_statement ${reserve_prepared}
    }
}
"""


# -- pure helpers (tested in tests/integration/test_bench_script.py) -----------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="pgbench -S: odyssey-gevent vs direct PostgreSQL vs PgBouncer")
    ap.add_argument("--pg-host", help="use this PostgreSQL instead of a throwaway cluster")
    ap.add_argument("--pg-port", type=int)
    ap.add_argument("--pg-user", default="postgres")
    ap.add_argument("--db", default="bench", help="database with pgbench tables (default: bench)")
    ap.add_argument("--init", action="store_true",
                    help="run pgbench -i on --db first (always done for a throwaway cluster)")
    ap.add_argument("--scale", type=int, default=10, help="pgbench -i -s (default 10)")
    ap.add_argument("--clients", default="10,50", type=lambda s: [int(x) for x in s.split(",") if x],
                    help="comma list of pgbench -c values (default 10,50)")
    ap.add_argument("--seconds", type=int, default=10, help="pgbench -T per run (default 10)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--extended", action="store_true", help="also run -M extended cells")
    ap.add_argument("--modes", default=None, type=lambda s: [x for x in s.split(",") if x],
                    help="pgbench -M modes to run, e.g. simple,extended,prepared (default: simple, "
                         "plus extended with --extended)")
    ap.add_argument("--prepared-statements", action="store_true",
                    help="pool_reserve_prepared_statement yes in the pooler (implied by -M prepared)")
    ap.add_argument("--targets", default="odyssey-gevent,direct,pgbouncer",
                    type=lambda s: [x for x in s.split(",") if x])
    ap.add_argument("--pool-size", type=int, default=20)
    ap.add_argument("--pgbouncer", default=None, help="pgbouncer binary (default: PATH, /usr/sbin)")
    ap.add_argument("--no-install", action="store_true", help="do not apt-get install pgbouncer")
    ap.add_argument("--idle-clients", type=int, default=0, metavar="N",
                    help="instead of pgbench: open N idle clients and print the pooler's RSS")
    a = ap.parse_args(argv)
    if (a.pg_host is None) != (a.pg_port is None):
        ap.error("--pg-host and --pg-port go together")
    if a.modes is None:
        a.modes = ["simple"] + (["extended"] if a.extended else [])
    if set(a.modes) - {"simple", "extended", "prepared"} or not a.modes:
        ap.error("--modes takes simple, extended and prepared")
    if "prepared" in a.modes:
        a.prepared_statements = True
    bad = set(a.targets) - {"odyssey-gevent", "direct", "pgbouncer"}
    if bad:
        ap.error(f"unknown targets: {', '.join(sorted(bad))}")
    if not a.clients or min(a.clients) < 1 or a.seconds < 1 or a.rounds < 1:
        ap.error("--clients, --seconds and --rounds must be positive")
    return a


def pgbouncer_ini(listen_port: int, pg_host: str, pg_port: int, workdir: str, pool_size: int = 20,
                  prepared: bool = False) -> str:
    """PgBouncer's config; `prepared`: max_prepared_statements (PgBouncer 1.21+ only)."""
    extra = "max_prepared_statements = 1000\n" if prepared else ""
    return f"""\
[databases]
* = host={pg_host} port={pg_port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {listen_port}
unix_socket_dir =
auth_type = trust
auth_file = {workdir}/userlist.txt
pool_mode = transaction
default_pool_size = {pool_size}
max_client_conn = 10000
logfile = {workdir}/pgbouncer.log
log_connections = 0
log_disconnections = 0
ignore_startup_parameters = extra_float_digits,options
{extra}"""


def round_order(targets: list[str], rnd: int) -> list[str]:
    return list(targets) if rnd % 2 == 0 else list(reversed(targets))


def parse_pgbench(text: str) -> tuple[float, int]:
    """(tps, transactions processed) from pgbench's report."""
    tps = re.search(r"^tps = ([0-9.]+)", text, re.M)
    n = re.search(r"number of transactions actually processed: (\d+)", text)
    if not tps or not n:
        raise RuntimeError(f"cannot parse pgbench output:\n{text}")
    return float(tps.group(1)), int(n.group(1))


def proc_tree(pid: int) -> list[int]:
    """pid and all its descendants (by scanning /proc/*/stat)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its live descendants, in seconds."""
    total = 0
    for p in proc_tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])     # utime, stime (fields 14, 15)
        except (OSError, IndexError, ValueError):
            pass
    return total / CLK_TCK


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def format_table(cells: list[str], targets: list[str], results: dict) -> str:
    """results[(target, cell)] = list of dicts {round, tps, cpu_us}."""
    lines = []
    head = ["target"] + cells
    rows = []
    for t in targets:
        row = [t]
        for c in cells:
            runs = results.get((t, c), [])
            tps = median([r["tps"] for r in runs])
            if tps is None:
                row.append("-")
                continue
            parts = [f"{tps:,.0f}"]
            for ref, tag in (("pgbouncer", "pgb"), ("direct", "pg")):
                if ref != t and (ref, c) in results:
                    by_round = {r["round"]: r["tps"] for r in results[(ref, c)]}
                    ratios = [r["tps"] / by_round[r["round"]] for r in runs if by_round.get(r["round"])]
                    if ratios:
                        parts.append(f"{tag} {median(ratios):.2f}")
            row.append(" ".join(parts[:1]) + (f" ({', '.join(parts[1:])})" if parts[1:] else ""))
        rows.append(row)
    for t in targets:
        if t == "direct":
            continue
        row = [f"{t} CPU µs/tx"]
        for c in cells:
            cpu = median([r.get("cpu_us") for r in results.get((t, c), [])])
            row.append("-" if cpu is None else f"{cpu:.0f}")
        rows.append(row)
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    fmt = lambda r: "| " + " | ".join(str(v).ljust(w) for v, w in zip(r, widths)) + " |"  # noqa: E731
    lines.append(fmt(head))
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines.extend(fmt(r) for r in rows)
    return "\n".join(lines)


# -- processes ---------------------------------------------------------------------------------------
class Bench:
    def __init__(self, args):
        self.a = args
        self.cluster: PgCluster | None = None
        self.pooler: PoolerProcess | None = None
        self.bouncer: subprocess.Popen | None = None
        self.bouncer_dir: str | None = None
        self.bouncer_prepared = False
        self.running: subprocess.Popen | None = None
        self.ports: dict[str, int] = {}
        self.pg_host, self.pg_port = args.pg_host, args.pg_port

    def log(self, msg: str) -> None:
        print(msg, flush=True)

    # PostgreSQL
    def setup_pg(self) -> None:
        if self.pg_port is None:
            self.cluster = PgCluster()
            self.cluster.init()
            with open(os.path.join(self.cluster.datadir, "postgresql.conf"), "a") as f:
                f.write("max_connections = 300\nshared_buffers = 256MB\n")
            self.cluster.start()
            self.pg_host, self.pg_port = self.cluster.host, self.cluster.port
            self.log(f"throwaway PostgreSQL on {self.pg_host}:{self.pg_port} ({self.cluster.dir})")
            if self.cluster.psql(f"select 1 from pg_database where datname = '{self.a.db}'") != "1":
                self.cluster.psql(f"CREATE DATABASE {self.a.db};")
            self.a.init = not self.a.idle_clients
        if self.a.init:
            self.log(f"pgbench -i -s {self.a.scale} {self.a.db}")
            self.run(["pgbench", "-i", "-q", "-s", str(self.a.scale), "-h", self.pg_host, "-p",
                      str(self.pg_port), "-U", self.a.pg_user, self.a.db], check=True)

    def run(self, cmd: list[str], check: bool = False, timeout: float | None = None) -> str:
        env = dict(os.environ, PGSSLMODE="disable")
        self.running = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        env=env)
        try:
            out, _ = self.running.communicate(timeout=timeout)
        finally:
            p, self.running = self.running, None
            if p.poll() is None:
                p.kill()
                p.wait()
        if check and p.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{out}")
        return out

    # odyssey-gevent
    def start_pooler(self) -> None:
        self.pooler = PoolerProcess(POOLER_TEMPLATE, pg_host=self.pg_host, pg_port=self.pg_port,
                                    pool_size=self.a.pool_size,
                                    reserve_prepared="yes" if self.a.prepared_statements else "no")
        self.ports["odyssey-gevent"] = self.pooler.port
        self.log(f"odyssey-gevent pid {self.pooler.pid} on 127.0.0.1:{self.pooler.port} ({self.pooler.tmp})")

    # PgBouncer
    def find_pgbouncer(self) -> str:
        cand = self.a.pgbouncer or shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
        if os.path.exists(cand):
            return cand
        if self.a.no_install or os.geteuid() != 0:
            raise RuntimeError("pgbouncer not found: apt-get install pgbouncer, or drop it with "
                               "--targets odyssey-gevent,direct")
        self.log("installing pgbouncer with apt-get")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "install", "-y", "-q", "pgbouncer"], check=True, env=env)
        # the Debian package may start its own service on 6432; ours uses a private ini and port
        return shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"

    def start_pgbouncer(self) -> None:
        binary = self.find_pgbouncer()
        out = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
        found = re.search(r"(\d+)\.(\d+)", out)
        version = (int(found.group(1)), int(found.group(2))) if found else (0, 0)
        # prepared statements in transaction pooling came with PgBouncer 1.21
        self.bouncer_prepared = "prepared" in self.a.modes and version >= (1, 21)
        if "prepared" in self.a.modes and not self.bouncer_prepared:
            self.log(f"pgbouncer {'.'.join(map(str, version))} cannot pool prepared statements: "
                     "its -M prepared cells are skipped")
        port = free_port()
        self.bouncer_dir = tempfile.mkdtemp(prefix="odyssey-gevent-pgbouncer-")
        ini = os.path.join(self.bouncer_dir, "pgbouncer.ini")
        with open(ini, "w") as f:
            f.write(pgbouncer_ini(port, self.pg_host, self.pg_port, self.bouncer_dir, self.a.pool_size,
                                  prepared=self.bouncer_prepared))
        with open(os.path.join(self.bouncer_dir, "userlist.txt"), "w") as f:
            f.write(f'"{self.a.pg_user}" ""\n')
        kw = {}
        if os.geteuid() == 0:                      # pgbouncer refuses to run as root
            pw = pwd.getpwnam("postgres")
            for name in os.listdir(self.bouncer_dir) + [""]:
                os.chown(os.path.join(self.bouncer_dir, name), pw.pw_uid, pw.pw_gid)
            kw = dict(user=pw.pw_uid, group=pw.pw_gid, extra_groups=[])
        self.bouncer = subprocess.Popen([binary, ini], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        stdin=subprocess.DEVNULL, cwd=self.bouncer_dir, **kw)
        wait_port("127.0.0.1", port, timeout=15, proc=self.bouncer)
        self.ports["pgbouncer"] = port
        self.log(f"pgbouncer pid {self.bouncer.pid} on 127.0.0.1:{port} ({self.bouncer_dir})")

    def pid_of(self, target: str) -> int | None:
        if target == "odyssey-gevent" and self.pooler:
            return self.pooler.pid
        if target == "pgbouncer" and self.bouncer:
            return self.bouncer.pid
        return None

    def pgbench(self, target: str, clients: int, mode: str) -> dict:
        host, port = ("127.0.0.1", self.ports[target]) if target != "direct" else (self.pg_host, self.pg_port)
        cmd = ["pgbench", "-n", "-S", "-j", "2", "-c", str(clients), "-T", str(self.a.seconds), "-M", mode,
               "-h", host, "-p", str(port), "-U", self.a.pg_user, self.a.db]
        pid = self.pid_of(target)
        cpu0 = cpu_seconds(pid) if pid else None
        out = self.run(cmd, timeout=self.a.seconds + 60)
        cpu1 = cpu_seconds(pid) if pid else None
        tps, n = parse_pgbench(out)
        if "error" in out.lower():
            self.log(f"  warning: pgbench reported errors for {target}:\n{out}")
        cpu_us = (cpu1 - cpu0) * 1e6 / n if pid and n else None
        return dict(tps=tps, n=n, cpu_us=cpu_us)

    # the two modes of the script
    def tps_matrix(self) -> None:
        modes = self.a.modes
        cells = [(c, m) for c in self.a.clients for m in modes]
        names = [f"c{c} {m}" for c, m in cells]
        results: dict = {}
        for rnd in range(self.a.rounds):
            order = round_order(self.a.targets, rnd)
            self.log(f"round {rnd + 1}/{self.a.rounds}: {' '.join(order)}")
            for (c, m), name in zip(cells, names):
                for t in order:
                    if t == "pgbouncer" and m == "prepared" and not self.bouncer_prepared:
                        continue
                    r = self.pgbench(t, c, m)
                    r["round"] = rnd
                    results.setdefault((t, name), []).append(r)
                    cpu = f", {r['cpu_us']:.0f} CPU µs/tx" if r["cpu_us"] is not None else ""
                    self.log(f"  {name:<12} {t:<15} {r['tps']:>10,.0f} tps{cpu}")
        print()
        print(f"median TPS (median per-round ratio to pgbouncer / direct PG); "
              f"pgbench -n -S -j 2 -T {self.a.seconds}, {self.a.rounds} rounds")
        print(format_table(names, self.a.targets, results))

    def idle_clients(self) -> None:
        from scripts.idle_clients import open_idle_clients
        n = self.a.idle_clients
        before = rss_kib(self.pooler.pid)
        t0 = time.monotonic()
        socks = open_idle_clients("127.0.0.1", self.pooler.port, n, self.a.pg_user, self.a.db)
        took = time.monotonic() - t0
        time.sleep(1.0)
        after = rss_kib(self.pooler.pid)
        print(f"{n} idle clients logged in in {took:.1f}s")
        print(f"pooler VmRSS before: {before / 1024:.1f} MiB, after: {after / 1024:.1f} MiB, "
              f"{(after - before) / max(n, 1):.1f} KiB per idle client")
        for s in socks:
            s.close()

    def main(self) -> None:
        if self.a.idle_clients:
            from scripts.idle_clients import raise_nofile
            got = raise_nofile(2 * self.a.idle_clients + 1024)      # inherited by the pooler
            if got < self.a.idle_clients + 100:
                raise RuntimeError(f"RLIMIT_NOFILE is only {got}; run as root or raise ulimit -n")
        self.setup_pg()
        if self.a.idle_clients:
            self.start_pooler()
            self.idle_clients()
            return
        if "odyssey-gevent" in self.a.targets:
            self.start_pooler()
        if "pgbouncer" in self.a.targets:
            self.start_pgbouncer()
        self.tps_matrix()

    def cleanup(self) -> None:
        if self.running is not None and self.running.poll() is None:
            self.running.kill()
            self.running.wait()
        if self.bouncer is not None:
            if self.bouncer.poll() is None:
                self.bouncer.terminate()
                try:
                    self.bouncer.wait(10)
                except subprocess.TimeoutExpired:
                    self.bouncer.kill()
                    self.bouncer.wait()
            self.bouncer = None
        if self.bouncer_dir:
            shutil.rmtree(self.bouncer_dir, ignore_errors=True)
        if self.pooler is not None:
            self.pooler.stop()
            shutil.rmtree(self.pooler.tmp, ignore_errors=True)
            self.pooler = None
        if self.cluster is not None:
            self.cluster.destroy()
            self.cluster = None


def main(argv=None) -> int:
    args = parse_args(argv)
    bench = Bench(args)

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        bench.main()
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except RuntimeError as e:
        print(f"bench: {e}", file=sys.stderr)
        if bench.pooler is not None:
            print(bench.pooler.log()[-3000:], file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)       # a second Ctrl-C must not skip cleanup
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        bench.cleanup()


if __name__ == "__main__":
    sys.exit(main())
