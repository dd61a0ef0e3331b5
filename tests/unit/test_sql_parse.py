"""One place drives pglast (sql/parse.py), and its cache by text is bounded."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from pgmux.sql.parse import LONG_TEXT, TextCache, statements, statements_json, tokens

SRC = Path(__file__).resolve().parents[2] / "src" / "pgmux"
# What calls into pglast's parser, scanner or deparser (node classes, enums and keyword lists are data).
DRIVERS = {"pglast.parser", "pglast.stream", "pglast.printers"}
CALLS = {"parse_sql", "parse_sql_json", "parse_sql_protobuf", "parse_plpgsql_json", "scan", "split", "prettify",
         "comments", "fingerprint", "deparse_protobuf"}


def _drives_pglast(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pglast"):
            if node.module in DRIVERS or any(a.name in CALLS for a in node.names):
                found.append(f"from {node.module} import ...")
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "pglast" \
                and node.attr in CALLS:
            found.append(f"pglast.{node.attr}")
    return found


def test_only_sql_parse_drives_pglast() -> None:
    drivers = {str(p.relative_to(SRC)): f for p in SRC.rglob("*.py") if (f := _drives_pglast(p))}
    assert list(drivers) == ["sql/parse.py"], drivers


def test_the_checker_sees_a_driver(tmp_path: Path) -> None:
    f = tmp_path / "x.py"
    f.write_text("import pglast\nfrom pglast.parser import scan\npglast.parse_sql('select 1')\n")
    assert _drives_pglast(f) == ["from pglast.parser import ...", "pglast.parse_sql"]


def test_both_forms_read_the_same_statements() -> None:
    sql = "SET search_path = a; SELECT 1"
    assert [type(s.stmt).__name__ for s in statements(sql)] == [next(iter(s["stmt"])) for s in statements_json(sql)]
    assert [t.name for t in tokens("set x")][:1] == ["SET"]


def test_text_cache_is_a_bounded_lru_keyed_by_digest_beyond_long_text() -> None:
    derived: list[str] = []

    def derive(sql: str) -> int:
        derived.append(sql)
        return len(sql)

    cache: TextCache[int] = TextCache(2)
    long = "x" * (LONG_TEXT + 1)
    assert [cache.get(s, derive) for s in ("a", "bb", "a", long, "a", "bb")] == [1, 2, 1, LONG_TEXT + 1, 1, 2]
    assert derived == ["a", "bb", long, "bb"]  # "bb" was the least recently used when `long` came
    assert (cache.hits, cache.parses, len(cache)) == (2, 4, 2)
    assert sorted(type(k).__name__ for k in cache) == ["str", "str"]
    cache.get(long, derive)
    assert any(isinstance(k, bytes) and len(k) == 16 for k in cache)
    with pytest.raises(ValueError):
        TextCache(-1)
    none: TextCache[int] = TextCache(0)
    none.get("a", derive)
    assert len(none) == 0 and none.parses == 1
