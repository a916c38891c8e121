"""Config file reader (mirrors Odyssey sources/config_reader.c, the legacy parser of release 1.5).

``load(path) -> Config`` reads an Odyssey config file (and its includes), builds the model of
:mod:`odyssey_gevent.config.model` and validates it (:mod:`odyssey_gevent.config.validate`).  Any
problem raises :class:`~odyssey_gevent.config.model.ConfigError`; its ``errors`` are ``file:line:col: message``
strings.  Warnings (deprecated keywords, repeated options, ...) are kept in ``config.warnings``.

Lexical rules are those of the released 1.5 parser, widened where HEAD's bison parser accepts more
(see docs/differences.md): keywords are case-insensitive, ``port`` in listen defaults to 6432, a
repeated option's last value wins (with a warning), strings may span lines and ``\\"`` inside a
string is a quote.
"""
from __future__ import annotations

import os
import re
import signal as _signal
from typing import Callable, Optional

from odyssey_gevent.config import model as C
from odyssey_gevent.config.model import (AddressRange, Balancing, Config, ConfigError,
                                         ConnDropOptions, Endpoint, LdapEndpoint,
                                         LdapStorageCredentials, Listen, Location, Rule,
                                         SharedPool, Storage, Watchdog)

MAX_INCLUDE_DEPTH = 16
MAX_ERRORS = 100
INT_MIN = -(2 ** 63)
INT_MAX = 2 ** 63 - 1

__all__ = ["load", "loads", "parse_endpoints", "dump_config", "MAX_INCLUDE_DEPTH", "ConfigError"]


# ============================================================================================
# lexer

NUM, IDENT, STR, SYM, EOF, ERR = "number", "keyword", "string", "symbol", "end of file", "error"

_SIZE_SUFFIX = re.compile(r"(?i)(kb|mb|gb|k|m|g|b)(?![A-Za-z0-9_])")
_MULT = {"b": 1, "k": 1024, "kb": 1024, "m": 1024 ** 2, "mb": 1024 ** 2, "g": 1024 ** 3,
         "gb": 1024 ** 3}


class Token:
    __slots__ = ("kind", "value", "line", "col", "file")

    def __init__(self, kind, value, line, col, file):
        self.kind, self.value, self.line, self.col, self.file = kind, value, line, col, file

    @property
    def loc(self) -> Location:
        return Location(self.file, self.line, self.col)

    def describe(self) -> str:
        if self.kind == EOF:
            return "end of file"
        if self.kind == STR:
            return f'string "{self.value}"'
        if self.kind == ERR:
            return self.value
        return f"{self.kind} '{self.value}'"

    def __repr__(self):
        return f"Token({self.kind}, {self.value!r}, {self.line}:{self.col})"


def tokenize(text: str, file: str) -> list[Token]:
    """Split config text into tokens.  Never raises: bad input becomes ERR tokens."""
    toks: list[Token] = []
    i, n = 0, len(text)
    line, line_start = 1, 0
    while True:
        # whitespace and comments
        while i < n:
            ch = text[i]
            if ch == "\n":
                line += 1
                i += 1
                line_start = i
            elif ch in " \t\r\f\v":
                i += 1
            elif ch == "#":
                j = text.find("\n", i)
                i = n if j < 0 else j
            else:
                break
        if i >= n:
            toks.append(Token(EOF, None, line, i - line_start + 1, file))
            return toks
        ch = text[i]
        col = i - line_start + 1
        if ch.isascii() and (ch.isdigit() or (ch == "-" and i + 1 < n and text[i + 1].isascii()
                                              and text[i + 1].isdigit())):
            j = i + 1
            while j < n and text[j].isascii() and text[j].isdigit():
                j += 1
            value = int(text[i:j])
            m = _SIZE_SUFFIX.match(text, j)
            if m:
                value *= _MULT[m.group(1).lower()]
                j = m.end()
            toks.append(Token(NUM, value, line, col, file))
            i = j
        elif ch.isascii() and (ch.isalpha() or ch == "_"):
            j = i + 1
            while j < n and text[j].isascii() and (text[j].isalnum() or text[j] == "_"):
                j += 1
            toks.append(Token(IDENT, text[i:j], line, col, file))
            i = j
        elif ch == '"':
            j = i + 1
            buf = []
            start_line, start_col = line, col
            closed = False
            while j < n:
                c = text[j]
                if c == '"':
                    closed = True
                    break
                if c == "\\" and j + 1 < n:
                    nxt = text[j + 1]
                    if nxt == '"':
                        buf.append('"')
                    else:
                        buf.append(c)
                        buf.append(nxt)
                    if nxt == "\n":
                        line += 1
                        line_start = j + 2
                    j += 2
                    continue
                if c == "\n":
                    line += 1
                    line_start = j + 1
                buf.append(c)
                j += 1
            if not closed:
                toks.append(Token(ERR, "unterminated string", start_line, start_col, file))
                toks.append(Token(EOF, None, line, n - line_start + 1, file))
                return toks
            toks.append(Token(STR, "".join(buf), start_line, start_col, file))
            i = j + 1
        elif ch in "{}":
            toks.append(Token(SYM, ch, line, col, file))
            i += 1
        else:
            shown = ch if ch.isprintable() else repr(ch)[1:-1]
            toks.append(Token(ERR, f"unexpected character '{shown}'", line, col, file))
            i += 1


# ============================================================================================
# helpers


def levenshtein(a: str, b: str, limit: int = 3) -> int:
    if abs(len(a) - len(b)) >= limit:
        return limit
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def suggest(word: str, candidates) -> Optional[str]:
    word = word.lower()
    best, best_d = None, 3
    for c in sorted(candidates):
        d = levenshtein(word, c)
        if d < best_d:
            best, best_d = c, d
    return best if best_d <= 2 else None


_ENDPOINT_RE = re.compile(r"^(?:(tcp|unix)://)?(\[[^\]]*\]|[^:\[\]]*)(?::([^:]*))?(?::([^:]*))?$")


def parse_endpoints(text: str, default_port: int = 0) -> list[Endpoint]:
    """``[tcp://|unix://](host|[host])[:port][:az]``, comma separated (storage.c).

    After the host, a part starting with a digit is the port, anything else the availability
    zone.  Endpoints without a port get ``default_port``.  Raises ValueError on a bad list.
    """
    out = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            raise ValueError("empty endpoint")
        scheme = "tcp"
        if item.startswith("tcp://"):
            item = item[6:]
        elif item.startswith("unix://"):
            scheme, item = "unix", item[7:]
        if item.startswith("["):
            end = item.find("]")
            if end < 0:
                raise ValueError(f"unclosed '[' in '{raw.strip()}'")
            host, rest = item[1:end], item[end + 1:]
        else:
            host, _, rest = item.partition(":")
            rest = (":" + rest) if _ else ""
        if not host:
            raise ValueError(f"empty host in '{raw.strip()}'")
        port, az = None, None
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"unexpected '{rest}' after host in '{raw.strip()}'")
            parts = rest[1:].split(":")
            if len(parts) > 2:
                raise ValueError(f"too many ':' in '{raw.strip()}'")
            for part in parts:
                if not part:
                    raise ValueError(f"empty port or zone in '{raw.strip()}'")
                if part[0].isdigit():
                    if port is not None or not part.isdigit() or not 0 < int(part) < 65536:
                        raise ValueError(f"bad port '{part}' in '{raw.strip()}'")
                    port = int(part)
                else:
                    if az is not None:
                        raise ValueError(f"two availability zones in '{raw.strip()}'")
                    az = part
        out.append(Endpoint(host=host, port=port if port is not None else default_port,
                            availability_zone=az, address_type=scheme))
    return out


def _quote(s: str) -> str:
    return '"' + s.replace('"', '\\"') + '"'


# ============================================================================================
# keyword schema
#
# A spec is (kind, field).  Kinds:
#   str int bool size: plain values (size = integer, suffixes allowed)
#   tsa: target_session_attrs string;  quantiles: "0.99,0.95";  octal: unix_socket_mode
#   dep_int dep_bool: deprecated, parsed, warned, ignored
#   int_auto: workers (number or "auto")
#   or a callable(reader, stream, target, token) for sub-blocks / special cases.

_REPEATABLE = {"listen", "storage", "database", "user", "group", "include", "auth_common_name",
               "shared_pool", "ldap_endpoint", "ldap_storage_credentials", "load_module"}


_VALUE_WORDS = frozenset(("yes", "no", "default", "local", "host", "hostssl", "hostnossl"))


class _Err(Exception):
    def __init__(self, loc: Location, msg: str, hint: Optional[str] = None):
        super().__init__(msg)
        self.loc, self.msg, self.hint = loc, msg, hint


class _Stream:
    def __init__(self, tokens: list[Token]):
        self.toks = tokens
        self.pos = 0

    def peek(self) -> Token:
        return self.toks[self.pos]

    def next(self) -> Token:
        tok = self.toks[self.pos]
        if tok.kind != EOF:
            self.pos += 1
        return tok


class _Reader:
    def __init__(self, config: Config, resolve_relative_to_including_file: bool = True):
        self.config = config
        self.errors: list[str] = []
        self.warnings = config.warnings
        self.rule_order = 0
        self.rel_fallback = resolve_relative_to_including_file
        self.rule_keys: dict[tuple, Rule] = {}

    # -- diagnostics --------------------------------------------------------------------
    def error(self, loc: Location, msg: str, hint: Optional[str] = None) -> None:
        if len(self.errors) >= MAX_ERRORS:
            return
        text = f"{loc}: {msg}"
        if hint:
            text += f"\n  hint: {hint}"
        self.errors.append(text)
        if len(self.errors) == MAX_ERRORS:
            self.errors.append(f"{loc}: too many errors, giving up")

    def warn(self, loc: Location, msg: str) -> None:
        self.warnings.append(f"{loc}: {msg}")

    # -- value readers ------------------------------------------------------------------
    @staticmethod
    def _lex_error(tok: Token) -> None:
        if tok.kind == ERR:
            raise _Err(tok.loc, tok.value)

    def read_string(self, s: _Stream, what: str = "string") -> str:
        tok = s.next()
        self._lex_error(tok)
        if tok.kind != STR:
            raise _Err(tok.loc, f"expected {what}, got {tok.describe()}",
                       "strings and names must be in double quotes" if tok.kind == IDENT else None)
        return tok.value

    def read_int(self, s: _Stream) -> int:
        tok = s.next()
        self._lex_error(tok)
        if tok.kind != NUM:
            raise _Err(tok.loc, f"expected number, got {tok.describe()}")
        if not INT_MIN <= tok.value <= INT_MAX:
            raise _Err(tok.loc, f"number {tok.value} is out of range")
        return tok.value

    def read_bool(self, s: _Stream) -> bool:
        tok = s.next()
        self._lex_error(tok)
        if tok.kind == IDENT and tok.value.lower() in ("yes", "no"):
            return tok.value.lower() == "yes"
        raise _Err(tok.loc, f"expected yes/no, got {tok.describe()}")

    def read_value(self, kind: str, s: _Stream, kw: str, kwtok: Token):
        if kind in ("str", "dep_str"):
            return self.read_string(s)
        if kind in ("int", "size", "dep_int"):
            return self.read_int(s)
        if kind in ("bool", "dep_bool"):
            return self.read_bool(s)
        if kind == "tsa":
            tok = s.peek()
            value = self.read_string(s)
            if value not in C.TARGET_SESSION_ATTRS:
                raise _Err(tok.loc, f"can't parse target session attrs from '{value}'")
            return value
        if kind == "quantiles":
            tok = s.peek()
            value = self.read_string(s)
            out = []
            for part in value.split(","):
                try:
                    q = float(part)
                except ValueError:
                    raise _Err(tok.loc, "incorrect quantile value") from None
                if not 0 <= q <= 1:
                    raise _Err(tok.loc, "incorrect quantile value")
                out.append(q)
            return out
        if kind == "octal":
            tok = s.peek()
            value = self.read_string(s)
            if not value or any(c not in "01234567" for c in value) or int(value, 8) > 0o7777:
                raise _Err(tok.loc, f"unix_socket_mode '{value}' is not an octal file mode")
            return value
        if kind == "int_auto":
            tok = s.peek()
            if tok.kind == NUM:
                return self.read_int(s)
            s.next()
            self._lex_error(tok)
            if tok.kind == STR and tok.value == "auto":
                return C.auto_workers()
            raise _Err(tok.loc, f"expected number or \"auto\", got {tok.describe()}")
        raise AssertionError(kind)  # pragma: no cover

    # -- generic block ------------------------------------------------------------------
    def expect_open(self, s: _Stream) -> Token:
        tok = s.next()
        if tok.kind != SYM or tok.value != "{":
            raise _Err(tok.loc, f"expected '{{', got {tok.describe()}")
        return tok

    def recover(self, s: _Stream, schema: dict) -> None:
        """Skip tokens after an error until the next keyword of this block, '}' or EOF."""
        depth = 0
        while True:
            tok = s.peek()
            if tok.kind == EOF:
                return
            if tok.kind == SYM:
                if tok.value == "{":
                    depth += 1
                elif depth == 0:
                    return
                else:
                    depth -= 1
            elif depth == 0 and tok.kind == IDENT and (
                    tok.value.lower() in schema
                    or (s.pos > 0 and s.toks[s.pos - 1].line < tok.line
                        and tok.value.lower() not in _VALUE_WORDS)):
                # a keyword of this block, or a word that starts a new line
                return
            s.next()

    def block(self, s: _Stream, schema: dict, target, where: str, root: bool = False,
              extra_keyword: Optional[Callable] = None) -> None:
        """Parse ``keyword value`` pairs until '}' (or EOF at the root)."""
        seen: dict[str, Location] = {}
        locations = getattr(target, "locations", None)
        while True:
            tok = s.next()
            try:
                if tok.kind == EOF:
                    if not root:
                        raise _Err(tok.loc, f"unexpected end of file in {where}, expected '}}'")
                    return
                if tok.kind == SYM and tok.value == "}":
                    if root:
                        raise _Err(tok.loc, "unexpected '}'")
                    return
                if tok.kind == ERR:
                    raise _Err(tok.loc, tok.value)
                if tok.kind == STR and extra_keyword is not None:
                    extra_keyword(self, s, target, tok)
                    continue
                if tok.kind != IDENT:
                    raise _Err(tok.loc, f"expected a keyword in {where}, got {tok.describe()}")
                kw = tok.value.lower()
                spec = schema.get(kw)
                if spec is None:
                    if kw in ALL_KEYWORDS:
                        raise _Err(tok.loc, f"keyword '{tok.value}' is not allowed in {where}")
                    hint = suggest(kw, schema) or suggest(kw, ALL_KEYWORDS)
                    raise _Err(tok.loc, f"unknown keyword '{tok.value}' in {where}",
                               f"did you mean '{hint}'?" if hint else None)
                if kw in seen and kw not in _REPEATABLE:
                    self.warn(tok.loc, f"'{kw}' is set again in {where} (first at line "
                                       f"{seen[kw].line}); the last value wins")
                seen[kw] = tok.loc
                if isinstance(locations, dict):
                    locations[kw] = tok.loc
                kind, fieldname = spec
                if callable(kind):
                    kind(self, s, target, tok)
                    continue
                value = self.read_value(kind, s, kw, tok)
                if kind.startswith("dep_"):
                    self.warn(tok.loc, f"'{kw}' is deprecated and ignored")
                if fieldname:
                    setattr(target, fieldname, value)
            except _Err as e:
                self.error(e.loc, e.msg, e.hint)
                if len(self.errors) >= MAX_ERRORS:
                    s.pos = len(s.toks) - 1
                    return
                self.recover(s, schema)

    # -- files --------------------------------------------------------------------------
    def parse_file(self, path: str, stack: list[str], inc_loc: Optional[Location]) -> None:
        try:
            real = os.path.realpath(path)
        except (OSError, ValueError) as e:
            raise _Err(inc_loc or Location(path, 0, 0),
                       f"failed to open config file '{path}': {e}") from None
        if real in stack:
            chain = " -> ".join(stack[stack.index(real):] + [real])
            raise _Err(inc_loc or Location(path, 1, 1), f"circular include of '{path}' ({chain})")
        if len(stack) > MAX_INCLUDE_DEPTH:
            raise _Err(inc_loc or Location(path, 1, 1),
                       f"include depth exceeds {MAX_INCLUDE_DEPTH} "
                       f"(possible circular include) at '{path}'")
        try:
            with open(path, "rb") as f:
                data = f.read()
        except (OSError, ValueError) as e:
            where = inc_loc or Location(path, 0, 0)
            reason = getattr(e, "strerror", None) or str(e)
            raise _Err(where, f"failed to open config file '{path}': {reason}") from None
        text = data.decode("utf-8", errors="replace")
        self.config.files.append(path)
        s = _Stream(tokenize(text, path))
        stack.append(real)
        try:
            self.block(s, ROOT_SCHEMA, self.config, "the top level", root=True)
        finally:
            stack.pop()
        self._stack = stack

    def include(self, s: _Stream, target, kwtok: Token) -> None:
        tok = s.peek()
        path = self.read_string(s)
        if not path:
            raise _Err(tok.loc, "include path is empty")
        if "\x00" in path:
            raise _Err(tok.loc, "include path contains a NUL byte")
        candidate = path
        if (not os.path.isabs(path) and not os.path.exists(path) and self.rel_fallback):
            alt = os.path.join(os.path.dirname(tok.file), path)
            if os.path.exists(alt):
                candidate = alt
        try:
            self.parse_file(candidate, self._stack, tok.loc)
        except _Err as e:
            self.error(e.loc, e.msg, e.hint)


# ============================================================================================
# block handlers


def _listen(r: _Reader, s: _Stream, config: Config, kwtok: Token) -> None:
    listen = Listen(location=kwtok.loc)
    config.listen.append(listen)
    r.expect_open(s)
    r.block(s, LISTEN_SCHEMA, listen, "listen")


def _listen_storage(r: _Reader, s: _Stream, listen: Listen, kwtok: Token) -> None:
    listen.storage.append(r.read_string(s))


def _storage(r: _Reader, s: _Stream, config: Config, kwtok: Token) -> None:
    tok = s.peek()
    name = r.read_string(s, "storage name")
    storage = Storage(name=name, location=kwtok.loc)
    if name in config.storages:
        r.error(tok.loc, f"duplicate storage definition: {name}")
    else:
        config.storages[name] = storage
    r.expect_open(s)
    r.block(s, STORAGE_SCHEMA, storage, f"storage '{name}'")


def _storage_host(r: _Reader, s: _Stream, storage: Storage, kwtok: Token) -> None:
    tok = s.peek()
    host = r.read_string(s)
    try:
        endpoints = parse_endpoints(host, 0)
    except ValueError as e:
        raise _Err(tok.loc, f"can't parse endpoints from: {host} ({e})") from None
    storage.host = host
    storage.endpoints = endpoints


def _balancing(r: _Reader, s: _Stream, storage: Storage, kwtok: Token) -> None:
    storage.balancing = Balancing()
    r.expect_open(s)
    r.block(s, BALANCING_SCHEMA, storage.balancing, "balancing")


def _balancing_method(r: _Reader, s: _Stream, bal: Balancing, kwtok: Token) -> None:
    tok = s.peek()
    method = r.read_string(s)
    if method not in C.BALANCING_METHODS:
        raise _Err(tok.loc, f"balancing method '{method}' is not implemented")
    bal.method = "roundrobin" if method == "rr" else method
    if s.peek().kind == SYM and s.peek().value == "{":
        s.next()
        r.block(s, BALANCING_METHOD_SCHEMA, bal, f"balancing method '{method}'")


def _new_rule(r: _Reader, loc: Location, db: str, db_default: bool, user: str,
              user_default: bool, address_range: AddressRange, conn_type: str,
              internal: bool = False) -> Rule:
    rule = Rule(db_name=db, user_name=user, db_is_default=db_default,
                user_is_default=user_default, address_range=address_range,
                conn_type=conn_type, location=loc, order=r.rule_order)
    if internal:
        rule.pool_routing = "internal"
    r.rule_order += 1
    r.config.rules.append(rule)
    return rule


def _register(r: _Reader, rule: Rule) -> None:
    """Route redefinition check, once the rule's pool_routing is known."""
    key = rule.key() + (rule.is_internal,)
    prev = r.rule_keys.get(key)
    if prev is not None:
        r.error(rule.location, f"route '{rule.db_name}.{rule.user_name}': is redefined "
                               f"(first defined at {prev.location})")
    else:
        r.rule_keys[key] = rule


def _watchdog(r: _Reader, s: _Stream, storage: Storage, kwtok: Token) -> None:
    rule = _new_rule(r, kwtok.loc, "watchdog_int", False, "watchdog_int", False,
                     AddressRange.default(), "default", internal=True)
    wd = Watchdog(rule=rule, location=kwtok.loc)
    storage.watchdog = wd
    r.expect_open(s)
    r.block(s, WATCHDOG_SCHEMA, rule, f"storage '{storage.name}' watchdog")
    rule.pool_routing = "internal"
    _register(r, rule)
    wd.watchdog_lag_query = rule.watchdog_lag_query
    wd.watchdog_lag_interval = rule.watchdog_lag_interval


def _database(r: _Reader, s: _Stream, config: Config, kwtok: Token) -> None:
    tok = s.next()
    if tok.kind == STR:
        db, db_default = tok.value, False
    elif tok.kind == IDENT and tok.value.lower() == "default":
        db, db_default = C.DEFAULT_DB, True
    else:
        raise _Err(tok.loc, f"expected database name or default, got {tok.describe()}")
    r.expect_open(s)
    ctx = {"db": db, "db_default": db_default}
    r.block(s, DATABASE_SCHEMA, ctx, f"database '{db}'")


def _address_range(r: _Reader, tok: Token) -> AddressRange:
    try:
        ar = AddressRange.parse(tok.value)
    except ValueError as e:
        raise _Err(tok.loc, str(e)) from None
    if ar.host_bits_set:
        r.warn(tok.loc, f"address '{tok.value}' has bits set beyond its mask; like C Odyssey, "
                        f"this rule matches no client (write {ar.network})")
    return ar


def _selectors(r: _Reader, s: _Stream, db: str, user: str) -> tuple[AddressRange, str]:
    address, conn_type = None, None
    while True:
        tok = s.peek()
        if tok.kind == SYM:
            return address or AddressRange.default(), conn_type or "default"
        if tok.kind == STR:
            s.next()
            if address is not None:
                raise _Err(tok.loc, f"redefinition of address for route '{db}.{user}'")
            address = _address_range(r, tok)
            continue
        if tok.kind == IDENT:
            word = tok.value.lower()
            if word == "default":
                s.next()
                if address is not None:
                    raise _Err(tok.loc, f"redefinition of address for route '{db}.{user}'")
                address = AddressRange.default()
                continue
            if word in ("local", "host", "hostssl", "hostnossl"):
                s.next()
                if conn_type is not None:
                    raise _Err(tok.loc,
                               f"redefinition of connection type for route '{db}.{user}'")
                conn_type = word
                continue
        raise _Err(tok.loc, f"expected address, default, local, host, hostssl, hostnossl or "
                            f"'{{' in route '{db}.{user}', got {tok.describe()}")


def _user(r: _Reader, s: _Stream, ctx: dict, kwtok: Token) -> None:
    tok = s.next()
    if tok.kind == STR:
        user, user_default = tok.value, False
    elif tok.kind == IDENT and tok.value.lower() == "default":
        user, user_default = C.DEFAULT_USER, True
    else:
        raise _Err(tok.loc, f"expected user name or default, got {tok.describe()}")
    address, conn_type = _selectors(r, s, ctx["db"], user)
    rule = _new_rule(r, kwtok.loc, ctx["db"], ctx["db_default"], user, user_default, address,
                     conn_type)
    r.expect_open(s)
    r.block(s, ROUTE_SCHEMA, rule, f"route '{ctx['db']}.{user}'")
    _register(r, rule)


def _group(r: _Reader, s: _Stream, ctx: dict, kwtok: Token) -> None:
    name = r.read_string(s, "group name")
    user = "group_" + name
    address, conn_type = _selectors(r, s, ctx["db"], user)
    rule = _new_rule(r, kwtok.loc, ctx["db"], ctx["db_default"], user, False, address,
                     conn_type)
    rule.group_name = name
    r.expect_open(s)
    r.block(s, GROUP_SCHEMA, rule, f"group '{name}'")
    rule.pool_routing = "client_visible"
    _register(r, rule)


def _kv_block(r: _Reader, s: _Stream, dest: dict, where: str) -> None:
    r.expect_open(s)
    while True:
        tok = s.next()
        if tok.kind == SYM and tok.value == "}":
            return
        if tok.kind == STR:
            dest[tok.value] = r.read_string(s, f"a value for '{tok.value}' in {where}")
            continue
        if tok.kind == EOF:
            raise _Err(tok.loc, f"unexpected end of file in {where}, expected '}}'")
        if tok.kind == ERR:
            raise _Err(tok.loc, tok.value)
        raise _Err(tok.loc, f"expected \"name\" \"value\" pairs in {where}, got {tok.describe()}")


def _options(r: _Reader, s: _Stream, rule: Rule, kwtok: Token) -> None:
    _kv_block(r, s, rule.options, "options")


def _backend_startup_options(r: _Reader, s: _Stream, rule: Rule, kwtok: Token) -> None:
    _kv_block(r, s, rule.backend_startup_options, "backend_startup_options")


def _role(r: _Reader, s: _Stream, rule: Rule, kwtok: Token) -> None:
    tok = s.peek()
    role = r.read_string(s)
    if role not in C.ROLES:
        raise _Err(tok.loc, f"role type '{role}' is unknown")
    rule.role = role


def _auth_common_name(r: _Reader, s: _Stream, rule: Rule, kwtok: Token) -> None:
    tok = s.next()
    if tok.kind == IDENT and tok.value.lower() == "default":
        rule.auth_common_name_default = True
    elif tok.kind == STR:
        rule.auth_common_name.append(tok.value)
    else:
        raise _Err(tok.loc, f"expected string or default, got {tok.describe()}")


def _client_max(r: _Reader, s: _Stream, target, kwtok: Token) -> None:
    target.client_max = r.read_int(s)


def _pool_notice(r: _Reader, s: _Stream, rule: Rule, kwtok: Token) -> None:
    tok = s.peek()
    value = r.read_int(s)
    if value < 0:
        raise _Err(tok.loc, "pool_notice_after_waiting_ms can't be negative")
    rule.pool_notice_after_waiting_ms = value


def _ldap_storage_credentials(r: _Reader, s: _Stream, rule: Rule, kwtok: Token) -> None:
    name = r.read_string(s, "ldap_storage_credentials name")
    creds = LdapStorageCredentials(name=name, location=kwtok.loc)
    rule.ldap_storage_credentials[name] = creds
    r.expect_open(s)
    r.block(s, LDAP_CREDS_SCHEMA, creds, f"ldap_storage_credentials '{name}'")


def _shared_pool(r: _Reader, s: _Stream, config: Config, kwtok: Token) -> None:
    tok = s.peek()
    name = r.read_string(s, "shared_pool name")
    sp = SharedPool(name=name, location=kwtok.loc)
    if name in config.shared_pools:
        r.error(tok.loc, f"shared pool '{name}' is redefined")
    else:
        config.shared_pools[name] = sp
    r.expect_open(s)
    r.block(s, SHARED_POOL_SCHEMA, sp, f"shared_pool '{name}'")


def _ldap_endpoint(r: _Reader, s: _Stream, config: Config, kwtok: Token) -> None:
    tok = s.peek()
    name = r.read_string(s, "ldap_endpoint name")
    ep = LdapEndpoint(name=name, location=kwtok.loc)
    if name in config.ldap_endpoints:
        r.error(tok.loc, f"ldap_endpoint '{name}' is redefined")
    else:
        config.ldap_endpoints[name] = ep
    r.expect_open(s)
    r.block(s, LDAP_ENDPOINT_SCHEMA, ep, f"ldap_endpoint '{name}'")


def _conn_drop(r: _Reader, s: _Stream, config: Config, kwtok: Token) -> None:
    kw = kwtok.value.lower()
    other = "online_restart_drop_options" if kw == "conn_drop_options" else "conn_drop_options"
    if other in config.locations:
        r.error(kwtok.loc, f"'{kw}' and '{other}' can't both be set (they are aliases)")
    config.conn_drop_options = ConnDropOptions(location=kwtok.loc)
    r.expect_open(s)
    r.block(s, CONN_DROP_SCHEMA, config.conn_drop_options, kw)


def _positive(field: str, label: str):
    def handler(r: _Reader, s: _Stream, target, kwtok: Token) -> None:
        tok = s.peek()
        value = r.read_int(s)
        if value <= 0:
            raise _Err(tok.loc, f"{label} must be positive")
        setattr(target, field, value)
    return handler


def _soft_oom(r: _Reader, s: _Stream, config: Config, kwtok: Token) -> None:
    if config.soft_oom.enabled:
        r.error(kwtok.loc, "soft oom is redefined")
    soft = C.SoftOom(location=kwtok.loc)
    config.soft_oom = soft
    r.expect_open(s)
    r.block(s, SOFT_OOM_SCHEMA, soft, "soft_oom")
    if soft.limit <= 0:
        r.error(kwtok.loc, "limit is not set in soft_oom")
    soft.enabled = True


def _soft_oom_drop(r: _Reader, s: _Stream, soft, kwtok: Token) -> None:
    if soft.drop.enabled:
        r.error(kwtok.loc, "drop options in soft oom is redefined")
    soft.drop = C.SoftOomDrop()
    r.expect_open(s)
    r.block(s, SOFT_OOM_DROP_SCHEMA, soft.drop, "soft_oom drop")
    soft.drop.enabled = True


_SIGNALS = ("SIGHUP", "SIGINT", "SIGQUIT", "SIGABRT", "SIGKILL", "SIGUSR1", "SIGUSR2", "SIGTERM",
            "SIGSTOP", "SIGTSTP")


def _signal_name(r: _Reader, s: _Stream, drop, kwtok: Token) -> None:
    tok = s.peek()
    value = r.read_string(s)
    name = value.upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    if name not in _SIGNALS:
        raise _Err(tok.loc, f"can't parse signal from '{value}'")
    drop.signal = name
    drop.signum = int(getattr(_signal, name))


def _query_parsing(r: _Reader, s: _Stream, config: Config, kwtok: Token) -> None:
    qp = C.QueryParsing(location=kwtok.loc)
    config.query_parsing = qp
    r.expect_open(s)
    r.block(s, QUERY_PARSING_SCHEMA, qp, "query_parsing")


def _query_parsing_mode(r: _Reader, s: _Stream, qp, kwtok: Token) -> None:
    tok = s.next()
    if tok.kind in (IDENT, STR) and tok.value.lower() in C.QUERY_PARSING_MODES:
        qp.mode = tok.value.lower()
        return
    if tok.kind in (IDENT, STR) and tok.value.lower() == "full":
        raise _Err(tok.loc, "query_parsing mode 'full' is not supported")
    raise _Err(tok.loc, f"expected disabled or minimal, got {tok.describe()}")


def _load_module(r: _Reader, s: _Stream, config: Config, kwtok: Token) -> None:
    path = r.read_string(s)
    config.modules.append(path)
    r.warn(kwtok.loc, f"load_module '{path}': C modules can't be loaded by odyssey-gevent; "
                      f"ignored")
    if s.peek().kind == SYM and s.peek().value == "{":
        depth = 0
        while True:
            tok = s.next()
            if tok.kind == EOF:
                raise _Err(tok.loc, "unexpected end of file in load_module block")
            if tok.kind == SYM:
                depth += 1 if tok.value == "{" else -1
                if depth == 0:
                    return


def _weights(r: _Reader, s: _Stream, target, kwtok: Token) -> None:
    """Legacy `weights { ... }` / `conn_weight` / `time_weight`: skipped with a warning."""
    r.warn(kwtok.loc, f"'{kwtok.value.lower()}' is not supported and ignored")
    if s.peek().kind == SYM and s.peek().value == "{":
        depth = 0
        while True:
            tok = s.next()
            if tok.kind == EOF:
                raise _Err(tok.loc, "unexpected end of file in weights block")
            if tok.kind == SYM:
                depth += 1 if tok.value == "{" else -1
                if depth == 0:
                    return
    else:
        s.next()


def _noop(kind):
    """C-internals tuning knobs: stored, no effect here (documented in docs/config.md)."""
    return kind


def _promhttp_port(r: _Reader, s: _Stream, config: Config, kwtok: Token) -> None:
    config.promhttp_server_port = r.read_int(s)
    r.warn(kwtok.loc, "promhttp_server_port: the built-in Prometheus exporter is not available; "
                      "ignored")


def _hba_file(r: _Reader, s: _Stream, config: Config, kwtok: Token) -> None:
    config.hba_file = r.read_string(s)


def _include(r: _Reader, s: _Stream, config: Config, kwtok: Token) -> None:
    r.include(s, config, kwtok)


# --------------------------------------------------------------------------------------------
# schema tables

ROUTE_SCHEMA: dict = {
    "authentication": ("str", "authentication"),
    "password": ("str", "password"),
    "auth_common_name": (_auth_common_name, None),
    "auth_query": ("str", "auth_query"),
    "auth_query_db": ("str", "auth_query_db"),
    "auth_query_user": ("str", "auth_query_user"),
    "auth_pam_service": ("str", "auth_pam_service"),
    "auth_module": ("str", "auth_module"),
    "enable_mdb_iamproxy_auth": ("bool", "enable_mdb_iamproxy_auth"),
    "mdb_iamproxy_socket_path": ("str", "mdb_iamproxy_socket_path"),
    "password_passthrough": ("bool", "password_passthrough"),
    "role": (_role, None),
    "storage": ("str", "storage_name"),
    "storage_db": ("str", "storage_db"),
    "storage_user": ("str", "storage_user"),
    "storage_password": ("str", "storage_password"),
    "pool": ("str", "pool"),
    "pool_routing": ("str", "pool_routing"),
    "pool_size": ("int", "pool_size"),
    "min_pool_size": ("int", "min_pool_size"),
    "pool_timeout": ("int", "pool_timeout"),
    "pool_ttl": ("int", "pool_ttl"),
    "pool_discard": ("bool", "pool_discard"),
    "pool_smart_discard": ("bool", "pool_smart_discard"),
    "pool_discard_query": ("str", "pool_discard_query"),
    "pool_cancel": ("bool", "pool_cancel"),
    "pool_rollback": ("bool", "pool_rollback"),
    "pool_reset_timeout_ms": ("int", "pool_reset_timeout_ms"),
    "pool_reserve_prepared_statement": ("bool", "pool_reserve_prepared_statement"),
    "pool_client_idle_timeout": ("int", "pool_client_idle_timeout"),
    "pool_idle_in_transaction_timeout": ("int", "pool_idle_in_transaction_timeout"),
    "pool_notice_after_waiting_ms": (_pool_notice, None),
    "pool_attach_check": ("bool", "pool_attach_check"),
    "pool_acquire_fail_fast": ("bool", "pool_acquire_fail_fast"),
    "pool_pin_on_listen": ("bool", "pool_pin_on_listen"),
    "shared_pool": ("str", "shared_pool"),
    "client_max": (_client_max, None),
    "client_fwd_error": ("bool", "client_fwd_error"),
    "client_show_id": ("bool", "client_show_id"),
    "application_name_add_host": ("bool", "application_name_add_host"),
    "maintain_params": ("bool", "maintain_params"),
    "reserve_session_server_connection": ("bool", "reserve_session_server_connection"),
    "server_lifetime": ("int", "server_lifetime"),
    "server_drop_on_cached_plan_error": ("bool", "server_drop_on_cached_plan_error"),
    "log_debug": ("bool", "log_debug"),
    "log_query": ("bool", "log_query"),
    "quantiles": ("quantiles", "quantiles"),
    "target_session_attrs": ("tsa", "target_session_attrs"),
    "catchup_timeout": ("int", "catchup_timeout"),
    "catchup_checks": ("dep_int", "catchup_checks"),
    "keepalive": ("int", "keepalive"),
    "keepalive_keep_interval": ("int", "keepalive_keep_interval"),
    "keepalive_probes": ("int", "keepalive_probes"),
    "keepalive_usr_timeout": ("int", "keepalive_usr_timeout"),
    "options": (_options, None),
    "backend_startup_options": (_backend_startup_options, None),
    "ldap_endpoint_name": ("str", "ldap_endpoint_name"),
    "ldap_storage_credentials_attr": ("str", "ldap_storage_credentials_attr"),
    "ldap_storage_credentials": (_ldap_storage_credentials, None),
    "ldap_pool_size": ("dep_int", "ldap_pool_size"),
    "ldap_pool_timeout": ("dep_int", "ldap_pool_timeout"),
    "ldap_pool_ttl": ("dep_int", "ldap_pool_ttl"),
    "conn_weight": (_weights, None),
    "time_weight": (_weights, None),
}
GROUP_SCHEMA = dict(ROUTE_SCHEMA, group_query=("str", "group_query"),
                    group_query_user=("str", "group_query_user"),
                    group_query_db=("str", "group_query_db"))
WATCHDOG_SCHEMA = dict(ROUTE_SCHEMA, watchdog_lag_query=("str", "watchdog_lag_query"),
                       watchdog_lag_interval=("int", "watchdog_lag_interval"))

DATABASE_SCHEMA: dict = {"user": (_user, None), "group": (_group, None)}

LISTEN_SCHEMA: dict = {
    "host": ("str", "host"),
    "port": ("int", "port"),
    "backlog": ("int", "backlog"),
    "tls": ("str", "tls"),
    "tls_ca_file": ("str", "tls_ca_file"),
    "tls_key_file": ("str", "tls_key_file"),
    "tls_cert_file": ("str", "tls_cert_file"),
    "tls_protocols": ("str", "tls_protocols"),
    "client_login_timeout": ("int", "client_login_timeout"),
    "target_session_attrs": ("tsa", "target_session_attrs"),
    "balancing_method": ("str", "balancing_method"),
    "catchup_timeout": ("int", "catchup_timeout"),
    "storage": (_listen_storage, None),
    "compression": ("dep_bool", "compression"),
}

BALANCING_METHOD_SCHEMA: dict = {"az_aware": ("bool", "az_aware")}
BALANCING_SCHEMA: dict = {
    "method": (_balancing_method, None),
    "show_notice_messages": ("bool", "show_notice_messages"),
}

STORAGE_SCHEMA: dict = {
    "type": ("str", "type"),
    "host": (_storage_host, None),
    "port": ("int", "port"),
    "tls": ("str", "tls"),
    "tls_ca_file": ("str", "tls_ca_file"),
    "tls_key_file": ("str", "tls_key_file"),
    "tls_cert_file": ("str", "tls_cert_file"),
    "tls_protocols": ("str", "tls_protocols"),
    "server_max_routing": ("int", "server_max_routing"),
    "endpoints_status_poll_interval": (
        _positive("endpoints_status_poll_interval", "endpoints_status_poll_interval"), None),
    "watchdog": (_watchdog, None),
    "balancing": (_balancing, None),
}

SHARED_POOL_SCHEMA: dict = {"pool_size": ("int", "pool_size")}

LDAP_ENDPOINT_SCHEMA: dict = {
    "ldapserver": ("str", "ldapserver"),
    "ldapport": ("int", "ldapport"),
    "ldapprefix": ("str", "ldapprefix"),
    "ldapsuffix": ("str", "ldapsuffix"),
    "ldapbasedn": ("str", "ldapbasedn"),
    "ldapbinddn": ("str", "ldapbinddn"),
    "ldapbindpasswd": ("str", "ldapbindpasswd"),
    "ldapsearchattribute": ("str", "ldapsearchattribute"),
    "ldapsearchfilter": ("str", "ldapsearchfilter"),
    "ldapscheme": ("str", "ldapscheme"),
    "ldapscope": ("str", "ldapscope"),
    "ldapurl": ("str", "ldapurl"),
}
LDAP_CREDS_SCHEMA: dict = {
    "ldap_storage_username": ("str", "ldap_storage_username"),
    "ldap_storage_password": ("str", "ldap_storage_password"),
}

CONN_DROP_SCHEMA: dict = {
    "drop_enabled": ("bool", "drop_enabled"),
    "rate": ("int", "rate"),
    "interval_ms": (_positive("interval_ms", "interval for conn drop options"), None),
}

SOFT_OOM_DROP_SCHEMA: dict = {
    "signal": (_signal_name, None),
    "max_rate": ("int", "max_rate"),
}
SOFT_OOM_SCHEMA: dict = {
    "limit": ("size", "limit"),
    "process": ("str", "process"),
    "check_interval_ms": ("int", "check_interval_ms"),
    "drop": (_soft_oom_drop, None),
}
QUERY_PARSING_SCHEMA: dict = {
    "mode": (_query_parsing_mode, None),
    "mem_limit": ("size", "mem_limit"),
}

ROOT_SCHEMA: dict = {
    "include": (_include, None),
    "daemonize": ("bool", "daemonize"),
    "priority": ("int", "priority"),
    "sequential_routing": ("bool", "sequential_routing"),
    "pid_file": ("str", "pid_file"),
    "unix_socket_dir": ("str", "unix_socket_dir"),
    "unix_socket_mode": ("octal", "unix_socket_mode"),
    "locks_dir": ("str", "locks_dir"),
    "external_auth_socket_path": ("str", "external_auth_socket_path"),
    "enable_online_restart": ("bool", "enable_online_restart"),
    "availability_zone": ("str", "availability_zone"),
    "graceful_die_on_errors": ("dep_bool", "graceful_die_on_errors"),
    "graceful_shutdown_timeout_ms": ("int", "graceful_shutdown_timeout_ms"),
    "bindwith_reuseport": ("bool", "bindwith_reuseport"),
    "conn_drop_options": (_conn_drop, None),
    "online_restart_drop_options": (_conn_drop, None),
    "enable_host_watcher": ("bool", "enable_host_watcher"),
    "log_debug": ("bool", "log_debug"),
    "log_to_stdout": ("bool", "log_to_stdout"),
    "log_config": ("bool", "log_config"),
    "log_session": ("bool", "log_session"),
    "log_query": ("bool", "log_query"),
    "log_file": ("str", "log_file"),
    "log_format": ("str", "log_format"),
    "log_stats": ("bool", "log_stats"),
    "log_async": ("bool", "log_async"),
    "log_queue_depth": ("int", "log_queue_depth"),
    "log_syslog": ("bool", "log_syslog"),
    "log_syslog_ident": ("str", "log_syslog_ident"),
    "log_syslog_facility": ("str", "log_syslog_facility"),
    "stats_interval": ("int", "stats_interval"),
    "smart_search_path_enquoting": ("bool", "smart_search_path_enquoting"),
    "log_general_stats_prom": ("bool", "log_general_stats_prom"),
    "log_route_stats_prom": ("bool", "log_route_stats_prom"),
    "promhttp_server_port": (_promhttp_port, None),
    "nodelay": ("bool", "nodelay"),
    "disable_nolinger": ("bool", "disable_nolinger"),
    "keepalive": ("int", "keepalive"),
    "keepalive_keep_interval": ("int", "keepalive_keep_interval"),
    "keepalive_probes": ("int", "keepalive_probes"),
    "keepalive_usr_timeout": ("int", "keepalive_usr_timeout"),
    "max_sigterms_to_die": ("int", "max_sigterms_to_die"),
    "readahead": ("int", "readahead"),
    "workers": ("int_auto", "workers"),
    "cpu_affinity": ("str", "cpu_affinity"),
    "resolvers": ("int", "resolvers"),
    "pipeline": ("dep_int", "pipeline"),
    "packet_read_size": ("dep_int", "packet_read_size"),
    "packet_write_queue": ("dep_int", "packet_write_queue"),
    "cache": ("dep_int", "cache"),
    "cache_chunk": ("dep_int", "cache_chunk"),
    "cache_msg_gc_size": ("int", "cache_msg_gc_size"),
    "cache_coroutine": ("int", "cache_coroutine"),
    "coroutine_stack_size": ("int", "coroutine_stack_size"),
    "system_coroutine_stack_size": ("int", "system_coroutine_stack_size"),
    "client_max": (_client_max, None),
    "client_max_routing": ("int", "client_max_routing"),
    "server_login_retry": ("int", "server_login_retry"),
    "backend_connect_timeout_ms": ("int", "backend_connect_timeout_ms"),
    "cancel_timeout_ms": ("int", "cancel_timeout_ms"),
    "cancel_queue_timeout_ms": ("int", "cancel_queue_timeout_ms"),
    "cancel_max_inflight": ("int", "cancel_max_inflight"),
    "dns_cache_ttl": ("int", "dns_cache_ttl"),
    "virtual_processing": ("bool", "virtual_processing"),
    "virtual_transaction": ("bool", "virtual_transaction"),
    "hba_file": (_hba_file, None),
    "group_checker_interval": ("int", "group_checker_interval"),
    "listen": (_listen, None),
    "storage": (_storage, None),
    "database": (_database, None),
    "shared_pool": (_shared_pool, None),
    "ldap_endpoint": (_ldap_endpoint, None),
    "soft_oom": (_soft_oom, None),
    "query_parsing": (_query_parsing, None),
    "load_module": (_load_module, None),
    "weights": (_weights, None),
}

# Every word the format knows (for "not allowed here" vs "unknown" and for hints).
ALL_KEYWORDS = frozenset().union(
    ROOT_SCHEMA, LISTEN_SCHEMA, STORAGE_SCHEMA, BALANCING_SCHEMA, BALANCING_METHOD_SCHEMA,
    GROUP_SCHEMA, WATCHDOG_SCHEMA, DATABASE_SCHEMA, SHARED_POOL_SCHEMA, LDAP_ENDPOINT_SCHEMA,
    LDAP_CREDS_SCHEMA, CONN_DROP_SCHEMA, SOFT_OOM_SCHEMA, SOFT_OOM_DROP_SCHEMA,
    QUERY_PARSING_SCHEMA, ("yes", "no", "default", "local", "host", "hostssl", "hostnossl"))

# Keywords accepted but with no effect in odyssey-gevent (C internals).
NOOP_KEYWORDS = ("cache_coroutine", "coroutine_stack_size", "system_coroutine_stack_size",
                 "cache_msg_gc_size", "readahead", "resolvers", "log_async", "log_queue_depth",
                 "cpu_affinity", "priority", "locks_dir", "bindwith_reuseport",
                 "reserve_session_server_connection", "pool_attach_check", "dns_cache_ttl")
DEPRECATED_KEYWORDS = ("pipeline", "cache", "cache_chunk", "packet_read_size",
                       "packet_write_queue", "graceful_die_on_errors", "compression",
                       "catchup_checks", "ldap_pool_size", "ldap_pool_timeout", "ldap_pool_ttl")


# ============================================================================================
# entry points


def _parse(path: str, text: Optional[str] = None) -> tuple[Config, list[str]]:
    config = Config(path=path)
    r = _Reader(config)
    r._stack = []
    try:
        if text is None:
            r.parse_file(path, r._stack, None)
        else:
            config.files.append(path)
            r._stack.append(os.path.realpath(path))
            r.block(_Stream(tokenize(text, path)), ROOT_SCHEMA, config, "the top level",
                    root=True)
    except _Err as e:
        r.error(e.loc, e.msg, e.hint)
    except RecursionError:
        r.error(Location(path, 0, 0), "config is nested too deeply")
    except Exception as e:  # never a traceback for a bad config: report it as a config error
        r.error(Location(path, 0, 0), f"internal error while reading the config: {e!r}")
    return config, r.errors


def load(path, validate: bool = True) -> Config:
    """Read, parse and validate an Odyssey config file.  Raises ConfigError."""
    path = os.fspath(path)
    config, errors = _parse(path)
    return _finish(config, errors, validate)


def loads(text: str, path: str = "<string>", validate: bool = True) -> Config:
    """Like :func:`load` for config text (includes resolve against the process CWD)."""
    config, errors = _parse(path, text)
    return _finish(config, errors, validate)


def _finish(config: Config, errors: list[str], validate: bool) -> Config:
    if not errors and validate:
        from odyssey_gevent.config.validate import validate as _validate
        try:
            errors = _validate(config)
        except Exception as e:  # pragma: no cover - defensive, see _parse
            errors = [f"{config.path}:0:0: internal error while validating the config: {e!r}"]
    if errors:
        raise ConfigError(errors, config.warnings)
    return config


# ============================================================================================
# dump (log_config)


def _fmt(value) -> Optional[str]:
    if value is None:
        return None
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return _quote(",".join(str(v) for v in value))
    return _quote(str(value))


def _emit(lines: list[str], indent: str, obj, schema: dict, skip=()) -> None:
    for kw, (kind, fieldname) in schema.items():
        if not fieldname or kw in skip or (isinstance(kind, str) and kind.startswith("dep_")):
            continue
        text = _fmt(getattr(obj, fieldname, None))
        if text is not None:
            lines.append(f"{indent}{kw} {text}")


def _emit_rule(lines: list[str], indent: str, rule: Rule) -> None:
    _emit(lines, indent, rule, ROUTE_SCHEMA)
    if rule.role:
        lines.append(f"{indent}role {_quote(rule.role)}")
    if rule.client_max is not None:
        lines.append(f"{indent}client_max {rule.client_max}")
    if rule.pool_notice_after_waiting_ms >= 0:
        lines.append(f"{indent}pool_notice_after_waiting_ms {rule.pool_notice_after_waiting_ms}")
    if rule.auth_common_name_default:
        lines.append(f"{indent}auth_common_name default")
    for cn in rule.auth_common_name:
        lines.append(f"{indent}auth_common_name {_quote(cn)}")
    for block in ("options", "backend_startup_options"):
        items = getattr(rule, block)
        if items:
            lines.append(f"{indent}{block} {{")
            for k, v in items.items():
                lines.append(f"{indent}\t{_quote(k)} {_quote(v)}")
            lines.append(f"{indent}}}")
    for creds in rule.ldap_storage_credentials.values():
        lines.append(f"{indent}ldap_storage_credentials {_quote(creds.name)} {{")
        _emit(lines, indent + "\t", creds, LDAP_CREDS_SCHEMA)
        lines.append(f"{indent}}}")
    if rule.group_name is not None:
        _emit(lines, indent, rule, {k: GROUP_SCHEMA[k] for k in
                                    ("group_query", "group_query_user", "group_query_db")})


def rule_signature(rule: Rule) -> tuple:
    """Everything that makes a rule behave as it does, its storage included: on reload a rule
    with the same signature is the same rule (its routes and pools carry on)."""
    lines: list[str] = []
    _emit_rule(lines, "", rule)
    storage = rule.storage
    storage_lines: list[str] = []
    if storage is not None:
        _emit(storage_lines, "", storage, STORAGE_SCHEMA)
    return (rule.key(), rule.pool_routing, rule.group_name, tuple(lines),
            storage.name if storage is not None else None, tuple(storage_lines))


def dump_config(config: Config) -> str:
    """Effective config as Odyssey-format text; loading it back gives the same model."""
    lines: list[str] = ["# effective configuration (odyssey-gevent)"]
    _emit(lines, "", config, ROOT_SCHEMA, skip=("workers",))
    lines.append(f"workers {config.workers}")
    if config.client_max is not None:
        lines.append(f"client_max {config.client_max}")
    if config.hba_file is not None:
        lines.append(f"hba_file {_quote(config.hba_file)}")
    cd = config.conn_drop_options
    lines.append("conn_drop_options {")
    _emit(lines, "\t", cd, CONN_DROP_SCHEMA)
    lines.append(f"\tinterval_ms {cd.interval_ms}")
    lines.append("}")
    if config.soft_oom.enabled:
        so = config.soft_oom
        lines.append("soft_oom {")
        _emit(lines, "\t", so, SOFT_OOM_SCHEMA)
        if so.drop.enabled:
            lines.append(f"\tdrop {{\n\t\tsignal {_quote(so.drop.signal)}\n"
                         f"\t\tmax_rate {so.drop.max_rate}\n\t}}")
        lines.append("}")
    qp = config.query_parsing
    lines.append(f"query_parsing {{\n\tmode {qp.mode}\n\tmem_limit {qp.mem_limit}\n}}")
    for sp in config.shared_pools.values():
        lines.append(f"shared_pool {_quote(sp.name)} {{\n\tpool_size {sp.pool_size}\n}}")
    for ep in config.ldap_endpoints.values():
        lines.append(f"ldap_endpoint {_quote(ep.name)} {{")
        _emit(lines, "\t", ep, LDAP_ENDPOINT_SCHEMA)
        lines.append("}")
    for listen in config.listen:
        lines.append("listen {")
        _emit(lines, "\t", listen, LISTEN_SCHEMA)
        for name in listen.storage:
            lines.append(f"\tstorage {_quote(name)}")
        lines.append("}")
    for st in config.storages.values():
        lines.append(f"storage {_quote(st.name)} {{")
        _emit(lines, "\t", st, STORAGE_SCHEMA)
        if st.host is not None:
            lines.append(f"\thost {_quote(st.host)}")
        lines.append(f"\tendpoints_status_poll_interval {st.endpoints_status_poll_interval}")
        b = st.balancing
        lines.append(f"\tbalancing {{\n\t\tmethod {_quote(b.method)} {{ az_aware "
                     f"{_fmt(b.az_aware)} }}\n\t\tshow_notice_messages "
                     f"{_fmt(b.show_notice_messages)}\n\t}}")
        if st.watchdog is not None:
            lines.append("\twatchdog {")
            _emit_rule(lines, "\t\t", st.watchdog.rule)
            _emit(lines, "\t\t", st.watchdog, {k: WATCHDOG_SCHEMA[k] for k in
                                              ("watchdog_lag_query", "watchdog_lag_interval")})
            lines.append("\t}")
        lines.append("}")
    by_db: dict[tuple, list[Rule]] = {}
    for rule in config.rules:
        if rule.auto_generated or rule.db_name == "watchdog_int" and rule.is_internal and any(
                st.watchdog is not None and st.watchdog.rule is rule
                for st in config.storages.values()):
            continue
        by_db.setdefault((rule.db_name, rule.db_is_default), []).append(rule)
    for (db, is_default), rules in by_db.items():
        lines.append(f"database {'default' if is_default else _quote(db)} {{")
        for rule in rules:
            sel = []
            ar = rule.address_range
            if ar is not None and not ar.is_default:
                sel.append(_quote(ar.string_value))
            if rule.conn_type != "default":
                sel.append(rule.conn_type)
            if rule.group_name is not None:
                head = f"\tgroup {_quote(rule.group_name)}"
            else:
                head = f"\tuser {'default' if rule.user_is_default else _quote(rule.user_name)}"
            lines.append(" ".join([head] + sel) + " {")
            _emit_rule(lines, "\t\t", rule)
            lines.append("\t}")
        lines.append("}")
    return "\n".join(lines) + "\n"
