"""Replaying a client's session parameters onto the server it is attached to (maintain_params;
mirrors Odyssey sources/deploy.c and kiwi var.c).

Only the parameters Odyssey tracks are replayed, compared case-insensitively with what the
server is known to have (server.params is keyed by lower-case name); the differences go in one
`SET k='v';...` query whose replies are consumed here, so the client never sees them. This runs
on every attach, so the client's tracked vars are kept pre-digested in `client.deploy_list`
(reset to None whenever client.vars changes): a tuple, one object for every client with the
same tracked vars (interned), so that a server which was found to hold them (`server.deployed`)
is known to fit the next such client by one identity test.
"""
from __future__ import annotations

from odyssey_gevent import backend
from odyssey_gevent.status import FrontendError

TRACKED = {name.lower(): name for name in (
    "client_encoding", "DateStyle", "TimeZone", "standard_conforming_strings", "application_name",
    "search_path", "statement_timeout", "work_mem", "lock_timeout", "idle_in_transaction_session_timeout",
    "default_table_access_method", "default_toast_compression", "check_function_bodies",
    "default_transaction_isolation", "default_transaction_read_only", "default_transaction_deferrable",
    "transaction_isolation", "transaction_read_only", "idle_session_timeout", "role", "extra_float_digits",
    "IntervalStyle",
)}


def quote(value: str) -> str:
    """An escape-string literal: correct whatever standard_conforming_strings the server has."""
    return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def tracked(client_vars: dict) -> list[tuple[str, str, str]]:
    """(lower-case key, canonical name, value) of the client vars Odyssey maintains."""
    out = []
    for name, value in client_vars.items():
        key = name.lower()
        canonical = TRACKED.get(key)
        if canonical is not None:
            out.append((key, canonical, value))
    return out


# the interned deploy lists: a bounded cache (cleared when full; an identity test that misses
# only costs the comparison it saves)
_LISTS: dict[tuple, tuple] = {}
_LISTS_MAX = 1024


def deploy_list(client) -> tuple:
    """client.deploy_list, worked out from client.vars (the interned tuple of `tracked()`).
    _LISTS also maps the vars' own items (a tuple of pairs, never equal to a list of triples
    but for the empty one, which maps to itself either way), or the startup packet's bytes they
    came from (client.vars_key), to their list: every login works it
    out once (its first attach), and most logins of a pooler send the same few parameters, so
    one tuple() and one lookup instead of tracked()'s loop and the interning."""
    client_vars = client.vars
    try:
        key = client.vars_key       # (the startup packet's bytes while the vars are its own)
        if key is None:
            key = tuple(client_vars.items())
        todo = _LISTS.get(key)
    except TypeError:                   # an unhashable value (not from a client): no shortcut
        key = todo = None
    if todo is None:
        todo = tuple(tracked(client_vars))
        if len(_LISTS) >= _LISTS_MAX:
            _LISTS.clear()
        todo = _LISTS.setdefault(todo, todo)
        if key is not None:
            _LISTS[key] = todo
    client.deploy_list = todo
    return todo


def plan(client_vars, server_params: dict) -> list[tuple[str, str]]:
    """The (name, value) pairs the server must SET to match the client. `client_vars` is a
    dict of client parameters or an already digested `tracked()` list; `server_params` is keyed
    by lower-case name."""
    if isinstance(client_vars, dict):
        client_vars = tracked(client_vars)
    get = server_params.get
    return [(name, value) for key, name, value in client_vars if get(key) != value]


def needed(client, server) -> bool:
    """Must deploy() SET something on this server, attached to the client? The relay's fast
    path attaches without a round trip only when not. The client's list is worked out here when
    it is stale (it is pure): answering True for that sent every client's first request the
    slow way (a switch into its coroutine and Frontend.attach), a pgbench -C login's only one.
    A server found to hold the client's list is marked (server.deployed) until its params are
    written."""
    todo = client.deploy_list
    if todo is None:
        # deploy_list's usual case inline (a frame fewer at each login's first attach): these
        # vars seen before, found by the startup packet's kept bytes while the vars are that
        # packet's (client.vars_key: a cached hash, found by identity), else by their items
        key = client.vars_key
        if key is not None:
            todo = _LISTS.get(key)
        else:
            try:
                todo = _LISTS.get(tuple(client.vars.items()))
            except TypeError:           # an unhashable value (not from a client)
                todo = None
        if todo is None:
            todo = deploy_list(client)
        else:
            client.deploy_list = todo
    if server.deployed is todo:         # (also for the list just found: a login's first attach)
        return False
    params = server.params
    for key, _, value in todo:
        if params.get(key) != value:
            return True
    server.deployed = todo
    return False


def deploy(instance, client, server) -> None:
    if not needed(client, server):      # on every attach: usually the server has them all
        return
    todo = client.deploy_list
    params = server.params
    changes = plan(todo, params)
    if not changes:
        return
    sql = "".join(f"SET {name}={quote(value)};" for name, value in changes)
    instance.logger.debug("deploy", client, server, "deploy: %s", sql)
    error = backend.query(instance, server, sql, instance.config.backend_connect_timeout_ms, "deploy")
    if error is not None:
        # some SETs before the failing one may have applied: forget what we knew of them all
        server.deployed = None
        for name, _ in changes:
            server.params.pop(name.lower(), None)
        instance.logger.error("deploy", client, server, "deploy failed: %s", error.message)
        # PostgreSQL refuses a login with an invalid parameter value; so do we, at first use
        raise FrontendError(error.sqlstate, error.message, severity="FATAL", detail=error.detail,
                            hint=error.hint)
    for name, value in changes:
        server.params[name.lower()] = value
    server.deployed = todo
