"""Where and how the pooler's threads run, as in C Odyssey 1.5.1: cpu_affinity pins the threads
that serve clients (their allowed CPUs and the log, with clients served), and priority sets the
process's nice value (every thread's, in /proc), or stops the start when it may not."""
from __future__ import annotations

import os
import shutil
import sys

import pytest

from scripts.pooler import PoolerProcess
from tests.integration.conftest import odyssey_config, rule, scalar, wait_for

CPUS = sorted(os.sched_getaffinity(0))
needs_two = pytest.mark.skipif(len(CPUS) < 2, reason="needs two CPUs this process may run on to pin "
                                                       "workers apart")


def allowed(pid: int) -> dict[int, frozenset]:
    """Each thread of `pid` -> the CPUs it may run on."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            out[int(tid)] = frozenset(os.sched_getaffinity(int(tid)))
        except OSError:
            pass                    # a thread that ended meanwhile
    return out


@needs_two
def test_workers_1_pins_the_thread_that_serves_clients(odyssey):
    a, b = CPUS[0], CPUS[1]
    p = odyssey(rule(), workers=1, cpu_affinity=f"worker:{b}")
    p.wait_log(f"pin worker 0 to cpu {b}")
    assert scalar(p.dsn("postgres", "postgres")) == 1
    threads = allowed(p.pid)
    assert threads[p.pid] == {b}                # the main thread runs the system machine
    assert a not in threads[p.pid]


@needs_two
def test_a_workers_own_rule_wins_over_the_roles(odyssey):
    a, b = CPUS[0], CPUS[1]
    p = odyssey(rule(), workers=2, cpu_affinity=f"worker[1]:{a} worker:{b} handshake:{a}")
    p.wait_log(f"pin worker 0 to cpu {b}")
    p.wait_log(f"pin worker 1 to cpu {a}")
    for _ in range(4):                          # round-robin: both workers serve
        assert scalar(p.dsn("postgres", "postgres")) == 1
    pinned = sorted(tuple(sorted(c)) for c in allowed(p.pid).values() if len(c) == 1)
    assert pinned == sorted([(a,), (b,)])       # the two workers, nothing else
    assert allowed(p.pid)[p.pid] == frozenset(CPUS)     # the system machine is left free


@needs_two
def test_processes_count_their_workers_on(odyssey):
    """processes 2, workers 1: process 1's worker is worker 1 of the rules."""
    from scripts.bench import proc_tree
    a, b = CPUS[0], CPUS[1]
    p = odyssey(rule(), workers=1, processes=2, cpu_affinity=f"worker[0]:{a} worker[1]:{b}")
    p.wait_log(f"pin worker 0 to cpu {a}")
    p.wait_log(f"pin worker 1 to cpu {b}")
    assert scalar(p.dsn("postgres", "postgres")) == 1
    children = [c for c in proc_tree(p.pid) if c != p.pid]
    assert sorted(tuple(allowed(c)[c]) for c in children) == sorted([(a,), (b,)])
    assert allowed(p.pid)[p.pid] == frozenset(CPUS)     # the supervisor serves nobody


def test_auto_rounds_the_workers_over_the_cpus_but_the_first(odyssey):
    n = os.sysconf("SC_NPROCESSORS_ONLN")
    p = odyssey(rule(), workers=2, cpu_affinity="auto")
    for w in range(2):
        cpu = 1 + w % (n - 1) if n > 1 else 0
        p.wait_log(f"pin worker {w} to cpu {cpu}")
    assert scalar(p.dsn("postgres", "postgres")) == 1


def test_off_pins_nothing(odyssey):
    p = odyssey(rule(), workers=2, cpu_affinity="off")
    assert scalar(p.dsn("postgres", "postgres")) == 1
    assert "pin worker" not in p.log()
    assert set(allowed(p.pid).values()) == {frozenset(CPUS)}


def test_a_cpu_the_machine_lacks_is_logged_and_the_pooler_serves(odyssey):
    p = odyssey(rule(), workers=1, cpu_affinity="worker:1023")
    wait_for(lambda: "can't set worker cpu affinity: Invalid argument" in p.log(), timeout=10,
             what="the affinity error in the log")
    assert scalar(p.dsn("postgres", "postgres")) == 1
    assert allowed(p.pid)[p.pid] == frozenset(CPUS)


def nice_values(pid: int) -> set[int]:
    """The nice value of each thread of `pid` (/proc/PID/task/TID/stat, field 19)."""
    out = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                out.add(int(f.read().rsplit(")", 1)[1].split()[16]))
        except (OSError, IndexError, ValueError):
            pass
    return out


def test_priority_is_every_threads_nice_value(odyssey):
    base = os.getpriority(os.PRIO_PROCESS, 0)
    p = odyssey(rule(), workers=2, priority=base + 5)
    assert scalar(p.dsn("postgres", "postgres")) == 1
    assert nice_values(p.pid) == {min(base + 5, 19)}


def test_a_priority_the_process_may_not_take_stops_the_start(pg):
    """A negative nice value needs CAP_SYS_NICE: run as root, the pooler starts without it
    (setpriv drops it from the bounding set), so the start fails as C's does."""
    binary = f"{sys.executable} -m odyssey_gevent"
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root, and util-linux's setpriv (to drop CAP_SYS_NICE) is missing")
        binary = f"{setpriv} --bounding-set=-sys_nice {binary}"
    p = PoolerProcess(odyssey_config(rule(), priority=-5), pg=pg, binary=binary, wait=False)
    try:
        assert p.proc.wait(20) == 1
        assert "failed to set process priority: Permission denied" in p.log()
        assert "listening on" not in p.log()
    finally:
        p.stop()
