"""Group rules: `group "g" { ... group_query "..." }` matches the users the group query names
(mirrors Odyssey sources/group.c).

A group rule's own user is `group_<g>`. The group checker, a coroutine of the system machine,
runs each group rule's `group_query` every `group_checker_interval` ms (global, default 7000) as
`group_query_user` on `group_query_db`, through the internal rule (`pool_routing "internal"`)
matching those names, as C does. The first column of each row is a member's user name; the
members then match the group rule as a named user would (rules.Rules.group_members). Until the
first check, and for a group whose query fails (logged; the last good list stays), the members
are the ones known before. After a reload the known lists carry over to the new rules and every
group is checked at once.
"""
from __future__ import annotations

import time

import machinarium
from odyssey_gevent.route import Route
from odyssey_gevent.rules import route_key
from odyssey_gevent.server import Server
from odyssey_gevent.status import BackendError


def internal_query(instance, db: str, user: str, sql: str) -> list[tuple]:
    """Run `sql` on a fresh server of the internal rule for db/user, closed afterwards.
    Raises BackendError (no internal rule, login or query failure), OSError or TimedOut."""
    from odyssey_gevent import backend
    rule = instance.rules.match(db, user, None, "local", False, internal=True)
    if rule is None:
        raise BackendError(f"internal route for '{db}.{user}' is not found")
    route = Route(route_key(rule, db, user), rule, rule.storage_db or db, rule.storage_user or user)
    server = Server(route)
    timeout = instance.config.backend_connect_timeout_ms or 30000
    try:
        backend.connect(instance, server, None)
        return backend.query_rows(instance, server, sql, timeout)
    except BaseException:
        server.broken = True
        raise
    finally:
        backend.close(instance, server)


def check(instance, rules) -> None:
    """Run every group rule's query once and store the members in `rules`."""
    for rule in list(rules):
        if rule.group_name is None or not rule.group_query:
            continue
        try:
            rows = internal_query(instance, rule.group_query_db, rule.group_query_user, rule.group_query)
        except Exception as e:     # BackendError, KiwiError, OSError, TimedOut: keep the old list
            instance.logger.error("group", None, None, "group '%s': group query failed: %s", rule.group_name, e)
            continue
        members = {row[0].decode("utf-8", "replace") for row in rows if row and row[0] is not None}
        if members != rules.group_members.get(rule.group_name):
            instance.logger.debug("group", None, None, "group '%s': %d members", rule.group_name, len(members))
        rules.set_group_members(rule.group_name, members)


def checker_main(instance) -> None:
    """The group checker loop (a coroutine of the system machine, cancelled at shutdown)."""
    last_rules = None
    last_check = 0.0
    while True:
        rules = instance.rules
        if rules is not last_rules and last_rules is not None:
            for name, members in last_rules.group_members.items():     # no gap after a reload
                rules.group_members.setdefault(name, set(members))
        now = time.monotonic()
        if rules is not last_rules or now - last_check >= instance.config.group_checker_interval / 1000.0:
            if any(r.group_name is not None for r in rules):
                check(instance, rules)
            last_rules = rules
            last_check = time.monotonic()
        machinarium.sleep(max(10, min(1000, instance.config.group_checker_interval)))
