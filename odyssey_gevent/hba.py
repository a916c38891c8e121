"""Host based authentication: the `hba_file` rules and the check made before authentication
(mirrors Odyssey sources/hba.c, hba_reader.c, hba_rule.c).

The file is pg_hba-like, one rule a line::

    local                        DATABASE USER          METHOD
    host|hostssl|hostnossl       DATABASE USER ADDRESS  METHOD

ADDRESS is ``addr/prefix`` or two tokens ``addr mask`` (IPv4 or IPv6). DATABASE and USER are
comma lists of names, ``all``, or (DATABASE only) ``sameuser``; a quoted name is never a keyword.
METHOD is ``allow``/``trust`` or ``deny``/``reject``. ``#`` starts a comment.

:func:`parse` is pure (text in, rules out) and raises :class:`HbaError`; :func:`check` walks the
rules in order: the first rule that matches decides, and no match means reject.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Optional

from odyssey_gevent.config.model import ConfigError

__all__ = ["HbaError", "HbaRule", "check", "parse"]

CONN_TYPES = ("local", "host", "hostssl", "hostnossl")
_METHODS = {"allow": True, "trust": True, "deny": False, "reject": False}


class HbaError(ConfigError):
    """An hba file that cannot be used; ``errors`` are ``file:line:col: message`` lines."""


@dataclass(frozen=True)
class HbaName:
    """The DATABASE or USER field: ``all``, ``sameuser`` (database only) and/or names."""

    all: bool = False
    sameuser: bool = False
    names: frozenset = frozenset()

    def matches(self, name: str, other: str) -> bool:
        """`other` is the user name when this is the database field (for ``sameuser``)."""
        return self.all or (self.sameuser and name == other) or name in self.names


@dataclass(frozen=True)
class HbaRule:
    conn_type: str                       # one of CONN_TYPES
    database: HbaName
    user: HbaName
    allow: bool                          # allow/trust (True) or deny/reject (False)
    version: Optional[int] = None        # 4 or 6; None for local
    addr: int = 0                        # network address, already masked
    mask: int = 0
    line: int = 0

    def matches_address(self, ip) -> bool:
        return ip.version == self.version and (int(ip) & self.mask) == self.addr


# -- reading ---------------------------------------------------------------------------------
@dataclass
class _Tok:
    text: str
    col: int
    quoted: bool = False

    @property
    def keyword(self) -> Optional[str]:
        return None if self.quoted else self.text.lower()


def _tokenize(line: str) -> list:
    """One line to tokens: words, "quoted strings" and "," (a # outside quotes ends the line)."""
    toks, i, n = [], 0, len(line)
    while i < n:
        c = line[i]
        if c.isspace():
            i += 1
        elif c == "#":
            break
        elif c == ",":
            toks.append(_Tok(",", i + 1))
            i += 1
        elif c == '"':
            end = line.find('"', i + 1)
            if end < 0:
                raise _LineError(i + 1, "unterminated quoted string")
            toks.append(_Tok(line[i + 1:end], i + 1, quoted=True))
            i = end + 1
        else:
            j = i
            while j < n and not line[j].isspace() and line[j] not in ',"':
                j += 1
            toks.append(_Tok(line[i:j], i + 1))
            i = j
    return toks


class _LineError(Exception):
    def __init__(self, col: int, msg: str):
        super().__init__(msg)
        self.col, self.msg = col, msg


def _name(toks: list, pos: int, is_db: bool, what: str, end_col: int) -> tuple:
    """Read a comma list of names at toks[pos]; return (HbaName, next pos)."""
    all_, sameuser, names = False, False, set()
    while True:
        if pos >= len(toks) or toks[pos].text == "," and not toks[pos].quoted:
            col = toks[pos].col if pos < len(toks) else end_col
            raise _LineError(col, f"expected {what} name or keyword")
        tok = toks[pos]
        if tok.keyword == "all":
            all_ = True
        elif tok.keyword == "sameuser":
            # C Odyssey accepts sameuser in the user field too, where it matches no one
            sameuser = sameuser or is_db
        else:
            names.add(tok.text)
        pos += 1
        if pos < len(toks) and toks[pos].text == "," and not toks[pos].quoted:
            pos += 1
            continue
        return HbaName(all_, sameuser, frozenset(names)), pos


def _address(tok: _Tok, what: str):
    try:
        return ipaddress.ip_address(tok.text)
    except ValueError:
        raise _LineError(tok.col, f"invalid {what} '{tok.text}'") from None


def _parse_line(toks: list, end_col: int, lineno: int) -> HbaRule:
    tok = toks[0]
    if tok.keyword not in CONN_TYPES:
        raise _LineError(tok.col, f"invalid connection type '{tok.text}' "
                                  f"(expected local, host, hostssl or hostnossl)")
    conn_type = tok.keyword
    database, pos = _name(toks, 1, True, "database", end_col)
    user, pos = _name(toks, pos, False, "user", end_col)
    version, addr, mask = None, 0, 0
    if conn_type != "local":
        if pos >= len(toks):
            raise _LineError(end_col, "expected IP address")
        tok = toks[pos]
        pos += 1
        text, _, prefix = tok.text.partition("/")
        ip = _address(_Tok(text, tok.col), "IP address")
        version, bits = ip.version, ip.max_prefixlen
        if "/" in tok.text:
            if not prefix.isdigit() or int(prefix) > bits:
                raise _LineError(tok.col, f"invalid network prefix length '{prefix}' "
                                          f"(0 to {bits} for IPv{version})")
            mask = ((1 << bits) - 1) ^ ((1 << (bits - int(prefix))) - 1)
        else:
            if pos >= len(toks) or toks[pos].keyword in _METHODS:
                col = toks[pos].col if pos < len(toks) else end_col
                raise _LineError(col, f"expected network mask after '{tok.text}' "
                                      f"(or write it as address/prefix)")
            mtok = toks[pos]
            pos += 1
            m = _address(mtok, "network mask")
            if m.version != version:
                raise _LineError(mtok.col, f"network mask '{mtok.text}' is IPv{m.version}, "
                                           f"the address is IPv{version}")
            mask = int(m)
        addr = int(ip) & mask
    if pos >= len(toks):
        raise _LineError(end_col, "expected auth method (allow, deny, trust or reject)")
    tok = toks[pos]
    if tok.keyword not in _METHODS:
        raise _LineError(tok.col, f"invalid auth method '{tok.text}': only allow/deny or "
                                  f"trust/reject is supported")
    if pos + 1 < len(toks):
        extra = toks[pos + 1]
        raise _LineError(extra.col, f"unexpected '{extra.text}' after the auth method")
    return HbaRule(conn_type, database, user, _METHODS[tok.keyword], version, addr, mask, lineno)


def parse(text: str, path: str = "<hba>") -> list:
    """The rules of an hba file's text, in file order. Raises HbaError naming every bad line."""
    rules, errors = [], []
    for lineno, line in enumerate(text.splitlines(), 1):
        try:
            toks = _tokenize(line)
            if toks:
                rules.append(_parse_line(toks, len(line.rstrip()) + 1, lineno))
        except _LineError as e:
            errors.append(f"{path}:{lineno}:{e.col}: {e.msg}")
    if errors:
        raise HbaError(errors)
    return rules


# -- the check -------------------------------------------------------------------------------
def check(rules: list, conn_type: str, tls: bool, addr: Optional[str], db: str, user: str) -> bool:
    """True if the first rule matching the connection allows it; False if it denies it or no
    rule matches. `conn_type` is "local" (unix socket, `addr` unused) or "host" (TCP, `addr`
    the client's IP); `db` and `user` are the names of the client's routing rule."""
    ip = None
    if conn_type != "local" and addr is not None:
        try:
            ip = ipaddress.ip_address(addr.split("%", 1)[0])
        except ValueError:
            ip = None
        if ip is not None and ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped      # an IPv4 client on a dual-stack listener
    for rule in rules:
        if conn_type == "local":
            if rule.conn_type != "local":
                continue
        else:
            if rule.conn_type == "local":
                continue
            if rule.conn_type == "hostssl" and not tls:
                continue
            if rule.conn_type == "hostnossl" and tls:
                continue
            if ip is None or not rule.matches_address(ip):
                continue
        if not rule.database.matches(db, user):
            continue
        if not rule.user.matches(user, db):
            continue
        return rule.allow
    return False
