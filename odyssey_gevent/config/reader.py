"""Config file reader: load(path) -> Config (mirrors Odyssey sources/config_reader.c, 1.5).

``load(path) -> Config`` reads an Odyssey config file (and its includes), builds the model of
:mod:`odyssey_gevent.config.model` and validates it (:mod:`odyssey_gevent.config.validate`).  Any
problem raises :class:`~odyssey_gevent.config.model.ConfigError`; its ``errors`` are
``file:line:col: message`` strings.  Warnings (deprecated keywords, repeated options, ...) are kept
in ``config.warnings``.

Lexical rules are those of the released 1.5 parser, widened where HEAD's bison parser accepts more
(see docs/differences.md): keywords are case-insensitive, ``port`` in listen defaults to 6432, a
repeated option's last value wins (with a warning), strings may span lines and ``\\"`` inside a
string is a quote.

The parser is split by block: :mod:`~odyssey_gevent.config.lexer` (tokens),
:mod:`~odyssey_gevent.config.reader_base` (values, blocks, errors, includes),
:mod:`~odyssey_gevent.config.reader_global` (the top level, listen, storage, ...) and
:mod:`~odyssey_gevent.config.reader_route` (database, user, group); the keyword tables are in
:mod:`~odyssey_gevent.config.keywords`.  Writing a config back is
:func:`odyssey_gevent.config.dump.dump_config`.
"""
from __future__ import annotations

import os
from typing import Optional

from odyssey_gevent.config.lexer import tokenize
from odyssey_gevent.config.model import Config, ConfigError, Location
from odyssey_gevent.config.reader_base import MAX_INCLUDE_DEPTH, _Err, _Reader, _Stream
from odyssey_gevent.config.reader_global import ROOT_SCHEMA, parse_endpoints
from odyssey_gevent.config.validate import validate as validate_config

__all__ = ["load", "loads", "parse_endpoints", "MAX_INCLUDE_DEPTH", "ConfigError"]


def _parse(path: str, text: Optional[str] = None) -> tuple[Config, list[str]]:
    config = Config(path=path)
    r = _Reader(config, ROOT_SCHEMA)
    r._stack = []
    try:
        if text is None:
            r.parse_file(path, r._stack, None)
        else:
            config.files.append(path)
            r._stack.append(os.path.realpath(path))
            r.block(_Stream(tokenize(text, path)), ROOT_SCHEMA, config, "the top level",
                    root=True)
    except _Err as e:
        r.error(e.loc, e.msg, e.hint)
    except RecursionError:
        r.error(Location(path, 0, 0), "config is nested too deeply")
    except Exception as e:  # never a traceback for a bad config: report it as a config error
        r.error(Location(path, 0, 0), f"internal error while reading the config: {e!r}")
    return config, r.errors


def load(path, validate: bool = True) -> Config:
    """Read, parse and validate an Odyssey config file.  Raises ConfigError."""
    path = os.fspath(path)
    config, errors = _parse(path)
    return _finish(config, errors, validate)


def loads(text: str, path: str = "<string>", validate: bool = True) -> Config:
    """Like :func:`load` for config text (includes resolve against the process CWD)."""
    config, errors = _parse(path, text)
    return _finish(config, errors, validate)


def _finish(config: Config, errors: list[str], validate: bool) -> Config:
    if not errors and validate:
        try:
            errors = validate_config(config)
        except Exception as e:  # pragma: no cover - defensive, see _parse
            errors = [f"{config.path}:0:0: internal error while validating the config: {e!r}"]
    if errors:
        raise ConfigError(errors, config.warnings)
    return config
