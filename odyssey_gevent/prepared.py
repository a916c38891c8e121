"""Prepared statements across pooled servers: a client's named statements mapped to pool-wide
ones that are prepared on demand on whichever server the client gets (mirrors Odyssey
sources/hashmap.c and the pool_reserve_prepared_statement parts of sources/frontend.c).

Three maps, as PgBouncer and C Odyssey keep them:

* per route, `Registry`: statement text (the Parse body: query and parameter types, or the text
  after the name of an SQL PREPARE) -> `Statement`, named `odyssey_pstmt_<N>` on servers;
* per client, `client.prepared`: the client's statement name -> `Statement`;
* per server, `ServerStatements`: the statements that server has, least recently used first,
  at most `SERVER_STATEMENTS_MAX` (the oldest is closed on the server to make room).

`Prepared.client_message` sees every Parse, Bind, Describe, Close and Query the client sends
and returns the bytes to send instead (or None to forward it as it is). It tells the server's
`kiwi.protocol.Conversation` about everything it sends, so replies to what the pooler added
are hidden, replies the pooler gives itself (ParseComplete for a statement the server already
has, CloseComplete) are sent at the right point of the reply stream, and errors the pooler
raises itself (42P05, 26000) come from a request that really fails on the server: PostgreSQL
then skips to the next Sync and aborts the batch exactly as it would on a direct connection.
"""
from __future__ import annotations

import itertools
import re
import struct
import threading
from collections import OrderedDict

from kiwi import be_write, error_codes
from kiwi.header import FE
from kiwi.protocol import LOCAL, Phase, Request

SERVER_STATEMENTS_MAX = 1000       # statements kept prepared on one server
REGISTRY_MAX = 10000               # pool-wide statements no client uses that are still remembered

_names = itertools.count(1)
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_P, _B, _C, _D, _Q, _S = (int(x) for x in (FE.PARSE, FE.BIND, FE.CLOSE, FE.DESCRIBE, FE.QUERY, FE.SYNC))
_SKIP = Phase.SKIP

PARSE_COMPLETE = be_write.parse_complete()
CLOSE_COMPLETE = be_write.close_complete()
# A Describe of a statement that never exists: the request that fails on the server when the
# pooler must raise an error itself (its ErrorResponse is replaced by the pooler's own).
_MISSING = "odyssey_pstmt_missing"
_PROBE = b"D" + struct.pack("!I", 4 + 1 + len(_MISSING) + 1) + b"S" + _MISSING.encode() + b"\0"
_PROBE_QUERY = f"DEALLOCATE {_MISSING}".encode()
_EMPTY_QUERY = b"Q\x00\x00\x00\x06;\x00"
_SYNC = b"S\x00\x00\x00\x04"


def _message(t: bytes, body: bytes) -> bytes:
    return t + struct.pack("!I", len(body) + 4) + body


def _close(name: str) -> bytes:
    return _message(b"C", b"S" + name.encode() + b"\0")


def _cstr(buf, start: int, end: int) -> int:
    """Index of the NUL ending the string at `start` (ProtocolError-free: -1 when missing)."""
    i = buf.find(b"\0", start, end)
    return i


def already_exists(name: str) -> bytes:
    return be_write.error_response("ERROR", error_codes.DUPLICATE_PREPARED_STATEMENT,
                                   f'prepared statement "{name}" already exists')


def does_not_exist(name: str) -> bytes:
    text = f'prepared statement "{name}" does not exist' if name else "unnamed prepared statement does not exist"
    return be_write.error_response("ERROR", error_codes.INVALID_SQL_STATEMENT_NAME, text)


class Statement:
    """A pool-wide prepared statement: `name` on servers, `body` the Parse payload after the
    name (query and parameter types), or `sql` the text after the name of an SQL PREPARE."""

    __slots__ = ("name", "name_b", "key", "body", "sql", "refcount", "parse")

    def __init__(self, key: bytes, body: bytes | None, sql: str | None):
        self.name = f"odyssey_pstmt_{next(_names)}"
        self.name_b = self.name.encode()
        self.key = key
        self.body = body
        self.sql = sql
        self.refcount = 0
        self.parse = _message(b"P", self.name.encode() + b"\0" + body) if body is not None else None

    @property
    def definition(self) -> str:
        if self.sql is not None:
            return self.sql
        end = self.body.find(b"\0")
        return self.body[:end].decode("utf-8", "replace")

    def __repr__(self) -> str:
        return f"<Statement {self.name} refs={self.refcount}>"


class Registry:
    """The pool-wide statements of one route, shared by its clients (and machines)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.by_key: OrderedDict[bytes, Statement] = OrderedDict()

    def acquire(self, key: bytes, body: bytes | None, sql: str | None = None) -> Statement:
        with self.lock:
            stmt = self.by_key.get(key)
            if stmt is None:
                stmt = self.by_key[key] = Statement(key, body, sql)
                if len(self.by_key) > REGISTRY_MAX:
                    self._forget_unused()
            stmt.refcount += 1
            return stmt

    def release(self, stmt: Statement) -> None:
        with self.lock:
            stmt.refcount -= 1

    def _forget_unused(self) -> None:
        target = REGISTRY_MAX * 9 // 10
        for key in [k for k, s in self.by_key.items() if s.refcount <= 0]:
            if len(self.by_key) <= target:
                break
            del self.by_key[key]

    def snapshot(self) -> list[Statement]:
        with self.lock:
            return list(self.by_key.values())


class ServerStatements(OrderedDict):
    """Statement name -> Statement prepared on one server, least recently used first.
    `pending`: name -> (batch, token) of a Parse sent but not yet answered."""

    def __init__(self):
        super().__init__()
        self.pending: dict[str, tuple[int, object]] = {}

    def clear(self) -> None:
        super().clear()
        self.pending.clear()


def _batch(proto) -> int:
    """Which batch the next message belongs to: the count of Sync/Query/FunctionCall sent."""
    return proto.replies + proto.syncs


# -- SQL PREPARE / EXECUTE / DEALLOCATE ---------------------------------------------------------
_SQL_HEAD = re.compile(rb"\s*(?:prepare|execute|deallocate)\s", re.IGNORECASE)
_VERB = re.compile(r"\s*(prepare|execute|deallocate)\s", re.IGNORECASE)
_IDENT = re.compile(r'\s*(?:"((?:[^"]|"")+)"|([A-Za-z_\x80-\uffff][A-Za-z0-9_$\x80-\uffff]*))')


def _identifier(text: str, pos: int) -> tuple[str | None, bool, int]:
    """(name, quoted, end) of the SQL identifier at `pos` (unquoted ones fold to lower case,
    as PostgreSQL folds them); (None, False, pos) when there is none."""
    m = _IDENT.match(text, pos)
    if m is None:
        return None, False, pos
    if m.group(1) is not None:
        return m.group(1).replace('""', '"'), True, m.end()
    return m.group(2).lower(), False, m.end()


def _single_statement(rest: str) -> str | None:
    """`rest` without a trailing `;`, or None when more than one statement seems to follow."""
    body = rest.rstrip().rstrip(";").rstrip()
    if ";" in body:
        return None
    return body


def parse_sql(text: str):
    """("prepare", name, rest) / ("execute", name, rest) / ("deallocate", name or None for ALL, "")
    for a Query that is exactly one of those statements; None otherwise."""
    m = _VERB.match(text)
    if m is None:
        return None
    verb = m.group(1).lower()
    name, quoted, after = _identifier(text, m.end())
    if name is None:
        return None
    if verb == "deallocate":
        if name == "prepare" and not quoted:
            name2, quoted2, after2 = _identifier(text, after)
            if name2 is not None:
                name, quoted, after = name2, quoted2, after2
        if _single_statement(text[after:]) != "":
            return None
        return verb, None if (name == "all" and not quoted) else name, ""
    rest = _single_statement(text[after:])
    if rest is None:
        return None
    if verb == "prepare":
        if re.search(r"\bas\b", rest, re.IGNORECASE) is None:
            return None
    elif rest and not rest.lstrip().startswith("("):
        return None
    return verb, name, rest


class _Counts:
    """Where a Prepared made for a client with no route counts its Parses (never shown)."""
    __slots__ = ("count_parse", "count_parse_reuse")

    def __init__(self):
        self.count_parse = self.count_parse_reuse = 0


_NO_STATS = _Counts()


class Prepared:
    """The prepared-statement layer of one client's relay (transaction and statement pooling
    with pool_reserve_prepared_statement)."""

    __slots__ = ("client", "registry", "stats")

    def __init__(self, client, registry: Registry):
        self.client = client
        self.registry = registry
        # the route's RouteStats: count_parse (a Parse sent to the server for a client's
        # statement) and count_parse_reuse (the server had it already), as C counts them
        self.stats = client.route.stats if client.route is not None else _NO_STATS
        if client.prepared is None:
            client.prepared = {}

    # -- the client's messages ---------------------------------------------------------------
    def client_message(self, server, t: int, buf, start: int, end: int):
        """The whole message buf[start:end] of type `t` (P, B, D, C or Q). Returns None to
        forward it unchanged (the caller then reports it to the Conversation), or the list of
        bytes to send in its place (already reported here)."""
        proto = server.proto
        if proto.phase == _SKIP:         # Conversation.skipping without a property's frame
            return None                   # the server ignores it until Sync, as it would have
        if t == _B:
            return self._bind(server, buf, start, end)
        if t == _P:
            return self._parse(server, buf, start, end)
        if t == _D or t == _C:
            # statements only ('S'): a portal's (pgbench -M prepared's Describe each
            # transaction) is left as it is here, without _describe_close's frame
            if end - start < 7 or buf[start + 5] != 0x53:
                return None
            return self._describe_close(server, t, buf, start, end)
        if t == _Q:
            return self._query(server, buf, start, end)
        return None

    def _map(self, name: str, key: bytes, body: bytes | None, sql: str | None = None):
        """Give the client statement `name` (the pool-wide one for `key`): (stmt, undo)."""
        client_map = self.client.prepared
        stmt = self.registry.acquire(key, body, sql)
        client_map[name] = stmt

        def undo():
            if client_map.get(name) is stmt:
                del client_map[name]
                self.registry.release(stmt)
        return stmt, undo

    def _unmap(self, name: str):
        """Take the client's statement `name` away: (stmt, undo), or (None, None) if it has none."""
        client_map = self.client.prepared
        stmt = client_map.pop(name, None)
        if stmt is None:
            return None, None
        self.registry.release(stmt)

        def undo():
            if name not in client_map:
                client_map[name] = stmt
                stmt.refcount += 1
        return stmt, undo

    def _statements(self, server) -> ServerStatements:
        cache = server.prepared
        if cache is None:
            cache = server.prepared = ServerStatements()
        return cache

    def _make_room(self, server, out: list) -> None:
        cache = self._statements(server)
        while len(cache) >= SERVER_STATEMENTS_MAX:
            name, _ = cache.popitem(last=False)
            cache.pending.pop(name, None)
            out.append(_close(name))
            server.proto.send_request(Request(_C, hide=True))

    def _usable(self, server, stmt: Statement, out: list) -> bool:
        """Is `stmt` on `server` for the message being sent now? A statement whose Parse went in
        an earlier batch still unanswered is not: an error before it in that batch makes the
        server skip it. It is then prepared again (after a Close, in case it did succeed)."""
        cache = self._statements(server)
        name = stmt.name
        if name not in cache:
            return False
        pending = cache.pending.get(name)
        if pending is not None and pending[0] != _batch(server.proto):
            del cache[name]
            del cache.pending[name]
            out.append(_close(name))
            server.proto.send_request(Request(_C, hide=True))
            return False
        cache.move_to_end(name)
        return True

    def _register(self, server, stmt: Statement, undo=None):
        """Record `stmt` on `server` as its Parse is sent: (on_done, on_fail) for that request."""
        cache = self._statements(server)
        name = stmt.name
        token = object()
        cache[name] = stmt
        cache.pending[name] = (_batch(server.proto), token)

        def done():
            if cache.pending.get(name, (0, None))[1] is token:
                del cache.pending[name]

        def failed():
            if cache.pending.get(name, (0, None))[1] is token:
                del cache.pending[name]
                cache.pop(name, None)
            if undo is not None:
                undo()
        return done, failed

    def _ensure(self, server, stmt: Statement, out: list) -> None:
        """Have `stmt` on `server` before the message that needs it: a hidden Parse (or a
        hidden SQL PREPARE) when the server does not have it yet."""
        if self._usable(server, stmt, out):
            self.stats.count_parse_reuse += 1
            return
        self.stats.count_parse += 1
        self._make_room(server, out)
        done, failed = self._register(server, stmt)
        if stmt.parse is not None:
            out.append(stmt.parse)
            server.proto.send_request(Request(_P, hide=True, on_done=done, on_fail=failed))
        else:
            sql = f"PREPARE {stmt.name} {stmt.sql}".encode()
            out.append(_message(b"Q", sql + b"\0"))
            server.proto.send_request(Request(_Q, hide=True, on_done=done, on_fail=failed))

    def _fail(self, server, error: bytes, out: list | None = None) -> list:
        """Raise `error` on the server's behalf: a request that fails there (so PostgreSQL
        skips to Sync as it would have), its ErrorResponse replaced by ours."""
        out = out if out is not None else []
        out.append(_PROBE)
        server.proto.send_request(Request(_D, error=error))
        return out

    def _parse(self, server, buf, start: int, end: int):
        body_start = start + 5
        nul = _cstr(buf, body_start, end)
        if nul < 0 or nul == body_start:
            return None                    # unnamed (or malformed: PostgreSQL will say so)
        name = bytes(buf[body_start:nul]).decode("utf-8", "replace")
        client_map = self.client.prepared
        if name in client_map:
            return self._fail(server, already_exists(name))
        body = bytes(buf[nul + 1:end])
        stmt, undo = self._map(name, body, body)
        out: list = []
        if self._usable(server, stmt, out):
            self.stats.count_parse_reuse += 1
            server.proto.send_request(Request(LOCAL, local=PARSE_COMPLETE, on_fail=undo))
            return out
        self.stats.count_parse += 1
        self._make_room(server, out)
        done, failed = self._register(server, stmt, undo)
        out.append(stmt.parse)
        server.proto.send_request(Request(_P, on_done=done, on_fail=failed))
        return out

    def _bind(self, server, buf, start: int, end: int):
        # once per transaction with -M prepared: _cstr's find inline (a frame each), the name
        # decoded from the bytearray's slice (no bytes copy first)
        portal_end = buf.find(b"\0", start + 5, end)
        if portal_end < 0:
            return None
        name_end = buf.find(b"\0", portal_end + 1, end)
        if name_end <= portal_end + 1:
            return None                    # the unnamed statement, or malformed
        name = buf[portal_end + 1:name_end].decode("utf-8", "replace")
        stmt = self.client.prepared.get(name)
        if stmt is None:
            return self._fail(server, does_not_exist(name))
        out: list = []
        cache = server.prepared
        if cache is not None and stmt.name in cache and not cache.pending:
            cache.move_to_end(stmt.name)       # the common case: the server has it for sure
            self.stats.count_parse_reuse += 1
        else:
            self._ensure(server, stmt, out)
        # the same Bind with the server's name: its length changes by the difference in names
        size = end - start - (name_end - portal_end - 1) + len(stmt.name_b) - 1
        out.append(b"".join((b"B", _U32.pack(size), buf[start + 5:portal_end + 1], stmt.name_b, buf[name_end:end])))
        server.proto.send(_B)
        return out

    def _describe_close(self, server, t: int, buf, start: int, end: int):
        # a statement's ('S', client_message tests it)
        nul = _cstr(buf, start + 6, end)
        if nul <= start + 6:
            return None
        name = bytes(buf[start + 6:nul]).decode("utf-8", "replace")
        client_map = self.client.prepared
        if t == _C:
            # PostgreSQL: closing a missing statement is no error
            _, undo = self._unmap(name)
            server.proto.send_request(Request(LOCAL, local=CLOSE_COMPLETE, on_fail=undo))
            return []
        stmt = client_map.get(name)
        if stmt is None:
            return self._fail(server, does_not_exist(name))
        out: list = []
        self._ensure(server, stmt, out)
        out.append(_message(b"D", b"S" + stmt.name.encode() + b"\0"))
        server.proto.send(_D)
        return out

    # -- SQL PREPARE / EXECUTE / DEALLOCATE -------------------------------------------------------
    def _query(self, server, buf, start: int, end: int):
        if _SQL_HEAD.match(bytes(buf[start + 5:min(end, start + 5 + 64)])) is None:
            return None
        try:
            text = bytes(buf[start + 5:end - 1]).decode("utf-8")
        except UnicodeDecodeError:
            return None
        sql = parse_sql(text)
        if sql is None:
            return None
        verb, name, rest = sql
        if server.proto.tx_status == b"E":
            return None                    # PostgreSQL refuses it in a failed transaction itself
        client_map = self.client.prepared
        proto = server.proto
        if verb == "deallocate":
            if name is None:
                dropped = list(client_map.items())
                client_map.clear()
                for _, stmt in dropped:
                    self.registry.release(stmt)
                proto.send_request(Request(_Q, empty=be_write.command_complete("DEALLOCATE ALL")))
                return [_EMPTY_QUERY]
            stmt, undo = self._unmap(name)
            if stmt is None:
                return self._fail_query(server, does_not_exist(name))
            proto.send_request(Request(_Q, empty=be_write.command_complete("DEALLOCATE"), on_fail=undo))
            return [_EMPTY_QUERY]
        if verb == "prepare":
            if name in client_map:
                return self._fail_query(server, already_exists(name))
            stmt, undo = self._map(name, b"sql\0" + rest.strip().encode(), None, rest.strip())
            out: list = []
            if self._usable(server, stmt, out):
                self.stats.count_parse_reuse += 1
                proto.send_request(Request(_Q, empty=be_write.command_complete("PREPARE"), on_fail=undo))
                out.append(_EMPTY_QUERY)
                return out
            self.stats.count_parse += 1
            self._make_room(server, out)
            done, failed = self._register(server, stmt, undo)
            out.append(_message(b"Q", f"PREPARE {stmt.name} {rest}".encode() + b"\0"))
            proto.send_request(Request(_Q, on_done=done, on_fail=failed))
            return out
        # execute
        stmt = client_map.get(name)
        if stmt is None:
            return self._fail_query(server, does_not_exist(name))
        out = []
        if stmt.parse is not None and not self._usable(server, stmt, out):
            # a protocol-level statement run by SQL EXECUTE: Parse it in a batch of its own
            self.stats.count_parse += 1
            self._make_room(server, out)
            done, failed = self._register(server, stmt)
            out.append(stmt.parse)
            proto.send_request(Request(_P, hide=True, on_done=done, on_fail=failed))
            out.append(_SYNC)
            proto.send_request(Request(_S, hide=True))
        else:
            self._ensure(server, stmt, out)
        out.append(_message(b"Q", f"EXECUTE {stmt.name}{rest}".encode() + b"\0"))
        proto.send(_Q)
        return out

    def _fail_query(self, server, error: bytes) -> list:
        server.proto.send_request(Request(_Q, error=error))
        return [_message(b"Q", _PROBE_QUERY + b"\0")]

    # -- the server's replies ---------------------------------------------------------------------
    def command_complete(self, server, tag: bytes) -> None:
        """DISCARD ALL / DEALLOCATE ALL ran on the server (sent by the client inside a larger
        query): the server has no statement left, and neither has the client."""
        if tag in (b"DISCARD ALL", b"DEALLOCATE ALL"):
            if server.prepared:
                server.prepared.clear()
            self.forget_all()

    def forget_all(self) -> None:
        client_map = self.client.prepared
        if client_map:
            for stmt in client_map.values():
                self.registry.release(stmt)
            client_map.clear()
