"""Waiting for readability on several connections at once (the relay's machine_cond-style wait
over a client and its server: Odyssey attaches both IOs to one condition)."""
from __future__ import annotations

from gevent import get_hub, getcurrent

from ._clock import seconds


def wait_any(ios, timeout_ms=None) -> int:
    """Wait until one of `ios` is readable. Returns a bit mask with bit i set for ios[i] (the
    first one the loop reported), or 0 when timeout_ms (None = forever) passed first.
    Cancellation propagates as the usual exception. Data already buffered inside a TLS object
    counts as readable.

    It reuses each socket's own read watcher (as gevent's socket waits do), so a wait costs no
    watcher creation: creating fresh libev io watchers per wait cost an fcntl and a failing
    epoll_ctl per fd on every transaction. Like gevent's own waits, only one coroutine may wait
    on a connection at a time."""
    bit = 1
    for io in ios:
        if io.is_tls and io.sock.pending():
            return bit
        bit <<= 1
    hub = get_hub()
    switch = getcurrent().switch
    watchers = []
    bit = 1
    try:
        for io in ios:
            w = io.sock._read_event
            w.start(switch, bit)
            watchers.append(w)
            bit <<= 1
        if timeout_ms is not None:
            timer = hub.loop.timer(seconds(timeout_ms))
            timer.start(switch, 0)
            try:
                return hub.switch()
            finally:
                timer.stop()
                timer.close()
        return hub.switch()
    finally:
        for w in watchers:
            w.stop()
