"""SCRAM-SHA-256: RFC 7677 vectors on both sides, round trips with plain passwords and
stored secrets, SCRAM passthrough with a ClientKey, scramp as an independent peer, and
the errors (with their SQLSTATEs) for wrong passwords and malformed messages."""
from __future__ import annotations

import base64

import pytest
import scramp

from kiwi import error_codes
from kiwi.md5 import md5_password
from kiwi.saslprep import SaslprepError, saslprep, scram_password_bytes
from kiwi.scram import (ScramClient, ScramError, ScramSecret, ScramServer, client_key_of,
                        is_secret, make_secret, parse_secret, salted_password, server_key_of,
                        stored_key_of, _hmac, _xor)

# RFC 7677 section 3
USER, PASSWORD = "user", "pencil"
CLIENT_NONCE = "rOprNGfwEbeRWgbNEkqO"
SERVER_NONCE = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
CLIENT_FIRST = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
SERVER_FIRST = (b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                b"s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
CLIENT_FINAL = (b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="

RFC_SECRET = make_secret(PASSWORD, 4096, SALT)


def rfc_server(secret_or_password=PASSWORD):
    return ScramServer(secret_or_password, salt=SALT, nonce=SERVER_NONCE)


def test_rfc7677_client_side():
    client = ScramClient(PASSWORD, user=USER, nonce=CLIENT_NONCE)
    assert client.first() == CLIENT_FIRST
    assert client.final(SERVER_FIRST) == CLIENT_FINAL
    client.verify(SERVER_FINAL)
    assert client.salt == SALT and client.iterations == 4096


@pytest.mark.parametrize("source", ["password", "secret", "secret_object"])
def test_rfc7677_server_side(source):
    arg = {"password": PASSWORD, "secret": RFC_SECRET,
           "secret_object": parse_secret(RFC_SECRET)}[source]
    server = rfc_server(arg)
    assert server.first(CLIENT_FIRST) == SERVER_FIRST
    assert server.username == USER
    assert server.final(CLIENT_FINAL) == SERVER_FINAL
    salted = salted_password(PASSWORD, SALT, 4096)
    assert server.client_key == client_key_of(salted)
    assert server.server_key == server_key_of(salted)
    assert server.stored_key == stored_key_of(server.client_key)


def test_rfc7677_passthrough_with_client_key():
    """The pooler learns ClientKey from the client's proof and logs in with it."""
    frontend = rfc_server(RFC_SECRET)
    frontend.first(CLIENT_FIRST)
    frontend.final(CLIENT_FINAL)
    client = ScramClient(user=USER, nonce=CLIENT_NONCE, client_key=frontend.client_key,
                         server_key=frontend.server_key)
    assert client.first() == CLIENT_FIRST
    assert client.final(SERVER_FIRST) == CLIENT_FINAL
    client.verify(SERVER_FINAL)


def handshake(client: ScramClient, server: ScramServer) -> None:
    server_first = server.first(client.first())
    server_final = server.final(client.final(server_first))
    client.verify(server_final)
    assert client.client_key == server.client_key


@pytest.mark.parametrize("stored", ["plain", "secret"])
@pytest.mark.parametrize("password", ["s3cret", "pässwörd", "I\u00adX", "\u0007ctl", "p\u00a0w"])
def test_round_trip(stored, password):
    server = ScramServer(password if stored == "plain" else make_secret(password))
    handshake(ScramClient(password), server)


def test_round_trip_passthrough_against_fresh_server():
    secret = make_secret("hunter2")
    first = ScramServer(secret)
    handshake(ScramClient("hunter2"), first)
    again = ScramClient(client_key=first.client_key, server_key=parse_secret(secret).server_key)
    handshake(again, ScramServer(secret))


@pytest.mark.parametrize("stored", ["plain", "secret"])
def test_wrong_password_is_28p01(stored):
    server = ScramServer("right" if stored == "plain" else make_secret("right"))
    client = ScramClient("wrong")
    server_first = server.first(client.first())
    with pytest.raises(ScramError) as exc:
        server.final(client.final(server_first))
    assert exc.value.sqlstate == error_codes.INVALID_PASSWORD == "28P01"
    assert exc.value.side == "client" and exc.value.severity == "FATAL"
    assert server.client_key is None


def test_against_scramp_server_and_client():
    """scramp as an independent implementation of both peers."""
    mech = scramp.ScramMechanism("SCRAM-SHA-256")
    salt, stored, server_key, iterations = mech.make_auth_info("pässword", iteration_count=4096)
    ours = ScramClient("pässword", user="bob")   # scramp's server refuses libpq's empty n=
    their_server = mech.make_server(lambda username: (salt, stored, server_key, iterations))
    their_server.set_client_first(ours.first().decode())
    client_final = ours.final(their_server.get_server_first().encode())
    their_server.set_client_final(client_final.decode())
    ours.verify(their_server.get_server_final().encode())

    secret = str(ScramSecret(iterations, salt, stored, server_key))
    server = ScramServer(secret)
    theirs = scramp.ScramClient(["SCRAM-SHA-256"], "bob", "pässword")
    server_first = server.first(theirs.get_client_first().encode())
    theirs.set_server_first(server_first.decode())
    server_final = server.final(theirs.get_client_final().encode())
    theirs.set_server_final(server_final.decode())


def test_channel_binding_flag_y_accepted():
    server = ScramServer("pencil")
    server_first = server.first(b"y,,n=,r=abcdef").decode()
    nonce = server_first.split(",")[0][2:]
    without_proof = f"c={base64.b64encode(b'y,,').decode()},r={nonce}"
    auth = f"n=,r=abcdef,{server_first},{without_proof}".encode()
    secret = server.secret
    salted = salted_password("pencil", secret.salt, secret.iterations)
    proof = _xor(client_key_of(salted), _hmac(secret.stored_key, auth))
    final = f"{without_proof},p={base64.b64encode(proof).decode()}".encode()
    assert server.final(final).startswith(b"v=")
    # "y" in the first message but "n" in the channel binding: rejected
    server = ScramServer("pencil")
    server.first(b"y,,n=,r=abcdef")
    with pytest.raises(ScramError):
        server.final(b"c=biws,r=abcdef" + b"x" * 24 + b",p=AAAA")


@pytest.mark.parametrize("client_first, sqlstate", [
    (b"p=tls-server-end-point,,n=,r=abc", error_codes.FEATURE_NOT_SUPPORTED),
    (b"n,a=admin,n=,r=abc", error_codes.FEATURE_NOT_SUPPORTED),
    (b"n,,m=ext,n=,r=abc", error_codes.FEATURE_NOT_SUPPORTED),
    (b"", error_codes.INVALID_AUTHORIZATION_SPECIFICATION),
    (None, error_codes.INVALID_AUTHORIZATION_SPECIFICATION),
    (b"x,,n=,r=abc", error_codes.INVALID_AUTHORIZATION_SPECIFICATION),
    (b"n,,r=abc", error_codes.INVALID_AUTHORIZATION_SPECIFICATION),
    (b"n,,n=,r=", error_codes.INVALID_AUTHORIZATION_SPECIFICATION),
    (b"n,,n=,r=a\x01b", error_codes.INVALID_AUTHORIZATION_SPECIFICATION),
    (b"n,,n=\xff,r=abc", error_codes.INVALID_AUTHORIZATION_SPECIFICATION),
    (b"n,n=,r=abc", error_codes.INVALID_AUTHORIZATION_SPECIFICATION),
])
def test_bad_client_first(client_first, sqlstate):
    with pytest.raises(ScramError) as exc:
        ScramServer("pencil").first(client_first)
    assert exc.value.sqlstate == sqlstate


def test_bad_client_final():
    def fresh():
        server = rfc_server()
        server.first(CLIENT_FIRST)
        return server
    nonce = b"rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
    proof = b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
    for bad in [b"c=biws,r=" + nonce[:-1] + b"," + proof,              # nonce mismatch
                b"c=eSws,r=" + nonce + b"," + proof,                   # cbind mismatch
                b"c=biws,r=" + nonce,                                  # no proof
                b"c=biws,r=" + nonce + b",p=AAAA",                     # short proof
                b"c=biws,r=" + nonce + b",p=!!!",                      # bad base64
                b"r=" + nonce + b",c=biws," + proof,                   # order
                b""]:
        with pytest.raises(ScramError) as exc:
            fresh().final(bad)
        assert exc.value.sqlstate == error_codes.INVALID_AUTHORIZATION_SPECIFICATION
    with pytest.raises(ScramError, match="nonce doesn't match"):
        fresh().final(b"c=biws,r=" + nonce + b"X," + proof)
    # an extension attribute before the proof is allowed (and covered by the signature)
    with pytest.raises(ScramError) as exc:
        fresh().final(b"c=biws,r=" + nonce + b",x=1," + proof)
    assert exc.value.sqlstate == error_codes.INVALID_PASSWORD


def test_md5_stored_password_cannot_do_scram():
    with pytest.raises(ScramError) as exc:
        ScramServer(md5_password("u", "p"))
    assert exc.value.sqlstate == error_codes.INVALID_AUTHORIZATION_SPECIFICATION


def test_client_rejects_bad_server_messages():
    def started():
        client = ScramClient(PASSWORD, user=USER, nonce=CLIENT_NONCE)
        client.first()
        return client
    for bad in [b"r=someoneelse,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",         # nonce not ours
                b"r=rOprNGfwEbeRWgbNEkqO,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",  # no server part
                b"r=rOprNGfwEbeRWgbNEkqOxx,s=!!,i=4096",
                b"r=rOprNGfwEbeRWgbNEkqOxx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=0",
                b"r=rOprNGfwEbeRWgbNEkqOxx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=-1",
                b"m=x,r=rOprNGfwEbeRWgbNEkqOxx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=1",
                b"\xff"]:
        with pytest.raises(ScramError) as exc:
            started().final(bad)
        assert exc.value.side == "server"
    client = started()
    client.final(SERVER_FIRST)
    for bad in [b"v=AAAA", b"v=" + base64.b64encode(b"x" * 32), b"e=invalid-proof", b"x=1", b""]:
        with pytest.raises(ScramError) as exc:
            client.verify(bad)
        assert exc.value.side == "server"
    client.verify(SERVER_FINAL)


def test_client_needs_password_or_key():
    with pytest.raises(ValueError):
        ScramClient()
    with pytest.raises(ValueError):
        ScramClient("p", client_key=b"k" * 32)
    with pytest.raises(ValueError):
        ScramClient("p", nonce="has,comma")


def test_secret_parse_and_format():
    secret = parse_secret(RFC_SECRET)
    assert secret.iterations == 4096 and secret.salt == SALT
    assert str(secret) == RFC_SECRET
    assert RFC_SECRET.startswith("SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$")
    assert is_secret(RFC_SECRET) and is_secret(RFC_SECRET.encode())
    for bad in ["", "pencil", "SCRAM-SHA-256$4096:W22Z$a:b", "SCRAM-SHA-1$4096:AAAA$AAAA:AAAA",
                RFC_SECRET.replace("$4096:", "$x:"), RFC_SECRET.replace("$4096:", "$0:"),
                RFC_SECRET + "A", RFC_SECRET.replace("$", ":", 1)]:
        assert not is_secret(bad)
        with pytest.raises(ScramError):
            parse_secret(bad)
    # a password that merely looks like a broken secret is a plain password (PostgreSQL)
    handshake(ScramClient("SCRAM-SHA-256$x"), ScramServer("SCRAM-SHA-256$x"))


def test_saslprep_rfc4013_examples():
    assert saslprep("I\u00adX") == "IX"
    assert saslprep("user") == "user"
    assert saslprep("USER") == "USER"
    assert saslprep("\u00aa") == "a"
    assert saslprep("\u2168") == "IX"
    with pytest.raises(SaslprepError):
        saslprep("\u0007")
    with pytest.raises(SaslprepError):
        saslprep("\u0627\u0031")


def test_scram_password_bytes_follows_postgresql():
    assert scram_password_bytes("plain ascii \x07") == b"plain ascii \x07"   # ASCII: as is
    assert scram_password_bytes("I\u00adX") == b"IX"
    assert scram_password_bytes("a\u00a0b") == b"a b"
    assert scram_password_bytes("\u0627\u0031") == "\u0627\u0031".encode()   # rejected: raw
    assert scram_password_bytes(b"\xff\xfe") == b"\xff\xfe"                  # not UTF-8: raw
