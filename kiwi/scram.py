"""kiwi.scram: SCRAM-SHA-256 (RFC 5802/7677) for both sides, as PostgreSQL speaks it
(Odyssey scram.c / PostgreSQL auth-scram.c and fe-auth-scram.c).

Hand-written rather than built on scramp because the pooler needs things scramp's API does
not give: logging into PostgreSQL with only a ClientKey (SCRAM passthrough: the key is
recovered from a client's proof, ``ScramServer.client_key``), PostgreSQL's SASLprep
fallback to the raw password bytes, and errors that carry Odyssey's SQLSTATEs.

* ``ScramServer`` checks a client against a plain password or a stored secret
  ``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>``.
* ``ScramClient`` logs into PostgreSQL with a password or with ``client_key``/``server_key``
  and verifies the server's signature.

No channel binding: the server accepts the gs2 flags "n" and "y" (it never offers
SCRAM-SHA-256-PLUS) and rejects "p" with 0A000, like an authzid or a mandatory extension.
Malformed messages give 28000 as in Odyssey; a wrong proof gives ``BAD_PROOF_SQLSTATE``.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from kiwi import error_codes
from kiwi.errors import CLIENT, SERVER, KiwiError
from kiwi.md5 import is_md5_hash
from kiwi.saslprep import scram_password_bytes

__all__ = [
    "SCRAM_SHA_256", "DEFAULT_ITERATIONS", "BAD_PROOF_SQLSTATE", "ScramError", "ScramSecret",
    "ScramServer", "ScramClient", "parse_secret", "make_secret", "is_secret",
    "salted_password", "client_key_of", "server_key_of", "stored_key_of",
]

SCRAM_SHA_256 = "SCRAM-SHA-256"
DEFAULT_ITERATIONS = 4096   # PostgreSQL's scram_iterations default
SALT_LEN = 16               # SCRAM_DEFAULT_SALT_LEN
NONCE_LEN = 18              # SCRAM_RAW_NONCE_LEN
KEY_LEN = 32
# PostgreSQL answers a wrong SCRAM password with 28P01 (invalid_password). Odyssey 1.5
# itself sends 28000 there; the pooler follows PostgreSQL, which drivers map to
# "invalid password".
BAD_PROOF_SQLSTATE = error_codes.INVALID_PASSWORD


class ScramError(KiwiError):
    default_sqlstate = error_codes.INVALID_AUTHORIZATION_SPECIFICATION
    default_severity = "ERROR"


def _malformed(what: str, side: str = CLIENT) -> ScramError:
    return ScramError(what, error_codes.INVALID_AUTHORIZATION_SPECIFICATION, side=side)


def _unsupported(what: str) -> ScramError:
    return ScramError(what, error_codes.FEATURE_NOT_SUPPORTED, side=CLIENT)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _unb64(text: str, what: str, side: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise _malformed(f"{what}: invalid base64", side) from None


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.digest(key, msg, "sha256")


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


def salted_password(password, salt: bytes, iterations: int) -> bytes:
    """Hi(SASLprep(password), salt, i) = PBKDF2-HMAC-SHA-256."""
    return hashlib.pbkdf2_hmac("sha256", scram_password_bytes(password), salt, iterations)


def client_key_of(salted: bytes) -> bytes:
    return _hmac(salted, b"Client Key")


def server_key_of(salted: bytes) -> bytes:
    return _hmac(salted, b"Server Key")


def stored_key_of(client_key: bytes) -> bytes:
    return hashlib.sha256(client_key).digest()


@dataclass(frozen=True)
class ScramSecret:
    iterations: int
    salt: bytes
    stored_key: bytes
    server_key: bytes

    def __str__(self) -> str:
        return (f"{SCRAM_SHA_256}${self.iterations}:{_b64(self.salt)}"
                f"${_b64(self.stored_key)}:{_b64(self.server_key)}")


def parse_secret(text) -> ScramSecret:
    """Parse a stored secret; ``ScramError`` (28000) when it is not one."""
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8", "replace")
    try:
        scheme, iter_salt, keys = text.split("$")
        iterations_s, salt_s = iter_salt.split(":")
        stored_s, server_s = keys.split(":")
    except ValueError:
        raise _bad_secret() from None
    if scheme != SCRAM_SHA_256 or not iterations_s.isdigit() or not iterations_s.isascii():
        raise _bad_secret()
    iterations = int(iterations_s)
    try:
        salt = base64.b64decode(salt_s.encode("ascii"), validate=True)
        stored = base64.b64decode(stored_s.encode("ascii"), validate=True)
        server = base64.b64decode(server_s.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise _bad_secret() from None
    if iterations < 1 or not salt or len(stored) != KEY_LEN or len(server) != KEY_LEN:
        raise _bad_secret()
    return ScramSecret(iterations, salt, stored, server)


def _bad_secret() -> ScramError:
    return _malformed("invalid SCRAM secret")


def is_secret(text) -> bool:
    # a plain password or md5 hash (every md5 login asks): no parse and no ScramError made
    if isinstance(text, str) and not text.startswith(SCRAM_SHA_256 + "$"):
        return False
    try:
        parse_secret(text)
    except ScramError:
        return False
    return True


def make_secret(password, iterations: int = DEFAULT_ITERATIONS, salt: bytes | None = None) -> str:
    """A stored secret for ``password``, as PostgreSQL's password_encryption=scram-sha-256."""
    salt = salt if salt is not None else secrets.token_bytes(SALT_LEN)
    salted = salted_password(password, salt, iterations)
    return str(ScramSecret(iterations, salt, stored_key_of(client_key_of(salted)),
                           server_key_of(salted)))


def _printable(nonce: str) -> bool:
    return bool(nonce) and all(0x21 <= ord(c) <= 0x7E and c != "," for c in nonce)


def _text(data, what: str, side: str) -> str:
    try:
        return bytes(data).decode("utf-8")
    except (UnicodeDecodeError, TypeError):
        raise _malformed(f"{what}: invalid encoding", side) from None


def _escape_name(name: str) -> str:
    return name.replace("=", "=3D").replace(",", "=2C")


class ScramServer:
    """Server side of one SCRAM exchange: ``first(client_first) -> server_first``, then
    ``final(client_final) -> server_final``. After a successful ``final`` the client's
    ``client_key`` is known (for passthrough); ``server_key``/``stored_key`` always are."""

    def __init__(self, secret_or_password, iterations: int = DEFAULT_ITERATIONS, *,
                 salt: bytes | None = None, nonce: str | None = None) -> None:
        self.salted_password: bytes | None = None
        if isinstance(secret_or_password, ScramSecret):
            secret = secret_or_password
        elif is_secret(secret_or_password):
            secret = parse_secret(secret_or_password)
        elif is_md5_hash(secret_or_password):
            raise _malformed("invalid user password or SCRAM secret, check your config")
        else:
            salt = salt if salt is not None else secrets.token_bytes(SALT_LEN)
            self.salted_password = salted_password(secret_or_password, salt, iterations)
            ck = client_key_of(self.salted_password)
            secret = ScramSecret(iterations, salt, stored_key_of(ck),
                                 server_key_of(self.salted_password))
        self.secret = secret
        self.stored_key = secret.stored_key
        self.server_key = secret.server_key
        self.client_key: bytes | None = None
        self._server_nonce = nonce if nonce is not None else _b64(secrets.token_bytes(NONCE_LEN))
        self.gs2_header = ""
        self.username = ""
        self.client_first_bare = ""
        self.server_first_message = ""
        self.nonce = ""
        self.auth_message = b""

    def first(self, client_first) -> bytes:
        if self.server_first_message:
            raise RuntimeError("ScramServer.first() called twice")
        msg = _text(client_first or b"", "malformed SASLInitialResponse message", CLIENT)
        if msg.startswith("p="):
            raise _unsupported("doesn't support channel binding at the moment")
        if len(msg) < 2 or msg[0] not in "ny" or msg[1] != ",":
            raise _malformed("malformed SASLInitialResponse message")
        rest = msg[2:]
        if rest.startswith("a="):
            raise _unsupported("doesn't support authorization identity at the moment")
        if not rest.startswith(","):
            raise _malformed("malformed SASLInitialResponse message")
        self.gs2_header = msg[:3]
        bare = rest[1:]
        if bare.startswith("m="):
            raise _unsupported("doesn't support mandatory extensions at the moment")
        attrs = bare.split(",")
        if len(attrs) < 2 or not attrs[0].startswith("n=") or not attrs[1].startswith("r="):
            raise _malformed("malformed SASLInitialResponse message")
        client_nonce = attrs[1][2:]
        if not _printable(client_nonce) or any(len(a) < 2 or a[1] != "=" for a in attrs[2:]):
            raise _malformed("malformed SASLInitialResponse message")
        self.username = attrs[0][2:].replace("=2C", ",").replace("=3D", "=")
        self.client_first_bare = bare
        self.nonce = client_nonce + self._server_nonce
        self.server_first_message = (f"r={self.nonce},s={_b64(self.secret.salt)},"
                                     f"i={self.secret.iterations}")
        return self.server_first_message.encode("ascii")

    def final(self, client_final) -> bytes:
        if not self.server_first_message:
            raise RuntimeError("ScramServer.final() called before first()")
        msg = _text(client_final or b"", "malformed client SASLResponse", CLIENT)
        attrs = msg.split(",")
        if (len(attrs) < 3 or not attrs[0].startswith("c=") or not attrs[1].startswith("r=")
                or not attrs[-1].startswith("p=")
                or any(len(a) < 2 or a[1] != "=" for a in attrs[2:-1])):
            raise _malformed("malformed client SASLResponse")
        cbind = _unb64(attrs[0][2:], "malformed client SASLResponse", CLIENT)
        if cbind != self.gs2_header.encode("ascii"):
            raise _malformed("malformed client SASLResponse: channel binding check failed")
        if attrs[1][2:] != self.nonce:
            raise _malformed("malformed client SASLResponse: nonce doesn't match")
        proof = _unb64(attrs[-1][2:], "malformed client SASLResponse", CLIENT)
        if len(proof) != KEY_LEN:
            raise _malformed("malformed client SASLResponse: invalid proof length")
        without_proof = msg[:msg.rindex(",p=")]
        self.auth_message = ",".join((self.client_first_bare, self.server_first_message,
                                      without_proof)).encode("utf-8")
        client_key = _xor(proof, _hmac(self.stored_key, self.auth_message))
        if not hmac.compare_digest(stored_key_of(client_key), self.stored_key):
            raise ScramError("password authentication failed", BAD_PROOF_SQLSTATE,
                             severity="FATAL", side=CLIENT)
        self.client_key = client_key
        return ("v=" + _b64(_hmac(self.server_key, self.auth_message))).encode("ascii")


class ScramClient:
    """Client side: ``first() -> client_first``, ``final(server_first) -> client_final``,
    ``verify(server_final)``. Give ``password``, or ``client_key`` (and ``server_key`` to
    verify the server) for SCRAM passthrough. PostgreSQL ignores the SCRAM user name (the
    startup packet names the user), so ``user`` defaults to ""."""

    def __init__(self, password=None, *, user: str = "", nonce: str | None = None,
                 client_key: bytes | None = None, server_key: bytes | None = None) -> None:
        if (password is None) == (client_key is None):
            raise ValueError("give either password or client_key")
        self.password = password
        self.client_key = client_key
        self.server_key = server_key
        self.stored_key = stored_key_of(client_key) if client_key is not None else None
        self.salted_password: bytes | None = None
        self.salt = b""
        self.iterations = 0
        self.client_nonce = nonce if nonce is not None else _b64(secrets.token_bytes(NONCE_LEN))
        if not _printable(self.client_nonce):
            raise ValueError("nonce must be printable ASCII without ','")
        self.client_first_bare = f"n={_escape_name(user)},r={self.client_nonce}"
        self.auth_message = b""
        self._server_signature = b""

    def first(self) -> bytes:
        return ("n,," + self.client_first_bare).encode("utf-8")

    def final(self, server_first) -> bytes:
        msg = _text(server_first or b"", "invalid SCRAM server-first message", SERVER)
        attrs = msg.split(",")
        bad = _malformed("invalid SCRAM server-first message", SERVER)
        if len(attrs) < 3 or [a[:2] for a in attrs[:3]] != ["r=", "s=", "i="]:
            raise bad
        nonce, salt_b64, iter_s = attrs[0][2:], attrs[1][2:], attrs[2][2:]
        if (not nonce.startswith(self.client_nonce) or len(nonce) <= len(self.client_nonce)
                or not _printable(nonce)):
            raise _malformed("invalid SCRAM server-first message: nonce mismatch", SERVER)
        salt = _unb64(salt_b64, "invalid SCRAM server-first message", SERVER)
        if not salt or not iter_s.isdigit() or not iter_s.isascii() or int(iter_s) < 1:
            raise bad
        self.salt, self.iterations = salt, int(iter_s)
        if self.password is not None:
            self.salted_password = salted_password(self.password, salt, self.iterations)
            self.client_key = client_key_of(self.salted_password)
            self.server_key = server_key_of(self.salted_password)
            self.stored_key = stored_key_of(self.client_key)
        without_proof = f"c=biws,r={nonce}"
        self.auth_message = ",".join((self.client_first_bare, msg, without_proof)).encode("utf-8")
        proof = _xor(self.client_key, _hmac(self.stored_key, self.auth_message))
        if self.server_key is not None:
            self._server_signature = _hmac(self.server_key, self.auth_message)
        return f"{without_proof},p={_b64(proof)}".encode("ascii")

    def verify(self, server_final) -> None:
        """Raises ``ScramError`` (side "server") unless ``server_final`` carries the
        expected server signature."""
        if not self.auth_message:
            raise RuntimeError("ScramClient.verify() called before final()")
        msg = _text(server_final or b"", "invalid SCRAM server-final message", SERVER)
        if msg.startswith("e="):
            raise ScramError(f"SCRAM authentication failed: {msg[2:]}", BAD_PROOF_SQLSTATE,
                             side=SERVER)
        if not msg.startswith("v="):
            raise _malformed("invalid SCRAM server-final message", SERVER)
        signature = _unb64(msg[2:].split(",")[0], "invalid SCRAM server-final message", SERVER)
        if self.server_key is None:
            raise _malformed("cannot verify the server signature without ServerKey", SERVER)
        if not hmac.compare_digest(signature, self._server_signature):
            raise _malformed("incorrect server signature", SERVER)
