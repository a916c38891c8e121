"""The Instance's counts, each kept in one place: the global client count that client_max limits
(checked at accept) and the worker count (resolved once, by the config reader)."""
from __future__ import annotations

import pytest

from odyssey_gevent.config import reader
from odyssey_gevent.config.model import Config
from odyssey_gevent.instance import Instance
from odyssey_gevent.logger import Logger


def _instance(**config):
    return Instance(Config(**config), Logger(to_stdout=False), "test.conf")


class _CountingLock:
    def __init__(self):
        self.acquires = 0

    def acquire(self, *args):
        self.acquires += 1
        return True

    def release(self):
        pass

    __enter__ = acquire

    def __exit__(self, *exc):
        pass


@pytest.mark.parametrize("workers, locked", [(1, False), (2, True)])
def test_client_max_counts_accepted_clients_once(workers, locked):
    """The same count either way; with more workers than one (threads) under the lock, with one
    (a single thread counts) without it."""
    inst = _instance(client_max=2, workers=workers)
    inst._lock = lock = _CountingLock()
    assert inst.client_opened() and inst.client_opened()
    assert not inst.client_opened() and inst.clients == 2       # refused: not counted
    inst.client_closed()
    assert inst.client_opened() and inst.clients == 2
    assert lock.acquires == (5 if locked else 0)


def test_no_client_max_means_no_limit():
    inst = _instance()
    assert all(inst.client_opened() for _ in range(1000)) and inst.clients == 1000


def test_workers_come_from_the_config_reader():
    config = reader.loads('workers "auto"\nlog_format "%m\\n"\nlisten { host "*" port 6432 }\n'
                          'storage "s" { type "remote" host "h" port 5432 }\n'
                          'database default { user default { authentication "none" storage "s" pool "session" } }\n')
    inst = Instance(config, Logger(to_stdout=False), "test.conf")
    assert inst.workers == config.workers >= 1 and isinstance(inst.workers, int)
    assert _instance(workers=3).workers == 3
