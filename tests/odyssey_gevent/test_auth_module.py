"""auth_module.py: load_module "python:<module>" in the config reader, and resolving a rule's
auth_module to the module's check() (the login path itself: tests/integration/test_auth_module.py)."""
from __future__ import annotations

import sys

import pytest

from odyssey_gevent import auth_module
from odyssey_gevent.config.model import ConfigError
from tests.odyssey_gevent.test_config_support import load_text, make_config


def test_python_load_module_is_not_a_warning(tmp_path):
    cfg = load_text(tmp_path, make_config(globals_='load_module "python:pkg.auth_mod"\n'
                                                   'load_module "/usr/lib/c_mod.so"'))
    assert cfg.modules == ["python:pkg.auth_mod", "/usr/lib/c_mod.so"]
    assert [w for w in cfg.warnings if "load_module" in w] == [
        w for w in cfg.warnings if "/usr/lib/c_mod.so" in w]
    assert len([w for w in cfg.warnings if "load_module" in w]) == 1


@pytest.mark.parametrize("bad", ["python:", "python:1abc", "python:a..b", "python:a-b"])
def test_python_load_module_needs_a_module_name(tmp_path, bad):
    with pytest.raises(ConfigError) as e:
        load_text(tmp_path, make_config(globals_=f'load_module "{bad}"'))
    assert "expected python:<dotted module name>" in str(e.value)


def test_resolve(tmp_path, monkeypatch):
    (tmp_path / "ogunit_authmod.py").write_text("def check(u, p, i):\n    return p == 'x'\n")
    (tmp_path / "ogunit_nocheck.py").write_text("check = 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        fn = auth_module.resolve(["python:ogunit_authmod"], "ogunit_authmod")
        assert fn("u", "x", {}) is True
        with pytest.raises(auth_module.ModuleError, match="is not loaded"):
            auth_module.resolve(["/usr/lib/ogunit_authmod.so"], "ogunit_authmod")
        with pytest.raises(auth_module.ModuleError, match="has no check"):
            auth_module.resolve(["python:ogunit_nocheck"], "ogunit_nocheck")
        with pytest.raises(auth_module.ModuleError, match="failed to import: ModuleNotFoundError"):
            auth_module.resolve(["python:ogunit_absent_xyz"], "ogunit_absent_xyz")
        # a module that exits while it is imported (a login or the console's CREATE MODULE) is
        # an error like any other, not the end of the pooler
        (tmp_path / "ogunit_exits.py").write_text("import sys\nsys.exit(3)\n")
        with pytest.raises(auth_module.ModuleError, match="failed to import: SystemExit"):
            auth_module.resolve(["python:ogunit_exits"], "ogunit_exits")
    finally:
        for m in ("ogunit_authmod", "ogunit_nocheck", "ogunit_exits"):
            sys.modules.pop(m, None)


def test_example_module_and_config():
    import importlib.util
    import pathlib
    from odyssey_gevent.config import reader
    root = pathlib.Path(__file__).resolve().parents[2] / "etc" / "examples"
    spec = importlib.util.spec_from_file_location("auth_module_example", root / "auth_module_example.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    info = {"database": "app", "tls": False}
    assert mod.check("app", "app-secret", info) is True
    assert mod.check("app", "wrong", info) is False
    assert mod.check("app", "app-secret", dict(info, database="other")) is False
    assert mod.check("nobody", "app-secret", info) is False
    cfg = reader.load(str(root / "auth-module.conf"))
    assert cfg.modules == ["python:auth_module_example"]
    assert [r.auth_module for r in cfg.rules if r.auth_module] == ["auth_module_example"]
