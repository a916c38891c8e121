"""Online restart and processes N, the parts that need no pooler: the restart drain's eject rate
(Instance.may_eject), the environment the new process reads, the SO_REUSEPORT steering program
against the kernel, and the cancel key's process tag."""
from __future__ import annotations

import socket
import sys

import pytest

import machinarium
from odyssey_gevent import restart, supervisor
from odyssey_gevent.config.model import Config, ConnDropOptions
from odyssey_gevent.instance import Instance
from odyssey_gevent.logger import Logger


def _instance(**drop):
    inst = Instance(Config(conn_drop_options=ConnDropOptions(**drop)), Logger(to_stdout=False), "test.conf")
    return inst


@pytest.fixture
def clock(monkeypatch):
    now = [1_000_000]
    monkeypatch.setattr(machinarium, "time_ms", lambda: now[0])
    return now


def test_sigterm_ejects_every_idle_client(clock):
    inst = _instance(rate=1)
    assert all(inst.may_eject() for _ in range(10))     # no successor: a plain graceful shutdown


def test_restart_drain_ejects_at_the_conn_drop_rate(clock):
    inst = _instance(rate=2, interval_ms=1000)
    inst.successor = 4242
    assert [inst.may_eject() for _ in range(3)] == [True, True, False]
    clock[0] += 999
    assert not inst.may_eject()
    clock[0] += 1
    assert [inst.may_eject() for _ in range(3)] == [True, True, False]


def test_restart_drain_with_drop_disabled_or_no_rate(clock):
    off = _instance(drop_enabled=False)
    off.successor = 4242
    assert not any(off.may_eject() for _ in range(5))
    unlimited = _instance(rate=0)
    unlimited.successor = 4242
    assert all(unlimited.may_eject() for _ in range(100))


@pytest.mark.parametrize("value,expected", [(None, None), ("", None), ("123", 123), ("x1", None), ("1", None)])
def test_inherited_ppid(monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv(restart.ENV, raising=False)
    else:
        monkeypatch.setenv(restart.ENV, value)
    assert restart.inherited_ppid() == expected


def test_the_new_process_runs_the_same_command():
    argv = restart.argv()
    assert argv[0] == sys.executable and argv[1:] == sys.orig_argv[1:]


def _listener(port: int = 0) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("127.0.0.1", port))
    s.listen(64)
    s.setblocking(False)
    return s


def _accepted(s: socket.socket) -> int:
    n = 0
    while True:
        try:
            conn, _ = s.accept()
        except BlockingIOError:
            return n
        conn.close()
        n += 1


def test_steering_sends_new_connections_to_the_newer_socket():
    old = _listener()
    port = old.getsockname()[1]
    new = _listener(port)
    clients = []
    try:
        restart.steer_to_successor(old)
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
        assert (_accepted(old), _accepted(new)) == (0, 20)
        old.close()                       # the index is out of range now: the kernel's hash, one socket
        clients += [socket.create_connection(("127.0.0.1", port)) for _ in range(5)]
        assert _accepted(new) == 5
        restart.unsteer(new)
        restart.unsteer(new)              # none left: no error
    finally:
        for c in clients:
            c.close()
        old.close()
        new.close()


@pytest.mark.parametrize("value,expected", [("1/4/123", (1, 4, 123)), ("0/1/9", (0, 1, 9)), ("4/4/1", None),
                                            ("1/300/1", None), ("x", None), ("", None)])
def test_process_identity(monkeypatch, value, expected):
    monkeypatch.setenv(supervisor.ENV, value)
    assert supervisor._identity() == expected


def test_the_cancel_key_names_its_process():
    for index in (0, 1, 7, 255):
        secret = (0x00ABCDEF & 0xFFFFFF) | (index << 24)
        assert supervisor.owner(secret) == index
    assert supervisor.KEY_TAG is None and supervisor.COUNT == 1     # this test process is no pooler child


@pytest.mark.parametrize("old_count,new_count,close_order", [
    (2, 2, (0, 1)), (2, 2, (1, 0)), (3, 3, (1, 0, 2)), (3, 3, (2, 1, 0)), (2, 3, (0, 1)), (1, 2, (0,))])
def test_group_steering_holds_while_the_old_listeners_close(monkeypatch, old_count, new_count, close_order):
    """processes N: the old group's program names socket N (the first of the new group's). The
    kernel moves the group's last socket into a closed socket's slot, so while the old sockets
    close one after the other, in any order, no new connection lands on an old one."""
    monkeypatch.setattr(supervisor, "COUNT", old_count)
    old = [_listener()]
    port = old[0].getsockname()[1]
    old += [_listener(port) for _ in range(old_count - 1)]
    new = [_listener(port) for _ in range(new_count)]
    clients = []
    try:
        for s in old:                     # each old process attaches the same program
            restart.steer_to_successor(s)
        open_old = list(old)
        for index in (None, *close_order):
            if index is not None:
                old[index].close()
                open_old.remove(old[index])
            clients += [socket.create_connection(("127.0.0.1", port)) for _ in range(10)]
            assert [_accepted(s) for s in open_old] == [0] * len(open_old)
            assert sum(_accepted(s) for s in new) == 10
        restart.unsteer(new[0])
        clients += [socket.create_connection(("127.0.0.1", port)) for _ in range(40)]
        counts = [_accepted(s) for s in new]
        assert sum(counts) == 40 and all(counts)      # the kernel's hash spreads them again
    finally:
        for c in clients:
            c.close()
        for s in old + new:
            s.close()


class _Server:
    def __init__(self, sock):
        self.unix_path = None
        self.io = type("Io", (), {"sock": sock, "closed": False})()


def test_only_ours_listen_counts_the_listeners_on_our_address():
    ours = [_listener()]
    port = ours[0].getsockname()[1]
    ours.append(_listener(port))
    theirs = _listener(port)
    try:
        servers = [_Server(s) for s in ours]
        assert not restart.only_ours_listen(servers, 2)       # three listen on the port
        assert restart.only_ours_listen(servers, 3)
        theirs.close()
        assert restart.only_ours_listen(servers, 2)
    finally:
        for s in ours + [theirs]:
            s.close()
