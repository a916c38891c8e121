"""host_watcher.py pure logic: C's CPU busy share from two /proc/stat readings and the memory in
use from /proc/meminfo (sources/host_watcher.c), over files written here."""
from __future__ import annotations

import pytest

from odyssey_gevent import host_watcher


def _stat(tmp_path, line: str):
    p = tmp_path / "stat"
    p.write_text(line + "\ncpu0 1 2 3 4\n")
    return str(p)


def test_read_cpu_takes_guest_time_out_of_user_and_nice_once(tmp_path):
    # user nice system idle iowait irq softirq steal guest guest_nice
    total, idle = host_watcher.read_cpu(_stat(tmp_path, "cpu  100 20 30 400 50 5 5 10 40 10"))
    assert idle == 450
    assert total == (100 - 40) + (20 - 10) + 30 + 5 + 5 + 450 + 10 + 40 + 10


def test_read_cpu_of_an_old_kernel_with_fewer_fields(tmp_path):
    assert host_watcher.read_cpu(_stat(tmp_path, "cpu  10 0 10 80")) == (100, 80)


def test_read_memory(tmp_path):
    p = tmp_path / "meminfo"
    p.write_text("MemTotal:       1000 kB\nMemFree:         100 kB\nMemAvailable:    250 kB\n")
    assert host_watcher.read_memory(str(p)) == (1000, 250)


def test_the_watcher_shows_the_busy_share_between_its_last_two_samples(tmp_path, monkeypatch):
    readings = iter([(1000, 800), (1200, 850)])
    monkeypatch.setattr(host_watcher, "read_cpu", lambda: next(readings))
    monkeypatch.setattr(host_watcher, "read_memory", lambda: (1000, 250))
    w = host_watcher.HostWatcher()
    assert w.read() == (0.0, 0.0)
    w.sample()
    assert w.read() == (0.0, 75.0)               # one CPU reading: no share yet
    w.sample()
    assert w.read() == pytest.approx((75.0, 75.0))   # 200 jiffies, 50 of them idle


def test_the_real_proc_files_give_shares_between_0_and_100():
    w = host_watcher.HostWatcher()
    w.sample()
    w.sample()
    cpu, mem = w.read()
    assert 0.0 <= cpu <= 100.0 and 0.0 < mem < 100.0


class _Logger:
    def __init__(self):
        self.errors = []

    def debug(self, *args):
        pass

    def error(self, *args):
        self.errors.append(args)


def test_tick_and_utilization_follow_the_keyword(monkeypatch):
    """The cron ticks while enable_host_watcher is on; off (from the start or by RELOAD), the
    console shows 0.00 as C."""
    from types import SimpleNamespace
    readings = iter([(1000, 800), (1100, 875)])
    monkeypatch.setattr(host_watcher, "read_cpu", lambda: next(readings))
    monkeypatch.setattr(host_watcher, "read_memory", lambda: (2000, 500))
    inst = SimpleNamespace(config=SimpleNamespace(enable_host_watcher=True), logger=_Logger())
    assert host_watcher.utilization(inst) == (0.0, 0.0)
    host_watcher.tick(inst)
    host_watcher.tick(inst)
    assert host_watcher.utilization(inst) == pytest.approx((25.0, 75.0))
    inst.config.enable_host_watcher = False
    assert host_watcher.utilization(inst) == (0.0, 0.0)


def test_tick_without_proc_logs_and_keeps_zeros(monkeypatch):
    from types import SimpleNamespace

    def missing():
        raise FileNotFoundError("/proc/stat")
    monkeypatch.setattr(host_watcher, "read_cpu", missing)
    inst = SimpleNamespace(config=SimpleNamespace(enable_host_watcher=True), logger=_Logger())
    host_watcher.tick(inst)
    assert inst.logger.errors and host_watcher.utilization(inst) == (0.0, 0.0)
