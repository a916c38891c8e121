"""Waiting for a server, as the client sees it: `pool_notice_after_waiting_ms` (mirrors the
waiting notices of Odyssey sources/router.c).

With the route's `pool_notice_after_waiting_ms` >= 0, a client that has waited that long for a
server gets a NOTICE `waiting for free backend connection`, and when the wait ends (a server, or
pool_timeout) a second one, `waiting took <N> ms` (`, timeout` added when it timed out). Clients
of internal rules (auth_query and the like) are not told.
"""
from __future__ import annotations

import time

from kiwi import be_write


def _notice(client, text: str) -> None:
    try:
        client.io.write(be_write.notice_response("NOTICE", "00000", text), 1000)
    except Exception:        # a client gone meanwhile is found out by its next read
        pass


def wait(waiter, client, timeout_ms: int | None) -> bool:
    """Park until the router hands `waiter` (a route.Waiter, armed) a server or wakes it, up to
    timeout_ms (None: forever), sending the notices above. True when it was woken."""
    rule = client.rule
    after = getattr(rule, "pool_notice_after_waiting_ms", -1)
    if after is None or after < 0 or rule.pool_routing == "internal" or client.io is None:
        return waiter.park(timeout_ms)
    start = time.monotonic()
    if timeout_ms is not None and timeout_ms <= after:
        return waiter.park(timeout_ms)
    if waiter.park(after):
        return True
    _notice(client, "waiting for free backend connection")
    left = None if timeout_ms is None else max(0, timeout_ms - after)
    got = waiter.park(left)
    took = int((time.monotonic() - start) * 1000)
    _notice(client, f"waiting took {took} ms{'' if got else ', timeout'}")
    return got
