"""Authentication: the client to us (by the rule's `authentication`) and us to PostgreSQL
(mirrors Odyssey sources/auth.c).

Client side modes: none, block, clear_text, md5, scram-sha-256 against the rule's password, or
against the secret the rule's auth_query fetched (auth_query.py).
Backend side: cleartext, md5 and SCRAM-SHA-256 with storage_password, else the rule's password,
else the client's own (password_passthrough, the auth_query secret, or the SCRAM ClientKey the
client proved against an auth_query verifier).
"""
from __future__ import annotations

import hmac
import os
import secrets
from fcntl import ioctl as _ioctl

try:
    from termios import FIONREAD as _FIONREAD
except ImportError:
    _FIONREAD = None

from kiwi import be_read, be_write, error_codes, fe_read, fe_write
from kiwi.errors import KiwiError, ProtocolError
from kiwi.framer import read_header
from kiwi.header import BE, FE
from kiwi.md5 import md5 as _md5, md5_salted, md5_stored     # (_md5: kiwi's choice of MD5)
from kiwi.scram import ScramClient, ScramSecret, ScramServer, is_secret, parse_secret
from machinarium import ConnectionClosed, TimedOut
from odyssey_gevent import auth_query
from odyssey_gevent.io import BE_LIMITS, FE_LIMITS, read_message
from odyssey_gevent.status import BackendError, FrontendError

AUTH_OK, AUTH_CLEARTEXT, AUTH_MD5, AUTH_SASL, AUTH_SASL_CONTINUE, AUTH_SASL_FINAL = 0, 3, 5, 10, 11, 12


def _password_failed(client) -> FrontendError:
    return FrontendError(error_codes.INVALID_PASSWORD,
                         f'password authentication failed for user "{client.user}"', severity="FATAL")


def _read_password_message(client, timeout_ms) -> bytes:
    mtype, payload = read_message(client.io, timeout_ms, FE_LIMITS)
    if mtype != FE.PASSWORD_MESSAGE:
        raise FrontendError(error_codes.PROTOCOL_VIOLATION, "bad password message")
    return payload


# AuthenticationOk, for a caller that sends it together with what follows it (send_ok=False)
AUTH_OK_MESSAGE = be_write.auth_ok()

# md5 salts: 4 bytes of os.urandom per login, drawn for _SALT_BATCH logins at a time (one
# getrandom system call per 256 md5 logins instead of one each). Each login takes bytes of its
# own that no other gets, as unpredictable as before (see client._RANDOM); list.pop is atomic
# under the GIL (the workers' threads share the list); a forked child empties it.
_SALTS: list = []
_SALT_BATCH = 256


def _draw_salts() -> bytes:
    """Refill _SALTS; return the first login's salt of the new draw."""
    block = os.urandom(4 * _SALT_BATCH)
    _SALTS.extend([block[i:i + 4] for i in range(4, len(block), 4)])
    return block[:4]


def _new_salt() -> bytes:
    """A login's own 4 salt bytes (from _SALTS, refilled when empty)."""
    try:
        return _SALTS.pop()
    except IndexError:
        return _draw_salts()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_SALTS.clear)


def authenticate_client(instance, client, timeout_ms: int | None, send_ok: bool = True) -> None:
    """Run the rule's authentication with the client; raises FrontendError on refusal. With
    `send_ok` False the caller owes the client AUTH_OK_MESSAGE."""
    rule = client.rule
    mode = rule.authentication
    secret = rule.password
    cache_key = None
    if mode in ("clear_text", "md5", "scram-sha-256"):
        # (the usual rule names none of them: four attribute reads, not four getattr calls)
        if rule.ldap_endpoint_name or rule.auth_pam_service or rule.auth_module or rule.enable_mdb_iamproxy_auth:
            for keyword in ("ldap_endpoint_name", "auth_pam_service", "auth_module",
                            "enable_mdb_iamproxy_auth"):
                if getattr(rule, keyword) and (mode != "clear_text" or _external_checker(keyword) is None):
                    raise FrontendError(error_codes.FEATURE_NOT_SUPPORTED, f"{keyword} is not supported yet")
        if rule.auth_query:
            try:
                secret = auth_query.fetch_secret(instance, client)
            except auth_query.AuthQueryFailed:
                raise FrontendError(error_codes.INVALID_AUTHORIZATION_SPECIFICATION,
                                    "failed to make auth query", severity="FATAL") from None
            cache_key = instance.auth_query_cache.key(rule, client.user, client.peer_host)
        elif mode == "md5" and not client.io._tls:
            # the usual md5 login (a password in the rule, a plain socket): _authenticate's md5
            # steps here, without the frames of _authenticate, read_message, two Io.read, the
            # header and password parsers, auth_md5, is_secret and Io.write (about 15 per login)
            _md5_plain(client, timeout_ms, secret)
            if send_ok:
                client.io.write(AUTH_OK_MESSAGE)
            return
    try:
        _authenticate(instance, client, timeout_ms, mode, secret)
    except FrontendError:
        if cache_key is not None:          # the password may have changed: ask again next time
            instance.auth_query_cache.forget(cache_key)
        raise
    if rule.auth_query and mode in ("clear_text", "md5", "scram-sha-256"):
        client.auth_secret = secret
    if send_ok:
        client.io.write(AUTH_OK_MESSAGE)


def _authenticate(instance, client, timeout_ms, mode: str, secret: str | None) -> None:
    """One authentication exchange against `secret` (None: nothing can match)."""
    if mode == "none":
        pass
    elif mode == "block":
        instance.logger.info("auth", client, None, "user '%s.%s' is blocked", client.database, client.user)
        raise FrontendError(error_codes.INVALID_AUTHORIZATION_SPECIFICATION,
                            f"user blocked: {client.database} {client.user}", severity="FATAL")
    elif mode == "clear_text":
        client.io.write(be_write.auth_cleartext())
        try:
            given = be_read.read_password(_read_password_message(client, timeout_ms))
        except ProtocolError:
            raise FrontendError(error_codes.PROTOCOL_VIOLATION, "bad password message") from None
        external = _external_check(instance, client, given.rstrip(b"\0").decode("utf-8", "replace"))
        if external is not None:           # LDAP, PAM or an auth module decides
            if not external:
                raise _password_failed(client)
            client.password = given.rstrip(b"\0").decode("utf-8", "replace")
            return
        # byte-exact, as C: a stored md5 hash or SCRAM verifier never matches a plaintext
        expected = secret.encode() if secret is not None else secrets.token_bytes(32)
        if not hmac.compare_digest(given.rstrip(b"\0"), expected):
            raise _password_failed(client)
        client.password = given.rstrip(b"\0").decode("utf-8", "replace")
    elif mode == "md5":
        salt = _new_salt()
        client.io.write(be_write.auth_md5(salt))
        try:
            given = be_read.read_password(_read_password_message(client, timeout_ms))
        except ProtocolError:
            raise FrontendError(error_codes.PROTOCOL_VIOLATION, "bad password message") from None
        _md5_check(client, secret, salt, given)
    elif mode == "scram-sha-256":
        _scram_client(instance, client, timeout_ms, secret)
    elif mode == "cert":                   # the TLS client certificate's CN (auth_cert.py)
        from odyssey_gevent import auth_cert
        auth_cert.authenticate(instance, client)
    else:
        raise FrontendError(error_codes.FEATURE_NOT_SUPPORTED,
                            f"authentication method '{mode}' is not supported yet")


# AuthenticationMD5Password before its 4 salt bytes, and the header of the client's answer as
# every client sends it: a PasswordMessage of "md5" + 32 hex digits + NUL (41 bytes in all)
_MD5_REQUEST = be_write.auth_md5(b"\0\0\0\0")[:-4]
_MD5_ANSWER_HEAD = b"p\x00\x00\x00\x28"
_MD5_ANSWER_LEN = 41
_NONE_QUEUED = b"\0\0\0\0"          # FIONREAD's int (4 bytes) when nothing is queued
_SCRAM_PREFIX = "SCRAM-SHA-256$"


def _md5_plain(client, timeout_ms, secret) -> None:
    """_authenticate's md5 exchange on a plain socket, its usual case inline: the request sent
    by one send, the answer read by one recv of the 41 bytes a right answer has. A client sends
    nothing after its PasswordMessage until it is answered, and any first message other than
    41 bytes fails the login (the answer is "md5" + 32 hex digits + NUL, exactly), so bytes such
    a recv takes beyond a shorter message are never needed: the connection is refused. Anything
    else (an answer in pieces, another message, EOF) is read and refused as read_message and
    read_password do it."""
    io = client.io
    raw = io._raw
    salt = _new_salt()
    request = _MD5_REQUEST + salt
    # os.write and os.read on the socket's fd (see worker._spawn), its fileno() asked again
    # after a wait (the socket may have been closed meanwhile, its number reused)
    try:
        n = os.write(raw.fileno(), request)
    except BlockingIOError:
        n = 0
    if n != len(request):
        io.write(request[n:])
    # the answer is usually not there yet (the client answers the request just sent): asked
    # first with FIONREAD (the bytes queued on the socket), as a read that finds nothing raises
    # BlockingIOError, whose OSError (its strerror decoded by the locale), traceback and except
    # clause cost about 6,700 instructions, the ioctl about 2,000 with its buffer. (The buffer a
    # bytearray, one per call as the workers' threads log in side by side: ioctl parses its
    # argument as a writable buffer first, and a bytes
    # one cost an error message formatted and dropped, about 4,300 instructions more)
    data = None
    queued = bytearray(4)
    if _FIONREAD is None or _ioctl(raw.fileno(), _FIONREAD, queued) or queued != _NONE_QUEUED:
        try:
            data = os.read(raw.fileno(), _MD5_ANSWER_LEN)
        except BlockingIOError:
            pass
    if data is None:
        # not there yet: one timed wait, then the same recv (as Io.read's first wait)
        if timeout_ms is not None:
            waited = io._wait_read_timed(timeout_ms)
            if waited is False:
                raise TimedOut("read timed out")
            if waited:
                try:
                    data = os.read(raw.fileno(), _MD5_ANSWER_LEN)
                except BlockingIOError:
                    pass
    # 41 bytes, the header of a 36-byte PasswordMessage, its one NUL the last byte
    if data is not None and len(data) == _MD5_ANSWER_LEN and data.startswith(_MD5_ANSWER_HEAD) \
            and data.find(b"\0", 5) == 40:
        given = data[5:40]
    else:
        given = _password_from(client, data, timeout_ms)
    _md5_check(client, secret, salt, given)


def _md5_check(client, secret, salt: bytes, given: bytes) -> None:
    """Refuse the login unless `given` (the PasswordMessage's string, without its NUL) is the
    md5 answer to `salt` for the rule's password `secret`. A stored md5 hash or SCRAM verifier
    (or no password) never matches: a made-up answer is compared all the same."""
    if secret.__class__ is str and not secret.startswith(_SCRAM_PREFIX):
        usable = True               # (is_secret's first test, without its frame)
    else:
        usable = secret is not None and not is_secret(secret)
    if usable:
        stored = _MD5_STORED.get((client.user, secret))
        if stored is None:
            stored = _stored_md5(client.user, secret)
        # md5_salted_stored inline (salt: 4 bytes)
        expected = b"md5" + _md5(stored[3:] + salt).hexdigest().encode()
    else:
        expected = md5_salted(client.user, secrets.token_hex(16), salt).encode()
    if not hmac.compare_digest(given, expected) or not usable:
        raise _password_failed(client)


def _password_from(client, head, timeout_ms) -> bytes:
    """The password of a PasswordMessage whose first bytes `head` are (None: none read yet;
    possibly more than a shorter message, see _md5_plain), the rest read, checked and refused as
    _read_password_message and read_password do it."""
    try:
        if head is None:
            payload = _read_password_message(client, timeout_ms)
        else:
            io = client.io
            if not head:
                raise ConnectionClosed("connection closed by peer (0 of 5 bytes)")
            if len(head) < 5:
                head += io.read(5 - len(head), timeout_ms)
            mtype, size = read_header(head, 0, FE_LIMITS)
            if mtype != FE.PASSWORD_MESSAGE:
                raise FrontendError(error_codes.PROTOCOL_VIOLATION, "bad password message")
            payload = head[5:5 + size]
            if len(payload) < size:
                payload += io.read(size - len(payload), timeout_ms)
        return be_read.read_password(payload)
    except ProtocolError:
        raise FrontendError(error_codes.PROTOCOL_VIOLATION, "bad password message") from None


# (user, password) -> its md5 stored form: the same for every login of a user, where hashing a
# plain password cost each md5 login one more MD5 and its set-up. Emptied when it grows past
# _MD5_KEEP (a password changed by a reload or auth_query leaves a stale entry, never a wrong one:
# the key holds the password)
_MD5_STORED: dict = {}
_MD5_KEEP = 1024


def _stored_md5(user: str, password: str) -> bytes:
    key = (user, password)
    stored = _MD5_STORED.get(key)
    if stored is None:
        if len(_MD5_STORED) >= _MD5_KEEP:
            _MD5_STORED.clear()
        stored = _MD5_STORED[key] = md5_stored(user, password)
    return stored


# clear_text rules that name one of these keywords have the password checked by that module's
# `check(instance, client, password) -> bool` (C's order: LDAP, auth module, PAM); a module that
# is not there leaves the keyword refused with 0A000
_EXTERNAL = (("ldap_endpoint_name", "odyssey_gevent.auth_ldap"), ("auth_module", "odyssey_gevent.auth_module"),
             ("auth_pam_service", "odyssey_gevent.auth_pam"))


def _external_checker(keyword: str):
    import importlib
    for kw, module in _EXTERNAL:
        if kw == keyword:
            try:
                return importlib.import_module(module).check
            except ImportError:
                return None
    return None


def _external_check(instance, client, password: str):
    """True/False when a module decides this clear_text login, None when the rule password does."""
    rule = client.rule
    for keyword, _ in _EXTERNAL:
        if getattr(rule, keyword, None):
            checker = _external_checker(keyword)
            if checker is not None:
                return bool(checker(instance, client, password))
    return None


def _mock_secret() -> ScramSecret:
    """A verifier nobody can prove (an unknown user still goes through the whole exchange)."""
    return ScramSecret(4096, secrets.token_bytes(16), secrets.token_bytes(32), secrets.token_bytes(32))


def _scram_client(instance, client, timeout_ms, secret) -> None:
    mechanisms = ["SCRAM-SHA-256"]
    client.io.write(be_write.auth_sasl(mechanisms))
    try:
        mechanism, data = be_read.read_sasl_initial_response(_read_password_message(client, timeout_ms))
    except ProtocolError:
        raise FrontendError(error_codes.INVALID_AUTHORIZATION_SPECIFICATION,
                            "frontend auth: malformed SASLInitialResponse message") from None
    if mechanism != "SCRAM-SHA-256":
        raise FrontendError(error_codes.INVALID_AUTHORIZATION_SPECIFICATION,
                            "frontend auth: unsupported SASL authorization mechanism")
    try:
        server = ScramServer(secret if secret is not None else _mock_secret())
    except (KiwiError, ValueError):
        raise FrontendError(error_codes.INVALID_AUTHORIZATION_SPECIFICATION,
                            "frontend auth: invalid user password or SCRAM secret, check your config") from None
    try:
        client.io.write(be_write.auth_sasl_continue(server.first(data)))
        response = be_read.read_sasl_response(_read_password_message(client, timeout_ms))
        final = server.final(response)
    except KiwiError as e:
        if e.sqlstate == error_codes.INVALID_PASSWORD:
            raise FrontendError(error_codes.INVALID_AUTHORIZATION_SPECIFICATION,
                                f'password authentication failed for user "{client.user}"',
                                severity="FATAL") from None
        raise FrontendError(e.sqlstate or error_codes.INVALID_AUTHORIZATION_SPECIFICATION,
                            f"frontend auth: {e}") from None
    client.io.write(be_write.auth_sasl_final(final))
    if client.rule.auth_query and secret is not None and is_secret(secret):
        # SCRAM passthrough: the client proved the ClientKey of PostgreSQL's own verifier
        client.scram_keys = (server.client_key, parse_secret(secret).server_key)


def backend_password(rule, client) -> str | None:
    if rule.storage_password is not None:
        return rule.storage_password
    if rule.password is not None:
        return rule.password
    if rule.password_passthrough and client is not None and client.password is not None:
        return client.password
    if client is not None and client.auth_secret is not None and not is_secret(client.auth_secret):
        return client.auth_secret          # auth_query's plain password or md5 hash
    return None


def backend_authenticate(instance, server, client, request, timeout_ms: int) -> None:
    """Answer one Authentication request of PostgreSQL during backend startup."""
    rule = server.route.rule
    code = request.code
    if code == AUTH_OK:
        return
    if client is not None and client.user != server.route.user:
        client = None                      # the client's own credentials are for its own role
    password = backend_password(rule, client)
    keys = client.scram_keys if client is not None and password is None else None
    if password is None and not (keys and code == AUTH_SASL):
        raise _backend_error(f"server requested authentication {code}, but no password is configured")
    io = server.io
    if code == AUTH_CLEARTEXT:
        io.write(fe_write.password_message(password.encode() + b"\0"))
    elif code == AUTH_MD5:
        io.write(fe_write.password_message(md5_salted(server.route.user, password, request.data).encode()
                                           + b"\0"))
    elif code == AUTH_SASL:
        mechanisms = request.mechanisms
        if "SCRAM-SHA-256" not in mechanisms:
            raise _backend_error(f"unsupported SASL mechanisms {mechanisms}")
        if password is not None:
            scram = ScramClient(password)
        else:
            scram = ScramClient(client_key=keys[0], server_key=keys[1])
        io.write(fe_write.sasl_initial_response("SCRAM-SHA-256", scram.first()))
        cont = _read_sasl_step(io, AUTH_SASL_CONTINUE, timeout_ms)
        io.write(fe_write.sasl_response(scram.final(bytes(cont.data))))
        fin = _read_sasl_step(io, AUTH_SASL_FINAL, timeout_ms)
        try:
            scram.verify(bytes(fin.data))
        except KiwiError as e:
            raise _backend_error(f"server SCRAM signature check failed: {e}") from None
    else:
        raise _backend_error(f"unsupported authentication method {code} requested by the server")


def _read_sasl_step(io, code: int, timeout_ms: int):
    """The server's next SASL message, which must be Authentication `code`."""
    mtype, payload = read_message(io, timeout_ms, BE_LIMITS)
    if mtype == BE.ERROR_RESPONSE:
        fields = fe_read.read_error(payload)
        raise _backend_error(fields.message, fields)
    request = fe_read.read_authentication(payload) if mtype == BE.AUTHENTICATION else None
    if request is None or request.code != code:
        raise _backend_error("unexpected message during SCRAM authentication")
    return request


def _backend_error(message: str, fields=None):
    return BackendError(message, fields)
