"""Machines: lifecycle, stop, join, call, context, no fd leak."""
from __future__ import annotations

import os
import threading

import pytest

import machinarium as mm


def _fds():
    return len(os.listdir("/proc/self/fd"))


def test_start_stop_join_does_not_leak_fds():
    def idle():
        mm.sleep(60_000)

    # one warm-up round: lazily created process-wide resources are not leaks
    m = mm.Machine("warm", idle).start()
    m.stop(), m.join(5000)
    before = _fds()
    machines = [mm.Machine(f"m{i}", idle).start() for i in range(5)]
    assert all(m.running for m in machines)
    assert _fds() > before  # each hub holds its loop's fds while running
    for m in machines:
        m.stop()
    for m in machines:
        m.join(5000)
    assert not any(m.running for m in machines)
    assert _fds() == before
    assert not [t for t in threading.enumerate() if t.name.startswith("m") and t.name[1:].isdigit()]


def test_machine_ends_when_main_returns_and_cancels_leftovers():
    box = {}

    def main():
        def leftover():
            try:
                mm.sleep(60_000)
            except mm.Cancelled:
                box["leftover"] = "cancelled"
                raise

        mm.Coroutine(leftover, name="leftover")
        mm.sleep(1)
        box["machine"] = mm.current_machine()
        return "done"

    m = mm.Machine("short", main).start()
    m.join(5000)
    assert box == {"leftover": "cancelled", "machine": m}
    assert m.main_coroutine.join  # main finished normally
    assert mm.current_machine() is None


def test_a_machine_is_found_by_its_hub_while_it_runs():
    """A running machine registers (loop, thread ident, machine) by its hub
    (coroutine._MACHINES_BY_HUB, what start_yielding_args looks up) and drops it as it ends;
    a coroutine started there belongs to it and its thread."""
    from gevent import get_hub
    from machinarium.coroutine import _MACHINES_BY_HUB, start_yielding_args
    box = {}

    def main():
        hub = get_hub()
        box["hub"] = hub
        box["entry"] = _MACHINES_BY_HUB.get(hub)
        c = start_yielding_args(lambda: None, (), "c")
        box["coroutine"] = (c._machine, c._thread, c._loop)
        box["ident"] = threading.get_ident()
        return "done"

    m = mm.Machine("by-hub", main).start()
    m.join(5000)
    loop, ident, machine = box["entry"]
    assert machine is m and ident == box["ident"] and loop is not None
    assert box["coroutine"] == (m, ident, loop)
    assert box["hub"] not in _MACHINES_BY_HUB


def test_join_timeout_raises_timedout():
    m = mm.Machine("slow", mm.sleep, 60_000).start()
    with pytest.raises(mm.TimedOut):
        m.join(20)
    m.stop()
    m.join(5000)


def test_call_runs_function_inside_machine_and_context_is_local():
    results = mm.Channel()

    def main():
        mm.current_machine().context["role"] = "worker"
        mm.sleep(60_000)

    def probe(tag):
        results.write(mm.Msg(tag, (threading.current_thread().name, mm.current_machine().context.get("role"))))

    def system():
        m = mm.Machine("callee", main).start()
        m.call(probe, "p", name="probe")
        msg = results.read(5000)
        m.stop()
        m.join(5000)  # cooperative join from inside a machine
        return msg

    msg = mm.Machine("caller", system).run()
    assert msg == mm.Msg("p", ("callee", "worker"))


def test_run_hosts_system_machine_in_current_thread():
    def system():
        return threading.current_thread() is threading.main_thread(), mm.current_machine().name

    assert mm.Machine("system", system).run() == (True, "system")
    assert mm.current_machine() is None


def test_call_on_stopped_machine_raises():
    m = mm.Machine("gone", lambda: None).start()
    m.join(5000)
    with pytest.raises(mm.MachineError):
        m.call(print)
