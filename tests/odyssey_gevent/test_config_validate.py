"""Every startup error of Odyssey (reference 1.7) and the reader's syntax errors, with file:line:col."""
from __future__ import annotations

import re

import pytest

from odyssey_gevent.config import reader
from odyssey_gevent.config.model import ConfigError

from tests.odyssey_gevent.test_config_support import LOG_FORMAT, load_text, make_config

LOC = re.compile(r"^(?P<file>[^\n]+):(?P<line>\d+):(?P<col>\d+): (?P<msg>.*)$", re.S)

VALID_TAIL = ('storage "pg" { type "remote" host "h" }\n'
              'database default { user default { authentication "none" storage "pg" pool "session" } }\n')


def errors_of(tmp_path, text):
    with pytest.raises(ConfigError) as e:
        load_text(tmp_path, text)
    for err in e.value.errors:
        assert LOC.match(err), err
    return e.value.errors


def find(errors, needle):
    hits = [e for e in errors if needle in e]
    assert hits, f"{needle!r} not in {errors}"
    m = LOC.match(hits[0])
    return int(m["line"]), int(m["col"]), hits[0]


# (name, config text, expected message fragment, expected line, expected col or None)
ROUTE_HEAD = 'database "db" {\n user "u" {\n'
CASES = [
    ("no listen", LOG_FORMAT + "\n" + VALID_TAIL, "no listen servers defined", None),
    ("no storage", LOG_FORMAT + '\nlisten { host "*" }\n', "no storage defined", None),
    ("no rules", LOG_FORMAT + '\nlisten { host "*" }\nstorage "pg" { type "remote" host "h" }\n',
     "no rules defined", None),
    ("storage without type", make_config(extra='storage "x" {\n host "h"\n}'),
     "storage 'x': no type is specified", 'storage "x"'),
    ("unknown storage type", make_config(extra='storage "x" {\n type "mysql"\n host "h"\n}'),
     "storage 'x': unknown storage type 'mysql'", 'type "mysql"'),
    ("duplicate storage", make_config(extra='storage "pg" { type "remote" host "h" }'),
     "duplicate storage definition: pg", '"pg" { type'),
    ("unknown storage referenced", make_config(rule='storage "nope"'),
     "rule 'db.user': no rule storage 'nope' found", 'storage "nope"'),
    ("no storage in rule", LOG_FORMAT + '\nlisten { host "*" }\nstorage "pg" { type "remote" host "h" }\n'
     'database "d" {\n user "u" {\n  authentication "none"\n  pool "session"\n }\n}\n',
     "rule 'd.u': no rule storage is specified", 'user "u"'),
    ("pool not set", LOG_FORMAT + '\nlisten { host "*" }\nstorage "pg" { type "remote" host "h" }\n'
     'database "d" {\n user "u" {\n  authentication "none"\n  storage "pg"\n }\n}\n',
     "rule 'd.u': pooling mode is not set", 'user "u"'),
    ("unknown pool", make_config(rule='pool "transactional"'),
     "rule 'db.user': unknown pooling mode 'transactional'", 'pool "transactional"'),
    ("auth not defined", LOG_FORMAT + '\nlisten { host "*" }\nstorage "pg" { type "remote" host "h" }\n'
     'database "d" {\n user "u" {\n  pool "session"\n  storage "pg"\n }\n}\n',
     "rule 'd.u': authentication mode is not defined", 'user "u"'),
    ("unknown auth", make_config(rule='authentication "trust"'),
     "rule 'db.user': has unknown authentication mode 'trust'", 'authentication "trust"'),
    ("password not set clear_text", make_config(rule='authentication "clear_text"'),
     "rule 'db.user': password is not set", 'user "user"'),
    ("pam with auth_query", make_config(rule='authentication "clear_text"\nauth_pam_service "p"\n'
                                             'auth_query "SELECT 1"\nauth_query_db "x"\nauth_query_user "x"'),
     "rule 'db.user': auth query and pam service auth method cannot be used simultaneously", 'user "user"'),
    ("password not set md5", make_config(rule='authentication "md5"'),
     "rule 'db.user': password is not set", 'user "user"'),
    ("password not set scram", make_config(rule='authentication "scram-sha-256"'),
     "rule 'db.user': password is not set", 'user "user"'),
    ("auth_query_user not set", make_config(rule='auth_query "SELECT 1"\nauth_query_db "x"'),
     "rule 'db.user': auth_query_user is not set", 'auth_query "'),
    ("auth_query_db not set", make_config(rule='auth_query "SELECT 1"\nauth_query_user "x"'),
     "rule 'db.user': auth_query_db is not set", 'auth_query "'),
    ("shared_pool + pool_size", make_config(rule='shared_pool "sp"\npool_size 3',
                                            extra='shared_pool "sp" { pool_size 5 }'),
     "rule 'db.user': shared_pool and pool_size can't be set simultaneously", 'shared_pool "sp"\npool_size'),
    ("smart discard without pstmt", make_config(rule='pool_smart_discard yes'),
     "rule 'db.user': pool smart discard is forbidden without using prepared statements support", 'pool_smart_discard'),
    ("deallocate all with pstmt", make_config(rule='pool "transaction"\npool_discard no\n'
                                              'pool_discard_query "RESET ALL; deallocate all"'),
     "rule 'db.user': cannot support prepared statements when 'DEALLOCATE ALL' present in discard string", 'pool_discard_query'),
    ("internal rule with address", make_config(rule_head='database "db" {\n user "u" "10.0.0.0/8" {',
                                               rule='pool_routing "internal"'),
     "rule 'db.u 10.0.0.0/8': internal rules must have default address_range", 'user "u" "10'),
    ("route redefined", make_config(extra='database "db" {\n user "user" {\n authentication "none"\n'
                                          ' storage "pg"\n pool "session"\n }\n}'),
     "route 'db.user': is redefined", ('user "user"', 1)),
    ("unix_socket_mode not set", make_config(globals_='unix_socket_dir "/tmp"'),
     "unix_socket_mode is not set", 'unix_socket_dir'),
    ("log_format not defined", make_config(log_format=False), "log_format is not defined", None),
    ("invalid address", make_config(rule_head='database "db" {\n user "u" "10.0.0.300/8" {'),
     "invalid address or hostname '10.0.0.300/8'", '"10.0.0.300/8"'),
    ("address without mask", make_config(rule_head='database "db" {\n user "u" "10.0.0.1" {'),
     "expected network mask in '10.0.0.1'", '"10.0.0.1"'),
    ("bad prefix", make_config(rule_head='database "db" {\n user "u" "10.0.0.0/33" {'),
     "invalid network prefix length in '10.0.0.0/33'", '"10.0.0.0/33"'),
    ("unknown tsa", make_config(rule='target_session_attrs "master"'),
     "can't parse target session attrs from 'master'", '"master"'),
    ("unknown role", make_config(rule='role "client"'), "role type 'client' is unknown", '"client"'),
    ("role on remote storage", make_config(rule='role "admin"'),
     "rule 'db.user': role set for non-local storage", 'role "admin"'),
    ("storage without host", make_config(extra='storage "x" {\n type "remote"\n}'),
     "storage 'x': no host specified and unix_socket_dir is not set", 'storage "x"'),
    ("bad listen tls", make_config(listen='tls "on"'), "unknown tls mode 'on'", 'tls "on"'),
    ("bad storage tls", make_config(storage='tls "yes"'),
     "storage 'pg': unknown storage tls mode 'yes'", 'tls "yes"'),
    ("listen without host and unix dir", LOG_FORMAT + "\nlisten {\n port 1\n}\n" + VALID_TAIL,
     "listen host is not set and no unix_socket_dir is specified", 'listen {'),
    ("bad workers", make_config(globals_="workers 0"), "bad workers number", 'workers 0'),
    ("bad resolvers", make_config(globals_="resolvers -1"), "bad resolvers number", 'resolvers'),
    ("bad processes", make_config(globals_="processes 0"), "bad processes number (1 to 256)", 'processes 0'),
    ("too many processes", make_config(globals_="processes 257"), "bad processes number", 'processes 257'),
    ("processes without reuseport",
     make_config(globals_="processes 2\nenable_online_restart no\nbindwith_reuseport no"),
     "processes > 1 shares the listen ports with SO_REUSEPORT", 'processes 2'),
    ("processes with unix sockets only",
     LOG_FORMAT + '\nprocesses 2\nunix_socket_dir "/tmp"\nunix_socket_mode "0700"\nlisten {\n port 1\n}\n' + VALID_TAIL,
     "processes > 1 needs a TCP listen block", 'processes 2'),
    ("online restart without reuseport", make_config(globals_="bindwith_reuseport no"),
     "online restart feature works only with SO_REUSEPORT", 'bindwith_reuseport'),
    ("bad unix_socket_mode", make_config(globals_='unix_socket_dir "/tmp"\nunix_socket_mode "rw"'),
     "unix_socket_mode 'rw' is not an octal file mode", '"rw"'),
    ("group without query", make_config(extra='database "g" {\n group "grp" {\n authentication "none"\n'
                                              ' storage "pg"\n pool "session"\n }\n}'),
     "rule 'g.group_grp': group_query is not set", 'group "grp"'),
    ("unknown shared pool", make_config(rule='shared_pool "nope"'),
     "rule 'db.user': unknown shared pool 'nope'", 'shared_pool "nope"'),
    ("unknown ldap endpoint", make_config(rule='ldap_endpoint_name "nope"'),
     "rule 'db.user': unknown ldap endpoint 'nope'", 'ldap_endpoint_name'),
    ("pin on listen in session", make_config(rule="pool_pin_on_listen yes"),
     "setting pool_pin_on_listen with session pool for db.user makes no sense", 'pool_pin_on_listen'),
    ("soft_oom without limit", make_config(extra="soft_oom { process \"pg\" }"),
     "limit is not set in soft_oom", 'soft_oom'),
    ("soft_oom bad signal", make_config(extra='soft_oom { limit 1 drop { signal "SIGFOO" } }'),
     "can't parse signal from 'SIGFOO'", '"SIGFOO"'),
    ("negative notice", make_config(rule="pool_notice_after_waiting_ms -5"),
     "pool_notice_after_waiting_ms can't be negative", '-5'),
    ("bad quantile", make_config(rule='quantiles "0.5,2"'), "incorrect quantile value", '"0.5,2"'),
    ("zero poll interval", make_config(storage="endpoints_status_poll_interval 0"),
     "endpoints_status_poll_interval must be positive", 'endpoints_status_poll_interval |0'),
    ("bad endpoints", make_config(storage='host "[::1"'), "can't parse endpoints from: [::1", '"[::1"'),
    ("conn_drop aliases both", make_config(extra="conn_drop_options { rate 1 }\n"
                                                 "online_restart_drop_options { rate 2 }"),
     "'online_restart_drop_options' and 'conn_drop_options' can't both be set", 'online_restart_drop_options'),
    ("query_parsing full", make_config(extra="query_parsing { mode full }"),
     "query_parsing mode 'full' is not supported", 'full'),
    ("missing shared pool size", make_config(extra='shared_pool "sp" { }'),
     "shared_pool 'sp': pool_size must be set and positive", 'shared_pool "sp" { }'),
]


def position(text, at):
    """1-based (line, col) of marker ``at`` in text: None = 1:1 (file-level errors);
    (needle, n) = n-th occurrence; a '|' inside the needle marks the exact column."""
    if at is None:
        return 1, 1
    needle, nth = (at, 0) if isinstance(at, str) else at
    offset = needle.index("|") if "|" in needle else 0
    needle = needle.replace("|", "")
    idx = -1
    for _ in range(nth + 1):
        idx = text.index(needle, idx + 1)
    idx += offset
    line = text.count("\n", 0, idx) + 1
    col = idx - (text.rfind("\n", 0, idx) + 1) + 1
    return line, col


# (name, config text, expected message fragment, where: a marker in the text, see position())
@pytest.mark.parametrize("name,text,message,at", CASES, ids=[c[0] for c in CASES])
def test_validation_error(tmp_path, name, text, message, at):
    errors = errors_of(tmp_path, text)
    got_line, got_col, full = find(errors, message)
    assert full.startswith(str(tmp_path / "odyssey.conf") + ":"), full
    assert (got_line, got_col) == position(text, at), full


# ----------------------------------------------------------------------------------------------
# syntax errors

SYNTAX = [
    ("unknown keyword with hint", "listen {\n  prot 5\n}\n", "2:3: unknown keyword 'prot' in listen",
     "  hint: did you mean 'port'?"),
    ("unknown top-level with hint", "wrokers 2\n", "1:1: unknown keyword 'wrokers' in the top level",
     "  hint: did you mean 'workers'?"),
    ("unknown far away", "zzzzzzzzzz 1\n", "1:1: unknown keyword 'zzzzzzzzzz'", None),
    ("keyword in the wrong block", "listen {\n pool_size 1\n}\n",
     "2:2: keyword 'pool_size' is not allowed in listen", None),
    ("single quotes", "log_format 'x'\n", "1:12: unexpected character '''", None),
    ("unterminated string", 'log_format "abc\n', "1:12: unterminated string", None),
    ("bare word value", "log_format abc\n", "1:12: expected string, got keyword 'abc'",
     "  hint: strings and names must be in double quotes"),
    ("boolean as on", "daemonize on\n", "1:11: expected yes/no, got keyword 'on'", None),
    ("boolean as 1", "daemonize 1\n", "1:11: expected yes/no, got number '1'", None),
    ("number as string", 'workers "3x"\n', '1:9: expected number or "auto", got string "3x"', None),
    ("missing brace", "listen\n host \"*\"\n", "2:2: expected '{', got keyword 'host'", None),
    ("eof in block", "listen {\n host \"*\"\n", "3:1: unexpected end of file in listen, expected '}'", None),
    ("stray close", "}\n", "1:1: unexpected '}'", None),
    ("bad database name", "database db {}\n", "1:10: expected database name or default", None),
    ("bad user selector", 'database "d" { user "u" 5 { } }\n',
     "1:25: expected address, default, local, host, hostssl, hostnossl or '{' in route 'd.u'", None),
    ("two addresses", 'database "d" { user "u" "1.1.1.1/32" default { } }\n',
     "1:38: redefinition of address for route 'd.u'", None),
    ("two conn types", 'database "d" { user "u" host local { } }\n',
     "1:30: redefinition of connection type for route 'd.u'", None),
    ("options not pairs", 'database "d" { user "u" { options { "a" } } }\n',
     "1:41: expected a value for 'a' in options, got symbol '}'", None),
    ("huge number", "workers 99999999999999999999999\n", "1:9: number 99999999999999999999999 is out of range", None),
    ("control character", "workers \x01 2\n", "1:9: unexpected character '\\x01'", None),
]


@pytest.mark.parametrize("name,text,message,hint", SYNTAX, ids=[s[0] for s in SYNTAX])
def test_syntax_error(tmp_path, name, text, message, hint):
    path = tmp_path / "odyssey.conf"
    errors = errors_of(tmp_path, text)
    hits = [e for e in errors if e.startswith(f"{path}:{message}")]
    assert hits, errors
    if hint:
        assert hits[0].endswith("\n" + hint)


def test_errors_are_collected_not_just_the_first(tmp_path):
    text = ("listen {\n prot 1\n backlogg 2\n}\nstorage \"pg\" {\n typ \"remote\"\n}\n"
            "daemonize maybe\nworkers 2\n")
    errors = errors_of(tmp_path, text)
    assert [LOC.match(e)["line"] for e in errors] == ["2", "3", "6", "8"]


def test_validation_errors_collected(tmp_path):
    text = LOG_FORMAT + '\nlisten { tls "x" }\nstorage "pg" { }\ndatabase "d" { user "u" { storage "nope" } }\n'
    errors = errors_of(tmp_path, text)
    msgs = " | ".join(errors)
    for needle in ("listen host is not set", "unknown tls mode 'x'", "storage 'pg': no type is specified",
                   "no rule storage 'nope' found", "pooling mode is not set",
                   "authentication mode is not defined"):
        assert needle in msgs


def test_config_error_str_lists_everything(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_text(tmp_path, "listen {\n prot 1\n backlogg 2\n}\n")
    s = str(e.value)
    assert s.count(str(tmp_path)) == len(e.value.errors) == 2
    assert "hint: did you mean 'port'?" in s and "hint: did you mean 'backlog'?" in s


def test_missing_file():
    with pytest.raises(ConfigError) as e:
        reader.load("/nonexistent/odyssey.conf")
    assert e.value.errors == ["/nonexistent/odyssey.conf:0:0: failed to open config file "
                              "'/nonexistent/odyssey.conf': No such file or directory"]


def test_directory_is_config_error(tmp_path):
    with pytest.raises(ConfigError):
        reader.load(str(tmp_path))


def test_warnings_kept_on_error(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_text(tmp_path, "workers 1\nworkers 2\n")
    assert any("'workers' is set again" in w for w in e.value.warnings)


# ----------------------------------------------------------------------------------------------
# derived pool settings (reference 3.2)


@pytest.mark.parametrize("pool,discard,reserve,smart,query,expect_reset,expect_reserve,warn", [
    ("transaction", "yes", "yes", "no", None, "smart", True, True),
    ("transaction", "no", "yes", "no", None, None, True, False),
    ("transaction", "yes", "no", "no", None, "DISCARD ALL", False, False),
    ("transaction", "no", "no", "no", None, None, False, False),
    ("transaction", "no", "yes", "yes", None, "smart", True, False),
    ("session", "yes", "yes", "no", None, "DISCARD ALL", False, False),
    ("session", "no", "yes", "no", None, None, False, False),
    ("statement", "no", "no", "no", "RESET ALL", "RESET ALL", False, False),
    ("transaction", "no", "yes", "no", "RESET ALL", "RESET ALL", True, False),
])
def test_effective_reset(tmp_path, pool, discard, reserve, smart, query, expect_reset, expect_reserve, warn):
    rule = f'pool "{pool}"\npool_discard {discard}\npool_reserve_prepared_statement {reserve}\npool_smart_discard {smart}'
    if query:
        rule += f'\npool_discard_query "{query}"'
    cfg = load_text(tmp_path, make_config(rule=rule))
    r = cfg.rules[0]
    reset = r.effective_reset()
    if expect_reset == "smart":
        assert reset.startswith("SET SESSION AUTHORIZATION DEFAULT; RESET ALL;") and r.effective_smart_discard()
    else:
        assert reset == expect_reset
    assert r.effective_reserve_prepared_statement() is expect_reserve
    assert any("replace pool_discard with pool_smart_discard" in w for w in cfg.warnings) is warn


def test_auto_generated_internal_default_rule(tmp_path):
    text = (LOG_FORMAT + '\nlisten { host "*" }\nstorage "pg" { type "remote" host "h" }\n'
            'database default { user default { authentication "md5" auth_query "SELECT $1" auth_query_user "u" '
            'auth_query_db "d" storage "pg" storage_password "pw" pool "session" } }\n')
    cfg = load_text(tmp_path, text)
    internal = [r for r in cfg.rules if r.is_internal]
    assert len(internal) == 1 and internal[0].auto_generated
    r = internal[0]
    assert (r.pool, r.password_passthrough, r.storage_password, r.storage) == (
        "transaction", True, "pw", cfg.storages["pg"])
    # not when an internal rule exists already, nor without storage_password
    text2 = text.replace(' storage_password "pw"', "")
    assert not any(r.is_internal for r in load_text(tmp_path, text2).rules)
