"""odyssey_gevent.compare.diff and scenario: pure logic of the comparator (no pooler)."""
from __future__ import annotations

import pytest

from odyssey_gevent.compare import diff, scenario


def test_normalize_masks_client_and_server_ids():
    rec = {"error": {"message": "odyssey: c0123456789ab: failed to connect to remote server s00000000ffff"}}
    assert diff.normalize(rec) == {"error": {"message": "odyssey: c<id>: failed to connect to remote server s<id>"}}
    assert diff.normalize("cafe") == "cafe"


def test_differences_by_field_and_missing_values():
    ours = [{"step": "1 connect", "ok": True}, {"step": "2 query", "rows": [["1"]], "tags": ["SELECT 1"]}]
    ref = [{"step": "1 connect", "ok": True}, {"step": "2 query", "rows": [["2"]]}]
    got = diff.differences(ours, ref)
    assert got == [{"field": "2 query.rows", "ours": [["1"]], "reference": [["2"]]},
                   {"field": "2 query.tags", "ours": ["SELECT 1"], "reference": diff.MISSING}]


def test_differences_limited_to_query_steps():
    ours = [{"step": "1 connect", "ok": False}, {"step": "2 query", "rows": [["x"]]}]
    ref = [{"step": "1 connect", "ok": True}, {"step": "2 query", "rows": [["x"]]}]
    assert diff.differences(ours, ref, only_steps={"query"}) == []


def test_classify_known_open_and_unexpected():
    known = [{"scenario": "a/*", "field": "1 connect.*", "why": "intended"},
             {"scenario": "b/x", "why": "not settled", "open": True}]
    d1 = [{"field": "1 connect.ok", "ours": 1, "reference": 2}]
    diff.classify("a/y", d1, known)
    assert diff.status_of({"differences": d1}) == "known"
    d2 = [{"field": "3 query.rows", "ours": 1, "reference": 2}]
    diff.classify("a/y", d2, known)
    assert diff.status_of({"differences": d2}) == "DIFF"
    d3 = [{"field": "3 query.rows", "ours": 1, "reference": 2}]
    diff.classify("b/x", d3, known)
    assert diff.status_of({"differences": d3}) == "open"
    assert diff.failed([{"differences": d1}, {"differences": d3}]) is False
    assert diff.failed([{"differences": d2}]) is True
    assert diff.failed([{"differences": [], "error": "boom"}]) is True


def test_table_shows_both_sides_and_counts():
    results = [{"scenario": "s/one", "differences": []},
               {"scenario": "s/two", "differences": [
                   {"field": "1 connect.error.sqlstate", "ours": "08P01", "reference": "28P01",
                    "known": None, "open": False}]}]
    text = diff.table(results, "reference")
    assert "s/two" in text and "08P01" in text and "28P01" in text
    assert "2 scenarios: 1 DIFF, 1 same" in text


def test_suite_loader_rejects_bad_files(tmp_path):
    (tmp_path / "x.yaml").write_text("scenarios:\n  - name: a\n    steps: []\n  - name: a\n    steps: []\n")
    with pytest.raises(scenario.ScenarioError, match="appears twice"):
        scenario.load_suite(str(tmp_path / "x.yaml"))
    (tmp_path / "y.yaml").write_text("title: a: b\n")
    with pytest.raises(scenario.ScenarioError):
        scenario.load_suite(str(tmp_path / "y.yaml"))


def test_every_shipped_suite_loads_and_has_expectations():
    suites = scenario.load_all(scenario_dir())
    names = [s.name for suite in suites for s in suite.scenarios]
    assert len(names) >= 60 and len(names) == len(set(names))
    for suite in suites:
        expected = scenario.load_expected(scenario_dir(), suite)
        missing = [s.name for s in suite.scenarios if s.name not in expected]
        assert missing == [], f"{suite.name}: no recorded expectation for {missing}"


def scenario_dir() -> str:
    from odyssey_gevent.compare.runner import DEFAULT_SCENARIOS
    return DEFAULT_SCENARIOS
