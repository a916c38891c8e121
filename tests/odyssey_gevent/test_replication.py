"""replication.mode: the startup packet's `replication` value (the relay itself is tested against
a real PostgreSQL in tests/integration/test_topology.py)."""
import pytest

from odyssey_gevent import replication
from odyssey_gevent.status import FrontendError


@pytest.mark.parametrize("value, expected", [
    ("database", "database"), ("DATABASE", "database"), ("true", "true"), ("on", "true"), ("yes", "true"),
    ("1", "true"), ("false", None), ("off", None), ("no", None), ("0", None),
])
def test_mode(value, expected):
    assert replication.mode(value) == expected


@pytest.mark.parametrize("value", ["", "maybe", "database2", "2"])
def test_bad_mode_is_08006(value):
    with pytest.raises(FrontendError) as e:
        replication.mode(value)
    assert e.value.sqlstate == "08006" and e.value.message == 'invalid value for parameter "replication"'
