"""Client certificate authentication, `authentication "cert"` (mirrors Odyssey sources/auth.c
od_auth_frontend_cert and machinarium's mm_tls_verify_common_name).

The certificate itself is checked during the TLS handshake: a listen block with `tls "verify_ca"`
or `"verify_full"` demands one signed by its `tls_ca_file`, and `tls "require"` with a
`tls_ca_file` verifies one when the client sends it (instance.tls_context). This module then
compares the certificate's Common Name with the rule's `auth_common_name` values, as C does:

- `auth_common_name default` stands for the **rule's** user name (`default_user` under
  `user default`), not the name the client logged in with;
- names compare case-insensitively, and a certificate CN `*.domain.tld` matches one host of that
  domain (C's wildcard rules);
- a client without TLS gets 28000 `TLS connection required`; no certificate, a CN with a NUL in
  it, or no matching name gives 28P01 `TLS certificate common name mismatch` (C's codes), with
  the reason logged.
"""
from __future__ import annotations

from kiwi import error_codes
from odyssey_gevent.status import FrontendError

__all__ = ["authenticate", "common_name", "name_matches"]


def common_name(cert) -> str | None:
    """The first commonName of a certificate as ssl.getpeercert() returns it, or None."""
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return None


def name_matches(cert_name: str, name: str) -> bool:
    """machinarium mm_tls_verify_name: equal ignoring case, or a `*.domain.tld` wildcard that
    covers exactly one leading label of `name`."""
    if cert_name.lower() == name.lower():
        return True
    if not cert_name.startswith("*"):
        return False
    cert_domain = cert_name[1:]
    if not cert_domain.startswith(".") or cert_domain.startswith(".."):
        return False                       # "*", "*foo", "*.."
    rest = cert_domain[1:]
    if "." not in rest:
        return False                       # "*.tld"
    if rest[rest.index(".") + 1:].startswith("."):
        return False                       # "*.bar.."
    if name.startswith("."):
        return False
    dot = name.find(".")
    if dot < 0 or dot == len(name) - 1:
        return False
    return cert_domain.lower() == name[dot:].lower()


def authenticate(instance, client) -> None:
    """Refuse the client (FrontendError) unless its certificate's CN is one the rule allows."""
    if not client.tls:
        instance.logger.error("auth", client, None, "TLS connection required")
        raise FrontendError(error_codes.INVALID_AUTHORIZATION_SPECIFICATION, "TLS connection required",
                            severity="FATAL")
    rule = client.rule
    names = ([rule.user_name] if rule.auth_common_name_default else []) + list(rule.auth_common_name)
    try:
        cn = common_name(client.io.tls_peer_certificate())
    except (OSError, ValueError):
        cn = None
    if cn is None:
        reason = "no client certificate"
    elif "\0" in cn:
        reason = "NUL byte in Common Name field"
    elif any(name_matches(cn, name) for name in names):
        return
    else:
        reason = f"bad common name: {cn} (expected {', '.join(names) or 'nothing'})"
    instance.logger.error("auth", client, None, "TLS certificate common name mismatch: %s", reason)
    raise FrontendError(error_codes.INVALID_PASSWORD, "TLS certificate common name mismatch",
                        severity="FATAL")
