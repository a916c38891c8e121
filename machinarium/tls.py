"""Building SSLContexts for Io.tls_server / Io.tls_client (mirrors machinarium tls.c and
Odyssey's tls.c; the client modes follow libpq's sslmode)."""
from __future__ import annotations

import ssl

import gevent.ssl

# libpq sslmode values; Odyssey's config spells verify-ca/verify-full with an underscore.
SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


def normalize_sslmode(mode: str) -> str:
    m = (mode or "disable").strip().lower().replace("_", "-")
    if m not in SSLMODES:
        raise ValueError(f"unknown sslmode {mode!r}; expected one of {', '.join(SSLMODES)}")
    return m


def sslmode_requires_tls(mode: str) -> bool:
    """True for require/verify-ca/verify-full: a server answering 'N' is an error."""
    return normalize_sslmode(mode) in ("require", "verify-ca", "verify-full")


def sslmode_tries_tls_first(mode: str) -> bool:
    """True when the client sends SSLRequest first (prefer and the requiring modes).

    ``allow`` starts without TLS and would retry with it only if the server demands it;
    ``disable`` never uses TLS.
    """
    return normalize_sslmode(mode) in ("prefer", "require", "verify-ca", "verify-full")


def server_context(cert_file: str, key_file: str | None = None, ca_file: str | None = None,
                   client_cert: str = "none", min_version=ssl.TLSVersion.TLSv1_2,
                   ciphers: str | None = None) -> ssl.SSLContext:
    """A server-side context for ``Io.tls_server``.

    ``client_cert``: "none" (do not ask), "optional" (ask; verify against ``ca_file`` if sent),
    "required" (handshake fails without a certificate signed by ``ca_file``).
    """
    ctx = gevent.ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = min_version
    ctx.load_cert_chain(cert_file, key_file)
    if ciphers:
        ctx.set_ciphers(ciphers)
    modes = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
    try:
        ctx.verify_mode = modes[client_cert]
    except KeyError:
        raise ValueError(f"client_cert must be one of {sorted(modes)}") from None
    if ca_file:
        ctx.load_verify_locations(cafile=ca_file)
    elif client_cert != "none":
        raise ValueError("client certificate verification needs ca_file")
    return ctx


def client_context(sslmode: str, ca_file: str | None = None, cert_file: str | None = None,
                   key_file: str | None = None, min_version=ssl.TLSVersion.TLSv1_2):
    """A client-side context for ``Io.tls_client`` built from a libpq-like ``sslmode``.

    - disable: returns None (no TLS).
    - allow, prefer, require: encrypt without verifying the server, except that ``require``
      with a ``ca_file`` verifies the chain like verify-ca (libpq does the same).
    - verify-ca: the server certificate must chain to ``ca_file`` (system CAs if None).
    - verify-full: verify-ca plus the host name must match (pass ``server_hostname``).
    ``cert_file``/``key_file``: our client certificate, for servers that require one.
    """
    mode = normalize_sslmode(sslmode)
    if mode == "disable":
        return None
    ctx = gevent.ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = min_version
    verify = mode in ("verify-ca", "verify-full") or (mode == "require" and ca_file)
    if verify:
        ctx.check_hostname = mode == "verify-full"
        ctx.verify_mode = ssl.CERT_REQUIRED
        if ca_file:
            ctx.load_verify_locations(cafile=ca_file)
        else:
            ctx.load_default_certs()
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert_file:
        ctx.load_cert_chain(cert_file, key_file)
    return ctx
