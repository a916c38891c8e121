"""Fixtures for the pooler's unit tests: an exception escaping any coroutine, greenlet or hub
callback (in any machine) fails the test that caused it, and `in_machine` runs a body inside a
fresh machinarium machine (its own thread and hub) with a bound on the whole run."""
from __future__ import annotations

import functools

import pytest

from tests.machines import background_errors, run_in_machine


@pytest.fixture(autouse=True)
def fail_on_background_errors():
    yield from background_errors()


@pytest.fixture
def in_machine():
    """in_machine(fn, *args) -> fn's result, run inside a fresh machinarium machine."""
    return functools.partial(run_in_machine, timeout_ms=8000)
