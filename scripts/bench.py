"""Benchmark: pgbench -S through odyssey-gevent (transaction pool) vs C Odyssey vs PgBouncer vs
direct PostgreSQL.

    python scripts/bench.py                          # throwaway PostgreSQL, c10 and c50, 10 s, 3 rounds
    python scripts/bench.py --clients 10 --seconds 3 --rounds 2 --extended
    python scripts/bench.py --modes simple,extended,prepared   # pool_reserve_prepared_statement yes
    python scripts/bench.py --connect 10             # adds a pgbench -C cell (a connection per transaction)
    ODYSSEY_BIN=/path/to/odyssey python scripts/bench.py --chart chart.png   # C Odyssey as a target too
    python scripts/bench.py --pg-host 127.0.0.1 --pg-port 5432 --pg-user bench --init
    python scripts/bench.py --idle-clients 5000      # each pooler's RSS before/after N idle clients
    python scripts/bench.py --postgres-cpus 1 --pooler-cpus 0   # PostgreSQL on a CPU of its own
    python scripts/bench.py --config-line 'cpu_affinity "worker:0"'   # a global line in both Odysseys' config

Method (the one behind the figures in docs/performance.md): every cell runs
`pgbench -n -S -j 2 -c C -T S -M simple|extended|prepared` (with `-C` for the connect cells) once
per target per round; the target order alternates every round (A B C, then C B A) so drift and
warm-up hit every target alike. Reported per cell: median TPS, the median of the per-round ratios
to PgBouncer and to direct PG, and each pooler's CPU µs per transaction from /proc/PID/stat
utime+stime deltas over each run (all its threads). With C Odyssey (`--odyssey-bin` or
ODYSSEY_BIN: a binary built elsewhere, given the same config file as ours) a second table puts
the poolers side by side with our ratios to it (TPS, and CPU per transaction), and `--chart`
draws that table as a PNG (needs matplotlib: `pip install .[bench]`).

`--postgres-cpus` pins the throwaway PostgreSQL (its postmaster, so every backend it forks) to
the CPUs given, and `--pooler-cpus` pins the poolers, PgBouncer and pgbench to theirs: on a small
machine this measures the poolers with PostgreSQL on cores of its own, as in production, instead
of sharing every core with it (docs/performance.md shows why that matters at -c 50).

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

from odyssey_gevent import affinity  # noqa: E402
from scripts.pgcluster import PgCluster, free_port, wait_port  # noqa: E402
from scripts.pooler import PoolerProcess, rss_kib  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
# target -> how the tables and the chart name it
TARGET_NAMES = {"odyssey-gevent": "odyssey-gevent", "odyssey": "C Odyssey", "pgbouncer": "PgBouncer",
                "direct": "direct PostgreSQL"}
POOLERS = ("odyssey-gevent", "odyssey", "pgbouncer")

# the global, listen and storage part of a pooler config (scripts/soak.py adds its own routes)
POOLER_HEADER = """\
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
"""
POOLER_TEMPLATE = POOLER_HEADER + """\
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
    ap.add_argument("--connect", default=[], type=lambda s: [int(x) for x in s.split(",") if x],
                    help="comma list of pgbench -c values for connect-per-transaction cells "
                         "(pgbench -C -M simple), e.g. 10")
    ap.add_argument("--targets", default=None, type=lambda s: [x for x in s.split(",") if x],
                    help="comma list of odyssey-gevent, odyssey (C Odyssey), pgbouncer, direct (default: "
                         "all but odyssey, plus odyssey when its binary is given)")
    ap.add_argument("--odyssey-bin", default=None,
                    help="C Odyssey binary (or command line) to run as the target 'odyssey' "
                         "(default: $ODYSSEY_BIN)")
    ap.add_argument("--chart", default=None, metavar="PNG",
                    help="draw the side-by-side table as a PNG chart (needs matplotlib)")
    ap.add_argument("--pool-size", type=int, default=20)
    ap.add_argument("--processes", type=int, default=1,
                    help="odyssey-gevent's `processes N` (pooler processes sharing the port; default 1)")
    ap.add_argument("--postgres-cpus", default=None, type=cpu_list, metavar="LIST",
                    help="pin the throwaway PostgreSQL to these CPUs, e.g. 1 or 2-3 (Linux)")
    ap.add_argument("--pooler-cpus", default=None, type=cpu_list, metavar="LIST",
                    help="pin the poolers, PgBouncer and pgbench to these CPUs, e.g. 0 (Linux)")
    ap.add_argument("--config-line", action="append", default=[], metavar="LINE",
                    help="a global line added to the config of odyssey-gevent and C Odyssey alike, "
                         "e.g. 'cpu_affinity \"worker:0\"' (repeatable)")
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
    if a.odyssey_bin is None:
        a.odyssey_bin = os.environ.get("ODYSSEY_BIN") or None
    if a.targets is None:
        a.targets = ["odyssey-gevent"] + (["odyssey"] if a.odyssey_bin else []) + ["direct", "pgbouncer"]
    bad = set(a.targets) - set(TARGET_NAMES)
    if bad:
        ap.error(f"unknown targets: {', '.join(sorted(bad))}")
    if "odyssey" in a.targets and not a.odyssey_bin:
        ap.error("the target odyssey needs --odyssey-bin or ODYSSEY_BIN")
    if a.postgres_cpus is not None and a.pg_port is not None:
        ap.error("--postgres-cpus pins the throwaway PostgreSQL only (not one given by --pg-host)")
    if not a.clients or min(a.clients + a.connect) < 1 or a.seconds < 1 or a.rounds < 1:
        ap.error("--clients, --seconds and --rounds must be positive")
    return a


def cpu_list(text: str) -> set[int]:
    """A CPU list as taskset and cpu_affinity write it: "0", "1,3", "0-2,5"."""
    try:
        return set(affinity.parse_cpuset(text))
    except affinity.AffinityError:
        raise argparse.ArgumentTypeError(f"expected a CPU list such as 0 or 1,3 or 0-2, got {text!r}") from None


def placement(a: argparse.Namespace) -> str:
    """The tables' and the chart's words for --postgres-cpus, --pooler-cpus and --config-line
    ("" when none is given)."""
    parts = [f"{who} on CPU {','.join(map(str, sorted(cpus)))}"
             for who, cpus in (("PostgreSQL", a.postgres_cpus), ("poolers and pgbench", a.pooler_cpus))
             if cpus is not None]
    if a.config_line:
        parts.append("both Odysseys with " + " / ".join(a.config_line))
    return "; " + ", ".join(parts) if parts else ""


def with_config_lines(template: str, lines: list[str]) -> str:
    """A pooler config template with global `lines` first (a literal $ kept from the template's
    substitution)."""
    return "".join(line.replace("$", "$$") + "\n" for line in lines) + template


def pin_tree(pid: int, cpus: set[int]) -> int:
    """Pin every thread of process `pid` and of its live descendants to `cpus` (children forked
    later inherit it); returns how many threads were pinned."""
    n = 0
    for p in proc_tree(pid):
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{p}/task")]
        except OSError:
            continue                                # gone meanwhile
        for tid in tids:
            try:
                os.sched_setaffinity(tid, cpus)
                n += 1
            except ProcessLookupError:
                pass
    return n


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
max_client_conn = 20000
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


def cells_of(args) -> list[tuple[int, str, bool]]:
    """The cells of a run in order: (clients, mode, connect per transaction)."""
    cells = [(c, m, False) for c in args.clients for m in args.modes]
    return cells + [(c, "simple", True) for c in args.connect]


def cell_name(clients: int, mode: str, connect: bool) -> str:
    return f"c{clients} -C {mode}" if connect else f"c{clients} {mode}"


def _ratios(results: dict, target: str, ref: str, cell: str, key: str) -> list:
    """Per round: target's `key` / ref's `key` in the same round."""
    mine = {r["round"]: r.get(key) for r in results.get((target, cell), [])}
    theirs = {r["round"]: r.get(key) for r in results.get((ref, cell), [])}
    return [mine[k] / theirs[k] for k in mine if mine[k] and theirs.get(k)]


def side_by_side(cells: list[str], targets: list[str], results: dict) -> list[dict]:
    """One row per cell: for each target its median TPS and CPU µs per transaction, and
    odyssey-gevent's per-round ratios to C Odyssey (TPS: higher is better; CPU: lower is):
    their median and range (one round to the next varies by up to 0.2 on this machine)."""
    rows = []
    for c in cells:
        row = {"cell": c}
        for t in targets:
            runs = results.get((t, c), [])
            row[t] = (median([r["tps"] for r in runs]), median([r.get("cpu_us") for r in runs]))
        for k, key in (("tps", "tps"), ("cpu", "cpu_us")):
            ratios = _ratios(results, "odyssey-gevent", "odyssey", c, key)
            row[f"{k}_ratio"] = median(ratios)
            row[f"{k}_range"] = (min(ratios), max(ratios)) if ratios else None
        rows.append(row)
    return rows


def format_side_by_side(rows: list[dict], targets: list[str]) -> str:
    """The issue's table: cells down, targets across ("16,200 tps, 41 µs CPU"), then our TPS
    and CPU per transaction as ratios to C Odyssey's."""
    order = [t for t in ("odyssey-gevent", "odyssey", "pgbouncer", "direct") if t in targets]
    with_ratio = "odyssey" in targets and "odyssey-gevent" in targets
    head = [""] + [TARGET_NAMES[t] for t in order]
    if with_ratio:
        head += ["ours / C Odyssey TPS", "ours / C Odyssey CPU"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        out = [row["cell"]]
        for t in order:
            tps, cpu = row.get(t, (None, None))
            if tps is None:
                out.append("-")
            else:
                out.append(f"{tps:,.0f} tps" + (f", {cpu:.0f} µs CPU" if cpu is not None else ""))
        if with_ratio:
            for k in ("tps", "cpu"):
                ratio, span = row[f"{k}_ratio"], row[f"{k}_range"]
                out.append("-" if ratio is None else f"{ratio:.2f} ({span[0]:.2f}-{span[1]:.2f})")
        lines.append("| " + " | ".join(out) + " |")
    return "\n".join(lines)


def draw_chart(rows: list[dict], targets: list[str], path: str, title: str) -> bool:
    """The side-by-side table as a PNG: TPS per cell and target on top, the poolers' CPU µs per
    transaction below. False (and nothing written) when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    order = [t for t in ("odyssey-gevent", "odyssey", "pgbouncer", "direct") if t in targets]
    colors = {"odyssey-gevent": "#2b7bba", "odyssey": "#e08a1e", "pgbouncer": "#4daf4a", "direct": "#999999"}
    cells = [r["cell"] for r in rows]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(6, 1.6 * len(cells) + 2), 7), sharex=True)
    width = 0.8 / max(len(order), 1)
    for i, t in enumerate(order):
        xs = [j + (i - (len(order) - 1) / 2) * width for j in range(len(cells))]
        tps = [(r.get(t) or (None, None))[0] or 0 for r in rows]
        top.bar(xs, tps, width, label=TARGET_NAMES[t], color=colors[t])
        if t != "direct":
            cpu = [(r.get(t) or (None, None))[1] or 0 for r in rows]
            bottom.bar(xs, cpu, width, label=TARGET_NAMES[t], color=colors[t])
    top.set_ylabel("transactions per second")
    top.set_title(title, fontsize=10)
    top.legend(fontsize=8)
    bottom.set_ylabel("pooler CPU µs per transaction")
    bottom.set_xticks(range(len(cells)))
    bottom.set_xticklabels(cells)
    for ax in (top, bottom):
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


# -- processes ---------------------------------------------------------------------------------------
class Bench:
    def __init__(self, args):
        self.a = args
        self.cluster: PgCluster | None = None
        self.pooler: PoolerProcess | None = None
        self.codyssey: PoolerProcess | None = None       # C Odyssey (target "odyssey")
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

    # odyssey-gevent, and C Odyssey on the same config
    def start_pooler(self, target: str = "odyssey-gevent") -> PoolerProcess:
        # ours runs as `python -m odyssey_gevent` even with ODYSSEY_BIN set (main() moved it to
        # --odyssey-bin): PoolerProcess would otherwise run that binary
        binary = self.a.odyssey_bin if target == "odyssey" else None
        template = with_config_lines(POOLER_TEMPLATE, self.a.config_line)
        if target != "odyssey" and self.a.processes > 1:     # ours only: C Odyssey has no such keyword
            template = f"processes {self.a.processes}\n" + template
        proc = PoolerProcess(template, pg_host=self.pg_host, pg_port=self.pg_port, binary=binary,
                             pool_size=self.a.pool_size,
                             reserve_prepared="yes" if self.a.prepared_statements else "no")
        if target == "odyssey":
            self.codyssey = proc
        else:
            self.pooler = proc
        self.ports[target] = proc.port
        self.log(f"{target} pid {proc.pid} on 127.0.0.1:{proc.port} ({proc.tmp})")
        return proc

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
        if target == "odyssey" and self.codyssey:
            return self.codyssey.pid
        if target == "pgbouncer" and self.bouncer:
            return self.bouncer.pid
        return None

    def pgbench(self, target: str, clients: int, mode: str, connect: bool = False) -> dict:
        host, port = ("127.0.0.1", self.ports[target]) if target != "direct" else (self.pg_host, self.pg_port)
        cmd = ["pgbench", "-n", "-S", "-j", "2", "-c", str(clients), "-T", str(self.a.seconds), "-M", mode,
               *(["-C"] if connect else []), "-h", host, "-p", str(port), "-U", self.a.pg_user, self.a.db]
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
        cells = cells_of(self.a)
        names = [cell_name(*cell) for cell in cells]
        results: dict = {}
        for rnd in range(self.a.rounds):
            order = round_order(self.a.targets, rnd)
            self.log(f"round {rnd + 1}/{self.a.rounds}: {' '.join(order)}")
            for (c, m, connect), name in zip(cells, names):
                for t in order:
                    if t == "pgbouncer" and m == "prepared" and not self.bouncer_prepared:
                        continue
                    r = self.pgbench(t, c, m, connect)
                    r["round"] = rnd
                    results.setdefault((t, name), []).append(r)
                    cpu = f", {r['cpu_us']:.0f} CPU µs/tx" if r["cpu_us"] is not None else ""
                    self.log(f"  {name:<12} {t:<15} {r['tps']:>10,.0f} tps{cpu}")
        print()
        print(f"median TPS (median per-round ratio to pgbouncer / direct PG); "
              f"pgbench -n -S -j 2 -T {self.a.seconds}, {self.a.rounds} rounds{placement(self.a)}")
        print(format_table(names, self.a.targets, results))
        rows = side_by_side(names, self.a.targets, results)
        print()
        print("side by side (medians; our ratios to C Odyssey are medians of per-round ratios)")
        print(format_side_by_side(rows, self.a.targets))
        if self.a.chart:
            title = (f"pgbench -S -j 2 -T {self.a.seconds}, {self.a.rounds} rounds, medians; "
                     f"transaction pool of {self.a.pool_size}{placement(self.a)}")
            if draw_chart(rows, self.a.targets, self.a.chart, title):
                print(f"chart written to {self.a.chart}")
            else:
                print("no chart: matplotlib is not installed (pip install .[bench])")

    def idle_clients(self, target: str = "odyssey-gevent") -> None:
        """Log N idle clients in to one pooler (after one warm-up client, which makes the route
        and its first server), print its RSS before and after, and close them."""
        from scripts.idle_clients import open_idle_clients
        n = self.a.idle_clients
        pid, port = self.pid_of(target), self.ports[target]
        for s in open_idle_clients("127.0.0.1", port, 1, self.a.pg_user, self.a.db):
            s.close()
        time.sleep(0.5)
        before = rss_kib(pid)
        t0 = time.monotonic()
        socks = open_idle_clients("127.0.0.1", port, n, self.a.pg_user, self.a.db, batch=100)
        took = time.monotonic() - t0
        time.sleep(4.0)         # our idle clients give their coroutine up after 1-2 s (relay.DORMANT_AFTER_MS)
        after = rss_kib(pid)
        print(f"{TARGET_NAMES[target]}: {n} idle clients logged in in {took:.1f}s; "
              f"VmRSS before: {before / 1024:.1f} MiB, after: {after / 1024:.1f} MiB, "
              f"{(after - before) / max(n, 1):.1f} KiB per idle client", flush=True)
        for s in socks:
            s.close()
        time.sleep(0.5)

    def main(self) -> None:
        if self.a.idle_clients:
            from scripts.idle_clients import raise_nofile
            got = raise_nofile(2 * self.a.idle_clients + 1024)      # inherited by the pooler
            if got < self.a.idle_clients + 100:
                raise RuntimeError(f"RLIMIT_NOFILE is only {got}; run as root or raise ulimit -n")
        self.setup_pg()
        if self.a.postgres_cpus is not None:
            with open(os.path.join(self.cluster.datadir, "postmaster.pid")) as f:
                postmaster = int(f.readline())
            n = pin_tree(postmaster, self.a.postgres_cpus)
            self.log(f"PostgreSQL ({n} threads) pinned to CPUs {sorted(self.a.postgres_cpus)}")
        if self.a.pooler_cpus is not None:          # inherited by every pooler and pgbench started below
            os.sched_setaffinity(0, self.a.pooler_cpus)
            self.log(f"poolers and pgbench pinned to CPUs {sorted(self.a.pooler_cpus)}")
        for target in ("odyssey-gevent", "odyssey"):
            if target in self.a.targets:
                self.start_pooler(target)
        if "pgbouncer" in self.a.targets:
            self.start_pgbouncer()
        if self.a.idle_clients:
            for target in POOLERS:
                if target in self.a.targets:
                    self.idle_clients(target)
            return
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
        for proc in (self.pooler, self.codyssey):
            if proc is not None:
                proc.stop()
                shutil.rmtree(proc.tmp, ignore_errors=True)
        self.pooler = self.codyssey = None
        if self.cluster is not None:
            self.cluster.destroy()
            self.cluster = None


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.pop("ODYSSEY_BIN", None)      # in args.odyssey_bin now; see Bench.start_pooler
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
