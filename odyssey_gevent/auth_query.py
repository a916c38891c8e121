"""auth_query: the client's stored secret fetched from PostgreSQL (mirrors Odyssey
sources/auth_query.c).

A rule with ``auth_query`` asks PostgreSQL for the client's password (or md5 hash, or SCRAM
verifier) before authenticating it. The query runs on a connection of the internal route
(``auth_query_db``, ``auth_query_user``), which must match a ``pool_routing "internal"`` rule.

Safety, where C Odyssey splices text:
- the client's user name is bound as ``$1`` through the extended protocol;
- ``%u`` and ``%h`` (C's text substitutions) become quoted SQL literals, never raw text, so a
  user name with quotes, semicolons or backslashes cannot change the query;
- the connection is a fresh one that never carries the client's startup parameters, and runs
  ``SET search_path = pg_catalog, pg_temp`` before the query.

Results: exactly one row of two columns (user, secret) is a secret; no row or a NULL secret is
"no such user" (the login fails like a wrong password); anything else is a query failure.
Secrets are cached per (rule, user[, client address when the query uses %h]) for
``auth_query_cache_ttl_ms`` (default ``CACHE_TTL_MS``); the cache is cleared on reload.
"""
from __future__ import annotations

import re
import threading
import time

from kiwi import fe_read, fe_write
from kiwi.header import BE
from odyssey_gevent.io import read_message
from odyssey_gevent.route import Route
from odyssey_gevent.rules import route_key
from odyssey_gevent.server import Server

CACHE_TTL_MS = 10_000          # how long a fetched secret is reused (docs/config.md)
SAFE_SEARCH_PATH = "SET search_path = pg_catalog, pg_temp"
# Whatever the configured query returns, a role whose VALID UNTIL has passed gets no secret (the
# query a C Odyssey config usually has, on pg_shadow, would hand out an expired role's password).
EXPIRED_QUERY = ("SELECT rolvaliduntil IS NOT NULL AND rolvaliduntil < now() "
                 "FROM pg_catalog.pg_roles WHERE rolname = $1")

_PARAM_RE = re.compile(r"\$1(?![0-9])")


class AuthQueryFailed(Exception):
    """The query could not be run or returned something unusable (FATAL 28000)."""


def quote_literal(value: str) -> str:
    """A SQL string literal of `value` that means the same under any standard_conforming_strings."""
    if "\0" in value:
        raise ValueError("NUL in a SQL literal")
    quoted = value.replace("'", "''")
    if "\\" in quoted:
        return "E'" + quoted.replace("\\", "\\\\") + "'"
    return "'" + quoted + "'"


def format_query(query: str, user: str, host: str | None) -> str:
    """C's %u / %h substitution, but as quoted literals: `'%u'` and `%u` both become the user
    name literal; `%%` is a percent sign; other `%x` stay as written."""
    out = []
    i, n = 0, len(query)
    while i < n:
        c = query[i]
        quoted = c == "'" and query[i + 1:i + 4] in ("%u'", "%h'")
        if quoted:
            c, i = "%", i + 1
        if c == "%" and i + 1 < n:
            code = query[i + 1]
            if code in "uh":
                out.append(quote_literal(user if code == "u" else (host or "")))
                i += 3 if quoted else 2
                continue
            if code == "%":
                out.append("%")
                i += 2
                continue
        out.append(c)
        i += 1
    return "".join(out)


def uses_host(query: str) -> bool:
    return "%h" in query


def binds_user(query: str) -> bool:
    """Does the (formatted) query take the user name as $1?"""
    return _PARAM_RE.search(query) is not None


def secret_of(rows: list, columns: int | None) -> str | None:
    """The secret from the query result; None = no such user (or a NULL secret).
    Raises AuthQueryFailed for a result of the wrong shape."""
    if not rows:
        return None
    if len(rows) != 1:
        raise AuthQueryFailed(f"auth query returned {len(rows)} rows, expected 1")
    row = rows[0]
    if len(row) != 2 or (columns is not None and columns != 2):
        raise AuthQueryFailed(f"auth query returned {len(row)} columns, expected 2 (user, password)")
    secret = row[1]
    if secret is None:
        return None
    try:
        return bytes(secret).decode("utf-8")
    except UnicodeDecodeError:
        raise AuthQueryFailed("auth query returned a password that is not UTF-8") from None


class SecretCache:
    """Fetched secrets per key, each kept `ttl_ms`; thread-safe (workers share it)."""

    def __init__(self, ttl_ms: int = CACHE_TTL_MS, clock=time.monotonic):
        self.ttl = ttl_ms / 1000.0
        self.clock = clock
        self._lock = threading.Lock()
        self._items: dict[tuple, tuple[float, str]] = {}

    @staticmethod
    def key(rule, user: str, host: str | None) -> tuple:
        """Per rule (identity kept across reloads of an unchanged rule), internal route and user;
        the client address only when the query depends on it."""
        return (id(rule), rule.auth_query, rule.auth_query_db, rule.auth_query_user, user,
                host if uses_host(rule.auth_query or "") else None)

    def get(self, key: tuple) -> str | None:
        if self.ttl <= 0:
            return None
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            if self.clock() >= item[0]:
                del self._items[key]
                return None
            return item[1]

    def put(self, key: tuple, secret: str) -> None:
        if self.ttl <= 0:
            return
        now = self.clock()
        with self._lock:
            if len(self._items) > 10000:        # drop expired entries now and then
                for k in [k for k, (exp, _) in self._items.items() if exp <= now]:
                    del self._items[k]
            self._items[key] = (now + self.ttl, secret)

    def forget(self, key: tuple) -> None:
        with self._lock:
            self._items.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


def _run(instance, server, sql: str, user: str, timeout_ms: int) -> tuple[list, int | None]:
    """SET search_path, then Parse/Bind/Execute/Sync of `sql` with the user name as $1.
    Returns (rows, column count). Raises AuthQueryFailed on a PostgreSQL error."""
    from odyssey_gevent import backend
    error = backend.query(instance, server, SAFE_SEARCH_PATH, timeout_ms, "auth_query")
    if error is not None:
        raise AuthQueryFailed(f"{error.sqlstate}: {error.message}")
    params = [user] if binds_user(sql) else []
    io = server.io
    io.write(fe_write.parse("", sql) + fe_write.bind("", "", params) + fe_write.describe("P", "")
             + fe_write.execute("", 0) + fe_write.sync())
    rows: list = []
    columns = None
    error = None
    deadline = time.monotonic() + timeout_ms / 1000.0
    while True:
        left = max(0, int((deadline - time.monotonic()) * 1000))
        mtype, payload = read_message(io, left)
        if mtype == BE.DATA_ROW:
            rows.append(fe_read.read_data_row(payload))
        elif mtype == BE.ROW_DESCRIPTION:
            columns = len(fe_read.read_row_description(payload))
        elif mtype == BE.ERROR_RESPONSE:
            error = fe_read.read_error(payload)
        elif mtype == BE.READY_FOR_QUERY:
            server.proto.tx_status = fe_read.read_ready_for_query(payload)
            break
        elif mtype in (BE.COPY_IN_RESPONSE, BE.COPY_OUT_RESPONSE, BE.COPY_BOTH_RESPONSE):
            raise AuthQueryFailed("auth query started COPY")
    if error is not None:
        raise AuthQueryFailed(f"{error.sqlstate}: {error.message}")
    if columns is None:
        raise AuthQueryFailed("auth query returned no result set")
    return rows, columns


def fetch_secret(instance, client) -> str | None:
    """The stored secret of client.user by the rule's auth_query (cached), or None when the
    user has none. Raises AuthQueryFailed (already logged) when the query cannot give one."""
    from odyssey_gevent import backend       # backend imports auth, which imports this module
    rule = client.rule
    user = client.user
    cache = instance.auth_query_cache
    key = cache.key(rule, user, client.peer_host)
    secret = cache.get(key)
    if secret is not None:
        return secret

    def failed(reason: str):
        instance.logger.error("auth_query", client, None, "failed to make auth query for '%s': %s",
                              user, reason)
        return AuthQueryFailed(reason)

    if "\0" in user:
        raise failed("NUL in the user name")
    internal = instance.rules.match(rule.auth_query_db, rule.auth_query_user, None, "local",
                                    False, internal=True)
    if internal is None:
        raise failed(f"internal route for '{rule.auth_query_db}.{rule.auth_query_user}' is not found")
    try:
        sql = format_query(rule.auth_query, user, client.peer_host)
    except ValueError as e:
        raise failed(str(e)) from None
    db = internal.storage_db or rule.auth_query_db
    route_user = internal.storage_user or rule.auth_query_user
    route = Route(route_key(internal, rule.auth_query_db, rule.auth_query_user), internal, db,
                  route_user)
    server = Server(route)
    timeout = instance.config.backend_connect_timeout_ms or 30000
    try:
        backend.connect(instance, server, None)
        rows, columns = _run(instance, server, sql, user, timeout)
        secret = secret_of(rows, columns)
        if secret is not None:
            expired, _ = _run(instance, server, EXPIRED_QUERY, user, timeout)
            if expired and expired[0][0] == b"t":
                instance.logger.info("auth_query", client, None, "role '%s' has expired (VALID UNTIL)", user)
                secret = None
    except AuthQueryFailed as e:
        raise failed(str(e)) from None
    except Exception as e:           # BackendError, KiwiError, OSError, TimedOut...: all are 28000
        server.broken = True
        raise failed(f"{type(e).__name__}: {e}") from None
    finally:
        backend.close(instance, server)
    if secret is not None:
        cache.put(key, secret)
    return secret
