"""Replaying a client's session parameters onto the server it is attached to (maintain_params;
mirrors Odyssey sources/deploy.c and kiwi var.c).

Only the parameters Odyssey tracks are replayed, compared case-insensitively with what the
server is known to have; the differences go in one `SET k='v';...` query whose replies are
consumed here, so the client never sees them.
"""
from __future__ import annotations

from odyssey_gevent import backend

TRACKED = {name.lower(): name for name in (
    "client_encoding", "DateStyle", "TimeZone", "standard_conforming_strings", "application_name",
    "search_path", "statement_timeout", "work_mem", "lock_timeout", "idle_in_transaction_session_timeout",
    "default_table_access_method", "default_toast_compression", "check_function_bodies",
    "default_transaction_isolation", "default_transaction_read_only", "default_transaction_deferrable",
    "transaction_isolation", "transaction_read_only", "idle_session_timeout", "role", "extra_float_digits",
    "IntervalStyle",
)}


def quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def plan(client_vars: dict, server_params: dict) -> list[tuple[str, str]]:
    """The (name, value) pairs the server must SET to match the client."""
    known = {k.lower(): v for k, v in server_params.items()}
    out = []
    for name, value in client_vars.items():
        key = name.lower()
        if key not in TRACKED:
            continue
        if known.get(key) != value:
            out.append((TRACKED[key], value))
    return out


def deploy(instance, client, server) -> None:
    changes = plan(client.vars, server.params)
    if not changes:
        return
    sql = "".join(f"SET {name}={quote(value)};" for name, value in changes)
    instance.logger.debug("deploy", client, server, "deploy: %s", sql)
    error = backend.query(instance, server, sql, instance.config.backend_connect_timeout_ms, "deploy")
    if error is not None:
        instance.logger.error("deploy", client, server, "deploy failed: %s", error.message)
    for name, value in changes:
        server.params.setdefault(name, value)
        if error is None:
            server.params[name] = value
