"""Shared fixtures: one private PostgreSQL per test session, and our pooler as a subprocess."""
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
