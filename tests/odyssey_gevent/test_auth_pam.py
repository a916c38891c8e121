"""auth_pam's own logic without PAM: PAM_RHOST, NUL refusal, the threadpool and the log line."""
from __future__ import annotations

import time
from types import SimpleNamespace

import gevent
import pytest

auth_pam = pytest.importorskip("odyssey_gevent.auth_pam", reason="python-pam is not installed")


def test_rhost_is_the_client_ip_only():
    assert auth_pam.rhost_of("127.0.0.1") == "127.0.0.1"
    assert auth_pam.rhost_of("::1") == "::1"
    assert auth_pam.rhost_of(None) is None
    assert auth_pam.rhost_of("") is None
    assert auth_pam.rhost_of("/tmp/.s.PGSQL.6432") is None


@pytest.mark.parametrize("args", [("svc", "u\0", "pw"), ("svc", "u", "p\0w"), ("s\0", "u", "pw")])
def test_nul_is_refused_without_calling_pam(args):
    ok, reason = auth_pam.authenticate(*args)
    assert not ok and "NUL" in reason


class Logger:
    def __init__(self):
        self.lines = []

    def error(self, context, client, server, fmt, *args):
        self.lines.append(fmt % args)


def _client():
    return SimpleNamespace(user="alice", peer_host="10.0.0.7", rule=SimpleNamespace(auth_pam_service="svc"))


def test_check_runs_pam_off_the_hub_and_logs_the_reason(monkeypatch):
    calls = []

    def slow(service, user, password, rhost):
        time.sleep(0.3)                     # a pam_faildelay-like pause, in a pool thread
        calls.append((service, user, password, rhost))
        return False, "Authentication failure"

    monkeypatch.setattr(auth_pam, "authenticate", slow)
    instance = SimpleNamespace(logger=Logger())
    ticks = []

    def ticker():
        for _ in range(10):
            ticks.append(time.monotonic())
            gevent.sleep(0.02)

    t = gevent.spawn(ticker)
    assert auth_pam.check(instance, _client(), "pw") is False
    t.join()
    assert calls == [("svc", "alice", "pw", "10.0.0.7")]
    assert len(ticks) == 10                 # the hub kept running other greenlets meanwhile
    assert instance.logger.lines == ["PAM authentication failed for user 'alice' (service 'svc'): "
                                     "Authentication failure"]


def test_check_accepts_without_logging(monkeypatch):
    monkeypatch.setattr(auth_pam, "authenticate", lambda *a: (True, "Success"))
    instance = SimpleNamespace(logger=Logger())
    assert auth_pam.check(instance, _client(), "pw") is True
    assert instance.logger.lines == []


def test_check_refuses_when_pam_raises(monkeypatch):
    def broken(*a):
        raise OSError("libpam.so.0: cannot open shared object file")

    monkeypatch.setattr(auth_pam, "authenticate", broken)
    instance = SimpleNamespace(logger=Logger())
    assert auth_pam.check(instance, _client(), "pw") is False
    assert "cannot open shared object" in instance.logger.lines[0]
