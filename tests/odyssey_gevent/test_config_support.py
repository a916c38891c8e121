"""Helpers shared by the config/rules/cli tests (no tests here)."""
from __future__ import annotations

import textwrap

from odyssey_gevent.config import reader

LOG_FORMAT = 'log_format "%p %t %l [%i %s] (%c) %m\\n"'


def make_config(globals_="", listen="", storage="", rule="", extra="", log_format=True,
                rule_head='database "db" {\n user "user" {'):
    """A minimal valid config with optional extra lines in each section."""
    parts = []
    if log_format:
        parts.append(LOG_FORMAT)
    parts.append(textwrap.dedent(globals_))
    parts.append('listen {\n host "127.0.0.1"\n port 6432\n%s\n}' % textwrap.dedent(listen))
    parts.append('storage "pg" {\n type "remote"\n host "127.0.0.1"\n port 5432\n%s\n}'
                 % textwrap.dedent(storage))
    parts.append('%s\n  authentication "none"\n  storage "pg"\n  pool "session"\n%s\n }\n}'
                 % (rule_head, textwrap.dedent(rule)))
    parts.append(textwrap.dedent(extra))
    return "\n".join(parts) + "\n"


def load_text(tmp_path, text, name="odyssey.conf", validate=True):
    path = tmp_path / name
    path.write_text(text)
    return reader.load(str(path), validate=validate)
