"""login_retry: which failed server logins are tried again within pool_timeout, what the client
is told when the window has passed, and what ends the wait between attempts (KILL_CLIENT,
shutdown, the client going away). The PostgreSQL restart itself is in
tests/integration/test_faults_restart.py."""
from __future__ import annotations

import errno
import ssl
import time
from types import SimpleNamespace

import pytest
from gevent import socket as gsocket

import machinarium as mm
from kiwi.fe_read import ErrorFields
from odyssey_gevent import login_retry
from odyssey_gevent.client import Client
from odyssey_gevent.config.model import Rule
from odyssey_gevent.logger import Logger
from odyssey_gevent.status import BackendError, ClientGone, FrontendError, Status

pytestmark = pytest.mark.timeout(10)


def _rule(pool_timeout=1000, **kw):
    return Rule(db_name="db", user_name="u", authentication="none", pool="transaction",
                pool_timeout=pool_timeout, **kw)


def _wrapped(cause) -> BackendError:
    """What backend.connect raises when every endpoint failed with a socket error."""
    try:
        raise BackendError("failed to connect to remote server s1: x") from cause
    except BackendError as e:
        return e


def _pg_error(sqlstate: str) -> BackendError:
    return BackendError("refused", ErrorFields("FATAL", sqlstate, "the database system is starting up"))


@pytest.mark.parametrize("error", [
    _wrapped(ConnectionRefusedError(errno.ECONNREFUSED, "refused")),
    _wrapped(ConnectionResetError(errno.ECONNRESET, "reset")),
    _wrapped(FileNotFoundError(errno.ENOENT, "no unix socket")),
    _wrapped(OSError(errno.EHOSTUNREACH, "no route to host")),
    _wrapped(mm.ConnectionClosed("closed during the login")),
    _wrapped(mm.TimedOut("connect")),
    _pg_error("57P03"),
    ConnectionRefusedError(errno.ECONNREFUSED, "refused"),
])
def test_a_postgresql_that_is_down_is_unreachable(error):
    assert login_retry.unreachable(error)
    retry = login_retry.retry_for(_rule(), error)
    assert retry is not None and retry.unreachable


@pytest.mark.parametrize("error", [
    _pg_error("28P01"),                                 # authentication failed
    _pg_error("3D000"),                                 # no such database
    _wrapped(ssl.SSLError("handshake failure")),
    _wrapped(OSError(errno.EMFILE, "too many open files")),
    BackendError("server does not support SSL, but storage tls is 'require'"),
])
def test_other_failures_are_not_retried(error):
    assert not login_retry.unreachable(error)
    assert login_retry.retry_for(_rule(), error) is None


def test_53300_is_retried_but_not_as_unreachable():
    retry = login_retry.retry_for(_rule(), _pg_error("53300"))
    assert retry is not None and not retry.unreachable


@pytest.mark.parametrize("error", [_pg_error("53300"), _pg_error("57P03"),
                                   _wrapped(ConnectionRefusedError(errno.ECONNREFUSED, "refused"))])
def test_nothing_is_retried_with_pool_timeout_0(error):
    assert login_retry.retry_for(_rule(pool_timeout=0), error) is None


# -- the wait between attempts ------------------------------------------------------------------
def _setup(pool_timeout=1000, **rule_kw):
    a, b = gsocket.socketpair()
    client = Client(mm.Io(b), None, "host", ("127.0.0.1", 40000))
    client.rule = _rule(pool_timeout, **rule_kw)
    instance = SimpleNamespace(config=SimpleNamespace(server_login_retry=1), shutting_down=False,
                               logger=Logger("%l (%c) %m\n", to_stdout=False))
    return instance, client, a


def test_the_window_ends_with_todays_error(in_machine):
    def body():
        instance, client, peer = _setup(pool_timeout=400)
        retry = login_retry.retry_for(client.rule, _wrapped(ConnectionRefusedError(errno.ECONNREFUSED, "x")))
        window, pauses = None, 0
        with pytest.raises(FrontendError) as e:
            while True:
                window = login_retry.pause(instance, client, retry, "s0123", window)
                pauses += 1
        peer.close()
        return pauses, e.value, window.attempts
    pauses, err, attempts = in_machine(body)
    assert (err.sqlstate, err.severity, err.message) == ("08006", "FATAL", "failed to connect to remote server s0123")
    assert err.status is Status.ESERVER_CONNECT
    assert attempts == pauses >= 1              # it waited (100 ms, 200 ms, the rest) before the error


def test_backoff_starts_at_100_ms_and_doubles_up_to_1_s():
    assert [login_retry.backoff_ms(n) for n in range(7)] == [100, 200, 400, 800, 1000, 1000, 1000]
    assert login_retry.backoff_ms(10 ** 6) == 1000


def test_client_fwd_error_gives_postgresqls_own_error_at_the_end(in_machine):
    def body():
        instance, client, peer = _setup(pool_timeout=1, client_fwd_error=True)
        retry = login_retry.retry_for(client.rule, _pg_error("57P03"))
        window = login_retry.pause(instance, client, retry, "s1", None)
        time.sleep(0.005)
        try:
            login_retry.pause(instance, client, retry, "s1", window)
        except FrontendError as e:
            return e
        finally:
            peer.close()
    err = in_machine(body)
    assert (err.sqlstate, err.message) == ("57P03", "the database system is starting up")


@pytest.mark.parametrize("how, status", [("kill", Status.ECLIENT_KILLED),
                                         ("shutdown", Status.EGRACEFUL_SHUTDOWN),
                                         ("close", Status.ECLIENT_READ)])
def test_the_wait_ends_on_kill_shutdown_and_the_client_leaving(in_machine, how, status):
    def body():
        instance, client, peer = _setup()

        def later():
            mm.sleep(50)
            if how == "kill":
                client.killed = True
            elif how == "shutdown":
                instance.shutting_down = True
            else:
                peer.close()
        mm.coroutine_create(later)
        try:
            login_retry.wait(instance, client, 5000)      # without one of them: returns after 5 s
        except ClientGone as e:
            return e.status
        finally:
            peer.close()
        return None
    assert in_machine(body) is status


def test_a_client_that_sent_more_is_not_taken_for_gone(in_machine):
    def body():
        instance, client, peer = _setup()
        peer.sendall(b"Q\0\0\0\x0dselect 1\0")        # a pipelined request: readable, still there
        login_retry.wait(instance, client, 150)
        data = client.io.read(5, 1000)                  # nothing was consumed
        peer.close()
        return data
    assert in_machine(body) == b"Q\0\0\0\x0d"
