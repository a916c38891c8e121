"""The config package; re-exports the model (Odyssey sources/config.h, rules.h, storage.h).

Modules, each importing only modules listed above it (so there is no import circle):

    model.py          the dataclasses and constants (config.h, rules.h, storage.h)
    lexer.py          the tokenizer (parser.h)
    keywords.py       per block, which keyword sets which field (config_reader.c keyword lists)
    validate.py       startup checks (od_config_validate in config.c, od_rules_validate in rules.c)
    dump.py           the effective config as text (od_config_print, od_rules_print)
    reader_base.py    the parser's machinery: values, blocks, errors, includes (config_reader.c)
    reader_route.py   database / user / group blocks (od_config_reader_database, _route)
    reader_global.py  the top level and its other blocks: listen, storage, soft_oom, ...
    reader.py         the entry points: ``reader.load(path) -> Config``, ``reader.loads(text)``

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
