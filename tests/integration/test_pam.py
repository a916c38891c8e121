"""PAM authentication (auth_pam.py) with real clients: a PAM service file and OS users of the
test's own, pam_unix checking /etc/shadow (so the test and the pooler run as root).

The service file has `nodelay`: pam_unix would otherwise sleep ~2 s after each failure.
Teardown always removes the users and the service file.
"""
from __future__ import annotations

import os
import secrets
import shutil
import subprocess

import psycopg2
import pytest

from tests.integration.conftest import ensure_roles, module_pooler, odyssey_config, odyssey_text, rule, current_user
from tests.integration.wire import login_error

PAM_UNIX_DIRS = ("/lib/x86_64-linux-gnu/security", "/usr/lib/x86_64-linux-gnu/security",
                 "/lib/aarch64-linux-gnu/security", "/usr/lib/aarch64-linux-gnu/security",
                 "/lib/security", "/usr/lib/security", "/lib64/security", "/usr/lib64/security")


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "not root: PAM tests write /etc/pam.d and add OS users, and pam_unix reads /etc/shadow"
    try:
        import pam  # noqa: F401  (python-pam)
    except ImportError:
        return "python-pam is not installed"
    except OSError as e:
        return f"libpam cannot be loaded: {e}"
    if not any(os.path.exists(os.path.join(d, "pam_unix.so")) for d in PAM_UNIX_DIRS):
        return "pam_unix.so is missing (libpam-modules)"
    for tool in ("useradd", "userdel", "chpasswd", "chage", "passwd"):
        if shutil.which(tool) is None:
            return f"{tool} is missing (passwd package)"
    if not os.path.isdir("/etc/pam.d"):
        return "/etc/pam.d is missing"
    return None


pytestmark = pytest.mark.skipif(_missing() is not None, reason=_missing() or "")

TAG = secrets.token_hex(3)
SERVICE = f"odyssey-gevent-test-{TAG}"
GOOD, EXPIRED, LOCKED = f"ogpam_ok_{TAG}", f"ogpam_exp_{TAG}", f"ogpam_lck_{TAG}"
PASSWORD = "Pam-Secr3t-" + TAG
# PostgreSQL asks this role for SCRAM over TCP (scripts/pgcluster.py): the OS user of the same
# name gets the same password, so PAM's accepted password logs in to PostgreSQL too
PASSTHROUGH, PASSTHROUGH_PASSWORD = "scram_user", "scrampass"


MADE_USERS: list[str] = []


def _run(*args: str, stdin: str | None = None) -> None:
    subprocess.run(args, input=stdin, text=True, check=True, capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def pam_env():
    made_users = MADE_USERS
    path = f"/etc/pam.d/{SERVICE}"
    try:
        with open(path, "w") as f:
            f.write("auth required pam_unix.so nodelay\naccount required pam_unix.so\n")
        for user in (GOOD, EXPIRED, LOCKED):
            _run("useradd", "-M", "-s", "/usr/sbin/nologin", user)
            made_users.append(user)
            _run("chpasswd", stdin=f"{user}:{PASSWORD}\n")
        if subprocess.run(["id", "-u", PASSTHROUGH], capture_output=True).returncode != 0:
            _run("useradd", "-M", "-s", "/usr/sbin/nologin", PASSTHROUGH)
            made_users.append(PASSTHROUGH)
            _run("chpasswd", stdin=f"{PASSTHROUGH}:{PASSTHROUGH_PASSWORD}\n")
        _run("chage", "-E", "0", EXPIRED)          # expired: pam_acct_mgmt refuses
        _run("passwd", "-l", LOCKED)               # locked: the hash no longer matches
        yield SERVICE
    finally:
        for user in made_users:
            subprocess.run(["userdel", "-f", user], capture_output=True, timeout=30)
        made_users.clear()
        if os.path.exists(path):
            os.unlink(path)


@pytest.fixture(scope="module")
def pam_pooler(pg, pam_env):
    ensure_roles(pg, GOOD, EXPIRED, LOCKED)
    text = odyssey_config(
        rule("default", "db1", authentication="clear_text", auth_pam_service=pam_env),
        rule(PASSTHROUGH, "postgres", authentication="clear_text", auth_pam_service=pam_env,
             password_passthrough=True),
    )
    yield from module_pooler(pg, text)


def refused(pooler, user: str, password: str) -> None:
    err = login_error(pooler.port, user, "db1", password)
    assert err is not None, f"{user} logged in"
    assert (err["S"], err["C"]) == ("FATAL", "28P01")
    odyssey_text(err["M"], f'password authentication failed for user "{user}"')


@pytest.mark.timeout(60)
def test_right_password_logs_in(pam_pooler):
    assert current_user(pam_pooler.dsn(GOOD, "db1", PASSWORD)) == GOOD
    # a second time, and again after a refusal: nothing is left behind
    refused(pam_pooler, GOOD, "nope")
    assert current_user(pam_pooler.dsn(GOOD, "db1", PASSWORD)) == GOOD


@pytest.mark.timeout(60)
def test_wrong_password_is_28p01(pam_pooler):
    refused(pam_pooler, GOOD, PASSWORD + "x")
    with pytest.raises(psycopg2.OperationalError, match=f'password authentication failed for user "{GOOD}"'):
        psycopg2.connect(pam_pooler.dsn(GOOD, "db1", "wrong"))
    assert "Authentication failure" in pam_pooler.log()   # PAM's reason goes to the log only


@pytest.mark.timeout(60)
def test_unknown_user(pam_pooler):
    user = f"ogpam_none_{TAG}"
    refused(pam_pooler, user, PASSWORD)
    assert "User not known to the underlying authentication module" in pam_pooler.log()


@pytest.mark.timeout(60)
def test_empty_password(pam_pooler):
    # libpq never sends an empty password, so the raw protocol client does
    refused(pam_pooler, GOOD, "")


@pytest.mark.timeout(60)
def test_expired_account_refused_by_acct_mgmt(pam_pooler):
    refused(pam_pooler, EXPIRED, PASSWORD)
    assert "User account has expired" in pam_pooler.log()


@pytest.mark.timeout(60)
def test_locked_account(pam_pooler):
    refused(pam_pooler, LOCKED, PASSWORD)


@pytest.mark.timeout(60)
def test_password_passthrough_logs_in_to_postgresql_with_the_pam_password(pam_pooler):
    if PASSTHROUGH not in MADE_USERS:
        pytest.skip(f"an OS user {PASSTHROUGH} existed already (its password is not the test's)")
    assert current_user(pam_pooler.dsn(PASSTHROUGH, "postgres", PASSTHROUGH_PASSWORD)) == PASSTHROUGH
    err = login_error(pam_pooler.port, PASSTHROUGH, "postgres", "wrong")
    assert err is not None and err["C"] == "28P01"


@pytest.mark.timeout(60)
def test_concurrent_logins(pam_pooler):
    import threading
    results = []

    def one(i):
        try:
            if i % 2:
                refused(pam_pooler, GOOD, "bad")
                results.append("refused")
            else:
                results.append(current_user(pam_pooler.dsn(GOOD, "db1", PASSWORD)))
        except Exception as e:      # noqa: BLE001 - collected and asserted below
            results.append(repr(e))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == sorted([GOOD] * 4 + ["refused"] * 4)
