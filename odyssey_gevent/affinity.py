"""cpu_affinity: pin the threads that serve clients to CPUs (mirrors Odyssey sources/affinity.c
and worker.c's setup_affinity).

    cpu_affinity "off"                      # or "no": leave the scheduler free (the default)
    cpu_affinity "auto"                     # or "yes": worker N on CPU 1 + N % (CPUs - 1)
    cpu_affinity "worker:2-3"               # every worker on CPUs 2 and 3
    cpu_affinity "worker[0]:1 worker:2,3"   # worker 0 on CPU 1, the others on 2 and 3

A rule is `role[index]:cpuset`, rules are separated by spaces or tabs; a rule naming a worker's
index wins over the role's rule without one, and a worker no rule names is left free. A cpuset
is `N`, `N-M` and lists of both (`0-3,8`). The role `handshake` is read and checked as C does,
and, as in C Odyssey 1.5.1, pins nothing.

Which thread is worker N here: with `workers` > 1 the worker machine N; with `workers 1` the
one thread that serves the clients (it also accepts them) is worker 0. With `processes` > 1
(ours) process P's worker N is worker P * workers + N, so "auto" spreads the processes too.

Read at start (a reload keeps the pinning). A bad value is a config error, in C's words.
"""
from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass, field

from odyssey_gevent import supervisor

OFF, AUTO, RULES = "off", "auto", "rules"
ROLES = ("worker", "handshake")
MAX_CPUS = 1024              # CPU_SETSIZE: C's cpuset holds CPUs 0-1023
MAX_RULES = 128

_RULE = re.compile(r"([A-Za-z]*)(?:\[(\+?\d+)\])?:(.*)\Z", re.S)


class AffinityError(ValueError):
    """A cpu_affinity value that does not parse; the message is C Odyssey's."""


@dataclass(frozen=True)
class Rule:
    role: str
    index: int | None           # None: every thread of the role no other rule names
    cpus: frozenset


@dataclass(frozen=True)
class Affinity:
    mode: str
    rules: tuple = field(default=())


def parse_cpuset(text: str) -> frozenset:
    """`0`, `0,1,2`, `0-3`, `0-3,8-11` -> the CPU numbers; no sign, space or trailing comma."""
    cpus: set[int] = set()
    for part in text.split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if m is None:
            raise AffinityError(f"can't convert '{text}' to cpuset")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi < lo or hi >= MAX_CPUS:
            raise AffinityError(f"can't convert '{text}' to cpuset")
        cpus.update(range(lo, hi + 1))
    return frozenset(cpus)


def parse_rule(text: str) -> Rule:
    m = _RULE.match(text)
    if m is None or m.group(1) not in ROLES:
        raise AffinityError(f"can't parse affinity rule '{text}'")
    index = int(m.group(2)) if m.group(2) is not None else None
    if index is not None and index > 2**31 - 1:
        raise AffinityError(f"can't parse affinity rule '{text}'")
    return Rule(m.group(1), index, parse_cpuset(m.group(3)))


def parse(text: str) -> Affinity:
    """The value of cpu_affinity; AffinityError with C's message when it does not parse."""
    if text in ("off", "no"):
        return Affinity(OFF)
    if text in ("auto", "yes"):
        return Affinity(AUTO)
    rules: list[Rule] = []
    for word in re.split(r"[ \t]+", text):
        if not word:
            continue
        if len(rules) == MAX_RULES:
            raise AffinityError("can't parse affinity config: too many rules")
        rule = parse_rule(word)
        if any(r.role == rule.role and r.index == rule.index for r in rules):
            raise AffinityError(f"rule '{word}' duplicated")
        rules.append(rule)
    if not rules:
        raise AffinityError("can't parse affinity config: empty rules")
    return Affinity(RULES, tuple(rules))


def cpus_for(affinity: Affinity, role: str, index: int, ncpu: int) -> frozenset | None:
    """The CPUs thread `index` of `role` is pinned to, or None to leave it free."""
    if affinity.mode == OFF:
        return None
    if affinity.mode == AUTO:
        return frozenset({1 + index % (ncpu - 1) if ncpu > 1 else 0})
    by_role = None
    for rule in affinity.rules:
        if rule.role == role:
            if rule.index == index:
                return rule.cpus
            if rule.index is None:
                by_role = rule.cpus
    return by_role


def cpuset_str(cpus) -> str:
    """A cpuset as the log line prints it: ranges joined by commas ("0-3,8"; C's line ends each
    range with a comma, so its list ends with one: "0-3,8,")."""
    parts = []
    # consecutive CPUs share their distance from their position in the sorted list
    for _, group in itertools.groupby(enumerate(sorted(cpus)), lambda pair: pair[1] - pair[0]):
        run = [cpu for _, cpu in group]
        parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(parts)


def pin_worker(instance, index: int) -> frozenset | None:
    """Pin the calling thread as this process's worker `index` by the config's cpu_affinity (as
    worker supervisor.INDEX * workers + index: counted on over the processes); logs as C's
    worker_init does. Returns the CPUs, or None when left free."""
    text = instance.config.cpu_affinity
    if text is None:
        return None
    wid = supervisor.INDEX * instance.workers + index
    cpus = cpus_for(parse(text), "worker", wid, os.sysconf("SC_NPROCESSORS_ONLN"))
    if cpus is None:
        return None
    log = instance.logger
    log.info("worker_init", None, None, "pin worker %d to cpu %s", wid, cpuset_str(cpus))
    try:
        os.sched_setaffinity(0, cpus)          # 0: this thread alone
    except OSError as e:
        log.error("worker_init", None, None, "can't set worker cpu affinity: %s", e.strerror)
        return None
    return cpus
