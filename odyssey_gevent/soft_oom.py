"""soft_oom: refuse new clients while memory use is over a limit (mirrors Odyssey
sources/soft_oom.c).

`soft_oom { limit 4GB process "postgres" check_interval_ms 1000 drop { signal "SIGTERM"
max_rate 3 } }`: a checker (a coroutine of the system machine) measures, every
check_interval_ms, the memory in use: the sum of the proportional set sizes (Pss in
/proc/<pid>/smaps_rollup) of the processes whose name (/proc/<pid>/comm) contains `process`, or,
without `process`, the machine's MemTotal - MemAvailable. While that is at or over `limit`, a
client that has authenticated for a remote storage gets FATAL 53200 `soft out of memory` (the
console still works). With `drop { }` the checker also sends `signal` to the `max_rate` largest
matching processes at each check over the limit.
"""
from __future__ import annotations

import os
import threading

import machinarium
from kiwi import error_codes
from odyssey_gevent.status import FrontendError

_lock = threading.Lock()
_used = 0            # bytes at the last check
_over = False


def system_used() -> int:
    """MemTotal - MemAvailable, in bytes."""
    total = available = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                total = int(line.split()[1])
            elif line.startswith("MemAvailable:"):
                available = int(line.split()[1])
    return max(0, total - available) * 1024


def processes(name: str) -> list[tuple[int, str, int]]:
    """(pid, comm, Pss bytes) of the processes whose comm contains `name` (unreadable ones are
    left out)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            with open(f"/proc/{pid}/comm") as f:
                comm = f.read().strip()
            if name not in comm:
                continue
            pss = 0
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        pss = int(line.split()[1]) * 1024
                        break
        except OSError:          # gone meanwhile, or not ours to read
            continue
        out.append((pid, comm, pss))
    return out


def measure(soft) -> int:
    if soft.process:
        return sum(pss for _, _, pss in processes(soft.process))
    return system_used()


def check_once(instance) -> bool:
    """Measure, remember, drop if configured; returns whether memory is over the limit."""
    global _used, _over
    soft = instance.config.soft_oom
    if not soft.enabled:
        with _lock:
            _used, _over = 0, False
        return False
    used = measure(soft)
    over = used >= soft.limit
    with _lock:
        _used, _over = used, over
    if over and soft.drop.enabled and soft.process:
        victims = sorted(processes(soft.process), key=lambda p: p[2], reverse=True)[:soft.drop.max_rate]
        instance.logger.info("soft-oom", None, None, "used memory (%d) >= limit (%d), sending %s to %d processes",
                             used, soft.limit, soft.drop.signal, len(victims))
        for pid, comm, _ in victims:
            try:
                os.kill(pid, soft.drop.signum)
            except OSError as e:
                instance.logger.error("soft-oom", None, None, "cannot signal %d (%s): %s", pid, comm, e)
    return over


def checker_main(instance) -> None:
    """The checker loop (started by cron, cancelled at shutdown)."""
    while True:
        try:
            check_once(instance)
        except Exception as e:     # the checker must go on
            instance.logger.error("soft-oom", None, None, "memory check failed: %r", e)
        machinarium.sleep(max(10, instance.config.soft_oom.check_interval_ms or 1000))


def refuse_if_over(instance, client) -> None:
    """After authentication: a client of a remote storage is refused while over the limit."""
    if not instance.config.soft_oom.enabled or client.is_console:
        return
    with _lock:
        over, used = _over, _used
    if over:
        instance.logger.error("startup", client, None, "drop connection due to soft oom (usage is %d KB)",
                              used // 1024)
        raise FrontendError(error_codes.OUT_OF_MEMORY, "soft out of memory", severity="FATAL")
