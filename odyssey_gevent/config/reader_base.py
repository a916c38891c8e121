"""Reader machinery: values, blocks, errors, includes (mirrors sources/config_reader.c helpers).

:class:`_Reader` reads ``keyword value`` pairs of one block against a table of
:mod:`odyssey_gevent.config.keywords` whose ``custom`` entries are bound to handlers (see
:func:`bind`); the handlers of each block live in :mod:`~odyssey_gevent.config.reader_global` and
:mod:`~odyssey_gevent.config.reader_route`, the entry points in :mod:`~odyssey_gevent.config.reader`.
The underscored names are private to the config package.
"""
from __future__ import annotations

import os
from typing import Callable, Optional

from odyssey_gevent.config import keywords as K
from odyssey_gevent.config import model as C
from odyssey_gevent.config.lexer import EOF, ERR, IDENT, NUM, STR, SYM, Token, tokenize
from odyssey_gevent.config.model import Config, Location, Rule

MAX_INCLUDE_DEPTH = 16
MAX_ERRORS = 100
INT_MIN = -(2 ** 63)
INT_MAX = 2 ** 63 - 1


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


def bind(table: dict, handlers: dict) -> dict:
    """A keyword table with each ``CUSTOM`` entry replaced by ``(handler, None)``."""
    custom = {kw for kw, (kind, _) in table.items() if kind == K.CUSTOM_KIND}
    if custom != set(handlers):
        raise AssertionError(f"handlers do not match the custom keywords: "
                             f"{sorted(custom ^ set(handlers))}")
    return {kw: (handlers[kw], None) if kw in custom else spec for kw, spec in table.items()}


def skip_block(s, what: str) -> None:
    """Skip a `{ ... }` block (nested braces included) the stream is at, unread."""
    depth = 0
    while True:
        tok = s.next()
        if tok.kind == EOF:
            raise _Err(tok.loc, f"unexpected end of file in {what} block")
        if tok.kind == SYM:
            depth += 1 if tok.value == "{" else -1
            if depth == 0:
                return


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
    def __init__(self, config: Config, root_schema: dict,
                 resolve_relative_to_including_file: bool = True):
        self.config = config
        self.root_schema = root_schema   # the top level's keywords (reader_global.ROOT_SCHEMA)
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
                        and tok.value.lower() not in K.VALUE_WORDS)):
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
                    if kw in K.ALL_KEYWORDS:
                        raise _Err(tok.loc, f"keyword '{tok.value}' is not allowed in {where}")
                    hint = suggest(kw, schema) or suggest(kw, K.ALL_KEYWORDS)
                    raise _Err(tok.loc, f"unknown keyword '{tok.value}' in {where}",
                               f"did you mean '{hint}'?" if hint else None)
                if kw in seen and kw not in K.REPEATABLE:
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
            self.block(s, self.root_schema, self.config, "the top level", root=True)
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
