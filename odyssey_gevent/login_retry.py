"""server_login_retry: a server login refused with 53300 (PostgreSQL's max_connections or a
role's CONNECTION LIMIT) is tried again while the rule's pool_timeout allows (mirrors the retry
in Odyssey sources/frontend.c's attach).

With `pool_timeout` > 0, a login PostgreSQL refuses with 53300 frees its pool slot, the client
sleeps `server_login_retry` ms (global, default 1) and attaches again: an idle server of its
route if one came back meanwhile, else a new login. When pool_timeout has passed since the
first refusal the client gets the error it would have got at once without the retry.
"""
from __future__ import annotations

import time

import machinarium
from kiwi import error_codes
from odyssey_gevent.status import FrontendError

TOO_MANY_CONNECTIONS = "53300"


class Retry(Exception):
    """A refused login that may be tried again; `.error` is the backend's error."""

    def __init__(self, error):
        super().__init__(str(error))
        self.error = error


def applies(rule, fields) -> bool:
    return fields is not None and fields.sqlstate == TOO_MANY_CONNECTIONS and rule.pool_timeout > 0


def pause(instance, client, retry: Retry, server_id: str, until: float | None) -> float:
    """Sleep before the next attempt and return the deadline; past pool_timeout raise the
    FrontendError the client gets (the backend's own with client_fwd_error)."""
    now = time.monotonic()
    if until is None:
        until = now + client.rule.pool_timeout / 1000.0
    if now >= until:
        fields = retry.error.fields
        if client.rule.client_fwd_error:
            raise FrontendError(fields.sqlstate, fields.message, severity=fields.severity,
                                detail=fields.detail, hint=fields.hint) from None
        raise FrontendError(error_codes.CONNECTION_FAILURE, f"failed to connect to remote server {server_id}",
                            severity="FATAL") from None
    instance.logger.debug("attach", client, None, "server login refused with 53300, retrying in %d ms",
                          instance.config.server_login_retry)
    machinarium.sleep(max(0, min(instance.config.server_login_retry, int((until - now) * 1000) + 1)))
    return until
