"""Workers and the worker pool: machines hosting client coroutines (mirrors Odyssey
sources/worker.c and worker_pool.c).

With `workers 1` there is no worker thread: clients run as coroutines of the system machine
(the seed's single-worker mode, no cross-thread hand-off). With N > 1 each worker is a machine
with a shared channel; the system machine detaches each accepted socket and sends its fd to the
next worker round-robin, which re-attaches it in its own hub.

cpu_affinity (affinity.py) pins each worker machine's thread as it starts, and with `workers 1`
the system machine's, which serves the clients then, as worker 0.
"""
from __future__ import annotations

import itertools
import os
import time

import machinarium
from machinarium.coroutine import start_yielding_args as _start_yielding
from odyssey_gevent import affinity
from odyssey_gevent.frontend import frontend
from odyssey_gevent.relay import wake_relays

MSG_CLIENT = "client"
MSG_STOP = "stop"
MSG_WAKE = "wake"      # graceful shutdown began: wake the relays parked in their wait


class _Pending:
    """An accepted client whose startup packet has not arrived yet, with no coroutine: the
    socket's read watcher (the one its reads use later) and a timer at client_login_timeout
    call it in the hub, which then starts the client's coroutine and switches into it at once.
    Such a login costs no hub turn for the coroutine's start and no recv that finds nothing
    and then waits. At the timeout the coroutine starts all the same and its read times out at
    once (the usual "client login timed out")."""

    __slots__ = ("instance", "io", "listen", "conn_type", "peer", "local", "deadline", "watcher", "timer",
                 "accepted")

    def __call__(self) -> None:
        watcher = self.watcher
        if watcher is None:         # the other one fired in the same loop turn
            return
        self.watcher = None
        watcher.stop()
        timer = self.timer
        if timer is not None:
            self.timer = None
            timer.close()
        peer = self.peer
        machinarium.Coroutine.run_now(frontend, self.instance, self.io, self.listen, self.conn_type, peer,
                                      self.local, self.deadline, None, self.accepted,
                                      name=("client %s:%s", peer) if peer else "client unix")


def _spawn(instance, io, listen, conn_type, peer, local) -> bool:
    """Start an accepted client's coroutine; when its startup packet is not there yet, only
    once it is (or its login times out): see _Pending. (Under load the packet is usually there
    at accept; on an idle pooler a third of pgbench -C's were not.) True when the coroutine
    started and ran up to its first wait before this returned, the caller's turn given up
    meanwhile (Coroutine.start_yielding): the accept loop need not yield for it."""
    # frontend.login_deadline inline (a frame fewer per login)
    login_ms = listen.client_login_timeout if listen is not None else 15000
    now = time.monotonic()              # (also the client's accept time: frontend()'s `accepted`)
    deadline = now + login_ms / 1000.0 if login_ms > 0 else 0
    try:
        # the startup packet's first bytes, if they are there: 8, as no first packet is shorter
        # (more could take bytes a client sends on after it without waiting), and an SSLRequest
        # (libpq's first packet unless sslmode is disable) or GSSENCRequest is then all read
        # (Io.recv_now inline: a frame fewer per login; os.read on the socket's fd, as the
        # relay's os.write: socket.recv parses its arguments from a tuple, about 200
        # instructions more; a closed socket's fileno() is -1, EBADF as before)
        head = os.read(io._raw.fileno(), 8)
    except BlockingIOError:
        head = None
    except OSError:                 # (reset already): the coroutine finds it out again
        head = None
    else:
        # (Coroutine.start_yielding with its arguments as they are: no classmethod load, no packing)
        _start_yielding(frontend, (instance, io, listen, conn_type, peer, local, deadline, head, now),
                        ("client %s:%s", peer) if peer else "client unix")
        return True
    p = _Pending()
    p.instance = instance
    p.io = io
    p.listen = listen
    p.conn_type = conn_type
    p.peer = peer
    p.local = local
    p.deadline = deadline
    p.accepted = time.monotonic()       # the client's time_accept (log_session's login and working time)
    p.timer = None
    watcher = p.watcher = io.sock._read_event
    watcher.start(p)
    if deadline:
        timer = p.timer = watcher.loop.timer(max(0.0, deadline - time.monotonic()))
        timer.start(p)
    return False


def worker_main(instance, channel, wid: int) -> None:
    affinity.pin_worker(instance, wid)
    while True:
        msg = channel.read()
        if msg.type == MSG_STOP:
            return
        if msg.type == MSG_WAKE:
            wake_relays()
            continue
        fd, listen, conn_type, peer, local = msg.data
        try:
            io = machinarium.Io.attach(fd)
        except OSError:
            try:
                os.close(fd)            # the socket is ours alone now: never leak it
            except OSError:
                pass
            instance.client_closed()
            continue
        _spawn(instance, io, listen, conn_type, peer, local)


class WorkerPool:
    def __init__(self, instance):
        self.instance = instance
        self.count = instance.workers
        self.machines = []
        self.channels = []
        self._next = itertools.count()

    def start(self) -> None:
        if self.count <= 1:
            # the calling thread (the system machine's) serves the clients: it is worker 0
            affinity.pin_worker(self.instance, 0)
            return
        for i in range(self.count):
            ch = machinarium.Channel(shared=True, name=f"worker{i}")
            m = machinarium.Machine(f"worker{i}", worker_main, self.instance, ch, i)
            self.channels.append(ch)
            self.machines.append(m)
            m.start()

    def feed(self, io, listen, conn_type, peer, local) -> bool:
        """Hand an accepted client over; True when its coroutine ran already in this thread,
        the caller's turn given up meanwhile (see _spawn)."""
        if self.count <= 1:
            return _spawn(self.instance, io, listen, conn_type, peer, local)
        ch = self.channels[next(self._next) % self.count]
        fd = io.detach()
        ch.write(machinarium.Msg(MSG_CLIENT, (fd, listen, conn_type, peer, local)))
        return False

    def wake(self) -> None:
        """Wake every parked relay (in the thread it runs in) to look at the shutdown flag."""
        if self.count <= 1:
            wake_relays()
            return
        for ch in self.channels:
            ch.write(machinarium.Msg(MSG_WAKE, None))

    def stop(self) -> None:
        for ch in self.channels:
            ch.write(machinarium.Msg(MSG_STOP, None))
        for m in self.machines:
            m.stop()
            m.join(2000)
