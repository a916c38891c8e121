"""CancelRequest forwarding (mirrors Odyssey sources/cancel.c).

A client's CancelRequest carries the random key we gave it; the router maps it to the server
the client is attached to, and we send that server's own key to PostgreSQL on a new connection.
"""
from __future__ import annotations

import machinarium
from kiwi import fe_write
from odyssey_gevent import backend, supervisor


def send(instance, endpoint, pid: int, key: int) -> bool:
    timeout = instance.config.cancel_timeout_ms if getattr(instance.config, "cancel_timeout_ms", 0) > 0 else 1000
    try:
        io = backend.open_connection(endpoint, instance.config, timeout)
    except (OSError, machinarium.TimedOut) as e:
        instance.logger.error("cancel", None, None, "failed to connect to %s for cancel: %s", endpoint, e)
        return False
    try:
        io.write(fe_write.cancel_request(pid, key))
        try:
            io.wait_readable(timeout)      # PostgreSQL closes the connection once it has read it
        except machinarium.TimedOut:
            pass
        return True
    except OSError:
        return False
    finally:
        io.close()


def forward(instance, pid: int, key: int, local_only: bool = False, from_partner: bool = False) -> None:
    if supervisor.KEY_TAG is not None and not local_only:
        owner = supervisor.owner(key)     # processes N: the key may be another process's
        if owner != supervisor.INDEX:
            if owner < supervisor.COUNT and supervisor.forward_cancel(owner, pid, key):
                instance.logger.debug("cancel", None, None, "cancel passed to pooler process %d", owner)
            elif supervisor.pass_to_partner(instance, pid, key):      # online restart: the other group
                instance.logger.debug("cancel", None, None, "cancel passed to the other group's pooler process %d",
                                      owner)
            else:
                instance.logger.error("cancel", None, None, "cannot pass the cancel to pooler process %d", owner)
            return
    target = instance.router.cancel_target(pid, key)
    if target is None:
        if not from_partner and supervisor.pass_to_partner(instance, pid, key):
            instance.logger.debug("cancel", None, None, "cancel passed to the other group's pooler process %d",
                                  supervisor.owner(key))
        else:
            instance.logger.debug("cancel", None, None, "no client matches the cancel key")
        return
    endpoint, server_pid, server_key, _rule, server = target
    try:
        send(instance, endpoint, server_pid, server_key)
    finally:
        instance.router.cancel_done(server)
