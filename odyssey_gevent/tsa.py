"""target_session_attrs: which kind of host a client's servers must be on (mirrors Odyssey
sources/tsa.c).

The effective value is, from strongest to weakest: the client's `odyssey.target_session_attrs`
startup parameter (e.g. `options=-c odyssey.target_session_attrs=read-only`), the listen block's,
the rule's, else `any`. The values are libpq's, checked as libpq checks them:

    any             every host
    read-write      not read only (not in recovery, default_transaction_read_only off)
    read-only       read only (a standby, or default_transaction_read_only on)
    primary         not in recovery
    standby         in recovery
    prefer-standby  every host, standbys tried first

`prefer-replica` and `replica` (older spellings C Odyssey accepts) mean prefer-standby and
standby.
"""
from __future__ import annotations

import machinarium
from kiwi.errors import KiwiError
from odyssey_gevent import storage
from odyssey_gevent.status import BackendError

VALUES = ("any", "read-write", "read-only", "primary", "standby", "prefer-standby")
_ALIASES = {"prefer-replica": "prefer-standby", "replica": "standby"}
HINT = "odyssey.target_session_attrs"
CATCHUP_HINT = "odyssey_catchup_timeout"      # the startup parameter storage.effective_catchup reads


def normalize(value: str | None) -> str | None:
    if value is None:
        return None
    value = _ALIASES.get(value, value)
    return value if value in VALUES else None


def effective(client, rule=None) -> str:
    """The client's effective target_session_attrs (client None: the rule's, for servers the
    pooler opens on its own)."""
    value = None
    if client is not None:
        rule = client.rule
    if rule is not None and rule.target_session_attrs:
        value = normalize(rule.target_session_attrs) or value
    if client is not None:
        listen = client.listen
        if listen is not None and listen.target_session_attrs:
            value = normalize(listen.target_session_attrs) or value
        hint = normalize((client.vars or {}).get(HINT))
        if hint is not None:
            value = hint
    return value or "any"


def matches(value: str, status) -> bool:
    """Does a host with this status (storage.HostStatus) fit `value`?"""
    if value == "read-write":
        return not status.read_only
    if value == "read-only":
        return status.read_only
    if value == "primary":
        return not status.in_recovery
    if value == "standby":
        return status.in_recovery
    return True      # any, prefer-standby


def work_out(client) -> tuple:
    """(catchup_timeout, target_session_attrs) the client's pooled servers are checked against
    (from its rule, listen block and startup parameters, all fixed for its session), kept in
    client.tsa_checks. A client that sends neither startup hint gets its rule's and listen
    block's: the route keeps them for the last listen block it saw (Route.tsa_memo), as every
    login asked them again."""
    vars_ = client.vars
    try:
        route = client.route
    except AttributeError:          # a stand-in client (unit tests)
        route = None
    plain = route is not None and not (vars_ and (HINT in vars_ or CATCHUP_HINT in vars_))
    if plain:
        memo = route.tsa_memo
        if memo is not None and memo[0] is client.listen:
            checks = client.tsa_checks = memo[1]
            return checks
    checks = client.tsa_checks = (storage.effective_catchup(client, client.rule), effective(client))
    if plain:
        route.tsa_memo = (client.listen, checks)
    return checks


def checks_hosts(client) -> bool:
    """Must an idle server's host be checked before the client gets it (a catchup_timeout or a
    target_session_attrs other than any)? False: idle_server_fits() says yes without asking."""
    checks = client.tsa_checks or work_out(client)
    return bool(checks[0]) or checks[1] != "any"


def idle_server_fits_now(client, server) -> bool:
    """True when idle_server_fits() is sure to say yes without asking anything: no host status
    to check (no catchup_timeout, target_session_attrs any, worked out at an earlier attach).
    False: ask idle_server_fits() (it may run a query)."""
    if server.endpoint is None:
        return True
    checks = getattr(client, "tsa_checks", None)
    if checks is not None and not checks[0] and checks[1] == "any":     # an `if`: see reset.quick
        return True
    return False


def idle_server_fits(instance, client, server) -> bool:
    """Before a pooled server is handed to a client: does its host still fit the client's
    target_session_attrs? The host's cached status is used while it is recent, else asked
    again on this server. False also when asking failed (the server is then marked broken), and
    when the host lags more than the client's catchup_timeout while another host does not.
    Runs on every attach of a pooled server: what the client asks for (from its rule, listen
    block and startup parameters, all fixed for its session) is worked out once (work_out: at
    routing, Frontend.route)."""
    if server.endpoint is None:
        return True
    checks = getattr(client, "tsa_checks", None)
    if checks is None:
        checks = work_out(client)
    catchup, want = checks
    if catchup and storage.lags(server.endpoint, catchup) and storage.some_host_within(
            client.rule.storage, instance.config, catchup):
        instance.logger.debug("attach", client, server, "idle server's host %s lags more than %d s",
                              server.endpoint, catchup)
        return False
    if want == "any":
        return True
    try:
        status = storage.refresh(instance, server, instance.config.backend_connect_timeout_ms)
    except (BackendError, OSError, machinarium.TimedOut, KiwiError) as e:
        instance.logger.info("attach", client, server, "read-write check of an idle server failed: %s", e)
        server.broken = True
        return False
    if matches(want, status):
        return True
    instance.logger.debug("attach", client, server, "idle server's host %s no longer fits '%s'",
                          server.endpoint, want)
    return False
