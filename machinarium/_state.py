"""Per-thread state shared by the machinarium modules: which Machine this OS thread runs, and error hooks."""
from __future__ import annotations

import logging
import threading

log = logging.getLogger("machinarium")

_local = threading.local()

# Callables (where: str, exc: BaseException) invoked for every exception that escapes a coroutine
# or a hub callback in any machine. Tests use it to fail on background errors.
error_hooks: list = []


def current_machine():
    """The Machine running in this OS thread, or None (machine_self)."""
    return getattr(_local, "machine", None)


def report_error(where: str, exc: BaseException) -> None:
    """Log an escaped exception with its traceback and call every error hook."""
    log.error("%s failed: %r", where, exc, exc_info=(type(exc), exc, exc.__traceback__))
    for hook in tuple(error_hooks):
        try:
            hook(where, exc)
        except Exception:  # a broken hook must not kill the hub
            log.exception("machinarium error hook failed")


def watch_hub_errors(hub) -> None:
    """Route the hub's "print an exception to stderr" through :func:`report_error`.

    gevent calls ``hub.print_exception`` for errors in plain greenlets and loop callbacks; after
    this they are logged on the ``machinarium`` logger and reach ``error_hooks``.
    """
    if getattr(hub, "_machinarium_watched", False):
        return

    def print_exception(context, typ, value, tb):
        if value is None:
            value = typ()
        if value.__traceback__ is None and tb is not None:
            value = value.with_traceback(tb)
        report_error(f"greenlet {context!r}", value)

    hub.print_exception = print_exception
    hub._machinarium_watched = True
