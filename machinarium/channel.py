"""Messages and channels (mirrors machinarium msg.c, channel.c).

A shared channel may be written from any machine (thread) and is read by one machine; a
non-shared channel lives inside one machine. Writes never block.
"""
from __future__ import annotations

from collections import deque
from time import monotonic as _monotonic
from typing import Any, NamedTuple

from gevent.event import Event as _HubEvent
from gevent.hub import get_hub

from ._clock import seconds
from .errors import MachineError, TimedOut



class Msg(NamedTuple):
    """machine_msg: a message type (an int or enum chosen by the application) and a payload.

    Payloads that cross machines must be plain data or file descriptors, never gevent objects.
    """

    type: Any
    data: Any = None


class Channel:
    """machine_channel: a FIFO of messages.

    ``Channel(shared=True)``: any thread may ``write()``; coroutines of exactly one machine
    ``read()`` (the first machine that has to wait binds the channel; reading from another
    machine while that one is alive raises ``MachineError``; after it exited, the channel rebinds). Wake-up goes through a libev ``async_`` watcher of the
    reader's loop, signalled only when a reader is waiting (the reader publishes its wait, then
    re-checks the queue, so no wake-up is lost).

    ``Channel(shared=False)``: the cheaper same-machine kind (deque + hub-local event, no
    watcher). Writing to it from another machine is a bug (the reader may never wake).

    ``limit``: optional bound for backpressure. ``write()`` returns False and drops nothing
    else (the message is *not* queued) when the channel already holds ``limit`` messages;
    otherwise it returns True. Without a limit ``write()`` always returns True.
    """

    __slots__ = ("name", "shared", "_q", "_limit", "_waiters", "_ev", "_async", "_loop")

    def __init__(self, shared: bool = True, limit: int | None = None, name: str | None = None):
        self.name = name
        self.shared = shared
        self._q = deque()
        self._limit = limit
        self._waiters = 0
        self._ev = _HubEvent()
        self._async = None
        self._loop = None  # the reading machine's loop (shared only)

    def __len__(self) -> int:
        return len(self._q)

    # -- any thread ----------------------------------------------------------------------
    def write(self, msg) -> bool:
        """Queue ``msg`` and wake a waiting reader. Never blocks. See ``limit`` for the result."""
        q = self._q
        if self._limit is not None and len(q) >= self._limit:
            return False
        q.append(msg)
        if self._waiters:
            if self.shared:
                try:
                    self._async.send()
                except (ValueError, AttributeError):  # reader's machine has exited
                    pass
            else:
                self._ev.set()
        return True

    # -- the reading machine -------------------------------------------------------------
    def read_nowait(self):
        """Pop the next message or return None when empty. Never waits."""
        try:
            return self._q.popleft()
        except IndexError:
            return None

    def read(self, timeout_ms=None):
        """Return the next message, waiting up to ``timeout_ms`` (None = forever).

        Raises ``TimedOut`` when nothing arrived in time; cancellation propagates as
        ``Cancelled``. Several coroutines of the reading machine may wait at once.
        """
        try:
            return self._q.popleft()
        except IndexError:
            return self._read_wait(timeout_ms)

    def _bind(self, loop):
        old = self._loop
        if old is not None and old is not loop and old.ptr:
            raise MachineError(f"channel {self.name!r} is read by another machine")
        # first reader, or the previous reader's machine exited (its loop is destroyed)
        w = loop.async_(ref=False)
        w.start(self._ev.set)
        self._loop = loop
        self._async = w

    def _read_wait(self, timeout_ms):
        q = self._q
        ev = self._ev
        shared = self.shared
        if shared:
            loop = get_hub().loop
            if self._loop is not loop:
                self._bind(loop)
        s = seconds(timeout_ms)
        end = None if s is None else _monotonic() + s
        self._waiters += 1  # publish first ...
        if shared and self._waiters == 1:
            self._async.ref = True  # a waiting reader keeps its hub alive (no LoopExit)
        try:
            while True:
                try:
                    return q.popleft()  # ... then re-check
                except IndexError:
                    pass
                ev.clear()
                if q:
                    continue
                if end is None:
                    ev.wait()
                else:
                    left = end - _monotonic()
                    if left <= 0 or not ev.wait(left):
                        try:
                            return q.popleft()
                        except IndexError:
                            raise TimedOut(f"channel {self.name!r} read timed out") from None
        finally:
            self._waiters -= 1
            if shared and not self._waiters:
                self._async.ref = False

    def close(self) -> None:
        """Stop the wake-up watcher (call in the reading machine). Queued messages stay readable."""
        w = self._async
        if w is not None:
            self._async = None
            self._loop = None
            try:
                w.stop()
                w.close()
            except ValueError:
                pass
