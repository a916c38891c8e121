"""md5 password hashing, from the definition and against fixed values."""
from __future__ import annotations

import hashlib

import pytest

from kiwi.md5 import is_md5_hash, md5_password, md5_salted, md5_salted_stored, md5_stored, md5_verify

SALT = b"\x01\x02\x03\x04"


def test_md5_password_from_definition():
    assert md5_password("md5_user", "md5pass") == \
        "md5" + hashlib.md5(b"md5pass" + b"md5_user").hexdigest()


def test_md5_password_fixed_literals():
    assert md5_password("md5_user", "md5pass") == "md580dcaaba30666a7775bc7ee0c688f8db"
    # the widely published hash for user postgres / password postgres
    assert md5_password("postgres", "postgres") == "md53175bce1d3201d16594cebf9d7eb3f9d"


def test_md5_salted_plain_and_stored_agree():
    stored = md5_password("md5_user", "md5pass")
    expected = "md5" + hashlib.md5(stored[3:].encode() + SALT).hexdigest()
    assert md5_salted("md5_user", "md5pass", SALT) == expected
    assert md5_salted("md5_user", stored, SALT) == expected
    assert md5_salted("ignored-for-stored", stored, SALT) == expected
    assert expected == "md553cd9558ecf6e071b157c089adc0ef7c"
    assert md5_salted(b"md5_user", b"md5pass", SALT) == expected


def test_md5_verify():
    response = md5_salted("u", "p", SALT)
    assert md5_verify("u", "p", SALT, response)
    assert md5_verify("u", md5_password("u", "p"), SALT, response.encode())
    assert not md5_verify("u", "wrong", SALT, response)
    assert not md5_verify("u", "p", b"\0\0\0\0", response)


def test_is_md5_hash_and_salt_length():
    assert is_md5_hash(md5_password("a", "b"))
    assert not is_md5_hash("md5short")
    assert not is_md5_hash("x" * 35)
    with pytest.raises(ValueError):
        md5_salted("u", "p", b"abc")


def test_md5_salted_from_the_stored_form():
    """md5_stored (what a caller may keep between logins) then md5_salted_stored is md5_salted,
    for a plain password and for an already-stored hash."""
    stored = md5_password("alice", "secret")
    for password in ("secret", stored):
        assert md5_stored("alice", password) == stored.encode()
        assert md5_salted_stored(md5_stored("alice", password), b"abcd") == md5_salted("alice", password, b"abcd")
    with pytest.raises(ValueError):
        md5_salted_stored(stored.encode(), b"abc")
