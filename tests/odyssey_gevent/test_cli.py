"""`odyssey` command line: --test, version, usage errors, the run path hand-off."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import types

import pytest
from click.testing import CliRunner

from odyssey_gevent import cli

ROOT = pathlib.Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "etc" / "odyssey.conf"


def run(args):
    return CliRunner().invoke(cli.main, args)


def test_test_flag_valid_sample():
    res = run(["--test", str(SAMPLE)])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip().endswith("config is valid")


def test_test_flag_prints_errors_and_exits_1(tmp_path):
    bad = tmp_path / "bad.conf"
    bad.write_text("listen {\n prot 1\n}\n")
    res = run(["--test", str(bad)])
    assert res.exit_code == 1
    assert "config is valid" not in res.stdout
    assert f"{bad}:2:2: unknown keyword 'prot' in listen" in res.stderr
    assert "  hint: did you mean 'port'?" in res.stderr


def test_test_flag_validation_error(tmp_path):
    bad = tmp_path / "bad.conf"
    bad.write_text('listen { host "*" }\n')
    res = run(["--test", str(bad)])
    assert res.exit_code == 1
    lines = res.stderr.strip().splitlines()
    assert f"{bad}:1:1: log_format is not defined" in lines
    assert f"{bad}:1:1: no storage defined" in lines


def test_test_flag_missing_file(tmp_path):
    res = run(["--test", str(tmp_path / "nope.conf")])
    assert res.exit_code == 1 and "failed to open config file" in res.stderr


def test_test_flag_prints_warnings(tmp_path):
    conf = tmp_path / "w.conf"
    conf.write_text(SAMPLE.read_text() + "\nworkers 2\npipeline 5\n")
    res = run(["--test", str(conf)])
    assert res.exit_code == 0
    assert "'pipeline' is deprecated and ignored" in res.stderr and "'workers' is set again" in res.stderr
    res = run(["--test", "--silent", str(conf)])
    assert res.exit_code == 0 and res.stderr == ""


def test_version():
    for flag in ("-V", "--version"):
        res = run([flag])
        assert res.exit_code == 0 and "odyssey-gevent" in res.stdout and "compatible" in res.stdout


def test_help():
    res = run(["-h"])
    assert res.exit_code == 0
    for opt in ("--console", "--log_to_stdout", "--silent", "--verbose", "--test", "--version"):
        assert opt in res.stdout


def test_config_required():
    res = run([])
    assert res.exit_code == 2 and "config file is required" in res.output


def test_silent_and_verbose_conflict():
    res = run(["--silent", "--verbose", str(SAMPLE)])
    assert res.exit_code == 2


def test_run_path_calls_instance_main(monkeypatch):
    calls = []
    fake = types.ModuleType("odyssey_gevent.instance")

    def main(config_path, **kw):
        calls.append((config_path, kw))
        return 0
    fake.main = main
    monkeypatch.setitem(sys.modules, "odyssey_gevent.instance", fake)
    import odyssey_gevent
    monkeypatch.setattr(odyssey_gevent, "instance", fake, raising=False)
    res = run(["--console", "--log_to_stdout", "--verbose", str(SAMPLE)])
    assert res.exit_code == 0, res.output
    assert calls == [(str(SAMPLE), dict(console=True, log_to_stdout=True, silent=False, verbose=True))]


def test_run_path_config_error_exits_nonzero(monkeypatch, tmp_path):
    from odyssey_gevent.config import reader
    fake = types.ModuleType("odyssey_gevent.instance")
    fake.main = lambda path, **kw: reader.load(path) and 0
    monkeypatch.setitem(sys.modules, "odyssey_gevent.instance", fake)
    import odyssey_gevent
    monkeypatch.setattr(odyssey_gevent, "instance", fake, raising=False)
    bad = tmp_path / "bad.conf"
    bad.write_text("workers x\n")
    res = run([str(bad)])
    assert res.exit_code == 1
    assert f"{bad}:1:9: expected number or \"auto\"" in res.stderr


@pytest.mark.parametrize("conf", [SAMPLE] + sorted(p for p in (ROOT / "etc" / "examples").glob("*.conf")
                                                   if p.name != "hba.conf"),   # hba.conf: an hba file
                         ids=lambda p: p.name)
def test_samples_are_valid(conf):
    res = run(["--test", str(conf)])
    assert res.exit_code == 0, res.stderr
    assert "config is valid" in res.stdout


def test_subprocess_python_m(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "odyssey_gevent", "--test", "etc/odyssey.conf"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "config is valid"
    bad = tmp_path / "bad.conf"
    bad.write_text("daemonize on\n")
    proc = subprocess.run([sys.executable, "-m", "odyssey_gevent", "--test", str(bad)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[0] == f"{bad}:1:11: expected yes/no, got keyword 'on'"
