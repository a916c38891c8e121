"""Hostile authentication input (issue 11, "bad input and security"): malformed SASL messages,
wrong and oversized nonces, channel-binding requests, truncated and absurdly declared password
messages, stalled exchanges. Each gets an error with a sensible SQLSTATE or a clean close within
client_login_timeout, the pooler stays up, and a client next to it keeps working."""
from __future__ import annotations

import base64
import struct
import time

import pytest

from tests.integration.conftest import assert_alive, module_pooler, odyssey_config, rule, scalar
from tests.integration.wire import Wire, message, parse_fields, startup

LOGIN_TIMEOUT_MS = 1500


@pytest.fixture(scope="module")
def hp(pg, roles):
    text = odyssey_config(
        rule("auth_none", "db1"),
        rule("auth_md5", "db1", authentication="md5", password="md5secret"),
        rule("auth_scram", "db1", authentication="scram-sha-256", password="scramsecret"),
        listen={"client_login_timeout": LOGIN_TIMEOUT_MS},
    )
    yield from module_pooler(pg, text)


def _neighbour_works(p) -> None:
    assert_alive(p)
    assert scalar(p.dsn("auth_none", "db1")) == 1


def _start(p, user: str) -> tuple[Wire, bytes]:
    """Startup for `user`; returns the Wire and the first Authentication request's payload."""
    w = Wire(p.port, timeout=10)
    w.send(startup(user, "db1"))
    tag, body = w.read_message()
    assert tag == b"R", (tag, body)
    return w, body


def _sasl_initial(mechanism: str, data: bytes | None) -> bytes:
    body = mechanism.encode() + b"\0" + (struct.pack("!i", -1) if data is None else struct.pack("!i", len(data)) + data)
    return message(b"p", body)


def _outcome(w: Wire, timeout: float = 5.0) -> tuple[str | None, bool]:
    """(SQLSTATE of the ErrorResponse the pooler sent, or None; whether it closed within timeout)."""
    w.settimeout(timeout)
    code = None
    try:
        while True:
            tag, body = w.read_message()
            if tag == b"E":
                code = parse_fields(body).get("C")
    except EOFError:
        return code, True
    except (TimeoutError, OSError):
        return code, False


def _scram_first(p, nonce: str = "abcdefghijklmnopqrstuvwx") -> tuple[Wire, str]:
    w, auth = _start(p, "auth_scram")
    assert struct.unpack("!I", auth[:4])[0] == 10                       # AuthenticationSASL
    w.send(_sasl_initial("SCRAM-SHA-256", f"n,,n=,r={nonce}".encode()))
    tag, body = w.read_message()
    assert tag == b"R" and struct.unpack("!I", body[:4])[0] == 11          # SASLContinue
    return w, body[4:].decode()


# name -> (message, the SQLSTATE C Odyssey's auth.c answers it with)
SASL_INITIAL_CASES = {
    "unknown mechanism": (_sasl_initial("SCRAM-SHA-1", b"n,,n=,r=abc"), "28000"),
    "channel binding required": (_sasl_initial("SCRAM-SHA-256", b"p=tls-server-end-point,,n=,r=abc"), "0A000"),
    "channel-binding mechanism without TLS": (
        _sasl_initial("SCRAM-SHA-256-PLUS", b"p=tls-server-end-point,,n=,r=abc"), "28000"),
    "authzid": (_sasl_initial("SCRAM-SHA-256", b"n,a=postgres,n=,r=abc"), "0A000"),
    "mandatory extension": (_sasl_initial("SCRAM-SHA-256", b"n,,m=ext,n=,r=abc"), "0A000"),
    "no data": (_sasl_initial("SCRAM-SHA-256", None), "28000"),
    "empty data": (_sasl_initial("SCRAM-SHA-256", b""), "28000"),            # C crashes on this one
    "garbage": (_sasl_initial("SCRAM-SHA-256", b"\xff\xfe garbage ,,,"), "28000"),
    "no mechanism terminator": (message(b"p", b"SCRAM-SHA-256"), "28000"),
    "declared data longer than the message": (
        message(b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", 1000) + b"n,,"), "28000"),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", list(SASL_INITIAL_CASES))
def test_malformed_sasl_initial_response(hp, name):
    data, expected = SASL_INITIAL_CASES[name]
    w, _ = _start(hp, "auth_scram")
    w.send(data)
    code, closed = _outcome(w)
    w.close()
    assert closed, f"{name}: the connection was not closed"
    assert code == expected, f"{name}: {code}"
    _neighbour_works(hp)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("final", ["wrong nonce", "oversized nonce", "no proof", "bad base64 proof",
                                   "empty", "garbage"])
def test_malformed_sasl_final_response(hp, final):
    w, server_first = _scram_first(hp)
    attrs = dict(kv.split("=", 1) for kv in server_first.split(","))
    proof = base64.b64encode(b"\0" * 32).decode()
    data = {
        "wrong nonce": f"c=biws,r={attrs['r']}x,p={proof}",
        "oversized nonce": f"c=biws,r={attrs['r']}{'n' * 60000},p={proof}",
        "no proof": f"c=biws,r={attrs['r']}",
        "bad base64 proof": f"c=biws,r={attrs['r']},p=!!!",
        "empty": "",
        "garbage": "\x01\x02,,==",
    }[final].encode()
    w.send(message(b"p", data))
    code, closed = _outcome(w)
    w.close()
    assert closed, f"{final}: the connection was not closed"
    assert code in ("08P01", "28000", "28P01"), f"{final}: {code}"
    _neighbour_works(hp)


@pytest.mark.timeout(60)
def test_password_message_declared_4gb_is_refused_before_its_body(hp):
    w, auth = _start(hp, "auth_md5")
    assert struct.unpack("!I", auth[:4])[0] == 5
    w.send(b"p" + struct.pack("!I", 0xFFFFFFF0) + b"abc")        # 4 GB declared, 3 bytes sent
    code, closed = _outcome(w)
    w.close()
    assert closed and code == "08P01"
    _neighbour_works(hp)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("stall", ["truncated password", "after server-first", "before startup"])
def test_stalled_logins_are_cut_off_by_client_login_timeout(hp, stall):
    if stall == "truncated password":
        w, _ = _start(hp, "auth_md5")
        w.send(message(b"p", b"md5" + b"0" * 32 + b"\0")[:10])
    elif stall == "after server-first":
        w, _ = _scram_first(hp)
    else:
        w = Wire(hp.port, timeout=10)
        w.send(startup("auth_md5", "db1")[:7])
    t0 = time.monotonic()
    _, closed = _outcome(w, timeout=LOGIN_TIMEOUT_MS / 1000 + 8)
    w.close()
    assert closed, f"{stall}: still open {time.monotonic() - t0:.1f}s later"
    _neighbour_works(hp)


@pytest.fixture(scope="module")
def tls_hp(pg, roles, tls_certs):
    text = odyssey_config(
        rule("auth_none", "db1"),
        listen={"client_login_timeout": LOGIN_TIMEOUT_MS, "tls": "require",
                "tls_cert_file": tls_certs["server_crt"], "tls_key_file": tls_certs["server_key"],
                "tls_ca_file": tls_certs["ca_crt"]})
    yield from module_pooler(pg, text)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("stall", ["no ClientHello", "half a ClientHello", "garbage instead of TLS"])
def test_stalled_or_broken_tls_handshake_is_cut_off(tls_hp, stall):
    w = Wire(tls_hp.port, timeout=10)
    w.send(struct.pack("!II", 8, 80877103))                  # SSLRequest
    assert w.read_exact(1) == b"S"
    if stall == "half a ClientHello":
        w.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 20)   # declares 512 bytes
    elif stall == "garbage instead of TLS":
        w.send(b"GET / HTTP/1.0\r\n\r\n")
    _, closed = _outcome(w, timeout=LOGIN_TIMEOUT_MS / 1000 + 8)
    w.close()
    assert closed, f"{stall}: the connection stayed open"
    assert scalar(f"host=127.0.0.1 port={tls_hp.port} user=auth_none dbname=db1 sslmode=require "
                  "sslcert=/nonexistent/c.crt sslkey=/nonexistent/c.key") == 1
