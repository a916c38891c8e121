"""kiwi.md5: PostgreSQL md5 password hashing (Odyssey kiwi password.h, kiwi_password_md5).

Stored form:  "md5" + hex(md5(password + user)).
On the wire:  "md5" + hex(md5(hex_of_stored + salt)) for the 4-byte salt of
AuthenticationMD5Password.
"""
from __future__ import annotations

import hashlib
import hmac

from kiwi._build import to_bytes

__all__ = ["md5_password", "md5_salted", "md5_verify", "is_md5_hash"]


def is_md5_hash(password) -> bool:
    """True for an already-hashed password: 35 characters starting with "md5" (Odyssey's
    test; PostgreSQL additionally wants hex digits)."""
    raw = to_bytes(password, "password")
    return len(raw) == 35 and raw.startswith(b"md5")


def md5_password(user, password) -> str:
    """The stored form "md5" + hex(md5(password + user))."""
    return "md5" + hashlib.md5(to_bytes(password, "password") + to_bytes(user, "user")).hexdigest()


def md5_salted(user, password, salt: bytes) -> str:
    """What a client sends in reply to AuthenticationMD5Password with ``salt``.

    ``password`` is either the plain password or an already-stored "md5..." hash (then
    ``user`` is not used), as Odyssey accepts both in its config and auth_query results."""
    if len(salt) != 4:
        raise ValueError("the md5 salt is 4 bytes")
    stored = to_bytes(password, "password")
    if not is_md5_hash(stored):
        stored = md5_password(user, stored).encode("ascii")
    return "md5" + hashlib.md5(stored[3:] + bytes(salt)).hexdigest()


def md5_verify(user, password, salt: bytes, response) -> bool:
    """Constant-time check of a client's md5 PasswordMessage against a plain or stored
    password."""
    expected = md5_salted(user, password, salt).encode("ascii")
    return hmac.compare_digest(expected, to_bytes(response, "response"))
