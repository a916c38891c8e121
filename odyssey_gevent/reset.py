"""Making a server reusable before it goes back to the pool (mirrors Odyssey sources/reset.c).

Runs on every detach, in this order: servers left in COPY, with a partly relayed message or
broken are closed (cancelled first, with pool_cancel, when they still owe an answer); a server in a transaction is closed when pool_rollback is off; a server that
has not answered everything is cancelled (pool_cancel) and drained to ReadyForQuery within
pool_reset_timeout_ms, else closed; ROLLBACK inside a transaction; then the rule's reset query
(DISCARD ALL, the smart-discard script, or pool_discard_query), or in session pooling with none
of them, SESSION_LEFTOVERS_QUERY.
"""
from __future__ import annotations

import machinarium
from kiwi.errors import KiwiError
from kiwi.protocol import Phase
from odyssey_gevent import backend, cancel
from odyssey_gevent.config import DISCARD_ALL_QUERY, SMART_DISCARD_QUERY
from odyssey_gevent.status import BackendError


def _service_query(instance, server, sql: str, timeout) -> None:
    """Run a reset query; any ErrorResponse means the server's state is unknown: close it."""
    error = backend.query(instance, server, sql, timeout, "reset")
    if error is not None:
        raise BackendError(f"{sql[:40]!r} failed: {error.sqlstate} {error.message}", error)


# In session pooling with no reset configured (pool_discard no), what a client leaves on its
# server that the next client would otherwise inherit: named statements and portals, LISTEN,
# advisory locks and temp tables. Settings are not touched: maintain_params deploys the next
# client's own values.
SESSION_LEFTOVERS_QUERY = ("DEALLOCATE ALL; CLOSE ALL; UNLISTEN *; SELECT pg_advisory_unlock_all(); "
                           "DISCARD TEMP")


def _cancels_done(instance, server) -> bool:
    """Wait (cancel_timeout_ms at most) until the cancel requests sent for this server's last
    client have reached PostgreSQL: PostgreSQL ignores a cancel that finds the backend idle, but
    one that arrives after the server went to the next client would stop that client's query."""
    timeout = getattr(instance.config, "cancel_timeout_ms", 0) or 1000
    deadline = machinarium.time_ms() + timeout
    while server.cancels > 0:
        if machinarium.time_ms() >= deadline:
            return False
        machinarium.sleep(1)
    return True


def _stop_work(instance, server) -> bool:
    """A server about to be closed in the middle of a request: with pool_cancel, cancel what it
    runs first, or PostgreSQL would go on with it (a pg_sleep, a COPY TO) until it next touches
    the closed socket, a backend beyond pool_size. Returns False (close it)."""
    if server.route.rule.pool_cancel and not server.proto.idle and server.endpoint is not None:
        cancel.send(instance, server.endpoint, server.key_pid, server.key_secret)
    return False


def _drops_statements(query: str) -> bool:
    q = query.upper()
    return "DISCARD ALL" in q or "DEALLOCATE" in q


# the status kiwi and the relay set is the cached one-byte object b"I": `is` first, as 3.11 does
# not specialize a comparison of bytes (== stays the fallback)
_TX_IDLE = b"I"
_COPY_PHASES = frozenset((Phase.COPY_IN, Phase.COPY_OUT, Phase.COPY_BOTH))   # Conversation.copy_mode


def rule_resets(rule) -> bool:
    """Does the rule reset every server it gets back (session pooling, pool_discard,
    pool_smart_discard, pool_discard_query)? Fixed for a rule: the fast detach
    (Frontend.detach_now) works it out once per client."""
    if rule.pool == "session" or rule.pool_discard or rule.pool_smart_discard or rule.pool_discard_query:
        return True
    return False


def settled(server, clean: bool) -> bool:
    """A healthy server that answered everything, outside a transaction and COPY: with a rule
    that does not reset (rule_resets), reset() would return True at once."""
    proto = server.proto
    # an `if`, not `return a and b ...`: 3.11 specializes a comparison only when a conditional
    # jump follows it (in a returned `and` chain each one takes the generic path)
    txs = proto.tx_status
    if (clean and proto.syncs == 0 and (txs is _TX_IDLE or txs == _TX_IDLE) and not proto.output and not server.cancels
            and not server.drop and not server.broken and server.io is not None and proto.phase not in _COPY_PHASES):
        return True
    return False


def quick(server, clean: bool) -> bool:
    """Every detach of a transaction pool: a settled server and a rule with no reset query is
    decided with a few reads (reset()'s steps would reach the same answer, True). False:
    reset() must decide, and may wait."""
    if settled(server, clean) and not rule_resets(server.route.rule):
        return True
    return False


def reset(instance, server, clean: bool) -> bool:
    """True when the server may return to the pool; False when it must be closed."""
    if quick(server, clean):
        return True
    rule = server.route.rule
    log = instance.logger
    if server.broken or server.io is None:
        return False
    if server.proto.output is not None:
        server.proto.output = None         # answers for a client that is gone
    if server.cancels and not _cancels_done(instance, server):
        log.info("reset", None, server, "a cancel request for the previous client is still on its way, closing")
        return False
    if server.drop:
        log.info("reset", None, server, "server marked to be closed (cached plan error), closing")
        return False
    if server.copy_mode:
        log.info("reset", None, server, "server left in copy, closing")
        return _stop_work(instance, server)
    if not clean:
        log.info("reset", None, server, "server left with partly-read message, closing")
        return _stop_work(instance, server)
    if not rule.pool_rollback and server.in_transaction:
        log.info("reset", None, server, "in active transaction, closing")
        return False
    timeout = rule.pool_reset_timeout_ms if rule.pool_reset_timeout_ms > 0 else None
    try:
        if not server.synchronized:
            if not rule.pool_cancel:
                log.info("reset", None, server, "server left in query, closing")
                return False
            cancel.send(instance, server.endpoint, server.key_pid, server.key_secret)
            backend.wait_ready(instance, server, timeout)
            if not server.synchronized:
                return False
        if server.in_transaction:
            _service_query(instance, server, "ROLLBACK", timeout)
        query = rule.effective_reset()
        if not query and rule.pool == "session":
            query = SESSION_LEFTOVERS_QUERY
            server.prepared = None
            _service_query(instance, server, query, timeout)
        elif query:
            if query not in (DISCARD_ALL_QUERY, SMART_DISCARD_QUERY):
                # a custom reset may change settings in ways we cannot know: forget them all,
                # so the next client's deploy sets every tracked parameter it has
                server.params = {}
            else:
                server.params = dict(server.baseline)    # DISCARD ALL / the smart-discard script
            server.deployed = None
            if server.prepared and _drops_statements(query):
                server.prepared.clear()
            _service_query(instance, server, query, timeout)
    except (machinarium.TimedOut, OSError, KiwiError, BackendError) as e:
        log.info("reset", None, server, "reset failed, closing: %s", e)
        server.broken = True
        return False
    return not server.in_transaction
