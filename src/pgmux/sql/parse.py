"""The one place pgmux drives pglast (libpg_query: PostgreSQL's own grammar, scanner and deparser).

Two consumers read SQL text, each behind its own screen, and each caches what it derives from a
parse by exact text in a `TextCache`, so a text is parsed once per consumer while its entry lives:
- routing/classify.py (read or write?) reads `statements_json`: libpg_query's JSON tree, because
  building pglast's Python AST costs about ten times the parse itself and its rules look for a
  handful of node types only;
- session/statements.py (what a statement leaves in the session) reads `statements`, the AST with
  character positions, behind a byte screen and a word prefilter (`tokens`), and deparses type
  names (`deparse`).
A text both routed and tracked (a SET on a read/write-split database) is parsed once by each: their
trees differ in form and in cost, and neither is kept (only what each derives, a few hundred bytes).

The bound: each TextCache holds at most `maxsize` entries (DEFAULT_CACHE_SIZE), least recently used
first out, keyed by the text itself up to LONG_TEXT characters and by a 16-byte digest beyond, so a
multi-megabyte bulk INSERT costs its entry, not its text.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from pglast import ast, parse_sql
from pglast.parser import ParseError, parse_sql_json, scan
from pglast.parser import comments as _comments
from pglast.stream import RawStream

__all__ = ["DEFAULT_CACHE_SIZE", "LONG_TEXT", "ParseError", "TextCache", "comments", "deparse", "statements",
           "statements_json", "tokens"]

LONG_TEXT = 4096
DEFAULT_CACHE_SIZE = 10_000


def statements_json(sql: str) -> list[dict[str, Any]]:
    """The text's statements as libpg_query's JSON parse tree ({"stmt": {"SelectStmt": {...}}, ...}).
    Raises ParseError, or UnicodeError for lone surrogates (bytes a client sent that are not UTF-8)."""
    if "\x00" in sql:  # the C parser would stop at the NUL and never see what follows
        raise ParseError("NUL in query text")
    stmts: list[dict[str, Any]] = json.loads(parse_sql_json(sql)).get("stmts", [])
    return stmts


def statements(sql: str) -> tuple[ast.RawStmt, ...]:
    """The text's statements as pglast's AST (positions in characters of `sql`). Raises ParseError."""
    return tuple(parse_sql(sql))


def tokens(sql: str) -> Any:
    """PostgreSQL's scanner over the text (a tenth of a parse): tokens with .name, .start, .end."""
    return scan(sql)


def comments(sql: str) -> Any:
    """The text's comments (.str), which the parser drops."""
    return _comments(sql)


def deparse(node: ast.Node) -> str:
    """A node as SQL text (a type name, say), as PostgreSQL would print it."""
    return str(RawStream()(node))


V = TypeVar("V")


class TextCache(Generic[V]):
    """What a consumer derived from each text's parse: a bounded LRU by exact text (see the module
    docstring for the bound). `maxsize` 0 keeps nothing. `hits` counts answers from the cache,
    `parses` the texts derived (parsed) anew."""

    def __init__(self, maxsize: int = DEFAULT_CACHE_SIZE) -> None:
        if maxsize < 0:
            raise ValueError("a cache size must be >= 0")
        self.maxsize = maxsize
        self.hits = 0
        self.parses = 0
        self._entries: OrderedDict[str | bytes, V] = OrderedDict()

    def get(self, sql: str, derive: Callable[[str], V]) -> V:
        """The cached value for `sql`, or derive(sql), kept."""
        key: str | bytes = sql if len(sql) <= LONG_TEXT else _digest(sql)
        entries = self._entries
        found = entries.get(key)
        if found is not None:
            entries.move_to_end(key)
            self.hits += 1
            return found
        self.parses += 1
        value = derive(sql)
        if self.maxsize:
            entries[key] = value
            if len(entries) > self.maxsize:
                entries.popitem(last=False)
        return value

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[str | bytes]:
        return iter(self._entries)


def _digest(sql: str) -> bytes:
    return hashlib.blake2b(sql.encode("utf-8", "surrogatepass"), digest_size=16).digest()
