"""machinarium errors: the three outcomes of a blocking call (mirrors machine_timedout/machine_cancelled/machine_errno)."""
from __future__ import annotations

from gevent import GreenletExit


class MachineError(Exception):
    """Misuse of the runtime (wrong thread, signal outside the main thread, moving a TLS socket...)."""


class TimedOut(MachineError):
    """A blocking call ran out of its ``timeout_ms``.

    Deliberately *not* an ``OSError`` (nor the builtin ``TimeoutError``, which is one), so a
    timeout is never mistaken for an IO error by ``except OSError``.
    """


class Cancelled(GreenletExit):
    """Raised inside a coroutine cancelled with ``Coroutine.cancel()``.

    A ``GreenletExit`` subclass (so a ``BaseException``): ``except Exception`` does not swallow
    it, and gevent treats it as a normal exit, not an error. A plain ``GreenletExit`` (e.g. from
    ``gevent.kill``) means the same thing; catch ``GreenletExit`` to handle both.
    """


class ConnectionClosed(ConnectionError):
    """The peer closed the connection (EOF) where more bytes were required. An ``OSError``."""
