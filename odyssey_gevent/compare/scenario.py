"""Scenario files: YAML suites that share one pooler config.

A suite file (tests/scenarios/<suite>.yaml) holds::

    title: what the suite covers
    globals: |          # global keywords added to base.conf (optional)
    listen: |           # keywords added to its listen block (optional)
    rules: |            # database/user blocks added to base.conf
    files: {name: text} # written to a shared directory, ${files}/name in the config
    setup_sql: |        # run once on PostgreSQL as its superuser before the poolers start
    scenarios:
      - name: suite/what
        direct: yes     # also run the query steps on PostgreSQL itself (expectation mode)
        own_pooler: yes # a fresh pair of poolers (for signals and reloads)
        steps: [...]    # see steps.py

base.conf holds the listen, storage and console parts and the placeholders ${globals},
${listen} and ${rules}; ${port}, ${pg_host}, ${pg_port}, ${tmp} are filled in per pooler,
${files} and ${certs} (a server certificate and key made with openssl) per run.

Expectations live in expected/<suite>.yaml: scenario name -> list of step records.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import glob
import os

import yaml


@dataclasses.dataclass
class Scenario:
    name: str
    steps: list
    suite: "Suite"
    direct: bool = False
    own_pooler: bool = False
    description: str = ""


@dataclasses.dataclass
class Suite:
    name: str
    path: str
    title: str
    globals: str
    listen: str
    rules: str
    files: dict
    setup_sql: str
    scenarios: list

    def config_template(self, base: str, rules: str | None = None, globals_: str | None = None) -> str:
        text = base.replace("${globals}", self.globals if globals_ is None else globals_)
        text = text.replace("${listen}", self.listen)
        return text.replace("${rules}", self.rules if rules is None else rules)


class ScenarioError(Exception):
    pass


def load_suite(path: str) -> Suite:
    with open(path) as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ScenarioError(f"{path}: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("scenarios"), list):
        raise ScenarioError(f"{path}: a mapping with a 'scenarios' list expected")
    name = os.path.splitext(os.path.basename(path))[0]
    suite = Suite(name=name, path=path, title=data.get("title", name), globals=data.get("globals", ""),
                  listen=data.get("listen", ""), rules=data.get("rules", ""),
                  files=data.get("files") or {},
                  setup_sql=data.get("setup_sql", ""), scenarios=[])
    seen = set()
    for i, s in enumerate(data["scenarios"]):
        if not isinstance(s, dict) or "name" not in s or not isinstance(s.get("steps"), list):
            raise ScenarioError(f"{path}: scenario #{i + 1} needs a name and a steps list")
        if s["name"] in seen:
            raise ScenarioError(f"{path}: scenario {s['name']!r} appears twice")
        seen.add(s["name"])
        suite.scenarios.append(Scenario(name=s["name"], steps=s["steps"], suite=suite,
                                        direct=bool(s.get("direct")),
                                        own_pooler=bool(s.get("own_pooler")),
                                        description=s.get("description", "")))
    return suite


def load_all(directory: str, only: list[str] | None = None) -> list[Suite]:
    """Every suite in `directory` (not known_differences.yaml nor expected/), with only the
    scenarios whose name matches one of the `only` globs when given."""
    suites = []
    for path in sorted(glob.glob(os.path.join(directory, "*.yaml"))):
        if os.path.basename(path) == "known_differences.yaml":
            continue
        suite = load_suite(path)
        if only:
            suite.scenarios = [s for s in suite.scenarios
                               if any(fnmatch.fnmatchcase(s.name, pat) for pat in only)]
        if suite.scenarios:
            suites.append(suite)
    return suites


def expected_path(directory: str, suite: Suite) -> str:
    return os.path.join(directory, "expected", suite.name + ".yaml")


def load_expected(directory: str, suite: Suite) -> dict:
    path = expected_path(directory, suite)
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return yaml.safe_load(f) or {}


def write_expected(directory: str, suite: Suite, results: dict, header: str) -> str:
    """Write scenario -> records for one suite, keeping the entries of scenarios not run now."""
    path = expected_path(directory, suite)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    merged = load_expected(directory, suite)
    merged.update(results)
    order = [s.name for s in suite.scenarios] + sorted(set(merged) - {s.name for s in suite.scenarios})
    ordered = {k: merged[k] for k in order if k in merged}
    with open(path, "w") as f:
        f.write("".join(f"# {line}\n" if line else "#\n" for line in header.splitlines()))
        yaml.safe_dump(ordered, f, sort_keys=False, allow_unicode=True, width=100)
    return path


def load_known(directory: str) -> list[dict]:
    path = os.path.join(directory, "known_differences.yaml")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        data = yaml.safe_load(f) or []
    for entry in data:
        if "scenario" not in entry or "why" not in entry:
            raise ScenarioError(f"{path}: each entry needs 'scenario' and 'why': {entry!r}")
    return data
