"""auth.py over socket pairs: the client side of every authentication mode (none, block,
clear_text, md5, SCRAM-SHA-256) with the exact refusals, and the pooler's own login to a
scripted PostgreSQL (cleartext, md5, SCRAM) (Odyssey auth.c)."""
from __future__ import annotations

import base64
from types import SimpleNamespace

import pytest
from gevent import socket as gsocket

import machinarium as mm
from kiwi import be_read, be_write, error_codes, fe_read, fe_write
from kiwi.header import BE, FE
from kiwi.md5 import md5_password, md5_salted
from kiwi.scram import ScramClient, ScramServer, make_secret
from odyssey_gevent import auth
from odyssey_gevent.client import Client
from odyssey_gevent.config.model import Rule
from odyssey_gevent.io import BE_LIMITS, FE_LIMITS, read_message
from odyssey_gevent.logger import Logger
from odyssey_gevent.route import Route
from odyssey_gevent.server import Server
from odyssey_gevent.status import BackendError, FrontendError

pytestmark = pytest.mark.timeout(10)

INSTANCE = SimpleNamespace(logger=Logger(to_stdout=False))


def _pair():
    a, b = gsocket.socketpair()
    return mm.Io(a), mm.Io(b)


def _rule(mode, password=None, **kw):
    return Rule(db_name="db", user_name="alice", authentication=mode, password=password, pool="session", **kw)


# ----------------------------------------------------------------------------------------------
# client side: authenticate_client with an app on the other end of a socket pair

def _auth_request(app):
    t, payload = read_message(app, 2000, BE_LIMITS)
    assert t == BE.AUTHENTICATION
    return fe_read.read_authentication(payload)


def client_auth(in_machine, rule, app_side):
    """Run authenticate_client for user alice; `app_side(app_io)` plays the client. Returns
    (the FrontendError raised or None, the client, what app_side returned, whether the app then
    got AuthenticationOk, bytes left unread on the app side)."""
    def body():
        pooler, app = _pair()
        client = Client(pooler)
        client.user, client.database, client.rule = "alice", "db", rule

        def run():
            try:
                auth.authenticate_client(INSTANCE, client, 2000)
            except FrontendError as e:
                return e
            finally:
                pooler.close()           # the app sees EOF after whatever was written
            return None

        co = mm.Coroutine(run)
        try:
            seen = app_side(app)
            err = co.join(3000)
            rest = bytearray()
            buf = bytearray(4096)
            while (n := app.read_into(buf, 2000)) > 0:
                rest += buf[:n]
            ok = bytes(rest) == be_write.auth_ok()
            return err, client, seen, ok, bytes(rest)
        finally:
            pooler.close(), app.close()

    return in_machine(body)


def test_none_sends_auth_ok_at_once(in_machine):
    err, _, _, ok, _ = client_auth(in_machine, _rule("none"), lambda app: None)
    assert err is None and ok


def test_block_refuses_without_a_word_on_the_wire(in_machine):
    err, _, _, _, rest = client_auth(in_machine, _rule("block"), lambda app: None)
    assert (err.sqlstate, err.severity) == (error_codes.INVALID_AUTHORIZATION_SPECIFICATION, "FATAL")
    assert err.message == "user blocked: db alice"
    assert rest == b""


def test_unknown_mode_is_not_supported(in_machine):
    err, _, _, _, rest = client_auth(in_machine, _rule("external"), lambda app: None)
    assert err.sqlstate == error_codes.FEATURE_NOT_SUPPORTED
    assert err.message == "authentication method 'external' is not supported yet"
    assert rest == b""


def test_cert_needs_tls(in_machine):
    """C's od_auth_frontend_cert: a client without TLS gets 28000 before any exchange."""
    err, _, _, _, rest = client_auth(in_machine, _rule("cert", auth_common_name_default=True), lambda app: None)
    assert (err.sqlstate, err.severity) == (error_codes.INVALID_AUTHORIZATION_SPECIFICATION, "FATAL")
    assert err.message == "TLS connection required"
    assert rest == b""


# LDAP, PAM and auth modules decide clear_text logins (tested with their modules); on md5 and
# SCRAM rules, and the mdb iam proxy anywhere, they are refused
_REFUSED = [(mode, kw, v) for mode in ("md5", "scram-sha-256")
            for kw, v in (("ldap_endpoint_name", "ldap"), ("auth_pam_service", "pam"), ("auth_module", "m"))]
_REFUSED += [(mode, "enable_mdb_iamproxy_auth", True) for mode in ("clear_text", "md5", "scram-sha-256")]


@pytest.mark.parametrize("mode, keyword, value", _REFUSED)
def test_password_modes_refuse_unsupported_sources(in_machine, mode, keyword, value):
    err, _, _, _, rest = client_auth(in_machine, _rule(mode, "pw", **{keyword: value}), lambda app: None)
    assert (err.sqlstate, err.message) == (error_codes.FEATURE_NOT_SUPPORTED, f"{keyword} is not supported yet")
    assert rest == b""


# -- clear_text

def _send_password(password: bytes):
    def app_side(app):
        req = _auth_request(app)
        app.write(fe_write.password_message(password + b"\0"))
        return req.code
    return app_side


def test_clear_text_accepts_the_password_and_keeps_it(in_machine):
    err, client, code, ok, _ = client_auth(in_machine, _rule("clear_text", "s3cret"), _send_password(b"s3cret"))
    assert err is None and code == auth.AUTH_CLEARTEXT and ok
    assert client.password == "s3cret"             # for password_passthrough


@pytest.mark.parametrize("given", [b"wrong", b"", b"s3cre", b"s3cret "])
def test_clear_text_wrong_password(in_machine, given):
    err, client, _, ok, _ = client_auth(in_machine, _rule("clear_text", "s3cret"), _send_password(given))
    assert (err.sqlstate, err.severity) == (error_codes.INVALID_PASSWORD, "FATAL")
    assert err.message == 'password authentication failed for user "alice"'
    assert not ok and client.password is None


def test_clear_text_other_message_is_a_protocol_violation(in_machine):
    def app_side(app):
        _auth_request(app)
        app.write(fe_write.query("SELECT 1"))

    err, _, _, ok, _ = client_auth(in_machine, _rule("clear_text", "s3cret"), app_side)
    assert (err.sqlstate, err.message) == (error_codes.PROTOCOL_VIOLATION, "bad password message")
    assert not ok


def test_clear_text_malformed_password_message(in_machine):
    def app_side(app):
        _auth_request(app)
        app.write(b"p\0\0\0\x09ab\0cd")          # a NUL inside, not at the end

    err, _, _, _, _ = client_auth(in_machine, _rule("clear_text", "s3cret"), app_side)
    assert (err.sqlstate, err.message) == (error_codes.PROTOCOL_VIOLATION, "bad password message")


def test_clear_text_client_gone_is_not_a_frontend_error(in_machine):
    def body():
        pooler, app = _pair()
        client = Client(pooler)
        client.user, client.database, client.rule = "alice", "db", _rule("clear_text", "pw")
        app.close()
        try:
            auth.authenticate_client(INSTANCE, client, 2000)
        except FrontendError:
            return "frontend error"
        except OSError:
            return "os error"
        finally:
            pooler.close()

    assert in_machine(body) == "os error"


# -- md5

def _md5_answer(password, user="alice"):
    def app_side(app):
        req = _auth_request(app)
        assert req.code == auth.AUTH_MD5
        app.write(fe_write.password_message(md5_salted(user, password, req.salt).encode() + b"\0"))
        return req.salt
    return app_side


def test_md5_accepts_the_salted_hash(in_machine):
    err, _, salt, ok, _ = client_auth(in_machine, _rule("md5", "s3cret"), _md5_answer("s3cret"))
    assert err is None and ok and len(salt) == 4


def test_md5_with_a_stored_hash_in_the_config(in_machine):
    rule = _rule("md5", md5_password("alice", "s3cret"))
    err, _, _, ok, _ = client_auth(in_machine, rule, _md5_answer("s3cret"))
    assert err is None and ok


def test_md5_salt_is_fresh_each_time(in_machine):
    salts = {client_auth(in_machine, _rule("md5", "s3cret"), _md5_answer("s3cret"))[2] for _ in range(3)}
    assert len(salts) == 3


def test_md5_salts_are_drawn_in_batches_each_logins_own():
    from odyssey_gevent import auth
    auth._SALTS.clear()
    salts = [auth._draw_salts()] + [auth._SALTS.pop() for _ in range(auth._SALT_BATCH - 1)]
    assert not auth._SALTS and all(len(s) == 4 for s in salts)
    assert len(set(salts)) > auth._SALT_BATCH - 4          # 4 random bytes: collisions are rare


def test_a_forked_child_does_not_reuse_its_parents_next_salts():
    import os
    from odyssey_gevent import auth
    auth._SALTS.clear()
    auth._draw_salts()
    parents_next = auth._SALTS[-1]
    pid = os.fork()
    if pid == 0:
        os._exit(0 if not auth._SALTS else 1)
    assert os.waitpid(pid, 0)[1] == 0 and auth._SALTS[-1] == parents_next


@pytest.mark.parametrize("password, user", [("wrong", "alice"), ("s3cret", "bob")])
def test_md5_wrong_password_or_user(in_machine, password, user):
    err, _, _, ok, _ = client_auth(in_machine, _rule("md5", "s3cret"), _md5_answer(password, user))
    assert (err.sqlstate, err.severity) == (error_codes.INVALID_PASSWORD, "FATAL")
    assert err.message == 'password authentication failed for user "alice"'
    assert not ok


def test_md5_replayed_hash_of_another_salt_fails(in_machine):
    def app_side(app):
        _auth_request(app)
        app.write(fe_write.password_message(md5_salted("alice", "s3cret", b"\0\0\0\0").encode() + b"\0"))

    err, _, _, _, _ = client_auth(in_machine, _rule("md5", "s3cret"), app_side)
    assert err.sqlstate == error_codes.INVALID_PASSWORD


def _answer_in_pieces(cuts):
    """The right md5 answer written in pieces ending at `cuts`, the pooler given a turn between."""
    def app_side(app):
        req = _auth_request(app)
        answer = fe_write.password_message(md5_salted("alice", "s3cret", req.salt).encode() + b"\0")
        assert len(answer) == auth._MD5_ANSWER_LEN
        start = 0
        for end in (*cuts, len(answer)):
            app.write(answer[start:end])
            start = end
            mm.sleep(20)            # the pooler reads what is there before the rest comes
    return app_side


@pytest.mark.parametrize("cuts", [(1,), (4,), (5,), (6,), (40,), (2, 5, 30)])
def test_md5_answer_in_pieces_is_read_whole(in_machine, cuts):
    """The md5 login reads a right answer by one recv of its 41 bytes; one that comes in pieces
    is finished by the general reads."""
    err, _, _, ok, _ = client_auth(in_machine, _rule("md5", "s3cret"), _answer_in_pieces(cuts))
    assert err is None and ok


@pytest.mark.parametrize("password, accepted", [("s3cret", True), ("wrong", False)])
def test_md5_answer_queued_before_the_request_is_read_at_once(in_machine, password, accepted):
    """An answer already queued on the socket when the request has been sent (FIONREAD tells
    its bytes) is read without a wait; the salt is known beforehand here (the next one drawn)."""
    def body():
        pooler, app = _pair()
        client = Client(pooler)
        client.user, client.database, client.rule = "alice", "db", _rule("md5", "s3cret")
        salt = b"\x01\x02\x03\x04"
        auth._SALTS.append(salt)
        try:
            app.write(fe_write.password_message(md5_salted("alice", password, salt).encode() + b"\0"))
            err = _raised(auth.authenticate_client, INSTANCE, client, 2000)
            assert _auth_request(app).salt == salt
            return err
        finally:
            pooler.close(), app.close()

    err = in_machine(body)
    if accepted:
        assert err is None
    else:
        assert (err.sqlstate, err.message) == (error_codes.INVALID_PASSWORD,
                                               'password authentication failed for user "alice"')


def test_md5_a_shorter_answer_is_refused_whatever_follows_it(in_machine):
    """A PasswordMessage shorter than a right answer (41 bytes) is refused, even when the bytes
    after it in the same read (the one recv of 41 bytes takes them too) are a right answer's."""
    def app_side(app):
        req = _auth_request(app)
        right = fe_write.password_message(md5_salted("alice", "s3cret", req.salt).encode() + b"\0")
        short = fe_write.password_message(b"md5\0")
        # all 41 bytes taken by the pooler's read (bytes left unread would make its close a reset)
        app.write(short + right[:auth._MD5_ANSWER_LEN - len(short)])

    err, _, _, ok, _ = client_auth(in_machine, _rule("md5", "s3cret"), app_side)
    assert (err.sqlstate, err.message) == (error_codes.INVALID_PASSWORD,
                                           'password authentication failed for user "alice"')
    assert not ok


@pytest.mark.parametrize("message", [
    b"Q" + (40).to_bytes(4, "big") + b"x" * 35 + b"\0",         # 41 bytes, another type
    b"X" + (4).to_bytes(4, "big"),                              # Terminate
    b"p" + (40).to_bytes(4, "big") + b"md5" + b"\0" + b"a" * 32,  # a NUL inside, 41 bytes
    b"p" + (41).to_bytes(4, "big") + b"a" * 35 + b"\0\0",          # longer: a NUL inside
    b"p" + (3).to_bytes(4, "big"),                              # a length below 4
])
def test_md5_a_malformed_answer_is_a_protocol_violation(in_machine, message):
    def app_side(app):
        _auth_request(app)
        app.write(message)

    err, _, _, ok, _ = client_auth(in_machine, _rule("md5", "s3cret"), app_side)
    assert (err.sqlstate, err.message) == (error_codes.PROTOCOL_VIOLATION, "bad password message")
    assert not ok


def _raised(fn, *args):
    """fn's exception, returned (a coroutine's own exception is a background error)."""
    try:
        fn(*args)
    except Exception as e:
        return e
    return None


@pytest.mark.parametrize("sent", [b"", b"p\x00\x00"])
def test_md5_eof_instead_of_an_answer_closes(in_machine, sent):
    def body():
        pooler, app = _pair()
        client = Client(pooler)
        client.user, client.database, client.rule = "alice", "db", _rule("md5", "s3cret")
        co = mm.Coroutine(_raised, auth.authenticate_client, INSTANCE, client, 2000)
        try:
            _auth_request(app)
            app.write(sent)
            app.close()
            assert isinstance(co.join(3000), mm.ConnectionClosed)
        finally:
            pooler.close(), app.close()

    in_machine(body)


def test_md5_no_answer_times_out(in_machine):
    def body():
        pooler, app = _pair()
        client = Client(pooler)
        client.user, client.database, client.rule = "alice", "db", _rule("md5", "s3cret")
        co = mm.Coroutine(_raised, auth.authenticate_client, INSTANCE, client, 50)
        try:
            _auth_request(app)
            assert isinstance(co.join(3000), mm.TimedOut)
        finally:
            pooler.close(), app.close()

    in_machine(body)


# -- SCRAM-SHA-256

def _scram(password, mechanism="SCRAM-SHA-256", tamper=None):
    """Play a SCRAM client; returns (mechanisms offered, server-final verified)."""
    def app_side(app):
        req = _auth_request(app)
        assert req.code == auth.AUTH_SASL
        scram = ScramClient(password)
        app.write(fe_write.sasl_initial_response(mechanism, scram.first()))
        try:
            cont = _auth_request(app)
        except mm.ConnectionClosed:          # refused: the pooler wrote nothing more
            return req.mechanisms, None
        assert cont.code == auth.AUTH_SASL_CONTINUE
        final = scram.final(cont.data)
        app.write(fe_write.sasl_response(tamper(final) if tamper else final))
        try:
            fin = _auth_request(app)
        except mm.ConnectionClosed:
            return req.mechanisms, None
        assert fin.code == auth.AUTH_SASL_FINAL
        scram.verify(fin.data)
        return req.mechanisms, True
    return app_side


@pytest.mark.parametrize("stored", ["plain", "secret"])
def test_scram_accepts_the_right_password(in_machine, stored):
    password = "s3cret" if stored == "plain" else make_secret("s3cret")
    err, _, (mechs, verified), ok, _ = client_auth(in_machine, _rule("scram-sha-256", password), _scram("s3cret"))
    assert err is None and ok and verified
    assert mechs == ("SCRAM-SHA-256",)


def test_scram_wrong_password_is_28000_like_odyssey(in_machine):
    err, _, (_, verified), ok, _ = client_auth(in_machine, _rule("scram-sha-256", "s3cret"), _scram("wrong"))
    assert (err.sqlstate, err.severity) == (error_codes.INVALID_AUTHORIZATION_SPECIFICATION, "FATAL")
    assert err.message == 'password authentication failed for user "alice"'
    assert verified is None and not ok


def test_scram_unsupported_mechanism(in_machine):
    err, _, _, ok, _ = client_auth(in_machine, _rule("scram-sha-256", "s3cret"),
                                   _scram("s3cret", mechanism="SCRAM-SHA-256-PLUS"))
    assert err.sqlstate == error_codes.INVALID_AUTHORIZATION_SPECIFICATION
    assert err.message == "frontend auth: unsupported SASL authorization mechanism"
    assert not ok


def test_scram_md5_hash_in_config_cannot_verify(in_machine):
    err, _, _, _, _ = client_auth(in_machine, _rule("scram-sha-256", md5_password("alice", "s3cret")),
                                  _scram("s3cret"))
    assert err.sqlstate == error_codes.INVALID_AUTHORIZATION_SPECIFICATION
    assert err.message == "frontend auth: invalid user password or SCRAM secret, check your config"


def test_scram_malformed_initial_response(in_machine):
    def app_side(app):
        _auth_request(app)
        app.write(b"p\0\0\0\x08abcd")            # no NUL after the mechanism

    err, _, _, _, _ = client_auth(in_machine, _rule("scram-sha-256", "s3cret"), app_side)
    assert err.sqlstate == error_codes.INVALID_AUTHORIZATION_SPECIFICATION
    assert err.message == "frontend auth: malformed SASLInitialResponse message"


def test_scram_channel_binding_request_is_refused(in_machine):
    def app_side(app):
        _auth_request(app)
        app.write(fe_write.sasl_initial_response("SCRAM-SHA-256", b"p=tls-server-end-point,,n=,r=abc"))

    err, _, _, _, _ = client_auth(in_machine, _rule("scram-sha-256", "s3cret"), app_side)
    assert err.message.startswith("frontend auth: ") and "channel binding" in err.message
    assert err.sqlstate != error_codes.INVALID_PASSWORD


def test_scram_tampered_nonce(in_machine):
    def tamper(final: bytes) -> bytes:
        return final.replace(b",r=", b",r=X", 1)

    err, _, _, ok, _ = client_auth(in_machine, _rule("scram-sha-256", "s3cret"), _scram("s3cret", tamper=tamper))
    assert err.message.startswith("frontend auth: ") and "nonce" in err.message
    assert not ok


# ----------------------------------------------------------------------------------------------
# backend_password

@pytest.mark.parametrize("rule_kw, client_password, expected", [
    ({"storage_password": "st", "password": "pw"}, "cl", "st"),
    ({"password": "pw"}, "cl", "pw"),
    ({"password_passthrough": True}, "cl", "cl"),
    ({"password_passthrough": False}, "cl", None),
    ({"password_passthrough": True}, None, None),
    ({}, None, None),
])
def test_backend_password_precedence(rule_kw, client_password, expected):
    client = Client(None)
    client.password = client_password
    assert auth.backend_password(_rule("none", **rule_kw), client) == expected


def test_backend_password_passthrough_without_a_client():
    assert auth.backend_password(_rule("none", password_passthrough=True), None) is None


# ----------------------------------------------------------------------------------------------
# backend side: backend_authenticate against a scripted PostgreSQL

def backend_auth(in_machine, request, pg_side, client=None, **rule_kw):
    """Run backend_authenticate(request) for route user "svc"; `pg_side(pg_io)` plays PostgreSQL.
    Returns (the BackendError raised or None, what pg_side returned, bytes left for pg)."""
    def body():
        pooler, pg = _pair()
        rule = _rule("none", **rule_kw)
        server = Server(Route(("db", "svc", 0), rule, "db", "svc"))
        server.io = pooler
        co = mm.Coroutine(pg_side, pg) if pg_side else None
        try:
            try:
                auth.backend_authenticate(INSTANCE, server, client, request, 2000)
                err = None
            except BackendError as e:
                err = e
            seen = co.join(3000) if co else None
            pooler.close()
            rest = bytearray()
            buf = bytearray(4096)
            while (n := pg.read_into(buf, 2000)) > 0:
                rest += buf[:n]
            return err, seen, bytes(rest)
        finally:
            pooler.close(), pg.close()

    return in_machine(body)


def _read_password(pg):
    t, payload = read_message(pg, 2000, FE_LIMITS)
    assert t == FE.PASSWORD_MESSAGE
    return be_read.read_password(payload)


def test_backend_auth_ok_writes_nothing(in_machine):
    err, _, rest = backend_auth(in_machine, fe_read.Authentication(auth.AUTH_OK), None)
    assert err is None and rest == b""


def test_backend_cleartext(in_machine):
    err, seen, rest = backend_auth(in_machine, fe_read.Authentication(auth.AUTH_CLEARTEXT), _read_password,
                                   password="pw", storage_password="storage-pw")
    assert err is None and seen == b"storage-pw" and rest == b""


def test_backend_md5_salts_with_the_route_user(in_machine):
    salt = b"\x09\x08\x07\x06"
    err, seen, _ = backend_auth(in_machine, fe_read.Authentication(auth.AUTH_MD5, salt), _read_password,
                                password="pw")
    assert err is None and seen == md5_salted("svc", "pw", salt).encode()


def test_backend_without_a_password_refuses(in_machine):
    err, _, rest = backend_auth(in_machine, fe_read.Authentication(auth.AUTH_MD5, b"abcd"), None)
    assert str(err) == "server requested authentication 5, but no password is configured"
    assert rest == b""


@pytest.mark.parametrize("code", [2, 6, 7, 9])      # KerberosV5, SCMCredential, GSS, SSPI
def test_backend_unsupported_method(in_machine, code):
    err, _, rest = backend_auth(in_machine, fe_read.Authentication(code), None, password="pw")
    assert str(err) == f"unsupported authentication method {code} requested by the server"
    assert rest == b""


def test_backend_sasl_without_scram_sha_256(in_machine):
    req = fe_read.Authentication(auth.AUTH_SASL, b"SCRAM-SHA-256-PLUS\0\0")
    err, _, rest = backend_auth(in_machine, req, None, password="pw")
    assert "unsupported SASL mechanisms" in str(err) and rest == b""


SASL = fe_read.Authentication(auth.AUTH_SASL, b"SCRAM-SHA-256\0\0")


def _scram_pg(password, final=None, error=None, cont_code=auth.AUTH_SASL_CONTINUE):
    """PostgreSQL's side of SCRAM with `password`; `final` replaces the server-final message,
    `error` is sent instead of SASLFinal when the proof is wrong."""
    def pg_side(pg):
        server = ScramServer(password)
        t, payload = read_message(pg, 2000, FE_LIMITS)
        mechanism, data = be_read.read_sasl_initial_response(payload)
        if cont_code != auth.AUTH_SASL_CONTINUE:
            pg.write(be_write.auth_ok())
            return mechanism
        pg.write(be_write.auth_sasl_continue(server.first(data)))
        t, payload = read_message(pg, 2000, FE_LIMITS)
        try:
            server_final = server.final(be_read.read_sasl_response(payload))
        except Exception:
            pg.write(be_write.error_response("FATAL", "28P01", 'password authentication failed for user "svc"'))
            return "refused"
        pg.write(be_write.auth_sasl_final(final if final is not None else server_final))
        return mechanism
    return pg_side


def test_backend_scram(in_machine):
    err, seen, rest = backend_auth(in_machine, SASL, _scram_pg("pw"), password="pw")
    assert err is None and seen == "SCRAM-SHA-256" and rest == b""


def test_backend_scram_against_a_stored_secret(in_machine):
    err, _, _ = backend_auth(in_machine, SASL, _scram_pg(make_secret("pw")), password="pw")
    assert err is None


def test_backend_scram_refused_carries_postgres_error(in_machine):
    err, seen, _ = backend_auth(in_machine, SASL, _scram_pg("other"), password="pw")
    assert seen == "refused"
    assert err.fields.sqlstate == "28P01" and str(err) == 'password authentication failed for user "svc"'


def test_backend_scram_bad_server_signature(in_machine):
    forged = b"v=" + base64.b64encode(b"\0" * 32)
    err, _, _ = backend_auth(in_machine, SASL, _scram_pg("pw", final=forged), password="pw")
    assert str(err).startswith("server SCRAM signature check failed")


def test_backend_scram_unexpected_step(in_machine):
    err, _, _ = backend_auth(in_machine, SASL, _scram_pg("pw", cont_code=auth.AUTH_OK), password="pw")
    assert str(err) == "unexpected message during SCRAM authentication"


# ----------------------------------------------------------------------------------------------
# auth_query: the secret comes from auth_query.fetch_secret (stubbed here)

def _aq(monkeypatch, secret=None, fails=False):
    from odyssey_gevent import auth_query

    def fetch(instance, client):
        if fails:
            raise auth_query.AuthQueryFailed("boom")
        return secret
    monkeypatch.setattr(auth_query, "fetch_secret", fetch)
    monkeypatch.setattr(INSTANCE, "auth_query_cache", auth_query.SecretCache(), raising=False)
    return dict(auth_query="SELECT $1", auth_query_db="postgres", auth_query_user="postgres")


def test_auth_query_md5_with_a_stored_hash(in_machine, monkeypatch):
    rule = _rule("md5", **_aq(monkeypatch, md5_password("alice", "pw")))
    err, client, _, ok, _ = client_auth(in_machine, rule, _md5_answer("pw"))
    assert err is None and ok and client.auth_secret == md5_password("alice", "pw")
    assert auth.backend_password(_rule("none"), client) == md5_password("alice", "pw")


@pytest.mark.parametrize("secret", [None, make_secret("pw")])
def test_auth_query_md5_without_a_usable_secret_fails_like_a_wrong_password(in_machine, monkeypatch, secret):
    rule = _rule("md5", **_aq(monkeypatch, secret))
    err, _, _, ok, _ = client_auth(in_machine, rule, _md5_answer("pw"))
    assert (err.sqlstate, err.message) == (error_codes.INVALID_PASSWORD,
                                           'password authentication failed for user "alice"')
    assert not ok


def test_auth_query_failure_is_28000(in_machine, monkeypatch):
    rule = _rule("md5", **_aq(monkeypatch, fails=True))
    err, _, _, ok, rest = client_auth(in_machine, rule, lambda app: None)
    assert (err.sqlstate, err.severity, err.message) == (
        error_codes.INVALID_AUTHORIZATION_SPECIFICATION, "FATAL", "failed to make auth query")
    assert rest == b""


def test_auth_query_scram_unknown_user_runs_the_exchange_then_fails(in_machine, monkeypatch):
    rule = _rule("scram-sha-256", **_aq(monkeypatch, None))
    err, _, (_, verified), ok, _ = client_auth(in_machine, rule, _scram("pw"))
    assert err.message == 'password authentication failed for user "alice"' and not ok


def test_auth_query_scram_keeps_the_proved_client_key(in_machine, monkeypatch):
    from kiwi.scram import client_key_of, parse_secret, salted_password
    verifier = make_secret("pw")
    rule = _rule("scram-sha-256", **_aq(monkeypatch, verifier))
    err, client, (_, verified), ok, _ = client_auth(in_machine, rule, _scram("pw"))
    assert err is None and ok and verified
    parsed = parse_secret(verifier)
    assert client.scram_keys == (client_key_of(salted_password("pw", parsed.salt, parsed.iterations)),
                                 parsed.server_key)
    assert auth.backend_password(_rule("none"), client) is None     # a verifier is no password


def test_auth_query_failed_login_forgets_the_cached_secret(in_machine, monkeypatch):
    rule = _rule("md5", **_aq(monkeypatch, "pw"))
    key = INSTANCE.auth_query_cache.key(rule, "alice", None)
    INSTANCE.auth_query_cache.put(key, "pw")
    err, _, _, _, _ = client_auth(in_machine, rule, _md5_answer("wrong"))
    assert err is not None and INSTANCE.auth_query_cache.get(key) is None


def _passthrough_client(user="svc"):
    from kiwi.scram import client_key_of, parse_secret, salted_password
    verifier = make_secret("pw")
    parsed = parse_secret(verifier)
    client = Client(None)
    client.user = user
    client.scram_keys = (client_key_of(salted_password("pw", parsed.salt, parsed.iterations)), parsed.server_key)
    return verifier, client


def test_backend_scram_passthrough_with_the_client_key(in_machine):
    verifier, client = _passthrough_client()
    err, seen, rest = backend_auth(in_machine, SASL, _scram_pg(verifier), client=client)
    assert err is None and seen == "SCRAM-SHA-256" and rest == b""


def test_backend_passthrough_only_for_the_clients_own_role(in_machine):
    verifier, client = _passthrough_client("someone_else")
    err, _, _ = backend_auth(in_machine, SASL, None, client=client)
    assert "no password is configured" in str(err)


def test_backend_md5_request_cannot_use_a_client_key(in_machine):
    _, client = _passthrough_client()
    err, _, _ = backend_auth(in_machine, fe_read.Authentication(auth.AUTH_MD5, b"abcd"), None, client=client)
    assert "no password is configured" in str(err)


def test_md5_stored_forms_are_kept_per_user_and_password_and_bounded():
    """An md5 login salts the user's stored form kept from an earlier login; the key holds the
    password, so a changed one is hashed anew, and the cache is emptied when it is full."""
    from odyssey_gevent import auth

    auth._MD5_STORED.clear()
    first = auth._stored_md5("alice", "secret")
    assert first == md5_password("alice", "secret").encode()
    assert auth._stored_md5("alice", "secret") is first
    assert auth._stored_md5("alice", "changed") == md5_password("alice", "changed").encode()
    for i in range(auth._MD5_KEEP + 1):
        auth._stored_md5(f"u{i}", "p")
    assert len(auth._MD5_STORED) <= auth._MD5_KEEP
    auth._MD5_STORED.clear()
