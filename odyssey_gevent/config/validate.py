"""Startup checks of a parsed config (mirrors sources/config.c od_config_validate, rules.c).

Also ``od_rules_validate`` and ``od_pool_validate`` of sources/rules.c.
``validate(config) -> list[str]`` checks a parsed :class:`~odyssey_gevent.config.model.Config`,
resolves rule storages (``rule.storage``), fills derived values (storage endpoints without host,
forced roles, the auto-generated internal rule for auth_query) and returns every error found as
``file:line:col: message``.  Warnings go to ``config.warnings``.  It never opens files.
"""
from __future__ import annotations

from odyssey_gevent import affinity
from odyssey_gevent.config import model as C
from odyssey_gevent.config.model import AddressRange, Config, Endpoint, Location, Rule

MAX_PROCESSES = 256      # the process index travels in the top byte of the cancel key


def _loc(obj, keyword: str | None = None) -> Location:
    if keyword is not None:
        loc = getattr(obj, "locations", {}).get(keyword)
        if loc is not None:
            return loc
    return getattr(obj, "location", C.NOWHERE)


def _top(config: Config) -> Location:
    return Location(config.path or "<config>", 1, 1)


def validate(config: Config) -> list[str]:
    errors: list[str] = []
    warnings = config.warnings

    def err(loc: Location, msg: str) -> None:
        errors.append(f"{loc}: {msg}")

    def warn(loc: Location, msg: str) -> None:
        warnings.append(f"{loc}: {msg}")

    g = config.locations
    top = _top(config)

    # ---- globals (od_config_validate) ------------------------------------------------------
    if config.workers <= 0:
        err(g.get("workers", top), "bad workers number")
    if not 1 <= config.processes <= MAX_PROCESSES:
        err(g.get("processes", top), f"bad processes number (1 to {MAX_PROCESSES})")
    elif config.processes > 1 and not config.bindwith_reuseport:
        err(g.get("processes", top), "processes > 1 shares the listen ports with SO_REUSEPORT: "
            "enable bindwith_reuseport")
    elif config.processes > 1 and config.listen and all(lst.host is None for lst in config.listen):
        err(g.get("processes", top), "processes > 1 needs a TCP listen block (a unix socket has one owner)")
    if config.resolvers <= 0:
        err(g.get("resolvers", top), "bad resolvers number")
    if config.cpu_affinity is not None:
        try:
            affinity.parse(config.cpu_affinity)
        except affinity.AffinityError as e:
            err(g.get("cpu_affinity", top), f"cpu_affinity: {e}")
    if config.log_format is None:
        err(top, "log_format is not defined")
    if config.unix_socket_dir is not None and config.unix_socket_mode is None:
        err(g.get("unix_socket_dir", top), "unix_socket_mode is not set")
    if config.client_max is not None and config.client_max < 0:
        err(g.get("client_max", top), "client_max can't be negative")
    if config.log_syslog_facility is not None and config.log_syslog_facility not in (
            ["daemon", "user"] + [f"local{i}" for i in range(8)]):
        err(g.get("log_syslog_facility", top),
            f"unknown log_syslog_facility '{config.log_syslog_facility}'")
    if config.enable_online_restart and not config.bindwith_reuseport:
        err(g.get("bindwith_reuseport", g.get("enable_online_restart", top)),
            "online restart feature works only with SO_REUSEPORT. Disable online restart or/and "
            "enable bindwith_reuseport")
    if config.coroutine_stack_size < 4:
        err(g.get("coroutine_stack_size", top), "bad coroutine_stack_size number")

    if not config.listen:
        err(top, "no listen servers defined")
    for listen in config.listen:
        if listen.host is None and config.unix_socket_dir is None:
            err(listen.location, "listen host is not set and no unix_socket_dir is specified")
        if listen.tls not in C.TLS_MODES:
            err(_loc(listen, "tls"), f"unknown tls mode '{listen.tls}'")
        if not 0 <= listen.port <= 65535:
            err(_loc(listen, "port"), f"invalid listen port {listen.port}")
        if listen.balancing_method is not None and listen.balancing_method not in (
                "roundrobin", "leastconn"):
            err(_loc(listen, "balancing_method"),
                f"unknown balancing_method '{listen.balancing_method}'")
        for name in listen.storage:
            if name not in config.storages:
                err(_loc(listen, "storage"), f"listen: unknown storage '{name}'")

    # ---- storages (od_rules_validate) ---------------------------------------------------------
    if not config.storages:
        err(top, "no storage defined")
    for st in config.storages.values():
        if st.type is None:
            err(st.location, f"storage '{st.name}': no type is specified")
        elif st.type not in C.STORAGE_TYPES:
            err(_loc(st, "type"), f"storage '{st.name}': unknown storage type '{st.type}'")
        if st.tls not in C.TLS_MODES:
            err(_loc(st, "tls"), f"storage '{st.name}': unknown storage tls mode '{st.tls}'")
        if st.type == "remote":
            if st.host is None:
                if config.unix_socket_dir is None:
                    err(st.location, f"storage '{st.name}': no host specified and "
                                     f"unix_socket_dir is not set")
                else:
                    st.endpoints = [Endpoint(
                        host=f"{config.unix_socket_dir}/.s.PGSQL.{st.port}", port=st.port,
                        address_type="unix")]
            else:
                for ep in st.endpoints:
                    if ep.port == 0:
                        ep.port = st.port
        if st.watchdog is not None and st.watchdog.rule.storage_name is None:
            # the watchdog's rule talks to its own storage unless told otherwise
            st.watchdog.rule.storage_name = st.name

    # ---- shared pools --------------------------------------------------------------------------
    for sp in config.shared_pools.values():
        if sp.pool_size <= 0:
            err(sp.location, f"shared_pool '{sp.name}': pool_size must be set and positive")

    # ---- rules ----------------------------------------------------------------------------------
    if not config.rules:
        err(top, "no rules defined")
    for rule in list(config.rules):
        _validate_rule(config, rule, err, warn)

    _autogenerate_internal_default(config, warn)
    return errors


def _validate_rule(config: Config, rule: Rule, err, warn) -> None:
    name = f"rule '{rule.name}'"
    loc = rule.location

    # storage
    if rule.storage_name is None:
        err(loc, f"{name}: no rule storage is specified")
    else:
        st = config.storages.get(rule.storage_name)
        if st is None:
            err(_loc(rule, "storage"), f"{name}: no rule storage '{rule.storage_name}' found")
        else:
            rule.storage = st

    # pool (od_pool_validate)
    if rule.pool is None:
        err(loc, f"{name}: pooling mode is not set")
    elif rule.pool not in C.POOL_MODES:
        err(_loc(rule, "pool"), f"{name}: unknown pooling mode '{rule.pool}'")
    if rule.pool_routing not in C.POOL_ROUTINGS:
        err(_loc(rule, "pool_routing"), f"{name}: unknown pool routing mode '{rule.pool_routing}'")
    if rule.is_internal and not rule.address_range.is_default:
        err(loc, f"{name}: internal rules must have default address_range")
    if rule.pool_pin_on_listen and rule.pool == "session":
        err(_loc(rule, "pool_pin_on_listen"),
            f"setting pool_pin_on_listen with session pool for {rule.db_name}.{rule.user_name} "
            f"makes no sense")
    if rule.pool in C.POOL_MODES:
        reserve = rule.effective_reserve_prepared_statement()
        if reserve and rule.pool_discard:
            warn(loc, f"{name}: replace pool_discard with pool_smart_discard due to prepared "
                      f"statements reserving")
        if rule.pool_smart_discard and not reserve:
            err(_loc(rule, "pool_smart_discard"),
                f"{name}: pool smart discard is forbidden without using prepared statements "
                f"support")
        if rule.pool_discard_query and reserve and \
                "deallocate all" in rule.pool_discard_query.lower():
            err(_loc(rule, "pool_discard_query"),
                f"{name}: cannot support prepared statements when 'DEALLOCATE ALL' present in "
                f"discard string")
    if rule.shared_pool is not None:
        if rule.pool_size:
            err(_loc(rule, "shared_pool"),
                f"{name}: shared_pool and pool_size can't be set simultaneously")
        if rule.shared_pool not in config.shared_pools:
            err(_loc(rule, "shared_pool"), f"{name}: unknown shared pool '{rule.shared_pool}'")
    for kw in ("pool_size", "min_pool_size", "pool_timeout", "pool_ttl", "server_lifetime",
               "pool_client_idle_timeout", "pool_idle_in_transaction_timeout",
               "pool_idle_in_request_timeout_ms"):
        if getattr(rule, kw) < 0:
            err(_loc(rule, kw), f"{name}: {kw} can't be negative")
    if rule.client_max is not None and rule.client_max < 1:
        err(_loc(rule, "client_max"), f"{name}: client_max must be positive")

    # role
    if rule.storage is not None and rule.storage.type in C.STORAGE_TYPES:
        if not rule.storage.is_local:
            if rule.role is not None:
                err(_loc(rule, "role"), f"{name}: role set for non-local storage")
        elif rule.role is None:
            warn(loc, f"{name}: force stat role for local storage")
            rule.role = "stat"

    # authentication
    auth = rule.authentication
    if auth is None:
        err(loc, f"{name}: authentication mode is not defined")
    elif auth not in C.AUTH_MODES:
        err(_loc(rule, "authentication"), f"{name}: has unknown authentication mode '{auth}'")
    elif auth == "clear_text":
        if rule.auth_query is not None and rule.auth_pam_service is not None:
            err(loc, f"{name}: auth query and pam service auth method cannot be used simultaneously")
        if (rule.password is None and rule.auth_query is None and not rule.enable_mdb_iamproxy_auth
                and rule.auth_pam_service is None and rule.auth_module is None
                and rule.ldap_endpoint_name is None):
            err(loc, f"{name}: password is not set")
    elif auth in ("md5", "scram-sha-256"):
        if rule.password is None and rule.auth_query is None:
            err(loc, f"{name}: password is not set")
    if rule.auth_query is not None:
        if rule.auth_query_user is None:
            err(_loc(rule, "auth_query"), f"{name}: auth_query_user is not set")
        if rule.auth_query_db is None:
            err(_loc(rule, "auth_query"), f"{name}: auth_query_db is not set")
    if rule.group_name is not None:
        for kw in ("group_query", "group_query_user", "group_query_db"):
            if getattr(rule, kw) is None:
                err(loc, f"{name}: {kw} is not set")
    if rule.ldap_endpoint_name is not None and \
            rule.ldap_endpoint_name not in config.ldap_endpoints:
        err(_loc(rule, "ldap_endpoint_name"),
            f"{name}: unknown ldap endpoint '{rule.ldap_endpoint_name}'")


def _autogenerate_internal_default(config: Config, warn) -> None:
    """Odyssey od_rules_autogenerate_defaults: an internal default.default rule for auth_query."""
    def exists(db, db_default, user, user_default, ar, ct, internal):
        key = (db, db_default, user, user_default, "" if ar.is_default else ar.string_value, ct)
        return any(r.key() == key and r.is_internal == internal for r in config.rules)

    need = any(r.auth_query is not None and not exists(
        r.db_name, r.db_is_default, r.user_name, r.user_is_default, r.address_range, r.conn_type,
        True) for r in config.rules)
    default_ar = AddressRange.default()
    if not need or exists(C.DEFAULT_DB, True, C.DEFAULT_USER, True, default_ar, "default", True):
        return
    default_rule = next((r for r in config.rules if r.key() == (
        C.DEFAULT_DB, True, C.DEFAULT_USER, True, "", "default") and not r.is_internal), None)
    if default_rule is None or default_rule.storage is None or \
            default_rule.storage_password is None:
        return
    rule = Rule(db_name=C.DEFAULT_DB, user_name=C.DEFAULT_USER, authentication="none",
                pool="transaction", pool_routing="internal", pool_size=0,
                password_passthrough=True, storage=default_rule.storage,
                storage_name=default_rule.storage_name,
                storage_password=default_rule.storage_password,
                location=default_rule.location,
                order=max((r.order for r in config.rules), default=0) + 1, auto_generated=True)
    config.rules.append(rule)
    warn(default_rule.location, "default internal rule auto-generated")
