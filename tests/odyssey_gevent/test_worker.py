"""worker.py without PostgreSQL: the worker count, single-worker mode serving in the calling
machine, the round-robin hand-off of an accepted socket's fd to worker machines that serve it
there, a hand-off that cannot be re-attached, and stopping (Odyssey worker.c, worker_pool.c).

Each client here asks for a database no rule matches, so the real frontend answers it with
PostgreSQL's 3D000 and closes it: enough to see which machine served it (the log's %T)."""
from __future__ import annotations

import os
import re
import threading

import pytest
from gevent import socket as gsocket

import machinarium as mm
from kiwi import fe_read, fe_write
from kiwi.framer import Framer
from kiwi.header import BE
from odyssey_gevent import worker
from odyssey_gevent.config import reader
from odyssey_gevent.config.model import auto_workers
from odyssey_gevent.instance import Instance
from odyssey_gevent.logger import Logger
from odyssey_gevent.worker import WorkerPool

pytestmark = pytest.mark.timeout(10)

CONFIG = """
log_format "%T %i %m\\n"
workers {workers}
listen {{
    host "127.0.0.1"
    port 6432
}}
storage "pg" {{
    type "remote"
    host "127.0.0.1"
    port 1
}}
database "only" {{
    user "only" {{
        authentication "none"
        storage "pg"
        pool "session"
    }}
}}
"""


def _instance(log_file=None, workers=1):
    config = reader.loads(CONFIG.format(workers=workers), "worker.conf")
    return Instance(config, Logger(config.log_format, to_stdout=False, log_file=log_file), "worker.conf")


def _read_all(io, timeout_ms=3000) -> bytes:
    out = bytearray()
    buf = bytearray(4096)
    while (n := io.read_into(buf, timeout_ms)) > 0:
        out += buf[:n]
    return bytes(out)


def _client_id(reply: bytes) -> str:
    """The client id from the pooler's 3D000 (`odyssey: c<id>: route for ... is not found`)."""
    framer = Framer()
    framer.feed(reply)
    [err] = [fe_read.read_error(p) for t, p in framer if t == BE.ERROR_RESPONSE]
    assert err.sqlstate == "3D000" and err.message.endswith("route for 'nodb.nobody' is not found")
    return err.message.split(": ")[1]


def _threads(log) -> dict:
    """client id -> thread ident that logged its refusal."""
    return {cid: int(tid, 16) for tid, cid in re.findall(r"^([0-9a-f]+) (c\w+) route for", log.read_text(), re.M)}


def _hand_over(inst, pool, n):
    """Feed n accepted connections (socket pairs) as accept_loop does; return their app ends
    and the pooler-side Io objects fed."""
    apps, fed = [], []
    for i in range(n):
        a, b = gsocket.socketpair()
        pooler, app = mm.Io(a), mm.Io(b)
        assert inst.client_opened() is not False
        pool.feed(pooler, inst.config.listen[0], "host", ("127.0.0.1", 50000 + i), ("127.0.0.1", 6432))
        apps.append(app)
        fed.append(pooler)
    for app in apps:
        app.write(fe_write.startup_message({"user": "nobody", "database": "nodb"}))
    return apps, fed


def _wait_clients_zero(inst):
    for _ in range(500):
        if inst.clients == 0:
            return True
        mm.sleep(5)
    return False


# ----------------------------------------------------------------------------------------------
# worker count

@pytest.mark.parametrize("setting, expected", [("1", 1), ("3", 3), ('"auto"', auto_workers())])
def test_worker_count_from_the_config(setting, expected):
    inst = _instance(workers=setting)
    assert inst.workers == expected
    assert WorkerPool(inst).count == expected


# ----------------------------------------------------------------------------------------------
# workers 1: clients run in the calling (system) machine

def test_single_worker_serves_in_the_calling_machine(in_machine, tmp_path):
    log = tmp_path / "log"

    def body():
        inst = _instance(str(log), workers=1)
        pool = WorkerPool(inst)
        pool.start()
        try:
            [app], [pooler] = _hand_over(inst, pool, 1)
            reply = _read_all(app)
            app.close()
            return (pool.machines, pool.channels, _client_id(reply), threading.get_ident(),
                    pooler.closed, inst.clients)
        finally:
            pool.stop()

    machines, channels, cid, me, closed, clients = in_machine(body)
    assert machines == [] and channels == []
    assert _threads(log) == {cid: me}
    assert closed and clients == 0


# ----------------------------------------------------------------------------------------------
# workers N: fds handed round-robin to worker machines

def test_clients_are_handed_round_robin_to_worker_machines(in_machine, tmp_path):
    log = tmp_path / "log"

    def body():
        inst = _instance(str(log), workers=2)
        pool = WorkerPool(inst)
        pool.start()
        try:
            names = [m.name for m in pool.machines]
            running = [m.running for m in pool.machines]
            apps, fed = _hand_over(inst, pool, 3)
            detached = [io.sock.fileno() == -1 for io in fed]     # the fd left this machine
            ids = [_client_id(_read_all(app)) for app in apps]
            for app in apps:
                app.close()
            zero = _wait_clients_zero(inst)
            return names, running, detached, ids, threading.get_ident(), zero
        finally:
            pool.stop()
            stopped = [m.running for m in pool.machines]
            assert stopped == [False, False]

    names, running, detached, ids, me, zero = in_machine(body)
    assert names == ["worker0", "worker1"] and running == [True, True]
    assert detached == [True, True, True]
    threads = _threads(log)
    first, second, third = (threads[cid] for cid in ids)
    assert first == third != second                # worker0, worker1, worker0
    assert me not in (first, second)
    assert zero


def test_stop_ends_idle_workers(in_machine):
    def body():
        inst = _instance(workers=3)
        pool = WorkerPool(inst)
        pool.start()
        before = [m.running for m in pool.machines]
        pool.stop()
        return before, [m.running for m in pool.machines]

    assert in_machine(body) == ([True] * 3, [False] * 3)


def test_worker_main_survives_an_fd_it_cannot_attach(in_machine, tmp_path):
    """A hand-off whose fd is not a socket is counted as closed; the worker serves the next
    client and stops on MSG_STOP."""
    log = tmp_path / "log"

    def body():
        inst = _instance(str(log), workers=2)
        channel = mm.Channel(shared=True)
        m = mm.Machine("w", worker.worker_main, inst, channel, 0).start()
        r, w = os.pipe()
        try:
            inst.client_opened()
            channel.write(mm.Msg(worker.MSG_CLIENT, (r, None, "host", None, None)))
            a, b = gsocket.socketpair()
            app = mm.Io(b)
            inst.client_opened()
            listen = inst.config.listen[0]
            channel.write(mm.Msg(worker.MSG_CLIENT, (a.detach(), listen, "host", ("127.0.0.1", 1), None)))
            app.write(fe_write.startup_message({"user": "nobody", "database": "nodb"}))
            cid = _client_id(_read_all(app))
            app.close()
            zero = _wait_clients_zero(inst)
            channel.write(mm.Msg(worker.MSG_STOP, None))
            m.join(3000)
            try:                        # the worker closed the fd it could not use:
                os.write(w, b"x")           # the pipe has no reader left
                reader_left = True
            except BrokenPipeError:
                reader_left = False
            return cid, zero, m.running, reader_left
        finally:
            m.stop()
            os.close(w)

    cid, zero, running, reader_left = in_machine(body)
    assert cid in _threads(log)
    assert zero and running is False
    assert reader_left is False
