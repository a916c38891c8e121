"""Shared fixtures: one private PostgreSQL per test session, and our pooler as a subprocess; a
failed test's report shows the logs of the poolers still running when it failed."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

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
PY_SPY = shutil.which("py-spy") or shutil.which("py-spy", path=os.path.dirname(sys.executable))


def pooler_stacks(pid: int) -> str:
    """Every thread's Python stack in pooler `pid` now (py-spy dump: a pooler that stalls shows
    where), or why there are none."""
    if PY_SPY is None:
        return "(py-spy is not installed: pip install py-spy)"
    try:
        out = subprocess.run([PY_SPY, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "(py-spy dump did not finish in 30 s)"
    return (out.stdout + out.stderr).strip()


def pooler_log_sections() -> list[tuple[str, str]]:
    """(title, text) for every pooler started and not yet stopped: its log's tail and, while it
    runs, its threads' Python stacks."""
    out = []
    for p in sorted(PoolerProcess.live, key=lambda p: p.pid):
        try:
            text = p.log()[-LOG_TAIL:]
        except (OSError, ValueError) as e:          # its directory or log file already gone
            text = f"(unreadable: {e})"
        out.append((f"pooler pid {p.pid} log (last {LOG_TAIL} characters)", text))
        if p.proc.poll() is None:
            out.append((f"pooler pid {p.pid} Python stacks", pooler_stacks(p.pid)))
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
