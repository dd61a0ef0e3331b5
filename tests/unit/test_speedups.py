"""pgmux._speedups.screen against its definition, session.tracking.screen_py.

The C module is built by `pip install` (setup.py); on this project's machines a C compiler is always
present, so a missing module is a failure here, not a skip: the forwarding path would silently run
the slower Python scan.
"""

from __future__ import annotations

import importlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgmux.session import tracking
from pgmux.session.tracking import screen_py

speedups = importlib.import_module("pgmux._speedups")

STATEMENTS = [
    "SELECT abalance FROM pgbench_accounts WHERE aid = 12345;",
    "select 1", "SET search_path = a", "  set x = 1", "\t\nReSeT ALL", "RESET timezone", "DISCARD ALL",
    "deallocate all", "LISTEN chan", "UNLISTEN *", "LOAD 'auto_explain'", "CLOSE c", "DECLARE c CURSOR WITH HOLD",
    "/* hint */ select 1", "-- c\nselect 1", "DO $$ begin end $$", "EXECUTE p(1)", "EXPLAIN select 1",
    "select pg_advisory_lock(1)", "SELECT PG_ADVISORY_UNLOCK(1)", "select set_config('a.b', 'c', false)",
    "create temp table t(x int)", "CREATE TEMPORARY TABLE t()", "select u&'\\0041'", "SELECT U&\"x\"",
    "select 1; select 2", "select 1;;  ", "select 1; set x = 2", "select 1;\x00", "select 1; \x00 x",
    "insert into t values (1); commit", "select 'hold'", "select 1; listen x", "", ";", " ", "select_1",
    "update t set x = 1", "select '&' ", "UPDATE t SET x = 1; select 1", "\x0b\x0cset x=1",
    "select 'é' from t", "SELECT * FROM \"Temp\"",
]


def both(text: bytes, start: int = 0, end: int | None = None) -> tuple[bool, bool]:
    end = len(text) if end is None else end
    return speedups.screen(text, start, end), screen_py(text, start, end)


def test_the_forwarding_path_uses_the_c_scan() -> None:
    assert tracking.screen is speedups.screen


@pytest.mark.parametrize("sql", STATEMENTS)
def test_c_scan_agrees_on_statements(sql: str) -> None:
    body = sql.encode() + b"\x00"
    c, py = both(body)
    assert c == py
    framed = b"Q\x00\x00\x00\x00" + body  # as the relay calls it: a slice of the read
    assert speedups.screen(framed, 5, len(framed)) == py
    assert speedups.screen(memoryview(framed), 5, len(framed)) == py


def test_c_scan_bounds() -> None:
    assert both(b"set x", 0, 0) == (False, False)
    assert both(b"xxset x", 2, 100) == (True, True)  # an end past the data is clipped, as slicing does
    assert both(b"set x", 4, 2) == (False, False)


_WORDS = st.sampled_from(["set", "SET", "temp", "TeMp", "advisory", "set_config", "u&", "U&", "&", "_", ";", " ",
                          "\t", "\x00", "hold", "load", "close", "declare", "--", "/*", "do", "execute", "reset",
                          "select", "x", "é", "\x0b"])


@settings(max_examples=400, deadline=None)
@given(st.lists(_WORDS, max_size=8), st.binary(max_size=12))
def test_c_scan_agrees_on_random_text(words: list[str], noise: bytes) -> None:
    text = "".join(words).encode() + noise
    for start in (0, 1, 3):
        c, py = both(text, start)
        assert c == py
