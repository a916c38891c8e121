"""Reader of the top level: globals, listen, storage, ... (mirrors sources/config_reader.c).

``ROOT_SCHEMA`` is what :class:`~odyssey_gevent.config.reader_base._Reader` parses a file
against; the route blocks (``database``, and a storage's ``watchdog``) come from
:mod:`~odyssey_gevent.config.reader_route`.
"""
from __future__ import annotations

import os
import signal as _signal

from odyssey_gevent.config import keywords as K
from odyssey_gevent.config import model as C
from odyssey_gevent.config.lexer import IDENT, STR, SYM, Token
from odyssey_gevent.config.model import (Balancing, Config, ConnDropOptions, Endpoint, LdapEndpoint,
                                         Listen, SharedPool, Storage)
from odyssey_gevent.config.reader_base import _Err, _Reader, _Stream, bind, skip_block
from odyssey_gevent.config.reader_route import _client_max, _database, _watchdog, _weights


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


def _named_block(r: _Reader, s: _Stream, kwtok: Token, table: dict, cls, schema, what: str,
                 redefined: str) -> None:
    """`<what> "name" { ... }` into table[name] (a second one with that name is an error)."""
    tok = s.peek()
    name = r.read_string(s, f"{what} name")
    obj = cls(name=name, location=kwtok.loc)
    if name in table:
        r.error(tok.loc, f"{redefined} '{name}' is redefined")
    else:
        table[name] = obj
    r.expect_open(s)
    r.block(s, schema, obj, f"{what} '{name}'")


def _shared_pool(r: _Reader, s: _Stream, config: Config, kwtok: Token) -> None:
    _named_block(r, s, kwtok, config.shared_pools, SharedPool, SHARED_POOL_SCHEMA, "shared_pool", "shared pool")


def _ldap_endpoint(r: _Reader, s: _Stream, config: Config, kwtok: Token) -> None:
    _named_block(r, s, kwtok, config.ldap_endpoints, LdapEndpoint, LDAP_ENDPOINT_SCHEMA, "ldap_endpoint",
                 "ldap_endpoint")


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
    if path.startswith("python:"):         # a Python auth module (odyssey_gevent/auth_module.py)
        name = path[len("python:"):]
        if not name or not all(part.isidentifier() for part in name.split(".")):
            raise _Err(kwtok.loc, f"load_module '{path}': expected python:<dotted module name>")
    else:
        r.warn(kwtok.loc, f"load_module '{path}': C modules can't be loaded by odyssey-gevent; "
                          f"ignored")
    if s.peek().kind == SYM and s.peek().value == "{":
        skip_block(s, "load_module")


def _promhttp_port(r: _Reader, s: _Stream, config: Config, kwtok: Token) -> None:
    config.promhttp_server_port = r.read_int(s)    # served by odyssey_gevent.metrics


def _hba_file(r: _Reader, s: _Stream, config: Config, kwtok: Token) -> None:
    # read the rules now, as C Odyssey does: a bad hba file is a bad config (startup, --test,
    # and a reload that keeps the running config)
    from odyssey_gevent import hba
    tok = s.peek()
    path = r.read_string(s)
    config.hba_file = path
    if r.rel_fallback and not os.path.isabs(path) and not os.path.exists(path):
        alt = os.path.join(os.path.dirname(tok.file), path)
        if os.path.exists(alt):
            path = alt
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            text = f.read()
    except OSError as e:
        raise _Err(tok.loc, f"cannot read hba_file '{path}': {e.strerror}") from None
    try:
        config.hba_rules = hba.parse(text, path)
    except hba.HbaError as e:
        r.errors.extend(e.errors)


def _include(r: _Reader, s: _Stream, config: Config, kwtok: Token) -> None:
    r.include(s, config, kwtok)


# --------------------------------------------------------------------------------------------
# keyword tables bound to the handlers above

LISTEN_SCHEMA = bind(K.LISTEN, {"storage": _listen_storage})
BALANCING_METHOD_SCHEMA = K.BALANCING_METHOD
BALANCING_SCHEMA = bind(K.BALANCING, {"method": _balancing_method})
STORAGE_SCHEMA = bind(K.STORAGE, {
    "host": _storage_host,
    "endpoints_status_poll_interval": _positive("endpoints_status_poll_interval",
                                                "endpoints_status_poll_interval"),
    "watchdog": _watchdog,
    "balancing": _balancing,
})
SHARED_POOL_SCHEMA = K.SHARED_POOL
LDAP_ENDPOINT_SCHEMA = K.LDAP_ENDPOINT
CONN_DROP_SCHEMA = bind(K.CONN_DROP,
                        {"interval_ms": _positive("interval_ms", "interval for conn drop options")})
SOFT_OOM_DROP_SCHEMA = bind(K.SOFT_OOM_DROP, {"signal": _signal_name})
SOFT_OOM_SCHEMA = bind(K.SOFT_OOM, {"drop": _soft_oom_drop})
QUERY_PARSING_SCHEMA = bind(K.QUERY_PARSING, {"mode": _query_parsing_mode})

ROOT_SCHEMA = bind(K.ROOT, {
    "include": _include,
    "conn_drop_options": _conn_drop,
    "online_restart_drop_options": _conn_drop,
    "promhttp_server_port": _promhttp_port,
    "client_max": _client_max,
    "hba_file": _hba_file,
    "listen": _listen,
    "storage": _storage,
    "database": _database,
    "shared_pool": _shared_pool,
    "ldap_endpoint": _ldap_endpoint,
    "soft_oom": _soft_oom,
    "query_parsing": _query_parsing,
    "load_module": _load_module,
    "weights": _weights,
})
