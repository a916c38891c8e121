"""Shared pools: `shared_pool "name" { pool_size N }` caps the servers of every route whose rule
says `shared_pool "name"`, together (mirrors Odyssey's shared_pool.c).

The router calls these under its lock (route.py's lock rule). Each route keeps its own servers
(different rules may log in as different users); what is shared is the limit:

* `has_room`: a route may open a server while the routes of its shared pool have fewer than N
  servers in all; when they have N but another route of the pool has an idle one, that idle
  server is taken out (closed by the caller) to make room;
* `wanted`: a server released by a route nobody of its own waits for, while another route of
  the pool has waiting clients, is closed instead of going idle, and
* `give`: a slot freed that way (or by any close) goes to the first waiting client of another
  route of the pool.
"""
from __future__ import annotations

from odyssey_gevent.server import ServerState


def _siblings(router, route) -> list:
    name = route.rule.shared_pool
    return [r for r in router.routes.values() if r is not route and r.rule.shared_pool == name]


def has_room(router, route, pool_size: int, offline: list) -> bool:
    """May `route` open one more server? (Without a shared pool: its own pool_size, 0 = no limit.)"""
    name = route.rule.shared_pool
    if not name:
        return pool_size == 0 or route.server_count < pool_size
    pool = router.instance.config.shared_pools.get(name)
    if pool is None:
        return pool_size == 0 or route.server_count < pool_size
    siblings = _siblings(router, route)
    if route.server_count + sum(r.server_count for r in siblings) < pool.pool_size:
        return True
    for other in siblings:
        if other.idle:
            server = other.take_idle()
            other.set_server_state(server, ServerState.UNDEF)
            offline.append(server)
            return True
    return False


def wanted(router, route) -> bool:
    """Should a server `route` releases make room for another route's waiting client?"""
    if not route.rule.shared_pool or route.waiters:
        return False
    return any(r.waiters for r in _siblings(router, route))


def give(router, route) -> None:
    """A slot of `route`'s shared pool is free and no client of `route` waits: the first waiting
    client of another route of the pool gets a new server."""
    if not route.rule.shared_pool:
        return
    for other in _siblings(router, route):
        if other.waiters and not router.is_paused(other):     # console PAUSE: paused routes get nothing
            router.hand_to_waiter(other, None)
            return
