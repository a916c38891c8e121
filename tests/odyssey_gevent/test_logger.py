"""The log: log_format compilation and escapes, per-line values, tskv, JSON lines, log_debug,
and reopening a moved file for logrotate (reference: log_format escapes; Odyssey logger.c)."""
from __future__ import annotations

import json
import os
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from odyssey_gevent.client import Client
from odyssey_gevent.logger import DEFAULT_FORMAT, Logger, compile_format
from odyssey_gevent.server import Server

pytestmark = pytest.mark.timeout(10)


def render(fmt, client=None, server=None, message="msg", level="info", context="ctx"):
    return Logger(fmt, to_stdout=False).format(level, context, client, server, message)


def a_client():
    c = Client(None, conn_type="host", peer=("192.0.2.7", 54321))
    c.user, c.database = "alice", "shop"
    return c


def a_server():
    s = Server(None)
    s.endpoint_host = "pg-1.example"
    return s


# ----------------------------------------------------------------------------------------------
# compile_format

@pytest.mark.parametrize("fmt, parts", [
    ("%%", ["%"]),
    ("a%%b", ["a%b"]),
    ("100%% %m", ["100% ", ("m",)]),
    ("%m\\n", [("m",), "\n"]),                 # backslash-n in the config text: a newline
    ("\\t%l\\r", ["\t", ("l",), "\r"]),
    ("a\\\\nb", ["a\\nb"]),                   # an escaped backslash, then a plain n
    ("a\\qb", ["a\\qb"]),                     # unknown backslash escape kept as is
    ("%q", [("q",)]),
    ("x%", ["x%"]),                          # a trailing lone percent is literal
    ("", []),
    ("%p %t %l [%i %s] (%c) %m\\n", [("p",), " ", ("t",), " ", ("l",), " [", ("i",), " ", ("s",), "] (",
                                     ("c",), ") ", ("m",), "\n"]),
])
def test_compile_format(fmt, parts):
    assert compile_format(fmt) == parts


def test_unknown_escape_kept_in_output():
    assert render("%q|%m|%z\\n") == "%q|msg|%z\n"


@given(st.text(alphabet="ab%\\ntmq", max_size=20))
@settings(max_examples=200, deadline=None)
def test_compile_never_fails_and_literals_roundtrip(fmt):
    parts = compile_format(fmt)
    for p in parts:
        assert isinstance(p, str) or (isinstance(p, tuple) and len(p) == 1 and len(p[0]) == 1)
    line = Logger(fmt, to_stdout=False).format("info", "c", None, None, "M")
    assert isinstance(line, str)


# ----------------------------------------------------------------------------------------------
# values

def test_ids_print_none_without_client_or_server():
    assert render("%i %s %u %d %h %r %H %x") == "none none none none none none none none"


def test_client_values():
    c = a_client()
    assert render("%i|%u|%d|%h|%r", client=c) == f"{c.id}|alice|shop|192.0.2.7|54321"
    assert re.fullmatch(r"c[0-9a-f]{12}", c.id)


def test_client_without_user_or_peer():
    c = Client(None, conn_type="local")
    assert render("%u|%d|%h|%r", client=c) == "none|none|none|none"


def test_server_values():
    s = a_server()
    assert render("%s|%H", server=s) == f"{s.id}|pg-1.example"
    assert re.fullmatch(r"s[0-9a-f]{12}", s.id)


def test_level_context_message_pid_and_time():
    line = render("%p %l %c %m %t %e %n %T", message="hello world", level="error", context="router")
    pid, level, ctx, m1, m2, t, e, n, tid = line.split(" ")
    assert (int(pid), level, ctx, m1 + " " + m2) == (os.getpid(), "error", "router", "hello world")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", t)
    assert re.fullmatch(r"\d{3}", e) and n.isdigit() and re.fullmatch(r"[0-9a-f]+", tid)


def test_tskv_escaping():
    assert render("%M", message="a=b\tc\nd\re\\f") == "a\\=b\\tc\\nd\\re\\\\f"
    assert render("%m", message="a=b\tc") == "a=b\tc"


def test_default_format_ends_in_newline():
    line = render(DEFAULT_FORMAT, client=a_client(), message="x")
    assert line.endswith(") x\n") and line.count("\n") == 1


# ----------------------------------------------------------------------------------------------
# JSON

def test_json_lines():
    log = Logger("json", to_stdout=False)
    c, s = a_client(), a_server()
    rec = json.loads(log.format("info", "startup", c, s, 'he said "hi"\n'))
    assert set(rec) == {"timestamp", "pid", "tid", "level", "context", "message", "client", "server"}
    assert (rec["level"], rec["context"], rec["message"], rec["pid"]) == ("info", "startup", 'he said "hi"\n',
                                                                          os.getpid())
    assert rec["client"] == {"id": c.id, "ip": "192.0.2.7", "port": 54321, "user": "alice", "database": "shop"}
    assert rec["server"] == {"id": s.id}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", rec["timestamp"])
    bare = json.loads(log.format("error", "system", None, None, "x"))
    assert set(bare) == {"timestamp", "pid", "tid", "level", "context", "message"}


def test_json_line_is_one_line(tmp_path):
    path = tmp_path / "j.log"
    log = Logger("json", to_stdout=False, log_file=str(path))
    log.info("c", None, None, "multi\nline %s", "arg")
    log.error("c", None, None, "second")
    lines = path.read_text().splitlines()
    assert [json.loads(x)["message"] for x in lines] == ["multi\nline arg", "second"]
    log.file.close()


# ----------------------------------------------------------------------------------------------
# levels, files

def test_log_debug_off_suppresses_debug(tmp_path):
    path = tmp_path / "o.log"
    log = Logger("%l %m\\n", to_stdout=False, log_file=str(path), debug=False)
    log.debug("c", None, None, "hidden %d", 1)
    log.info("c", None, None, "shown %d", 2)
    log.configure("%l %m\\n", False, str(path), debug=True)
    log.debug("c", None, None, "now shown")
    log.warning("c", None, None, "w")
    log.fatal("c", None, None, "f")
    assert path.read_text() == "info shown 2\ndebug now shown\nwarning w\nfatal f\n"
    log.file.close()


def test_silent_suppresses_info_only(tmp_path):
    path = tmp_path / "s.log"
    log = Logger("%l %m\\n", to_stdout=False, log_file=str(path), silent=True)
    log.info("c", None, None, "quiet")
    log.error("c", None, None, "loud")
    assert path.read_text() == "error loud\n"
    log.file.close()


def test_message_without_args_is_not_formatted(tmp_path):
    path = tmp_path / "p.log"
    log = Logger("%m\\n", to_stdout=False, log_file=str(path))
    log.info("c", None, None, "100% done")
    assert path.read_text() == "100% done\n"
    log.file.close()


def test_stdout(capsys):
    log = Logger("%l:%m\\n", to_stdout=True)
    log.error("c", None, None, "to stdout")
    assert capsys.readouterr().out == "error:to stdout\n"


def test_reopen_after_move_writes_a_new_file(tmp_path):
    path = tmp_path / "odyssey.log"
    rotated = tmp_path / "odyssey.log.1"
    log = Logger("%m\\n", to_stdout=False, log_file=str(path))
    log.info("c", None, None, "before")
    os.rename(path, rotated)
    log.info("c", None, None, "still old")       # the open file follows the rename
    log.reopen()
    log.info("c", None, None, "after")
    assert rotated.read_text() == "before\nstill old\n"
    assert path.read_text() == "after\n"
    log.file.close()


def test_configure_switches_file(tmp_path):
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    log = Logger("%m\\n", to_stdout=False, log_file=str(a))
    log.info("c", None, None, "1")
    log.configure("[%m]\\n", False, str(b), debug=False)
    log.info("c", None, None, "2")
    assert a.read_text() == "1\n" and b.read_text() == "[2]\n"
    log.configure(None, False, None, debug=False)
    assert log.file is None
    log.info("c", None, None, "nowhere")
