"""The config package has no import circle: each module imports only the ones below it."""
from __future__ import annotations

import ast
import json
import pathlib
import subprocess
import sys

import pytest

PACKAGE = "odyssey_gevent.config"
ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGE_DIR = ROOT / "odyssey_gevent" / "config"

# module -> the package modules it may import (anywhere in the file, function bodies included)
ALLOWED = {
    "model": set(),
    "lexer": {"model"},
    "keywords": set(),
    "validate": {"model"},
    "dump": {"model", "keywords"},
    "reader_base": {"model", "lexer", "keywords"},
    "reader_route": {"model", "lexer", "keywords", "reader_base"},
    "reader_global": {"model", "lexer", "keywords", "reader_base", "reader_route"},
    "reader": {"model", "lexer", "reader_base", "reader_global", "validate"},
}


def python(code: str) -> str:
    """Run code in a fresh interpreter (nothing imported yet) and return its stdout."""
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout


def package_imports(name: str) -> set[str]:
    """The package modules that config/<name>.py imports, wherever the import statement is."""
    tree = ast.parse((PACKAGE_DIR / f"{name}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x / from .x import y
                base = node.module or ""
                targets = [f"{PACKAGE}.{base}" if base else f"{PACKAGE}.{a.name}"
                           for a in node.names]
            elif node.module == PACKAGE:  # from odyssey_gevent.config import model
                targets = [f"{PACKAGE}.{a.name}" for a in node.names]
            else:
                targets = [node.module or ""]
        else:
            continue
        for target in targets:
            if target == PACKAGE:
                found.add("__init__")
            elif target.startswith(PACKAGE + "."):
                found.add(target[len(PACKAGE) + 1:].split(".")[0])
    return found


def test_every_module_is_listed():
    on_disk = {p.stem for p in PACKAGE_DIR.glob("*.py")} - {"__init__"}
    assert on_disk == set(ALLOWED)


@pytest.mark.parametrize("name", sorted(ALLOWED))
def test_module_imports_only_the_modules_below_it(name):
    assert package_imports(name) <= ALLOWED[name]


def test_allowed_imports_have_no_circle():
    done: set[str] = set()
    while len(done) < len(ALLOWED):
        ready = {m for m, deps in ALLOWED.items() if m not in done and deps <= done}
        assert ready, f"import circle among {sorted(set(ALLOWED) - done)}"
        done |= ready


@pytest.mark.parametrize("first", sorted(ALLOWED, key=lambda m: -len(ALLOWED[m])))
def test_each_module_imports_first_in_a_fresh_interpreter(first):
    # With a circle, the module entered first sees its partner half-initialised and a
    # 'from X import name' fails; so every module gets to be first once, the rest after it.
    order = [first] + sorted(m for m in ALLOWED if m != first)
    python("".join(f"import {PACKAGE}.{m}\n" for m in order))


def test_model_loads_nothing_else_of_the_package():
    code = ("import json, sys\nimport odyssey_gevent.config.model\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('odyssey_gevent'))))")
    loaded = set(json.loads(python(code)))
    assert loaded == {"odyssey_gevent", PACKAGE, f"{PACKAGE}.model"}
    assert package_imports("model") == set()


def test_package_import_loads_only_the_model():
    assert package_imports("__init__") == {"model"}
    code = ("import json, sys\nfrom odyssey_gevent.config import Rule, DISCARD_ALL_QUERY\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('odyssey_gevent'))))")
    assert set(json.loads(python(code))) == {"odyssey_gevent", PACKAGE, f"{PACKAGE}.model"}


def test_dump_does_not_load_the_reader():
    code = ("import json, sys\nimport odyssey_gevent.config.dump\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('odyssey_gevent'))))")
    loaded = set(json.loads(python(code)))
    assert loaded == {"odyssey_gevent", PACKAGE, f"{PACKAGE}.model", f"{PACKAGE}.keywords",
                      f"{PACKAGE}.dump"}


def test_init_reexports_the_model():
    # imported here, not at the top: with a circle the tests above should fail, not collection
    import odyssey_gevent.config as package
    from odyssey_gevent.config import model
    assert package.__all__
    for name in package.__all__:
        assert getattr(package, name) is getattr(model, name)
