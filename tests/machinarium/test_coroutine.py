"""Coroutines, sleep, Event and Cond."""
from __future__ import annotations

import threading
import time

import pytest

import machinarium as mm

from .conftest import run_in_machine


def test_join_returns_result():
    assert run_in_machine(lambda: mm.Coroutine(lambda a, b: a + b, 2, 3, name="add").join(1000)) == 5


def test_join_timeout_raises_timedout_and_coroutine_keeps_running():
    def body():
        c = mm.Coroutine(mm.sleep, 200, name="sleeper")
        with pytest.raises(mm.TimedOut):
            c.join(20)
        assert not c.dead
        c.join(2000)
        return c.dead

    assert run_in_machine(body)


def test_cancel_raises_cancelled_inside():
    def body():
        seen = []

        def victim():
            try:
                mm.sleep(10_000)
            except mm.Cancelled:
                seen.append("cancelled")
                raise

        c = mm.Coroutine(victim, name="victim")
        mm.sleep(5)
        c.cancel()
        assert c.join(1000) is None
        return seen, c.cancelled

    assert run_in_machine(body) == (["cancelled"], True)


def test_cancel_from_another_machine():
    box = {}
    started = threading.Event()

    def owner():
        def victim():
            started.set()
            mm.sleep(10_000)

        c = mm.Coroutine(victim, name="victim")
        box["c"] = c
        t = time.monotonic()
        c.join(5000)
        return c.cancelled, time.monotonic() - t

    def canceller():
        started.wait(5)
        box["c"].cancel()  # from a different machine (thread)

    canceller_m = mm.Machine("canceller", canceller)
    threading.Thread(target=lambda: (started.wait(5), canceller_m.start())).start()
    cancelled, waited = run_in_machine(owner, name="owner")
    canceller_m.join(5000)
    assert cancelled and waited < 2.0


def test_escaped_exception_is_logged_and_reraised_by_join(caplog, fail_on_background_errors):
    def body():
        c = mm.Coroutine(lambda: 1 / 0, name="boom")
        with pytest.raises(ZeroDivisionError):
            c.join(1000)

    run_in_machine(body)
    assert any("boom" in r.getMessage() for r in caplog.records)
    assert len(fail_on_background_errors) == 1
    fail_on_background_errors.clear()  # expected: do not fail this test


def test_sleep_waits_about_right():
    def body():
        t = time.monotonic()
        mm.sleep(30)
        return time.monotonic() - t

    assert 0.025 <= run_in_machine(body) < 1.0


@pytest.mark.parametrize("cls", [mm.Event, mm.Cond])
def test_wait_times_out_with_false(cls):
    assert run_in_machine(lambda: cls().wait(20)) is False


def test_event_signal_from_another_thread_wakes_waiter():
    ev = mm.Event()

    def body():
        threading.Timer(0.05, ev.signal).start()
        t = time.monotonic()
        ok = ev.wait(5000)
        return ok, time.monotonic() - t

    ok, waited = run_in_machine(body)
    assert ok and waited < 2.0
    assert ev.is_set()


def test_cond_is_auto_reset_and_remembers_early_signal():
    def body():
        c = mm.Cond()
        c.signal()  # nobody waiting yet: remembered
        first = c.wait(10)
        second = c.wait(10)
        return first, second

    assert run_in_machine(body) == (True, False)


def test_cond_one_signal_wakes_one_of_two_waiters():
    def body():
        c = mm.Cond()
        res = []
        a = mm.Coroutine(lambda: res.append(c.wait(100)), name="a")
        b = mm.Coroutine(lambda: res.append(c.wait(100)), name="b")
        mm.sleep(5)
        c.signal()
        a.join(1000), b.join(1000)
        return sorted(res)

    assert run_in_machine(body) == [False, True]
