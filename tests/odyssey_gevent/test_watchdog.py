"""watchdog.parse_lag and storage.candidates' use of the lag (pure logic; the watchdog itself is
tested against a primary and a replica in tests/integration/test_topology.py)."""
from odyssey_gevent import storage, watchdog
from odyssey_gevent.config.model import Endpoint, Storage


def test_parse_lag():
    assert watchdog.parse_lag([(b"1000",)], 1100.5) == 100.5
    assert watchdog.parse_lag([(b"1000.5",)], 1100.5) == 100.0
    assert watchdog.parse_lag([(None,)], 1100.0) is None
    assert watchdog.parse_lag([], 1100.0) is None
    assert watchdog.parse_lag([(b"yesterday",)], 1100.0) is None


def test_candidates_put_a_host_lagging_past_catchup_last():
    storage.forget_all()
    st = Storage("s", type="remote")
    a, b = Endpoint("10.255.0.1", 5432), Endpoint("10.255.0.2", 5432)
    storage.note_lag(a, 120.0)
    storage.note_lag(b, 3.0)
    assert storage.candidates(st, [a, b], "any", 60, 0) == [b, a]
    assert storage.candidates(st, [a, b], "any", 0, 0) == [a, b]        # no catchup_timeout: order kept
    assert storage.candidates(st, [a, b], "any", 200, 0) == [a, b]      # both within it
    storage.forget_all()
