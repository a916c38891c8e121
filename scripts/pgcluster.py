"""A throwaway PostgreSQL cluster (initdb + pg_ctl) for the demo, the tests and the benchmarks.

Runs the server as the `postgres` OS user when we are root (initdb refuses root), as ourselves
otherwise. Roles made by `create_roles()`:

    trust_user  / no password        (pg_hba: trust)
    md5_user    / md5pass            (pg_hba: md5, stored as md5)
    scram_user  / scrampass          (pg_hba: scram-sha-256)

All other roles authenticate by trust.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time

ROLES = {
    "trust_user": None,
    "md5_user": "md5pass",
    "scram_user": "scrampass",
}


def pg_bindir() -> str:
    """The newest /usr/lib/postgresql/*/bin that has a postgres binary (or $PG_BINDIR)."""
    env = os.environ.get("PG_BINDIR")
    if env:
        return env
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    if not found:
        raise RuntimeError("no PostgreSQL server found in /usr/lib/postgresql/*/bin; "
                           "install the postgresql package (the README's test command does)")
    return os.path.dirname(found[-1])


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_port(host: str, port: int, timeout: float = 15.0, proc: subprocess.Popen | None = None) -> None:
    """Wait until something accepts TCP connections on host:port."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {host}:{port}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s") from None
            time.sleep(0.05)


class PgCluster:
    """One private PostgreSQL cluster in a temporary directory."""

    def __init__(self, port: int | None = None, host: str = "127.0.0.1", base_dir: str | None = None):
        self.bindir = pg_bindir()
        self.host = host
        self.port = port or free_port(host)
        self.dir = tempfile.mkdtemp(prefix="odyssey-gevent-pg-", dir=base_dir)
        self.datadir = os.path.join(self.dir, "data")
        self.sockdir = self.dir
        self.logfile = os.path.join(self.dir, "postgres.log")
        self.as_root = os.geteuid() == 0
        self.started = False

    # -- running commands as the cluster owner -------------------------------------------
    def _cmd(self, args: list[str]) -> list[str]:
        if self.as_root:
            return ["runuser", "-u", "postgres", "--"] + args
        return args

    def run(self, args: list[str], **kw) -> subprocess.CompletedProcess:
        kw.setdefault("check", True)
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        try:
            return subprocess.run(self._cmd(args), **kw)
        except subprocess.CalledProcessError as e:
            raise RuntimeError(f"{' '.join(args)} failed ({e.returncode}):\n{e.stdout}\n{e.stderr}") from None

    # -- lifecycle --------------------------------------------------------------------------
    def init(self) -> "PgCluster":
        if self.as_root:
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        os.chmod(self.dir, 0o755)
        self.run([os.path.join(self.bindir, "initdb"), "-D", self.datadir, "-U", "postgres",
                  "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"])
        conf = os.path.join(self.datadir, "postgresql.conf")
        # jit off: a query estimated costly enough (test_faults_backend's COPY of generate_series)
        # is compiled with LLVM before its first row, and the first compilation in a backend
        # loads the JIT library: seconds of CPU on a loaded machine, where a test's client waits
        # 5 s for the reply (seen in fresh-clone runs: the backend active, on CPU, no output yet)
        extra = f"""
listen_addresses = '{self.host}'
port = {self.port}
unix_socket_directories = '{self.sockdir}'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 300
shared_buffers = 64MB
password_encryption = 'scram-sha-256'
log_min_messages = warning
jit = off
"""
        self._append_as_owner(conf, extra)
        hba = """# written by scripts/pgcluster.py
local   all  all                      trust
host    all  md5_user    127.0.0.1/32 md5
host    all  md5_user    ::1/128      md5
host    all  scram_user  127.0.0.1/32 scram-sha-256
host    all  scram_user  ::1/128      scram-sha-256
host    all  all         127.0.0.1/32 trust
host    all  all         ::1/128      trust
"""
        self._write_as_owner(os.path.join(self.datadir, "pg_hba.conf"), hba)
        return self

    def _write_as_owner(self, path: str, text: str) -> None:
        with open(path, "w") as f:
            f.write(text)
        if self.as_root:
            pw = pwd.getpwnam("postgres")
            os.chown(path, pw.pw_uid, pw.pw_gid)

    def _append_as_owner(self, path: str, text: str) -> None:
        with open(path, "a") as f:
            f.write(text)

    def start(self) -> "PgCluster":
        self.run([os.path.join(self.bindir, "pg_ctl"), "-D", self.datadir, "-l", self.logfile,
                  "-w", "-t", "60", "start"])
        self.started = True
        return self

    def stop(self, mode: str = "fast") -> None:
        if self.started:
            self.run([os.path.join(self.bindir, "pg_ctl"), "-D", self.datadir, "-m", mode,
                      "-w", "-t", "60", "stop"], check=False)
            self.started = False

    def restart(self) -> None:
        self.stop()
        self.start()

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- SQL --------------------------------------------------------------------------------
    def psql(self, sql: str, db: str = "postgres", user: str = "postgres") -> str:
        """Run SQL over the unix socket as the superuser; returns unaligned tuples-only output."""
        out = self.run([os.path.join(self.bindir, "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                        "-h", self.sockdir, "-p", str(self.port), "-U", user, "-d", db, "-c", sql])
        return out.stdout.strip()

    def create_roles(self) -> "PgCluster":
        self.psql("SET password_encryption = 'md5'; CREATE ROLE md5_user LOGIN PASSWORD 'md5pass';")
        self.psql("SET password_encryption = 'scram-sha-256'; CREATE ROLE scram_user LOGIN PASSWORD 'scrampass';")
        self.psql("CREATE ROLE trust_user LOGIN;")
        self.psql("CREATE DATABASE db1;")
        for role in ROLES:
            self.psql(f"GRANT ALL ON DATABASE db1 TO {role}; GRANT ALL ON DATABASE postgres TO {role};")
            self.psql(f"GRANT ALL ON SCHEMA public TO {role};", db="db1")
            self.psql(f"GRANT ALL ON SCHEMA public TO {role};")
        return self

    def dsn(self, user: str = "postgres", db: str = "postgres", password: str | None = None) -> str:
        pw = f" password={password}" if password else ""
        return f"host={self.host} port={self.port} user={user} dbname={db}{pw} sslmode=disable"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.destroy()
