"""odyssey-compare: run the scenario library against our pooler and a reference, side by side.

    odyssey-compare --reference /usr/bin/odyssey          # ours vs C Odyssey, same config and PostgreSQL
    odyssey-compare                                       # ours vs the recorded expectations (CI)
    odyssey-compare --reference BIN --record              # re-record the expectations from BIN
    odyssey-compare --only 'auth/*' --format json

Both poolers are started (one pair per suite, i.e. per config) in front of one PostgreSQL: a
throwaway cluster made with initdb unless --pg HOST:PORT names one (its superuser must log in
without a password; the suites' setup SQL creates roles there). Exit status: 0 when every
difference is listed in known_differences.yaml, 1 otherwise, 2 on a usage error.

The scenarios and the PostgreSQL/pooler helpers live in the source tree (tests/scenarios,
scripts/), so the tool runs from a checkout (`pip install -e .` or `python -m
odyssey_gevent.compare` in the repository).
"""
from __future__ import annotations

import argparse
import datetime
import os
import string
import subprocess
import sys
import tempfile
import time
import types

import psycopg2

from odyssey_gevent.compare import diff, scenario as scen
from odyssey_gevent.compare.steps import QUERY_STEPS, Session, StepError, Target

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_SCENARIOS = os.path.join(REPO, "tests", "scenarios")


def _harness():
    """scripts.pgcluster and scripts.pooler from the source tree (shared with the tests)."""
    if not os.path.exists(os.path.join(REPO, "scripts", "pooler.py")):
        raise SystemExit("odyssey-compare needs the odyssey-gevent source tree (scripts/, "
                         "tests/scenarios/); run it from a checkout installed with pip install -e .")
    if REPO not in sys.path:
        sys.path.insert(0, REPO)
    from scripts import pgcluster, pooler
    return pgcluster, pooler


def make_certs(directory: str) -> None:
    """A self-signed server certificate for 127.0.0.1 (server.crt, server.key) for TLS suites."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                    "-keyout", os.path.join(directory, "server.key"),
                    "-out", os.path.join(directory, "server.crt")],
                   check=True, capture_output=True, timeout=60)
    os.chmod(os.path.join(directory, "server.key"), 0o600)


def reference_version(command: str) -> str:
    import shlex
    try:
        out = subprocess.run([*shlex.split(command), "--version"], capture_output=True, text=True,
                             timeout=10)
        return " ".join((out.stdout or out.stderr).split()) or command
    except OSError as e:
        return f"{command} ({e})"


class PoolerPair:
    """Our pooler and (when given) the reference, started on one suite's config."""

    def __init__(self, runner: "Runner", suite: scen.Suite):
        self.runner, self.suite = runner, suite
        self.targets: list[Target] = []
        self.processes = []
        template = self._template(None, None)
        try:
            for name, binary in runner.poolers():
                p = runner.pooler_mod.PoolerProcess(template, pg=runner.pg, binary=binary)
                self.processes.append(p)
                self.targets.append(Target(name, "127.0.0.1", p.port, unix_dir=p.tmp, process=p,
                                           reload=self._reloader(p)))
        except Exception:
            self.stop()
            raise

    def _template(self, rules, globals_) -> str:
        text = self.suite.config_template(self.runner.base, rules, globals_)
        return string.Template(text).safe_substitute(files=self.runner.files_dir,
                                                     certs=self.runner.certs_dir or "")

    def _reloader(self, process):
        def reload(rules, globals_):
            text = string.Template(self._template(rules, globals_)).safe_substitute(
                port=process.port, tmp=process.tmp, pg_host=self.runner.pg.host,
                pg_port=self.runner.pg.port, pg_sockdir=self.runner.pg.sockdir)
            with open(process.config_path, "w") as f:
                f.write(text)
            import signal
            process.signal(signal.SIGHUP)
        return reload

    def stop(self) -> None:
        for p in self.processes:
            p.stop()
        self.processes = []


class Runner:
    """Runs suites; `reference` is a command line, or None for expectation mode."""

    def __init__(self, pg, reference: str | None = None, scenarios_dir: str = DEFAULT_SCENARIOS,
                 direct: bool = True, superuser: str = "postgres", progress=None):
        _, self.pooler_mod = _harness()
        self.pg, self.reference, self.dir = pg, reference, scenarios_dir
        self.direct, self.superuser = direct, superuser
        self.progress = progress or (lambda msg: None)
        with open(os.path.join(scenarios_dir, "base.conf")) as f:
            self.base = f.read()
        self.known = scen.load_known(scenarios_dir)
        self.tmp = tempfile.mkdtemp(prefix="odyssey-compare-")
        os.chmod(self.tmp, 0o755)
        self.files_dir = os.path.join(self.tmp, "files")
        os.mkdir(self.files_dir)
        self.certs_dir = None
        self.recorded: dict[str, dict] = {}

    def close(self) -> None:
        """Remove the run's files (hba files, certificates)."""
        import shutil
        shutil.rmtree(self.tmp, ignore_errors=True)

    def poolers(self):
        yield "ours", None
        if self.reference:
            yield "reference", self.reference

    def superuser_sql(self, sql: str) -> None:
        con = psycopg2.connect(host=self.pg.host, port=self.pg.port, user=self.superuser,
                               dbname="postgres")
        con.autocommit = True
        try:
            con.cursor().execute(sql)
        finally:
            con.close()

    def prepare(self, suites: list[scen.Suite]) -> None:
        for suite in suites:
            for name, text in suite.files.items():
                path = os.path.join(self.files_dir, name)
                with open(path, "w") as f:
                    f.write(text)
            if suite.setup_sql:
                self.superuser_sql(suite.setup_sql)
            uses_certs = "${certs}" in suite.globals + suite.listen + suite.rules + self.base
            if uses_certs and self.certs_dir is None:
                self.certs_dir = os.path.join(self.tmp, "certs")
                os.mkdir(self.certs_dir)
                make_certs(self.certs_dir)

    def run_scenario(self, sc: scen.Scenario, targets: list[Target]) -> dict[str, list]:
        out = {}
        passwords = {}
        for target in targets:
            session = Session(target, passwords)
            try:
                out[target.name] = session.run(sc.steps)
            finally:
                session.close()
        return out

    def compare(self, sc: scen.Scenario, got: dict[str, list], expected: dict) -> dict:
        result = {"scenario": sc.name, "differences": []}
        if self.reference:
            result["differences"] = diff.differences(got["ours"], got["reference"])
        elif sc.name in expected:
            result["differences"] = diff.differences(got["ours"], expected[sc.name])
        else:
            result["error"] = "no recorded expectation (run with --reference BIN --record)"
        if "postgres" in got:
            result["direct"] = True
            for d in diff.differences(got["ours"], got["postgres"], only_steps=QUERY_STEPS):
                d["field"] = "postgres: " + d["field"]
                result["differences"].append(d)
        diff.classify(sc.name, result["differences"], self.known)
        return result

    def run(self, suites: list[scen.Suite]) -> list[dict]:
        self.prepare(suites)
        results = []
        for suite in suites:
            expected = {} if self.reference else scen.load_expected(self.dir, suite)
            shared = None
            try:
                for sc in suite.scenarios:
                    self.progress(f"{sc.name} ...")
                    pair = None
                    try:
                        if sc.own_pooler:
                            pair = PoolerPair(self, suite)
                        elif shared is None:
                            shared = pair = PoolerPair(self, suite)
                        else:
                            pair = shared
                        targets = list(pair.targets)
                        if sc.direct and self.direct and not self.reference:
                            targets.append(Target("postgres", self.pg.host, self.pg.port,
                                                  unix_dir=self.pg.sockdir, kind="postgres"))
                        got = self.run_scenario(sc, targets)
                        if self.reference:
                            self.recorded.setdefault(suite.name, {})[sc.name] = got["reference"]
                        results.append(self.compare(sc, got, expected))
                    except (StepError, RuntimeError, OSError, TimeoutError) as e:
                        results.append({"scenario": sc.name, "differences": [],
                                        "error": f"{type(e).__name__}: {e}"})
                    finally:
                        if pair is not None and pair is not shared:
                            pair.stop()
            finally:
                if shared is not None:
                    shared.stop()
        return results

    def record(self, suites: list[scen.Suite]) -> list[str]:
        """Write the reference's records as the suites' expectations."""
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        header = (f"Expected step records of the scenarios in ../{{suite}}.yaml, recorded from a run of\n"
                  f"{reference_version(self.reference)}\n"
                  f"(C Odyssey built from its public source) by `odyssey-compare --reference ... "
                  f"--record` on {now}.\nRe-record rather than edit by hand; intended differences of "
                  f"odyssey-gevent go into ../known_differences.yaml.")
        paths = []
        for suite in suites:
            if suite.name in self.recorded:
                paths.append(scen.write_expected(self.dir, suite, diff.normalize(self.recorded[suite.name]),
                                                 header.replace("{suite}", suite.name)))
        return paths


def _parse_pg(text: str):
    host, _, port = text.rpartition(":")
    return types.SimpleNamespace(host=host or "127.0.0.1", port=int(port),
                                 sockdir="/var/run/postgresql")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="odyssey-compare", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--reference", metavar="COMMAND",
                    help="the reference pooler: a binary or a command line (C Odyssey)")
    ap.add_argument("--scenarios", default=DEFAULT_SCENARIOS, metavar="DIR",
                    help="scenario directory (default: tests/scenarios of the source tree)")
    ap.add_argument("--pg", metavar="HOST:PORT", help="use this PostgreSQL instead of a throwaway one")
    ap.add_argument("--pg-superuser", default="postgres")
    ap.add_argument("--only", action="append", metavar="GLOB", help="scenario names to run (repeatable)")
    ap.add_argument("--format", choices=("text", "json"), default="text")
    ap.add_argument("--record", action="store_true",
                    help="with --reference: write the reference's results as the expectations")
    ap.add_argument("--no-direct", action="store_true",
                    help="expectation mode: skip the check of query results against PostgreSQL")
    ap.add_argument("-v", "--verbose", action="store_true", help="show known differences in full")
    args = ap.parse_args(argv)
    if args.record and not args.reference:
        ap.error("--record needs --reference")
    os.environ.pop("ODYSSEY_BIN", None)          # "ours" is always this package
    pgcluster, _ = _harness()
    try:
        suites = scen.load_all(args.scenarios, args.only)
    except (scen.ScenarioError, OSError) as e:
        print(f"odyssey-compare: {e}", file=sys.stderr)
        return 2
    if not suites:
        print("odyssey-compare: no scenario matches", file=sys.stderr)
        return 2
    cluster = None
    if args.pg:
        pg = _parse_pg(args.pg)
    else:
        cluster = pgcluster.PgCluster()
        cluster.init().start().create_roles()
        pg = cluster
    quiet = args.format == "json"
    started = time.monotonic()
    runner = None
    try:
        runner = Runner(pg, args.reference, args.scenarios, direct=not args.no_direct,
                        superuser=args.pg_superuser,
                        progress=None if quiet else (lambda m: print(m, file=sys.stderr, flush=True)))
        results = runner.run(suites)
        if args.record:
            for path in runner.record(suites):
                print(f"odyssey-compare: wrote {os.path.relpath(path)}", file=sys.stderr)
    finally:
        if runner is not None:
            runner.close()
        if cluster is not None:
            cluster.destroy()
    against = "reference" if args.reference else "expected"
    if args.format == "json":
        print(diff.as_json(results, against))
    else:
        print(diff.table(results, against, args.verbose))
        print(f"({time.monotonic() - started:.0f} s)")
    if args.record:       # differences are what recording is for; a scenario that broke is not
        return 1 if any(r.get("error") for r in results) else 0
    return 1 if diff.failed(results) else 0
