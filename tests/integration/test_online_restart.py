"""Online restart (issue 12, C Odyssey's SIGUSR2 with bindwith_reuseport): the pooler starts a
new process of itself that binds the same port with SO_REUSEPORT and takes the new clients,
while the old one hands the port over and drains; a client loop across it sees no failure.
Also: SIGUSR2 with enable_online_restart no, and a new process that cannot start.

The new process is the old one's child and outlives it, so every test finds it by the pid file
and stops it itself.
"""
from __future__ import annotations

import os
import re
import signal
import threading
import time

import psycopg2
import pytest

from scripts.pooler import PoolerProcess
from tests.integration.conftest import Raw, assert_alive, odyssey_config, one, role_with_table, rule, wait_for

USER = "restart_user"
TABLE = "restart_t"
SHUTDOWN_TEXT = "Odyssey is shutting down"


@pytest.fixture
def rs_role(pg, roles):
    return role_with_table(pg, USER, TABLE)


def _config(listen: dict | None = None, **globals_) -> str:
    g = dict(enable_online_restart=True, bindwith_reuseport=True, pid_file=Raw('"${tmp}/odyssey.pid"'),
             graceful_shutdown_timeout_ms=20000)
    g.update(globals_)
    return odyssey_config(rule(USER, "db1", pool="transaction", pool_size=4), listen=listen, **g)


def _alive(pid: int) -> bool:
    """Running (a zombie left unreaped by its new parent counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _stop_pid(pid: int | None) -> None:
    if not pid or not _alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)


def _pid_file_pid(p) -> int | None:
    try:
        with open(os.path.join(p.tmp, "odyssey.pid")) as f:
            return int(f.read().strip() or 0) or None
    except (OSError, ValueError):
        return None


def _connect(p, autocommit: bool = True):
    con = psycopg2.connect(p.dsn(USER, "db1"), connect_timeout=10)
    con.autocommit = autocommit
    return con



class ClientLoop:
    """Threads that connect, query and disconnect in a tight loop, recording every failure."""

    def __init__(self, p, threads: int = 2, dsn: str | None = None):
        self.p = p
        self.dsn = dsn or p.dsn(USER, "db1")
        self.stop = threading.Event()
        self.ok = 0
        self.failures: list[str] = []
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        for t in self.threads:
            t.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                con = psycopg2.connect(self.dsn, connect_timeout=10)
                try:
                    with con.cursor() as cur:
                        cur.execute("select 1")
                        assert cur.fetchone()[0] == 1
                finally:
                    con.close()
                self.ok += 1
            except Exception as e:          # noqa: BLE001 - every failure is the finding
                self.failures.append((time.time(), repr(e)))

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(20)

    def explain(self, count: int = 3) -> str:
        """The first failures, each with the pooler log's lines of its second and the one
        before (the log's %t has seconds), for a failure that a rerun may not show again."""
        log = self.p.log().splitlines()
        out = []
        for when, error in self.failures[:count]:
            out.append(f"{error} at {when:.3f}:")
            for d in (0, 1):        # its second first
                stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when - d))
                out.extend(line for line in log if stamp in line)
        return "\n".join(out)


@pytest.mark.timeout(90)
def test_sigusr2_restart_under_a_client_loop(pg, rs_role):
    p = PoolerProcess(_config(), pg=pg)
    old_pid = p.pid
    new_pid = None
    loop = None
    busy = []
    try:
        assert _pid_file_pid(p) == old_pid
        for i in range(2):                 # long-lived clients, inside a transaction at the restart
            con = _connect(p, autocommit=False)
            one(con, f"insert into {TABLE} values ('before-{i}')")
            busy.append(con)
        loop = ClientLoop(p)
        wait_for(lambda: loop.ok >= 20, timeout=20, what="the client loop running")
        p.signal(signal.SIGUSR2)
        p.wait_log("handing the listen ports over to the new process", timeout=30)
        new_pid = wait_for(lambda: (_pid_file_pid(p) or 0) not in (0, old_pid) and _pid_file_pid(p),
                           timeout=10, what="the new pid in pid_file")
        # the transactions opened before the restart finish on the old process
        for i, con in enumerate(busy):
            one(con, f"insert into {TABLE} values ('after-{i}')")
            con.commit()
            con.autocommit = True          # no new transaction: the client is idle between queries
        # then each is closed at its next idle point, with the restart's words
        for con in busy:
            with pytest.raises(psycopg2.Error) as e:
                for _ in range(100):
                    one(con)
                    time.sleep(0.05)
            text = str(e.value)
            assert SHUTDOWN_TEXT in text or e.value.pgcode in (None, "57P01"), text
            if SHUTDOWN_TEXT in text:      # libpq read the FATAL (not only the closed socket)
                assert "restarting online" in text and "Try to reconnect" in text, text
            con.close()
        assert p.proc.wait(30) == 0, p.log()[-4000:]
        before = loop.ok
        wait_for(lambda: loop.ok >= before + 20, timeout=20, what="the loop served by the new process")
        loop.finish()
        if loop.failures:      # pytest.fail: an assert's message is cut to a few lines
            pytest.fail(loop.explain())
        assert f"the old process {old_pid} has exited: online restart complete" in p.wait_log("restart complete")
        assert _alive(new_pid) and _pid_file_pid(p) == new_pid
        con = _connect(p)
        assert one(con, "select count(*) from restart_t") == 4
        con.close()
        # the new process is a full pooler: it stops on SIGTERM and removes the pid file
        _stop_pid(new_pid)
        assert not _alive(new_pid)
        wait_for(lambda: _pid_file_pid(p) is None, timeout=10, what="the pid file removed")
    finally:
        if loop is not None:
            loop.finish()
        for con in busy:
            con.close()
        _stop_pid(new_pid or (_pid_file_pid(p) if _pid_file_pid(p) != old_pid else None))
        p.stop()


@pytest.mark.timeout(40)
def test_sigusr2_ignored_when_online_restart_is_off(pg, rs_role):
    # bindwith_reuseport no is valid only with enable_online_restart no (as C's config check)
    p = PoolerProcess(_config(enable_online_restart=False, bindwith_reuseport=False), pg=pg)
    try:
        p.signal(signal.SIGUSR2)
        p.wait_log("online restart signal ignored: enable_online_restart is no")
        assert "new process started" not in p.log()
        con = _connect(p)
        assert one(con) == 1
        con.close()
        assert _pid_file_pid(p) == p.pid
        assert_alive(p)
    finally:
        p.stop()


@pytest.mark.timeout(60)
def test_a_new_process_that_fails_leaves_the_old_one_serving(pg, rs_role):
    p = PoolerProcess(_config(), pg=pg)
    try:
        con = _connect(p)
        with open(p.config_path, "a") as f:        # the new process will refuse this config
            f.write("\nthis is { not a config\n")
        p.signal(signal.SIGUSR2)
        p.wait_log("before taking over: this one keeps serving", timeout=30)
        assert one(con, "select 2") == 2
        other = _connect(p)
        assert one(other) == 1
        other.close()
        con.close()
        assert _pid_file_pid(p) == p.pid
        # a second SIGUSR2 is not refused as 'already starting'
        p.signal(signal.SIGUSR2)
        wait_for(lambda: p.log().count("before taking over") >= 2, timeout=30, what="the second attempt")
        assert_alive(p)
    finally:
        p.stop()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("processes", [1, 2])
def test_sigusr2_carries_the_unix_socket_over(pg, rs_role, processes):
    """The new process binds its unix socket beside the old one's file and renames it over it:
    clients connecting by path never find no socket, and the old process leaves the file alone.
    With processes 2 the socket is process 0's, in the old group and in the new."""
    text = _config(listen={"host": None}, unix_socket_dir=Raw('"${tmp}"'), unix_socket_mode="0700",
                   processes=processes)
    text += 'listen {\n    host "127.0.0.1"\n    port ${port}\n}\n'      # for the start-up check
    p = PoolerProcess(text, pg=pg)
    old_pid = p.pid
    new_pid = None
    loop = None
    try:
        sock = os.path.join(p.tmp, f".s.PGSQL.{p.port}")
        # process 0 may be later; the file exists from bind(), it accepts from listen(): wait for the log
        wait_for(lambda: f"listening on {sock}" in p.log(), timeout=20, what="the unix socket")
        loop = ClientLoop(p, dsn=f"host={p.tmp} port={p.port} user={USER} dbname=db1")
        wait_for(lambda: loop.ok >= 20, timeout=20, what="the client loop running")
        first = os.stat(sock).st_ino
        p.signal(signal.SIGUSR2)
        assert p.proc.wait(30) == 0, p.log()[-4000:]
        new_pid = _pid_file_pid(p)
        assert new_pid not in (None, old_pid)
        before = loop.ok
        wait_for(lambda: loop.ok >= before + 20, timeout=20, what="the loop served by the new process")
        loop.finish()
        if loop.failures:      # pytest.fail: an assert's message is cut to a few lines
            pytest.fail(loop.explain())
        assert os.path.exists(sock) and os.stat(sock).st_ino != first     # the new process's socket
        owners = _pids_logging(p, f"listening on {sock}")
        if processes == 1:
            assert new_pid in owners
        else:
            assert _group(p, new_pid)[0] in owners
        _stop_pid(new_pid)
        wait_for(lambda: not os.path.exists(sock), timeout=10, what="the new process removing its socket")
    finally:
        if loop is not None:
            loop.finish()
        _stop_pid(new_pid or (_pid_file_pid(p) if _pid_file_pid(p) != old_pid else None))
        p.stop()


def _group(p, supervisor: int) -> dict[int, int]:
    """index -> pid of the pooler processes `supervisor` started (the last start of each)."""
    text = "\n".join(line for line in p.log().splitlines() if line.startswith(f"{supervisor} "))
    return {int(i): int(pid) for i, pid in re.findall(r"\(supervisor\) pooler process (\d+) started, pid (\d+)", text)}


def _pids_logging(p, needle: str) -> set[int]:
    return {int(line.split()[0]) for line in p.log().splitlines() if needle in line}


@pytest.mark.timeout(120)
def test_sigusr2_restarts_a_group_of_processes(pg, rs_role):
    """processes 2: SIGUSR2 to the supervisor starts a new supervisor with its own two processes;
    they take the port over, the old ones finish their transactions and exit, a cancel for an
    old process's client sent during the overlap reaches it through the new group, and a
    connect/query loop across it all sees no failure."""
    p = PoolerProcess(_config(processes=2, log_debug=True), pg=pg)
    old_sup = p.pid
    new_sup = None
    loop = None
    busy = []
    try:
        old = wait_for(lambda: len(_group(p, old_sup)) == 2
                       and _pids_logging(p, "listening on") >= set(_group(p, old_sup).values()) and _group(p, old_sup),
                       timeout=20, what="two pooler processes listening")
        assert _pid_file_pid(p) == old_sup
        for i in range(2):                 # long-lived clients, inside a transaction at the restart
            con = _connect(p, autocommit=False)
            one(con, f"insert into {TABLE} values ('before-{i}')")
            busy.append(con)
        canceled = _connect(p, autocommit=False)   # to be cancelled during the overlap
        one(canceled, "select 1")
        busy.append(canceled)
        loop = ClientLoop(p)
        wait_for(lambda: loop.ok >= 20, timeout=20, what="the client loop running")
        p.signal(signal.SIGUSR2)
        started = p.wait_log("new supervisor started, pid", timeout=10)
        new_sup = int(re.search(r"new supervisor started, pid (\d+)", started).group(1))
        p.wait_log("all 2 pooler processes listen; sending SIGTERM to the old process %d" % old_sup, timeout=30)
        p.wait_log("handing the listen ports over to the new supervisor %d" % new_sup, timeout=10)
        new = wait_for(lambda: len(_group(p, new_sup)) == 2 and _group(p, new_sup), timeout=10,
                       what="the new group's processes")
        assert not set(new.values()) & set(old.values())
        assert _pid_file_pid(p) == new_sup
        # while the old group drains, a SIGUSR2 to the new supervisor is refused
        os.kill(new_sup, signal.SIGUSR2)
        p.wait_log("online restart signal ignored: the old process %d is still draining" % old_sup, timeout=10)
        # the old listeners close: the new processes remove the steering program
        wait_for(lambda: _pids_logging(p, "the old listeners are closed: steering removed") >= set(new.values()),
                 timeout=20, what="steering removed in the new processes")
        # a cancel for a client of the old group arrives at the new group and is passed over
        timer = threading.Timer(0.5, canceled.cancel)
        timer.start()
        with pytest.raises(psycopg2.errors.QueryCanceled):
            one(canceled, "select pg_sleep(20)")
        timer.join()
        canceled.rollback()
        # the new process may log the pass a moment after the client has its error
        wait_for(lambda: _pids_logging(p, "cancel passed to the other group's pooler process") & set(new.values()),
                 timeout=10, what="the cancel passed on by a new process")
        canceled.autocommit = True
        # the transactions opened before the restart finish on the old processes
        for i, con in enumerate(busy[:2]):
            one(con, f"insert into {TABLE} values ('after-{i}')")
            con.commit()
            con.autocommit = True
        # then each old client is closed at its next idle point
        for con in busy:
            with pytest.raises(psycopg2.Error):
                for _ in range(200):
                    one(con)
                    time.sleep(0.05)
            con.close()
        assert p.proc.wait(30) == 0, p.log()[-4000:]
        for pid in old.values():
            assert not _alive(pid)
        assert "pooler process 0 (pid %d) exited with 0" % old[0] in p.log()
        before = loop.ok
        wait_for(lambda: loop.ok >= before + 40, timeout=20, what="the loop served by the new group")
        loop.finish()
        if loop.failures:      # pytest.fail: an assert's message is cut to a few lines
            pytest.fail(loop.explain())
        p.wait_log(f"the old process {old_sup} has exited: online restart complete", timeout=10)
        assert _alive(new_sup) and _pid_file_pid(p) == new_sup
        assert all(_alive(pid) for pid in new.values())
        # the new processes serve (the kernel's hash spreads the loop's connections over both)
        after_old = p.log().split(f"pooler process 1 (pid {old[1]}) exited")[-1]
        serving = {int(line.split()[0]) for line in after_old.splitlines() if "new client connection" in line}
        assert serving == set(new.values())
        con = _connect(p)
        assert one(con, "select count(*) from restart_t") == 4
        con.close()
        # the new supervisor is a full one: SIGTERM stops its group and removes the pid file
        _stop_pid(new_sup)
        assert not any(_alive(pid) for pid in new.values())
        wait_for(lambda: _pid_file_pid(p) is None, timeout=10, what="the pid file removed")
    finally:
        if loop is not None:
            loop.finish()
        for con in busy:
            con.close()
        _stop_pid(new_sup)
        p.stop()


@pytest.mark.timeout(90)
def test_a_new_group_that_cannot_take_over_leaves_the_old_one_serving(pg, rs_role):
    """The new config is valid but its processes cannot bind (an address not on this host): the
    new supervisor gives up, the old group keeps serving and pid_file names it again."""
    p = PoolerProcess(_config(processes=2), pg=pg)
    try:
        old = wait_for(lambda: len(_group(p, p.pid)) == 2 and p.log().count("listening on") == 2 and _group(p, p.pid),
                       timeout=20, what="two pooler processes listening")
        con = _connect(p)
        with open(p.config_path) as f:
            text = f.read()
        with open(p.config_path, "w") as f:
            f.write(text.replace('host "127.0.0.1"', 'host "192.0.2.1"', 1))     # TEST-NET-1: not ours
        p.signal(signal.SIGUSR2)
        p.wait_log("giving up the online restart", timeout=30)
        p.wait_log("before taking over: this group keeps serving", timeout=30)
        assert "handing the listen ports over" not in p.log()
        assert _pid_file_pid(p) == p.pid
        assert _group(p, p.pid) == old and all(_alive(pid) for pid in old.values())
        assert one(con, "select 2") == 2
        other = _connect(p)
        assert one(other) == 1
        other.close()
        con.close()
        # a second SIGUSR2 is not refused as 'already starting'
        p.signal(signal.SIGUSR2)
        wait_for(lambda: p.log().count("this group keeps serving") >= 2, timeout=30, what="the second attempt")
        assert_alive(p)
    finally:
        p.stop()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("before,after", [(1, 2), (2, 3), (2, 1), (3, 2), (1, 1)])
def test_sigusr2_changing_the_process_count(pg, rs_role, before, after):
    """The new config may change `processes`: a single process hands over to a new group, a
    group to a bigger or a smaller one or to a single process, with no failure in a client loop
    across it (a smaller new side binds each address as many times as it takes to have as many
    sockets as the old side, which keeps the steering exact: tests/odyssey_gevent/
    test_restart.py). With one old process stopped while it hands over, the others' listeners
    closed, new logins are not queued on it. A cancel for an old client sent once the old
    listeners have closed reaches it through the new side, single processes included (1 -> 1
    too: their keys carry no process index)."""
    p = PoolerProcess(_config(processes=before, log_debug=True), pg=pg)
    new_pid = None
    loop = None
    stopped = None
    canceled = None
    try:
        wait_for(lambda: p.log().count("listening on") == before, timeout=20, what="the old side listening")
        with open(p.config_path) as f:
            text = f.read()
        with open(p.config_path, "w") as f:
            f.write(text.replace(f"processes {before}", f"processes {after}"))
        canceled = _connect(p, autocommit=False)   # in a transaction: its old process waits for it
        one(canceled, "select 1")
        loop = ClientLoop(p)
        wait_for(lambda: loop.ok >= 20, timeout=20, what="the client loop running")
        p.signal(signal.SIGUSR2)
        if before > 1:
            # one old process is stopped while it hands over, its listener still open, and the
            # others close theirs: no new connection waits in the stopped one's queue (with too
            # few new sockets the kernel's hash would put some there, and their logins time out)
            old = _group(p, p.pid)
            p.wait_log("handing the listen ports over to the new supervisor", timeout=30)
            os.kill(old[before - 1], signal.SIGSTOP)
            stopped = old[before - 1]
            for i in range(before - 1):
                wait_for(lambda: _pids_logging(p, "graceful shutdown: no new connections") >= {old[i]}, timeout=10,
                         what=f"old process {i} closing its listeners")
            for i in range(20):
                con = psycopg2.connect(p.dsn(USER, "db1"), connect_timeout=5)
                assert one(con, f"select {i}") == i
                con.close()
            os.kill(stopped, signal.SIGCONT)
            stopped = None
        new_pid = wait_for(lambda: (_pid_file_pid(p) or 0) not in (0, p.pid) and _pid_file_pid(p), timeout=30,
                           what="the new pid in pid_file")
        if after > 1:
            new = wait_for(lambda: len(_group(p, new_pid)) == after and set(_group(p, new_pid).values()),
                           timeout=10, what="the new group's processes")
        else:
            new = {new_pid}
        # the old listeners close: the new side removes the steering program; a cancel for the
        # old client lands on the new side, which passes it over
        wait_for(lambda: _pids_logging(p, "the old listeners are closed: steering removed") >= new, timeout=20,
                 what="steering removed on the new side")
        # ... and not before the old side started handing over: a new process of a group that
        # looked at the port before all of its group listened once took the old listener for
        # one of its own and removed the steering the old side attached right after
        lines = p.log().splitlines()
        handing = min(i for i, line in enumerate(lines) if "handing the listen ports over" in line)
        assert all(i > handing for i, line in enumerate(lines) if "steering removed" in line), \
            [line for line in lines if "steering removed" in line or "handing the listen ports over" in line]
        timer = threading.Timer(0.5, canceled.cancel)
        timer.start()
        with pytest.raises(psycopg2.errors.QueryCanceled):
            one(canceled, "select pg_sleep(20)")
        timer.join()
        wait_for(lambda: _pids_logging(p, "cancel passed to the other group's pooler process") & new, timeout=10,
                 what="the cancel passed on by the new side")
        canceled.rollback()
        canceled.autocommit = True
        with pytest.raises(psycopg2.Error):      # then closed at its next idle point
            for _ in range(200):
                one(canceled)
                time.sleep(0.05)
        assert p.proc.wait(30) == 0, p.log()[-4000:]
        assert _alive(new_pid)
        wait_for(lambda: f"the old process {p.pid} has exited: online restart complete" in p.log(), timeout=10,
                 what="the new side seeing the old one gone")
        before_ok = loop.ok
        wait_for(lambda: loop.ok >= before_ok + 20, timeout=20, what="the loop served by the new side")
        loop.finish()
        if loop.failures:      # pytest.fail: an assert's message is cut to a few lines
            pytest.fail(loop.explain())
        if after < before:     # 2 -> 1 and 3 -> 2: two sockets each
            assert _pids_logging(p, "(2 sockets: the side this one took over from had more)") >= new
        if after > 1:
            assert "pooler process" in p.log().split(f"supervisor pid {new_pid}")[-1]
        else:
            assert f"pid {new_pid}" in p.log() and "supervisor pid %d" % new_pid not in p.log()
        _stop_pid(new_pid)
        wait_for(lambda: _pid_file_pid(p) is None, timeout=10, what="the pid file removed")
    finally:
        if stopped is not None:
            os.kill(stopped, signal.SIGCONT)
        if loop is not None:
            loop.finish()
        if canceled is not None:
            canceled.close()
        _stop_pid(new_pid or (_pid_file_pid(p) if _pid_file_pid(p) != p.pid else None))
        p.stop()
