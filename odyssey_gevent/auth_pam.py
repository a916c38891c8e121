"""PAM authentication of clear_text logins (mirrors Odyssey sources/pam.c).

A rule with `authentication "clear_text"` and `auth_pam_service "name"` has the client's user
name and cleartext password checked by PAM against /etc/pam.d/<name>: pam_authenticate, then
account management (pam_acct_mgmt, as C's od_pam_auth), both with PAM_SILENT and PAM_RHOST set
to the client's address. PAM calls block (pam_unix reads /etc/shadow and may sleep on a failure,
see pam_faildelay), so they run in the hub's threadpool: other clients go on meanwhile. A refusal
is logged with PAM's reason; the client only gets 28P01 from auth.py.

The binding is python-pam (ctypes over libpam). Its PamAuthenticator is built per call (it is not
shared across threads) and tuned per object, as its docs allow: no pam_setcred (C calls none), no
PAM_TTY/PAM_XDISPLAY taken from the pooler's own terminal (C sets none), and PAM_RHOST and
PAM_SILENT as C.
"""
from __future__ import annotations

import ipaddress
from ctypes import c_char_p

import gevent
import pam

__all__ = ["check", "authenticate"]


def _valid_text(*values: str) -> bool:
    """PAM takes C strings: a NUL inside one cannot be passed (refused, never truncated)."""
    return all("\0" not in v for v in values)


def rhost_of(peer_host) -> str | None:
    """PAM_RHOST for a client: its IP address; None for a unix socket client (C passes the
    peer name it has, which is no host there)."""
    if not peer_host:
        return None
    try:
        return str(ipaddress.ip_address(peer_host))
    except ValueError:
        return None


def authenticate(service: str, user: str, password: str, rhost: str | None = None) -> tuple[bool, str]:
    """pam_start/pam_authenticate/pam_acct_mgmt/pam_end for one login (blocking: call it from a
    thread). Returns (accepted, PAM's reason)."""
    if not _valid_text(service, user, password):
        return False, "a NUL byte in the user name, password or service"
    a = pam.PamAuthenticator()
    start, set_item = a.pam_start, a.pam_set_item
    authenticate_, acct_mgmt = a.pam_authenticate, a.pam_acct_mgmt

    def pam_start(service_b, user_b, conv, handle):
        rc = start(service_b, user_b, conv, handle)
        if rc == pam.PAM_SUCCESS and rhost:   # libpam copies the value
            set_item(a.handle, pam.PAM_RHOST, c_char_p(rhost.encode()))
        return rc

    def pam_set_item(handle, item, value):
        if item in (pam.PAM_TTY, pam.PAM_XDISPLAY):
            return pam.PAM_SUCCESS          # the pooler's terminal is not the client's
        return set_item(handle, item, value)

    a.pam_start = pam_start
    a.pam_set_item = pam_set_item
    a.pam_authenticate = lambda handle, flags: authenticate_(handle, flags | pam.PAM_SILENT)
    a.pam_acct_mgmt = lambda handle, flags: acct_mgmt(handle, flags | pam.PAM_SILENT)
    ok = a.authenticate(user, password, service=service, call_end=True, resetcreds=False)
    reason = a.reason if isinstance(a.reason, str) else repr(a.reason)
    return bool(ok), reason


def _authenticate_in_thread(service, user, password, rhost) -> tuple[bool, str]:
    try:
        return authenticate(service, user, password, rhost)
    except Exception as e:                  # a broken libpam/module: refuse, say why in the log
        return False, f"{type(e).__name__}: {e}"


def check(instance, client, password: str) -> bool:
    """The auth.py hook: True when PAM service `rule.auth_pam_service` accepts the client."""
    service = client.rule.auth_pam_service
    ok, reason = gevent.get_hub().threadpool.apply(
        _authenticate_in_thread, (service, client.user, password, rhost_of(client.peer_host)))
    if not ok:
        instance.logger.error("auth", client, None, "PAM authentication failed for user '%s' (service '%s'): %s",
                              client.user, service, reason)
    return ok
