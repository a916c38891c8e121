"""LDAP authentication (auth_ldap.py) against a real OpenLDAP slapd, with real clients.

slapd (Debian package `slapd`, installed by scripts/ensure_test_tools.sh) runs on a free loopback
port from a slapd.conf in a temp dir, loaded by slapadd with a small tree:
ou=people holds ldap_alice, ldap_bob and ldap_twin; ou=staff holds a second ldap_twin (a search
for it is not unique). Routes:
  db1/default       simple bind   uid=<user>,ou=people,dc=example,dc=org
  postgres/default  search+bind   as the rootdn, (uid=<user>) under dc=example,dc=org
  postgres/ldap_bob search+bind   anonymous, ldapsearchfilter with $username
  db1/ldap_down     an endpoint whose port nobody listens on
  db1/ldap_slow     an endpoint that accepts TCP connections and never answers
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time

import psycopg2
import pytest

from tests.integration.conftest import (_items, assert_alive, current_user, ensure_roles, module_pooler,
                                        odyssey_config, odyssey_text, rule)
from tests.integration.wire import Wire, login_error

SLAPD = shutil.which("slapd") or ("/usr/sbin/slapd" if os.path.exists("/usr/sbin/slapd") else None)
SLAPADD = shutil.which("slapadd") or ("/usr/sbin/slapadd" if os.path.exists("/usr/sbin/slapadd") else None)
pytestmark = pytest.mark.skipif(
    SLAPD is None or SLAPADD is None or not os.path.exists("/etc/ldap/schema/inetorgperson.schema"),
    reason="slapd is not installed (Debian package `slapd`; scripts/ensure_test_tools.sh installs it)")

BASE = "dc=example,dc=org"
ADMIN_DN, ADMIN_PW = f"cn=admin,{BASE}", "adminpw"
USERS = {"ldap_alice": "alicepw", "ldap_bob": "bobpw"}

SLAPD_CONF = """\
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
modulepath /usr/lib/ldap
moduleload back_mdb
pidfile {dir}/slapd.pid
argsfile {dir}/slapd.args
database mdb
suffix "{base}"
rootdn "{admin}"
rootpw {admin_pw}
directory {dir}/db
maxsize 10485760
access to attrs=userPassword by anonymous auth by * none
access to * by * read
"""


def _entry(dn: str, *lines: str) -> str:
    return "\n".join([f"dn: {dn}", *lines]) + "\n\n"


def _person(uid: str, ou: str, pw: str) -> str:
    return _entry(f"uid={uid},ou={ou},{BASE}", "objectClass: inetOrgPerson", f"uid: {uid}",
                  f"cn: {uid}", f"sn: {uid}", f"userPassword: {pw}")


def _ldif() -> str:
    out = _entry(BASE, "objectClass: dcObject", "objectClass: organization", "o: example", "dc: example")
    for ou in ("people", "staff"):
        out += _entry(f"ou={ou},{BASE}", "objectClass: organizationalUnit", f"ou: {ou}")
    for uid, pw in USERS.items():
        out += _person(uid, "people", pw)
    out += _person("ldap_twin", "people", "twinpw") + _person("ldap_twin", "staff", "twinpw")
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def slapd():
    """A running slapd: yields its port; stopped (and its directory removed) at teardown."""
    tmp = tempfile.mkdtemp(prefix="odyssey-slapd-")
    os.makedirs(f"{tmp}/db")
    with open(f"{tmp}/slapd.conf", "w") as f:
        f.write(SLAPD_CONF.format(dir=tmp, base=BASE, admin=ADMIN_DN, admin_pw=ADMIN_PW))
    with open(f"{tmp}/data.ldif", "w") as f:
        f.write(_ldif())
    out = subprocess.run([SLAPADD, "-f", f"{tmp}/slapd.conf", "-l", f"{tmp}/data.ldif"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    port = _free_port()
    log = open(f"{tmp}/slapd.log", "w")
    proc = subprocess.Popen([SLAPD, "-f", f"{tmp}/slapd.conf", "-h", f"ldap://127.0.0.1:{port}/",
                             "-d", "0"], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while not _listening(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                raise AssertionError("slapd did not start:\n" + open(f"{tmp}/slapd.log").read()[-3000:])
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _endpoint(name: str, **items) -> str:
    return f'ldap_endpoint "{name}" {{\n' + _items(items, "    ") + "\n}\n"


@pytest.fixture(scope="module")
def blackhole():
    """A listening socket that never accepts: an LDAP server that does not answer."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    yield s.getsockname()[1]
    s.close()


@pytest.fixture(scope="module")
def ldap_pooler(pg, roles, slapd, blackhole):
    ensure_roles(pg, "ldap_alice", "ldap_bob")
    ldap = dict(authentication="clear_text")
    text = odyssey_config(
        rule("default", "db1", **ldap, ldap_endpoint_name="simple"),
        rule("default", "postgres", **ldap, ldap_endpoint_name="search"),
        rule("ldap_bob", "postgres", **ldap, ldap_endpoint_name="filter"),
        rule("ldap_down", "db1", **ldap, ldap_endpoint_name="down"),
        rule("ldap_slow", "db1", **ldap, ldap_endpoint_name="blackhole"),
    )
    text += _endpoint("simple", ldapserver="127.0.0.1", ldapport=slapd, ldapprefix="uid=",
                      ldapsuffix=f",ou=people,{BASE}")
    text += _endpoint("search", ldapserver="127.0.0.1", ldapport=slapd, ldapbasedn=BASE,
                      ldapbinddn=ADMIN_DN, ldapbindpasswd=ADMIN_PW, ldapsearchattribute="uid")
    text += _endpoint("filter", ldapserver="127.0.0.1", ldapport=slapd, ldapbasedn=f"ou=people,{BASE}",
                      ldapsearchfilter="(&(objectClass=inetOrgPerson)(uid=$username))", ldapscope="one")
    text += _endpoint("down", ldapserver="127.0.0.1", ldapport=_free_port(), ldapprefix="uid=",
                      ldapsuffix=f",ou=people,{BASE}")
    text += _endpoint("blackhole", ldapserver="127.0.0.1", ldapport=blackhole, ldapprefix="uid=",
                      ldapsuffix=f",ou=people,{BASE}")
    yield from module_pooler(pg, text)


def _refused(p, user: str, db: str, pw: str | None, code: str = "28P01") -> dict:
    err = login_error(p.port, user, db, pw)
    assert (err["S"], err["C"]) == ("FATAL", code), err
    return err


@pytest.mark.timeout(60)
@pytest.mark.parametrize("db", ["db1", "postgres"])
@pytest.mark.parametrize("user", ["ldap_alice", "ldap_bob"])
def test_right_password_logs_in(ldap_pooler, db, user):
    assert current_user(ldap_pooler.dsn(user, db, USERS[user])) == user


@pytest.mark.timeout(60)
@pytest.mark.parametrize("db", ["db1", "postgres"])
@pytest.mark.parametrize("user", ["ldap_alice", "ldap_bob"])
def test_wrong_password_is_28p01(ldap_pooler, db, user):
    err = _refused(ldap_pooler, user, db, USERS[user] + "x")
    odyssey_text(err["M"], f'password authentication failed for user "{user}"')
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(ldap_pooler.dsn(user, db, "wrong"))


@pytest.mark.timeout(60)
def test_psql_simple_bind(ldap_pooler):
    env = dict(PATH="/usr/bin:/bin", PGPASSWORD="alicepw", PGSSLMODE="disable", PGCONNECT_TIMEOUT="10")
    out = subprocess.run(["psql", "-X", "-A", "-t", "-h", "127.0.0.1", "-p", str(ldap_pooler.port),
                          "-U", "ldap_alice", "-d", "db1", "-c", "select 'ok'"],
                         env=env, capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("db", ["db1", "postgres"])
def test_unknown_user_is_28p01(ldap_pooler, db):
    err = _refused(ldap_pooler, "ldap_carol", db, "whatever")
    odyssey_text(err["M"], 'password authentication failed for user "ldap_carol"')


@pytest.mark.timeout(60)
def test_a_search_finding_two_entries_fails(ldap_pooler):
    _refused(ldap_pooler, "ldap_twin", "postgres", "twinpw")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("db", ["db1", "postgres"])
@pytest.mark.parametrize("user", ["*", ")(uid=*", "ldap_alice)(uid=*", "*)(|(uid=*",
                                  "ldap_alice,ou=people", "x\\2a"])
def test_user_name_injection_fails(ldap_pooler, db, user):
    # with any password, including the password of a user the injection would match
    for pw in ("alicepw", "bobpw", "x"):
        _refused(ldap_pooler, user, db, pw)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("db", ["db1", "postgres"])
def test_empty_password_fails(ldap_pooler, db):
    _refused(ldap_pooler, "ldap_alice", db, "")
    with pytest.raises(psycopg2.OperationalError):
        psycopg2.connect(ldap_pooler.dsn("ldap_alice", db, ""))


@pytest.mark.timeout(60)
def test_ldap_server_down_is_fatal_58000_and_the_pooler_stays_up(ldap_pooler):
    for _ in range(2):
        err = _refused(ldap_pooler, "ldap_down", "db1", "pw", code="58000")
        odyssey_text(err["M"], "LDAP server is unavailable")
    assert_alive(ldap_pooler)
    assert current_user(ldap_pooler.dsn("ldap_alice", "db1", "alicepw")) == "ldap_alice"
    log = ldap_pooler.log()
    assert "ldap_endpoint 'down'" in log and "Connection refused" in log
    assert "Traceback" not in log


@pytest.mark.timeout(60)
def test_a_silent_ldap_server_blocks_only_its_own_client(ldap_pooler):
    """The LDAP exchange runs in the worker's threadpool: while one client waits on a server
    that never answers, other clients log in on the same (only) worker; the waiting one gets
    58000 when the receive timeout ends."""
    result = {}

    def slow():
        t0 = time.monotonic()
        w = Wire(ldap_pooler.port, timeout=30)
        try:
            result["err"] = w.login("ldap_slow", "db1", "pw")
        finally:
            w.close()
        result["took"] = time.monotonic() - t0

    thread = threading.Thread(target=slow)
    thread.start()
    time.sleep(0.5)
    t0 = time.monotonic()
    for _ in range(3):
        assert current_user(ldap_pooler.dsn("ldap_bob", "postgres", "bobpw")) == "ldap_bob"
    assert time.monotonic() - t0 < 3
    assert thread.is_alive(), "the silent server answered?"
    thread.join(30)
    assert (result["err"]["S"], result["err"]["C"]) == ("FATAL", "58000")
    assert 4 <= result["took"] < 20
    assert_alive(ldap_pooler)
