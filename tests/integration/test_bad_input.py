"""Raw-socket abuse of the startup phase and the protocol; the pooler must keep serving others."""
from __future__ import annotations

import struct
import time

import pytest

from tests.integration.conftest import module_pooler, odyssey_config, odyssey_text, rule
from tests.integration.wire import (GSSENC_REQUEST, SSL_REQUEST, Wire, errors_in, message, request_code,
                                    startup)


@pytest.fixture(scope="module")
def raw_pooler(pg, roles):
    # default client_login_timeout (15 s): a prompt close below is the pooler's own decision
    text = odyssey_config(rule("tx_user", pool="transaction", pool_size=2),
                          rule("sess_user", pool="session", pool_size=2),
                          rule("auth_clear", authentication="clear_text", password="clearpass"))
    yield from module_pooler(pg, text)


def serves_a_normal_client(p) -> None:
    w = Wire(p.port)
    try:
        assert w.login("tx_user", "db1") is None
        assert w.simple_query("select 1") == ([["1"]], None, "I")
    finally:
        w.close()


def rejected(w: Wire, timeout: float = 3.0) -> None:
    """The pooler closes the client within `timeout`, saying nothing or only 08P01."""
    msgs = w.read_until_closed(timeout)
    assert all(t == b"E" for t, _ in msgs), msgs
    assert all(e["C"] == "08P01" for e in errors_in(msgs)), msgs


@pytest.mark.timeout(30)
@pytest.mark.parametrize("junk", [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",                       # declared length 0x47455420
    struct.pack("!II", 0x7FFFFFFF, 196608),                     # oversized declared length
    struct.pack("!II", 3, 196608),                              # length below the header size
    struct.pack("!II", 19, 196608) + b"user\0tx_user",         # parameters without terminators
], ids=["http", "oversized", "undersized", "unterminated-params"])
def test_garbage_startup_is_rejected(raw_pooler, junk):
    w = Wire(raw_pooler.port)
    try:
        w.send(junk)
        rejected(w)
    finally:
        w.close()
    serves_a_normal_client(raw_pooler)


@pytest.mark.timeout(30)
def test_truncated_startup_then_close(raw_pooler):
    for cut in (2, 7, 20):
        w = Wire(raw_pooler.port)
        w.send(startup("tx_user", "db1")[:cut])
        w.close(abort=cut == 20)
    time.sleep(0.2)
    serves_a_normal_client(raw_pooler)


@pytest.mark.timeout(30)
def test_startup_split_into_single_bytes_works(raw_pooler):
    w = Wire(raw_pooler.port)
    try:
        for b in startup("tx_user", "db1"):
            w.send(bytes([b]))
        while True:
            tag, _ = w.read_message()
            assert tag != b"E"
            if tag == b"Z":
                break
        assert w.simple_query("select 2") == ([["2"]], None, "I")
    finally:
        w.close()


@pytest.mark.timeout(30)
def test_protocol_2_is_unsupported(raw_pooler):
    w = Wire(raw_pooler.port)
    try:
        w.send(startup("tx_user", "db1", protocol=2 << 16))
        msgs = w.read_until_closed(3)
        errs = errors_in(msgs)
        assert errs, msgs
        err = errs[0]
        assert (err["S"], err["C"]) == ("FATAL", "0A000")
        odyssey_text(err["M"], "unsupported frontend protocol 2.0")
    finally:
        w.close()
    serves_a_normal_client(raw_pooler)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("code", [SSL_REQUEST, GSSENC_REQUEST], ids=["ssl", "gssenc"])
def test_encryption_request_answered_n_then_plain_startup(raw_pooler, code):
    w = Wire(raw_pooler.port)
    try:
        w.send(request_code(code))
        assert w.read_exact(1) == b"N"
        assert w.login("tx_user", "db1") is None
        assert w.simple_query("select 3") == ([["3"]], None, "I")
    finally:
        w.close()


@pytest.mark.timeout(30)
def test_ssl_then_gssenc_then_startup(raw_pooler):
    w = Wire(raw_pooler.port)
    try:
        w.send(request_code(GSSENC_REQUEST))
        assert w.read_exact(1) == b"N"
        w.send(request_code(SSL_REQUEST))
        assert w.read_exact(1) == b"N"
        assert w.login("tx_user", "db1") is None
    finally:
        w.close()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("user", ["tx_user", "sess_user"])
def test_unknown_message_type_after_login(raw_pooler, user):
    bystander = Wire(raw_pooler.port)
    w = Wire(raw_pooler.port)
    try:
        assert bystander.login(user, "db1") is None
        assert bystander.simple_query("select 1")[1] is None
        assert w.login(user, "db1") is None
        assert w.simple_query("select 1")[1] is None
        w.send(message(b"y", b"junk"))
        msgs = w.read_until_closed(5)
        errs = errors_in(msgs)
        assert errs and errs[-1]["C"] == "08P01", msgs
        # only that client was closed
        assert bystander.simple_query("select 5") == ([["5"]], None, "I")
    finally:
        w.close()
        bystander.close()
    serves_a_normal_client(raw_pooler)


@pytest.mark.timeout(30)
def test_oversized_message_after_login(raw_pooler):
    w = Wire(raw_pooler.port)
    try:
        assert w.login("tx_user", "db1") is None
        w.send(b"Q" + struct.pack("!I", 0x7FFFFFF0) + b"select 1")
        # either rejected (08P01) or the pooler waits for the rest; never a crash
        try:
            w.read_until_closed(2)
        except AssertionError:
            pass
    finally:
        w.close(abort=True)
    serves_a_normal_client(raw_pooler)


# -- client_login_timeout ----------------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_client_login_timeout_applies_only_during_login(odyssey):
    p = odyssey(rule("tx_user"), rule("auth_clear", authentication="clear_text", password="clearpass"),
                listen={"client_login_timeout": 500})
    staller = Wire(p.port)             # valid startup, then never answers the password request
    silent = Wire(p.port)              # connects and says nothing at all
    idle = Wire(p.port)                # logs in properly, then idles
    try:
        assert idle.login("tx_user", "db1") is None
        staller.send(startup("auth_clear", "db1"))
        tag, body = staller.read_message()
        assert tag == b"R" and struct.unpack("!I", body[:4])[0] == 3      # cleartext password please
        t0 = time.monotonic()
        staller.read_until_closed(5)
        assert 0.3 <= time.monotonic() - t0 < 5
        silent.read_until_closed(5)
        time.sleep(1.0)
        # a client that finished its login is not subject to the login timeout
        assert idle.simple_query("select 1") == ([["1"]], None, "I")
    finally:
        for w in (staller, silent, idle):
            w.close()
    serves_a_normal_client(p)
