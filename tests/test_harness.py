"""The test harness itself: the private PostgreSQL accepts each role by its pg_hba method, and a
failed test's report carries the running poolers' logs."""
import types

import psycopg2
import pytest

from scripts.bench import POOLER_TEMPLATE
from tests import conftest


@pytest.mark.parametrize("user,password", [("trust_user", None), ("md5_user", "md5pass"),
                                           ("scram_user", "scrampass")])
def test_roles_log_in_directly(pg, user, password):
    with psycopg2.connect(pg.dsn(user, "db1", password)) as con:
        cur = con.cursor()
        cur.execute("select current_user")
        assert cur.fetchone()[0] == user


@pytest.mark.parametrize("user", ["md5_user", "scram_user"])
def test_wrong_password_is_rejected(pg, user):
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(pg.dsn(user, "db1", "wrong"))


def test_jit_is_off(pg):
    """No LLVM compilation before a costly query's first row (scripts/pgcluster.py says why)."""
    assert pg.psql("show jit") == "off"
    assert "JIT" not in pg.psql("explain select generate_series(1, 50000000)")


def test_passwords_are_stored_as_md5_and_scram(pg):
    rows = dict(line.split("|") for line in pg.psql(
        "select rolname, rolpassword from pg_authid where rolname in ('md5_user','scram_user')").splitlines())
    assert rows["md5_user"].startswith("md5") and len(rows["md5_user"]) == 35
    assert rows["scram_user"].startswith("SCRAM-SHA-256$4096:")


def report_of(failed: bool):
    """Run conftest's report hook around a report as pytest would; returns the report."""
    report = types.SimpleNamespace(failed=failed, sections=[])
    hook = conftest.pytest_runtest_makereport(item=None, call=None)
    next(hook)
    with pytest.raises(StopIteration):
        hook.send(types.SimpleNamespace(get_result=lambda: report))
    return report


def test_a_failed_report_carries_the_running_poolers_logs(pooler):
    p = pooler(POOLER_TEMPLATE, pool_size=2, reserve_prepared="no")
    con = psycopg2.connect(p.dsn("postgres", "postgres"))       # it serves; its log has at least
    try:                                                        # the listen line
        con.cursor().execute("select 1")
    finally:
        con.close()
    title = f"pooler pid {p.pid} log (last {conftest.LOG_TAIL} characters)"
    sections = dict(report_of(failed=True).sections)
    assert title in sections
    assert sections[title] and p.log().endswith(sections[title])
    stacks = sections[f"pooler pid {p.pid} Python stacks"]
    if conftest.PY_SPY is not None:                                 # the test extras install it
        assert f"Process {p.pid}" in stacks and "Thread" in stacks, stacks
    else:
        assert "py-spy is not installed" in stacks
    assert report_of(failed=False).sections == []                   # a passed test: nothing added
    p.stop()
    assert title not in dict(report_of(failed=True).sections)      # a stopped pooler: not shown
