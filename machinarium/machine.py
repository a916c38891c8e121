"""Machines: OS threads that each run one gevent hub (mirrors machinarium machine.c).

Only channels (and Events/Conds, Coroutine.cancel, Machine.call/stop) cross machines; gevent
objects never do. Each machine creates its hub on start and destroys it (and its libev loop,
2 fds) on exit.
"""
from __future__ import annotations

import functools
import itertools
import signal
import threading

import greenlet
from gevent.event import Event as _HubEvent
from gevent.hub import get_hub

from ._clock import seconds
from ._state import _local, current_machine, log, watch_hub_errors
from .coroutine import _MACHINES_BY_HUB, Coroutine, Event, _wait_done
from .errors import MachineError, TimedOut

# Signals the system machine handles; machine threads block them so the kernel delivers them to
# the main thread only (Odyssey blocks them in every non-system thread too).
SYSTEM_SIGNALS = (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT, signal.SIGTERM)

_ids = itertools.count(1)


class Machine:
    """machine_create: a named OS thread with its own gevent hub running ``main(*args, **kwargs)``.

    Lifecycle: ``start()`` launches the thread (``run()`` instead runs the machine in the
    *calling* thread: that is how the main thread hosts the "system" machine). The machine runs
    while its main coroutine runs; ``stop()`` (from any thread) cancels the main coroutine. When
    main ends, every coroutine still alive in the machine is cancelled and given
    ``shutdown_timeout_ms`` to finish, then the hub and its loop are destroyed.

    ``context`` is a dict private to the machine (machine_thread_private). ``current_machine()``
    returns the Machine running in the calling thread.
    """

    def __init__(self, name: str, main, *args, shutdown_timeout_ms: int = 1000, **kwargs):
        self.id = next(_ids)
        self.name = name
        self.context: dict = {}
        self.shutdown_timeout_ms = shutdown_timeout_ms
        self.main_coroutine: Coroutine | None = None
        self._main = main
        self._args = args
        self._kwargs = kwargs
        self._coroutines: set = set()
        self._idle: list | None = []    # parked greenlets of ended coroutines (coroutine.IDLE_MAX)
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._done = Event()  # cross-thread, cooperative for joiners in other machines
        self._thread: threading.Thread | None = None
        self._ident = None
        self._loop = None
        self._stop_watcher = None
        self._stop_requested = False
        self._started = False
        self._exited = False

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> "Machine":
        """Start the machine in a new OS thread; returns once its hub is ready for call()/stop()."""
        self._claim()
        t = threading.Thread(target=self._thread_main, name=self.name, daemon=True)
        self._thread = t
        t.start()
        self._ready.wait()
        return self

    def run(self):
        """Run the machine in the calling thread until it stops; return main's result.

        Use it to make the main thread the "system" machine (the only one that may watch
        signals). The hub is destroyed on exit unless this is the main thread, whose hub
        (libev's default loop) is left for later gevent use.
        """
        self._claim()
        self._thread = threading.current_thread()
        destroy = self._thread is not threading.main_thread()
        self._body(destroy)
        c = self.main_coroutine
        if c is not None and c.exception is None:
            return c._value
        return None

    def _claim(self):
        with self._lock:
            if self._started:
                raise MachineError(f"machine {self.name!r} already started")
            self._started = True

    def _thread_main(self):
        try:
            signal.pthread_sigmask(signal.SIG_BLOCK, SYSTEM_SIGNALS)
        except (AttributeError, OSError, ValueError):
            pass
        self._body(True)

    def _body(self, destroy_hub: bool):
        if current_machine() is not None:
            self._ready.set()
            raise MachineError("this thread already runs a machine")
        hub = get_hub()
        watch_hub_errors(hub)
        loop = hub.loop
        stop_ev = _HubEvent()
        w = loop.async_()  # ref'd for the machine's whole life: no LoopExit while idle
        w.start(stop_ev.set)
        _local.machine = self
        _MACHINES_BY_HUB[hub] = (loop, threading.get_ident(), self)     # (see coroutine.py)
        with self._lock:
            self._loop = loop
            self._ident = threading.get_ident()
            self._stop_watcher = w
        self._ready.set()
        try:
            if not self._stop_requested:
                main = Coroutine(self._main, *self._args, name=f"{self.name}.main", **self._kwargs)
                self.main_coroutine = main
                main.link(stop_ev.set)
                while not main.dead:
                    stop_ev.wait()
                    stop_ev.clear()
                    if self._stop_requested:
                        main.cancel()
                        break
            self._shutdown()
        finally:
            with self._lock:
                self._exited = True
                self._stop_watcher = None
                self._loop = None
            w.stop()
            w.close()
            self._end_idle()
            _MACHINES_BY_HUB.pop(hub, None)
            _local.machine = None
            if destroy_hub:
                hub.destroy(destroy_loop=True)
            self._done.signal()

    def _end_idle(self) -> None:
        """End the parked greenlets of ended coroutines (coroutine.IDLE_MAX): each is killed
        (GreenletExit) and returns here, whoever still refers to it."""
        idle, self._idle = self._idle, None
        here = greenlet.getcurrent()
        for g in idle:
            try:
                g.parent = here
                g.throw()
            except Exception:   # noqa: BLE001 - one that cannot be switched to is left to the GC
                pass

    def _shutdown(self):
        pending = [c for c in list(self._coroutines) if not c.dead]
        if self.main_coroutine is not None and not self.main_coroutine.dead:
            pending.append(self.main_coroutine)
        for c in pending:
            c.cancel()
        if pending:
            _wait_done(pending, seconds(self.shutdown_timeout_ms))
            stuck = [c.name for c in pending if not c.dead]
            if stuck:
                log.warning("machine %r: coroutines ignored cancellation: %s", self.name, stuck)

    def stop(self) -> None:
        """Ask the machine to stop (machine_stop). From any thread; never blocks. Idempotent."""
        with self._lock:
            self._stop_requested = True
            w = self._stop_watcher
            if w is not None:
                w.send()

    def join(self, timeout_ms=None) -> None:
        """Wait until the machine's thread has finished (machine_wait).

        Raises ``TimedOut`` after ``timeout_ms``. Inside another machine the wait is cooperative
        (its other coroutines keep running); elsewhere it blocks the calling thread natively.
        """
        t = self._thread
        if t is None:
            raise MachineError(f"machine {self.name!r} was never started")
        if t is threading.current_thread():
            raise MachineError("a machine cannot join itself")
        if current_machine() is not None:
            if not self._done.wait(timeout_ms):
                raise TimedOut(f"join machine {self.name!r} timed out")
            t.join()  # the thread is past its last statement; this only reaps it
            return
        t.join(seconds(timeout_ms))
        if t.is_alive():
            raise TimedOut(f"join machine {self.name!r} timed out")

    def call(self, fn, *args, name: str | None = None, **kwargs):
        """Run ``fn(*args, **kwargs)`` as a new coroutine inside this machine, from any thread.

        From the machine's own thread the Coroutine is created at once and returned; from another
        thread the creation is posted with ``run_callback_threadsafe`` and None is returned (use a
        channel for results). Raises ``MachineError`` if the machine is not running.
        """
        if threading.get_ident() == self._ident and not self._exited:
            return Coroutine(fn, *args, name=name, **kwargs)
        with self._lock:
            if self._loop is None:
                raise MachineError(f"machine {self.name!r} is not running")
            self._loop.run_callback_threadsafe(
                functools.partial(Coroutine, fn, *args, name=name, **kwargs))
        return None

    # -- state ---------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._started and not self._exited

    @property
    def stopping(self) -> bool:
        """True once stop() was called (a long-running main may poll it)."""
        return self._stop_requested

    def __repr__(self):
        return f"<Machine {self.id} {self.name!r} {'running' if self.running else 'not running'}>"


def machine_create(name: str, main, *args, **kwargs) -> Machine:
    """Create and start a machine (the C machine_create); returns the started Machine."""
    return Machine(name, main, *args, **kwargs).start()


def stop_current() -> None:
    """machine_stop_current: ask the calling thread's machine to stop."""
    m = current_machine()
    if m is None:
        raise MachineError("no machine runs in this thread")
    m.stop()
