"""The heap trim that follows clients going dormant (relay.TRIM_AFTER_DORMANT): pure bookkeeping
in one hub, the real malloc_trim included."""
from __future__ import annotations

import gevent
from gevent import get_hub

from odyssey_gevent import relay


def test_a_trim_runs_once_a_second_after_enough_clients_went_dormant(monkeypatch):
    calls = []
    monkeypatch.setattr(relay, "_malloc_trim", lambda pad: calls.append(pad) or 1)
    relay._local.__dict__.pop("dormant_count", None)
    relay._local.__dict__.pop("trim_timer", None)
    loop = get_hub().loop
    for _ in range(relay.TRIM_AFTER_DORMANT - 1):
        relay._count_dormant(loop)
    assert relay._local.__dict__.get("trim_timer") is None          # not enough yet
    for _ in range(relay.TRIM_AFTER_DORMANT * 3):                    # a burst: one trim, later
        relay._count_dormant(loop)
    assert calls == []
    gevent.sleep(1.3)
    assert calls == [0]
    assert relay._local.dormant_count == 0 and relay._local.trim_timer is None


def test_malloc_trim_is_callable_here():
    if relay._malloc_trim is not None:                              # glibc
        assert relay._malloc_trim(0) in (0, 1)
