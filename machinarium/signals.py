"""Signals for the system machine (mirrors machine_signal_init / machine_signal_wait).

Only the main thread may watch signals: libev aborts the process when two loops watch the same
signal, and Python delivers signals to the main thread only. Machine threads block the system
signals, so the kernel routes them to the main thread, whose hub must keep running (never block
it natively) for them to arrive promptly.
"""
from __future__ import annotations

import signal as _signal
import threading

import gevent

from .channel import Channel, Msg
from .errors import MachineError

MSG_SIGNAL = "signal"
DEFAULT_SIGNALS = (_signal.SIGHUP, _signal.SIGUSR1, _signal.SIGUSR2, _signal.SIGINT,
                   _signal.SIGTERM)


class SignalWatcher:
    """Deliver ``signals`` as ``Msg(msg_type, signum)`` on ``channel`` (main thread only).

    ``channel`` defaults to a new non-shared channel, read with ``wait()``; pass a shared
    channel to forward signals to another machine. ``close()`` stops watching and restores the
    Python-level handlers that were installed before (e.g. KeyboardInterrupt for SIGINT).
    Usable as a context manager.
    """

    def __init__(self, channel: Channel | None = None, signals=DEFAULT_SIGNALS,
                 msg_type=MSG_SIGNAL):
        if threading.current_thread() is not threading.main_thread():
            raise MachineError("signals can only be watched by the system machine (main thread)")
        self.channel = channel if channel is not None else Channel(shared=False, name="signals")
        self.msg_type = msg_type
        self._handles = []
        self._previous = {}
        try:
            for sig in signals:
                sig = _signal.Signals(sig)
                self._previous[sig] = _signal.getsignal(sig)
                self._handles.append(gevent.signal_handler(sig, self._deliver, sig))
        except BaseException:
            self.close()
            raise

    def _deliver(self, sig):
        self.channel.write(Msg(self.msg_type, sig))

    def wait(self, timeout_ms=None) -> int:
        """Return the next delivered signal number; ``TimedOut`` after ``timeout_ms``."""
        return self.channel.read(timeout_ms).data

    def close(self) -> None:
        for h in self._handles:
            h.cancel()
        self._handles = []
        for sig, prev in self._previous.items():
            if prev is not None:
                try:
                    _signal.signal(sig, prev)
                except (ValueError, TypeError, OSError):
                    pass
        self._previous = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


_default_watcher: SignalWatcher | None = None


def signal_init(signals=DEFAULT_SIGNALS) -> SignalWatcher:
    """machine_signal_init: start the process-wide watcher used by ``signal_wait``."""
    global _default_watcher
    if _default_watcher is None:
        _default_watcher = SignalWatcher(signals=signals)
    return _default_watcher


def signal_wait(timeout_ms=None) -> int:
    """machine_signal_wait: the next signal number (``signal_init`` first, or it is called with
    the default signals). ``TimedOut`` after ``timeout_ms``. Main thread only."""
    return signal_init().wait(timeout_ms)


def signal_free() -> None:
    """Stop the ``signal_wait`` watcher and restore the previous handlers."""
    global _default_watcher
    if _default_watcher is not None:
        _default_watcher.close()
        _default_watcher = None
