"""Keyword tables: per block, which keyword sets which field (mirrors sources/config_reader.c).

Pure data, shared by the reader (which binds the ``CUSTOM`` entries to its handlers) and by
:mod:`odyssey_gevent.config.dump` (which writes every plain entry back as ``keyword value``).  A
table maps a keyword to ``(kind, field)``; kinds are

    str int bool size   plain values (size: an integer, kb/mb/gb suffixes allowed)
    tsa                 a target_session_attrs string
    quantiles           "0.99,0.95"
    octal               unix_socket_mode, an octal string
    int_auto            workers: a number or "auto"
    dep_int dep_bool    deprecated: parsed, warned about, ignored
    custom              read by a handler of the reader (a sub-block, or a value with its own checks)

The order of a table is the order :mod:`~odyssey_gevent.config.dump` writes the keywords in.
"""
from __future__ import annotations

CUSTOM_KIND = "custom"
CUSTOM = (CUSTOM_KIND, None)

# Words that are values, not keywords (yes/no, route selectors).
VALUE_WORDS = frozenset(("yes", "no", "default", "local", "host", "hostssl", "hostnossl"))

# Keywords that may appear more than once in a block without a "set again" warning.
REPEATABLE = frozenset(("listen", "storage", "database", "user", "group", "include",
                        "auth_common_name", "shared_pool", "ldap_endpoint",
                        "ldap_storage_credentials", "load_module"))

# --------------------------------------------------------------------------------------------
# database "db" { user "u" { <ROUTE> } group "g" { <GROUP> } }; storage { watchdog { <WATCHDOG> } }

ROUTE: dict = {
    "authentication": ("str", "authentication"),
    "password": ("str", "password"),
    "auth_common_name": CUSTOM,
    "auth_query": ("str", "auth_query"),
    "auth_query_db": ("str", "auth_query_db"),
    "auth_query_user": ("str", "auth_query_user"),
    "auth_pam_service": ("str", "auth_pam_service"),
    "auth_module": ("str", "auth_module"),
    "enable_mdb_iamproxy_auth": ("bool", "enable_mdb_iamproxy_auth"),
    "mdb_iamproxy_socket_path": ("str", "mdb_iamproxy_socket_path"),
    "password_passthrough": ("bool", "password_passthrough"),
    "role": CUSTOM,
    "storage": ("str", "storage_name"),
    "storage_db": ("str", "storage_db"),
    "storage_user": ("str", "storage_user"),
    "storage_password": ("str", "storage_password"),
    "pool": ("str", "pool"),
    "pool_routing": ("str", "pool_routing"),
    "pool_size": ("int", "pool_size"),
    "min_pool_size": ("int", "min_pool_size"),
    "pool_timeout": ("int", "pool_timeout"),
    "pool_ttl": ("int", "pool_ttl"),
    "pool_discard": ("bool", "pool_discard"),
    "pool_smart_discard": ("bool", "pool_smart_discard"),
    "pool_discard_query": ("str", "pool_discard_query"),
    "pool_cancel": ("bool", "pool_cancel"),
    "pool_rollback": ("bool", "pool_rollback"),
    "pool_reset_timeout_ms": ("int", "pool_reset_timeout_ms"),
    "pool_reserve_prepared_statement": ("bool", "pool_reserve_prepared_statement"),
    "pool_client_idle_timeout": ("int", "pool_client_idle_timeout"),
    "pool_idle_in_transaction_timeout": ("int", "pool_idle_in_transaction_timeout"),
    "pool_idle_in_request_timeout_ms": ("int", "pool_idle_in_request_timeout_ms"),
    "pool_notice_after_waiting_ms": CUSTOM,
    "pool_attach_check": ("bool", "pool_attach_check"),
    "pool_acquire_fail_fast": ("bool", "pool_acquire_fail_fast"),
    "pool_pin_on_listen": ("bool", "pool_pin_on_listen"),
    "shared_pool": ("str", "shared_pool"),
    "client_max": CUSTOM,
    "client_fwd_error": ("bool", "client_fwd_error"),
    "client_show_id": ("bool", "client_show_id"),
    "application_name_add_host": ("bool", "application_name_add_host"),
    "maintain_params": ("bool", "maintain_params"),
    "reserve_session_server_connection": ("bool", "reserve_session_server_connection"),
    "server_lifetime": ("int", "server_lifetime"),
    "server_drop_on_cached_plan_error": ("bool", "server_drop_on_cached_plan_error"),
    "log_debug": ("bool", "log_debug"),
    "log_query": ("bool", "log_query"),
    "quantiles": ("quantiles", "quantiles"),
    "target_session_attrs": ("tsa", "target_session_attrs"),
    "catchup_timeout": ("int", "catchup_timeout"),
    "catchup_checks": ("dep_int", "catchup_checks"),
    "keepalive": ("int", "keepalive"),
    "keepalive_keep_interval": ("int", "keepalive_keep_interval"),
    "keepalive_probes": ("int", "keepalive_probes"),
    "keepalive_usr_timeout": ("int", "keepalive_usr_timeout"),
    "options": CUSTOM,
    "backend_startup_options": CUSTOM,
    "ldap_endpoint_name": ("str", "ldap_endpoint_name"),
    "ldap_storage_credentials_attr": ("str", "ldap_storage_credentials_attr"),
    "ldap_storage_credentials": CUSTOM,
    "ldap_pool_size": ("dep_int", "ldap_pool_size"),
    "ldap_pool_timeout": ("dep_int", "ldap_pool_timeout"),
    "ldap_pool_ttl": ("dep_int", "ldap_pool_ttl"),
    "conn_weight": CUSTOM,
    "time_weight": CUSTOM,
}
GROUP = dict(ROUTE, group_query=("str", "group_query"), group_query_user=("str", "group_query_user"),
             group_query_db=("str", "group_query_db"))
WATCHDOG = dict(ROUTE, watchdog_lag_query=("str", "watchdog_lag_query"),
                watchdog_lag_interval=("int", "watchdog_lag_interval"))
DATABASE: dict = {
    "user": CUSTOM,
    "group": CUSTOM,
}
LDAP_CREDS: dict = {
    "ldap_storage_username": ("str", "ldap_storage_username"),
    "ldap_storage_password": ("str", "ldap_storage_password"),
}

# --------------------------------------------------------------------------------------------
# listen, storage

LISTEN: dict = {
    "host": ("str", "host"),
    "port": ("int", "port"),
    "backlog": ("int", "backlog"),
    "tls": ("str", "tls"),
    "tls_ca_file": ("str", "tls_ca_file"),
    "tls_key_file": ("str", "tls_key_file"),
    "tls_cert_file": ("str", "tls_cert_file"),
    "tls_protocols": ("str", "tls_protocols"),
    "client_login_timeout": ("int", "client_login_timeout"),
    "target_session_attrs": ("tsa", "target_session_attrs"),
    "balancing_method": ("str", "balancing_method"),
    "catchup_timeout": ("int", "catchup_timeout"),
    "storage": CUSTOM,
    "compression": ("dep_bool", "compression"),
}

STORAGE: dict = {
    "type": ("str", "type"),
    "host": CUSTOM,
    "port": ("int", "port"),
    "tls": ("str", "tls"),
    "tls_ca_file": ("str", "tls_ca_file"),
    "tls_key_file": ("str", "tls_key_file"),
    "tls_cert_file": ("str", "tls_cert_file"),
    "tls_protocols": ("str", "tls_protocols"),
    "server_max_routing": ("int", "server_max_routing"),
    "endpoints_status_poll_interval": CUSTOM,
    "watchdog": CUSTOM,
    "balancing": CUSTOM,
}
BALANCING: dict = {
    "method": CUSTOM,
    "show_notice_messages": ("bool", "show_notice_messages"),
}
BALANCING_METHOD: dict = {"az_aware": ("bool", "az_aware")}

# --------------------------------------------------------------------------------------------
# other global blocks

SHARED_POOL: dict = {"pool_size": ("int", "pool_size")}
LDAP_ENDPOINT: dict = {
    "ldapserver": ("str", "ldapserver"),
    "ldapport": ("int", "ldapport"),
    "ldapprefix": ("str", "ldapprefix"),
    "ldapsuffix": ("str", "ldapsuffix"),
    "ldapbasedn": ("str", "ldapbasedn"),
    "ldapbinddn": ("str", "ldapbinddn"),
    "ldapbindpasswd": ("str", "ldapbindpasswd"),
    "ldapsearchattribute": ("str", "ldapsearchattribute"),
    "ldapsearchfilter": ("str", "ldapsearchfilter"),
    "ldapscheme": ("str", "ldapscheme"),
    "ldapscope": ("str", "ldapscope"),
    "ldapurl": ("str", "ldapurl"),
}
CONN_DROP: dict = {
    "drop_enabled": ("bool", "drop_enabled"),
    "rate": ("int", "rate"),
    "interval_ms": CUSTOM,
}
SOFT_OOM: dict = {
    "limit": ("size", "limit"),
    "process": ("str", "process"),
    "check_interval_ms": ("int", "check_interval_ms"),
    "drop": CUSTOM,
}
SOFT_OOM_DROP: dict = {
    "signal": CUSTOM,
    "max_rate": ("int", "max_rate"),
}
QUERY_PARSING: dict = {
    "mode": CUSTOM,
    "mem_limit": ("size", "mem_limit"),
}

# --------------------------------------------------------------------------------------------
# the top level

ROOT: dict = {
    "include": CUSTOM,
    "daemonize": ("bool", "daemonize"),
    "priority": ("int", "priority"),
    "sequential_routing": ("bool", "sequential_routing"),
    "pid_file": ("str", "pid_file"),
    "unix_socket_dir": ("str", "unix_socket_dir"),
    "unix_socket_mode": ("octal", "unix_socket_mode"),
    "locks_dir": ("str", "locks_dir"),
    "external_auth_socket_path": ("str", "external_auth_socket_path"),
    "enable_online_restart": ("bool", "enable_online_restart"),
    "availability_zone": ("str", "availability_zone"),
    "graceful_die_on_errors": ("dep_bool", "graceful_die_on_errors"),
    "graceful_shutdown_timeout_ms": ("int", "graceful_shutdown_timeout_ms"),
    "bindwith_reuseport": ("bool", "bindwith_reuseport"),
    "conn_drop_options": CUSTOM,
    "online_restart_drop_options": CUSTOM,
    "enable_host_watcher": ("bool", "enable_host_watcher"),
    "log_debug": ("bool", "log_debug"),
    "log_to_stdout": ("bool", "log_to_stdout"),
    "log_config": ("bool", "log_config"),
    "log_session": ("bool", "log_session"),
    "log_query": ("bool", "log_query"),
    "log_file": ("str", "log_file"),
    "log_format": ("str", "log_format"),
    "log_stats": ("bool", "log_stats"),
    "log_async": ("bool", "log_async"),
    "log_queue_depth": ("int", "log_queue_depth"),
    "log_syslog": ("bool", "log_syslog"),
    "log_syslog_ident": ("str", "log_syslog_ident"),
    "log_syslog_facility": ("str", "log_syslog_facility"),
    "stats_interval": ("int", "stats_interval"),
    "smart_search_path_enquoting": ("bool", "smart_search_path_enquoting"),
    "log_general_stats_prom": ("bool", "log_general_stats_prom"),
    "log_route_stats_prom": ("bool", "log_route_stats_prom"),
    "promhttp_server_port": CUSTOM,
    "nodelay": ("bool", "nodelay"),
    "disable_nolinger": ("bool", "disable_nolinger"),
    "keepalive": ("int", "keepalive"),
    "keepalive_keep_interval": ("int", "keepalive_keep_interval"),
    "keepalive_probes": ("int", "keepalive_probes"),
    "keepalive_usr_timeout": ("int", "keepalive_usr_timeout"),
    "max_sigterms_to_die": ("int", "max_sigterms_to_die"),
    "readahead": ("int", "readahead"),
    "workers": ("int_auto", "workers"),
    "processes": ("int", "processes"),       # ours (C has none): see docs/config.md "More than one core"
    "cpu_affinity": ("str", "cpu_affinity"),
    "resolvers": ("int", "resolvers"),
    "pipeline": ("dep_int", "pipeline"),
    "packet_read_size": ("dep_int", "packet_read_size"),
    "packet_write_queue": ("dep_int", "packet_write_queue"),
    "cache": ("dep_int", "cache"),
    "cache_chunk": ("dep_int", "cache_chunk"),
    "cache_msg_gc_size": ("int", "cache_msg_gc_size"),
    "cache_coroutine": ("int", "cache_coroutine"),
    "coroutine_stack_size": ("int", "coroutine_stack_size"),
    "system_coroutine_stack_size": ("int", "system_coroutine_stack_size"),
    "client_max": CUSTOM,
    "client_max_routing": ("int", "client_max_routing"),
    "server_login_retry": ("int", "server_login_retry"),
    "backend_connect_timeout_ms": ("int", "backend_connect_timeout_ms"),
    "cancel_timeout_ms": ("int", "cancel_timeout_ms"),
    "auth_query_cache_ttl_ms": ("int", "auth_query_cache_ttl_ms"),
    "cancel_queue_timeout_ms": ("int", "cancel_queue_timeout_ms"),
    "cancel_max_inflight": ("int", "cancel_max_inflight"),
    "dns_cache_ttl": ("int", "dns_cache_ttl"),
    "virtual_processing": ("bool", "virtual_processing"),
    "virtual_transaction": ("bool", "virtual_transaction"),
    "hba_file": CUSTOM,
    "group_checker_interval": ("int", "group_checker_interval"),
    "listen": CUSTOM,
    "storage": CUSTOM,
    "database": CUSTOM,
    "shared_pool": CUSTOM,
    "ldap_endpoint": CUSTOM,
    "soft_oom": CUSTOM,
    "query_parsing": CUSTOM,
    "load_module": CUSTOM,
    "weights": CUSTOM,
}

# Every word the format knows (for "not allowed here" vs "unknown" and for hints).
ALL_KEYWORDS = frozenset().union(
    ROOT, LISTEN, STORAGE, BALANCING, BALANCING_METHOD, GROUP, WATCHDOG, DATABASE, SHARED_POOL,
    LDAP_ENDPOINT, LDAP_CREDS, CONN_DROP, SOFT_OOM, SOFT_OOM_DROP, QUERY_PARSING, VALUE_WORDS)

# Keywords accepted but with no effect in odyssey-gevent (C internals): docs/config.md's
# "Accepted, no effect here" lists them (tests/odyssey_gevent/test_config_reader.py checks).
NOOP_KEYWORDS = ("cache_coroutine", "coroutine_stack_size", "system_coroutine_stack_size",
                 "cache_msg_gc_size", "readahead", "resolvers", "log_async", "log_queue_depth",
                 "locks_dir", "dns_cache_ttl")
DEPRECATED_KEYWORDS = ("pipeline", "cache", "cache_chunk", "packet_read_size",
                       "packet_write_queue", "graceful_die_on_errors", "compression",
                       "catchup_checks", "ldap_pool_size", "ldap_pool_timeout", "ldap_pool_ttl")
