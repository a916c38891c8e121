"""Real-world configs: our samples, and every config file shipped with C Odyssey 1.5.1.

The C configs are read at tag v1.5.1 from the C Odyssey git clone that ODYSSEY_C_MIRROR names
(skipped when it is unset): the ones C Odyssey accepts must load unchanged; its config-validation
"invalid" set must be rejected.
"""
from __future__ import annotations

import os
import pathlib
import subprocess

import pytest

from odyssey_gevent.config import reader
from odyssey_gevent.config.dump import dump_config
from odyssey_gevent.config.model import ConfigError

ROOT = pathlib.Path(__file__).resolve().parents[2]
MIRROR_ENV = "ODYSSEY_C_MIRROR"
TAG = "v1.5.1"

# Not Odyssey configs, or configs C 1.5.1 itself rejects / that need files from a docker image.
NOT_LOADABLE = {
    "docs/nginx.conf": "not an odyssey config",
    "config-examples/odyssey-dev-ldap.conf": "uses log_stats_general_prom, unknown to C 1.5.1 as well",
    "test/functional/tests/hba/common.conf": "fragment included by tcp.conf/unix.conf",
    "test/functional/tests/hba/tcp.conf": "includes /tests/hba/common.conf (docker path)",
    "test/functional/tests/hba/unix.conf": "includes /tests/hba/common.conf (docker path)",
    "test/functional/tests/hba/odyssey_hba.conf": "a pg_hba file",
    "test/functional/tests/pg/pg_hba-test.conf": "a pg_hba file",
    "test/replication/pg_hba.conf": "a pg_hba file",
}
# config-validation cases marked invalid that released 1.5.1 code accepts (stale test data:
# coroutine_stack_size 8 is >= 4; pstmt + pool_discard is rewritten to smart discard; session
# pooling just switches prepared statements off).
STALE_INVALID = {
    "coroutine_stack_size/invalid/odyssey-test5.conf",
    "pool_reserve_prepared_statement/invalid/odyssey-test1.conf",
    "pool_reserve_prepared_statement/invalid/odyssey-test2.conf",
}


def _c_configs() -> tuple[dict[str, str], str]:
    """The .conf files of C Odyssey at TAG by path, or no files and the reason why."""
    mirror = os.environ.get(MIRROR_ENV)
    if not mirror:
        return {}, (f"set {MIRROR_ENV} to a C Odyssey source tree (a git clone with tag {TAG}) "
                    f"to compare sample configs")
    try:
        names = subprocess.run(["git", "-C", mirror, "ls-tree", "-r", "--name-only", TAG],
                               capture_output=True, text=True, check=True, timeout=30).stdout.split()
        names = [n for n in names if n.endswith(".conf") and not n.startswith("debian/")]
        batch = "".join(f"{TAG}:{n}\n" for n in names).encode()
        out = subprocess.run(["git", "-C", mirror, "cat-file", "--batch"], input=batch,
                             capture_output=True, check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as e:
        return {}, f"{MIRROR_ENV}={mirror}: can't read tag {TAG} with git ({e})"
    files, pos = {}, 0
    for name in names:
        header_end = out.index(b"\n", pos)
        size = int(out[pos:header_end].split()[2])
        files[name] = out[header_end + 1:header_end + 1 + size].decode("utf-8", "replace")
        pos = header_end + 1 + size + 1
    return files, f"{MIRROR_ENV}={mirror}: no .conf files at tag {TAG}"


C_CONFIGS, NO_C_CONFIGS = _c_configs()
needs_mirror = pytest.mark.skipif(not C_CONFIGS, reason=NO_C_CONFIGS)


def _cases(kind):
    """C config names expected to load ('valid') or to be rejected ('invalid')."""
    out = []
    for name in sorted(C_CONFIGS):
        if name in NOT_LOADABLE:
            continue
        invalid = "/config-validation/configs/" in name and "/invalid/" in name
        stale = invalid and name.split("configs/", 1)[1] in STALE_INVALID
        if kind == "invalid" and invalid and not stale:
            out.append(name)
        elif kind == "valid" and (not invalid or stale):
            out.append(name)
    return out


@needs_mirror
def test_mirror_has_many_configs():
    assert len(_cases("valid")) > 100 and len(_cases("invalid")) > 40


@needs_mirror
@pytest.mark.parametrize("name", _cases("valid"))
def test_c_odyssey_config_loads(name, tmp_path):
    path = tmp_path / pathlib.Path(name).name
    path.write_text(C_CONFIGS[name])
    cfg = reader.load(str(path))
    assert cfg.listen and cfg.storages and cfg.rules


@needs_mirror
@pytest.mark.parametrize("name", _cases("invalid"))
def test_c_odyssey_invalid_config_rejected(name, tmp_path):
    path = tmp_path / pathlib.Path(name).name
    path.write_text(C_CONFIGS[name])
    with pytest.raises(ConfigError) as e:
        reader.load(str(path))
    assert all(err.startswith(f"{path}:") for err in e.value.errors)


# ----------------------------------------------------------------------------------------------
# our own samples

SAMPLES = [ROOT / "etc" / "odyssey.conf"] + sorted(p for p in (ROOT / "etc" / "examples").glob("*.conf")
                                                   if p.name != "hba.conf")   # hba.conf: an hba file


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_sample_loads_without_warnings(path):
    cfg = reader.load(str(path))
    assert cfg.warnings == []
    assert dump_config(cfg)


def test_main_sample_contents():
    cfg = reader.load(str(ROOT / "etc" / "odyssey.conf"))
    assert cfg.listen[0].host == "127.0.0.1" and cfg.listen[0].port == 6432
    st = cfg.storages["postgres_server"]
    assert (st.type, st.host, st.port) == ("remote", "127.0.0.1", 5432)
    default = next(r for r in cfg.rules if r.db_is_default and r.user_is_default)
    assert (default.authentication, default.pool, default.pool_size, default.pool_discard,
            default.pool_reserve_prepared_statement) == ("none", "transaction", 20, False, True)
    assert default.storage is st
    console = next(r for r in cfg.rules if r.db_name == "console")
    assert console.role == "admin" and console.pool == "session" and console.storage.is_local
    assert cfg.log_format == "%p %t %l [%i %s] (%c) %m\\n" and cfg.workers == 1


def test_md5_scram_sample():
    cfg = reader.load(str(ROOT / "etc" / "examples" / "session-md5-scram.conf"))
    by_user = {r.user_name: r for r in cfg.rules}
    assert (by_user["md5_user"].authentication, by_user["md5_user"].password) == ("md5", "md5pass")
    assert (by_user["scram_user"].authentication, by_user["scram_user"].password) == (
        "scram-sha-256", "scrampass")


def test_tls_sample_does_not_open_cert_files(monkeypatch):
    import builtins
    real_open = builtins.open
    opened = []

    def spy(file, *a, **kw):
        opened.append(str(file))
        return real_open(file, *a, **kw)
    monkeypatch.setattr(builtins, "open", spy)
    cfg = reader.load(str(ROOT / "etc" / "examples" / "tls.conf"))
    assert cfg.listen[0].tls == "require" and cfg.listen[0].tls_cert_file == "/etc/odyssey/server.crt"
    assert opened == [str(ROOT / "etc" / "examples" / "tls.conf")]


def test_all_auth_sample_uses_every_method():
    """etc/examples/all-auth.conf: one config with every client authentication method."""
    cfg = reader.load(str(ROOT / "etc" / "examples" / "all-auth.conf"))
    rules = [r for r in cfg.rules if not r.is_internal]
    assert {r.authentication for r in rules} >= {"cert", "md5", "scram-sha-256", "clear_text"}
    assert any(r.auth_query for r in rules) and any(r.ldap_endpoint_name for r in rules)
    assert any(r.auth_pam_service for r in rules) and any(r.auth_module for r in rules)
    assert cfg.hba_rules                      # the hba file next to it was read
    assert cfg.listen[0].tls == "require" and cfg.listen[0].tls_ca_file
