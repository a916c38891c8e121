"""`processes N` (issue 10, "more than one core"; ours, C Odyssey has no such keyword): a
supervisor runs N pooler processes that share the listen port with SO_REUSEPORT. Connections
spread over them, a cancel request reaches the process that owns the key whichever process the
kernel hands it to, SIGHUP and SIGTERM reach every process, and a process that dies is started
again.
"""
from __future__ import annotations

import os
import re
import signal
import threading

import psycopg2
import pytest

from scripts.pgcluster import free_port
from scripts.pooler import PoolerProcess
from tests.integration.conftest import Raw, ensure_roles, odyssey_config, one, rule, wait_for

USER = "procs_user"


@pytest.fixture
def procs(pg, roles):
    ensure_roles(pg, USER)
    p = PoolerProcess(odyssey_config(rule(USER, "db1", pool="transaction", pool_size=4), processes=2,
                                     log_debug=True), pg=pg)
    try:
        wait_for(lambda: len(_children(p)) == 2 and _pids_logging(p, "listening on") == set(_children(p).values()),
                 timeout=20, what="two pooler processes listening")
        yield p
    finally:
        p.stop()


def _children(p) -> dict[int, int]:
    """index -> pid of the pooler processes the supervisor started (the last start of each)."""
    out = {}
    for index, pid in re.findall(r"\(supervisor\) pooler process (\d+) started, pid (\d+)", p.log()):
        out[int(index)] = int(pid)
    return out


def _running(pid: int) -> bool:
    """Running (a zombie its new parent has not reaped counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _pids_logging(p, needle: str) -> set[int]:
    return {int(line.split()[0]) for line in p.log().splitlines() if needle in line}


def _connect(p):
    con = psycopg2.connect(p.dsn(USER, "db1"), connect_timeout=10)
    con.autocommit = True
    return con



@pytest.mark.timeout(60)
def test_connections_spread_over_the_processes(procs):
    children = set(_children(procs).values())
    assert procs.pid not in children
    for i in range(40):
        con = _connect(procs)
        assert one(con, f"select {i}") == i
        con.close()
    # 40 connections from random source ports: both processes served some (the kernel's hash)
    assert _pids_logging(procs, "new client connection") == children


@pytest.mark.timeout(90)
def test_cancel_reaches_the_owner_process(procs):
    """The cancel connection lands on either process; those that land on the other one are
    passed on by the peer socket. Cancel until at least one was passed on (each has 1/2)."""
    done = 0
    for _ in range(40):
        con = _connect(procs)
        timer = threading.Timer(0.3, con.cancel)
        timer.start()
        with pytest.raises(psycopg2.errors.QueryCanceled):
            one(con, "select pg_sleep(10)")
        timer.join()
        assert one(con, "select 7") == 7
        con.close()
        done += 1
        if done >= 4 and "cancel passed to pooler process" in procs.log():
            break
    assert "cancel passed to pooler process" in procs.log()
    assert "cannot pass the cancel" not in procs.log()


@pytest.mark.timeout(60)
def test_signals_reach_every_process_and_a_dead_one_comes_back(procs):
    children = _children(procs)
    procs.signal(signal.SIGHUP)
    wait_for(lambda: _pids_logging(procs, "SIGHUP received") >= set(children.values()) | {procs.pid}, timeout=10,
             what="SIGHUP in every process")
    os.kill(children[1], signal.SIGKILL)
    wait_for(lambda: _children(procs)[1] != children[1], timeout=20, what="process 1 started again")
    assert "pooler process 1 (pid %d) exited with -9: starting it again" % children[1] in procs.log()
    new = _children(procs)
    wait_for(lambda: f"{new[1]} " in procs.log() and "listening on" in procs.log().split(f"pid {new[1]}")[-1],
             timeout=20, what="the new process 1 listening")
    for i in range(5):
        con = _connect(procs)
        assert one(con) == 1
        con.close()
    procs.signal(signal.SIGTERM)
    assert procs.proc.wait(20) == 0, procs.log()[-3000:]
    assert "all pooler processes have exited" in procs.log()
    for pid in new.values():
        assert not _running(pid)


@pytest.mark.timeout(60)
def test_sigusr1_reopens_the_log_file_in_every_process(pg, roles):
    ensure_roles(pg, USER)
    p = PoolerProcess(odyssey_config(rule(USER, "db1"), processes=2, log_to_stdout=False,
                                     log_file=Raw('"${tmp}/odyssey.log"')), pg=pg)
    try:
        log = os.path.join(p.tmp, "odyssey.log")
        text = wait_for(lambda: os.path.exists(log) and open(log).read().count("listening on") == 2 and open(log).read(),
                        timeout=20, what="both processes listening")
        pids = {int(x) for x in re.findall(r"pooler process \d+ started, pid (\d+)", text)} | {p.pid}
        os.rename(log, log + ".1")
        p.signal(signal.SIGUSR1)
        wait_for(lambda: open(log + ".1").read().count("SIGUSR1 received") == 3, timeout=10, what="SIGUSR1 everywhere")
        p.signal(signal.SIGHUP)           # something for every process to log in the new file
        wait_for(lambda: os.path.exists(log) and {int(line.split()[0]) for line in open(log) if "SIGHUP" in line} == pids,
                 timeout=10, what="every process writing to the reopened file")
        assert "listening on" not in open(log).read()
    finally:
        p.stop()


def _two_free_ports() -> int:
    """A port p with p + 1 free as well (bound and released: free when checked)."""
    import socket
    for _ in range(50):
        port = free_port()
        try:
            with socket.socket() as s:
                s.bind(("0.0.0.0", port + 1))
            return port
        except OSError:
            continue
    raise AssertionError("no two consecutive free ports")


@pytest.mark.timeout(60)
def test_each_process_exports_its_own_metrics(pg, roles):
    ensure_roles(pg, USER)
    port = _two_free_ports()
    p = PoolerProcess(odyssey_config(rule(USER, "db1", pool="transaction"), processes=2,
                                     promhttp_server_port=port), pg=pg)
    try:
        wait_for(lambda: p.log().count("listening on") == 2, timeout=20, what="both processes listening")
        for i in range(20):
            con = _connect(p)
            assert one(con, f"select {i}") == i
            con.close()

        def queries(text: str) -> float:
            m = re.search(rf'^odyssey_route_queries_total\{{database="db1",user="{USER}"\}} (\S+)$', text, re.M)
            return float(m.group(1)) if m else 0.0

        def both():
            texts = [_metrics(port), _metrics(port + 1)]
            return texts if all(texts) else None

        texts = wait_for(both, timeout=20, what="both exporters")
        assert all("odyssey_clients" in t for t in texts)
        assert sum(queries(t) for t in texts) >= 20      # every query counted by the process that ran it
    finally:
        p.stop()


def _metrics(port: int) -> str:
    import urllib.error
    import urllib.request
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            return r.read().decode()
    except (urllib.error.URLError, OSError):
        return ""


@pytest.mark.timeout(60)
def test_pooler_processes_stop_when_the_supervisor_dies(procs):
    children = set(_children(procs).values())
    procs.proc.kill()                     # SIGKILL: the supervisor cannot pass anything on
    procs.proc.wait()
    # the kernel's parent-death signal (SIGTERM) makes each one drain and exit
    wait_for(lambda: not any(_running(pid) for pid in children), timeout=20,
             what="the orphaned pooler processes gone")
    assert _pids_logging(procs, "SIGTERM received, shutting down") >= children


@pytest.mark.timeout(60)
def test_a_hand_over_order_from_another_process_is_ignored(procs):
    """The peer socket is in the abstract namespace (anyone local may connect): the order to hand
    the ports over and drain is taken from the supervisor alone (its SO_PEERCRED pid)."""
    import socket
    import struct
    from odyssey_gevent import supervisor
    children = _children(procs)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(f"\0odyssey-gevent.{procs.pid}.0")
        s.sendall(struct.pack("!IIII", 16, supervisor.HANDOVER_CODE, os.getpid(), 0))
    finally:
        s.close()
    procs.wait_log(f"hand-over order from pid {os.getpid()} ignored", timeout=10)
    assert "hands this process's ports over" not in procs.log()
    assert _running(children[0])
    con = _connect(procs)
    assert one(con) == 1
    con.close()
