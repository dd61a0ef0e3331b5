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


# -- who may import whom ----------------------------------------------------------------------------
def imported_modules(path: Path, module: str = "") -> list[tuple[int, str]]:
    """Every pgmux module `path` imports, at any depth (TYPE_CHECKING and function-level imports
    included: a type-only import ties the two modules as surely), resolved to absolute names. For
    `from a.b import c`, both `a.b` and `a.b.c` are listed (c may be a module or a name in a.b).
    `module`: the file's dotted name, when it is not under pgmux's own directory."""
    parts = module.split(".") if module else list(path.relative_to(ROOT.parent).with_suffix("").parts)
    here = parts[:-1]  # the package a relative import starts from (a package's __init__ is in it)
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[:len(here) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.append((node.lineno, mod))
            out += [(node.lineno, f"{mod}.{a.name}") for a in node.names]
    return [(line, name) for line, name in out if name.split(".")[0] == "pgmux"]


def unit_of(module: str) -> str | None:
    """The package (or top-level module) of pgmux a module name belongs to: pgmux.session.client ->
    session, pgmux.errors -> errors."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def package_graph() -> dict[str, dict[str, list[str]]]:
    """unit -> unit it imports -> where (file:line)."""
    graph: dict[str, dict[str, list[str]]] = {}
    for f in sorted(ROOT.rglob("*.py")):
        rel = f.relative_to(ROOT.parent)
        src = unit_of(".".join(rel.with_suffix("").parts))
        for line, name in imported_modules(f):
            dst = unit_of(name)
            if src and dst and dst != src:
                graph.setdefault(src, {}).setdefault(dst, []).append(f"{rel}:{line}")
    return graph


def find_cycle(graph: dict[str, dict[str, list[str]]]) -> list[str]:
    """One cycle of the graph as [a, b, ..., a], or [] when it has none."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(v: str) -> list[str]:
        state[v] = 1
        stack.append(v)
        for w in sorted(graph.get(v, {})):
            if state.get(w) == 1:
                return stack[stack.index(w):] + [w]
            if w not in state and (found := visit(w)):
                return found
        stack.pop()
        state[v] = 2
        return []

    for v in sorted(graph):
        if v not in state and (found := visit(v)):
            return found
    return []


def test_sessions_import_nothing_of_the_runtime_or_the_network() -> None:
    """session/ talks to the outside through session/hub.py's Hub only."""
    problems = [f"{f.relative_to(ROOT.parent)}:{line} imports {name}"
                for f in sorted((ROOT / "session").rglob("*.py"))
                for line, name in imported_modules(f) if unit_of(name) in ("runtime", "net")]
    assert problems == []


def test_no_import_cycle_between_packages() -> None:
    graph = package_graph()
    assert "session" in graph and "runtime" in graph  # the walk sees the packages
    cycle = find_cycle(graph)
    where = [graph[a][b][0] for a, b in zip(cycle, cycle[1:], strict=False)]
    assert cycle == [], f"import cycle {' -> '.join(cycle)} (first edges at {where})"


def module_graph() -> dict[str, dict[str, list[str]]]:
    """module -> pgmux module it imports -> where (file:line)."""
    files = {".".join(f.relative_to(ROOT.parent).with_suffix("").parts).removesuffix(".__init__"): f
             for f in sorted(ROOT.rglob("*.py"))}
    graph: dict[str, dict[str, list[str]]] = {}
    for mod, f in files.items():
        for line, name in imported_modules(f):
            if name in files and name != mod:
                graph.setdefault(mod, {}).setdefault(name, []).append(f"{f.relative_to(ROOT.parent)}:{line}")
    return graph


def test_no_import_cycle_between_runtime_modules() -> None:
    """App is built in layers (runtime/core.py, servers.py, handoff.py, logins.py, app.py), each
    importing only those below it; the modules around it type the hub as the lowest layer they need
    (or a Protocol, runtime/routing.py), so none imports a layer that imports it back."""
    graph = {a: {b: w for b, w in edges.items() if b.startswith("pgmux.runtime.")}
             for a, edges in module_graph().items() if a.startswith("pgmux.runtime.")}
    assert "pgmux.runtime.core" in graph["pgmux.runtime.servers"]  # the walk sees the layers
    cycle = find_cycle(graph)
    where = [graph[a][b][0] for a, b in zip(cycle, cycle[1:], strict=False)]
    assert cycle == [], f"import cycle {' -> '.join(cycle)} (first edges at {where})"


def test_the_cycle_finder_finds_cycles(tmp_path: Path) -> None:
    assert find_cycle({"a": {"b": []}, "b": {"c": []}, "c": {"a": []}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": []}, "b": {"c": []}, "d": {"a": []}}) == []
    p = tmp_path / "probe.py"
    p.write_text("from pgmux.runtime import app\nif X:\n    from ..net.tls import y\nimport os\n")
    assert [n for _, n in imported_modules(p, "pgmux.session.probe")] == [
        "pgmux.runtime", "pgmux.runtime.app", "pgmux.net.tls", "pgmux.net.tls.y"]
    assert unit_of("pgmux.session.client") == "session" and unit_of("pgmux.errors") == "errors"


# Units a reader can hold (issue 13): a source file over MAX_FILE_LINES, or with a function over
# MAX_FUNCTION_LINES, says why in a line starting "# long:" among its first 15 lines.
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 80


def oversized(source: str, label: str) -> list[str]:
    if any(line.startswith("# long:") for line in source.splitlines()[:15]):
        return []
    found = []
    if source.count("\n") > MAX_FILE_LINES:
        found.append(f"{label}: {source.count(chr(10))} lines")
    for node in ast.walk(ast.parse(source, label)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n = (node.end_lineno or node.lineno) - node.lineno + 1
            if n > MAX_FUNCTION_LINES:
                found.append(f"{label}:{node.lineno} {node.name}() has {n} lines")
    return found


def test_no_file_or_function_too_long_without_a_reason() -> None:
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        found += oversized(path.read_text(), str(path.relative_to(ROOT)))
    assert found == []


def test_the_size_check_sees_long_files_and_functions() -> None:
    body = "\n".join(f"    x = {i}" for i in range(MAX_FUNCTION_LINES))
    long_function = f"def f():\n{body}\n"
    assert oversized(long_function, "f.py") == ["f.py:1 f() has 81 lines"]
    assert oversized("x = 1\n" * (MAX_FILE_LINES + 1), "g.py") == [f"g.py: {MAX_FILE_LINES + 1} lines"]
    assert oversized("# long: a table kept whole\n" + long_function, "h.py") == []
    assert oversized("x = 1\n" * MAX_FILE_LINES, "i.py") == []
