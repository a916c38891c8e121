"""Fixtures for machinarium tests: every test is bounded, and an exception escaping any coroutine,
greenlet or hub callback (in any machine) fails the test that caused it."""
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


def pytest_collection_modifyitems(items):
    for item in items:
        if "machinarium" in str(item.fspath) and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(20))


def run_in_machine(fn, *args, name="test", timeout_ms=15000):
    """Run fn(*args) as the main coroutine of a fresh machine thread; return its result or re-raise."""
    box = {}

    def main():
        try:
            box["value"] = fn(*args)
        except BaseException as e:  # noqa: BLE001
            box["error"] = e

    m = mm.Machine(name, main).start()
    m.join(timeout_ms)
    if "error" in box:
        raise box["error"]
    return box.get("value")
