"""Auth modules, the Python way (C Odyssey's `load_module` + `auth_module`, sources/module.c).

C loads shared objects and a rule's `auth_module "name"` hands clear_text logins to one of them.
Here a global `load_module "python:pkg.mod"` names a Python module (importable from the
pooler's sys.path, e.g. via PYTHONPATH) and a `clear_text` rule with `auth_module "pkg.mod"`
has its logins decided by that module's function

    check(user: str, password: str, client_info: dict) -> bool

client_info: user, database, application_name, host and port of the client (None for a unix
socket), tls (bool), rule (the rule's "db.user" name).  Only `True` accepts; anything else
refuses with 28P01.  An auth_module with no matching `load_module "python:..."`, a module that
does not import or has no callable `check`, an exception inside `check` or a non-bool result:
FATAL 28000 to the client and a log line, never a crash.

The module is imported once per process (on its first login, in the hub) and `check` runs in
the hub's threadpool, so a function that blocks (a web call, a file) does not stall other
clients; it must be thread-safe.
"""
from __future__ import annotations

import importlib
import sys

import gevent

from kiwi import error_codes
from odyssey_gevent.status import FrontendError

__all__ = ["check", "resolve", "client_info", "loaded", "load", "unload"]

PREFIX = "python:"


class ModuleError(Exception):
    """The named auth module cannot be used (not declared, not importable, no check)."""


def resolve(modules, name: str):
    """The `check` function of auth module `name`, declared by `load_module "python:<name>"`."""
    if PREFIX + name not in modules:
        raise ModuleError(f"auth module '{name}' is not loaded (no load_module \"{PREFIX}{name}\")")
    try:
        mod = importlib.import_module(name)
    except (Exception, SystemExit) as e:   # ImportError, or whatever the module's body raised
        raise ModuleError(f"auth module '{name}' failed to import: {e.__class__.__name__}: {e}") from None
    fn = getattr(mod, "check", None)
    if not callable(fn):
        raise ModuleError(f"auth module '{name}' has no check(user, password, client_info) function")
    return fn


class _Changes:
    """What the console's CREATE MODULE / DROP MODULE changed: kept for the life of the process,
    over RELOAD (C keeps its loaded modules outside the config too)."""

    def __init__(self):
        self.added: list[str] = []
        self.dropped: set[str] = set()


def _changes(instance) -> _Changes:
    changes = getattr(instance, "module_changes", None)
    if changes is None:
        changes = instance.module_changes = _Changes()
    return changes


def loaded(instance) -> list[str]:
    """The `python:` modules in use: the config's load_module ones and those CREATE MODULE
    added, less those DROP MODULE removed."""
    changes = getattr(instance, "module_changes", None)
    paths = [p for p in instance.config.modules if p.startswith(PREFIX)]
    if changes is None:
        return paths
    paths += [p for p in changes.added if p not in paths]
    return [p for p in paths if p not in changes.dropped]


def load(instance, path: str) -> None:
    """Console CREATE MODULE "python:pkg.mod": import the module now (a module DROP MODULE
    unloaded is read from its file again) and check it has check(); raises ModuleError."""
    if not path.startswith(PREFIX):
        raise ModuleError(f"'{path}' is not a Python module: C modules (.so) can't be loaded by "
                          f"odyssey-gevent, name one as python:<dotted module name>")
    name = path[len(PREFIX):]
    if not name or not all(part.isidentifier() for part in name.split(".")):
        raise ModuleError(f"'{path}': expected python:<dotted module name>")
    if path in loaded(instance):
        raise ModuleError(f"module '{path}' was already loaded")
    resolve([path], name)
    changes = _changes(instance)
    changes.dropped.discard(path)
    if path not in changes.added:
        changes.added.append(path)


def unload(instance, path: str) -> None:
    """Console DROP MODULE "python:pkg.mod": logins of rules naming it are refused (28000) until
    it is loaded again; the next import reads its file anew. Raises ModuleError."""
    if path not in loaded(instance):
        raise ModuleError(f"module '{path}' is not loaded")
    changes = _changes(instance)
    changes.dropped.add(path)
    sys.modules.pop(path[len(PREFIX):], None)


def client_info(client) -> dict:
    rule = client.rule
    return {"user": client.user, "database": client.database,
            "application_name": client.vars.get("application_name"),
            "host": client.peer_host, "port": client.peer_port, "tls": bool(client.tls),
            "rule": f"{rule.db_name}.{rule.user_name}"}


def _call(fn, user, password, info):
    try:
        return True, fn(user, password, info)
    except BaseException as e:             # noqa: BLE001 (the user's code must never kill us)
        return False, f"{e.__class__.__name__}: {e}"


def _refuse(instance, client, message: str) -> FrontendError:
    instance.logger.error("auth", client, None, "%s", message)
    return FrontendError(error_codes.INVALID_AUTHORIZATION_SPECIFICATION,
                         f"auth module error for user \"{client.user}\"", severity="FATAL")


def check(instance, client, password: str) -> bool:
    """The auth.py hook for clear_text rules with `auth_module`."""
    name = client.rule.auth_module
    try:
        fn = resolve(loaded(instance), name)
    except ModuleError as e:
        raise _refuse(instance, client, str(e)) from None
    ok, result = gevent.get_hub().threadpool.apply(_call, (fn, client.user, password, client_info(client)))
    if not ok:
        raise _refuse(instance, client, f"auth module '{name}' check() raised {result}")
    if not isinstance(result, bool):
        raise _refuse(instance, client, f"auth module '{name}' check() returned {type(result).__name__}, "
                                        f"not bool")
    if not result:
        instance.logger.error("auth", client, None, "auth module '%s' refused user '%s'", name, client.user)
    return result
