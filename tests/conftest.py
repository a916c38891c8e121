"""Shared fixtures: one private PostgreSQL per test session, and our pooler as a subprocess; a
failed test's report shows the logs of the poolers still running when it failed."""
from __future__ import annotations

import pytest

from scripts.pgcluster import PgCluster
from scripts.pooler import PoolerProcess


@pytest.fixture(scope="session")
def pg():
    """A private PostgreSQL cluster (initdb/pg_ctl, fsync off) with the roles of scripts/pgcluster.py."""
    cluster = PgCluster()
    try:
        cluster.init().start().create_roles()
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def pooler(pg):
    """Factory: pooler(template, **values) starts odyssey-gevent on a config template
    (see scripts/pooler.py for the ${...} names) and stops it when the test ends."""
    started: list[PoolerProcess] = []

    def start(template: str, **kw) -> PoolerProcess:
        p = PoolerProcess(template, pg=pg, **kw)
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()


LOG_TAIL = 8000     # characters of each pooler's log in a failed test's report


def pooler_log_sections() -> list[tuple[str, str]]:
    """(title, the log's tail) for every pooler started and not yet stopped."""
    out = []
    for p in sorted(PoolerProcess.live, key=lambda p: p.pid):
        try:
            text = p.log()[-LOG_TAIL:]
        except (OSError, ValueError) as e:          # its directory or log file already gone
            text = f"(unreadable: {e})"
        out.append((f"pooler pid {p.pid} log (last {LOG_TAIL} characters)", text))
    return out


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test (or its setup or teardown) carries the running poolers' logs: a timeout
    seen only from the client's side is otherwise hard to explain after the fact."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for title, text in pooler_log_sections():
            report.sections.append((title, text))
