"""Config reader: every keyword parses into the model, defaults, lexical rules, include."""
from __future__ import annotations

import os
import re
import signal

import pytest

from odyssey_gevent.config import keywords, reader
from odyssey_gevent.config import model as C
from odyssey_gevent.config.dump import dump_config
from odyssey_gevent.config.model import ConfigError

from tests.odyssey_gevent.test_config_support import LOG_FORMAT, load_text, make_config

# ----------------------------------------------------------------------------------------------
# global keywords: (keyword, value text, attribute, expected)

GLOBAL_CASES = [
    ("daemonize", "yes", "daemonize", True),
    ("pid_file", '"/tmp/o.pid"', "pid_file", "/tmp/o.pid"),
    ("priority", "-10", "priority", -10),
    ("sequential_routing", "yes", "sequential_routing", True),
    ("unix_socket_dir", '"/tmp"', "unix_socket_dir", "/tmp"),
    ("locks_dir", '"/tmp/odyssey"', "locks_dir", "/tmp/odyssey"),
    ("external_auth_socket_path", '"/tmp/ext.sock"', "external_auth_socket_path", "/tmp/ext.sock"),
    ("enable_online_restart", "no", "enable_online_restart", False),
    ("availability_zone", '"az1"', "availability_zone", "az1"),
    ("graceful_shutdown_timeout_ms", "100", "graceful_shutdown_timeout_ms", 100),
    ("bindwith_reuseport", "yes", "bindwith_reuseport", True),
    ("enable_host_watcher", "yes", "enable_host_watcher", True),
    ("log_debug", "yes", "log_debug", True),
    ("log_to_stdout", "no", "log_to_stdout", False),
    ("log_config", "yes", "log_config", True),
    ("log_session", "no", "log_session", False),
    ("log_query", "yes", "log_query", True),
    ("log_file", '"/tmp/o.log"', "log_file", "/tmp/o.log"),
    ("log_stats", "no", "log_stats", False),
    ("log_async", "no", "log_async", False),
    ("log_queue_depth", "10", "log_queue_depth", 10),
    ("log_syslog", "yes", "log_syslog", True),
    ("log_syslog_ident", '"ody"', "log_syslog_ident", "ody"),
    ("log_syslog_facility", '"local3"', "log_syslog_facility", "local3"),
    ("stats_interval", "60", "stats_interval", 60),
    ("smart_search_path_enquoting", "yes", "smart_search_path_enquoting", True),
    ("log_general_stats_prom", "yes", "log_general_stats_prom", True),
    ("log_route_stats_prom", "yes", "log_route_stats_prom", True),
    ("promhttp_server_port", "7777", "promhttp_server_port", 7777),
    ("nodelay", "no", "nodelay", False),
    ("disable_nolinger", "yes", "disable_nolinger", True),
    ("keepalive", "7", "keepalive", 7),
    ("keepalive_keep_interval", "75", "keepalive_keep_interval", 75),
    ("keepalive_probes", "9", "keepalive_probes", 9),
    ("keepalive_usr_timeout", "-1", "keepalive_usr_timeout", -1),
    ("max_sigterms_to_die", "5", "max_sigterms_to_die", 5),
    ("readahead", "4096", "readahead", 4096),
    ("workers", "4", "workers", 4),
    ("processes", "2", "processes", 2),
    ("cpu_affinity", '"worker:0-3"', "cpu_affinity", "worker:0-3"),
    ("resolvers", "2", "resolvers", 2),
    ("cache_msg_gc_size", "10", "cache_msg_gc_size", 10),
    ("cache_coroutine", "0", "cache_coroutine", 0),
    ("coroutine_stack_size", "16", "coroutine_stack_size", 16),
    ("system_coroutine_stack_size", "64", "system_coroutine_stack_size", 64),
    ("client_max", "100", "client_max", 100),
    ("client_max_routing", "32", "client_max_routing", 32),
    ("server_login_retry", "5", "server_login_retry", 5),
    ("backend_connect_timeout_ms", "500", "backend_connect_timeout_ms", 500),
    ("cancel_timeout_ms", "200", "cancel_timeout_ms", 200),
    ("auth_query_cache_ttl_ms", "2500", "auth_query_cache_ttl_ms", 2500),
    ("cancel_queue_timeout_ms", "300", "cancel_queue_timeout_ms", 300),
    ("cancel_max_inflight", "4", "cancel_max_inflight", 4),
    ("dns_cache_ttl", "1000", "dns_cache_ttl", 1000),
    ("virtual_processing", "yes", "virtual_processing", True),
    ("virtual_transaction", "no", "virtual_transaction", False),
    ("hba_file", '"hba.conf"', "hba_file", "hba.conf"),   # read next to the config (see below)
    ("group_checker_interval", "1000", "group_checker_interval", 1000),
]

GLOBAL_DEFAULTS = {
    "daemonize": False, "pid_file": None, "priority": 0, "sequential_routing": False,
    "unix_socket_dir": None, "unix_socket_mode": None, "locks_dir": None,
    "external_auth_socket_path": None, "enable_online_restart": True, "bindwith_reuseport": True,
    "graceful_shutdown_timeout_ms": 30000, "max_sigterms_to_die": 3,
    "enable_host_watcher": False, "hba_file": None, "virtual_processing": False,
    "virtual_transaction": True, "smart_search_path_enquoting": False,
    "group_checker_interval": 7000, "log_file": None, "log_to_stdout": True,
    "log_debug": False, "log_config": False, "log_session": True, "log_query": False,
    "log_stats": True, "stats_interval": 3, "log_syslog": False, "log_async": True,
    "log_queue_depth": 30000, "nodelay": True, "disable_nolinger": False, "keepalive": 15,
    "keepalive_keep_interval": 5, "keepalive_probes": 3, "keepalive_usr_timeout": 0,
    "client_max": None, "client_max_routing": 0, "server_login_retry": 1,
    "backend_connect_timeout_ms": 30000, "cancel_timeout_ms": 5000, "workers": 1,
    "resolvers": 1, "cache_coroutine": 256, "coroutine_stack_size": 4,
    "availability_zone": None, "promhttp_server_port": None, "dns_cache_ttl": 30000,
}


@pytest.mark.parametrize("keyword,value,attr,expected", GLOBAL_CASES, ids=[c[0] for c in GLOBAL_CASES])
def test_global_keyword(tmp_path, keyword, value, attr, expected):
    extra = f"{keyword} {value}\n"
    if keyword == "unix_socket_dir":
        extra += 'unix_socket_mode "0644"\n'
    if keyword == "bindwith_reuseport" or keyword == "enable_online_restart":
        extra = f"{keyword} {value}\n"
    if keyword == "hba_file":   # the hba file is read with the config: it must exist
        (tmp_path / "hba.conf").write_text("local all all allow\n")
    cfg = load_text(tmp_path, make_config(globals_=extra))
    assert getattr(cfg, attr) == expected
    assert cfg.locations[keyword].line >= 1


def test_global_defaults(tmp_path):
    cfg = load_text(tmp_path, make_config())
    for attr, expected in GLOBAL_DEFAULTS.items():
        assert getattr(cfg, attr) == expected, attr
    assert cfg.log_format == "%p %t %l [%i %s] (%c) %m\\n"
    assert cfg.effective_client_max_routing == 64
    assert cfg.conn_drop_options == C.ConnDropOptions(location=cfg.conn_drop_options.location)
    assert not cfg.soft_oom.enabled
    assert cfg.query_parsing.mode == "disabled"
    assert cfg.warnings == []


def test_every_global_keyword_is_covered():
    covered = {c[0] for c in GLOBAL_CASES} | {
        "include", "log_format", "unix_socket_mode", "listen", "storage", "database",
        "shared_pool", "ldap_endpoint", "soft_oom", "query_parsing", "conn_drop_options",
        "online_restart_drop_options", "load_module", "weights",
        # deprecated, covered by test_deprecated_keywords_warn
        "pipeline", "cache", "cache_chunk", "packet_read_size", "packet_write_queue",
        "graceful_die_on_errors"}
    assert set(keywords.ROOT) <= covered


def test_workers_auto(tmp_path):
    cfg = load_text(tmp_path, make_config(globals_='workers "auto"'))
    assert cfg.workers == max(1, ((os.cpu_count() or 1) + 1) // 2)


def test_unix_socket_mode_octal(tmp_path):
    cfg = load_text(tmp_path, make_config(globals_='unix_socket_dir "/tmp"\nunix_socket_mode "0644"'))
    assert cfg.unix_socket_mode == "0644"
    assert cfg.unix_socket_mode_int == 0o644


def test_keepalive_usr_timeout_negative_is_computed(tmp_path):
    cfg = load_text(tmp_path, make_config(globals_="keepalive_usr_timeout -1"))
    assert cfg.effective_keepalive_usr_timeout == 1000 * (15 + 5 * 3) - 500


# ----------------------------------------------------------------------------------------------
# listen

LISTEN_CASES = [
    ("host", '"*"', "host", "*"),
    ("port", "7432", "port", 7432),
    ("backlog", "16", "backlog", 16),
    ("tls", '"require"', "tls", "require"),
    ("tls_ca_file", '"/ca.pem"', "tls_ca_file", "/ca.pem"),
    ("tls_key_file", '"/key.pem"', "tls_key_file", "/key.pem"),
    ("tls_cert_file", '"/cert.pem"', "tls_cert_file", "/cert.pem"),
    ("tls_protocols", '"tlsv1.2"', "tls_protocols", "tlsv1.2"),
    ("client_login_timeout", "2000", "client_login_timeout", 2000),
    ("target_session_attrs", '"read-only"', "target_session_attrs", "read-only"),
    ("balancing_method", '"leastconn"', "balancing_method", "leastconn"),
    ("catchup_timeout", "10", "catchup_timeout", 10),
    ("storage", '"pg"', "storage", ["pg"]),
]


@pytest.mark.parametrize("keyword,value,attr,expected", LISTEN_CASES, ids=[c[0] for c in LISTEN_CASES])
def test_listen_keyword(tmp_path, keyword, value, attr, expected):
    cfg = load_text(tmp_path, make_config(listen=f"{keyword} {value}"))
    assert getattr(cfg.listen[0], attr) == expected


def test_listen_keywords_covered():
    assert set(keywords.LISTEN) <= {c[0] for c in LISTEN_CASES} | {"compression"}


def test_listen_defaults(tmp_path):
    cfg = load_text(tmp_path, LOG_FORMAT + '\nlisten {\n host "*"\n}\nstorage "pg" { type "remote" host "h" }\n'
                    'database default { user default { authentication "none" storage "pg" pool "session" } }')
    listen = cfg.listen[0]
    assert (listen.port, listen.backlog, listen.tls, listen.client_login_timeout) == (6432, 128, "disable", 15000)
    assert listen.tls_cert_file is None and listen.target_session_attrs is None
    assert listen.storage == [] and listen.location.line == 2


def test_listen_multiple_and_storage_fallbacks(tmp_path):
    text = make_config(listen='storage "pg"\nstorage "pg2"', extra='listen {\n port 7000\n host "::1"\n}\n'
                       'storage "pg2" { type "remote" host "h2" }')
    cfg = load_text(tmp_path, text)
    assert [ls.port for ls in cfg.listen] == [6432, 7000]
    assert cfg.listen[0].storage == ["pg", "pg2"]
    assert not any("again" in w for w in cfg.warnings)


# ----------------------------------------------------------------------------------------------
# storage

STORAGE_CASES = [
    ("type", '"remote"', "type", "remote"),
    ("host", '"db1"', "host", "db1"),
    ("port", "5433", "port", 5433),
    ("tls", '"verify_full"', "tls", "verify_full"),
    ("tls_ca_file", '"/ca"', "tls_ca_file", "/ca"),
    ("tls_key_file", '"/k"', "tls_key_file", "/k"),
    ("tls_cert_file", '"/c"', "tls_cert_file", "/c"),
    ("tls_protocols", '"tlsv1.3"', "tls_protocols", "tlsv1.3"),
    ("server_max_routing", "3", "server_max_routing", 3),
    ("endpoints_status_poll_interval", "250", "endpoints_status_poll_interval", 250),
]


@pytest.mark.parametrize("keyword,value,attr,expected", STORAGE_CASES, ids=[c[0] for c in STORAGE_CASES])
def test_storage_keyword(tmp_path, keyword, value, attr, expected):
    cfg = load_text(tmp_path, make_config(storage=f"{keyword} {value}"))
    assert getattr(cfg.storages["pg"], attr) == expected


def test_storage_defaults(tmp_path):
    cfg = load_text(tmp_path, LOG_FORMAT + '\nlisten { host "*" }\nstorage "pg" {\n type "remote"\n host "h"\n}\n'
                    'database default { user default { authentication "none" storage "pg" pool "session" } }')
    st = cfg.storages["pg"]
    assert (st.port, st.tls, st.endpoints_status_poll_interval, st.server_max_routing) == (0, "disable", 1000, 0)
    assert cfg.storage_server_max_routing(st) == 1
    assert st.balancing == C.Balancing("roundrobin", True, False)
    assert st.watchdog is None
    assert st.endpoints == [C.Endpoint("h", 0)]


def test_storage_endpoints_get_storage_port(tmp_path):
    cfg = load_text(tmp_path, make_config(storage='host "tcp://a:5433,b,[::1]:5434:az2,c:az3,unix:///tmp"\nport 6000'))
    eps = cfg.storages["pg"].endpoints
    assert [(e.host, e.port, e.availability_zone, e.address_type) for e in eps] == [
        ("a", 5433, None, "tcp"), ("b", 6000, None, "tcp"), ("::1", 5434, "az2", "tcp"),
        ("c", 6000, "az3", "tcp"), ("/tmp", 6000, None, "unix")]


@pytest.mark.parametrize("text,expected", [
    ("h", [("h", 7, None)]),
    ("h:1", [("h", 1, None)]),
    ("h:az", [("h", 7, "az")]),
    ("h:1:az", [("h", 1, "az")]),
    ("h:az:1", [("h", 1, "az")]),
    ("[fe80::1]:2,x", [("fe80::1", 2, None), ("x", 7, None)]),
    (" a , b ", [("a", 7, None), ("b", 7, None)]),
])
def test_parse_endpoints(text, expected):
    got = reader.parse_endpoints(text, 7)
    assert [(e.host, e.port, e.availability_zone) for e in got] == expected


@pytest.mark.parametrize("text", ["", "a,,b", "[::1", "h:1:2", "h:a:b", ":5", "h:99999", "h:1x", "[::1]x"])
def test_parse_endpoints_rejects(text):
    with pytest.raises(ValueError):
        reader.parse_endpoints(text)


def test_storage_without_host_uses_unix_socket_dir(tmp_path):
    text = (LOG_FORMAT + '\nunix_socket_dir "/var/run/pg"\nunix_socket_mode "0600"\nlisten { }\n'
            'storage "pg" {\n type "remote"\n port 5432\n}\n'
            'database default { user default local { authentication "none" storage "pg" pool "session" } }')
    cfg = load_text(tmp_path, text)
    assert cfg.listen[0].host is None and cfg.listen[0].is_unix
    ep = cfg.storages["pg"].endpoints
    assert ep == [C.Endpoint("/var/run/pg/.s.PGSQL.5432", 5432, None, "unix")]
    assert cfg.rules[0].conn_type == "local"


def test_storage_balancing_and_watchdog(tmp_path):
    storage = '''
    balancing {
        method "leastconn" { az_aware no }
        show_notice_messages yes
    }
    watchdog {
        authentication "none"
        storage "pg"
        storage_db "postgres"
        storage_user "lag"
        pool_routing "internal"
        pool "transaction"
        pool_discard no
        watchdog_lag_query "SELECT 1"
        watchdog_lag_interval 10
    }'''
    cfg = load_text(tmp_path, make_config(storage=storage))
    st = cfg.storages["pg"]
    assert st.balancing == C.Balancing("leastconn", False, True)
    wd = st.watchdog
    assert (wd.watchdog_lag_query, wd.watchdog_lag_interval) == ("SELECT 1", 10)
    assert wd.rule in cfg.rules and wd.rule.is_internal
    assert (wd.rule.db_name, wd.rule.user_name) == ("watchdog_int", "watchdog_int")
    assert wd.rule.storage is st and wd.rule.storage_user == "lag"
    # the internal watchdog rule round-trips through dump_config()
    again = reader.loads(dump_config(cfg), "dump")
    assert again.storages["pg"].watchdog.watchdog_lag_query == "SELECT 1"


def test_storage_balancing_unknown_method(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_text(tmp_path, make_config(storage='balancing { method "random" }'))
    assert "balancing method 'random' is not implemented" in str(e.value)


# ----------------------------------------------------------------------------------------------
# route items

ROUTE_CASES = [
    ("authentication", '"md5"\npassword "x"', "authentication", "md5"),
    ("password", '"secret"', "password", "secret"),
    ("auth_query", '"SELECT 1"\nauth_query_db "db"\nauth_query_user "u"', "auth_query", "SELECT 1"),
    ("auth_query_db", '"db"', "auth_query_db", "db"),
    ("auth_query_user", '"u"', "auth_query_user", "u"),
    ("auth_pam_service", '"odyssey"', "auth_pam_service", "odyssey"),
    ("auth_module", '"mod"', "auth_module", "mod"),
    ("enable_mdb_iamproxy_auth", "yes", "enable_mdb_iamproxy_auth", True),
    ("mdb_iamproxy_socket_path", '"/s"', "mdb_iamproxy_socket_path", "/s"),
    ("password_passthrough", "yes", "password_passthrough", True),
    ("storage_db", '"real"', "storage_db", "real"),
    ("storage_user", '"ru"', "storage_user", "ru"),
    ("storage_password", '"rp"', "storage_password", "rp"),
    ("pool_routing", '"client_visible"', "pool_routing", "client_visible"),
    ("pool_size", "10", "pool_size", 10),
    ("min_pool_size", "2", "min_pool_size", 2),
    ("pool_timeout", "100", "pool_timeout", 100),
    ("pool_ttl", "60", "pool_ttl", 60),
    ("pool_discard", "no", "pool_discard", False),
    ("pool_discard_query", '"RESET ALL"', "pool_discard_query", "RESET ALL"),
    ("pool_cancel", "no", "pool_cancel", False),
    ("pool_rollback", "no", "pool_rollback", False),
    ("pool_reset_timeout_ms", "50", "pool_reset_timeout_ms", 50),
    ("pool_reserve_prepared_statement", "no", "pool_reserve_prepared_statement", False),
    ("pool_client_idle_timeout", "20", "pool_client_idle_timeout", 20),
    ("pool_idle_in_transaction_timeout", "30", "pool_idle_in_transaction_timeout", 30),
    ("pool_idle_in_request_timeout_ms", "0", "pool_idle_in_request_timeout_ms", 0),
    ("pool_notice_after_waiting_ms", "500", "pool_notice_after_waiting_ms", 500),
    ("pool_attach_check", "no", "pool_attach_check", False),
    ("pool_acquire_fail_fast", "yes", "pool_acquire_fail_fast", True),
    ("client_max", "107", "client_max", 107),
    ("client_fwd_error", "yes", "client_fwd_error", True),
    ("client_show_id", "no", "client_show_id", False),
    ("application_name_add_host", "yes", "application_name_add_host", True),
    ("maintain_params", "no", "maintain_params", False),
    ("reserve_session_server_connection", "no", "reserve_session_server_connection", False),
    ("server_lifetime", "1901", "server_lifetime", 1901),
    ("server_drop_on_cached_plan_error", "no", "server_drop_on_cached_plan_error", False),
    ("log_debug", "yes", "log_debug", True),
    ("log_query", "yes", "log_query", True),
    ("quantiles", '"0.99,0.95,0.5"', "quantiles", [0.99, 0.95, 0.5]),
    ("target_session_attrs", '"read-write"', "target_session_attrs", "read-write"),
    ("catchup_timeout", "5", "catchup_timeout", 5),
    ("keepalive", "1", "keepalive", 1),
    ("keepalive_keep_interval", "2", "keepalive_keep_interval", 2),
    ("keepalive_probes", "3", "keepalive_probes", 3),
    ("keepalive_usr_timeout", "4", "keepalive_usr_timeout", 4),
    ("options", '{ "statement_timeout" "0" "search_path" "a,b" }', "options",
     {"statement_timeout": "0", "search_path": "a,b"}),
    ("backend_startup_options", '{ "replication" "database" }', "backend_startup_options",
     {"replication": "database"}),
    ("ldap_endpoint_name", '"ldap1"', "ldap_endpoint_name", "ldap1"),
    ("ldap_storage_credentials_attr", '"attr"', "ldap_storage_credentials_attr", "attr"),
    ("auth_common_name", '"cn1"\nauth_common_name "cn2"\nauth_common_name default',
     "auth_common_name", ["cn1", "cn2"]),
]

ROUTE_DEFAULTS = {
    "password": None, "auth_query": None, "password_passthrough": False, "role": None,
    "storage_db": None, "storage_user": None, "storage_password": None,
    "pool_routing": "client_visible", "pool_size": 0, "min_pool_size": 0, "pool_timeout": 0,
    "pool_ttl": 0, "pool_discard": True, "pool_smart_discard": False, "pool_discard_query": None,
    "pool_cancel": True, "pool_rollback": True, "pool_reset_timeout_ms": 1000,
    "pool_reserve_prepared_statement": True, "pool_client_idle_timeout": 0,
    "pool_idle_in_transaction_timeout": 0, "pool_idle_in_request_timeout_ms": 60000,
    "pool_notice_after_waiting_ms": -1,
    "pool_attach_check": True, "pool_acquire_fail_fast": False, "pool_pin_on_listen": False,
    "shared_pool": None, "client_max": None, "client_fwd_error": False, "client_show_id": True,
    "application_name_add_host": False, "maintain_params": True,
    "reserve_session_server_connection": True, "server_lifetime": 3600,
    "server_drop_on_cached_plan_error": True, "log_debug": False, "log_query": False,
    "quantiles": None, "target_session_attrs": None, "catchup_timeout": 0, "keepalive": 0,
    "options": {}, "backend_startup_options": {}, "ldap_endpoint_name": None,
    "auth_common_name": [], "auth_common_name_default": False, "conn_type": "default",
}


@pytest.mark.parametrize("keyword,value,attr,expected", ROUTE_CASES, ids=[c[0] for c in ROUTE_CASES])
def test_route_keyword(tmp_path, keyword, value, attr, expected):
    extra = ""
    if keyword == "ldap_endpoint_name":
        extra = 'ldap_endpoint "ldap1" { ldapserver "localhost" }'
    rule_text = f"{keyword} {value}"
    if keyword == "authentication":
        rule_text = rule_text  # replaces the default "none" (last value wins)
    cfg = load_text(tmp_path, make_config(rule=rule_text, extra=extra))
    assert getattr(cfg.rules[0], attr) == expected


def test_route_keywords_covered():
    covered = {c[0] for c in ROUTE_CASES} | {
        "storage", "pool", "role", "pool_smart_discard", "pool_pin_on_listen", "shared_pool",
        "ldap_storage_credentials", "catchup_checks", "ldap_pool_size", "ldap_pool_timeout",
        "ldap_pool_ttl", "conn_weight", "time_weight"}
    assert set(keywords.ROUTE) <= covered


def test_route_defaults(tmp_path):
    cfg = load_text(tmp_path, make_config())
    rule = cfg.rules[0]
    for attr, expected in ROUTE_DEFAULTS.items():
        assert getattr(rule, attr) == expected, attr
    assert (rule.db_name, rule.user_name, rule.db_is_default, rule.user_is_default) == ("db", "user", False, False)
    assert rule.address_range.is_default
    assert rule.storage is cfg.storages["pg"] and rule.storage_name == "pg"
    assert rule.pool == "session" and rule.authentication == "none"


def test_route_misc_blocks(tmp_path):
    rule = '''
    pool "transaction"
    pool_discard no
    pool_smart_discard yes
    pool_pin_on_listen yes
    shared_pool "sp"
    pool_size 0
    ldap_storage_credentials "grp" {
        ldap_storage_username "u"
        ldap_storage_password "p"
    }'''
    cfg = load_text(tmp_path, make_config(rule=rule, extra='shared_pool "sp" { pool_size 5 }'))
    r = cfg.rules[0]
    assert r.pool_smart_discard and r.pool_pin_on_listen and r.shared_pool == "sp"
    assert cfg.shared_pools["sp"].pool_size == 5
    assert r.ldap_storage_credentials["grp"].ldap_storage_password == "p"


def test_role_on_local_storage(tmp_path):
    text = make_config(extra='storage "local" { type "local" }\ndatabase "console" {\n user default {\n'
                       '  authentication "none"\n  role "admin"\n  pool "session"\n  storage "local"\n }\n'
                       ' user "s" {\n  authentication "none"\n  pool "session"\n  storage "local"\n }\n}')
    cfg = load_text(tmp_path, text)
    admin, stat = cfg.rules[1], cfg.rules[2]
    assert admin.role == "admin" and admin.storage.is_local
    assert stat.role == "stat"  # forced, with a warning
    assert any("force stat role for local storage" in w for w in cfg.warnings)


def test_group_rule(tmp_path):
    extra = '''database "db2" {
        group "grp" "10.0.0.0/8" hostssl {
            authentication "none"
            storage "pg"
            pool "session"
            group_query "SELECT 1"
            group_query_user "postgres"
            group_query_db "postgres"
        }
    }'''
    cfg = load_text(tmp_path, make_config(extra=extra))
    g = cfg.rules[1]
    assert (g.db_name, g.user_name, g.group_name) == ("db2", "group_grp", "grp")
    assert g.address_range.string_value == "10.0.0.0/8" and g.conn_type == "hostssl"
    assert not g.user_is_default and g.group_query == "SELECT 1"


@pytest.mark.parametrize("head,addr,ct", [
    ('user "u" "127.0.0.1/32" host', "127.0.0.1/32", "host"),
    ('user "u" hostnossl "::1/128"', "::1/128", "hostnossl"),
    ('user "u" local', "", "local"),
    ('user "u" default hostssl', "", "hostssl"),
    ('user "u" "db.example.com"', "db.example.com", "default"),
    ('user "u" ".example.com" host', ".example.com", "host"),
    ('user default "10.1.0.0/16"', "10.1.0.0/16", "default"),
])
def test_route_selectors(tmp_path, head, addr, ct):
    cfg = load_text(tmp_path, make_config(rule_head='database "db" {\n ' + head + ' {'))
    r = cfg.rules[0]
    assert r.address_range.string_value == addr and r.conn_type == ct


# ----------------------------------------------------------------------------------------------
# other top-level blocks

def test_shared_pool_ldap_soft_oom_query_parsing_conn_drop(tmp_path):
    extra = '''
    shared_pool "sp" { pool_size 7 }
    ldap_endpoint "ldap1" {
        ldapserver "ldap.example.com"
        ldapport 636
        ldapprefix "uid="
        ldapsuffix ",dc=example"
        ldapbasedn "dc=example"
        ldapbinddn "cn=admin"
        ldapbindpasswd "pw"
        ldapsearchattribute "uid"
        ldapsearchfilter "(uid=$username)"
        ldapscheme "ldaps"
        ldapscope "sub"
        ldapurl "ldap://x"
    }
    soft_oom {
        limit 1GB
        process "postgres"
        check_interval_ms 500
        drop { signal "SIGKILL" max_rate 5 }
    }
    query_parsing { mode minimal mem_limit 2mb }
    online_restart_drop_options { drop_enabled no rate 4 interval_ms 200 }
    '''
    cfg = load_text(tmp_path, make_config(extra=extra))
    assert cfg.shared_pools["sp"].pool_size == 7
    ep = cfg.ldap_endpoints["ldap1"]
    assert (ep.ldapserver, ep.ldapport, ep.ldapscheme, ep.ldapurl) == ("ldap.example.com", 636, "ldaps", "ldap://x")
    so = cfg.soft_oom
    assert so.enabled and so.limit == 1024 ** 3 and so.process == "postgres" and so.check_interval_ms == 500
    assert so.drop.enabled and so.drop.signal == "SIGKILL" and so.drop.signum == signal.SIGKILL and so.drop.max_rate == 5
    assert (cfg.query_parsing.mode, cfg.query_parsing.mem_limit) == ("minimal", 2 * 1024 ** 2)
    assert cfg.conn_drop_options.drop_enabled is False and cfg.conn_drop_options.rate == 4
    assert cfg.conn_drop_options.interval_ms == 200


@pytest.mark.parametrize("text,value", [("10", 10), ("10b", 10), ("2k", 2048), ("2KB", 2048),
                                        ("3m", 3 * 1024 ** 2), ("3Mb", 3 * 1024 ** 2),
                                        ("1g", 1024 ** 3), ("1gB", 1024 ** 3)])
def test_size_suffixes(tmp_path, text, value):
    cfg = load_text(tmp_path, make_config(extra=f"soft_oom {{ limit {text} }}"))
    assert cfg.soft_oom.limit == value


def test_soft_oom_signal_without_sig_prefix(tmp_path):
    cfg = load_text(tmp_path, make_config(extra='soft_oom { limit 1mb drop { signal "term" } }'))
    assert cfg.soft_oom.drop.signal == "SIGTERM"


# ----------------------------------------------------------------------------------------------
# lexical rules


def test_keywords_are_case_insensitive(tmp_path):
    text = ('LOG_FORMAT "x\\n"\nListen {\n HOST "*"\n Port 6432\n}\nSTORAGE "pg" { Type "remote" HOST "h" }\n'
            'Database Default { User DEFAULT HOST { authentication "none" storage "pg" POOL "session" '
            'pool_discard NO log_debug Yes } }\nDAEMONIZE YES')
    cfg = load_text(tmp_path, text)
    assert cfg.daemonize is True and cfg.listen[0].host == "*"
    r = cfg.rules[0]
    assert r.db_is_default and r.user_is_default and r.conn_type == "host"
    assert r.pool_discard is False and r.log_debug is True


def test_strings_escapes_and_multiline(tmp_path):
    text = make_config(globals_='log_format "a \\"q\\" \\\\ \\t %m\\n"',
                       rule='pool_discard_query "DISCARD\n  TEMP"', log_format=False)
    cfg = load_text(tmp_path, text)
    assert cfg.log_format == 'a "q" \\\\ \\t %m\\n'
    assert cfg.rules[0].pool_discard_query == "DISCARD\n  TEMP"


def test_comments_everywhere(tmp_path):
    text = make_config(globals_="# comment\nworkers 2 # trailing\n#workers 3",
                       rule='password "#not a comment" # comment')
    cfg = load_text(tmp_path, text)
    assert cfg.workers == 2 and cfg.rules[0].password == "#not a comment"


def test_repeated_option_last_wins_with_warning(tmp_path):
    text = make_config(globals_="workers 2\nworkers 3", rule="pool_size 1\npool_size 5")
    cfg = load_text(tmp_path, text)
    assert cfg.workers == 3 and cfg.rules[0].pool_size == 5
    assert any(":3:1: 'workers' is set again" in w and "last value wins" in w for w in cfg.warnings)
    assert any("'pool_size' is set again" in w for w in cfg.warnings)


def test_deprecated_keywords_warn(tmp_path):
    text = make_config(globals_="pipeline 1\ncache 2\ncache_chunk 3\npacket_read_size 4\n"
                       "packet_write_queue 5\ngraceful_die_on_errors yes",
                       listen="compression yes",
                       rule="catchup_checks 1\nldap_pool_size 1\nldap_pool_timeout 1\nldap_pool_ttl 1")
    cfg = load_text(tmp_path, text)
    for kw in keywords.DEPRECATED_KEYWORDS:
        assert any(f"'{kw}' is deprecated and ignored" in w for w in cfg.warnings), kw
    assert all(w.startswith(str(tmp_path)) for w in cfg.warnings)


def test_the_docs_list_exactly_the_keywords_with_no_effect():
    """docs/config.md's "Accepted, no effect here" names what keywords.NOOP_KEYWORDS holds: a
    keyword that comes to take effect (cpu_affinity, priority) leaves both."""
    path = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "config.md")
    with open(path) as f:
        text = f.read()
    section = text.split("## Accepted, no effect here", 1)[1].split("Deprecated", 1)[0]
    assert set(re.findall(r"`([a-z_]+)`", section)) == set(keywords.NOOP_KEYWORDS)


def test_legacy_only_keywords_accepted(tmp_path):
    text = make_config(globals_='load_module "/usr/lib/mod.so"\nweights { a 1 }', rule="conn_weight 3")
    cfg = load_text(tmp_path, text)
    assert cfg.modules == ["/usr/lib/mod.so"]
    assert sum("not supported" in w or "C modules" in w for w in cfg.warnings) == 3


def test_workers_bad_string(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_text(tmp_path, make_config(globals_='workers "many"'))
    assert 'expected number or "auto"' in str(e.value)


# ----------------------------------------------------------------------------------------------
# include


def _base_files(tmp_path):
    (tmp_path / "storages.conf").write_text('storage "pg" { type "remote" host "h" port 5432 }\n')
    (tmp_path / "routes.conf").write_text(
        'include "storages.conf"\n'
        'database default { user default { authentication "none" storage "pg" pool "session" } }\n')


def test_include_relative_to_cwd(tmp_path, monkeypatch):
    _base_files(tmp_path)
    (tmp_path / "main.conf").write_text(LOG_FORMAT + '\nlisten { host "*" }\ninclude "routes.conf"\nworkers 2\n')
    monkeypatch.chdir(tmp_path)
    cfg = reader.load("main.conf")
    assert cfg.workers == 2 and "pg" in cfg.storages and len(cfg.rules) == 1
    assert cfg.files == ["main.conf", "routes.conf", "storages.conf"]
    assert cfg.rules[0].location.file == "routes.conf"


def test_include_relative_to_including_file_fallback(tmp_path, monkeypatch):
    sub = tmp_path / "etc"
    sub.mkdir()
    _base_files(sub)
    (sub / "main.conf").write_text(LOG_FORMAT + '\nlisten { host "*" }\ninclude "routes.conf"\n')
    monkeypatch.chdir(tmp_path)
    cfg = reader.load("etc/main.conf")
    assert cfg.files == ["etc/main.conf", os.path.join("etc", "routes.conf"),
                         os.path.join("etc", "storages.conf")]


def test_include_cwd_wins_over_including_dir(tmp_path, monkeypatch):
    sub = tmp_path / "etc"
    sub.mkdir()
    (sub / "main.conf").write_text('include "x.conf"\n')
    (sub / "x.conf").write_text("workers 5\n")
    (tmp_path / "x.conf").write_text("workers 7\n")
    monkeypatch.chdir(tmp_path)
    cfg = reader.load("etc/main.conf", validate=False)
    assert cfg.workers == 7


def test_include_missing(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_text(tmp_path, make_config(globals_='include "/nonexistent/file.conf"'))
    msg = e.value.errors[0]
    assert msg.startswith(f"{tmp_path / 'odyssey.conf'}:2:9: failed to open config file '/nonexistent/file.conf'")


def test_include_circular(tmp_path):
    a, b = tmp_path / "a.conf", tmp_path / "b.conf"
    a.write_text(f'workers 1\ninclude "{b}"\n')
    b.write_text(f'\ninclude "{a}"\n')
    with pytest.raises(ConfigError) as e:
        reader.load(str(a))
    assert e.value.errors[0].startswith(f"{b}:2:9: circular include of '{a}'")


def test_include_self(tmp_path):
    a = tmp_path / "a.conf"
    a.write_text(f'include "{a}"\n')
    with pytest.raises(ConfigError) as e:
        reader.load(str(a))
    assert "circular include" in str(e.value)


def test_include_depth_limit(tmp_path):
    n = reader.MAX_INCLUDE_DEPTH + 2
    for i in range(n):
        nxt = f'include "{tmp_path / f"f{i + 1}.conf"}"\n' if i + 1 < n else "workers 9\n"
        (tmp_path / f"f{i}.conf").write_text(nxt)
    with pytest.raises(ConfigError) as e:
        reader.load(str(tmp_path / "f0.conf"), validate=False)
    assert f"include depth exceeds {reader.MAX_INCLUDE_DEPTH}" in str(e.value)
    # exactly at the limit is fine
    (tmp_path / f"f{reader.MAX_INCLUDE_DEPTH}.conf").write_text("workers 9\n")
    cfg = reader.load(str(tmp_path / "f0.conf"), validate=False)
    assert cfg.workers == 9 and len(cfg.files) == reader.MAX_INCLUDE_DEPTH + 1


def test_include_same_file_twice_is_not_circular(tmp_path):
    (tmp_path / "w.conf").write_text("workers 4\n")
    text = make_config(globals_=f'include "{tmp_path / "w.conf"}"\ninclude "{tmp_path / "w.conf"}"')
    cfg = load_text(tmp_path, text)
    assert cfg.workers == 4


# ----------------------------------------------------------------------------------------------
# dump


def test_dump_round_trip(tmp_path):
    hba = tmp_path / "h"
    hba.write_text("local all all allow\n")
    text = make_config(globals_=f'workers 3\nclient_max 50\nhba_file "{hba}"', listen='tls "require"',
                       storage='host "a:1,b"', rule='pool_size 3\noptions { "a" "b" }\nclient_max 5\n'
                       'quantiles "0.5"\nauth_common_name default',
                       extra='shared_pool "sp" { pool_size 2 }\nsoft_oom { limit 1kb drop { max_rate 2 } }\n'
                             'database default { user default "10.0.0.0/8" hostssl { authentication "none" '
                             'storage "pg" pool "transaction" pool_discard no } }')
    cfg = load_text(tmp_path, text)
    again = reader.loads(dump_config(cfg), "dump")

    def strip(c):
        return [(r.db_name, r.user_name, r.address_range.string_value, r.conn_type, r.pool, r.pool_size,
                 r.options, r.client_max, r.quantiles, r.auth_common_name_default) for r in c.rules]
    assert strip(again) == strip(cfg)
    assert again.workers == 3 and again.client_max == 50 and again.hba_file == str(hba)
    assert again.listen[0].tls == "require"
    assert again.storages["pg"].endpoints == cfg.storages["pg"].endpoints
    assert again.soft_oom.limit == 1024 and again.soft_oom.drop.max_rate == 2
