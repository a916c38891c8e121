"""odyssey-compare in expectation mode (issue 14): every scenario of tests/scenarios runs against
our pooler, its records are compared with the ones recorded from C Odyssey 1.5.1, and the query
steps of `direct` scenarios with PostgreSQL itself. One pooler per suite (= per config)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from odyssey_gevent.compare import diff, scenario
from odyssey_gevent.compare.runner import DEFAULT_SCENARIOS, REPO, Runner


@pytest.fixture(scope="module")
def results(pg):
    suites = scenario.load_all(DEFAULT_SCENARIOS)
    runner = Runner(pg)
    try:
        yield runner.run(suites)
    finally:
        runner.close()


@pytest.mark.timeout(300)
def test_every_scenario_matches_its_expectation(results):
    assert len(results) >= 60
    bad = [r for r in results if diff.status_of(r) in ("DIFF", "ERROR")]
    assert not bad, "\n" + diff.table(bad, "expected")


def test_direct_postgres_check_ran(results):
    """The query results of `direct` scenarios were compared with PostgreSQL's own."""
    checked = [r["scenario"] for r in results if r.get("direct")]
    assert len(checked) >= 15, checked


def test_every_known_difference_is_still_seen(results):
    """An entry of known_differences.yaml that no scenario produces any more is stale."""
    used = {d["known"] for r in results for d in r["differences"] if d["known"]}
    stale = [e["scenario"] for e in scenario.load_known(DEFAULT_SCENARIOS)
             if e["why"] not in used and not e.get("sometimes")]
    assert stale == []


@pytest.mark.timeout(120)
def test_command_line_json_and_exit_status(pg, tmp_path):
    """`python -m odyssey_gevent.compare --format json` on one suite against an existing
    PostgreSQL: exit 0 and a JSON report; a scenario whose expectation is tampered with makes
    the exit status 1 and is reported as DIFF."""
    import json
    import shutil

    for name in ("base.conf", "known_differences.yaml", "routing.yaml"):
        shutil.copy(os.path.join(DEFAULT_SCENARIOS, name), tmp_path / name)
    os.mkdir(tmp_path / "expected")
    shutil.copy(os.path.join(DEFAULT_SCENARIOS, "expected", "routing.yaml"), tmp_path / "expected")
    cmd = [sys.executable, "-m", "odyssey_gevent.compare", "--scenarios", str(tmp_path),
           "--pg", f"{pg.host}:{pg.port}", "--format", "json", "--only", "routing/exact-*"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=100)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert [s["status"] for s in report["scenarios"]] == ["same"]

    path = tmp_path / "expected" / "routing.yaml"
    path.write_text(path.read_text().replace("- cmp_app\n    - db1", "- cmp_app\n    - db2", 1))
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=100)
    assert out.returncode == 1
    report = json.loads(out.stdout)
    assert report["scenarios"][0]["status"] == "DIFF"
    assert report["scenarios"][0]["differences"][0]["field"] == "2 query.rows"
