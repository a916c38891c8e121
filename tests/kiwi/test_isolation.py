"""kiwi is sans-IO: importing it loads no socket, gevent, machinarium or pooler module."""
from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import kiwi

KIWI_DIR = pathlib.Path(kiwi.__file__).parent
REPO = KIWI_DIR.parent
FORBIDDEN = {"socket", "ssl", "select", "selectors", "asyncio", "gevent", "greenlet",
             "machinarium", "odyssey_gevent"}

PROBE = """
import sys
before = set(sys.modules)
import kiwi
import kiwi.be_read, kiwi.be_write, kiwi.fe_read, kiwi.fe_write, kiwi.framer, kiwi.header
import kiwi.md5, kiwi.scram, kiwi.saslprep, kiwi.errors, kiwi.error_codes
new = sorted(set(sys.modules) - before)
print(repr(("gevent" in sys.modules, new)))
"""


def test_import_loads_no_io_modules():
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, capture_output=True,
                         text=True, timeout=60, check=True)
    gevent_loaded, new = ast.literal_eval(out.stdout.strip().splitlines()[-1])
    assert not gevent_loaded
    assert not {m.split(".")[0] for m in new} & FORBIDDEN, new


def test_no_kiwi_source_imports_io():
    sources = sorted(KIWI_DIR.glob("*.py"))
    assert len(sources) >= 12
    for path in sources:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] not in FORBIDDEN, f"{path.name} imports {name}"


def test_public_names():
    for name in kiwi.__all__:
        assert hasattr(kiwi, name), name
    assert "read contract" in kiwi.__doc__
