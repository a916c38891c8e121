"""Rule ordering and matching (mirrors Odyssey sources/rules.c od_rules_sort_for_matching,
od_rules_forward and router.c route ids).

Pure functions over the config model: no sockets, no DNS unless a ``reverse_dns`` callable is
given.  ``Rules(config).match(db, user, client_addr, conn_type, tls)`` returns the first matching
:class:`~odyssey_gevent.config.model.Rule` in matching order (specificity, or file order with
``sequential_routing yes``); ``route_key(rule, db, user)`` is the pool key.
"""
from __future__ import annotations

from typing import Callable, Iterable, NamedTuple, Optional

from odyssey_gevent.config.model import Config, Rule

# od_rule_conn_type_t values; ties sort by conn type descending.
CONN_TYPE_ORDER = {"default": 0, "local": 1, "host": 2, "hostssl": 3, "hostnossl": 4}

# client connection kinds accepted by match()
CLIENT_CONN_TYPES = ("local", "host", "unix", "tcp")


def specificity(rule: Rule) -> int:
    """db 1000 + user 100 + address 10 + conn type 1 (rules.c)."""
    return ((0 if rule.db_is_default else 1000) + (0 if rule.user_is_default else 100)
            + (0 if rule.address_range.is_default else 10)
            + (0 if rule.conn_type == "default" else 1))


def _str_key(is_default: bool, value: str) -> tuple:
    # defaults sort after named ones; named ones compare like strcmp (UTF-8 byte order)
    return (1, b"") if is_default else (0, value.encode("utf-8", "surrogatepass"))


def tie_key(rule: Rule) -> tuple:
    """od_rules_rule_cmp: db name, user name, address string, conn type descending."""
    return (_str_key(rule.db_is_default, rule.db_name),
            _str_key(rule.user_is_default, rule.user_name),
            _str_key(rule.address_range.is_default, rule.address_range.string_value),
            -CONN_TYPE_ORDER.get(rule.conn_type, 0))


def sort_rules(rules: Iterable[Rule], sequential: bool = False) -> list[Rule]:
    """Matching order: file order when sequential, else specificity descending then tie_key."""
    if sequential:
        return sorted(rules, key=lambda r: (r.order, tie_key(r)))
    return sorted(rules, key=lambda r: (-specificity(r), tie_key(r)))


def _normalize_conn_type(conn_type: str) -> str:
    ct = (conn_type or "").lower()
    if ct in ("local", "unix"):
        return "local"
    if ct in ("host", "tcp", "hostssl", "hostnossl"):
        return "host"
    raise ValueError(f"unknown client connection type '{conn_type}'")


def conn_type_matches(rule_conn_type: str, client_conn_type: str, tls: bool) -> bool:
    """local = unix socket, host = TCP, hostssl/hostnossl by TLS state; default = any."""
    if rule_conn_type == "default":
        return True
    return _conn_type_fits(rule_conn_type, _normalize_conn_type(client_conn_type), tls)


def _conn_type_fits(rule_conn_type: str, client: str, tls: bool) -> bool:
    """conn_type_matches for a rule type other than default and a normalized client type."""
    if rule_conn_type == "local":
        return client == "local"
    if rule_conn_type == "host":
        return client == "host"
    if rule_conn_type == "hostssl":
        return client == "host" and bool(tls)
    if rule_conn_type == "hostnossl":
        return client == "host" and not tls
    return False


class RouteKey(NamedTuple):
    """Pool identity: (backend database, backend user, rule)."""

    database: str
    user: str
    rule_id: int

    def __str__(self) -> str:
        return f"{self.database}.{self.user}"


def route_key(rule: Rule, db: str, user: str) -> RouteKey:
    """(storage_db or client db, storage_user or client user, rule identity)."""
    return RouteKey(rule.storage_db or db, rule.storage_user or user, id(rule))


class Rules:
    """The rules of one config in matching order.

    ``reverse_dns(addr) -> hostname | None`` resolves client addresses for hostname selectors
    (it should do the forward confirmation); by default hostname rules never match.
    ``group_members`` maps a group rule's ``group_name`` to the set of user names the group
    checker found; a group rule matches its ``group_<name>`` user and those members.
    """

    def __init__(self, config: Config, reverse_dns: Optional[Callable[[str], Optional[str]]] = None,
                 group_members: Optional[dict] = None):
        self.config = config
        self.sequential = bool(config.sequential_routing)
        self.reverse_dns = reverse_dns
        self.group_members: dict[str, set] = dict(group_members or {})
        self._ordered = sort_rules(config.rules, self.sequential)
        # the same order split by Rule.is_internal, for match (a per-rule comparison of strings,
        # which 3.11 does not specialize without a jump after it, at every login)
        self._external = tuple(r for r in self._ordered if r.pool_routing != "internal")
        self._internal = tuple(r for r in self._ordered if r.pool_routing == "internal")

    def rules_in_order(self, include_internal: bool = True) -> list[Rule]:
        """The SHOW RULES order (= matching order)."""
        if include_internal:
            return list(self._ordered)
        return [r for r in self._ordered if not r.is_internal]

    def set_group_members(self, group_name: str, users: Iterable[str]) -> None:
        self.group_members[group_name] = set(users)

    def _user_matches(self, rule: Rule, user: str) -> bool:
        if rule.user_is_default:
            return True
        if rule.user_name == user:
            return True
        if rule.group_name is not None:
            return user in self.group_members.get(rule.group_name, ())
        return False

    def match(self, db: str, user: str, client_addr=None, conn_type: str = "host",
              tls: bool = False, internal: bool = False) -> Optional[Rule]:
        """First rule matching the client, or None.

        ``client_addr``: IP address string / ipaddress object, None for unix sockets.
        ``conn_type``: "host"/"tcp" or "local"/"unix".  ``internal`` clients (auth_query,
        group checker, watchdog) see only ``pool_routing "internal"`` rules; others never do.
        """
        # the two usual names without _normalize_conn_type's frame (once a login)
        client_type = conn_type if conn_type == "host" or conn_type == "local" else _normalize_conn_type(conn_type)
        # the usual tests inline (a default selector, the same name, conn_type default), the
        # rest by the helpers: run at every login, for each rule tried in turn (of its kind:
        # Rule.is_internal)
        for rule in (self._internal if internal else self._external):
            if not rule.db_is_default and rule.db_name != db:
                continue
            if not rule.user_is_default and rule.user_name != user and not self._user_matches(rule, user):
                continue
            address = rule.address_range
            if not address.is_default and not address.matches(client_addr, self.reverse_dns):
                continue
            rule_type = rule.conn_type
            if rule_type != "default" and not _conn_type_fits(rule_type, client_type, tls):
                continue
            return rule
        return None

    def __iter__(self):
        return iter(self._ordered)

    def __len__(self) -> int:
        return len(self._ordered)


def show_rules_rows(rules: Rules) -> list[tuple]:
    """Rows of SHOW RULES: database, user, address, connection_type, obsolete."""
    rows = []
    for r in rules.rules_in_order():
        address = "<default>" if r.address_range.is_default else r.address_range.string_value
        ct = "all" if r.conn_type == "default" else r.conn_type
        rows.append((r.db_name, r.user_name, address, ct, False))
    return rows
