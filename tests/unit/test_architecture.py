"""The pure packages stay pure: no event loop, sockets or TLS, so they run in tests without I/O.

Time and I/O enter them from the runtime and net packages; a stray import here would quietly tie
the sans-IO core to one I/O model.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import pgmux

PURE = ("protocol", "session", "pooling", "routing", "config", "admin", "sql")
BANNED = frozenset({"asyncio", "socket", "ssl", "selectors", "uvloop"})
ROOT = Path(pgmux.__file__).parent
_IMPORTERS = ("import_module", "__import__")


def banned_imports(source: str, label: str) -> list[str]:
    """Every import of a banned module, at any depth: plain, from-import, or importlib by name."""
    found = []
    for node in ast.walk(ast.parse(source, label)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and getattr(node.func, "attr", getattr(node.func, "id", None)) in _IMPORTERS):
            names = [str(node.args[0].value)]
        found += [f"{label}:{node.lineno} imports {n}" for n in names if n.split(".")[0] in BANNED]
    return found


@pytest.mark.parametrize("package", PURE)
def test_pure_package_imports_no_io(package: str) -> None:
    directory = ROOT / package
    assert (directory / "__init__.py").is_file(), f"pgmux.{package} is missing"
    problems = [p for f in sorted(directory.rglob("*.py"))
                for p in banned_imports(f.read_text(), str(f.relative_to(ROOT.parent)))]
    assert problems == []


def test_the_checker_sees_each_form() -> None:
    source = ("import os, asyncio.events\nfrom socket import socket\nimport importlib\n"
              "def f():\n    import ssl\n    importlib.import_module('selectors')\n    __import__('uvloop')\n"
              "from . import uvloop\nimport uvloopish\nfrom sslx import y\n")
    assert banned_imports(source, "x.py") == [
        "x.py:1 imports asyncio.events", "x.py:2 imports socket", "x.py:5 imports ssl",
        "x.py:6 imports selectors", "x.py:7 imports uvloop",
    ]
