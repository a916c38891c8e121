"""auth_query's pure logic: %u/%h substitution as literals, result validation, the secret cache."""
from __future__ import annotations

import types

import pytest

from odyssey_gevent.auth_query import (AuthQueryFailed, SecretCache, binds_user, format_query,
                                       quote_literal, secret_of)


@pytest.mark.parametrize("value,literal", [
    ("alice", "'alice'"), ("o'k", "'o''k'"), ("a\\b", "E'a\\\\b'"), ("x'; DROP TABLE t; --", "'x''; DROP TABLE t; --'"),
    ("", "''")])
def test_quote_literal(value, literal):
    assert quote_literal(value) == literal


def test_quote_literal_refuses_nul():
    with pytest.raises(ValueError):
        quote_literal("a\0b")


def test_format_query_substitutes_literals():
    q = "SELECT usename, passwd FROM pg_shadow WHERE usename=%u AND h=%h"
    assert format_query(q, "bob", "10.0.0.1") == \
        "SELECT usename, passwd FROM pg_shadow WHERE usename='bob' AND h='10.0.0.1'"


def test_format_query_c_style_quoted_placeholder_is_one_literal():
    # C configs write '%u'; the quotes around it are taken as part of the placeholder
    assert format_query("WHERE usename='%u'", "it's", None) == "WHERE usename='it''s'"
    assert format_query("WHERE a='%h'", "u", None) == "WHERE a=''"


def test_format_query_keeps_other_percent_signs_and_dollar_one():
    assert format_query("SELECT 5%%, '%d', $1", "u", "h") == "SELECT 5%, '%d', $1"
    assert format_query("x %", "u", "h") == "x %"


def test_binds_user():
    assert binds_user("WHERE usename = $1")
    assert not binds_user("WHERE usename = $10")
    assert not binds_user("WHERE usename = 'x'")


def test_secret_of():
    assert secret_of([], 2) is None
    assert secret_of([(b"u", None)], 2) is None
    assert secret_of([(b"u", b"md5abc")], 2) == "md5abc"
    with pytest.raises(AuthQueryFailed):
        secret_of([(b"u", b"a"), (b"u", b"b")], 2)
    with pytest.raises(AuthQueryFailed):
        secret_of([(b"a",)], 1)
    with pytest.raises(AuthQueryFailed):
        secret_of([(b"u", b"p", b"x")], 3)
    with pytest.raises(AuthQueryFailed):
        secret_of([(b"u", b"\xff")], 2)


def _rule(query="SELECT $1", db="postgres", user="postgres"):
    return types.SimpleNamespace(auth_query=query, auth_query_db=db, auth_query_user=user)


def test_cache_keys_by_rule_and_user_and_host_only_with_percent_h():
    r = _rule()
    assert SecretCache.key(r, "a", "1.1.1.1") == SecretCache.key(r, "a", "2.2.2.2")
    assert SecretCache.key(r, "a", None) != SecretCache.key(r, "b", None)
    assert SecretCache.key(r, "a", None) != SecretCache.key(_rule(), "a", None)   # another rule
    h = _rule("SELECT %h, $1")
    assert SecretCache.key(h, "a", "1.1.1.1") != SecretCache.key(h, "a", "2.2.2.2")


def test_cache_expiry_forget_clear():
    now = [100.0]
    cache = SecretCache(ttl_ms=1000, clock=lambda: now[0])
    r = _rule()
    ka, kb = SecretCache.key(r, "a", None), SecretCache.key(r, "b", None)
    cache.put(ka, "pa")
    assert cache.get(ka) == "pa" and cache.get(kb) is None
    now[0] += 0.999
    assert cache.get(ka) == "pa"
    now[0] += 0.002
    assert cache.get(ka) is None
    cache.put(ka, "pa")
    cache.forget(ka)
    assert cache.get(ka) is None
    cache.put(ka, "pa")
    cache.put(kb, "pb")
    cache.clear()
    assert cache.get(ka) is None and len(cache) == 0


def test_cache_disabled_with_zero_ttl():
    cache = SecretCache(ttl_ms=0)
    cache.put(("k",), "s")
    assert cache.get(("k",)) is None
