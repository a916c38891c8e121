"""Fixtures for machinarium tests: every test is bounded, and an exception escaping any coroutine,
greenlet or hub callback (in any machine) fails the test that caused it."""
from __future__ import annotations

import pytest

from tests.machines import background_errors, run_in_machine  # noqa: F401  (tests import it from here)


@pytest.fixture(autouse=True)
def fail_on_background_errors():
    yield from background_errors()


def pytest_collection_modifyitems(items):
    for item in items:
        if "machinarium" in str(item.fspath) and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(20))
