"""The pooler out of file descriptors (its RLIMIT_NOFILE lowered with prlimit to what it has
open): new clients are refused at once with a reset, as C Odyssey does, instead of waiting in
the listen queue; the log says so at a bounded rate; clients already connected keep working;
and once descriptors are available again, new clients are served."""
from __future__ import annotations

import os
import resource
import socket

import pytest

from tests.integration.conftest import assert_alive, ensure_roles, module_pooler, odyssey_config, rule, scalar
from tests.integration.wire import Wire, startup

USER = "fd_user"


@pytest.fixture(scope="module")
def fp(pg, roles):
    ensure_roles(pg, USER)
    yield from module_pooler(pg, odyssey_config(rule(USER, pool="transaction", pool_size=2)))


def _refused_at_once(port: int) -> bool:
    """True when a new connection is closed or reset within a few seconds of its startup packet."""
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
    except ConnectionResetError:
        return True                   # reset before connect() even returned
    try:
        try:
            s.sendall(startup(USER, "db1"))
        except (ConnectionResetError, BrokenPipeError):
            return True
        s.settimeout(5)
        try:
            return s.recv(1) == b""
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False
    finally:
        s.close()


@pytest.mark.timeout(60)
def test_out_of_descriptors_refuses_new_clients_and_recovers(fp):
    existing = Wire(fp.port)
    assert existing.login(USER, "db1") is None
    assert existing.simple_query("select 1")[1:] == (None, "I")      # its server is open too
    pid = fp.pid
    soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    highest = max(int(fd) for fd in os.listdir(f"/proc/{pid}/fd"))
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (highest + 1, hard))
    try:
        refused = [_refused_at_once(fp.port) for _ in range(5)]
        assert all(refused), refused
        # the connected client and its pooled server keep working
        assert existing.simple_query("select 2") == ([["2"]], None, "I")
        log = fp.log()
        lines = [line for line in log.splitlines() if "refused with a reset" in line]
        assert 1 <= len(lines) <= 3, lines          # five refusals, about one line a second
        assert_alive(fp)
    finally:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
    assert scalar(fp.dsn(USER, "db1"), "select 3") == 3
    assert existing.simple_query("select 4") == ([["4"]], None, "I")
    existing.close()
