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

pytestmark = pytest.mark.timeout(10)


def test_quote_doubles_single_quotes():
    assert deploy.quote("") == "''"
    assert deploy.quote("UTC") == "'UTC'"
    assert deploy.quote("it's") == "'it''s'"
    assert deploy.quote("''") == "''''''"
    assert deploy.quote("a\\b") == "'a\\b'"


@given(st.text())
@settings(max_examples=200, deadline=None)
def test_quote_roundtrip(value):
    q = deploy.quote(value)
    assert q[0] == q[-1] == "'"
    inner = q[1:-1]
    assert inner.replace("''", "").count("'") == 0
    assert inner.replace("''", "'") == value


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
            assert got["q"] == ("Q", b"SET application_name='it''s me';SET search_path='public';\0")
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


def test_deploy_failure_is_logged_and_does_not_raise(in_machine):
    def body():
        a, b = gsocket.socketpair()
        pooler, pg = mm.Io(a), mm.Io(b)
        try:
            server = _server(pooler, {"work_mem": "4MB"})
            client = Client(None)
            client.vars = {"work_mem": "lots"}

            def backend():
                read_message(pg, 2000)
                pg.write(be_write.error_response("ERROR", "22023", "invalid value for parameter \"work_mem\"")
                         + be_write.ready_for_query(b"I"))

            co = mm.Coroutine(backend)
            deploy.deploy(_instance(), client, server)
            co.join(2000)
            assert server.params["work_mem"] == "4MB"      # the server kept its value
            assert server.synchronized
        finally:
            pooler.close(), pg.close()
        return True

    assert in_machine(body)
