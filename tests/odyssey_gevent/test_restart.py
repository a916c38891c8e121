"""Online restart and processes N, the parts that need no pooler: the restart drain's eject rate
(Instance.may_eject), the environment the new process reads, the SO_REUSEPORT steering program
against the kernel, and the cancel key's process tag."""
from __future__ import annotations

import os
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


def _steering_across_a_restart(monkeypatch, old_count, old_per, new_socks, close_order):
    """The old side's `old_count` processes with `old_per` sockets each attach the program; then
    the new side's `new_socks` (one list of sockets per process) join, and the old sockets close
    one by one in `close_order` (indexes in the order they joined). Returns, after each step,
    how many of 10 new connections the old sockets still open accepted; then removes the program
    and checks that the kernel's hash reaches every new process again."""
    monkeypatch.setattr(supervisor, "COUNT", old_count)
    monkeypatch.setattr(supervisor, "LISTENERS", old_per)
    old = [_listener()]
    port = old[0].getsockname()[1]
    old += [_listener(port) for _ in range(old_count * old_per - 1)]
    new = [[_listener(port) for _ in range(n)] for n in new_socks]
    clients = []
    reached_old = []
    try:
        for s in old:                     # each old process attaches the same program
            restart.steer_to_successor(s)
        open_old = list(old)
        for index in (None, *close_order):
            if index is not None:
                old[index].close()
                open_old.remove(old[index])
            clients += [socket.create_connection(("127.0.0.1", port)) for _ in range(10)]
            on_old = sum(_accepted(s) for s in open_old)
            assert on_old + sum(_accepted(s) for socks in new for s in socks) == 10
            reached_old.append(on_old)
        restart.unsteer(new[0][0])
        clients += [socket.create_connection(("127.0.0.1", port)) for _ in range(40)]
        counts = [sum(_accepted(s) for s in socks) for socks in new]
        assert sum(counts) == 40 and all(counts)      # the kernel's hash spreads them again
    finally:
        for c in clients:
            c.close()
        for s in old + [s for socks in new for s in socks]:
            s.close()
    return reached_old


@pytest.mark.parametrize("old_count,old_per,new_count,close_order", [
    (2, 1, 2, (0, 1)), (2, 1, 2, (1, 0)), (3, 1, 3, (1, 0, 2)), (3, 1, 3, (2, 1, 0)), (2, 1, 3, (0, 1)),
    (1, 1, 2, (0,)),
    # a smaller new side: each new process binds each address listeners_for(old, new) times
    (2, 1, 1, (0, 1)), (2, 1, 1, (1, 0)), (3, 1, 2, (0, 1, 2)), (3, 1, 2, (2, 1, 0)), (3, 1, 2, (1, 2, 0)),
    (4, 1, 3, (3, 0, 2, 1)), (3, 1, 1, (1, 2, 0)),
    # ... and a side that has more sockets than processes hands over in turn
    (1, 2, 1, (1, 0)), (1, 2, 2, (0, 1)), (2, 2, 3, (3, 0, 2, 1)), (2, 2, 3, (0, 1, 2, 3))])
def test_group_steering_holds_while_the_old_listeners_close(monkeypatch, old_count, old_per, new_count,
                                                             close_order):
    """The old side's program names socket T (T: its socket count, the first of the new side's).
    The kernel moves the group's last socket into a closed socket's slot, so while the old
    sockets close one after the other, in any order, no new connection lands on an old one, as
    long as the new side has at least T sockets."""
    per = supervisor.listeners_for(old_count * old_per, new_count)
    assert per * new_count >= old_count * old_per
    reached_old = _steering_across_a_restart(monkeypatch, old_count, old_per, [per] * new_count, close_order)
    assert reached_old == [0] * (len(close_order) + 1)


def test_a_smaller_new_side_with_one_socket_each_is_not_steered_exactly(monkeypatch):
    """Why the new side binds more sockets: with 2 old sockets and 1 new one, once one old socket
    has closed the program's index 2 is past the end and the kernel's hash hands connections to
    the old socket still open (40 connections: all on the new one has odds 2^-40)."""
    monkeypatch.setattr(supervisor, "COUNT", 2)
    monkeypatch.setattr(supervisor, "LISTENERS", 1)
    old = [_listener()]
    port = old[0].getsockname()[1]
    old.append(_listener(port))
    new = _listener(port)
    clients = []
    try:
        for s in old:
            restart.steer_to_successor(s)
        old[0].close()
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(40)]
        on_old = _accepted(old[1])
        assert on_old > 0 and on_old + _accepted(new) == 40
    finally:
        for c in clients:
            c.close()
        for s in old + [new]:
            s.close()


@pytest.mark.parametrize("old_total,count,expected", [(1, 1, 1), (2, 1, 2), (3, 2, 2), (4, 3, 2), (2, 4, 1),
                                                      (0, 3, 1), (5, 5, 1), (9, 4, 3)])
def test_listeners_per_process(old_total, count, expected):
    assert supervisor.listeners_for(old_total, count) == expected


class _Server:
    def __init__(self, sock):
        self.unix_path = None
        self.io = type("Io", (), {"sock": sock, "closed": False})()


def test_the_old_sockets_are_those_that_listened_before_ours(monkeypatch):
    """The steering goes once none of the sockets that listened on our address before we bound
    ours (the old side's) is left: neither a sibling that binds after we looked nor a count of
    listeners decides it (with a count, a process that looked before its whole group listened
    took the old side's socket for a sibling's and removed the steering too early)."""
    theirs = _listener()
    port = theirs.getsockname()[1]
    other = _listener()                 # another address: never ours to wait for
    old = restart.old_sockets()         # a single process: it looks itself, before binding
    ours = _listener(port)
    sibling = _listener(port)           # a sibling of a group binds after the look
    try:
        assert os.fstat(theirs.fileno()).st_ino in old and os.fstat(ours.fileno()).st_ino not in old
        servers = [_Server(ours)]
        assert restart.old_ones_listen(servers, old)
        theirs.close()
        assert not restart.old_ones_listen(servers, old)    # the sibling and the other address do not count
        # a process of a new group has the look from its supervisor, which took it before any bound
        monkeypatch.setattr(supervisor, "_ID", (0, 2, os.getpid()))
        monkeypatch.setenv(restart.OLD_SOCKETS_ENV, "%d,%d" % (os.fstat(sibling.fileno()).st_ino, 7))
        assert restart.old_sockets() == {os.fstat(sibling.fileno()).st_ino, 7}
        assert restart.old_ones_listen(servers, restart.old_sockets())
        monkeypatch.setenv(restart.OLD_SOCKETS_ENV, "")
        assert restart.old_sockets() == frozenset()
    finally:
        for s in (theirs, other, ours, sibling):
            s.close()
