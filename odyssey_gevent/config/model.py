"""The config model: dataclasses and constants (mirrors Odyssey sources/config.h, rules.h).

Plain typed dataclasses the rest of the pooler reads.  Field names are the config keywords, so
``config.workers``, ``listen.port``, ``rule.pool_size`` ... mean what the Odyssey docs say.  Defaults
are the ones of released Odyssey 1.5 (``od_config_init`` in config.c, ``od_rules_add``,
``od_rule_pool_alloc`` in rules.c); ``config_common.h`` gives the enumerations.

Built by :func:`odyssey_gevent.config.reader.load`; validated by
:mod:`odyssey_gevent.config.validate`; written back by :mod:`odyssey_gevent.config.dump`.  This
module imports nothing else of the package, opens no files and no sockets.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

# --------------------------------------------------------------------------------------------
# Errors and source locations


class ConfigError(Exception):
    """A config that cannot be loaded.

    ``errors`` are ``file:line:col: message`` strings (a hint goes on its own line, indented by
    two spaces: ``  hint: did you mean 'x'?``).  ``str(err)`` prints every error, one a line.
    """

    def __init__(self, errors, warnings=None):
        if isinstance(errors, str):
            errors = [errors]
        self.errors: list[str] = list(errors)
        self.warnings: list[str] = list(warnings or [])
        super().__init__("\n".join(self.errors))

    def __str__(self) -> str:
        return "\n".join(self.errors)


@dataclass(frozen=True)
class Location:
    """Where a keyword/block came from: 1-based line and column."""

    file: str = "<config>"
    line: int = 0
    col: int = 0

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


NOWHERE = Location()

# --------------------------------------------------------------------------------------------
# Enumerations (the strings the config accepts)

POOL_MODES = ("session", "transaction", "statement")
AUTH_MODES = ("none", "block", "clear_text", "md5", "scram-sha-256", "cert", "external")
ROLES = ("admin", "stat", "notallow")
STORAGE_TYPES = ("remote", "local")
POOL_ROUTINGS = ("client_visible", "internal")
TLS_MODES = ("disable", "allow", "prefer", "require", "verify_ca", "verify_full")
TARGET_SESSION_ATTRS = ("read-write", "read-only", "any", "prefer-standby", "standby", "primary",
                        "prefer-replica", "replica")
CONN_TYPES = ("default", "host", "hostssl", "hostnossl", "local")
BALANCING_METHODS = ("roundrobin", "rr", "leastconn")
QUERY_PARSING_MODES = ("disabled", "minimal")

# od_reset smart discard script (reference 3.2)
SMART_DISCARD_QUERY = ("SET SESSION AUTHORIZATION DEFAULT; RESET ALL; CLOSE ALL; UNLISTEN *; "
                       "SELECT pg_advisory_unlock_all(); DISCARD PLANS; DISCARD SEQUENCES; "
                       "DISCARD TEMP;")
DISCARD_ALL_QUERY = "DISCARD ALL"

DEFAULT_DB = "default_db"
DEFAULT_USER = "default_user"
DEFAULT_LISTEN_PORT = 6432


def auto_workers() -> int:
    """``workers "auto"``: (ncpu + 1) // 2, at least 1."""
    ncpu = os.cpu_count() or 1
    return max(1, (ncpu + 1) // 2)



# --------------------------------------------------------------------------------------------
# address selectors of rules (address.c)

_HOSTNAME_RE = re.compile(
    r"^(\.?(([a-zA-Z]|[a-zA-Z][a-zA-Z0-9\-]*[a-zA-Z0-9])\.)*"
    r"([A-Za-z]|[A-Za-z][A-Za-z0-9\-]*[A-Za-z0-9]))$")


@dataclass(frozen=True)
class AddressRange:
    """A rule's address selector: default/all, an IPv4/IPv6 network, or a hostname.

    ``string_value`` is the text as written ("" for default).  A hostname starting with '.'
    matches by suffix.  Hostname matching needs a reverse-DNS callable (see ``matches``).
    """

    string_value: str = ""
    is_default: bool = True
    is_hostname: bool = False
    network: Optional[Union[ipaddress.IPv4Network, ipaddress.IPv6Network]] = None
    # C Odyssey compares (client & mask) with the address as written, so "10.0.0.1/8" (host
    # bits set) matches no client at all.  We keep that and warn at load time.
    host_bits_set: bool = False

    @classmethod
    def default(cls) -> "AddressRange":
        return cls()

    @classmethod
    def parse(cls, text: str) -> "AddressRange":
        """Parse a quoted selector.  Raises ValueError with Odyssey's messages."""
        if text in ("all", "default"):
            return cls(string_value=text, is_default=True)
        addr, slash, prefix = text.partition("/")
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            ip = None
        if ip is None:
            if not slash and _HOSTNAME_RE.match(text):
                return cls(string_value=text, is_default=False, is_hostname=True)
            raise ValueError(f"invalid address or hostname '{text}'")
        if not slash:
            raise ValueError(f"expected network mask in '{text}'")
        if not prefix.isdigit() or int(prefix) > ip.max_prefixlen:
            raise ValueError(f"invalid network prefix length in '{text}'")
        net = ipaddress.ip_network(f"{addr}/{int(prefix)}", strict=False)
        return cls(string_value=text, is_default=False, network=net,
                   host_bits_set=net.network_address != ip)

    def matches(self, client_addr, reverse_dns: Optional[Callable[[str], Optional[str]]] = None
                ) -> bool:
        """Does a client address (str/ip_address/None for unix sockets) match this selector?"""
        if self.is_default:
            return True
        if client_addr is None or client_addr == "":
            return False
        if self.is_hostname:
            if reverse_dns is None:
                return False
            try:
                name = reverse_dns(str(client_addr))
            except Exception:
                return False
            if not name:
                return False
            name = name.rstrip(".").lower()
            want = self.string_value.lower()
            if want.startswith("."):
                return name.endswith(want)
            return name == want
        try:
            ip = client_addr if isinstance(client_addr, (ipaddress.IPv4Address,
                                                         ipaddress.IPv6Address)) \
                else ipaddress.ip_address(str(client_addr).split("%", 1)[0])
        except ValueError:
            return False
        net = self.network
        if self.host_bits_set:
            return False
        if ip.version != net.version:
            mapped = getattr(ip, "ipv4_mapped", None)
            if mapped is not None and net.version == 4:
                ip = mapped
            else:
                return False
        return ip in net

    def __str__(self) -> str:
        return self.string_value

# --------------------------------------------------------------------------------------------
# listen


@dataclass
class Listen:
    host: Optional[str] = None            # None: unix socket in unix_socket_dir; "*": all addresses
    port: int = DEFAULT_LISTEN_PORT
    backlog: int = 128
    tls: str = "disable"
    tls_ca_file: Optional[str] = None
    tls_key_file: Optional[str] = None
    tls_cert_file: Optional[str] = None
    tls_protocols: Optional[str] = None
    client_login_timeout: int = 15000     # ms
    target_session_attrs: Optional[str] = None
    balancing_method: Optional[str] = None
    catchup_timeout: int = 0
    storage: list[str] = field(default_factory=list)   # fallback storage names, in order
    compression: bool = False             # deprecated, ignored
    location: Location = NOWHERE
    locations: dict = field(default_factory=dict, repr=False, compare=False)  # keyword -> Location

    @property
    def is_unix(self) -> bool:
        return self.host is None


# --------------------------------------------------------------------------------------------
# storage


@dataclass
class Endpoint:
    """One storage host: ``[tcp://|unix://](host|[host])[:port][:az]``."""

    host: str
    port: int
    availability_zone: Optional[str] = None
    address_type: str = "tcp"             # "tcp" or "unix"

    @property
    def is_unix(self) -> bool:
        return self.address_type == "unix" or self.host.startswith("/")

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass
class Balancing:
    method: str = "roundrobin"
    az_aware: bool = True
    show_notice_messages: bool = False


@dataclass
class Watchdog:
    """``watchdog { ... }`` inside a storage: an internal rule ``watchdog_int.watchdog_int``."""

    rule: "Rule"
    watchdog_lag_query: Optional[str] = None
    watchdog_lag_interval: int = 0
    location: Location = NOWHERE


@dataclass
class Storage:
    name: str
    type: Optional[str] = None            # "remote" | "local"; required
    host: Optional[str] = None            # raw host string as written
    port: int = 0                         # no implicit 5432 (reference 1.5)
    endpoints: list[Endpoint] = field(default_factory=list)
    tls: str = "disable"
    tls_ca_file: Optional[str] = None
    tls_key_file: Optional[str] = None
    tls_cert_file: Optional[str] = None
    tls_protocols: Optional[str] = None
    endpoints_status_poll_interval: int = 1000   # ms
    server_max_routing: int = 0           # 0 -> workers (see effective_server_max_routing)
    watchdog: Optional[Watchdog] = None
    balancing: Balancing = field(default_factory=Balancing)
    location: Location = NOWHERE
    locations: dict = field(default_factory=dict, repr=False, compare=False)  # keyword -> Location

    @property
    def is_local(self) -> bool:
        return self.type == "local"

    @property
    def is_remote(self) -> bool:
        return self.type == "remote"


# --------------------------------------------------------------------------------------------
# shared_pool, ldap_endpoint


@dataclass
class SharedPool:
    name: str
    pool_size: int = 0
    location: Location = NOWHERE


@dataclass
class LdapEndpoint:
    name: str
    ldapserver: Optional[str] = None
    ldapport: int = 389
    ldapprefix: Optional[str] = None
    ldapsuffix: Optional[str] = None
    ldapbasedn: Optional[str] = None
    ldapbinddn: Optional[str] = None
    ldapbindpasswd: Optional[str] = None
    ldapsearchattribute: Optional[str] = None
    ldapsearchfilter: Optional[str] = None
    ldapscheme: Optional[str] = None
    ldapscope: Optional[str] = None
    ldapurl: Optional[str] = None
    location: Location = NOWHERE


@dataclass
class LdapStorageCredentials:
    name: str
    ldap_storage_username: Optional[str] = None
    ldap_storage_password: Optional[str] = None
    location: Location = NOWHERE


# --------------------------------------------------------------------------------------------
# rules (database/user/group route items)


@dataclass
class Rule:
    # identity (selector)
    db_name: str = DEFAULT_DB
    user_name: str = DEFAULT_USER
    db_is_default: bool = True
    user_is_default: bool = True
    address_range: AddressRange = field(default_factory=AddressRange)
    conn_type: str = "default"            # default | host | hostssl | hostnossl | local

    # authentication
    authentication: Optional[str] = None  # required
    password: Optional[str] = None
    auth_common_name: list[str] = field(default_factory=list)
    auth_common_name_default: bool = False
    auth_query: Optional[str] = None
    auth_query_db: Optional[str] = None
    auth_query_user: Optional[str] = None
    auth_pam_service: Optional[str] = None
    auth_module: Optional[str] = None
    enable_mdb_iamproxy_auth: bool = False
    mdb_iamproxy_socket_path: Optional[str] = None
    password_passthrough: bool = False
    role: Optional[str] = None            # admin | stat | notallow (local storage: forced to stat)

    # storage
    storage: Optional[Storage] = None     # resolved Storage
    storage_name: Optional[str] = None
    storage_db: Optional[str] = None
    storage_user: Optional[str] = None
    storage_password: Optional[str] = None

    # pool
    pool: Optional[str] = None            # required: session | transaction | statement
    pool_routing: str = "client_visible"
    pool_size: int = 0
    min_pool_size: int = 0
    pool_timeout: int = 0
    pool_ttl: int = 0
    pool_discard: bool = True
    pool_smart_discard: bool = False
    pool_discard_query: Optional[str] = None
    pool_cancel: bool = True
    pool_rollback: bool = True
    pool_reset_timeout_ms: int = 1000
    pool_reserve_prepared_statement: bool = True
    pool_client_idle_timeout: int = 0
    pool_idle_in_transaction_timeout: int = 0
    # ours: ms a client may hold a server silent in the middle of a request (0 = no limit)
    pool_idle_in_request_timeout_ms: int = 60000
    pool_notice_after_waiting_ms: int = -1  # -1 disabled
    pool_attach_check: bool = True
    pool_acquire_fail_fast: bool = False
    pool_pin_on_listen: bool = False
    shared_pool: Optional[str] = None

    # client
    client_max: Optional[int] = None      # None: unlimited
    client_fwd_error: bool = False
    client_show_id: bool = True
    application_name_add_host: bool = False
    maintain_params: bool = True
    reserve_session_server_connection: bool = True
    server_lifetime: int = 3600           # seconds
    server_drop_on_cached_plan_error: bool = True
    log_debug: bool = False
    log_query: bool = False
    quantiles: Optional[list[float]] = None
    target_session_attrs: Optional[str] = None
    catchup_timeout: int = 0
    catchup_checks: int = 0               # deprecated
    keepalive: int = 0
    keepalive_keep_interval: int = 0
    keepalive_probes: int = 0
    keepalive_usr_timeout: int = 0
    options: dict[str, str] = field(default_factory=dict)
    backend_startup_options: dict[str, str] = field(default_factory=dict)

    # ldap
    ldap_endpoint_name: Optional[str] = None
    ldap_storage_credentials_attr: Optional[str] = None
    ldap_storage_credentials: dict[str, LdapStorageCredentials] = field(default_factory=dict)

    # group (only inside `group "g" { }`)
    group_name: Optional[str] = None
    group_query: Optional[str] = None
    group_query_user: Optional[str] = None
    group_query_db: Optional[str] = None

    # watchdog (only inside `watchdog { }`)
    watchdog_lag_query: Optional[str] = None
    watchdog_lag_interval: int = 0

    # deprecated, parsed and ignored
    ldap_pool_size: int = 0
    ldap_pool_timeout: int = 0
    ldap_pool_ttl: int = 0

    # bookkeeping
    order: int = 0                        # file order (sequential_routing)
    location: Location = NOWHERE
    auto_generated: bool = False          # e.g. the internal default.default rule for auth_query
    locations: dict = field(default_factory=dict, repr=False, compare=False)  # keyword -> Location

    # -- identity ---------------------------------------------------------------------------
    @property
    def is_internal(self) -> bool:
        return self.pool_routing == "internal"

    @property
    def address_string(self) -> str:
        return self.address_range.string_value

    @property
    def name(self) -> str:
        """``db.user addr`` as Odyssey prints it in rule errors."""
        return f"{self.db_name}.{self.user_name} {self.address_string}".rstrip()

    def key(self) -> tuple:
        """(db, user, address selector, conn type): two rules with the same key are a redefinition."""
        return (self.db_name, self.db_is_default, self.user_name, self.user_is_default,
                "" if self.address_range.is_default else self.address_range.string_value,
                self.conn_type)

    def __hash__(self) -> int:
        return id(self)

    def __eq__(self, other) -> bool:
        return self is other

    # -- derived pool behaviour (rules.c od_rules_validate / od_rule_pool settings) ---------
    def effective_reserve_prepared_statement(self) -> bool:
        """pool_reserve_prepared_statement, auto-off in session pooling."""
        return bool(self.pool_reserve_prepared_statement) and self.pool != "session"

    def effective_pool_discard(self) -> bool:
        """pool_discard after the prepared-statement rewrite (yes + pstmt -> smart discard)."""
        return bool(self.pool_discard) and not self.effective_reserve_prepared_statement()

    def effective_smart_discard(self) -> bool:
        return bool(self.pool_smart_discard) or (
            bool(self.pool_discard) and self.effective_reserve_prepared_statement())

    def effective_reset(self) -> Optional[str]:
        """The SQL run on every server release after ROLLBACK, or None (od_reset step 5).

        ``DISCARD ALL`` for pool_discard, the smart-discard script for pool_smart_discard (or for
        pool_discard with prepared statements reserved), else pool_discard_query, else nothing.
        """
        if self.effective_pool_discard():
            return DISCARD_ALL_QUERY
        if self.effective_smart_discard():
            return SMART_DISCARD_QUERY
        if self.pool_discard_query:
            return self.pool_discard_query
        return None

    def effective_role(self) -> Optional[str]:
        if self.role is None and self.storage is not None and self.storage.is_local:
            return "stat"
        return self.role


ROUTE_ITEM_FIELDS = frozenset(f.name for f in dataclasses.fields(Rule))


# --------------------------------------------------------------------------------------------
# global sub-blocks


@dataclass
class ConnDropOptions:
    drop_enabled: bool = True
    rate: int = 1
    interval_ms: int = 1000
    location: Location = NOWHERE


@dataclass
class SoftOomDrop:
    enabled: bool = False
    signal: str = "SIGTERM"
    signum: int = 15
    max_rate: int = 3


@dataclass
class SoftOom:
    enabled: bool = False
    limit: int = 0                        # bytes
    process: Optional[str] = None
    check_interval_ms: int = 1000
    drop: SoftOomDrop = field(default_factory=SoftOomDrop)
    location: Location = NOWHERE


@dataclass
class QueryParsing:
    mode: str = "disabled"
    mem_limit: int = 1024 * 1024
    location: Location = NOWHERE


# --------------------------------------------------------------------------------------------
# the whole config


@dataclass
class Config:
    path: Optional[str] = None

    # process
    daemonize: bool = False
    pid_file: Optional[str] = None
    priority: int = 0                     # the process nice value set at start (instance.set_priority)
    locks_dir: Optional[str] = None       # no-op
    external_auth_socket_path: Optional[str] = None
    availability_zone: Optional[str] = None
    enable_online_restart: bool = True
    bindwith_reuseport: bool = True
    graceful_die_on_errors: bool = False  # deprecated
    graceful_shutdown_timeout_ms: int = 30000
    max_sigterms_to_die: int = 3
    enable_host_watcher: bool = False
    hba_file: Optional[str] = None
    hba_rules: Optional[list] = None      # hba.HbaRule list read from hba_file
    sequential_routing: bool = False
    virtual_processing: bool = False
    virtual_transaction: bool = True
    smart_search_path_enquoting: bool = False
    group_checker_interval: int = 7000    # ms

    # logging
    log_format: Optional[str] = None      # required
    log_file: Optional[str] = None
    log_to_stdout: bool = True
    log_debug: bool = False
    log_config: bool = False
    log_session: bool = True
    log_query: bool = False
    log_stats: bool = True
    stats_interval: int = 3
    log_syslog: bool = False
    log_syslog_ident: Optional[str] = None
    log_syslog_facility: Optional[str] = None
    log_async: bool = True                # no-op
    log_queue_depth: int = 30000          # no-op
    log_general_stats_prom: bool = False
    log_route_stats_prom: bool = False
    promhttp_server_port: Optional[int] = None

    # sockets
    unix_socket_dir: Optional[str] = None
    unix_socket_mode: Optional[str] = None   # octal string as written, e.g. "0644"
    nodelay: bool = True
    disable_nolinger: bool = False
    keepalive: int = 15
    keepalive_keep_interval: int = 5
    keepalive_probes: int = 3
    keepalive_usr_timeout: int = 0

    # limits and timeouts
    client_max: Optional[int] = None      # None: unlimited
    client_max_routing: int = 0           # 0 -> 64 * workers (effective_client_max_routing)
    server_login_retry: int = 1
    backend_connect_timeout_ms: int = 30000
    cancel_timeout_ms: int = 5000         # released 1.5 default (HEAD: 1000)
    auth_query_cache_ttl_ms: int = 10000  # ours: how long an auth_query secret is reused (<= 0: never)
    cancel_queue_timeout_ms: int = -1
    cancel_max_inflight: int = -1
    dns_cache_ttl: int = 30000

    # threads / C internals (accepted, no-ops here except workers)
    workers: int = 1
    processes: int = 1      # ours: pooler processes sharing the ports (SO_REUSEPORT), see supervisor.py
    resolvers: int = 1
    readahead: int = 8192
    cache_coroutine: int = 256
    cache_msg_gc_size: int = 0
    coroutine_stack_size: int = 4
    system_coroutine_stack_size: int = 32
    cpu_affinity: Optional[str] = None
    # deprecated
    pipeline: int = 0
    cache: int = 0
    cache_chunk: int = 0
    packet_read_size: int = 0
    packet_write_queue: int = 0

    # blocks
    listen: list[Listen] = field(default_factory=list)
    storages: dict[str, Storage] = field(default_factory=dict)
    rules: list[Rule] = field(default_factory=list)
    shared_pools: dict[str, SharedPool] = field(default_factory=dict)
    ldap_endpoints: dict[str, LdapEndpoint] = field(default_factory=dict)
    conn_drop_options: ConnDropOptions = field(default_factory=ConnDropOptions)
    soft_oom: SoftOom = field(default_factory=SoftOom)
    query_parsing: QueryParsing = field(default_factory=QueryParsing)
    modules: list[str] = field(default_factory=list)   # load_module paths (only python:<module> is used)

    # diagnostics
    warnings: list[str] = field(default_factory=list)   # "file:line:col: message"
    files: list[str] = field(default_factory=list)      # every file read (top + includes)
    locations: dict[str, Location] = field(default_factory=dict)  # global keyword -> where set

    # -- derived ----------------------------------------------------------------------------
    @property
    def effective_client_max_routing(self) -> int:
        return self.client_max_routing or 64 * self.workers

    @property
    def effective_keepalive_usr_timeout(self) -> int:
        """Negative keepalive_usr_timeout: compute it from the other three (config.c)."""
        if self.keepalive_usr_timeout < 0:
            return 1000 * (self.keepalive + self.keepalive_keep_interval * self.keepalive_probes) - 500
        return self.keepalive_usr_timeout

    @property
    def unix_socket_mode_int(self) -> Optional[int]:
        if self.unix_socket_mode is None:
            return None
        try:
            return int(self.unix_socket_mode, 8)
        except ValueError:
            return None

    def storage_server_max_routing(self, storage: Storage) -> int:
        return storage.server_max_routing or self.workers

    def client_rules(self) -> list[Rule]:
        return [r for r in self.rules if not r.is_internal]

    def internal_rules(self) -> list[Rule]:
        return [r for r in self.rules if r.is_internal]
