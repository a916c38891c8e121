"""Rule ordering (specificity / sequential), matching and route keys (reference 1.8)."""
from __future__ import annotations

import ipaddress
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from odyssey_gevent import rules
from odyssey_gevent.config import reader
from odyssey_gevent.config.model import AddressRange

from tests.odyssey_gevent.test_config_support import LOG_FORMAT

HEAD = LOG_FORMAT + '\nlisten { host "*" }\nstorage "pg" { type "remote" host "h" }\n'
BODY = '{ authentication "none" storage "pg" pool "session" %s }'


def cfg_of(rule_lines, globals_=""):
    """rule_lines: list of (db, user-head, extra) -> a loaded config (no files)."""
    out = [HEAD, globals_]
    for db, head, extra in rule_lines:
        dbs = "default" if db is None else f'"{db}"'
        out.append(f"database {dbs} {{ {head} {BODY % extra} }}")
    return reader.loads("\n".join(out), "rules.conf")


def ids(rule_list):
    return [(r.db_name, r.user_name, r.address_range.string_value, r.conn_type) for r in rule_list]


# ----------------------------------------------------------------------------------------------
# ordering

def test_specificity_values():
    cfg = cfg_of([(None, "user default", ""), ("d", "user default", ""), (None, 'user "u"', ""),
                  (None, 'user default "1.2.3.4/32"', ""), (None, "user default local", ""),
                  ("d", 'user "u" "::1/128" hostssl', "")])
    assert [rules.specificity(r) for r in cfg.rules] == [0, 1000, 100, 10, 1, 1111]


def test_specificity_order_and_ties():
    lines = [
        (None, "user default", ""),
        (None, "user default local", ""),
        (None, "user default host", ""),
        (None, "user default hostssl", ""),
        (None, "user default hostnossl", ""),
        ("b", "user default", ""),
        ("a", "user default", ""),
        ("a", 'user "zed"', ""),
        ("a", 'user "amy"', ""),
        (None, 'user "amy"', ""),
        (None, 'user default "10.0.0.0/8"', ""),
        (None, 'user default "10.0.0.0/16"', ""),
        (None, 'user default "10.0.0.0/16" host', ""),
        (None, 'user default "1.0.0.0/8"', ""),
        ("a", 'user "amy" "10.0.0.0/8" local', ""),
        ("a", 'user "amy" "10.0.0.0/8"', ""),
    ]
    cfg = cfg_of(lines)
    order = ids(rules.Rules(cfg).rules_in_order())
    assert order == [
        ("a", "amy", "10.0.0.0/8", "local"),     # 1111
        ("a", "amy", "10.0.0.0/8", "default"),   # 1110
        ("a", "amy", "", "default"),             # 1100, amy < zed
        ("a", "zed", "", "default"),
        ("a", "default_user", "", "default"),    # 1000, a < b
        ("b", "default_user", "", "default"),
        ("default_db", "amy", "", "default"),    # 100
        ("default_db", "default_user", "10.0.0.0/16", "host"),  # 11
        ("default_db", "default_user", "1.0.0.0/8", "default"),  # 10: "1." < "10"
        ("default_db", "default_user", "10.0.0.0/16", "default"),  # "10.0.0.0/1" prefix: /16 < /8
        ("default_db", "default_user", "10.0.0.0/8", "default"),
        ("default_db", "default_user", "", "hostnossl"),  # 1: conn type descending
        ("default_db", "default_user", "", "hostssl"),
        ("default_db", "default_user", "", "host"),
        ("default_db", "default_user", "", "local"),
        ("default_db", "default_user", "", "default"),  # 0
    ]


def test_sequential_routing_is_file_order():
    lines = [(None, "user default", ""), ("a", 'user "u"', ""), (None, 'user "u"', "")]
    cfg = cfg_of(lines, globals_="sequential_routing yes")
    r = rules.Rules(cfg)
    assert ids(r.rules_in_order()) == [("default_db", "default_user", "", "default"),
                                       ("a", "u", "", "default"), ("default_db", "u", "", "default")]
    # first match in file order: the catch-all wins
    assert r.match("a", "u", "127.0.0.1").db_name == "default_db"
    # without sequential routing the most specific rule wins
    cfg2 = cfg_of(lines)
    assert rules.Rules(cfg2).match("a", "u", "127.0.0.1").db_name == "a"


def test_show_rules_rows():
    cfg = cfg_of([(None, "user default", ""), ("a", 'user "u" "10.0.0.0/8" hostssl', "")])
    assert rules.show_rules_rows(rules.Rules(cfg)) == [
        ("a", "u", "10.0.0.0/8", "hostssl", False),
        ("default_db", "default_user", "<default>", "all", False)]


# ----------------------------------------------------------------------------------------------
# matching

def test_db_user_default_fallbacks():
    cfg = cfg_of([(None, "user default", ""), ("a", "user default", ""), (None, 'user "u"', ""),
                  ("a", 'user "u"', "")])
    r = rules.Rules(cfg)
    table = {("a", "u"): ("a", "u"), ("a", "x"): ("a", "default_user"),
             ("b", "u"): ("default_db", "u"), ("b", "x"): ("default_db", "default_user")}
    for (db, user), want in table.items():
        got = r.match(db, user, "10.1.1.1")
        assert (got.db_name, got.user_name) == want


def test_no_match_returns_none():
    cfg = cfg_of([("a", 'user "u"', "")])
    r = rules.Rules(cfg)
    assert r.match("a", "x", "1.1.1.1") is None
    assert r.match("b", "u", "1.1.1.1") is None
    assert r.match("A", "u", "1.1.1.1") is None  # names are case-sensitive


@pytest.mark.parametrize("prefix", range(0, 33))
def test_ipv4_mask_boundaries(prefix):
    net = ipaddress.ip_network(f"192.168.77.0/{prefix}", strict=False)
    ar = AddressRange.parse(f"{net.network_address}/{prefix}")
    assert ar.matches(str(net.network_address)) and ar.matches(str(net.broadcast_address))
    if prefix > 0:
        outside = int(net.broadcast_address) + 1
        if outside < 2 ** 32:
            assert not ar.matches(str(ipaddress.IPv4Address(outside)))
        below = int(net.network_address) - 1
        if below >= 0:
            assert not ar.matches(str(ipaddress.IPv4Address(below)))
    assert not ar.matches(None)          # unix socket clients never match an IP selector
    assert not ar.matches("::1")         # family mismatch


@pytest.mark.parametrize("prefix", [0, 1, 8, 63, 64, 65, 120, 127, 128])
def test_ipv6_mask_boundaries(prefix):
    net = ipaddress.ip_network(f"2001:db8:abcd::/{prefix}", strict=False)
    ar = AddressRange.parse(f"{net.network_address}/{prefix}")
    assert ar.matches(str(net.network_address)) and ar.matches(str(net.broadcast_address))
    if prefix > 0:
        outside = int(net.broadcast_address) + 1
        if outside < 2 ** 128:
            assert not ar.matches(str(ipaddress.IPv6Address(outside)))
    assert not ar.matches("127.0.0.1")


def test_ipv4_mapped_ipv6_client_matches_ipv4_rule():
    ar = AddressRange.parse("127.0.0.0/8")
    assert ar.matches("::ffff:127.0.0.1")
    assert ar.matches(ipaddress.ip_address("127.0.0.2"))
    assert not ar.matches("not-an-ip")


def test_host_bits_set_matches_nothing_like_c():
    cfg = cfg_of([(None, 'user default "10.0.0.1/8"', ""), (None, "user default", "")])
    assert any("bits set beyond its mask" in w for w in cfg.warnings)
    r = rules.Rules(cfg)
    assert r.match("d", "u", "10.0.0.1").address_range.is_default


@pytest.mark.parametrize("text,default,hostname", [
    ("all", True, False), ("default", True, False), ("db.example.com", False, True),
    (".example.com", False, True), ("localhost", False, True), ("10.0.0.0/8", False, False),
    ("::/0", False, False)])
def test_address_range_kinds(text, default, hostname):
    ar = AddressRange.parse(text)
    assert (ar.is_default, ar.is_hostname) == (default, hostname)


@pytest.mark.parametrize("text", ["10.0.0.1", "::1", "1.2.3.4/40", "::1/129", "1.2.3.4/x", "bad_host!",
                                  "-bad.com", "host/8", ""])
def test_address_range_rejects(text):
    with pytest.raises(ValueError):
        AddressRange.parse(text)


def test_hostname_rules_use_reverse_dns_hook():
    cfg = cfg_of([(None, 'user default "db.example.com"', 'pool_size 1'),
                  (None, 'user default ".corp.example"', 'pool_size 2'), (None, "user default", "")])
    names = {"10.0.0.1": "db.example.com.", "10.0.0.2": "x.corp.example", "10.0.0.3": "corp.example"}
    r = rules.Rules(cfg, reverse_dns=names.get)
    assert r.match("d", "u", "10.0.0.1").pool_size == 1
    assert r.match("d", "u", "10.0.0.2").pool_size == 2
    assert r.match("d", "u", "10.0.0.3").address_range.is_default  # suffix needs the dot
    assert r.match("d", "u", "10.0.0.9").address_range.is_default
    # no hook (the default): hostname rules never match, no DNS is done
    assert rules.Rules(cfg).match("d", "u", "10.0.0.1").address_range.is_default

    def boom(addr):
        raise OSError("dns down")
    assert rules.Rules(cfg, reverse_dns=boom).match("d", "u", "10.0.0.1").address_range.is_default


CONN = ["default", "local", "host", "hostssl", "hostnossl"]
CLIENTS = [("local", False), ("local", True), ("host", False), ("host", True)]
EXPECTED = {
    "default": [True, True, True, True],
    "local": [True, True, False, False],
    "host": [False, False, True, True],
    "hostssl": [False, False, False, True],
    "hostnossl": [False, False, True, False],
}


@pytest.mark.parametrize("rule_ct", CONN)
def test_conn_type_table(rule_ct):
    got = [rules.conn_type_matches(rule_ct, ct, tls) for ct, tls in CLIENTS]
    assert got == EXPECTED[rule_ct]
    assert rules.conn_type_matches(rule_ct, "unix", False) == EXPECTED[rule_ct][0]
    assert rules.conn_type_matches(rule_ct, "tcp", True) == EXPECTED[rule_ct][3]


def test_conn_type_unknown_client_kind():
    with pytest.raises(ValueError):
        rules.conn_type_matches("host", "udp", False)


def test_conn_type_rules_end_to_end():
    cfg = cfg_of([(None, f"user default {ct}", f"pool_size {i}") for i, ct in enumerate(CONN)])
    r = rules.Rules(cfg)
    assert r.match("d", "u", None, "local").conn_type == "local"
    assert r.match("d", "u", "1.1.1.1", "host", tls=True).conn_type == "hostssl"
    assert r.match("d", "u", "1.1.1.1", "host", tls=False).conn_type == "hostnossl"


def test_internal_rules_only_for_internal_clients():
    cfg = cfg_of([(None, "user default", ""), (None, 'user "svc"', 'pool_routing "internal"')])
    r = rules.Rules(cfg)
    assert r.match("d", "svc", "1.1.1.1").user_name == "default_user"
    assert r.match("d", "svc", "1.1.1.1", internal=True).user_name == "svc"
    assert r.match("d", "other", "1.1.1.1", internal=True) is None
    assert len(r.rules_in_order(include_internal=False)) == 1


def test_group_rule_matches_members():
    cfg = cfg_of([(None, "user default", ""),
                  ("d", 'group "admins"', 'group_query "q" group_query_user "u" group_query_db "d"')])
    r = rules.Rules(cfg)
    assert r.match("d", "alice", "1.1.1.1").user_name == "default_user"
    r.set_group_members("admins", ["alice"])
    assert r.match("d", "alice", "1.1.1.1").user_name == "group_admins"
    assert r.match("d", "group_admins", "1.1.1.1").user_name == "group_admins"
    assert r.match("x", "alice", "1.1.1.1").user_name == "default_user"


# ----------------------------------------------------------------------------------------------
# route keys

def test_route_key():
    cfg = cfg_of([(None, "user default", ""), ("a", "user default", 'storage_db "real" storage_user "ru"')])
    r = rules.Rules(cfg)
    plain = r.match("x", "u", "1.1.1.1")
    mapped = r.match("a", "u", "1.1.1.1")
    assert rules.route_key(plain, "x", "u") == ("x", "u", id(plain))
    assert rules.route_key(mapped, "a", "u") == ("real", "ru", id(mapped))
    assert str(rules.route_key(mapped, "a", "u")) == "real.ru"
    assert rules.route_key(mapped, "a", "u") == rules.route_key(mapped, "a", "v")  # one pool
    assert rules.route_key(plain, "x", "u") != rules.route_key(plain, "x", "v")


# ----------------------------------------------------------------------------------------------
# exhaustive / property: the matched rule is the most specific matching one

DBS = [None, "a", "b"]
USERS = ["default", '"u"', '"v"']
ADDRS = ["", '"10.0.0.0/8"', '"10.1.0.0/16"', '"::/0"', '"fd00::/8"']
CTS = ["", "local", "host", "hostssl", "hostnossl"]
SELECTORS = list(itertools.product(DBS, USERS, ADDRS, CTS))
CLIENT_ADDRS = [None, "10.1.2.3", "10.2.0.1", "192.168.0.1", "fd00::5", "2001:db8::1"]


def reference_match(rule, db, user, addr, kind, tls):
    if not rule.db_is_default and rule.db_name != db:
        return False
    if not rule.user_is_default and rule.user_name != user:
        return False
    ar = rule.address_range
    if not ar.is_default:
        if addr is None:
            return False
        ip = ipaddress.ip_address(addr)
        if ip.version != ar.network.version or ip not in ar.network:
            return False
    ct = rule.conn_type
    is_local = kind == "local"
    return (ct == "default" or (ct == "local" and is_local) or (ct == "host" and not is_local)
            or (ct == "hostssl" and not is_local and tls) or (ct == "hostnossl" and not is_local and not tls))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(SELECTORS), min_size=1, max_size=12, unique=True),
       st.sampled_from([None, "a", "b", "c"]), st.sampled_from(["u", "v", "w"]),
       st.sampled_from(CLIENT_ADDRS), st.booleans(), st.booleans())
def test_match_is_most_specific(selectors, db, user, addr, tls, sequential):
    lines = [(d, f"user {u} {a} {c}", "") for d, u, a, c in selectors]
    cfg = cfg_of(lines, globals_="sequential_routing yes" if sequential else "")
    kind = "local" if addr is None else "host"
    got = rules.Rules(cfg).match(db or "zz", user, addr, kind, tls)
    candidates = [r for r in cfg.rules if reference_match(r, db or "zz", user, addr, kind, tls)]
    if not candidates:
        assert got is None
        return
    if sequential:
        assert got is min(candidates, key=lambda r: r.order)
    else:
        best = max(rules.specificity(r) for r in candidates)
        assert rules.specificity(got) == best
        assert got is min((r for r in candidates if rules.specificity(r) == best), key=rules.tie_key)


def test_match_exhaustive_small_grid():
    """Every client against a fixed rule set: result = most specific of the matching rules."""
    chosen = [SELECTORS[i] for i in range(0, len(SELECTORS), 7)]
    cfg = cfg_of([(d, f"user {u} {a} {c}", "") for d, u, a, c in chosen])
    r = rules.Rules(cfg)
    for db, user, addr, tls in itertools.product(["a", "b", "c"], ["u", "v", "w"], CLIENT_ADDRS,
                                                 [False, True]):
        kind = "local" if addr is None else "host"
        got = r.match(db, user, addr, kind, tls)
        cands = [x for x in cfg.rules if reference_match(x, db, user, addr, kind, tls)]
        if not cands:
            assert got is None
        else:
            assert got is min(cands, key=lambda x: (-rules.specificity(x), rules.tie_key(x)))
