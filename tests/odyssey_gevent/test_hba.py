"""hba_file: the parser (every form, every error) and the matcher, as tables."""
from __future__ import annotations

import pytest

from odyssey_gevent import hba
from odyssey_gevent.config import reader
from odyssey_gevent.config.model import ConfigError

# -- parse: accepted forms -------------------------------------------------------------------
# (line, conn_type, db (all, sameuser, names), user (all, sameuser, names), allow, version, addr, mask)
ALL = (True, False, frozenset())
PARSED = [
    ("local all all allow", "local", ALL, ALL, True, None, 0, 0),
    ("local all all trust", "local", ALL, ALL, True, None, 0, 0),
    ("local all all deny", "local", ALL, ALL, False, None, 0, 0),
    ("local all all reject", "local", ALL, ALL, False, None, 0, 0),
    ("LOCAL ALL ALL ALLOW", "local", ALL, ALL, True, None, 0, 0),
    ("local db u allow", "local", (False, False, {"db"}), (False, False, {"u"}), True, None, 0, 0),
    ("local a,b,c x,y allow", "local", (False, False, {"a", "b", "c"}), (False, False, {"x", "y"}),
     True, None, 0, 0),
    ("local a , b x ,y allow", "local", (False, False, {"a", "b"}), (False, False, {"x", "y"}),
     True, None, 0, 0),
    ("local a,all u allow", "local", (True, False, {"a"}), (False, False, {"u"}), True, None, 0, 0),
    ("local sameuser u allow", "local", (False, True, set()), (False, False, {"u"}), True, None, 0, 0),
    # sameuser in the user field is accepted and matches no one (as C)
    ("local all sameuser allow", "local", ALL, (False, False, set()), True, None, 0, 0),
    # a quoted name is never a keyword
    ('local "all" "sameuser" allow', "local", (False, False, {"all"}), (False, False, {"sameuser"}),
     True, None, 0, 0),
    ('local "my db" "User" allow', "local", (False, False, {"my db"}), (False, False, {"User"}),
     True, None, 0, 0),
    ("local Db_1 user-2 allow", "local", (False, False, {"Db_1"}), (False, False, {"user-2"}),
     True, None, 0, 0),
    ("host all all 127.0.0.1/32 allow", "host", ALL, ALL, True, 4, 0x7F000001, 0xFFFFFFFF),
    ("host all all 10.0.0.0/8 deny", "host", ALL, ALL, False, 4, 0x0A000000, 0xFF000000),
    ("host all all 10.1.2.3/8 deny", "host", ALL, ALL, False, 4, 0x0A000000, 0xFF000000),
    ("host all all 0.0.0.0/0 allow", "host", ALL, ALL, True, 4, 0, 0),
    ("host all all 10.0.0.0 255.255.0.0 allow", "host", ALL, ALL, True, 4, 0x0A000000, 0xFFFF0000),
    ("hostssl all all 192.168.0.0/16 allow", "hostssl", ALL, ALL, True, 4, 0xC0A80000, 0xFFFF0000),
    ("hostnossl all all 192.168.0.0/16 allow", "hostnossl", ALL, ALL, True, 4, 0xC0A80000,
     0xFFFF0000),
    ("host all all ::1/128 allow", "host", ALL, ALL, True, 6, 1, (1 << 128) - 1),
    ("host all all fe80::/10 allow", "host", ALL, ALL, True, 6, 0xFE80 << 112, 0xFFC0 << 112),
    ("host all all ::/0 allow", "host", ALL, ALL, True, 6, 0, 0),
    ("host all all fe80:: ffc0:: allow", "host", ALL, ALL, True, 6, 0xFE80 << 112, 0xFFC0 << 112),
    ('host all all "127.0.0.1/32" allow', "host", ALL, ALL, True, 4, 0x7F000001, 0xFFFFFFFF),
    ("host all all 127.0.0.1/32 allow # trailing comment", "host", ALL, ALL, True, 4, 0x7F000001,
     0xFFFFFFFF),
    ("\t host\tall  all\t127.0.0.1/32   allow  ", "host", ALL, ALL, True, 4, 0x7F000001, 0xFFFFFFFF),
]


@pytest.mark.parametrize("line,conn_type,db,user,allow,version,addr,mask", PARSED)
def test_parse(line, conn_type, db, user, allow, version, addr, mask):
    (rule,) = hba.parse(line)
    assert rule.conn_type == conn_type
    assert (rule.database.all, rule.database.sameuser, rule.database.names) == \
        (db[0], db[1], frozenset(db[2]))
    assert (rule.user.all, rule.user.sameuser, rule.user.names) == \
        (user[0], user[1], frozenset(user[2]))
    assert (rule.allow, rule.version, rule.addr, rule.mask) == (allow, version, addr, mask)


def test_parse_file_order_comments_and_blank_lines():
    text = ("# header\n\n   \nlocal all all allow\n  # indented comment\n"
            "host all all 10.0.0.0/8 deny\r\nhost all all ::1/128 allow")
    rules = hba.parse(text)
    assert [(r.conn_type, r.line) for r in rules] == [("local", 4), ("host", 6), ("host", 7)]
    assert hba.parse("") == [] and hba.parse("# only a comment\n\n") == []


# -- parse: every error ----------------------------------------------------------------------
ERRORS = [
    ("bogus all all allow", "f:1:1: invalid connection type 'bogus'"),
    ("all all all allow", "f:1:1: invalid connection type 'all'"),
    ('"local" all all allow', "f:1:1: invalid connection type 'local'"),
    (", all all allow", "f:1:1: invalid connection type ','"),
    ("local", "f:1:6: expected database name or keyword"),
    ("local ,a all allow", "f:1:7: expected database name or keyword"),
    ("local a, all allow", "f:1:19: expected auth method"),  # db a,all; user allow
    ("local all", "f:1:10: expected user name or keyword"),
    ("local all all", "f:1:14: expected auth method"),
    ("local all all,", "f:1:15: expected user name or keyword"),
    ("local all all maybe", "f:1:15: invalid auth method 'maybe': only allow/deny or trust/reject"),
    ('local all all "allow"', "f:1:15: invalid auth method 'allow'"),
    ("local all all allow extra", "f:1:21: unexpected 'extra' after the auth method"),
    ("host all all", "f:1:13: expected IP address"),
    ("host all all allow", "f:1:14: invalid IP address 'allow'"),
    ("host all all localhost allow", "f:1:14: invalid IP address 'localhost'"),
    ("host all all 300.0.0.1/8 allow", "f:1:14: invalid IP address '300.0.0.1'"),
    ("host all all 10.0.0.0/33 allow", "f:1:14: invalid network prefix length '33' (0 to 32 for IPv4)"),
    ("host all all ::1/129 allow", "f:1:14: invalid network prefix length '129' (0 to 128 for IPv6)"),
    ("host all all 10.0.0.0/ allow", "f:1:14: invalid network prefix length ''"),
    ("host all all 10.0.0.0/-1 allow", "f:1:14: invalid network prefix length '-1'"),
    ("host all all 10.0.0.0/x allow", "f:1:14: invalid network prefix length 'x'"),
    ("host all all 10.0.0.0 allow", "f:1:23: expected network mask after '10.0.0.0'"),
    ("host all all 10.0.0.0", "f:1:22: expected network mask after '10.0.0.0'"),
    ("host all all 10.0.0.0 255.0.0.x allow", "f:1:23: invalid network mask '255.0.0.x'"),
    ("host all all 10.0.0.0 ffff:: allow", "f:1:23: network mask 'ffff::' is IPv6, the address is IPv4"),
    ("host all all 10.0.0.0/8", "f:1:24: expected auth method"),
    ("hostssl all all 10.0.0.0/8 allow allow", "f:1:34: unexpected 'allow' after the auth method"),
    ('local "db all allow', "f:1:7: unterminated quoted string"),
]


@pytest.mark.parametrize("text,error", ERRORS)
def test_parse_error(text, error):
    with pytest.raises(hba.HbaError) as e:
        hba.parse(text, "f")
    assert len(e.value.errors) == 1
    assert e.value.errors[0].startswith(error), e.value.errors[0]
    assert isinstance(e.value, ConfigError)


def test_parse_reports_every_bad_line_with_its_number():
    with pytest.raises(hba.HbaError) as e:
        hba.parse("local all all allow\nlocal x\n# ok\nhost all all 1.2.3.4 deny\n", "/etc/hba.conf")
    assert e.value.errors == [
        "/etc/hba.conf:2:8: expected user name or keyword",
        "/etc/hba.conf:4:22: expected network mask after '1.2.3.4' (or write it as address/prefix)",
    ]


# -- check -----------------------------------------------------------------------------------
RULES = hba.parse("""
local   sock_db     sock_user              allow
local   all         all                    deny
host    db1,db2     u1                     127.0.0.1/32   allow
host    sameuser    all                    127.0.0.1/32   allow
hostssl ssl_db      all                    127.0.0.0/8    allow
hostnossl plain_db  all                    127.0.0.0/8    allow
host    all         bad                    127.0.0.1/32   deny
host    all         all                    10.0.0.0 255.0.0.0 allow
host    all         all                    ::1/128        allow
host    all         "all"                  0.0.0.0/0      allow
""", "t")

# (conn_type, tls, addr, db, user, expected)
CHECKS = [
    ("local", False, None, "sock_db", "sock_user", True),
    ("local", False, None, "db1", "u1", False),            # local rules only: deny
    ("host", False, "127.0.0.1", "sock_db", "sock_user", False),   # local rules skipped for TCP
    ("host", False, "127.0.0.1", "db1", "u1", True),
    ("host", False, "127.0.0.1", "db2", "u1", True),
    ("host", False, "127.0.0.1", "db3", "u1", False),      # no rule matches: reject
    ("host", False, "127.0.0.2", "db1", "u1", False),      # /32 is one address
    ("host", False, "127.0.0.1", "alice", "alice", True),   # sameuser
    ("host", False, "127.0.0.1", "alice", "bob", False),
    ("host", True, "127.0.0.5", "ssl_db", "x", True),       # hostssl only with TLS
    ("host", False, "127.0.0.5", "ssl_db", "x", False),
    ("host", False, "127.0.0.5", "plain_db", "x", True),    # hostnossl only without
    ("host", True, "127.0.0.5", "plain_db", "x", False),
    ("host", False, "127.0.0.1", "bad", "bad", True),       # first match wins (sameuser before deny)
    ("host", False, "127.0.0.1", "other", "bad", False),    # the deny line
    ("host", False, "10.20.30.40", "any", "any", True),     # addr + mask
    ("host", False, "11.0.0.1", "any", "any", False),
    ("host", False, "::1", "any", "any", True),             # IPv6
    ("host", False, "::2", "any", "any", False),
    ("host", False, "::ffff:10.1.1.1", "any", "any", True),  # IPv4 on a dual-stack listener
    ("host", False, "fe80::1%eth0", "any", "any", False),   # a scoped address is still parsed
    ("host", False, "8.8.8.8", "any", "all", True),         # quoted "all" is the user named all
    ("host", False, "8.8.8.8", "any", "any", False),
    ("host", False, None, "db1", "u1", False),              # no address: only local could match
    ("host", False, "not-an-ip", "db1", "u1", False),
]


@pytest.mark.parametrize("conn_type,tls,addr,db,user,expected", CHECKS)
def test_check(conn_type, tls, addr, db, user, expected):
    assert hba.check(RULES, conn_type, tls, addr, db, user) is expected


def test_check_without_rules_rejects():
    assert hba.check([], "host", False, "127.0.0.1", "db", "u") is False
    assert hba.check([], "local", False, None, "db", "u") is False


# -- read with the config --------------------------------------------------------------------
CONFIG = """
hba_file "{hba}"
log_format "%p %t %l [%i %s] (%c) %m\\n"
storage "pg" {{ type "remote" host "127.0.0.1" port 5432 }}
database default {{ user default {{ authentication "none" storage "pg" pool "session" }} }}
listen {{ host "127.0.0.1" port 6432 }}
"""


def test_config_reads_the_hba_file(tmp_path):
    (tmp_path / "hba.conf").write_text("local all all allow\nhost all all 10.0.0.0/8 deny\n")
    (tmp_path / "odyssey.conf").write_text(CONFIG.format(hba="hba.conf"))
    config = reader.load(tmp_path / "odyssey.conf")     # relative: next to the config
    assert config.hba_file == "hba.conf"
    assert [r.conn_type for r in config.hba_rules] == ["local", "host"]


def test_config_with_a_bad_hba_file_is_a_bad_config(tmp_path):
    hba_path = tmp_path / "hba.conf"
    hba_path.write_text("local all all allow\nhost all all 10.0.0.0/40 deny\n")
    (tmp_path / "odyssey.conf").write_text(CONFIG.format(hba=hba_path))
    with pytest.raises(ConfigError) as e:
        reader.load(tmp_path / "odyssey.conf")
    assert e.value.errors == [f"{hba_path}:2:14: invalid network prefix length '40' (0 to 32 for IPv4)"]


def test_config_with_a_missing_hba_file_is_a_bad_config(tmp_path):
    (tmp_path / "odyssey.conf").write_text(CONFIG.format(hba=tmp_path / "nope.conf"))
    with pytest.raises(ConfigError) as e:
        reader.load(tmp_path / "odyssey.conf")
    assert e.value.errors == [f"{tmp_path / 'odyssey.conf'}:2:10: cannot read hba_file "
                              f"'{tmp_path / 'nope.conf'}': No such file or directory"]


def test_the_example_hba_file_parses():
    import pathlib
    path = pathlib.Path(__file__).resolve().parents[2] / "etc" / "examples" / "hba.conf"
    rules = hba.parse(path.read_text(), str(path))
    assert [r.conn_type for r in rules][:2] == ["local", "host"]
    assert hba.check(rules, "host", False, "127.0.0.1", "console", "x") is True
    assert hba.check(rules, "host", False, "192.0.2.1", "console", "x") is False
    assert hba.check(rules, "host", False, "10.1.1.1", "default_db", "postgres") is False
    assert hba.check(rules, "host", False, "10.1.1.1", "default_db", "app") is True
    assert hba.check(rules, "host", False, "192.0.2.1", "default_db", "app") is False
    assert hba.check(rules, "host", True, "192.0.2.1", "default_db", "app") is True
