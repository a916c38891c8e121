"""The process around the pooler (reference §1.7, §5): startup config errors, `--test`, SIGHUP
reload (bad file keeps the old config, good file applies to new clients), SIGUSR1 log reopen,
SIGTERM exit and unix socket removal, `log_format "json"`.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import psycopg2
import pytest

from scripts.pooler import REPO, PoolerProcess
from tests.integration.conftest import (Raw, assert_alive, ensure_roles, odyssey_config, odyssey_text, one, rule,
                                        wait_for)
from tests.integration.wire import login_error

USER = "proc_user"
LOCATION_RE = re.compile(r"odyssey\.conf:\d+:\d+: ")


@pytest.fixture
def proc_role(pg, roles):
    ensure_roles(pg, USER)
    return USER


def _run_cli(tmp_path, text: str, *args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    path = tmp_path / "odyssey.conf"
    path.write_text(text)
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "odyssey_gevent", *args, str(path)], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=str(tmp_path), stdin=subprocess.DEVNULL)


def _bad_config() -> str:
    return odyssey_config(rule(USER, "db1", pool="sessionx")).replace("${port}", "1").replace(
        '"${pg_host}"', '"127.0.0.1"').replace("${pg_port}", "1")


def _good_config() -> str:
    return _bad_config().replace('"sessionx"', '"session"')


@pytest.mark.timeout(30)
def test_config_error_stops_startup(tmp_path):
    out = _run_cli(tmp_path, _bad_config(), "--console")
    assert out.returncode != 0
    assert LOCATION_RE.search(out.stderr), out.stderr
    assert "sessionx" in out.stderr or "pool" in out.stderr, out.stderr


@pytest.mark.timeout(30)
def test_test_flag(tmp_path):
    bad = _run_cli(tmp_path, _bad_config(), "--test")
    assert bad.returncode == 1
    assert LOCATION_RE.search(bad.stderr), bad.stderr
    good = _run_cli(tmp_path, _good_config(), "--test")
    assert good.returncode == 0, good.stderr
    assert "config is valid" in good.stdout


def _connect(p, db: str = "db1"):
    con = psycopg2.connect(p.dsn(USER, db))
    con.autocommit = True
    return con



@pytest.mark.timeout(40)
@pytest.mark.parametrize("pool", ["session", "transaction"])
def test_sighup_reload(pg, proc_role, pooler, pool):
    p = pooler(odyssey_config(rule(USER, "db1", pool=pool)))
    old = _connect(p)
    try:
        assert one(old) == 1
        # 1. a broken file: the old config stays, new clients still get in
        with open(p.config_path, "w") as f:
            f.write(p.config_text + "\nthis is { not a config\n")
        p.signal(signal.SIGHUP)
        p.wait_log("the old config stays in use")
        new = _connect(p)
        assert one(new) == 1
        new.close()
        # 2. a fixed file that blocks the user: new clients are refused, the old one keeps working
        with open(p.config_path, "w") as f:
            f.write(p.config_text.replace('authentication "none"', 'authentication "block"'))
        p.signal(signal.SIGHUP)
        p.wait_log("reconfigure rules")
        err = login_error(p.port, USER, "db1")
        assert err is not None and err["C"] == "28000", err
        odyssey_text(err["M"], f"user blocked: db1 {USER}")
        for i in range(3):
            assert one(old, f"select {i}") == i
        assert_alive(p)
    finally:
        old.close()


@pytest.mark.timeout(30)
def test_sigusr1_reopens_the_log_file(pg, proc_role, pooler):
    p = pooler(odyssey_config(rule(USER, "db1"), log_file=Raw('"${tmp}/odyssey.log"')))
    log = os.path.join(p.tmp, "odyssey.log")
    wait_for(lambda: os.path.exists(log) and "listening on" in open(log).read(), what="the log file")
    os.rename(log, log + ".1")
    p.signal(signal.SIGUSR1)
    p.wait_log("SIGUSR1 received")
    con = _connect(p)
    con.close()
    text = wait_for(lambda: os.path.exists(log) and "client connection from" in open(log).read() and open(log).read(),
                    what="new lines in the reopened log file")
    assert "listening on" not in text                  # the old lines stayed in the renamed file
    assert "listening on" in open(log + ".1").read()
    assert_alive(p)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("with_client", [False, True])
def test_sigterm_exits_0_and_removes_the_unix_socket(pg, proc_role, with_client):
    text = odyssey_config(rule(USER, "db1"), listen={"host": None},
                          unix_socket_dir=Raw('"${tmp}"'), unix_socket_mode="0700")
    text += 'listen {\n    host "127.0.0.1"\n    port ${port}\n}\n'
    p = PoolerProcess(text, pg=pg)
    try:
        sock = os.path.join(p.tmp, f".s.PGSQL.{p.port}")
        wait_for(lambda: os.path.exists(sock), what="the unix socket")
        con = _connect(p) if with_client else None
        if con is not None:
            assert one(con) == 1
        p.signal(signal.SIGTERM)
        rc = p.proc.wait(15)
        assert rc == 0, p.log()
        assert not os.path.exists(sock)
        if con is not None:
            with pytest.raises(psycopg2.Error):
                one(con)
            con.close()
    finally:
        p.stop()


@pytest.mark.timeout(30)
def test_json_log_format(pg, proc_role, pooler):
    p = pooler(odyssey_config(rule(USER, "db1"), log_format="json"))
    con = _connect(p)
    assert one(con) == 1
    con.close()
    p.wait_log("client disconnected")
    records = [json.loads(line) for line in p.log().splitlines() if line.strip()]
    for rec in records:
        assert {"timestamp", "pid", "level", "context", "message"} <= set(rec), rec
        assert rec["pid"] == p.pid
    starts = [r for r in records if "client connection from" in r["message"]]
    assert starts and starts[0]["client"]["user"] == USER and starts[0]["client"]["database"] == "db1"
    assert re.fullmatch(r"c[0-9a-f]{12}", starts[0]["client"]["id"])


@pytest.mark.timeout(30)
def test_sighup_with_unchanged_rules_keeps_the_server_pool(pg, proc_role, pooler):
    """A reload that changes nothing for a rule keeps its route: existing and new clients go on
    using the pooled server instead of logging a new backend in per transaction."""
    p = pooler(odyssey_config(rule(USER, "db1", pool="transaction", pool_size=1)))
    con = _connect(p)
    try:
        pid = one(con, "select pg_backend_pid()")
        p.signal(signal.SIGHUP)
        p.wait_log("reconfigure rules: 0 routes")
        assert [one(con, "select pg_backend_pid()") for _ in range(3)] == [pid] * 3
        other = _connect(p)
        assert one(other, "select pg_backend_pid()") == pid
        other.close()
    finally:
        con.close()
