"""target_session_attrs as tsa.py works it out for a client (pure logic on the client's rule,
listen block and startup parameters): the value in effect, and whether its pooled servers'
hosts must be checked at each attach (the relay's fast attach skips the check only when not)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from odyssey_gevent import tsa


def _client(rule_tsa=None, listen_tsa=None, hint=None, catchup=0, catchup_hint=None):
    rule = SimpleNamespace(target_session_attrs=rule_tsa, catchup_timeout=catchup)
    listen = SimpleNamespace(target_session_attrs=listen_tsa, catchup_timeout=0)
    vars_ = {}
    if hint is not None:
        vars_[tsa.HINT] = hint
    if catchup_hint is not None:
        vars_["odyssey_catchup_timeout"] = catchup_hint
    return SimpleNamespace(rule=rule, listen=listen, vars=vars_, tsa_checks=None)


def test_no_target_session_attrs_and_no_catchup_checks_no_host():
    client = _client()
    assert tsa.checks_hosts(client) is False
    assert client.tsa_checks == (0, "any")
    assert tsa.checks_hosts(_client(rule_tsa="any", listen_tsa="any", hint="any")) is False


@pytest.mark.parametrize("value", ["read-write", "read-only", "primary", "standby", "prefer-standby", "replica"])
def test_any_other_target_session_attrs_checks_hosts(value):
    assert tsa.checks_hosts(_client(rule_tsa=value)) is True
    assert tsa.checks_hosts(_client(listen_tsa=value)) is True
    assert tsa.checks_hosts(_client(hint=value)) is True


def test_the_clients_hint_wins_over_the_rule():
    client = _client(rule_tsa="read-write", hint="any")
    assert tsa.checks_hosts(client) is False
    assert tsa.effective(client) == "any"


def test_a_catchup_timeout_checks_hosts():
    assert tsa.checks_hosts(_client(catchup=5)) is True
    assert tsa.checks_hosts(_client(catchup_hint="3")) is True


def test_worked_out_once():
    client = _client()
    assert tsa.checks_hosts(client) is False
    client.rule.target_session_attrs = "read-write"      # fixed for a session: not asked again
    assert tsa.checks_hosts(client) is False


def test_a_route_keeps_the_checks_of_clients_without_hints_per_listen_block():
    """Clients of one route through one listen block, sending no hint, get the same checks,
    worked out once (Route.tsa_memo); a client with a hint, or through another listen block,
    gets its own."""
    route = SimpleNamespace(tsa_memo=None)
    first = _client(rule_tsa="read-write")
    first.route = route
    assert tsa.work_out(first) == (0, "read-write") and route.tsa_memo == (first.listen, first.tsa_checks)
    second = _client(rule_tsa="read-write")
    second.route, second.listen = route, first.listen
    assert tsa.work_out(second) is first.tsa_checks
    hinted = _client(rule_tsa="read-write", hint="standby", catchup_hint="7")
    hinted.route, hinted.listen = route, first.listen
    assert tsa.work_out(hinted) == (7, "standby")
    assert route.tsa_memo == (first.listen, first.tsa_checks)       # not replaced by a hinted client
    other = _client(rule_tsa="read-write", listen_tsa="read-only")
    other.route = route
    assert tsa.work_out(other) == (0, "read-only") and route.tsa_memo[0] is other.listen
