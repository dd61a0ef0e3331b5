"""The pure packages stay pure: no event loop, sockets or TLS, so they run in tests without I/O.

Time and I/O enter them from the runtime and net packages; a stray import here would quietly tie
the sans-IO core to one I/O model.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import pgmux

PURE = ("protocol", "session", "pooling", "routing", "config", "admin")
BANNED = frozenset({"asyncio", "socket", "ssl", "selectors", "uvloop"})
ROOT = Path(pgmux.__file__).parent


def banned_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                "import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
            names = [str(node.args[0].value)]
        found += [f"{path.relative_to(ROOT.parent)}:{node.lineno} imports {n}" for n in names
                  if n.split(".")[0] in BANNED]
    return found


@pytest.mark.parametrize("package", PURE)
def test_pure_package_imports_no_io(package: str) -> None:
    directory = ROOT / package
    assert directory.is_dir(), f"pgmux.{package} is missing"
    files = sorted(directory.rglob("*.py"))
    assert files
    problems = [p for f in files for p in banned_imports(f)]
    assert problems == []


def test_the_checker_sees_each_form(tmp_path: Path) -> None:
    sample = ROOT / "_sample_for_test.py"  # must sit under ROOT for the relative path in messages
    text = ("import os, asyncio.events\nfrom socket import socket\nimport importlib\n"
            "def f():\n    import ssl\n    importlib.import_module('selectors')\n"
            "from . import uvloop\nimport uvloopish\n")
    probe = tmp_path / "probe.py"
    probe.write_text(text)
    # Parse the probe's text as if it lived in the package.
    tree_lines = banned_imports.__wrapped__(probe) if hasattr(banned_imports, "__wrapped__") else None
    assert tree_lines is None
    found = [line.split(" imports ")[1] for line in _check_text(text, sample)]
    assert found == ["asyncio.events", "socket", "ssl", "selectors"]


def _check_text(text: str, where: Path) -> list[str]:
    class _P(type(where)):  # type: ignore[misc]
        def read_text(self, *a: object, **k: object) -> str:
            return text

    return banned_imports(_P(where))
