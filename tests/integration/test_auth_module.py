"""Python auth modules (auth_module.py): `load_module "python:<module>"` + a clear_text rule with
`auth_module "<module>"`, with modules written to a temp dir on the pooler's PYTHONPATH."""
from __future__ import annotations

import os
import secrets

import psycopg2
import pytest

from tests.integration.conftest import assert_alive, ensure_roles, odyssey_config, odyssey_text, rule
from tests.integration.wire import Wire, login_error, parse_fields, query
from scripts.pooler import PoolerProcess

TAG = secrets.token_hex(3)
MOD, BROKEN = f"ogtest_authmod_{TAG}", f"ogtest_broken_{TAG}"
LATE_MOD = f"ogtest_late_{TAG}"          # no load_module: the console's CREATE MODULE loads it
LATE = "mod_late"
OK, BOOM, WEIRD, INFO, MISSING, IMPORT = "mod_ok", "mod_boom", "mod_weird", "mod_info", "mod_missing", "mod_import"

MODULE = '''
def check(user, password, client_info):
    if user == "mod_boom":
        raise RuntimeError("the directory is down")
    if user == "mod_weird":
        return "yes"
    if user == "mod_info":
        return password == "{database}|{host}|{tls}|{rule}|{application_name}".format(**client_info)
    return password == "s3cret-" + user
'''


@pytest.fixture(scope="module")
def module_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("authmod")
    (d / f"{MOD}.py").write_text(MODULE)
    (d / f"{BROKEN}.py").write_text("import no_such_module_anywhere_xyz\n")
    (d / f"{LATE_MOD}.py").write_text("def check(user, password, client_info):\n    return password == 'late'\n")
    return str(d)


@pytest.fixture(scope="module")
def mod_pooler(pg, roles, module_dir):
    ensure_roles(pg, OK, INFO, LATE)
    common = dict(authentication="clear_text", password_passthrough=False)
    text = odyssey_config(rule(OK, "db1", auth_module=MOD, **common),
                          rule(BOOM, "db1", auth_module=MOD, **common),
                          rule(WEIRD, "db1", auth_module=MOD, **common),
                          rule(INFO, "db1", auth_module=MOD, **common),
                          rule(MISSING, "db1", auth_module="not_declared_anywhere", **common),
                          rule(IMPORT, "db1", auth_module=BROKEN, **common),
                          rule(OK, "db2", auth_module=MOD, authentication="md5", password="pw"),
                          rule(LATE, "db1", auth_module=LATE_MOD, **common),
                          rule("default", "console", pool="session", storage="local", role="admin"))
    text = f'load_module "python:{MOD}"\nload_module "python:{BROKEN}"\n' + text
    text += 'storage "local" {\n    type "local"\n}\n'
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = module_dir + (os.pathsep + old if old else "")
    try:
        p = PoolerProcess(text, pg=pg)
    finally:
        if old is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = old
    try:
        yield p
        assert_alive(p)
    finally:
        p.stop()


@pytest.mark.timeout(30)
def test_module_accepts_and_refuses(mod_pooler):
    con = psycopg2.connect(mod_pooler.dsn(OK, "db1", password="s3cret-" + OK))
    try:
        with con.cursor() as cur:
            cur.execute("select current_user")
            assert cur.fetchone()[0] == OK
    finally:
        con.close()
    err = login_error(mod_pooler.port, OK, "db1", "wrong")
    assert (err["C"], err["S"]) == ("28P01", "FATAL"), err
    odyssey_text(err["M"], f'password authentication failed for user "{OK}"')
    mod_pooler.wait_log(f"auth module '{MOD}' refused user '{OK}'")


@pytest.mark.timeout(30)
def test_client_info(mod_pooler):
    w = Wire(mod_pooler.port)
    try:
        assert w.login(INFO, "db1", f"db1|127.0.0.1|False|db1.{INFO}|probe", application_name="probe") is None
    finally:
        w.close()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("user, log", [
    (BOOM, f"auth module '{MOD}' check() raised RuntimeError: the directory is down"),
    (WEIRD, f"auth module '{MOD}' check() returned str, not bool"),
    (MISSING, "auth module 'not_declared_anywhere' is not loaded"),
    (IMPORT, f"auth module '{BROKEN}' failed to import: ModuleNotFoundError"),
])
def test_module_errors_are_28000(mod_pooler, user, log):
    err = login_error(mod_pooler.port, user, "db1", "whatever")
    assert (err["C"], err["S"]) == ("28000", "FATAL"), err
    odyssey_text(err["M"], f'auth module error for user "{user}"')
    mod_pooler.wait_log(log)
    assert_alive(mod_pooler)
    # the pooler still serves others
    w = Wire(mod_pooler.port)
    try:
        assert w.login(OK, "db1", "s3cret-" + OK) is None
    finally:
        w.close()


@pytest.mark.timeout(30)
def test_md5_rule_with_auth_module_stays_refused(mod_pooler):
    err = login_error(mod_pooler.port, OK, "db2", "s3cret-" + OK)
    assert err["C"] == "0A000", err
    odyssey_text(err["M"], "auth_module is not supported yet")


def _console_command(p, sql: str) -> list[tuple[bytes, dict]]:
    """Run one console command: its messages up to ReadyForQuery, ErrorResponse/NoticeResponse
    fields parsed."""
    w = Wire(p.port)
    try:
        assert w.login("admin", "console") is None
        w.send(query(sql))
        got = []
        while True:
            tag, body = w.read_message()
            got.append((tag, parse_fields(body) if tag in (b"E", b"N") else body))
            if tag == b"Z":
                return got
    finally:
        w.close()


@pytest.mark.timeout(30)
def test_console_create_and_drop_module(mod_pooler):
    """CREATE MODULE "python:<module>" loads an auth module at runtime, DROP MODULE unloads it:
    C's INFO replies (no CommandComplete) and, for what cannot be done, C's ERROR 58000 followed
    by 42601 console command error."""
    err = login_error(mod_pooler.port, LATE, "db1", "late")
    assert err["C"] == "28000", err                      # not loaded yet
    [(n, info), (z, _)] = _console_command(mod_pooler, f'CREATE MODULE "python:{LATE_MOD}"')
    assert (n, z, info["S"], info["C"]) == (b"N", b"Z", "INFO", "00000"), info
    odyssey_text(info["M"], "module was successfully loaded!")
    w = Wire(mod_pooler.port)
    try:
        assert w.login(LATE, "db1", "late") is None
    finally:
        w.close()
    assert login_error(mod_pooler.port, LATE, "db1", "wrong")["C"] == "28P01"
    [(e, err), then, _] = _console_command(mod_pooler, f'CREATE MODULE "python:{LATE_MOD}"')
    # loaded already
    assert (e, err["C"], then[0], then[1]["C"]) == (b"E", "58000", b"E", "42601"), (err, then)
    odyssey_text(err["M"], "module was NOT successfully loaded! Check logs for details")
    [(n, info), _] = _console_command(mod_pooler, f'DROP MODULE "python:{LATE_MOD}"')
    assert n == b"N", info
    odyssey_text(info["M"], "module was successfully unloaded!")
    assert login_error(mod_pooler.port, LATE, "db1", "late")["C"] == "28000"
    # a C module cannot be loaded: ERROR 58000 that says why
    [(e, err), then, _] = _console_command(mod_pooler, 'CREATE MODULE "/usr/lib/odyssey/ldap_module.so"')
    assert (e, err["C"], then[0], then[1]["C"]) == (b"E", "58000", b"E", "42601"), (err, then)
    assert "C modules (.so) can't be loaded" in err["D"], err
    [(e, err), then, _] = _console_command(mod_pooler, 'DROP MODULE "python:never_loaded_module"')
    assert (e, err["C"], then[0], then[1]["C"]) == (b"E", "58000", b"E", "42601"), (err, then)
    odyssey_text(err["M"], "module was NOT successfully unloaded! Check logs for details")
    assert_alive(mod_pooler)
