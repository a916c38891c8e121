"""The host watcher behind SHOW HOST_UTILIZATION (mirrors Odyssey sources/host_watcher.c).

With `enable_host_watcher yes` the cron samples the machine at each of its ticks (a second): the
CPU busy share over the last second from two readings of /proc/stat's `cpu` line (busy = all
time but idle and iowait; guest time is already inside user and nice, so it is taken out of
them once), and the memory in use from /proc/meminfo (MemTotal - MemAvailable over MemTotal).
Both are percentages. Without the keyword nothing is sampled and the console shows 0.00 for
both, as C Odyssey does. RELOAD turns it on and off.
"""
from __future__ import annotations

PROC_STAT = "/proc/stat"
PROC_MEMINFO = "/proc/meminfo"


def read_cpu(path: str = PROC_STAT) -> tuple[int, int]:
    """(total, idle) jiffies of the machine's `cpu` line."""
    with open(path) as f:
        line = f.readline()
    fields = [int(x) for x in line.split()[1:11]]
    fields += [0] * (10 - len(fields))
    user, nice, system, idle, iowait, irq, softirq, steal, guest, guest_nice = fields
    user -= guest                  # user and nice already hold the guest times
    nice -= guest_nice
    idle_all = idle + iowait
    total = user + nice + system + irq + softirq + idle_all + steal + guest + guest_nice
    return total, idle_all


def read_memory(path: str = PROC_MEMINFO) -> tuple[int, int]:
    """(MemTotal, MemAvailable) in kB."""
    total = available = 0
    with open(path) as f:
        for line in f:
            if line.startswith("MemTotal:"):
                total = int(line.split()[1])
            elif line.startswith("MemAvailable:"):
                available = int(line.split()[1])
    return total, available


class HostWatcher:
    """The last readings: cpu_diff (total, idle) between the last two samples, and memory."""

    def __init__(self):
        self.cpu = None                  # the last (total, idle)
        self.cpu_diff = (0, 0)
        self.memory = (0, 0)

    def sample(self) -> None:
        total, idle = read_cpu()
        memory = read_memory()
        if self.cpu is not None:
            self.cpu_diff = (max(total - self.cpu[0], 0), max(idle - self.cpu[1], 0))
        self.cpu = (total, idle)
        self.memory = memory

    def read(self) -> tuple[float, float]:
        """(cpu %, memory %); 0 for what has not been measured yet."""
        total, idle = self.cpu_diff
        cpu = (total - idle) * 100.0 / total if total > 0 else 0.0
        mem_total, available = self.memory
        mem = (mem_total - available) * 100.0 / mem_total if mem_total > 0 else 0.0
        return cpu, mem


def tick(instance) -> None:
    """One sample, from the cron's loop (with enable_host_watcher)."""
    watcher = getattr(instance, "host_watcher", None)
    if watcher is None:
        watcher = instance.host_watcher = HostWatcher()
    try:
        watcher.sample()
    except (OSError, ValueError) as e:       # no /proc (not Linux): the figures stay 0
        instance.logger.error("host-watcher", None, None, "can't read the host's figures: %s", e)
        return
    instance.logger.debug("host-watcher", None, None, "update values to: %.2f%% cpu and %.2f%% mem",
                          *watcher.read())


def utilization(instance) -> tuple[float, float]:
    """SHOW HOST_UTILIZATION's (cpu, mem): 0.0, 0.0 when the watcher is off."""
    watcher = getattr(instance, "host_watcher", None)
    if watcher is None or not instance.config.enable_host_watcher:
        return 0.0, 0.0
    return watcher.read()
