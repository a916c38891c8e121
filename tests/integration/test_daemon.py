"""`daemonize yes` (reference §5): the command returns at once, the daemon writes its own pid to
pid_file, logs to log_file only, reopens it on SIGUSR1, restarts online on SIGUSR2 (the new
process does not daemonize again and takes the pid file over) and removes the pid file when it
stops. The pooler is started as an operator would, without --console.
"""
from __future__ import annotations

import os
import signal
import string
import subprocess
import sys
import tempfile
import time

import psycopg2
import pytest

from scripts.pgcluster import free_port, wait_port
from scripts.pooler import REPO
from tests.integration.conftest import Raw, ensure_roles, odyssey_config, rule, wait_for

USER = "daemon_user"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _read_pid(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip() or 0) or None
    except (OSError, ValueError):
        return None


def _query(port: int) -> int:
    con = psycopg2.connect(f"host=127.0.0.1 port={port} user={USER} dbname=db1 sslmode=disable", connect_timeout=10)
    try:
        with con.cursor() as cur:
            cur.execute("select 1")
            return cur.fetchone()[0]
    finally:
        con.close()


def _kill(pid: int | None) -> None:
    if pid and _alive(pid):
        os.kill(pid, signal.SIGKILL)


@pytest.mark.timeout(90)
def test_daemonize_pid_file_log_reopen_and_online_restart(pg, roles):
    ensure_roles(pg, USER)
    tmp = tempfile.mkdtemp(prefix="odyssey-gevent-daemon-")
    port = free_port()
    pid_file = os.path.join(tmp, "odyssey.pid")
    log_file = os.path.join(tmp, "odyssey.log")
    text = odyssey_config(rule(USER, "db1"), daemonize=True, log_to_stdout=False,
                          pid_file=Raw('"${tmp}/odyssey.pid"'), log_file=Raw('"${tmp}/odyssey.log"'))
    config = os.path.join(tmp, "odyssey.conf")
    with open(config, "w") as f:
        f.write(string.Template(text).safe_substitute(port=port, tmp=tmp, pg_host=pg.host, pg_port=pg.port))
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    pids = []
    try:
        out = subprocess.run([sys.executable, "-m", "odyssey_gevent", config], capture_output=True, text=True,
                             timeout=30, env=env, cwd=tmp, stdin=subprocess.DEVNULL)
        assert out.returncode == 0, out.stdout + out.stderr
        assert out.stdout == "", out.stdout             # nothing on the terminal: it is all in log_file
        pid = wait_for(lambda: _read_pid(pid_file), timeout=20, what="the pid file")
        pids.append(pid)
        assert _alive(pid)
        sid = os.getsid(pid)
        assert sid != os.getsid(0)                      # detached: a session of its own
        wait_port("127.0.0.1", port, timeout=20)
        assert _query(port) == 1
        log = wait_for(lambda: os.path.exists(log_file) and open(log_file).read(), what="the log file")
        assert f"pid {pid}" in log and "listening on" in log

        # SIGUSR1: the renamed file keeps the old lines, a new file gets the next ones
        os.rename(log_file, log_file + ".1")
        os.kill(pid, signal.SIGUSR1)
        wait_for(lambda: "SIGUSR1 received" in open(log_file + ".1").read(), what="SIGUSR1 logged")
        assert _query(port) == 1
        wait_for(lambda: os.path.exists(log_file) and "client connection from" in open(log_file).read(),
                 what="new lines in the reopened log file")
        assert "listening on" not in open(log_file).read()

        # SIGUSR2: the new process takes the port and the pid file; the old one exits
        os.kill(pid, signal.SIGUSR2)
        new = wait_for(lambda: _read_pid(pid_file) not in (None, pid) and _read_pid(pid_file), timeout=30,
                       what="the new pid in the pid file")
        pids.append(new)
        wait_for(lambda: not _alive(pid), timeout=30, what="the old process gone")
        assert _alive(new)
        assert os.getsid(new) == sid                    # started in the old one's session, not daemonized again
        assert _query(port) == 1
        assert _read_pid(pid_file) == new
        wait_for(lambda: "online restart complete" in open(log_file).read(), timeout=10, what="restart complete")

        # SIGTERM: the daemon stops and removes its pid file
        os.kill(new, signal.SIGTERM)
        wait_for(lambda: not _alive(new), timeout=20, what="the daemon stopped")
        assert not os.path.exists(pid_file)
        with pytest.raises(psycopg2.OperationalError):
            _query(port)
    finally:
        for p in pids:
            _kill(p)
        time.sleep(0.1)
