"""Reader of the route blocks: database, user, group (mirrors sources/config_reader.c).

``od_config_reader_database`` and ``od_config_reader_route``: each ``user``, ``group`` or storage
``watchdog`` block becomes a :class:`~odyssey_gevent.config.model.Rule` appended to
``config.rules`` in file order; a second rule with the same selector is an error.
"""
from __future__ import annotations

from odyssey_gevent.config import keywords as K
from odyssey_gevent.config import model as C
from odyssey_gevent.config.lexer import EOF, ERR, IDENT, STR, SYM, Token
from odyssey_gevent.config.model import (AddressRange, Config, LdapStorageCredentials, Location,
                                         Rule, Storage, Watchdog)
from odyssey_gevent.config.reader_base import _Err, _Reader, _Stream, bind, skip_block


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



def _weights(r: _Reader, s: _Stream, target, kwtok: Token) -> None:
    """Legacy `weights { ... }` / `conn_weight` / `time_weight`: skipped with a warning."""
    r.warn(kwtok.loc, f"'{kwtok.value.lower()}' is not supported and ignored")
    if s.peek().kind == SYM and s.peek().value == "{":
        skip_block(s, "weights")
    else:
        s.next()



ROUTE_HANDLERS = {
    "auth_common_name": _auth_common_name,
    "role": _role,
    "pool_notice_after_waiting_ms": _pool_notice,
    "client_max": _client_max,
    "options": _options,
    "backend_startup_options": _backend_startup_options,
    "ldap_storage_credentials": _ldap_storage_credentials,
    "conn_weight": _weights,
    "time_weight": _weights,
}
ROUTE_SCHEMA = bind(K.ROUTE, ROUTE_HANDLERS)
GROUP_SCHEMA = bind(K.GROUP, ROUTE_HANDLERS)
WATCHDOG_SCHEMA = bind(K.WATCHDOG, ROUTE_HANDLERS)
DATABASE_SCHEMA = bind(K.DATABASE, {"user": _user, "group": _group})
LDAP_CREDS_SCHEMA = K.LDAP_CREDS
