"""kiwi.md5: PostgreSQL md5 password hashing (Odyssey kiwi password.h, kiwi_password_md5).

Stored form:  "md5" + hex(md5(password + user)).
On the wire:  "md5" + hex(md5(hex_of_stored + salt)) for the 4-byte salt of
AuthenticationMD5Password.
"""
from __future__ import annotations

import hmac

from kiwi._build import to_bytes

# MD5 itself: CPython's own (about 2,000 instructions a hash with its hexdigest) where it is
# built in, else OpenSSL's through hashlib (about 4,400: the EVP context fetched, set up and
# freed per hash). The pooler's md5 login hashes with it directly (odyssey_gevent.auth).
try:
    from _md5 import md5
except ImportError:                 # a CPython built without its own hashes
    from hashlib import md5

__all__ = ["md5", "md5_password", "md5_salted", "md5_verify", "is_md5_hash", "md5_stored", "md5_salted_stored"]


def is_md5_hash(password) -> bool:
    """True for an already-hashed password: 35 characters starting with "md5" (Odyssey's
    test; PostgreSQL additionally wants hex digits)."""
    raw = to_bytes(password, "password")
    return len(raw) == 35 and raw.startswith(b"md5")


def md5_password(user, password) -> str:
    """The stored form "md5" + hex(md5(password + user))."""
    return "md5" + md5(to_bytes(password, "password") + to_bytes(user, "user")).hexdigest()


def md5_stored(user, password) -> bytes:
    """The stored form (b"md5" + hex) of a plain password, or of an already-stored hash as it
    is: what ``md5_salted_stored`` salts. Depends on the user and password only, so a caller
    may keep it between logins."""
    stored = to_bytes(password, "password")
    if not is_md5_hash(stored):
        stored = md5_password(user, stored).encode("ascii")
    return stored


def md5_salted_stored(stored: bytes, salt: bytes) -> str:
    """``md5_salted`` from the stored form (``md5_stored``)."""
    if len(salt) != 4:
        raise ValueError("the md5 salt is 4 bytes")
    return "md5" + md5(stored[3:] + bytes(salt)).hexdigest()


def md5_salted(user, password, salt: bytes) -> str:
    """What a client sends in reply to AuthenticationMD5Password with ``salt``.

    ``password`` is either the plain password or an already-stored "md5..." hash (then
    ``user`` is not used), as Odyssey accepts both in its config and auth_query results."""
    if len(salt) != 4:
        raise ValueError("the md5 salt is 4 bytes")
    return md5_salted_stored(md5_stored(user, password), salt)


def md5_verify(user, password, salt: bytes, response) -> bool:
    """Constant-time check of a client's md5 PasswordMessage against a plain or stored
    password."""
    expected = md5_salted(user, password, salt).encode("ascii")
    return hmac.compare_digest(expected, to_bytes(response, "response"))
