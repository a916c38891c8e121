"""Milliseconds to seconds in exactly one place, and the deadline that turns a gevent timeout into TimedOut."""
from __future__ import annotations

import time

from gevent import Timeout

from .errors import TimedOut


def seconds(timeout_ms):
    """``None`` (wait forever) stays ``None``; negative means 0 (expire at once)."""
    if timeout_ms is None:
        return None
    if timeout_ms <= 0:
        return 0.0
    return timeout_ms / 1000.0


def time_ms() -> int:
    """Monotonic clock in milliseconds (machine_time_ms)."""
    return time.monotonic_ns() // 1_000_000


def time_us() -> int:
    """Monotonic clock in microseconds (machine_time_us)."""
    return time.monotonic_ns() // 1_000


class deadline:
    """``with deadline(timeout_ms):`` bounds the whole block; expiry raises ``TimedOut``.

    ``timeout_ms=None`` costs nothing (no timer). Only *our* timer becomes ``TimedOut``: an outer
    ``gevent.Timeout`` or a cancellation passes through untouched.
    """

    __slots__ = ("_timer", "_what")

    def __init__(self, timeout_ms, what: str = "operation"):
        s = seconds(timeout_ms)
        self._timer = None if s is None else Timeout(s)
        self._what = what

    def __enter__(self):
        if self._timer is not None:
            self._timer.start()
        return self

    def __exit__(self, typ, value, tb):
        timer = self._timer
        if timer is None:
            return False
        timer.close()
        if value is timer:
            raise TimedOut(f"{self._what} timed out") from None
        return False
