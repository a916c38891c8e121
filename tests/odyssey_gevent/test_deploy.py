"""maintain_params: which client parameters are replayed on a server, how values are quoted, and
the one SET query deploy() sends over a real socket pair (reference 3.5; Odyssey deploy.c)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
from gevent import socket as gsocket
from hypothesis import given, settings
from hypothesis import strategies as st

import machinarium as mm
from kiwi import be_write
from odyssey_gevent import deploy
from odyssey_gevent.client import Client
from odyssey_gevent.io import read_message
from odyssey_gevent.logger import Logger
from odyssey_gevent.server import Server
from odyssey_gevent.status import FrontendError

pytestmark = pytest.mark.timeout(10)


def test_quote_is_an_escape_string_literal():
    # E'...' reads the same whatever standard_conforming_strings the server was left with
    assert deploy.quote("") == "E''"
    assert deploy.quote("UTC") == "E'UTC'"
    assert deploy.quote("it's") == "E'it''s'"
    assert deploy.quote("''") == "E''''''"
    assert deploy.quote(r"a\b") == r"E'a\\b'"
    assert deploy.quote("\\'") == "E'\\\\'''"


def _read_escape_literal(q: str) -> str:
    """Undo quote() the way PostgreSQL reads an E'' literal: '' is a quote, two backslashes one."""
    assert q[:2] == "E'" and q[-1] == "'"
    inner, out, i = q[2:-1], [], 0
    while i < len(inner):
        if inner[i] in "'\\":
            assert inner[i + 1] == inner[i]
            i += 1
        out.append(inner[i])
        i += 1
    return "".join(out)


@given(st.text())
@settings(max_examples=200, deadline=None)
def test_quote_roundtrip(value):
    assert _read_escape_literal(deploy.quote(value)) == value


# server.params is keyed by lower-case name (what the relay and backend store)

def test_plan_is_case_insensitive_on_names():
    assert deploy.plan({"timezone": "UTC"}, {"timezone": "UTC"}) == []
    assert deploy.plan({"TimeZone": "UTC"}, {"timezone": "UTC"}) == []
    assert deploy.plan({"TIMEZONE": "UTC"}, {"timezone": "Europe/Oslo"}) == [("TimeZone", "UTC")]
    assert deploy.plan({"datestyle": "ISO, DMY"}, {}) == [("DateStyle", "ISO, DMY")]


def test_plan_values_compare_exactly():
    assert deploy.plan({"TimeZone": "utc"}, {"timezone": "UTC"}) == [("TimeZone", "utc")]


def test_plan_ignores_untracked_names():
    client = {"foo": "1", "lc_messages": "C", "application_name": "app", "client_encoding": "UTF8"}
    server = {"client_encoding": "UTF8", "server_version": "16"}
    assert deploy.plan(client, server) == [("application_name", "app")]


def test_plan_emits_only_differences_in_client_order():
    client = {"search_path": "a,b", "work_mem": "64MB", "statement_timeout": "0", "IntervalStyle": "iso_8601"}
    server = {"search_path": "a,b", "statement_timeout": "5s", "intervalstyle": "postgres"}
    assert deploy.plan(client, server) == [("work_mem", "64MB"), ("statement_timeout", "0"),
                                           ("IntervalStyle", "iso_8601")]


tracked = st.sampled_from(sorted(deploy.TRACKED.values()) + ["foo", "Bar", "lc_monetary"])
case = st.sampled_from([str.lower, str.upper, lambda s: s])


@given(st.dictionaries(tracked, st.text(max_size=5), max_size=8),
       st.dictionaries(tracked, st.text(max_size=5), max_size=8), case)
@settings(max_examples=100, deadline=None)
def test_plan_applied_makes_plan_empty(client_vars, server_params, recase):
    client_vars = {recase(k): v for k, v in client_vars.items()}
    server_params = {k.lower(): v for k, v in server_params.items()}
    changes = deploy.plan(client_vars, server_params)
    names = [n for n, _ in changes]
    assert len(names) == len(set(names))
    assert all(n.lower() in deploy.TRACKED and n == deploy.TRACKED[n.lower()] for n in names)
    applied = dict(server_params)
    applied.update((n.lower(), v) for n, v in changes)
    assert deploy.plan(client_vars, applied) == []


# ----------------------------------------------------------------------------------------------
# deploy() over a socket pair

def _instance():
    return SimpleNamespace(logger=Logger(to_stdout=False), config=SimpleNamespace(backend_connect_timeout_ms=2000))


def _server(io, params):
    s = Server(None)
    s.io = io
    s.params = dict(params)
    return s


def test_deploy_sends_one_set_query_and_records_params(in_machine):
    def body():
        a, b = gsocket.socketpair()
        pooler, pg = mm.Io(a), mm.Io(b)
        try:
            server = _server(pooler, {"timezone": "UTC", "application_name": ""})
            client = Client(None)
            client.vars = {"timezone": "UTC", "application_name": "it's me", "foo": "x", "search_path": "public"}
            got = {}

            def backend():
                mtype, payload = read_message(pg, 2000)
                got["q"] = (chr(mtype), bytes(payload))
                pg.write(be_write.command_complete("SET") + be_write.parameter_status("application_name", "it's me")
                         + be_write.command_complete("SET") + be_write.ready_for_query(b"I"))

            co = mm.Coroutine(backend)
            deploy.deploy(_instance(), client, server)
            co.join(2000)
            assert got["q"] == ("Q", b"SET application_name=E'it''s me';SET search_path=E'public';\0")
            assert server.params["application_name"] == "it's me" and server.params["search_path"] == "public"
            assert server.synchronized and server.tx_status == b"I"
            # nothing to change: no query at all
            deploy.deploy(_instance(), client, server)
            with pytest.raises(mm.TimedOut):
                pg.read(1, 20)
        finally:
            pooler.close(), pg.close()
        return True

    assert in_machine(body)


def test_deploy_failure_refuses_the_client_and_forgets_the_values(in_machine):
    """PostgreSQL refuses a login with an invalid parameter value; we refuse the client at its
    first attach with PostgreSQL's own error, and no longer trust what we knew of those values."""
    def body():
        a, b = gsocket.socketpair()
        pooler, pg = mm.Io(a), mm.Io(b)
        try:
            server = _server(pooler, {"work_mem": "4MB"})
            client = Client(None)
            client.vars = {"work_mem": "lots"}

            def backend():
                read_message(pg, 2000)
                pg.write(be_write.error_response("ERROR", "22023", 'invalid value for parameter "work_mem"')
                         + be_write.ready_for_query(b"I"))

            co = mm.Coroutine(backend)
            with pytest.raises(FrontendError) as e:
                deploy.deploy(_instance(), client, server)
            co.join(2000)
            assert (e.value.sqlstate, e.value.severity) == ("22023", "FATAL")
            assert "work_mem" in e.value.message
            assert "work_mem" not in server.params
            assert server.synchronized
        finally:
            pooler.close(), pg.close()
        return True

    assert in_machine(body)


def test_needed_works_out_a_stale_list_itself():
    """The relay's fast path asks needed() at a client's first attach, before any deploy(): a
    stale (None) list is worked out there, so a server that already has the client's values
    needs no round trip, and one that lacks them does."""
    client = Client(None)
    client.vars = {"application_name": "pgbench", "foo": "x"}
    assert client.deploy_list is None
    assert not deploy.needed(client, _server(None, {"application_name": "pgbench"}))
    assert client.deploy_list == (("application_name", "application_name", "pgbench"),)
    client.deploy_list = None
    assert deploy.needed(client, _server(None, {"application_name": "psql"}))
    assert deploy.needed(client, _server(None, {}))


# ----------------------------------------------------------------------------------------------
# needed(): the fast path's question, and the server's mark (server.deployed)

def test_clients_with_the_same_tracked_vars_share_one_deploy_list():
    a, b, c = Client(None), Client(None), Client(None)
    a.vars = {"application_name": "app", "timezone": "UTC", "foo": "1"}
    b.vars = {"application_name": "app", "timezone": "UTC"}
    c.vars = {"application_name": "other", "timezone": "UTC"}
    assert deploy.deploy_list(a) is deploy.deploy_list(b) is a.deploy_list is b.deploy_list
    assert deploy.deploy_list(c) is not a.deploy_list
    assert a.deploy_list == (("application_name", "application_name", "app"), ("timezone", "TimeZone", "UTC"))


def test_needed_marks_a_server_that_holds_the_list_and_trusts_the_mark():
    server = _server(None, {"application_name": "app", "timezone": "UTC"})
    a, b = Client(None), Client(None)
    a.vars = b.vars = {"application_name": "app"}
    assert server.deployed is None
    assert deploy.needed(a, server) is False        # worked out a's stale list, then compared
    assert server.deployed is a.deploy_list is not None
    assert deploy.needed(b, server) is False and b.deploy_list is a.deploy_list
    # the mark is trusted: whoever writes params must reset it (backend, reset, the detach)
    server.params["application_name"] = "changed"
    assert deploy.needed(b, server) is False
    server.deployed = None
    assert deploy.needed(b, server) is True
    assert server.deployed is None


def test_deploy_marks_the_server_and_a_failure_forgets_the_mark(in_machine):
    def body():
        a, b = gsocket.socketpair()
        pooler, pg = mm.Io(a), mm.Io(b)
        try:
            server = _server(pooler, {"work_mem": "4MB"})
            ok, bad = Client(None), Client(None)
            ok.vars = {"work_mem": "8MB"}
            bad.vars = {"work_mem": "lots"}

            def backend():
                read_message(pg, 2000)
                pg.write(be_write.command_complete("SET") + be_write.ready_for_query(b"I"))
                read_message(pg, 2000)
                pg.write(be_write.error_response("ERROR", "22023", 'invalid value for parameter "work_mem"')
                         + be_write.ready_for_query(b"I"))

            co = mm.Coroutine(backend)
            deploy.deploy(_instance(), ok, server)
            assert server.deployed is ok.deploy_list and server.params["work_mem"] == "8MB"
            with pytest.raises(FrontendError):
                deploy.deploy(_instance(), bad, server)
            co.join(2000)
            assert server.deployed is None
        finally:
            pooler.close(), pg.close()
        return True

    assert in_machine(body)


def test_a_deploy_list_is_found_again_by_the_client_vars():
    """deploy_list keeps each vars' list by the vars' own items: a second client with the same
    vars gets the same tuple without working it out again, one whose vars changed (a SET) or
    differ gets its own, an empty list stays empty, and an unhashable value still works."""
    a, b, c, d, e = (Client(None) for _ in range(5))
    a.vars = {"application_name": "app", "foo": "1"}
    b.vars = {"application_name": "app", "foo": "1"}
    first = deploy.deploy_list(a)
    assert deploy._LISTS[tuple(a.vars.items())] is first
    assert deploy.deploy_list(b) is first
    b.vars["application_name"] = "changed"
    assert deploy.deploy_list(b) == (("application_name", "application_name", "changed"),)
    c.vars = {"foo": "1"}
    assert deploy.deploy_list(c) == ()
    d.vars = {}
    assert deploy.deploy_list(d) == ()
    e.vars = {"application_name": "app", "odd": ["unhashable"]}
    assert deploy.deploy_list(e) is first


def test_needed_trusts_the_mark_for_a_list_it_just_found():
    """At a client's first attach (its list stale) needed() finds the list and, when the server is
    marked as holding that very list, answers without comparing the values (as for a list
    worked out before: the mark is trusted); a server marked with another list is compared."""
    a, b = Client(None), Client(None)
    a.vars = {"application_name": "mark"}
    b.vars = {"application_name": "mark"}
    server = _server(None, {"application_name": "mark"})
    assert deploy.needed(a, server) is False and server.deployed is a.deploy_list
    server.params["application_name"] = "written without resetting the mark"
    assert b.deploy_list is None
    assert deploy.needed(b, server) is False and b.deploy_list is a.deploy_list
    other = _server(None, {"application_name": "other"})
    other.deployed = (("application_name", "application_name", "other"),)
    c = Client(None)
    c.vars = {"application_name": "mark"}
    assert deploy.needed(c, other) is True
