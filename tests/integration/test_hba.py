"""hba_file with real clients (issue 11; C Odyssey sources/hba.c).

One pooler listens on 127.0.0.1:${port} with `tls "allow"` (TLS and plain clients on one port)
and on `${tmp}/.s.PGSQL.${port}`; its hba file below decides who gets past routing. Routes for
the extra databases (hba_two, hba_same, ...) all lead to db1 through storage_db. Reload and
startup are tested on poolers of their own.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import psycopg2
import pytest

from scripts.pooler import REPO
from tests.integration.conftest import Raw, ensure_roles, module_pooler, odyssey_config, odyssey_text, rule
from tests.integration.wire import Wire, login_error

ROLES = ("hba_allow", "hba_deny", "hba_other", "hba_nomatch", "hba_same", "hba_named")
REJECTED = "host based authentication rejected"

HBA = """\
# odyssey-gevent integration test: first match wins, no match rejects
local     hba_local    hba_allow                 allow
local     all          all                       deny
host      db1          hba_deny                  127.0.0.1/32  deny
host      db1,hba_two  hba_allow , hba_other     127.0.0.1/32  allow
host      sameuser     all                       127.0.0.1 255.255.255.255 trust
hostssl   hba_ssl      all                       127.0.0.0/8   allow
hostnossl hba_plain    all                       127.0.0.0/8   allow
# the default rule's names are compared, not the client's: hba_named skips this line
host      hba_dflt     hba_named                 127.0.0.1/32  reject
host      hba_dflt     default_user              127.0.0.1/32  allow
host      console      hba_admin                 127.0.0.1/32  allow
"""


def _routes():
    to_db1 = dict(storage_db="db1")
    return (rule("hba_allow", "db1"), rule("hba_deny", "db1"), rule("hba_other", "db1"),
            rule("hba_nomatch", "db1"), rule("hba_allow", "hba_two", **to_db1),
            rule("hba_same", "hba_same", **to_db1), rule("hba_allow", "hba_same", **to_db1),
            rule("hba_allow", "hba_ssl", **to_db1), rule("hba_allow", "hba_plain", **to_db1),
            rule("hba_allow", "hba_local", **to_db1), rule("hba_deny", "hba_local", **to_db1),
            rule("default", "hba_dflt", **to_db1),
            rule("hba_admin", "console", pool="session", storage="local", role="admin"),
            rule("hba_deny", "console", pool="session", storage="local", role="admin"))


@pytest.fixture(scope="module")
def hba_pooler(pg, roles, tls_certs, tmp_path_factory):
    ensure_roles(pg, *ROLES)
    path = tmp_path_factory.mktemp("hba") / "hba.conf"
    path.write_text(HBA)
    text = odyssey_config(*_routes(), hba_file=str(path),
                          unix_socket_dir=Raw('"${tmp}"'), unix_socket_mode="0644",
                          listen={"host": None})      # the unix socket ${tmp}/.s.PGSQL.${port}
    text += 'storage "local" {\n    type "local"\n}\n'
    text += (f'listen {{\n    host "127.0.0.1"\n    port ${{port}}\n    tls "allow"\n'
             f'    tls_cert_file "{tls_certs["server_crt"]}"\n    tls_key_file "{tls_certs["server_key"]}"\n}}\n')
    yield from module_pooler(pg, text)


def _query(dsn: str) -> int:
    con = psycopg2.connect(dsn)
    try:
        with con.cursor() as cur:
            cur.execute("select 1")
            return cur.fetchone()[0]
    finally:
        con.close()


def _allowed(p, user: str, db: str) -> None:
    w = Wire(p.port)
    try:
        err = w.login(user, db)
        assert err is None, err
        rows, err, _ = w.simple_query("select current_user")
        assert err is None and rows == [[user]], (rows, err)
    finally:
        w.close()


def _rejected(p, user: str, db: str) -> None:
    err = login_error(p.port, user, db)
    assert err["C"] == "28P01" and err["S"] == "ERROR", err
    odyssey_text(err["M"], REJECTED)


@pytest.mark.timeout(20)
def test_allowed_host(hba_pooler):
    _allowed(hba_pooler, "hba_allow", "db1")


@pytest.mark.timeout(20)
def test_denied_host_gets_28P01_and_is_logged(hba_pooler):
    _rejected(hba_pooler, "hba_deny", "db1")
    hba_pooler.wait_log(f"ip '127.0.0.1' user 'db1.hba_deny': {REJECTED}")


@pytest.mark.timeout(20)
def test_no_matching_line_rejects(hba_pooler):
    _rejected(hba_pooler, "hba_nomatch", "db1")      # db1 but a user no line names
    _rejected(hba_pooler, "hba_allow", "hba_same")   # sameuser needs user == database


@pytest.mark.timeout(20)
def test_comma_lists_and_sameuser(hba_pooler):
    _allowed(hba_pooler, "hba_other", "db1")         # second name of the user list
    _allowed(hba_pooler, "hba_allow", "hba_two")     # second name of the database list
    _allowed(hba_pooler, "hba_same", "hba_same")     # sameuser, written with an addr + mask


@pytest.mark.timeout(30)
def test_hostssl_and_hostnossl(hba_pooler):
    base = f"host=127.0.0.1 port={hba_pooler.port} user=hba_allow sslcert=/nonexistent/c sslkey=/nonexistent/k"
    assert _query(f"{base} dbname=hba_ssl sslmode=require") == 1
    assert _query(f"{base} dbname=hba_plain sslmode=disable") == 1
    for db, mode in (("hba_ssl", "disable"), ("hba_plain", "require")):
        with pytest.raises(psycopg2.OperationalError) as e:
            _query(f"{base} dbname={db} sslmode={mode}")
        assert REJECTED in str(e.value), (db, mode, str(e.value))


@pytest.mark.timeout(20)
def test_local_over_the_unix_socket(hba_pooler):
    sock = f"host={hba_pooler.tmp} port={hba_pooler.port}"
    assert _query(f"{sock} user=hba_allow dbname=hba_local") == 1
    with pytest.raises(psycopg2.OperationalError) as e:       # `local all all deny`
        _query(f"{sock} user=hba_deny dbname=hba_local")
    assert REJECTED in str(e.value)
    with pytest.raises(psycopg2.OperationalError) as e:       # TCP: no host line for hba_local
        _query(f"host=127.0.0.1 port={hba_pooler.port} user=hba_allow dbname=hba_local sslmode=disable")
    assert REJECTED in str(e.value)
    hba_pooler.wait_log(f"ip '[unix socket]' user 'hba_local.hba_deny': {REJECTED}")


@pytest.mark.timeout(20)
def test_the_default_rule_names_are_compared(hba_pooler):
    # hba_named reaches `database "hba_dflt" { user default }`: its line names the client's user
    # and would reject, but C Odyssey matches the rule's default_user, and that line allows
    _allowed(hba_pooler, "hba_named", "hba_dflt")


@pytest.mark.timeout(20)
def test_console_clients_are_checked_too(hba_pooler):
    w = Wire(hba_pooler.port)
    try:
        assert w.login("hba_admin", "console") is None
        rows, err, _ = w.simple_query("show version")
        assert err is None and rows, (rows, err)
    finally:
        w.close()
    _rejected(hba_pooler, "hba_deny", "console")     # no line names console for hba_deny


# -- reload and startup ---------------------------------------------------------------------------
@pytest.mark.timeout(40)
def test_sighup_reloads_the_hba_file(pg, roles, pooler, tmp_path):
    ensure_roles(pg, *ROLES)
    path = tmp_path / "hba.conf"
    path.write_text("host db1 hba_allow 127.0.0.1/32 allow\n")
    p = pooler(odyssey_config(rule("hba_allow", "db1"), hba_file=str(path)))
    _allowed(p, "hba_allow", "db1")
    # a broken file: the reload fails with file:line, the old rules stay
    path.write_text("host db1 hba_allow 127.0.0.1/32 deny\nhost db1 hba_allow 127.0.0.1/99 allow\n")
    p.signal(signal.SIGHUP)
    p.wait_log("the old config stays in use")
    assert f"{path}:2:" in p.log() and "invalid network prefix length '99'" in p.log()
    _allowed(p, "hba_allow", "db1")
    # a good file that denies: new clients follow it
    path.write_text("host db1 hba_allow 127.0.0.1/32 deny\n")
    p.signal(signal.SIGHUP)
    p.wait_log("reconfigure rules")
    _rejected(p, "hba_allow", "db1")


def _cli(tmp_path, hba_text: str, *args: str) -> subprocess.CompletedProcess:
    (tmp_path / "hba.conf").write_text(hba_text)
    text = odyssey_config(rule("hba_allow", "db1"), hba_file=str(tmp_path / "hba.conf")).replace(
        "${port}", "1").replace('"${pg_host}"', '"127.0.0.1"').replace("${pg_port}", "1")
    (tmp_path / "odyssey.conf").write_text(text)
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "odyssey_gevent", *args, str(tmp_path / "odyssey.conf")],
                          capture_output=True, text=True, timeout=20, env=env, cwd=str(tmp_path),
                          stdin=subprocess.DEVNULL)


@pytest.mark.timeout(40)
@pytest.mark.parametrize("args", [("--test",), ("--console",)])
def test_a_bad_hba_file_fails_startup_and_test(tmp_path, args):
    out = _cli(tmp_path, "local all all allow\nhost all all 10.0.0.0 allow\n", *args)
    assert out.returncode != 0
    assert f"{tmp_path / 'hba.conf'}:2:23: expected network mask after '10.0.0.0'" in out.stderr, out.stderr


@pytest.mark.timeout(20)
def test_a_missing_hba_file_fails_test(tmp_path):
    out = _cli(tmp_path, "local all all allow\n", "--test")
    assert out.returncode == 0 and "config is valid" in out.stdout, out.stderr
    os.unlink(tmp_path / "hba.conf")
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-m", "odyssey_gevent", "--test", str(tmp_path / "odyssey.conf")],
                         capture_output=True, text=True, timeout=20, env=env, cwd=str(tmp_path))
    assert out.returncode == 1
    assert "cannot read hba_file" in out.stderr and "No such file or directory" in out.stderr, out.stderr
