"""The effective config as text, for log_config (mirrors od_config_print in sources/config.c).

And od_rules_print in sources/rules.c.  ``dump_config(config)`` writes every field back as
``keyword value`` using the tables of :mod:`odyssey_gevent.config.keywords`; loading the text
again gives the same model.  ``rule_signature(rule)`` is what makes a rule behave as it does, for
telling on reload whether a rule is unchanged.  Imports only the model and the keyword tables,
never the reader.
"""
from __future__ import annotations

from typing import Optional

from odyssey_gevent.config import keywords as K
from odyssey_gevent.config.model import Config, Rule


def _quote(s: str) -> str:
    return '"' + s.replace('"', '\\"') + '"'


def _fmt(value) -> Optional[str]:
    if value is None:
        return None
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return _quote(",".join(str(v) for v in value))
    return _quote(str(value))


def _emit(lines: list[str], indent: str, obj, schema: dict, skip=()) -> None:
    for kw, (kind, fieldname) in schema.items():
        if not fieldname or kw in skip or kind.startswith("dep_"):
            continue
        text = _fmt(getattr(obj, fieldname, None))
        if text is not None:
            lines.append(f"{indent}{kw} {text}")


def _emit_rule(lines: list[str], indent: str, rule: Rule) -> None:
    _emit(lines, indent, rule, K.ROUTE)
    if rule.role:
        lines.append(f"{indent}role {_quote(rule.role)}")
    if rule.client_max is not None:
        lines.append(f"{indent}client_max {rule.client_max}")
    if rule.pool_notice_after_waiting_ms >= 0:
        lines.append(f"{indent}pool_notice_after_waiting_ms {rule.pool_notice_after_waiting_ms}")
    if rule.auth_common_name_default:
        lines.append(f"{indent}auth_common_name default")
    for cn in rule.auth_common_name:
        lines.append(f"{indent}auth_common_name {_quote(cn)}")
    for block in ("options", "backend_startup_options"):
        items = getattr(rule, block)
        if items:
            lines.append(f"{indent}{block} {{")
            for k, v in items.items():
                lines.append(f"{indent}\t{_quote(k)} {_quote(v)}")
            lines.append(f"{indent}}}")
    for creds in rule.ldap_storage_credentials.values():
        lines.append(f"{indent}ldap_storage_credentials {_quote(creds.name)} {{")
        _emit(lines, indent + "\t", creds, K.LDAP_CREDS)
        lines.append(f"{indent}}}")
    if rule.group_name is not None:
        _emit(lines, indent, rule, {k: K.GROUP[k] for k in
                                    ("group_query", "group_query_user", "group_query_db")})


def rule_signature(rule: Rule) -> tuple:
    """Everything that makes a rule behave as it does, its storage included: on reload a rule
    with the same signature is the same rule (its routes and pools carry on)."""
    lines: list[str] = []
    _emit_rule(lines, "", rule)
    storage = rule.storage
    storage_lines: list[str] = []
    if storage is not None:
        _emit(storage_lines, "", storage, K.STORAGE)
    return (rule.key(), rule.pool_routing, rule.group_name, tuple(lines),
            storage.name if storage is not None else None, tuple(storage_lines))


def dump_config(config: Config) -> str:
    """Effective config as Odyssey-format text; loading it back gives the same model."""
    lines: list[str] = ["# effective configuration (odyssey-gevent)"]
    _emit(lines, "", config, K.ROOT, skip=("workers",))
    lines.append(f"workers {config.workers}")
    if config.client_max is not None:
        lines.append(f"client_max {config.client_max}")
    if config.hba_file is not None:
        lines.append(f"hba_file {_quote(config.hba_file)}")
    cd = config.conn_drop_options
    lines.append("conn_drop_options {")
    _emit(lines, "\t", cd, K.CONN_DROP)
    lines.append(f"\tinterval_ms {cd.interval_ms}")
    lines.append("}")
    if config.soft_oom.enabled:
        so = config.soft_oom
        lines.append("soft_oom {")
        _emit(lines, "\t", so, K.SOFT_OOM)
        if so.drop.enabled:
            lines.append(f"\tdrop {{\n\t\tsignal {_quote(so.drop.signal)}\n"
                         f"\t\tmax_rate {so.drop.max_rate}\n\t}}")
        lines.append("}")
    qp = config.query_parsing
    lines.append(f"query_parsing {{\n\tmode {qp.mode}\n\tmem_limit {qp.mem_limit}\n}}")
    for sp in config.shared_pools.values():
        lines.append(f"shared_pool {_quote(sp.name)} {{\n\tpool_size {sp.pool_size}\n}}")
    for ep in config.ldap_endpoints.values():
        lines.append(f"ldap_endpoint {_quote(ep.name)} {{")
        _emit(lines, "\t", ep, K.LDAP_ENDPOINT)
        lines.append("}")
    for listen in config.listen:
        lines.append("listen {")
        _emit(lines, "\t", listen, K.LISTEN)
        for name in listen.storage:
            lines.append(f"\tstorage {_quote(name)}")
        lines.append("}")
    for st in config.storages.values():
        lines.append(f"storage {_quote(st.name)} {{")
        _emit(lines, "\t", st, K.STORAGE)
        if st.host is not None:
            lines.append(f"\thost {_quote(st.host)}")
        lines.append(f"\tendpoints_status_poll_interval {st.endpoints_status_poll_interval}")
        b = st.balancing
        lines.append(f"\tbalancing {{\n\t\tmethod {_quote(b.method)} {{ az_aware "
                     f"{_fmt(b.az_aware)} }}\n\t\tshow_notice_messages "
                     f"{_fmt(b.show_notice_messages)}\n\t}}")
        if st.watchdog is not None:
            lines.append("\twatchdog {")
            _emit_rule(lines, "\t\t", st.watchdog.rule)
            _emit(lines, "\t\t", st.watchdog, {k: K.WATCHDOG[k] for k in
                                              ("watchdog_lag_query", "watchdog_lag_interval")})
            lines.append("\t}")
        lines.append("}")
    by_db: dict[tuple, list[Rule]] = {}
    for rule in config.rules:
        if rule.auto_generated or rule.db_name == "watchdog_int" and rule.is_internal and any(
                st.watchdog is not None and st.watchdog.rule is rule
                for st in config.storages.values()):
            continue
        by_db.setdefault((rule.db_name, rule.db_is_default), []).append(rule)
    for (db, is_default), rules in by_db.items():
        lines.append(f"database {'default' if is_default else _quote(db)} {{")
        for rule in rules:
            sel = []
            ar = rule.address_range
            if ar is not None and not ar.is_default:
                sel.append(_quote(ar.string_value))
            if rule.conn_type != "default":
                sel.append(rule.conn_type)
            if rule.group_name is not None:
                head = f"\tgroup {_quote(rule.group_name)}"
            else:
                head = f"\tuser {'default' if rule.user_is_default else _quote(rule.user_name)}"
            lines.append(" ".join([head] + sel) + " {")
            _emit_rule(lines, "\t\t", rule)
            lines.append("\t}")
        lines.append("}")
    return "\n".join(lines) + "\n"
