"""Start odyssey-gevent as a subprocess on a generated config, for tests, benchmarks and the demo.

A config template may use ${port} (the pooler's listen port), ${pg_host}, ${pg_port},
${pg_sockdir} and ${tmp} (a private directory); they are filled in with string.Template.
With `binary=` (or ODYSSEY_BIN in the environment) that command is run instead of
`python -m odyssey_gevent`.
"""
from __future__ import annotations

import os
import shlex
import signal
import string
import subprocess
import sys
import tempfile
import time
import weakref

from scripts.pgcluster import free_port, wait_port


def rss_kib(pid: int) -> int:
    """A process's resident set size in KiB (VmRSS of /proc/PID/status)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise ValueError(f"process {pid} has no VmRSS (a zombie?)")


def open_fds(pid: int) -> int:
    """How many file descriptors a process has open."""
    return len(os.listdir(f"/proc/{pid}/fd"))

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class PoolerProcess:
    # The poolers started and not yet stopped: the test suite's report of a failed test shows
    # their logs (tests/conftest.py), so a failure that only a pooler's log explains is not lost.
    live: "weakref.WeakSet[PoolerProcess]" = weakref.WeakSet()

    def __init__(self, template: str, pg=None, port: int | None = None, extra_args: tuple = (),
                 wait: bool = True, binary: str | None = None, **values):
        self.port = port or free_port()
        self.tmp = tempfile.mkdtemp(prefix="odyssey-gevent-")
        os.chmod(self.tmp, 0o777)
        subst = dict(port=self.port, tmp=self.tmp)
        if pg is not None:
            subst.update(pg_host=pg.host, pg_port=pg.port, pg_sockdir=pg.sockdir)
        subst.update(values)
        self.config_text = string.Template(template).safe_substitute(subst)
        self.config_path = os.path.join(self.tmp, "odyssey.conf")
        with open(self.config_path, "w") as f:
            f.write(self.config_text)
        self.log_path = os.path.join(self.tmp, "stdout.log")
        self._log = open(self.log_path, "wb")
        env = dict(os.environ)
        env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
        argv = [sys.executable, "-m", "odyssey_gevent", "--console", "--log_to_stdout", *extra_args,
                self.config_path]
        binary = binary or os.environ.get("ODYSSEY_BIN")
        if binary:
            # Side-by-side runs: the same config and flags, given to another pooler (e.g. C
            # Odyssey); `binary` may be a command line ("valgrind /usr/bin/odyssey").
            argv = [*shlex.split(binary), "--console", "--log_to_stdout", *extra_args,
                    self.config_path]
        self.proc = subprocess.Popen(
            argv,
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=self.tmp)
        PoolerProcess.live.add(self)
        if wait:
            try:
                wait_port("127.0.0.1", self.port, timeout=20, proc=self.proc)
            except Exception:
                self.stop()
                with open(self.log_path, "rb") as f:
                    log = f.read().decode("utf-8", "replace")
                raise RuntimeError(f"pooler did not start:\n{log}") from None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        self._log.flush()
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def wait_log(self, needle: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log()
            if needle in text:
                return text
            time.sleep(0.05)
        raise AssertionError(f"{needle!r} not in the pooler log:\n{self.log()}")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> int:
        PoolerProcess.live.discard(self)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def dsn(self, user: str, db: str, password: str | None = None, **kw) -> str:
        parts = [f"host=127.0.0.1 port={self.port} user={user} dbname={db} sslmode=disable"]
        if password is not None:
            parts.append(f"password={password}")
        parts += [f"{k}={v}" for k, v in kw.items()]
        return " ".join(parts)
