"""Coroutines, sleep, Event and Cond (mirrors machinarium coroutine.c, sleep, cond.c).

A coroutine is a greenlet (a raw one, parent the hub) owned by the machine (OS thread + hub) that created it.
Cancel works from any machine; join works inside the owning machine only.
"""
from __future__ import annotations

import os
import threading

import gevent
from gevent import GreenletExit
from greenlet import greenlet as _RawGreenlet
from greenlet import getcurrent as _getcurrent
from gevent.hub import get_hub

from ._clock import seconds
from ._state import _local, report_error
from .errors import Cancelled, MachineError, TimedOut

_get_ident = threading.get_ident
_new = object.__new__

# gevent's Greenlet records by default who spawned it and the spawning Python stack (ten frames,
# each one's line number looked up): about 20,000 instructions per coroutine, a twentieth of a
# whole pgbench -C connection, for debugging data nothing here reads. Off unless the
# environment asks for it (GEVENT_TRACK_GREENLET_TREE).
if "GEVENT_TRACK_GREENLET_TREE" not in os.environ:
    gevent.config.track_greenlet_tree = False

# A machine keeps the greenlets of up to IDLE_MAX ended coroutines parked (Machine._idle) and
# runs its next coroutines in them (_serve): a new greenlet per coroutine cost its creation,
# its first frame's 16 KiB data stack chunk (CPython 3.11 gives each greenlet its own: an mmap,
# page faults and a munmap at its end) and its deallocation, once per client login.
IDLE_MAX = 64
_GO = object()      # the first item of a start switch: what a parked greenlet waits for


class Coroutine:
    """A named coroutine, started at once in the current machine (machine_coroutine_create_named).

    ``fn(*args, **kwargs)`` runs in a new greenlet of the current thread's hub, from the hub's
    next turn. An exception escaping ``fn`` is logged on the ``machinarium`` logger (with the
    coroutine name) and passed to ``error_hooks``; ``join()`` re-raises it. Cancellation is not
    an error.

    The greenlet is a raw ``greenlet.greenlet`` whose parent is the hub (what gevent's
    ``spawn_raw`` makes), not a ``gevent.Greenlet``: the latter's start, links, result and
    exception bookkeeping cost about 20,000 instructions per coroutine (a twentieth of a pgbench
    -C login), and this class keeps its own: ``dead``, ``join``, ``cancel`` and the machine's
    set of live coroutines. Code inside it may still use any gevent call (``getcurrent()`` is
    the raw greenlet, which gevent's waits, timeouts and sockets accept). In a machine the
    greenlet may be one an ended coroutine left parked (IDLE_MAX, _serve): one greenlet runs
    one coroutine at a time, so ``getcurrent()`` still names the running coroutine.
    """

    __slots__ = ("_name", "greenlet", "_loop", "_thread", "_machine", "_value", "_exc",
                 "_cancelled", "_done", "_start", "_links", "__weakref__")

    def __init__(self, fn, *args, name: str | None = None, **kwargs):
        g = self._setup(fn, name, get_hub())
        self._start = self._loop.run_callback(g.switch, _GO, self, fn, args, kwargs)

    def _setup(self, fn, name, hub):
        """The state both ways of starting share; returns the (not yet started) greenlet."""
        self._name = name or getattr(fn, "__qualname__", None) or repr(fn)
        self._loop = hub.loop
        self._thread = _get_ident()
        machine = self._machine = getattr(_local, "machine", None)     # current_machine()
        self._value = None
        self._exc = None
        self._cancelled = False
        self._done = False
        self._links = None
        self._start = None
        if machine is not None:
            machine._coroutines.add(self)
            idle = machine._idle
            if idle:                        # a parked greenlet of the machine's (see IDLE_MAX)
                g = self.greenlet = idle.pop()
                return g
        g = self.greenlet = _RawGreenlet(_serve, hub)
        return g

    @classmethod
    def run_now(cls, fn, *args, name: str | None = None, **kwargs) -> "Coroutine":
        """Create the coroutine and switch into it at once; return when it first waits or ends.

        Only from the hub itself (a watcher's or a loop callback): it saves the hub turn the
        usual start waits for. Elsewhere it is ``Coroutine(...)``."""
        hub = get_hub()
        if gevent.getcurrent() is not hub:
            return cls(fn, *args, name=name, **kwargs)
        self = cls.__new__(cls)
        self._setup(fn, name, hub).switch(_GO, self, fn, args, kwargs)
        return self

    @classmethod
    def start_yielding(cls, fn, *args, name: str | None = None, **kwargs) -> "Coroutine":
        """From a coroutine: create the coroutine and switch into it at once; the caller goes
        on at the hub's next turn, after the new one first waits or ends. The same order as
        ``Coroutine(...)`` then ``sleep(0)``, without the hub turn in between: one greenlet
        switch, a loop callback and sleep's waiter fewer. From the hub it is ``run_now`` (without
        its frames). (``start_yielding_args`` with the arguments as they are.)"""
        return start_yielding_args(fn, args, name, kwargs, cls)

    def _finish(self):
        self._done = True
        if self._machine is not None:
            self._machine._coroutines.discard(self)
        self._finish_links()

    def _finish_links(self):
        links = self._links
        if links is not None:
            self._links = None
            run_callback = self._loop.run_callback
            for cb in links:
                run_callback(cb)

    def link(self, cb) -> None:
        """Call ``cb()`` from the hub once the coroutine has ended (at once if it has).
        Owning machine (thread) only."""
        if self._done:
            self._loop.run_callback(cb)
        elif self._links is None:
            self._links = [cb]
        else:
            self._links.append(cb)

    def unlink(self, cb) -> None:
        links = self._links
        if links is not None and cb in links:
            links.remove(cb)

    # -- state ---------------------------------------------------------------------------
    @property
    def name(self) -> str:
        """The name given (a ``(format, args)`` pair is formatted when first read: a client's
        name is read only in an error report, and formatting it cost each login)."""
        name = self._name
        if name.__class__ is tuple:
            name = self._name = name[0] % name[1]
        return name

    @property
    def dead(self) -> bool:
        """True once the coroutine has finished (returned, failed or was cancelled)."""
        return self._done

    @property
    def cancelled(self) -> bool:
        """True if it ended because of a cancellation (Cancelled / GreenletExit)."""
        return self._cancelled

    @property
    def exception(self):
        """The exception that escaped ``fn``, or None."""
        return self._exc

    # -- operations ----------------------------------------------------------------------
    def join(self, timeout_ms=None):
        """Wait until the coroutine ends; return ``fn``'s result (None if it was cancelled).

        Re-raises the exception that escaped ``fn``. Raises ``TimedOut`` after ``timeout_ms``
        (the coroutine keeps running). Only from the owning machine (thread).
        """
        if _get_ident() != self._thread:
            raise MachineError("Coroutine.join() from another machine; use a Channel instead")
        if not self._done:
            if gevent.getcurrent() is self.greenlet:
                raise MachineError("a coroutine cannot join itself")
            _wait_done([self], seconds(timeout_ms))
            if not self._done:
                raise TimedOut(f"join {self.name!r} timed out")
        if self._exc is not None:
            raise self._exc
        return self._value

    def cancel(self) -> None:
        """Raise ``Cancelled`` inside the coroutine at its next switch (machine_cancel).

        Safe from any machine: from another thread the kill is posted into the owner's loop with
        ``run_callback_threadsafe``, which also wakes that loop. Does not wait; ``join()`` to wait.
        A coroutine cancelled before it started ends without running. A no-op once the
        coroutine is dead or its machine has exited.
        """
        if self._done:
            return
        if _get_ident() == self._thread:
            if self._start is not None:     # not started: it ends now, without running
                self._kill()
            else:
                self._loop.run_callback(self._kill)
            return
        try:
            self._loop.run_callback_threadsafe(self._kill)
        except ValueError:  # owner's loop already destroyed: the coroutine is gone anyway
            pass

    def _kill(self):
        """In the owner's hub: end the coroutine with Cancelled (before it starts: at once)."""
        if self._done:
            return
        start = self._start
        if start is not None:       # not started yet: never run fn
            self._start = None
            start.stop()
            self._cancelled = True
            self._finish()
            machine = self._machine     # its greenlet never ran this coroutine: parked again
            if machine is not None and machine._idle is not None and len(machine._idle) < IDLE_MAX:
                machine._idle.append(self.greenlet)
            return
        self.greenlet.throw(Cancelled)

    def __repr__(self):
        state = "dead" if self.dead else "running"
        return f"<Coroutine {self.name!r} {state}>"



_no_kwargs: dict = {}       # (never changed: _serve unpacks it into the call's own dict)

# a running machine's (loop, thread ident, machine) by its thread's hub, set and dropped by the
# machine (machine.py): start_yielding_args finds them with one dict lookup instead of a greenlet
# attribute load (hub.loop), get_ident() and a threading.local lookup (about 600 instructions a
# login); a thread without a machine is looked up as before
_MACHINES_BY_HUB: dict = {}


def start_yielding_args(fn, args: tuple, name=None, kwargs: dict = _no_kwargs, cls=None) -> Coroutine:
    """``Coroutine.start_yielding(fn, *args, name=name, **kwargs)`` with the arguments as they
    are: a plain function's call (the accept path starts every client here: the classmethod's
    load, which 3.11 does not specialize, and its packing of the arguments cost about 500
    instructions a login)."""
    hub = get_hub()
    current = _getcurrent()
    self = _new(cls or Coroutine)
    # _setup inline (a frame fewer per client: the accept loop starts each one here)
    self._name = name or getattr(fn, "__qualname__", None) or repr(fn)
    try:
        loop, ident, machine = _MACHINES_BY_HUB[hub]
    except KeyError:
        loop, ident, machine = hub.loop, _get_ident(), getattr(_local, "machine", None)   # current_machine()
    self._loop = loop
    self._thread = ident
    self._machine = machine
    self._value = self._exc = self._links = self._start = None
    self._cancelled = self._done = False
    g = None
    if machine is not None:
        machine._coroutines.add(self)
        idle = machine._idle
        if idle:                        # a parked greenlet of the machine's (see IDLE_MAX)
            g = idle.pop()
    if g is None:
        g = _RawGreenlet(_serve, hub)
    self.greenlet = g
    if current is hub:
        # run_now's case (the accept loop's hub callback): nothing to resume afterwards
        g.switch(_GO, self, fn, args, kwargs)
        return self
    resume = loop.run_callback(current.switch)
    try:
        g.switch(_GO, self, fn, args, kwargs)
    finally:
        resume.stop()           # resumed otherwise (a throw): it must not switch in later
    return self


def _serve(go, coro, fn, args, kwargs):
    """A coroutine greenlet's run: ``fn(*args, **kwargs)`` for ``coro``, then, when its machine
    has room for it (IDLE_MAX), the greenlet parks in the machine's idle list and runs the next
    coroutine switched in with ``(_GO, coro, fn, args, kwargs)``. A cancelled coroutine's
    greenlet ends. While parked, any other switch or throw (a wake-up meant for a coroutine
    that has ended) is ignored, until the machine ends and kills it (Machine._end_idle)."""
    me = None
    while True:
        coro._start = None
        try:
            coro._value = fn(*args, **kwargs)
        except GreenletExit:
            coro._cancelled = True
        except BaseException as e:  # noqa: BLE001 - logged and kept for join()
            coro._exc = e
            report_error(f"coroutine {coro.name!r}", e)
        finally:
            # coro._finish() inline (a frame fewer per coroutine: once per client login)
            coro._done = True
            machine = coro._machine
            if machine is not None:
                machine._coroutines.discard(coro)
            if coro._links is not None:
                coro._finish_links()
        if coro._cancelled or machine is None:
            return
        idle = machine._idle
        if idle is None or len(idle) >= IDLE_MAX:
            return
        coro = fn = args = kwargs = msg = None    # keep nothing of the ended coroutine alive
        if me is None:
            me = _getcurrent()
        idle.append(me)
        hub = me.parent
        while True:
            try:
                msg = hub.switch()
            except BaseException:           # noqa: BLE001
                if machine._idle is None:   # killed as its machine ends (Machine._end_idle)
                    return
                continue                    # a throw meant for an ended coroutine
            if msg.__class__ is tuple and len(msg) == 5 and msg[0] is _GO:
                break
        go, coro, fn, args, kwargs = msg


def _wait_done(coroutines, timeout) -> None:
    """Park the calling greenlet until every coroutine (all of this thread) is dead or
    ``timeout`` seconds (None: no limit) passed."""
    hub = get_hub()
    pending = [c for c in coroutines if not c._done]
    if not pending:
        return
    wake = _Wake(gevent.getcurrent())
    for c in pending:
        c.link(wake)
    timer = None
    if timeout is not None:
        timer = hub.loop.timer(timeout)
        timer.start(wake, False)
    try:
        while True:
            wake.active = True
            if hub.switch() is False:
                return
            if all(c._done for c in pending):
                return
    finally:
        wake.active = False
        for c in pending:
            c.unlink(wake)
        if timer is not None:
            timer.close()


def coroutine_create(fn, *args, name: str | None = None, **kwargs) -> Coroutine:
    """Alias of ``Coroutine(fn, *args, name=...)`` named like the C API."""
    return Coroutine(fn, *args, name=name, **kwargs)


def sleep(ms) -> None:
    """Suspend the current coroutine for ``ms`` milliseconds (machine_sleep). ``sleep(0)`` yields."""
    gevent.sleep(seconds(ms) or 0)


class _Wake:
    """One coroutine's wait on an Event: called (in the waiter's own loop) to switch back to it.

    It switches only while the wait is still active, so a wake-up that arrives late (after a
    timeout, or after another signal already woke it) never resumes the coroutine somewhere
    else. Created, activated and deactivated in the waiter's thread only."""

    __slots__ = ("glet", "active")

    def __init__(self, glet):
        self.glet = glet
        self.active = True

    def __call__(self, value=True):
        if self.active:
            self.active = False
            self.glet.switch(value)


class Wakeup:
    """A reusable wait of one coroutine for one wake-up (the router's queue for a server).

    Cheaper than an Event when exactly one coroutine waits and the waking side knows which:
    nothing is allocated per wait but the loop's callback. ``arm()`` in the coroutine that will
    wait, before the object is published to the wakers (e.g. under the lock that guards the
    queue it is put in); ``wake()`` from any thread, never blocks (``run_callback`` in the same
    thread, ``run_callback_threadsafe``, which wakes that loop, from another);
    ``park(timeout_ms) -> bool``: True when a wake-up resumed it, False on timeout. ``woken``
    says whether ``wake()`` was called since ``arm()``. Cancellation propagates as ``Cancelled``.

    Guarded (``arm()``): any number of ``wake()`` calls; the resume only switches while ``park``
    is parked and ``park`` re-checks ``woken``, so a wake-up that lands after its wait ended (a
    timeout raced it, a second one, one before ``park``) resumes nobody.

    Direct (``arm(direct=True)``), for a waker that takes the armed object out of where it was
    published: the wake-up switches straight into the coroutine (no Python frame in between),
    which is safe only under this contract: (1) at most one ``wake()`` per ``arm()``, made by
    whoever takes the object out, under the lock that guards it; (2) nothing but ``park`` may
    switch the coroutine out between ``arm()`` and the end of ``park``; (3) when ``park`` ends
    otherwise than by the wake-up (False, or an exception such as ``Cancelled``), the waiter
    takes that lock and either takes the object out itself (no wake-up will come) or, if a
    waker took it out, calls ``cancel()``, which drops the resume that waker queued.

    Callback (``arm_callback(cb, loop, ident)``, for a waiter with no coroutine parked, e.g. the
    relay's fast path queued in the hub): ``wake()`` runs ``cb()`` in that loop (that thread's
    hub) instead of resuming a coroutine; the same contract as direct mode applies (one wake-up
    per arm, by whoever takes the object out under the lock; ``cancel()`` drops a queued one).
    A later ``arm()`` makes it a coroutine's wait again. ``callback`` is the armed ``cb`` (None
    in a coroutine's wait); a callback arm needs no renewal for the next wait with the same cb
    (the same loop and thread): its ``woken`` is read by nobody, and ``cancel()`` of the
    callback an earlier wake() queued, which has run, does nothing. So a waiter queued again
    and again with one callback (the relay's, once per queued transaction) tests
    ``callback is not cb`` and calls ``arm_callback`` only then. A waker running in the hub of
    the waiter's own thread (a loop callback or watcher callback there, not a coroutine) may
    instead call ``callback()`` itself, at once (``woken`` need not be set: a callback arm's
    is read by nobody): then nothing is queued and ``cancel()`` has nothing to drop (the
    relay's reply walk does so with one worker).
    """

    __slots__ = ("woken", "callback", "_glet", "_switch", "_hub", "_loop", "_ident", "_parked", "_direct",
                 "_cb", "_resume_cb", "_own_cb", "_timeout_cb")

    def __init__(self):
        self.woken = False
        self._glet = self._switch = self._hub = self._loop = self._ident = self._cb = None
        self.callback = None
        self._parked = self._direct = False
        self._resume_cb = self._own_cb = self._resume   # bound once: what a guarded wake() schedules
        self._timeout_cb = self._timeout

    def arm(self, direct: bool = False) -> None:
        """Make the current coroutine the one to wake, and forget any earlier wake-up."""
        self.woken = False
        self._direct = direct
        self._cb = None
        self._resume_cb = self._own_cb
        self.callback = None
        glet = gevent.getcurrent()
        if glet is not self._glet:           # first wait, or another coroutine (a resumed relay)
            self._glet = glet
            self._switch = glet.switch
            hub = get_hub()
            if hub is not self._hub:
                self._hub = hub
                self._loop = hub.loop
                self._ident = _get_ident()

    def arm_callback(self, cb, loop, ident) -> None:
        """Make ``cb()``, run by `loop` (whose thread is `ident`), the wake-up (see above)."""
        self.woken = False
        self._direct = False
        self._cb = None
        self._resume_cb = self.callback = cb
        self._loop = loop
        self._ident = ident

    def wake(self) -> None:
        """Wake the armed coroutine. Any thread; never blocks."""
        self.woken = True
        loop = self._loop
        if loop is None:
            return
        cb = self._switch if self._direct else self._resume_cb
        try:
            if self._ident == _get_ident():
                self._cb = loop.run_callback(cb)
            else:
                self._cb = loop.run_callback_threadsafe(cb)
        except ValueError:  # the waiter's loop is destroyed
            pass

    def cancel(self) -> None:
        """Drop the resume a wake() queued, if it has not run (direct mode, rule 3)."""
        cb = self._cb
        if cb is not None:
            self._cb = None
            cb.stop()

    def _resume(self):
        if self._parked:
            self._parked = False
            self._glet.switch(True)

    def _timeout(self):
        if self._parked:
            self._parked = False
            self._glet.switch(False)

    def park(self, timeout_ms=None) -> bool:
        """Wait (in the armed coroutine) for wake(): True, or False after timeout_ms."""
        if self._direct:
            # exactly one switch back is on its way (the wake-up, even one that came before
            # this call, or the timer): wait for it
            if timeout_ms is None:
                return self._hub.switch() is not False
            timer = self._loop.timer(seconds(timeout_ms))
            timer.start(self._switch, False)
            try:
                return self._hub.switch() is not False
            finally:
                timer.close()
        if self.woken:
            return True
        if timeout_ms is None:
            timer = None
        else:
            timer = self._loop.timer(seconds(timeout_ms))
            timer.start(self._timeout_cb)
        try:
            switch = self._hub.switch
            while not self.woken:
                self._parked = True
                if switch() is False:       # our timer fired
                    break
            return self.woken
        finally:
            self._parked = False
            if timer is not None:
                timer.close()


class Event:
    """A flag that coroutines of any machine may wait on and any thread may ``signal()``.

    Manual reset: once signalled, ``wait()`` returns True at once until ``clear()``.
    ``wait(timeout_ms) -> bool``: True when signalled, False on timeout (machine_cond_wait style,
    no exception). Cancellation propagates as ``Cancelled``.

    A waiter parks its coroutine in its hub (a bare switch: no gevent Event or Waiter objects,
    this is the router's wait for a free server); ``signal()`` schedules the waiter's wake-up
    with ``loop.run_callback`` in the same thread, or ``run_callback_threadsafe`` (which wakes
    that loop) from another. The flag is published before waiters are looked up and waiters
    re-check it after registering, so no wake-up is lost.
    """

    __slots__ = ("_flag", "_waiters")
    _auto_reset = False

    def __init__(self):
        self._flag = False
        self._waiters = []  # [(thread ident, loop, _Wake)]

    def is_set(self) -> bool:
        return self._flag

    def clear(self) -> None:
        self._flag = False

    def signal(self) -> None:
        """Set the flag and wake the waiters. Never blocks; callable from any thread."""
        self._flag = True
        if not self._waiters:
            return
        me = _get_ident()
        for ident, loop, wake in tuple(self._waiters):
            try:
                if ident == me:
                    loop.run_callback(wake)
                else:
                    loop.run_callback_threadsafe(wake)
            except ValueError:  # waiter's loop destroyed
                pass

    set = signal

    def wait(self, timeout_ms=None) -> bool:
        if self._flag:
            if self._auto_reset:
                self._flag = False
            return True
        hub = get_hub()
        wake = _Wake(gevent.getcurrent())
        entry = (_get_ident(), hub.loop, wake)
        self._waiters.append(entry)  # publish, then re-check
        timer = None
        try:
            s = seconds(timeout_ms)
            if s is not None:
                timer = hub.loop.timer(s)
                timer.start(wake, False)
            while not self._flag:
                if not wake.active:      # a wake-up that found the flag taken (auto-reset)
                    wake.active = True
                if hub.switch() is False:     # our timer fired
                    if not self._flag:
                        return False
                    break
            if self._auto_reset:
                self._flag = False
            return True
        finally:
            wake.active = False
            if timer is not None:
                timer.stop()
                timer.close()
            self._waiters.remove(entry)


class Cond(Event):
    """machine_cond: like Event but auto-reset — a successful ``wait()`` consumes the signal.

    A ``signal()`` with nobody waiting is remembered until the next ``wait()``.
    """

    __slots__ = ()
    _auto_reset = True
