"""Read or write? The verdict that decides whether a query may run on a replica.

PostgreSQL's own grammar (libpg_query, driven from sql/parse.py) parses the text; `rules` turns each
statement into a verdict, and a string of several statements goes to the primary if any one of them
must. Verdicts are cached by exact query text in a bounded LRU (sql/parse.py TextCache): applications
send the same few hundred texts over and over, so after warm-up a classification is one dict lookup.
Texts longer than LONG_TEXT are keyed by a 16-byte digest instead, so the cache's memory stays
bounded even for multi-megabyte bulk INSERTs.

Hints live in comments, which the parser drops: `/* pgmux:primary */` forces the primary;
`/* pgmux:replica */` lets an ambiguous read (an EXECUTE of an unknown prepared statement, text the
parser rejects, e.g. syntax newer than it knows) go to a replica. It never sends a known write
there. The raw text is scanned only when it contains "pgmux:".

Prepared statements are per session, the cache is not: the cached result keeps each EXECUTE's name,
and `classify(sql, prepared)` resolves it against the caller's {name: Verdict of its PREPARE/Parse}.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pgmux.routing.rules import DEFAULT_WRITE_FUNCTIONS, FunctionMatcher, Rule, Target, Verdict, rule_for
from pgmux.sql.parse import LONG_TEXT, ParseError, TextCache, comments, statements_json

__all__ = ["DEFAULT_WRITE_FUNCTIONS", "LONG_TEXT", "Classifier", "Target", "Verdict", "classify"]
_HINT = re.compile(r"pgmux:(primary|replica)\b")
_COMMENT_HINT = re.compile(r"(?:/\*|--)[^\n]*?pgmux:(primary|replica)\b")
_PARSE_ERROR = Rule(Verdict("primary", "ambiguous: parse error"))
_EMPTY = Verdict("any", "empty")


@dataclass(frozen=True, slots=True)
class _Entry:
    rules: tuple[Rule, ...]
    hint: str | None  # "primary", "replica" or None
    verdict: Verdict  # with every EXECUTE unresolved


class Classifier:
    """Classifies query texts. One per process (it holds the cache); configured write functions add
    to DEFAULT_WRITE_FUNCTIONS: exact names, "schema.name", or "prefix*"."""

    def __init__(self, write_functions: Iterable[str] = frozenset(), cache_size: int = 10000) -> None:
        if cache_size < 0:
            raise ValueError("cache_size must be >= 0")
        self.functions = FunctionMatcher(DEFAULT_WRITE_FUNCTIONS | frozenset(write_functions))
        self.cache_size = cache_size
        self._cache: TextCache[_Entry] = TextCache(cache_size)

    @property
    def hits(self) -> int:
        return self._cache.hits

    @property
    def parses(self) -> int:
        return self._cache.parses

    def classify(self, sql: str, prepared: Mapping[str, Verdict] | None = None) -> Verdict:
        entry = self._entry(sql)
        if not any(r.executes is not None for r in entry.rules):
            return entry.verdict
        known = prepared or {}
        return _finish([_resolve(r, known) for r in entry.rules], entry.hint)

    def clear_cache(self) -> None:
        self._cache.clear()

    def __len__(self) -> int:
        return len(self._cache)

    def _entry(self, sql: str) -> _Entry:
        return self._cache.get(sql, self._analyse)

    def _analyse(self, sql: str) -> _Entry:
        try:
            rules = tuple(rule_for(s["stmt"], self.functions) for s in statements_json(sql))
        except (ParseError, UnicodeError):  # UnicodeError: lone surrogates from undecodable bytes
            rules = (_PARSE_ERROR,)
        hint = _hint(sql)
        return _Entry(rules, hint, _finish([r.verdict for r in rules], hint))


def _hint(sql: str) -> str | None:
    if "pgmux:" not in sql:
        return None
    try:
        found = {m.group(1) for c in comments(sql) for m in _HINT.finditer(c.str)}
    except (ParseError, UnicodeError):  # the lexer gave up (an unterminated quote): use the raw text
        found = {m.group(1) for m in _COMMENT_HINT.finditer(sql)}
    return "primary" if "primary" in found else "replica" if found else None


def _resolve(rule: Rule, known: Mapping[str, Verdict]) -> Verdict:
    if rule.executes is None:
        return rule.verdict
    prepared = known.get(rule.executes)
    if prepared is None:
        return rule.verdict
    reason = prepared.reason.removeprefix("prepare: ")
    return Verdict(prepared.target, f"{rule.prefix}execute {rule.executes}: {reason}")


def _finish(verdicts: list[Verdict], hint: str | None) -> Verdict:
    merged = _merge(verdicts)
    if hint == "primary":
        return _with(merged, "primary", "hint pgmux:primary")
    if hint == "replica" and merged.target == "primary" and merged.reason.startswith("ambiguous"):
        return _with(merged, "replica", "hint pgmux:replica")
    return merged


def _merge(verdicts: list[Verdict]) -> Verdict:
    """Several statements: the strictest target wins, its first statement names the reason, and the
    transaction flags are or-ed. `prepares` survives only for a lone PREPARE."""
    if len(verdicts) == 1:
        return verdicts[0]
    if not verdicts:
        return _EMPTY
    for target in ("primary", "replica", "any"):
        first = next((v for v in verdicts if v.target == target), None)
        if first is not None:
            break
    assert first is not None
    return Verdict(first.target, first.reason,
                   begins_tx=any(v.begins_tx for v in verdicts),
                   read_only_tx=any(v.read_only_tx for v in verdicts),
                   ends_tx=any(v.ends_tx for v in verdicts))


def _with(v: Verdict, target: Target, reason: str) -> Verdict:
    return Verdict(target, reason, v.begins_tx, v.read_only_tx, v.ends_tx, v.prepares)


_default: Classifier | None = None


def classify(sql: str) -> Verdict:
    """Classify with the built-in write functions and a module-level cache. The pooler should own a
    configured Classifier; this is for tools, tests and the REPL."""
    global _default
    if _default is None:
        _default = Classifier()
    return _default.classify(sql)
