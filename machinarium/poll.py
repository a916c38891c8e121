"""Waiting for readability on several connections at once (the relay's machine_cond-style wait
over a client and its server: Odyssey attaches both IOs to one condition)."""
from __future__ import annotations

from gevent import get_hub, getcurrent

from ._clock import seconds


def wait_any(ios, timeout_ms=None) -> int:
    """Wait until one of `ios` is readable. Returns a bit mask with bit i set for ios[i] (the
    first one the loop reported), or 0 when timeout_ms (None = forever) passed first.
    Cancellation propagates as the usual exception. Data already buffered inside a TLS object
    counts as readable."""
    bit = 1
    for io in ios:
        if io.is_tls and io.sock.pending():
            return bit
        bit <<= 1
    hub = get_hub()
    loop = hub.loop
    switch = getcurrent().switch
    watchers = []
    bit = 1
    for io in ios:
        w = loop.io(io.fileno(), 1)
        w.start(switch, bit)
        watchers.append(w)
        bit <<= 1
    timer = None
    if timeout_ms is not None:
        timer = loop.timer(seconds(timeout_ms))
        timer.start(switch, 0)
    try:
        return hub.switch()
    finally:
        for w in watchers:
            w.stop()
            w.close()
        if timer is not None:
            timer.stop()
            timer.close()
