"""The pure parts of scripts/bench.py and scripts/demo.py, and the config builder of conftest.py."""
from __future__ import annotations

import os
import string
import subprocess
import sys
import time

import pytest

from scripts import bench, demo
from tests.integration.conftest import odyssey_config, rule


def test_bench_defaults_and_lists():
    a = bench.parse_args([])
    assert (a.clients, a.seconds, a.rounds, a.extended, a.pg_host) == ([10, 50], 10, 3, False, None)
    assert a.targets == ["odyssey-gevent", "direct", "pgbouncer"]
    a = bench.parse_args(["--clients", "4,8", "--seconds", "2", "--rounds", "1", "--extended",
                          "--pg-host", "127.0.0.1", "--pg-port", "5432", "--targets", "direct"])
    assert (a.clients, a.seconds, a.rounds, a.extended, a.pg_port, a.targets) == \
        ([4, 8], 2, 1, True, 5432, ["direct"])


def test_bench_modes():
    assert bench.parse_args([]).modes == ["simple"]
    assert bench.parse_args(["--extended"]).modes == ["simple", "extended"]
    a = bench.parse_args(["--modes", "prepared,simple"])
    assert a.modes == ["prepared", "simple"] and a.prepared_statements      # -M prepared needs it
    assert not bench.parse_args(["--modes", "extended"]).prepared_statements
    assert "max_prepared_statements" in bench.pgbouncer_ini(1, "h", 2, "/w", prepared=True)
    assert "max_prepared_statements" not in bench.pgbouncer_ini(1, "h", 2, "/w")


@pytest.mark.parametrize("argv", [["--pg-host", "x"], ["--targets", "pgpool"], ["--clients", "0"],
                                  ["--rounds", "0"], ["--modes", "fast"], ["--pooler-cpus", "a"],
                                  ["--pooler-cpus", ""], ["--postgres-cpus", "1", "--pg-host", "h",
                                                          "--pg-port", "5432"]])
def test_bench_rejects_bad_arguments(argv):
    with pytest.raises(SystemExit):
        bench.parse_args(argv)


def test_bench_round_order_alternates():
    t = ["a", "b", "c"]
    assert [bench.round_order(t, r) for r in range(3)] == [t, ["c", "b", "a"], t]


def test_pgbouncer_ini():
    ini = bench.pgbouncer_ini(7000, "127.0.0.1", 5433, "/tmp/x", pool_size=20)
    lines = {ln.split(" = ", 1)[0]: ln.split(" = ", 1)[1] for ln in ini.splitlines() if " = " in ln}
    assert lines["*"] == "host=127.0.0.1 port=5433"
    assert lines["listen_port"] == "7000"
    assert (lines["pool_mode"], lines["default_pool_size"], lines["auth_type"]) == ("transaction", "20", "trust")
    assert lines["logfile"] == "/tmp/x/pgbouncer.log"
    assert lines["auth_file"] == "/tmp/x/userlist.txt"


def test_parse_pgbench_output():
    out = """pgbench (15.20 (Debian 15.20-0+deb12u1))
transaction type: <builtin: select only>
number of clients: 4
number of transactions actually processed: 12345
number of failed transactions: 0 (0.000%)
latency average = 0.321 ms
initial connection time = 5.123 ms
tps = 6172.500000 (without initial connection time)
"""
    assert bench.parse_pgbench(out) == (6172.5, 12345)
    with pytest.raises(RuntimeError):
        bench.parse_pgbench("connection refused")


def test_format_table_ratios_are_per_round():
    res = {
        ("odyssey-gevent", "c10 simple"): [dict(round=0, tps=500, cpu_us=80), dict(round=1, tps=600, cpu_us=90)],
        ("pgbouncer", "c10 simple"): [dict(round=0, tps=1000, cpu_us=30), dict(round=1, tps=1000, cpu_us=30)],
        ("direct", "c10 simple"): [dict(round=0, tps=2000, cpu_us=None), dict(round=1, tps=2000, cpu_us=None)],
    }
    table = bench.format_table(["c10 simple"], ["odyssey-gevent", "direct", "pgbouncer"], res)
    assert "550 (pgb 0.55, pg 0.28)" in table
    assert "odyssey-gevent CPU µs/tx | 85" in table
    assert "pgbouncer CPU µs/tx" in table and "direct CPU" not in table


def test_bench_cpu_lists_and_pinning():
    a = bench.parse_args(["--postgres-cpus", "1", "--pooler-cpus", "0,2-3"])
    assert (a.postgres_cpus, a.pooler_cpus) == ({1}, {0, 2, 3})
    assert bench.parse_args([]).postgres_cpus is None
    assert bench.placement(a) == "; PostgreSQL on CPU 1, poolers and pgbench on CPU 0,2,3"
    assert bench.placement(bench.parse_args([])) == ""
    a = bench.parse_args(["--config-line", 'cpu_affinity "worker:0"', "--config-line", "priority 1"])
    assert bench.placement(a) == '; both Odysseys with cpu_affinity "worker:0" / priority 1'
    text = bench.with_config_lines("workers 1\nport ${port}\n", ['log_format "$x"'])
    assert string.Template(text).safe_substitute(port=7) == 'log_format "$x"\nworkers 1\nport 7\n'
    # a child with a second thread: pin_tree pins both of its threads, and not the caller
    child = subprocess.Popen([sys.executable, "-c", "import threading, time; threading.Thread("
                              "target=time.sleep, args=(30,), daemon=True).start(); time.sleep(30)"])
    try:
        while len(os.listdir(f"/proc/{child.pid}/task")) < 2:
            time.sleep(0.01)
        mine = os.sched_getaffinity(0)
        cpu = min(mine)
        assert bench.pin_tree(child.pid, {cpu}) == 2
        assert all(os.sched_getaffinity(int(t)) == {cpu} for t in os.listdir(f"/proc/{child.pid}/task"))
        assert os.sched_getaffinity(0) == mine          # the caller is not pinned
    finally:
        child.kill()
        child.wait()
    assert bench.pin_tree(child.pid, {cpu}) == 0        # gone: nothing to pin


def test_cpu_and_rss_of_this_process():
    import os
    assert bench.cpu_seconds(os.getpid()) > 0
    assert bench.rss_kib(os.getpid()) > 1000
    assert os.getpid() in bench.proc_tree(os.getpid())


CONF = """
# demo config
daemonize no
unix_socket_dir "/tmp"   # a comment with "quotes" and { braces
listen {
    host "*"
    port 6433
}
storage "local" { type "local" }
storage "postgres_server" {
    type "remote"
    host "[127.0.0.1]:5499,other:5432"
    port 5432
    watchdog { authentication "none" port 1 }
}
"""


def test_demo_finds_the_first_remote_storage_and_listen():
    st = demo.find_storage(CONF)
    assert (st["name"], st["host"], st["port"], st["unix_socket_dir"]) == ("postgres_server", "127.0.0.1", 5499, "/tmp")
    assert demo.find_listen(CONF) == ("*", 6433)


@pytest.mark.parametrize("host,port,want", [
    ("127.0.0.1", 5432, ("127.0.0.1", 5432)),
    ("localhost:6000", None, ("localhost", 6000)),
    ("tcp://db1:7000:az1,db2", 5432, ("db1", 7000)),
    ("[::1]:5433", None, ("::1", 5433)),
    ("db1:az1", 5432, ("db1", 5432)),
])
def test_demo_parses_storage_endpoints(host, port, want):
    assert demo.parse_endpoint(host, port) == want


def test_demo_unset_host_means_unix_socket():
    st = demo.find_storage('unix_socket_dir "/run/x"\nstorage "s" { type "remote" port 5440 }')
    assert (st["host"], st["port"], st["unix_socket_dir"]) == ("", 5440, "/run/x")


def test_config_builder_quotes_and_placeholders():
    text = odyssey_config(rule("u1", "db1", pool="session", password='p"a$s', options={"statement_timeout": "1s"}),
                          client_max=5, listen={"client_login_timeout": 500})
    assert 'database "db1" {' in text and 'user "u1" {' in text
    assert 'password "p\\"a$$s"' in text                  # $$ → $ after string.Template
    assert 'options { "statement_timeout" "1s" }' in text
    assert "port ${port}" in text and 'host "${pg_host}"' in text and "port ${pg_port}" in text
    assert "client_max 5" in text and "client_login_timeout 500" in text
    assert 'log_format "%p %t %l [%i %s] (%c) %m\\n"' in text


def test_bench_relay_runs_every_mode_cleanly():
    from scripts import bench_relay
    for mode in ("simple", "extended", "prepared"):
        assert bench_relay.run(mode, 200) > 0      # raises if a transaction did not end cleanly


def test_count_instructions_reads_totals_when_summary_is_zero(tmp_path):
    from scripts.count_instructions import parse_args, total_instructions
    out = tmp_path / "callgrind.out.1"
    out.write_text("events: Ir\nsummary: 0\n\nfn=(1) f\n0 5\ntotals: 118018242\n")
    assert total_instructions(str(out)) == 118018242
    (tmp_path / "empty").write_text("events: Ir\n")
    with pytest.raises(ValueError):
        total_instructions(str(tmp_path / "empty"))
    a = parse_args(["--connect", "--auth", "scram", "--clients", "4"])
    assert a.connect and a.auth == "scram" and a.clients == 4


def test_soak_arguments_config_and_growth():
    from odyssey_gevent.config.reader import loads
    from scripts import soak
    a = soak.parse_args([])
    assert (a.seconds, a.interval, a.clients, a.pool_size) == (600, 5.0, 4, 4)
    with pytest.raises(SystemExit):
        soak.parse_args(["--seconds", "1"])
    text = soak.config_text(3).replace("${port}", "6432").replace("${pg_host}", "127.0.0.1") \
        .replace("${pg_port}", "5432")
    cfg = loads(text)
    assert sorted((r.db_name, r.pool, r.pool_size) for r in cfg.rules) == [
        ("soak_session", "session", 3), ("soak_statement", "statement", 3), ("soak_tx", "transaction", 3)]
    assert soak.growth([100] * 10 + [200] * 10) == (100, 200)
    assert soak.parse_pgbench("number of transactions actually processed: 12\nnumber of failed transactions: 0 "
                              "(0.000%)\ntps = 3.5 (without initial connection time)\n") == (12, 0, 3.5)


def test_bench_c_odyssey_target_and_connect_cells(monkeypatch):
    monkeypatch.delenv("ODYSSEY_BIN", raising=False)
    a = bench.parse_args([])
    assert a.targets == ["odyssey-gevent", "direct", "pgbouncer"] and a.odyssey_bin is None
    with pytest.raises(SystemExit):
        bench.parse_args(["--targets", "odyssey-gevent,odyssey"])      # no binary given
    monkeypatch.setenv("ODYSSEY_BIN", "/opt/odyssey")
    a = bench.parse_args(["--connect", "10", "--modes", "simple,extended", "--clients", "50"])
    assert a.odyssey_bin == "/opt/odyssey" and "odyssey" in a.targets
    assert [bench.cell_name(*c) for c in bench.cells_of(a)] == ["c50 simple", "c50 extended", "c10 -C simple"]


def _side_by_side_results():
    return {
        ("odyssey-gevent", "c10 simple"): [dict(round=0, tps=900, cpu_us=40), dict(round=1, tps=1000, cpu_us=44)],
        ("odyssey", "c10 simple"): [dict(round=0, tps=1000, cpu_us=20), dict(round=1, tps=800, cpu_us=22)],
        ("pgbouncer", "c10 simple"): [dict(round=0, tps=2000, cpu_us=10), dict(round=1, tps=2000, cpu_us=10)],
    }


def test_bench_side_by_side_ratios_to_c_odyssey():
    targets = ["odyssey-gevent", "odyssey", "pgbouncer"]
    rows = bench.side_by_side(["c10 simple"], targets, _side_by_side_results())
    # per-round ratios 0.9 and 1.25 (TPS), 2.0 and 2.0 (CPU): their medians
    assert rows[0]["tps_ratio"] == pytest.approx(1.075) and rows[0]["cpu_ratio"] == pytest.approx(2.0)
    assert rows[0]["tps_range"] == pytest.approx((0.9, 1.25)) and rows[0]["cpu_range"] == pytest.approx((2.0, 2.0))
    table = bench.format_side_by_side(rows, targets)
    # the median, then the lowest and highest round's ratio
    assert ("| c10 simple | 950 tps, 42 µs CPU | 900 tps, 21 µs CPU | 2,000 tps, 10 µs CPU "
            "| 1.07 (0.90-1.25) | 2.00 (2.00-2.00) |") in table
    assert "ours / C Odyssey TPS" in table
    assert "ours / C Odyssey" not in bench.format_side_by_side(rows, ["odyssey-gevent", "pgbouncer"])


def test_bench_chart_is_a_png_or_skipped(tmp_path):
    targets = ["odyssey-gevent", "odyssey", "pgbouncer"]
    rows = bench.side_by_side(["c10 simple"], targets, _side_by_side_results())
    path = tmp_path / "chart.png"
    drawn = bench.draw_chart(rows, targets, str(path), "test")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert not drawn and not path.exists()
    else:
        assert drawn and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_count_opcodes_counts_only_while_the_flag_exists(tmp_path):
    import collections
    from scripts.count_opcodes import make_tracer
    flag = tmp_path / "on"
    counts, calls = collections.Counter(), collections.Counter()

    def work(n):
        total = 0
        for i in range(n):
            total += i
        return total

    tracer = make_tracer(str(flag), counts, calls)
    sys.settrace(tracer)
    try:
        work(3)                 # flag absent: not counted
        flag.touch()
        work(3)
        work(30)
    finally:
        sys.settrace(None)
    code = work.__code__
    assert calls[code] == 2
    # the 30-step loop runs more bytecodes than the 3-step one: both were counted, nothing before
    assert counts[code] > 2 * 30
    assert set(calls) == {code}


def test_count_opcodes_lines_split_a_functions_bytecodes_by_source_line(tmp_path):
    import collections
    from scripts.count_opcodes import make_tracer
    flag = tmp_path / "on"
    flag.touch()
    counts, calls, lines = collections.Counter(), collections.Counter(), collections.Counter()

    def work(n):
        total = 0
        for i in range(n):
            total += i      # the loop's body: the line that runs the most
        return total

    tracer = make_tracer(str(flag), counts, calls, lines)
    sys.settrace(tracer)
    try:
        work(20)
    finally:
        sys.settrace(None)
    code = work.__code__
    body = code.co_firstlineno + 3
    mine = {line: n for (c, line), n in lines.items() if c is code}
    assert sum(mine.values()) == counts[code]          # every bytecode on some line
    assert max(mine, key=mine.get) == body and mine[body] >= 20 * 3


def test_sched_split_reads_this_process_and_pgbench_logs(tmp_path):
    from scripts import sched_split
    child = subprocess.Popen([sys.executable, "-c", "import time; sum(range(3_000_000)); time.sleep(0.3)"])
    try:
        run, wait, slices, vol, invol = sched_split.sched(os.getpid())
        assert run > 0 and slices > 0 and wait >= 0 and vol + invol > 0
        assert sched_split.sched(child.pid)[3] >= 0
    finally:
        child.wait()
    assert sched_split.sched(child.pid) == [0, 0, 0, 0, 0]          # gone: nothing to read
    idle, total = sched_split.machine_time()
    assert 0 <= idle < total
    # pgbench -l lines: client id, transaction no, latency (µs), script no, epoch, µs
    (tmp_path / "l.1.1").write_text("0 1 250 0 1764600000 1\n1 1 90 0 1764600000 2\n")
    (tmp_path / "l.1.2").write_text("2 1 4000 0 1764600000 3\n\n")
    lat = sched_split.pgbench_latencies(str(tmp_path / "l"))
    assert lat == [90, 250, 4000]
    assert [sched_split.percentile(lat, q) for q in (0, 0.5, 0.99, 1)] == [90, 250, 250, 4000]
    a = sched_split.parse_args(["--clients", "10", "--nice", "-5", "--odyssey-bin", "x"])
    assert (a.clients, a.nice, a.odyssey_bin, a.rounds, a.pin) == (10, -5, "x", 4, None)
    assert sched_split.parse_args(["--pin", "0,1,0"]).pin == (0, 1, 0)
    assert sched_split.parse_args(["--pin", "0,-,-"]).pin == (0, None, None)     # "-": left free
    with pytest.raises(SystemExit):
        sched_split.parse_args(["--pin", "0,1"])
    # migrations: this process's count is a number that only grows; a gone process reads 0
    assert 0 <= sched_split.migrations(os.getpid()) <= sched_split.migrations(os.getpid())
    assert sched_split.migrations(child.pid) == 0


def test_sched_split_finds_the_pool_backends_of_a_database(pg):
    import psycopg2
    from scripts import sched_split
    with open(os.path.join(pg.datadir, "postmaster.pid")) as f:
        postmaster = int(f.readline())
    conn = psycopg2.connect(host=pg.host, port=pg.port, user="postgres", dbname="postgres")
    try:
        with conn.cursor() as cur:
            cur.execute("select pg_backend_pid()")
            mine = cur.fetchone()[0]
        found = sched_split.pool_backends(postmaster, "postgres")
        assert mine in found
        assert postmaster not in found                       # the postmaster serves no client
        assert mine not in sched_split.pool_backends(postmaster, "template1")
    finally:
        conn.close()
