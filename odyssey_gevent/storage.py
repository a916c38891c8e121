"""Storage endpoints and what is known about each host: alive, read-write or in recovery,
replication lag (mirrors Odyssey sources/storage.c and the endpoint choice of frontend.c).

A storage's `host` may list several endpoints. Each new server connection tries them in the
order `candidates()` gives: the storage's round-robin rotation, then stably sorted so that hosts
recently seen dead, of the wrong kind for the client's target_session_attrs or lagging behind
catchup_timeout go last (they are still tried: the status may be stale), hosts of the pooler's
availability zone go first among equals and, with leastconn balancing, those with the fewest
server connections. What a host was seen
to be is cached per (host, port) for the storage's `endpoints_status_poll_interval` (1 s by
default) in a process-wide table, written by logins (backend.connect), by the check of an idle
pooled server (`refresh`), by failed connects (`note_dead`) and by the watchdog (`note_lag`).
"""
from __future__ import annotations

import threading
import time

from odyssey_gevent.status import BackendError

# the check libpq makes on servers before 14 (which do not report in_hot_standby)
RW_QUERY = "select pg_is_in_recovery(), current_setting('transaction_read_only')"


class HostStatus:
    __slots__ = ("alive", "in_recovery", "read_only", "updated", "lag", "lag_updated")

    def __init__(self):
        self.alive = True
        self.in_recovery = False
        self.read_only = False
        self.updated = None        # time.monotonic() of the last alive/role update, None = never
        self.lag = None            # seconds behind the primary (watchdog), None = unknown
        self.lag_updated = None


_lock = threading.Lock()
_hosts: dict[tuple, HostStatus] = {}


def _key(endpoint) -> tuple:
    return (endpoint.address_type, endpoint.host, endpoint.port)


def get(endpoint) -> HostStatus | None:
    """A copy of what is known about the endpoint's host, or None."""
    with _lock:
        st = _hosts.get(_key(endpoint))
        if st is None:
            return None
        copy = HostStatus()
        for name in HostStatus.__slots__:
            setattr(copy, name, getattr(st, name))
        return copy


def _update(endpoint, **fields) -> None:
    with _lock:
        st = _hosts.get(_key(endpoint))
        if st is None:
            st = _hosts[_key(endpoint)] = HostStatus()
        for name, value in fields.items():
            setattr(st, name, value)


def note_dead(endpoint) -> None:
    _update(endpoint, alive=False, updated=time.monotonic())


def note_role(endpoint, in_recovery: bool, read_only: bool) -> None:
    _update(endpoint, alive=True, in_recovery=in_recovery, read_only=read_only or in_recovery,
            updated=time.monotonic())


def note_lag(endpoint, lag: float | None) -> None:
    _update(endpoint, lag=lag, lag_updated=time.monotonic())


def forget_all() -> None:
    """Tests: start from nothing known."""
    with _lock:
        _hosts.clear()


def recent(stamp: float | None, storage) -> bool:
    return stamp is not None and time.monotonic() - stamp <= storage.endpoints_status_poll_interval / 1000.0


# -- what a server says about itself ---------------------------------------------------------------
def role_from_login(server) -> tuple[bool, bool] | None:
    """(in_recovery, read_only) from the ParameterStatus of a fresh login, as libpq reads them
    from PostgreSQL 14 on; None when the server does not report in_hot_standby."""
    params = server.params
    hot = params.get("in_hot_standby")
    if hot is None:
        return None
    in_recovery = hot == "on"
    return in_recovery, in_recovery or params.get("default_transaction_read_only") == "on"


def query_role(instance, server, timeout_ms: int) -> tuple[bool, bool]:
    """(in_recovery, read_only) by asking the server (a synchronized, idle one)."""
    from odyssey_gevent import backend      # backend imports this module
    try:
        rows = backend.query_rows(instance, server, RW_QUERY, timeout_ms)
    except BackendError as e:
        raise BackendError(f"read-write check failed: {e}", e.fields) from None
    if len(rows) != 1 or len(rows[0]) != 2:
        raise BackendError("read-write check failed: no row")
    return rows[0][0] == b"t", rows[0][1] == b"on"


def refresh(instance, server, timeout_ms: int) -> HostStatus:
    """The status of an idle pooled server's host, asked again on that server when the cached
    one is older than the storage's endpoints_status_poll_interval."""
    storage = server.route.rule.storage
    st = get(server.endpoint)
    if st is None or not recent(st.updated, storage) or not st.alive:
        note_role(server.endpoint, *query_role(instance, server, timeout_ms))
        st = get(server.endpoint)
    return st


# -- the order to try hosts in ----------------------------------------------------------------------
def candidates(storage, endpoints: list, tsa_value: str, catchup: int, start: int,
               load: dict | None = None, zone: str | None = None) -> list:
    """The endpoints in the order a new server connection tries them (see the module doc).
    Among hosts of one rank, those in availability zone `zone` (the global availability_zone,
    with the storage's balancing az_aware) come first, then, with `load` (leastconn: host key
    -> its server count), the fewest servers first."""
    from odyssey_gevent import tsa
    n = len(endpoints)
    rotated = [endpoints[(start + i) % n] for i in range(n)] if n > 1 else list(endpoints)
    if n <= 1:
        return rotated

    def rank(endpoint) -> int:
        # 0: known to fit, 1: unknown or stale, 2: a primary for prefer-standby, 3: known not to fit
        st = get(endpoint)
        if catchup and st is not None and st.lag is not None and st.lag > catchup:
            return 3        # the watchdog keeps the lag current, at its own interval
        if st is None or not recent(st.updated, storage):
            # unknown or stale: after the hosts known to fit, except where any host fits
            return 0 if tsa_value in ("any", "prefer-standby") else 1
        if not st.alive or not tsa.matches(tsa_value, st):
            return 3
        return 2 if tsa_value == "prefer-standby" and not st.in_recovery else 0
    def other_zone(endpoint) -> int:
        return 0 if not zone or endpoint.availability_zone == zone else 1

    def key(endpoint) -> tuple:
        return rank(endpoint), other_zone(endpoint), (load.get(_key(endpoint), 0) if load is not None else 0)
    return sorted(rotated, key=key)


def effective_catchup(client, rule) -> int:
    """The replication lag (seconds) a client accepts, 0 = any: the startup parameter
    `odyssey_catchup_timeout`, else the rule's catchup_timeout, else the listen block's."""
    value = 0
    if client is not None and client.listen is not None:
        value = client.listen.catchup_timeout or 0
    if rule is not None and rule.catchup_timeout:
        value = rule.catchup_timeout
    if client is not None:
        hint = (client.vars or {}).get("odyssey_catchup_timeout")
        if hint is not None and hint.isdigit():
            value = int(hint)
    return value


def lags(endpoint, catchup: int) -> bool:
    """Is the host known (by the watchdog) to lag more than `catchup` seconds?"""
    st = get(endpoint)
    return st is not None and st.lag is not None and st.lag > catchup


def some_host_within(storage, config, catchup: int) -> bool:
    """Does some host of the storage not lag more than `catchup` seconds (or has unknown lag)?"""
    from odyssey_gevent.backend import storage_endpoints
    return any(not lags(e, catchup) for e in storage_endpoints(storage, config))


def balancing_method(client, storage) -> str:
    """roundrobin or leastconn: the listen block's balancing_method, else the storage's."""
    method = None
    if client is not None and client.listen is not None:
        method = client.listen.balancing_method
    method = method or storage.balancing.method
    return "leastconn" if method == "leastconn" else "roundrobin"


def load_of(instance, client, rule) -> dict | None:
    """For leastconn balancing: the number of server connections (every route's, idle or in
    use) on each host; None for round robin."""
    if rule.storage is None or balancing_method(client, rule.storage) != "leastconn":
        return None
    router = instance.router
    counts: dict[tuple, int] = {}
    with router.lock:
        for route in router.routes.values():
            for group in (route.idle, route.active):
                for server in group:
                    if server.endpoint is not None:
                        key = _key(server.endpoint)
                        counts[key] = counts.get(key, 0) + 1
    return counts


def zone_of(instance, storage) -> str | None:
    """The availability zone to prefer: the global availability_zone when the storage's
    balancing is az_aware (the default)."""
    zone = instance.config.availability_zone
    if not zone or storage is None or not storage.balancing.az_aware:
        return None
    return zone


def notice_host(instance, client, server) -> None:
    """balancing { show_notice_messages yes } on a storage of several hosts: tell the client
    which host its server is on (NOTICE `select host <host:port>`), at each attach."""
    st = client.rule.storage
    if st is None or not st.balancing.show_notice_messages or server.endpoint is None \
            or len(st.endpoints) < 2:
        return
    from kiwi import be_write
    client.io.write(be_write.notice_response("NOTICE", "00000", f"select host {server.endpoint}"))
