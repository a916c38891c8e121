"""auth_ldap.py without an LDAP server: bind DNs, search filters, the user name checks, the
server address, and check()'s answers (empty password, refused names, server failures -> FATAL
58000) with the exchange replaced. The real exchange is tests/integration/test_ldap.py."""
from __future__ import annotations

import time
from types import SimpleNamespace

import ldap3
import pytest

from kiwi import error_codes
from odyssey_gevent import auth_ldap
from odyssey_gevent.auth_ldap import (LdapUnavailable, bind_dn, scope_of, search_filter, server_address,
                                      user_ok_for_dn, user_ok_for_search)
from odyssey_gevent.config.model import LdapEndpoint, Rule
from odyssey_gevent.logger import Logger
from odyssey_gevent.status import FrontendError

pytestmark = pytest.mark.timeout(20)


def _ep(**kw) -> LdapEndpoint:
    kw.setdefault("ldapserver", "ldap.example.org")
    return LdapEndpoint(name="ep", **kw)


# -- names and filters --------------------------------------------------------------------------
def test_bind_dn_is_prefix_user_suffix():
    assert bind_dn(_ep(ldapprefix="uid=", ldapsuffix=",ou=people,dc=x"), "alice") == "uid=alice,ou=people,dc=x"
    assert bind_dn(_ep(ldapprefix="EXAMPLE\\"), "alice") == "EXAMPLE\\alice"
    assert bind_dn(_ep(ldapsuffix="@example.org"), "alice") == "alice@example.org"
    assert bind_dn(_ep(), "alice") == "alice"


def test_search_filter_default_attribute_is_uid():
    assert search_filter(_ep(ldapbasedn="dc=x"), "alice") == "(uid=alice)"
    assert search_filter(_ep(ldapbasedn="dc=x", ldapsearchattribute="cn"), "alice") == "(cn=alice)"


def test_search_filter_with_username_placeholder_replaces_it_everywhere():
    ep = _ep(ldapbasedn="dc=x", ldapsearchfilter="(|(uid=$username)(mail=$username@x.org))")
    assert search_filter(ep, "alice") == "(|(uid=alice)(mail=alice@x.org))"


def test_search_filter_without_placeholder_is_anded_as_c_does():
    ep = _ep(ldapbasedn="dc=x", ldapsearchfilter="(objectClass=person)")
    assert search_filter(ep, "alice") == "(&(uid=alice)(objectClass=person))"
    ep = _ep(ldapbasedn="dc=x", ldapsearchfilter="objectClass=person")
    assert search_filter(ep, "alice") == "(&(uid=alice)(objectClass=person))"


@pytest.mark.parametrize("user,escaped", [
    ("*", "\\2a"), (")(uid=*", "\\29\\28uid=\\2a"), ("a\\b", "a\\5cb"), ("a\0b", "a\\00b")])
def test_search_filter_escapes_the_user_name(user, escaped):
    assert search_filter(_ep(ldapbasedn="dc=x"), user) == f"(uid={escaped})"
    ep = _ep(ldapbasedn="dc=x", ldapsearchfilter="(cn=$username)")
    assert search_filter(ep, user) == f"(cn={escaped})"


@pytest.mark.parametrize("user", ["alice", "john.doe", "j-d_1", "jd@example.org", "Jürgen"])
def test_ordinary_user_names_pass_both_checks(user):
    assert user_ok_for_dn(user) and user_ok_for_search(user)


@pytest.mark.parametrize("user", ["*", ")(uid=*", "a(b", "a\\b", "a/b", "a\0b", ""])
def test_search_refuses_postgresql_forbidden_characters(user):
    assert not user_ok_for_search(user)


@pytest.mark.parametrize("user", ["a,ou=x", "a+b", 'a"b', "a\\b", "a<b", "a>b", "a;b", "uid=x",
                                  "a\0b", "#a", " a", "a ", ""])
def test_simple_bind_refuses_dn_special_characters(user):
    assert not user_ok_for_dn(user)


# -- server address and scope ---------------------------------------------------------------------
def test_server_address_from_scheme_server_port():
    assert server_address(_ep(ldapport=1389)) == ("ldap.example.org", 1389, False)
    assert server_address(_ep(ldapscheme="ldaps", ldapport=636)) == ("ldap.example.org", 636, True)
    assert server_address(_ep()) == ("ldap.example.org", 389, False)


def test_server_address_from_ldapurl():
    assert server_address(LdapEndpoint(name="e", ldapurl="ldaps://h.example")) == ("h.example", 636, True)
    assert server_address(LdapEndpoint(name="e", ldapurl="ldap://h:1389/")) == ("h", 1389, False)


@pytest.mark.parametrize("ep", [
    LdapEndpoint(name="e"), LdapEndpoint(name="e", ldapurl="ldap://h/dc=x??sub?(uid=a)"),
    LdapEndpoint(name="e", ldapserver="h", ldapscheme="http")])
def test_unusable_addresses_are_ldap_unavailable(ep):
    with pytest.raises(LdapUnavailable):
        server_address(ep)


def test_scopes():
    assert scope_of(_ep()) == ldap3.SUBTREE
    assert scope_of(_ep(ldapscope="one")) == ldap3.LEVEL
    assert scope_of(_ep(ldapscope="BASE")) == ldap3.BASE
    with pytest.raises(LdapUnavailable):
        scope_of(_ep(ldapscope="everything"))


# -- check() ----------------------------------------------------------------------------------------
def _setup(ep: LdapEndpoint | None = None, user="alice", **rule_kw):
    ep = ep or _ep(ldapprefix="uid=", ldapsuffix=",dc=x")
    instance = SimpleNamespace(logger=Logger(to_stdout=False),
                               config=SimpleNamespace(ldap_endpoints={ep.name: ep}))
    rule = Rule(db_name="db", user_name=user, authentication="clear_text", ldap_endpoint_name="ep", **rule_kw)
    return instance, SimpleNamespace(user=user, rule=rule, id=None)


@pytest.fixture
def exchanges(monkeypatch):
    """Replace the network exchange: records its calls, answers from `answer`."""
    calls = []
    state = {"answer": (True, "")}

    def fake(endpoint, user, password):
        calls.append((user, password))
        answer = state["answer"]
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(auth_ldap, "authenticate", fake)
    return SimpleNamespace(calls=calls, state=state)


def test_check_accepts_and_refuses_by_the_exchange(in_machine, exchanges):
    instance, client = _setup()
    assert in_machine(auth_ldap.check, instance, client, "pw") is True
    exchanges.state["answer"] = (False, "invalidCredentials")
    assert in_machine(auth_ldap.check, instance, client, "pw") is False
    assert exchanges.calls == [("alice", "pw"), ("alice", "pw")]


def test_empty_password_never_reaches_the_server(in_machine, exchanges):
    instance, client = _setup()
    assert in_machine(auth_ldap.check, instance, client, "") is False
    assert exchanges.calls == []


@pytest.mark.parametrize("user,basedn", [("a,ou=x", None), ("*", "dc=x"), (")(uid=*", "dc=x")])
def test_unsafe_user_names_never_reach_the_server(in_machine, exchanges, user, basedn):
    instance, client = _setup(_ep(ldapprefix="uid=", ldapbasedn=basedn), user=user)
    assert in_machine(auth_ldap.check, instance, client, "pw") is False
    assert exchanges.calls == []


def test_server_failure_is_fatal_58000(in_machine, exchanges):
    instance, client = _setup()
    exchanges.state["answer"] = LdapUnavailable("Connection refused")
    err = in_machine(_raised, auth_ldap.check, instance, client, "pw")
    assert isinstance(err, FrontendError)
    assert (err.sqlstate, err.severity) == (error_codes.SYSTEM_ERROR, "FATAL") == ("58000", "FATAL")


def test_an_exchange_that_never_ends_is_fatal_58000(in_machine, monkeypatch):
    monkeypatch.setattr(auth_ldap, "authenticate", lambda *a: time.sleep(1.5) or (True, ""))
    monkeypatch.setattr(auth_ldap, "EXCHANGE_TIMEOUT_S", 0.3)
    instance, client = _setup()

    def timed():
        t0 = time.monotonic()
        return _raised(auth_ldap.check, instance, client, "pw"), time.monotonic() - t0

    err, took = in_machine(timed)
    assert took < 1
    assert isinstance(err, FrontendError) and err.sqlstate == "58000"


def test_an_unexpected_exception_in_the_exchange_is_58000(in_machine, exchanges):
    instance, client = _setup()
    exchanges.state["answer"] = ValueError("surprise")
    err = in_machine(_raised, auth_ldap.check, instance, client, "pw")
    assert isinstance(err, FrontendError) and err.sqlstate == "58000"


def test_storage_credentials_attr_is_refused_0a000(in_machine, exchanges):
    instance, client = _setup(ldap_storage_credentials_attr="memberOf")
    err = in_machine(_raised, auth_ldap.check, instance, client, "pw")
    assert isinstance(err, FrontendError) and err.sqlstate == error_codes.FEATURE_NOT_SUPPORTED
    assert exchanges.calls == []


def test_a_real_refused_connection_is_ldap_unavailable():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(LdapUnavailable):
        auth_ldap.authenticate(_ep(ldapserver="127.0.0.1", ldapport=port, ldapprefix="uid="), "alice", "pw")


def _raised(fn, *args):
    try:
        fn(*args)
    except Exception as e:      # noqa: BLE001 - handed back to the test
        return e
    return None
