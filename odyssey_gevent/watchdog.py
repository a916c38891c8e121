"""The storage watchdog and catchup_timeout: replication lag per host, and clients kept away from
hosts that lag too far behind (mirrors Odyssey sources/storage.c's watchdog and the catchup
checks of frontend.c).

A storage with `watchdog { ... watchdog_lag_query "..." watchdog_lag_interval N }` is polled by
the watchdog (a coroutine of the system machine) every N seconds (without N: 3/4 of the
storage's endpoints_status_poll_interval): each of its hosts is logged in to through the
watchdog's own internal rule (`watchdog_int.watchdog_int`, its storage_user/storage_db), the lag
query is run, and its first column, a Unix timestamp of the last replayed transaction, gives
the host's lag: now - that value (a NULL or non-number leaves the lag unknown). The login also
refreshes the host's role (in recovery or not) in storage.py's table.

The effective catchup_timeout (seconds; the client's `odyssey_catchup_timeout` startup parameter,
else the rule's, else the listen block's; 0 = no limit) is used twice:

* at login, before authentication: when every host of the storage lags by catchup_timeout or
  more, the client gets FATAL 08006 `replication lag too big (N seconds), connection rejected:
  <db> <user>` (C's text, detail and hint);
* when a new server connection picks its host: hosts lagging by more go last
  (storage.candidates).
"""
from __future__ import annotations

import time

import machinarium
from kiwi import error_codes
from odyssey_gevent import backend, storage, tsa
from odyssey_gevent.route import Route
from odyssey_gevent.rules import route_key
from odyssey_gevent.server import Server
from odyssey_gevent.status import FrontendError


def parse_lag(rows, now: float) -> float | None:
    if not rows or not rows[0] or rows[0][0] is None:
        return None
    try:
        return now - float(rows[0][0].decode())
    except ValueError:
        return None


def poll_host(instance, st, endpoint) -> None:
    """Log in to one host through the watchdog rule, run the lag query, record the result."""
    wd = st.watchdog
    rule = wd.rule
    db = rule.storage_db or rule.db_name
    user = rule.storage_user or rule.user_name
    server = Server(Route(route_key(rule, db, user), rule, db, user))
    timeout = instance.config.backend_connect_timeout_ms or 30000
    try:
        backend.login(instance, server, None, endpoint, timeout)
        role = storage.role_from_login(server)
        if role is not None:
            storage.note_role(endpoint, *role)
        if wd.watchdog_lag_query:
            lag = parse_lag(backend.query_rows(instance, server, wd.watchdog_lag_query, timeout), time.time())
            storage.note_lag(endpoint, lag)
            instance.logger.debug("watchdog", None, server, "replica lag time of %s is updated to %s",
                                  endpoint, lag)
    except Exception as e:     # BackendError, KiwiError, OSError, TimedOut
        server.broken = True
        storage.note_dead(endpoint)
        instance.logger.error("watchdog", None, server, "watchdog failed for %s: %s", endpoint, e)
    finally:
        backend.close(instance, server)


def interval_s(st) -> float:
    wd = st.watchdog
    if wd.watchdog_lag_interval and wd.watchdog_lag_interval > 0:
        return float(wd.watchdog_lag_interval)
    return max(0.01, st.endpoints_status_poll_interval * 3 / 4 / 1000.0)


def watchdog_main(instance) -> None:
    """Poll every storage that has a watchdog, each at its own interval (started by cron)."""
    due: dict[str, float] = {}
    while True:
        now = time.monotonic()
        next_wake = now + 1.0
        for st in list(instance.config.storages.values()):
            if st.watchdog is None or not st.is_remote:
                continue
            when = due.get(st.name, 0.0)
            if now >= when:
                for endpoint in list(st.endpoints):
                    poll_host(instance, st, endpoint)
                when = due[st.name] = time.monotonic() + interval_s(st)
            next_wake = min(next_wake, when)
        machinarium.sleep(max(10, int((next_wake - time.monotonic()) * 1000)))


def check_catchup(instance, client) -> None:
    """At login: refuse the client when every host of its storage lags by its effective
    catchup_timeout or more (hosts of unknown lag count as not lagging)."""
    rule = client.rule
    st = rule.storage
    if st is None or not st.is_remote:
        return
    timeout = (client.tsa_checks or tsa.work_out(client))[0]     # worked out at routing (Frontend.route)
    if timeout <= 0:
        return
    lag = 0
    for endpoint in backend.storage_endpoints(st, instance.config):
        status = storage.get(endpoint)
        lag = max(0, int(status.lag)) if status is not None and status.lag is not None else 0
        if lag < timeout:
            return
    instance.logger.error("catchup", client, None, "replication lag too big (%d), connection rejected: %s %s",
                          lag, client.database, client.user)
    raise FrontendError(error_codes.CONNECTION_FAILURE,
                        f"replication lag too big ({lag} seconds), connection rejected: "
                        f"{client.database} {client.user}", severity="FATAL",
                        detail="replication lag of the node you are trying to connect is too big, "
                               "connection rejected",
                        hint="wait until the replica catches up with the primary")
