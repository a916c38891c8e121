"""Coroutines, sleep, Event, Cond and Wakeup."""
from __future__ import annotations

import threading
import time

import gevent
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


def test_a_name_given_as_format_and_args_is_formatted_when_read(caplog, fail_on_background_errors):
    def body():
        c = mm.Coroutine(lambda: 1 / 0, name=("client %s:%s", ("10.0.0.1", 5432)))
        with pytest.raises(ZeroDivisionError):
            c.join(1000)
        return c.name, repr(c)

    name, text = run_in_machine(body)
    assert name == "client 10.0.0.1:5432" and "client 10.0.0.1:5432" in text
    assert any("client 10.0.0.1:5432" in r.getMessage() for r in caplog.records)
    fail_on_background_errors.clear()  # expected: do not fail this test


def test_start_yielding_runs_the_new_coroutine_first_and_the_caller_at_the_next_turn():
    """Coroutine.start_yielding from a coroutine: the new one runs at once up to its first wait,
    then other ready work of the hub, then the caller (as Coroutine(...) then sleep(0) would)."""
    def body():
        order = []

        def child():
            order.append("child starts")
            mm.sleep(0)
            order.append("child resumes")

        def other():
            order.append("other")

        mm.Coroutine(other)         # ready at the hub's next turn
        c = mm.Coroutine.start_yielding(child, name="child")
        order.append("caller resumes")
        c.join(1000)
        return order, c.dead

    order, dead = run_in_machine(body)
    assert order[:3] == ["child starts", "other", "caller resumes"] and dead
    assert order[3:] == ["child resumes"]


def test_start_yielding_of_a_coroutine_that_ends_at_once():
    def body():
        c = mm.Coroutine.start_yielding(lambda: 7, name="short")
        return c.dead, c.join(1000)

    assert run_in_machine(body) == (True, 7)


def test_start_yielding_args_is_start_yielding_with_its_arguments_as_they_are():
    """start_yielding_args(fn, args, name) (the accept path's call) runs fn(*args) at once as
    Coroutine.start_yielding(fn, *args, name=name) does, kwargs when given, from a coroutine
    and from the hub; the coroutine is a Coroutine of the machine with its name."""
    from gevent import get_hub
    from machinarium.coroutine import start_yielding_args

    def body():
        seen = []

        def fn(*args, **kwargs):
            seen.append((args, kwargs))
            return len(seen)

        a = start_yielding_args(fn, (1, 2), ("client %s", "a"))
        b = start_yielding_args(fn, (3,), "b", {"k": 4})
        assert seen == [((1, 2), {}), ((3,), {"k": 4})]     # both ran before returning here
        from_hub = []
        get_hub().loop.run_callback(lambda: from_hub.append(start_yielding_args(fn, (5,), "hub")))
        mm.sleep(0)
        (c,) = from_hub
        return ([type(x) is mm.Coroutine and x.dead for x in (a, b, c)], [x.join(1000) for x in (a, b, c)],
                b.name, seen[2])

    assert run_in_machine(body) == ([True] * 3, [1, 2, 3], "b", ((5,), {}))


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


# ----------------------------------------------------------------------------------------------
# Wakeup: one coroutine's reusable wait (the router's queue for a server)

def test_wakeup_before_park_is_kept_and_arm_forgets_it():
    def body():
        w = mm.Wakeup()
        w.arm()
        w.wake()                     # before park: remembered
        first = w.park(1000)
        w.arm()                      # a new wait: the old wake-up no longer counts
        second = w.park(10)
        return first, second

    assert run_in_machine(body) == (True, False)


def test_wakeup_from_another_coroutine_and_another_thread():
    def body():
        w = mm.Wakeup()
        w.arm()
        mm.Coroutine(w.wake, name="waker")
        same = w.park(5000)
        w.arm()
        threading.Timer(0.02, w.wake).start()
        other = w.park(5000)
        return same, other, w.woken

    assert run_in_machine(body) == (True, True, True)


def test_a_stale_wakeup_resumes_nobody():
    """A wake-up that lands after its wait timed out must not resume the coroutine where it
    waits next (a sleep, or the next park of the same Wakeup)."""
    def body():
        w = mm.Wakeup()
        w.arm()
        timed_out = w.park(5)
        w.wake()                     # too late: its resume is queued in this loop
        t = time.monotonic()
        mm.sleep(30)                 # the stale resume runs meanwhile and must not end the sleep
        slept = time.monotonic() - t
        w.arm()
        w.wake()
        w.arm()                      # stale again, now queued while we park below
        again = w.park(20)
        return timed_out, slept >= 0.025, again

    assert run_in_machine(body) == (False, True, False)


def test_wakeup_park_is_cancellable():
    def body():
        w = mm.Wakeup()
        out = []

        def waiter():
            w.arm()
            try:
                w.park(None)
            except mm.Cancelled:
                out.append("cancelled")
                raise
        c = mm.Coroutine(waiter, name="parked")
        mm.sleep(5)
        c.cancel()
        c.join(1000)
        w.wake()                     # after the wait ended: nobody is resumed
        mm.sleep(5)
        return out, c.cancelled

    assert run_in_machine(body) == (["cancelled"], True)


def test_direct_wakeup_and_cancel_of_a_queued_resume():
    """Direct mode: the wake-up switches straight in; after a timeout, cancel() drops a wake-up
    queued meanwhile (it would otherwise resume the coroutine in its next sleep)."""
    def body():
        w = mm.Wakeup()
        w.arm(direct=True)
        mm.Coroutine(w.wake, name="waker")
        woken = w.park(5000)
        w.arm(direct=True)
        w.wake()                     # before park: park still takes exactly that one resume
        early = w.park(5000)
        w.arm(direct=True)
        timed_out = w.park(5)
        w.wake()                     # a waker that took it out before seeing the timeout ...
        w.cancel()                   # ... and the waiter, under the same lock, drops it
        t = time.monotonic()
        mm.sleep(30)
        return woken, early, timed_out, time.monotonic() - t >= 0.025

    assert run_in_machine(body) == (True, True, False, True)


def test_a_callback_arm_serves_wait_after_wait_until_a_coroutine_arms():
    """arm_callback once: each wake() runs the callback (in the armed loop) with no new arm;
    cancel() of a callback that has run does nothing; arm() makes it a coroutine's wait
    (callback None), whose wake-up resumes the coroutine and runs no callback."""
    def body():
        w = mm.Wakeup()
        ran = []
        hub = gevent.get_hub()

        def cb():
            ran.append(1)
        w.arm_callback(cb, hub.loop, threading.get_ident())
        assert w.callback is cb
        for n in (1, 2, 3):
            w.wake()
            mm.sleep(1)
            assert ran == [1] * n
        w.cancel()                   # the last wake's callback has run: nothing to drop
        w.arm()
        assert w.callback is None
        mm.Coroutine(w.wake, name="waker")
        woken = w.park(5000)
        mm.sleep(1)
        return woken, len(ran)

    assert run_in_machine(body) == (True, 3)


def test_cancel_before_start_never_runs_and_join_sees_it():
    def body():
        ran = []
        c = mm.Coroutine(lambda: ran.append(1), name="never")
        c.cancel()          # in the same hub turn: the coroutine has not started yet
        assert c.join(1000) is None
        return ran, c.cancelled, c.dead

    assert run_in_machine(body) == ([], True, True)


def test_coroutine_is_a_raw_greenlet_with_gevent_waits_inside():
    import gevent

    def body():
        def inner():
            assert gevent.getcurrent() is c.greenlet
            assert not isinstance(c.greenlet, gevent.Greenlet)
            gevent.sleep(0.001)             # gevent's own waits work on the raw greenlet
            with gevent.Timeout(0.001, False):
                mm.sleep(1000)
            return "done"

        c = mm.Coroutine(inner, name="raw")
        return c.join(2000)

    assert run_in_machine(body) == "done"


def test_join_many_from_machine_shutdown():
    finished = []

    def main():
        for i in range(3):
            mm.Coroutine(lambda i=i: (mm.sleep(10_000), finished.append(i)), name=f"s{i}")
        mm.sleep(5)

    m = mm.Machine("many", main, shutdown_timeout_ms=2000)
    m.start()
    m.join(5000)
    assert finished == [] and not m.running


def test_an_ended_coroutines_greenlet_runs_the_machines_next_one(fail_on_background_errors):
    """A machine parks the greenlet of a coroutine that returned or raised (coroutine.IDLE_MAX)
    and runs its next coroutine in it, each with its own result, exception and identity."""
    def body():
        seen = []

        def who(tag):
            seen.append((tag, gevent.getcurrent()))
            mm.sleep(1)
            return tag

        a = mm.Coroutine(who, "a", name="a")
        assert a.join(1000) == "a"
        b = mm.Coroutine.start_yielding(who, "b", name="b")       # another way in
        assert b.join(1000) == "b"
        c = mm.Coroutine(lambda: 1 / 0, name="boom")
        with pytest.raises(ZeroDivisionError):
            c.join(1000)
        d = mm.Coroutine(who, "d", name="d")
        assert d.join(1000) == "d"
        glets = {g for _, g in seen}
        return ([t for t, _ in seen], len(glets), a.greenlet is b.greenlet is c.greenlet is d.greenlet,
                seen[0][1] is a.greenlet, (a.dead, b.dead, c.dead, d.dead), c.exception.__class__)

    tags, n, same, current, dead, exc = run_in_machine(body)
    assert tags == ["a", "b", "d"] and n == 1 and same and current
    assert dead == (True, True, True, True) and exc is ZeroDivisionError
    assert len(fail_on_background_errors) == 1      # boom's, reported as before
    fail_on_background_errors.clear()


def test_a_cancelled_coroutines_greenlet_is_not_reused(fail_on_background_errors):
    def body():
        a = mm.Coroutine(mm.sleep, 10_000, name="a")
        mm.sleep(1)
        a.cancel()
        a.join(1000)
        b = mm.Coroutine(lambda: gevent.getcurrent(), name="b")
        return a.cancelled, a.greenlet.dead, b.join(1000) is not a.greenlet

    assert run_in_machine(body) == (True, True, True)


def test_a_parked_greenlet_ignores_switches_and_throws_meant_for_its_ended_coroutine():
    """A wake-up left over from an ended coroutine (a switch with a value, a throw) reaches the
    parked greenlet, which stays parked and runs the next coroutine as usual."""
    def body():
        a = mm.Coroutine(lambda: 1, name="a")
        a.join(1000)
        g = a.greenlet
        hub = gevent.get_hub()
        hub.loop.run_callback(g.switch, 0)
        hub.loop.run_callback(g.switch)
        hub.loop.run_callback(g.throw, ValueError("late"))
        hub.loop.run_callback(g.throw, mm.TimedOut("late"))
        hub.loop.run_callback(g.throw, mm.Cancelled)
        mm.sleep(5)
        b = mm.Coroutine(lambda: gevent.getcurrent(), name="b")
        return g.dead, b.join(1000) is g

    assert run_in_machine(body) == (False, True)


def test_a_coroutine_cancelled_before_its_start_gives_its_greenlet_back():
    def body():
        a = mm.Coroutine(lambda: 1, name="a")
        a.join(1000)
        b = mm.Coroutine(lambda: 2, name="b")
        b.cancel()
        c = mm.Coroutine(lambda: 3, name="c")
        return b.greenlet is a.greenlet is c.greenlet, b.cancelled, c.join(1000)

    assert run_in_machine(body) == (True, True, 3)


def test_parked_greenlets_are_bounded_and_end_with_their_machine():
    from machinarium.coroutine import IDLE_MAX
    box = {}

    def main():
        cs = [mm.Coroutine(mm.sleep, 5, name=f"c{i}") for i in range(IDLE_MAX + 5)]
        for c in cs:
            c.join(2000)
        box["idle"] = list(mm.current_machine()._idle)
        box["all"] = {c.greenlet for c in cs}

    m = mm.Machine("parks", main).start()
    m.join(5000)
    idle = box["idle"]
    assert len(idle) == IDLE_MAX and len(box["all"]) == IDLE_MAX + 5
    assert all(g.dead for g in box["all"])       # parked ones killed at the machine's end, the rest ended
