"""Helpers for tests that run gevent code: a body run inside a fresh machinarium machine with a
bound on the whole run, and the collector that turns an exception escaping any coroutine,
greenlet or hub callback (in any machine) into a failure of the test that caused it."""
from __future__ import annotations

import threading

import gevent
import pytest

import machinarium as mm


def background_errors():
    """Generator body of an autouse fixture: yields the list of background errors (a test that
    expects one may clear it) and fails the test if any are left."""
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


def run_in_machine(fn, *args, name="test", timeout_ms=15000):
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
