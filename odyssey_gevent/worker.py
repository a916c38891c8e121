"""Workers and the worker pool: machines hosting client coroutines (mirrors Odyssey
sources/worker.c and worker_pool.c).

With `workers 1` there is no worker thread: clients run as coroutines of the system machine
(the seed's single-worker mode, no cross-thread hand-off). With N > 1 each worker is a machine
with a shared channel; the system machine detaches each accepted socket and sends its fd to the
next worker round-robin, which re-attaches it in its own hub.
"""
from __future__ import annotations

import itertools
import os

import machinarium
from odyssey_gevent.frontend import frontend
from odyssey_gevent.relay import wake_relays

MSG_CLIENT = "client"
MSG_STOP = "stop"
MSG_WAKE = "wake"      # graceful shutdown began: wake the relays parked in their wait


def _spawn(instance, io, listen, conn_type, peer, local) -> None:
    machinarium.coroutine_create(frontend, instance, io, listen, conn_type, peer, local,
                                 name=f"client {peer[0]}:{peer[1]}" if peer else "client unix")


def worker_main(instance, channel) -> None:
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
            return
        for i in range(self.count):
            ch = machinarium.Channel(shared=True, name=f"worker{i}")
            m = machinarium.Machine(f"worker{i}", worker_main, self.instance, ch)
            self.channels.append(ch)
            self.machines.append(m)
            m.start()

    def feed(self, io, listen, conn_type, peer, local) -> None:
        if self.count <= 1:
            _spawn(self.instance, io, listen, conn_type, peer, local)
            return
        ch = self.channels[next(self._next) % self.count]
        fd = io.detach()
        ch.write(machinarium.Msg(MSG_CLIENT, (fd, listen, conn_type, peer, local)))

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
