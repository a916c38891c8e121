"""The config package: re-exports the model of Odyssey's sources/config.c (see model.py).

Modules:

    model.py     the dataclasses and constants (config.c, rules.h, storage.h); imports nothing here
    validate.py  startup checks (od_config_validate, od_rules_validate)
    reader.py    the parser and dump: ``reader.load(path) -> Config`` (config_reader.c)

Importing this package loads only the model: ``from odyssey_gevent.config import Rule`` is cheap,
the parser is ``from odyssey_gevent.config import reader``.
"""
from odyssey_gevent.config.model import (AUTH_MODES, BALANCING_METHODS, CONN_TYPES, DEFAULT_DB,
                                         DEFAULT_LISTEN_PORT, DEFAULT_USER, DISCARD_ALL_QUERY,
                                         NOWHERE, POOL_MODES, POOL_ROUTINGS, QUERY_PARSING_MODES,
                                         ROLES, ROUTE_ITEM_FIELDS, SMART_DISCARD_QUERY,
                                         STORAGE_TYPES, TARGET_SESSION_ATTRS, TLS_MODES,
                                         AddressRange, Balancing, Config, ConfigError,
                                         ConnDropOptions, Endpoint, LdapEndpoint,
                                         LdapStorageCredentials, Listen, Location, QueryParsing,
                                         Rule, SharedPool, SoftOom, SoftOomDrop, Storage,
                                         Watchdog, auto_workers)

__all__ = [
    "AUTH_MODES", "BALANCING_METHODS", "CONN_TYPES", "DEFAULT_DB", "DEFAULT_LISTEN_PORT",
    "DEFAULT_USER", "DISCARD_ALL_QUERY", "NOWHERE", "POOL_MODES", "POOL_ROUTINGS",
    "QUERY_PARSING_MODES", "ROLES", "ROUTE_ITEM_FIELDS", "SMART_DISCARD_QUERY", "STORAGE_TYPES",
    "TARGET_SESSION_ATTRS", "TLS_MODES", "AddressRange", "Balancing", "Config", "ConfigError",
    "ConnDropOptions", "Endpoint", "LdapEndpoint", "LdapStorageCredentials", "Listen", "Location",
    "QueryParsing", "Rule", "SharedPool", "SoftOom", "SoftOomDrop", "Storage", "Watchdog",
    "auto_workers",
]
