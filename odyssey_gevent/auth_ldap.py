"""LDAP authentication of clear_text logins (mirrors Odyssey sources/ldap.c, whose search+bind
part is copied from PostgreSQL's src/backend/libpq/auth.c CheckLDAPAuth).

A clear_text rule with `ldap_endpoint_name` has the client's password checked here
(auth.py calls `check(instance, client, password) -> bool`). Two modes, as in C and PostgreSQL:

* simple bind (no `ldapbasedn`): bind as `ldapprefix + user + ldapsuffix` with the password;
* search+bind (`ldapbasedn` set): bind as `ldapbinddn`/`ldapbindpasswd` (anonymously when no
  `ldapbinddn`), search under `ldapbasedn` for `(ldapsearchattribute=user)` (default `uid`), or
  for `ldapsearchfilter` with `$username` replaced when it has one, or `(&(attr=user)filter)` as C
  does otherwise; exactly one entry must match; then bind as that entry's DN with the password.

True: the server accepted the password. False: wrong password, unknown or ambiguous user, a user
name that cannot be put in a DN or filter safely, an empty password (never an anonymous bind).
The LDAP server unreachable, timing out or failing otherwise (including a refused service bind):
the reason is logged and the client gets FATAL 58000.

ldap3 (pure Python) does blocking socket IO, and nothing here is monkey patched: every exchange
runs in the calling machine's gevent threadpool, so only the calling coroutine waits. Each login
opens its own connections (C keeps pools sized by `ldap_pool_size`; there is no pool here).
"""
from __future__ import annotations

import ssl
import urllib.parse

import gevent
import ldap3
from ldap3.core import exceptions as ldap_exc
from ldap3.utils.conv import escape_filter_chars

from kiwi import error_codes
from odyssey_gevent.status import FrontendError

CONNECT_TIMEOUT_S = 5       # TCP connect to the LDAP server
RECEIVE_TIMEOUT_S = 5       # each answer of the LDAP server
# the whole exchange in the threadpool: a backstop above the socket timeouts
EXCHANGE_TIMEOUT_S = CONNECT_TIMEOUT_S * 2 + RECEIVE_TIMEOUT_S * 4 + 1

RESULT_SUCCESS = 0
RESULT_INVALID_DN_SYNTAX = 34
RESULT_INVALID_CREDENTIALS = 49

# PostgreSQL refuses these in a user name for search+bind (auth.c: "invalid character in user
# name for LDAP authentication")
SEARCH_FORBIDDEN = set("*()\\/\0")
# characters with a meaning in a DN (RFC 4514): a user name with one could bind as someone else
DN_FORBIDDEN = set(",+\"\\<>;=\0")

_SCOPES = {None: ldap3.SUBTREE, "sub": ldap3.SUBTREE, "subtree": ldap3.SUBTREE,
           "one": ldap3.LEVEL, "onelevel": ldap3.LEVEL, "level": ldap3.LEVEL,
           "base": ldap3.BASE}


class LdapUnavailable(Exception):
    """The LDAP server could not be used (the message is for the log)."""


# -- building names and filters (pure functions, unit tested) ----------------------------------
def user_ok_for_dn(user: str) -> bool:
    """Can `user` be pasted into a bind DN (simple bind) without changing its structure?"""
    return (bool(user) and not (set(user) & DN_FORBIDDEN)
            and not user.startswith(("#", " ")) and not user.endswith(" "))


def user_ok_for_search(user: str) -> bool:
    """PostgreSQL's check for search+bind: none of `*()\\/` and NUL."""
    return bool(user) and not (set(user) & SEARCH_FORBIDDEN)


def bind_dn(endpoint, user: str) -> str:
    """Simple bind: ldapprefix + user + ldapsuffix."""
    return f"{endpoint.ldapprefix or ''}{user}{endpoint.ldapsuffix or ''}"


def search_filter(endpoint, user: str) -> str:
    """The search filter for `user` (escaped): ldapsearchfilter with $username replaced, else
    (attr=user) with attr ldapsearchattribute or uid, and-ed with a ldapsearchfilter that has no
    $username (C Odyssey's form)."""
    escaped = escape_filter_chars(user)
    custom = endpoint.ldapsearchfilter
    if custom and "$username" in custom:
        return custom.replace("$username", escaped)
    base = f"({endpoint.ldapsearchattribute or 'uid'}={escaped})"
    if custom:
        if not custom.startswith("("):
            custom = f"({custom})"
        return f"(&{base}{custom})"
    return base


def server_address(endpoint) -> tuple[str, int, bool]:
    """(host, port, use_ssl) of the endpoint: ldapscheme://ldapserver:ldapport as C builds it,
    else ldapurl (scheme://host[:port] only). Raises LdapUnavailable when neither is usable."""
    if endpoint.ldapserver:
        scheme = (endpoint.ldapscheme or "ldap").lower()
        host, port = endpoint.ldapserver, endpoint.ldapport
    elif endpoint.ldapurl:
        url = urllib.parse.urlsplit(endpoint.ldapurl)
        if url.path not in ("", "/") or url.query or url.fragment or not url.hostname:
            raise LdapUnavailable(f"ldapurl '{endpoint.ldapurl}': only scheme://host[:port] is supported")
        scheme = url.scheme.lower()
        host = url.hostname
        port = url.port or (636 if scheme == "ldaps" else 389)
    else:
        raise LdapUnavailable("neither ldapserver nor ldapurl is set")
    if scheme not in ("ldap", "ldaps"):
        raise LdapUnavailable(f"unknown ldapscheme '{scheme}'")
    return host, port, scheme == "ldaps"


def scope_of(endpoint):
    try:
        return _SCOPES[endpoint.ldapscope.lower() if endpoint.ldapscope else None]
    except KeyError:
        raise LdapUnavailable(f"unknown ldapscope '{endpoint.ldapscope}'") from None


# -- the exchange (runs in a threadpool thread) -------------------------------------------------
def _server(endpoint) -> ldap3.Server:
    host, port, use_ssl = server_address(endpoint)
    tls = ldap3.Tls(validate=ssl.CERT_REQUIRED) if use_ssl else None
    return ldap3.Server(host, port=port, use_ssl=use_ssl, tls=tls, get_info=ldap3.NONE,
                        connect_timeout=CONNECT_TIMEOUT_S)


def _connection(server, user=None, password=None) -> ldap3.Connection:
    return ldap3.Connection(server, user=user, password=password,
                            authentication=ldap3.SIMPLE if user else ldap3.ANONYMOUS,
                            auto_bind=ldap3.AUTO_BIND_NONE, read_only=True, raise_exceptions=False,
                            receive_timeout=RECEIVE_TIMEOUT_S, check_names=True)


def _bind(server, dn: str, password: str) -> tuple[int, str]:
    """Bind as dn: (result code, description)."""
    conn = _connection(server, dn, password)
    try:
        conn.open()
        conn.bind()
        result = conn.result or {}
        return result.get("result", -1), result.get("description", "?")
    finally:
        conn.unbind()


def _user_bind(server, dn: str, password: str) -> tuple[bool, str]:
    code, description = _bind(server, dn, password)
    if code == RESULT_SUCCESS:
        return True, ""
    if code in (RESULT_INVALID_CREDENTIALS, RESULT_INVALID_DN_SYNTAX):
        return False, f"bind as '{dn}' refused: {description}"
    raise LdapUnavailable(f"bind as '{dn}' failed: {code} {description}")


def _search_dn(server, endpoint, user: str) -> tuple[str | None, str]:
    """The DN of the one entry matching `user`, or (None, why)."""
    conn = _connection(server, endpoint.ldapbinddn, endpoint.ldapbindpasswd or "")
    try:
        conn.open()
        if not conn.bind():
            result = conn.result or {}
            raise LdapUnavailable(f"bind as '{endpoint.ldapbinddn or ''}' for the search failed: "
                                  f"{result.get('result')} {result.get('description')}")
        flt = search_filter(endpoint, user)
        conn.search(endpoint.ldapbasedn, flt, search_scope=scope_of(endpoint),
                    attributes=ldap3.NO_ATTRIBUTES, size_limit=2)
        result = conn.result or {}
        entries = [e for e in (conn.response or []) if e.get("type") == "searchResEntry"]
        # sizeLimitExceeded (4) with 2 entries: not unique either way
        if result.get("result") not in (RESULT_SUCCESS, 4):
            raise LdapUnavailable(f"search under '{endpoint.ldapbasedn}' with {flt} failed: "
                                  f"{result.get('result')} {result.get('description')}")
        if len(entries) != 1:
            return None, f"search under '{endpoint.ldapbasedn}' with {flt} found {len(entries)} entries"
        return entries[0]["dn"], ""
    finally:
        conn.unbind()


def authenticate(endpoint, user: str, password: str) -> tuple[bool, str]:
    """The whole blocking exchange: (accepted, why not). Raises LdapUnavailable."""
    server = _server(endpoint)
    try:
        if endpoint.ldapbasedn:
            dn, why = _search_dn(server, endpoint, user)
            if dn is None:
                return False, why
        else:
            dn = bind_dn(endpoint, user)
        return _user_bind(server, dn, password)
    except ldap_exc.LDAPException as e:      # socket open/read errors, timeouts, bad answers
        raise LdapUnavailable(f"{type(e).__name__}: {e}") from None
    except OSError as e:
        raise LdapUnavailable(str(e)) from None


def _in_thread(endpoint, user: str, password: str):
    """authenticate() for the threadpool: every outcome is returned, never raised (a raise in a
    threadpool thread would be reported as a hub error)."""
    try:
        return authenticate(endpoint, user, password)
    except LdapUnavailable as e:
        return e
    except Exception as e:      # noqa: BLE001 - an ldap3 surprise is the server's failure here
        return LdapUnavailable(f"{type(e).__name__}: {e}")


# -- the hook auth.py calls ----------------------------------------------------------------------
def _unavailable() -> FrontendError:
    return FrontendError(error_codes.SYSTEM_ERROR, "LDAP authentication failed: LDAP server is unavailable",
                         severity="FATAL")


def check(instance, client, password: str) -> bool:
    """Does the rule's LDAP endpoint accept client.user with this password?"""
    rule = client.rule
    logger = instance.logger
    user = client.user or ""
    if rule.ldap_storage_credentials_attr:
        raise FrontendError(error_codes.FEATURE_NOT_SUPPORTED,
                            "ldap_storage_credentials_attr is not supported yet", severity="FATAL")
    endpoint = instance.config.ldap_endpoints.get(rule.ldap_endpoint_name)
    if endpoint is None:                    # validate.py refuses this; a reload race at most
        logger.error("auth_ldap", client, None, "unknown ldap endpoint '%s'", rule.ldap_endpoint_name)
        raise _unavailable()
    if not password:
        logger.info("auth_ldap", client, None, "empty password for user '%s'", user)
        return False
    if endpoint.ldapbasedn:
        if not user_ok_for_search(user):
            logger.info("auth_ldap", client, None, "invalid character in user name '%s' for LDAP search", user)
            return False
    elif not user_ok_for_dn(user):
        logger.info("auth_ldap", client, None, "invalid character in user name '%s' for an LDAP DN", user)
        return False
    try:
        outcome = gevent.get_hub().threadpool.spawn(_in_thread, endpoint, user, password).get(
            timeout=EXCHANGE_TIMEOUT_S)
    except gevent.Timeout:
        outcome = LdapUnavailable(f"no answer in {EXCHANGE_TIMEOUT_S} s")
    if isinstance(outcome, LdapUnavailable):
        logger.error("auth_ldap", client, None, "ldap_endpoint '%s': %s", endpoint.name, outcome)
        raise _unavailable()
    accepted, why = outcome
    if not accepted:
        logger.info("auth_ldap", client, None, "ldap_endpoint '%s': %s", endpoint.name, why)
    return accepted
