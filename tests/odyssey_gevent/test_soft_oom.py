"""soft_oom's measurements on this machine's /proc (the refusal is tested in
tests/integration/test_routing_extras.py)."""
import os

from odyssey_gevent import soft_oom
from odyssey_gevent.config.model import SoftOom


def test_processes_finds_this_one_with_its_pss():
    with open(f"/proc/{os.getpid()}/comm") as f:
        comm = f.read().strip()
    found = {pid: pss for pid, _, pss in soft_oom.processes(comm)}
    assert os.getpid() in found and found[os.getpid()] > 0


def test_measure_without_a_process_is_the_system_use():
    used = soft_oom.measure(SoftOom(enabled=True, limit=1))
    assert 0 < used < os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def test_no_process_matches_a_name_nobody_has():
    assert soft_oom.processes("no-such-process-name-x") == []
