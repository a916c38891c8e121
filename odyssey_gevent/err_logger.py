"""Error counts for SHOW ERRORS and SHOW ERRORS_PER_ROUTE (mirrors Odyssey sources/err_logger.c
and the error lists of sources/include/status.h).

As in C Odyssey the counts are a sliding window: `INTERVALS` buckets, one per cron tick (about a
second), so a count is "how many in the last five minutes". The cron coroutine calls `tick()`;
everyone else calls `store()`. A bucket is a plain dict bumped under a lock: errors are rare, and
a lock keeps workers > 1 from losing one.

Which errors exist, and in which order the console lists them, is C's (status.h): the router's
errors (routing a client) and the frontend's (how a routed client's session ended; only the
statuses that are errors). Per route, C keeps the frontend errors only for routes of rules with
a named database and user (not `default` ones), and the per-route client_max refusals for every
route.
"""
from __future__ import annotations

import threading

INTERVALS = 5 * 60

ROUTER_ERRORS = (
    "OD_ROUTER_ERROR", "OD_ROUTER_ERROR_NOT_FOUND", "OD_ROUTER_ERROR_LIMIT", "OD_ROUTER_ERROR_LIMIT_ROUTE",
    "OD_ROUTER_ERROR_TIMEDOUT", "OD_ROUTER_ERROR_REPLICATION", "OD_ROUTER_CLIENT_DISCONNECTED",
)
ROUTE_ROUTER_ERRORS = ("OD_ROUTER_ERROR_LIMIT_ROUTE",)   # the router errors also counted per route
FRONTEND_ERRORS = (
    "OD_EOOM", "OD_EATTACH", "OD_EATTACH_TOO_MANY_CONNECTIONS", "OD_EATTACH_TARGET_SESSION_ATTRS_MISMATCH",
    "OD_ESERVER_CONNECT", "OD_ESERVER_READ", "OD_ESERVER_WRITE", "OD_ESERVER_READAHEAD_FULL", "OD_ECLIENT_WRITE",
    "OD_ECLIENT_READAHEAD_FULL", "OD_ECLIENT_KILLED", "OD_ECLIENT_TIMEOUT", "OD_ECLIENT_READ",
    "OD_ECLIENT_PROTOCOL_ERROR", "OD_ECLIENT_COPY_IN_XPROTO", "OD_ESYNC_BROKEN", "OD_ECATCHUP_TIMEOUT",
    "OD_EGRACEFUL_SHUTDOWN", "OD_EIDLE_TIMEOUT", "OD_EIDLE_IN_TRANSACTION_TIMEOUT",
)
_FRONTEND_ERRORS = frozenset(FRONTEND_ERRORS)


class ErrorLog:
    """Counts by error name over the last `intervals` ticks. Buckets are made on the first error
    of an interval, so a route without errors costs one empty dict."""

    __slots__ = ("_buckets", "_intervals", "_current", "_lock")

    def __init__(self, intervals: int = INTERVALS):
        self._buckets: dict[int, dict[str, int]] = {}     # interval number -> name -> count
        self._intervals = intervals
        self._current = 0
        self._lock = threading.Lock()

    def store(self, name: str) -> None:
        with self._lock:
            bucket = self._buckets.get(self._current)
            if bucket is None:
                bucket = self._buckets[self._current] = {}
            bucket[name] = bucket.get(name, 0) + 1

    def tick(self) -> None:
        """The next interval starts (its bucket, the oldest, is emptied)."""
        with self._lock:
            self._current = (self._current + 1) % self._intervals
            self._buckets.pop(self._current, None)

    def count(self, name: str) -> int:
        with self._lock:
            return sum(b.get(name, 0) for b in self._buckets.values())

    def counts(self, names) -> list[tuple[str, int]]:
        with self._lock:
            buckets = list(self._buckets.values())
        return [(n, sum(b.get(n, 0) for b in buckets)) for n in names]


def is_frontend_error(status_name: str) -> bool:
    return status_name in _FRONTEND_ERRORS


def route_keeps_frontend_errors(rule) -> bool:
    """C keeps a route's frontend errors only when its rule names both database and user."""
    return not (getattr(rule, "db_is_default", False) or getattr(rule, "user_is_default", False))


class Errors:
    """The pooler's error logs: router errors (global), frontend errors (global), and each
    route's own log (Route.errors)."""

    def __init__(self):
        self.router = ErrorLog()
        self.frontend = ErrorLog()

    def router_error(self, name: str, route=None) -> None:
        self.router.store(name)
        if route is not None and name in ROUTE_ROUTER_ERRORS:
            route.errors.store(name)

    def session_ended(self, status_name: str, route) -> None:
        """A routed client's session ended with `status_name` (a Status value)."""
        if status_name not in _FRONTEND_ERRORS:
            return
        self.frontend.store(status_name)
        if route is not None and route_keeps_frontend_errors(route.rule):
            route.errors.store(status_name)

    def tick(self, routes) -> None:
        self.router.tick()
        self.frontend.tick()
        for route in routes:
            route.errors.tick()
