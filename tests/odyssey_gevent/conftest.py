"""Fixtures for the pooler's unit tests: an exception escaping any coroutine, greenlet or hub
callback (in any machine) fails the test that caused it, and helpers run a body inside a fresh
machinarium machine (its own thread and hub) with a bound on the whole run."""
from __future__ import annotations

import threading

import gevent
import pytest

import machinarium as mm


@pytest.fixture(autouse=True)
def fail_on_background_errors():
    errors = []
    lock = threading.Lock()

    def hook(where, exc):
        with lock:
            errors.append(f"{where}: {exc!r}")

    mm.error_hooks.append(hook)
    mm.watch_hub_errors(gevent.get_hub())
    try:
        yield errors
    finally:
        mm.error_hooks.remove(hook)
    if errors:
        pytest.fail("background errors: " + "; ".join(errors))


def _run_in_machine(fn, *args, name="test", timeout_ms=8000):
    """Run fn(*args) as the main coroutine of a fresh machine thread; return its result or re-raise."""
    box = {}

    def main():
        mm.watch_hub_errors(gevent.get_hub())
        try:
            box["value"] = fn(*args)
        except BaseException as e:  # noqa: BLE001
            box["error"] = e

    m = mm.Machine(name, main).start()
    try:
        m.join(timeout_ms)
    except mm.TimedOut:
        m.stop()
        m.join(2000)
        raise AssertionError(f"machine {name} did not finish within {timeout_ms} ms") from None
    if "error" in box:
        raise box["error"]
    return box.get("value")


@pytest.fixture
def in_machine():
    """in_machine(fn, *args) -> fn's result, run inside a fresh machinarium machine."""
    return _run_in_machine
