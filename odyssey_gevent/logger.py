"""The log, in Odyssey's log_format (mirrors Odyssey sources/logger.c).

`log_format` is compiled once into parts; `%` escapes are expanded per line:
%n unix time, %t UTC ISO-8601, %e milliseconds, %p pid, %T thread id (hex), %i client id,
%s server id, %x external id, %u user, %d database, %c context, %l level, %m message,
%M message with tskv escaping, %h client IP, %r client port, %H storage host, %% a percent.
A missing value prints `none`. The literal format "json" writes one JSON object per line.
Backslash escapes \\n \\t \\r \\\\ in the format are expanded here (the config reader keeps them).
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time

DEFAULT_FORMAT = "%p %t %l [%i %s] (%c) %m\\n"

_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}


def _unescape(fmt: str) -> str:
    out, i = [], 0
    while i < len(fmt):
        ch = fmt[i]
        if ch == "\\" and i + 1 < len(fmt) and fmt[i + 1] in _ESCAPES:
            out.append(_ESCAPES[fmt[i + 1]])
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def compile_format(fmt: str) -> list:
    """Split a log_format into literal strings and one-letter escape codes (as 1-tuples)."""
    fmt = _unescape(fmt)
    parts, lit, i = [], [], 0
    while i < len(fmt):
        ch = fmt[i]
        if ch == "%" and i + 1 < len(fmt):
            code = fmt[i + 1]
            if code == "%":
                lit.append("%")
            else:
                if lit:
                    parts.append("".join(lit))
                    lit = []
                parts.append((code,))
            i += 2
            continue
        lit.append(ch)
        i += 1
    if lit:
        parts.append("".join(lit))
    return parts


def _tskv(text: str) -> str:
    return (text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
            .replace("\r", "\\r").replace("=", "\\="))


class Logger:
    LEVELS = ("debug", "info", "warning", "error", "fatal")

    def __init__(self, log_format: str = DEFAULT_FORMAT, to_stdout: bool = True, log_file: str | None = None,
                 debug: bool = False, silent: bool = False):
        self.lock = threading.Lock()
        self.pid = os.getpid()
        self.log_file = log_file
        self.file = None
        self.configure(log_format, to_stdout, log_file, debug, silent)

    def configure(self, log_format: str | None, to_stdout: bool, log_file: str | None, debug: bool,
                  silent: bool = False) -> None:
        fmt = log_format or DEFAULT_FORMAT
        self.json = fmt == "json"
        self.parts = None if self.json else compile_format(fmt)
        self.to_stdout = to_stdout
        self.debug_enabled = debug
        self.silent = silent
        if log_file != self.log_file or (log_file and self.file is None):
            self.log_file = log_file
            self.reopen()

    def reopen(self) -> None:
        """Reopen log_file (SIGUSR1, for logrotate)."""
        with self.lock:
            if self.file is not None:
                self.file.close()
                self.file = None
            if self.log_file:
                self.file = open(self.log_file, "a", buffering=1, encoding="utf-8", errors="replace")

    # -- rendering ---------------------------------------------------------------------------
    def _value(self, code: str, level: str, context: str, client, server, message: str, now: float) -> str:
        if code == "m":
            return message
        if code == "l":
            return level
        if code == "c":
            return context
        if code == "p":
            return str(self.pid)
        if code == "t":
            return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
        if code == "e":
            return "%03d" % int((now % 1) * 1000)
        if code == "n":
            return str(int(now))
        if code == "T":
            return "%x" % threading.get_ident()
        if code == "M":
            return _tskv(message)
        if code == "i":
            return getattr(client, "id", None) or "none"
        if code == "s":
            return getattr(server, "id", None) or "none"
        if code == "u":
            return getattr(client, "user", None) or "none" if client is not None else "none"
        if code == "d":
            return getattr(client, "database", None) or "none" if client is not None else "none"
        if code == "h":
            return getattr(client, "peer_host", None) or "none" if client is not None else "none"
        if code == "r":
            port = getattr(client, "peer_port", None) if client is not None else None
            return str(port) if port is not None else "none"
        if code == "H":
            return getattr(server, "endpoint_host", None) or "none" if server is not None else "none"
        if code == "x":
            return "none"
        return "%" + code

    def format(self, level: str, context: str, client, server, message: str) -> str:
        now = time.time()
        if self.json:
            rec = {"timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)), "pid": self.pid,
                   "tid": "%x" % threading.get_ident(), "level": level, "context": context, "message": message}
            if client is not None:
                rec["client"] = {"id": client.id, "ip": getattr(client, "peer_host", None),
                                 "port": getattr(client, "peer_port", None),
                                 "user": getattr(client, "user", None), "database": getattr(client, "database", None)}
            if server is not None:
                rec["server"] = {"id": server.id}
            return json.dumps(rec) + "\n"
        out = []
        for part in self.parts:
            if part.__class__ is str:
                out.append(part)
            else:
                out.append(self._value(part[0], level, context, client, server, message, now))
        return "".join(out)

    def write(self, level: str, context: str, client, server, message: str) -> None:
        line = self.format(level, context, client, server, message)
        with self.lock:
            if self.to_stdout:
                try:
                    sys.stdout.write(line)
                    sys.stdout.flush()
                except (OSError, ValueError):
                    pass
            if self.file is not None:
                try:
                    self.file.write(line)
                except (OSError, ValueError):
                    pass

    # -- the calls the pooler makes -----------------------------------------------------------
    def debug(self, context: str, client, server, fmt: str, *args) -> None:
        if self.debug_enabled:
            self.write("debug", context, client, server, fmt % args if args else fmt)

    def info(self, context: str, client, server, fmt: str, *args) -> None:
        if not self.silent:
            self.write("info", context, client, server, fmt % args if args else fmt)

    def warning(self, context: str, client, server, fmt: str, *args) -> None:
        self.write("warning", context, client, server, fmt % args if args else fmt)

    def error(self, context: str, client, server, fmt: str, *args) -> None:
        self.write("error", context, client, server, fmt % args if args else fmt)

    def fatal(self, context: str, client, server, fmt: str, *args) -> None:
        self.write("fatal", context, client, server, fmt % args if args else fmt)
