"""docs/architecture.md's module list stays true: every module it names imports, and every module
of the three packages is named there (issue 9: the document had listed modules that did not
exist)."""
from __future__ import annotations

import importlib
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGES = ("odyssey_gevent", "kiwi", "machinarium")


def listed_modules() -> list[str]:
    """Dotted names from the first ```text block after '## Modules'."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text[text.index("\n## Modules"):]
    block = re.search(r"```text\n(.*?)```", section, re.S).group(1)
    names, package = [], None
    for line in block.splitlines():
        if not line.strip():
            continue
        if not line.startswith(" "):
            package = line.strip().rstrip("/").replace("/", ".")
            continue
        names.append(f"{package}.{line.split()[0]}")
    return names


def existing_modules() -> set[str]:
    found = set()
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            rel = path.relative_to(ROOT).with_suffix("")
            if rel.name == "__init__":
                continue
            found.add(".".join(rel.parts))
    return found


@pytest.mark.parametrize("name", listed_modules())
def test_every_listed_module_imports(name):
    if name == "odyssey_gevent.__main__":
        assert (ROOT / "odyssey_gevent" / "__main__.py").is_file()      # importing it runs the CLI
        return
    importlib.import_module(name)


def test_every_module_is_listed():
    listed = listed_modules()
    assert len(listed) == len(set(listed)), "a module is listed twice"
    assert sorted(existing_modules() - set(listed)) == []
    assert sorted(set(listed) - existing_modules()) == []
