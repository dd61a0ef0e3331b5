"""pgmux._speedups against its definitions in protocol/scans.py (screen, query, walk, steps, shape, binds).

The C module is built by `pip install` (setup.py); on this project's machines a C compiler is always
present, so a missing module is a failure here, not a skip: the forwarding path would silently run
the slower Python scan.
"""

from __future__ import annotations

import importlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgmux.protocol import messages as m
from pgmux.protocol import scans
from pgmux.protocol.scans import noted_table, ready_py, screen_py, walk_py

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
    "select 'é' from t", "SELECT * FROM \"Temp\"", "PREPARE p AS select 1", "drop table t", "CREATE TABLE t()",
    "createdb", " Drop x", "SAVEPOINT a", "rollback to a", "Release a", "select 1; ROLLBACK TO s",
    "select 1; release s", "select 1; savepoint s", "rollbacks", "select 1; commit",
]


def both(text: bytes, start: int = 0, end: int | None = None) -> tuple[bool, bool]:
    end = len(text) if end is None else end
    return speedups.screen(text, start, end), screen_py(text, start, end)


def test_the_forwarding_path_uses_the_c_scan() -> None:
    assert scans.screen is speedups.screen


@pytest.mark.parametrize("sql", STATEMENTS)
def test_c_scan_agrees_on_statements(sql: str) -> None:
    body = sql.encode() + b"\x00"
    c, py = both(body)
    assert c == py
    framed = b"Q\x00\x00\x00\x00" + body  # as the relay calls it: a slice of the read
    assert speedups.screen(framed, 5, len(framed)) == py
    assert speedups.screen(memoryview(framed), 5, len(framed)) == py


@pytest.mark.parametrize("word", scans._FIRST)
def test_c_scan_knows_every_first_word_in_either_case(word: bytes) -> None:
    """The C screen looks a text's first word up by its first letter (FIRST_AT): every word of the
    definition's list, in either case, and its prefixes, give the same answer as the definition."""
    for w in (word, word.upper(), word.capitalize(), word[:-1], word[:1]):
        for text in (w + b" x", b"  " + w, w):
            assert both(text) == (screen_py(text, 0, len(text)),) * 2
    assert both(word + b" x") == (True, True)


def test_c_scan_bounds() -> None:
    assert both(b"set x", 0, 0) == (False, False)
    assert both(b"xxset x", 2, 100) == (True, True)  # an end past the data is clipped, as slicing does
    assert both(b"set x", 4, 2) == (False, False)


_WORDS = st.sampled_from(["set", "SET", "temp", "TeMp", "advisory", "set_config", "u&", "U&", "&", "_", ";", " ",
                          "\t", "\x00", "hold", "load", "close", "declare", "--", "/*", "do", "execute", "reset",
                          "select", "x", "é", "\x0b", "prepare", "DROP", "create", "savepoint", "ROLLBACK",
                          "release",
                          # pieces around the bytes the C screen looks for first (m, v, _, &)
                          "TEMP", "tem", "mp", "M", "ADVISORY", "advis", "visory", "V", "SET_CONFIG", "set_",
                          "_config", "u", "U", "&u", "pg_advisory_lock", "t", "e"])


@settings(max_examples=400, deadline=None)
@given(st.lists(_WORDS, max_size=8), st.binary(max_size=12))
def test_c_scan_agrees_on_random_text(words: list[str], noise: bytes) -> None:
    text = "".join(words).encode() + noise
    for start in (0, 1, 3):
        c, py = both(text, start)
        assert c == py


# -- query: the client relay's first test on every read ----------------------------------------------------


def test_the_client_relay_uses_the_c_query_test() -> None:
    assert scans.query is speedups.query


def _query_cases() -> list[tuple[bytes, int]]:
    cases = []
    for sql in STATEMENTS:
        q = m.query(sql)
        cases += [(q, 1 << 20), (q, len(q)), (q, len(q) - 1), (q + m.message(m.SYNC), 1 << 20), (q[:-1], 1 << 20),
                  (m.message(b"P", q[5:]), 1 << 20)]
    return cases + [(b"", 100), (b"Q", 100), (b"Q\x00\x00\x00\x04", 100), (b"Q\x00\x00\x00\x05\x00", 100),
                    (b"Q\xff\xff\xff\xff\x00", 100)]


@pytest.mark.parametrize("data,limit", _query_cases())
def test_c_query_test_agrees(data: bytes, limit: int) -> None:
    py = scans.query_py(data, limit)
    assert speedups.query(data, limit) == py
    assert speedups.query(memoryview(data), limit) == py
    assert speedups.query(bytearray(data), limit) == py


def test_query_results() -> None:
    assert scans.query_py(m.query("select 1"), 100) == 1
    assert scans.query_py(m.query("SET x = 1"), 100) == 2
    assert scans.query_py(m.query("select 1") + m.query("select 1"), 100) == 0  # two: walked instead
    assert scans.query_py(m.query("select 1"), 5) == 0  # over max_packet_size: walked, and refused there


# -- walk: the server relay's header walk ---------------------------------------------------------------

NOTED = noted_table("SEG")
REPLY_PARTS = [
    m.row_description([("a", 23)]), m.data_row([1]), m.command_complete("SELECT 1"), m.ready_for_query(b"I"),
    m.ready_for_query(b"T"), m.ready_for_query(b"E"), m.parameter_status("TimeZone", "UTC"),
    m.error_response("ERROR", "42P01", "no"), m.message(b"G", b"\x00\x00\x00"), m.notice_response("n"),
    m.message(b"d", b"x" * 70), m.message(b"c"),
]


def test_the_server_relay_uses_the_c_walk() -> None:
    from pgmux.protocol import codec

    assert codec.walk is speedups.walk


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(REPLY_PARTS), max_size=10), st.integers(0, 40))
def test_c_walk_agrees_on_replies_cut_anywhere(parts: list[bytes], cut: int) -> None:
    data = b"".join(parts)
    for chunk in (data, data[:max(0, len(data) - cut)], memoryview(data)[:max(0, len(data) - cut)]):
        assert speedups.walk(chunk, 1 << 30, NOTED) == walk_py(chunk, 1 << 30, NOTED)


@pytest.mark.parametrize("bad", [
    b"D\x00\x00\x00\x03", b"D\xff\xff\xff\xff", b"D\x00\x00\x10\x00", b"Z\x00\x00\x00\x06II", b"Z\x00\x00\x00\x04",
])
def test_c_walk_refuses_the_same_lengths(bad: bytes) -> None:
    data = m.data_row([1]) + bad
    with pytest.raises(ValueError) as c_err:
        speedups.walk(data, 1000, NOTED)
    with pytest.raises(ValueError) as py_err:
        walk_py(data, 1000, NOTED)
    assert c_err.value.args == py_err.value.args == (bad[0], int.from_bytes(bad[1:5], "big", signed=True))


def test_walk_results() -> None:
    reply = m.row_description([("a", 23)]) + m.data_row([1]) + m.command_complete("SELECT 1")
    z = m.ready_for_query(b"T")
    assert speedups.walk(reply + z, 1 << 30, NOTED) == (len(reply) + 6, 1, ord("T"), len(reply), None)
    ps = m.parameter_status("a", "b")
    assert speedups.walk(ps + z + b"D\x00", 1 << 30, NOTED) == (
        len(ps) + 6, 1, ord("T"), len(ps), [(ord("S"), 0, len(ps)), (ord("Z"), len(ps), 6)])
    assert speedups.walk(b"", 1 << 30, NOTED) == (0, 0, 0, 0, None)


def test_the_server_relay_uses_the_c_ready() -> None:
    from pgmux.protocol import scans
    from pgmux.session import server

    assert scans.ready is speedups.ready and server.ready is speedups.ready


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(REPLY_PARTS), max_size=10), st.integers(0, 40))
def test_c_ready_agrees_and_tells_what_walk_tells(parts: list[bytes], cut: int) -> None:
    """ready() is the status byte of the one ReadyForQuery exactly when walk() finds the read whole, with
    that one ReadyForQuery last and nothing noted: the case data_received relays without the tuple."""
    data = b"".join(parts)
    for chunk in (data, data[:max(0, len(data) - cut)], memoryview(data)[:max(0, len(data) - cut)]):
        z = speedups.ready(chunk, 1 << 30, NOTED)
        assert z == ready_py(chunk, 1 << 30, NOTED)
        pos, nz, last, zpos, items = walk_py(chunk, 1 << 30, NOTED)
        usual = pos == len(chunk) and nz == 1 and zpos == len(chunk) - 6 and items is None
        assert z == (last if usual else 0)


def test_ready_results() -> None:
    reply = m.row_description([("a", 23)]) + m.data_row([1]) + m.command_complete("SELECT 1")
    for status in b"ITE":
        assert speedups.ready(reply + m.ready_for_query(bytes([status])), 1 << 30, NOTED) == status
    z = m.ready_for_query(b"I")
    refused = [
        b"", z[:-1], reply, reply + z + z, z + reply + z, reply + z + b"D",  # none, two, not last, more after
        m.parameter_status("a", "b") + z, m.error_response("ERROR", "42P01", "x") + z,  # noted: read them
        reply[:-1] + z,  # the last message before it not whole: its length runs into the ReadyForQuery
        b"D\x00\x00\x00\x03" + z, b"D\xff\xff\xff\xff" + z, b"Z\x00\x00\x00\x06II" + z,  # lengths walk refuses
    ]
    for data in refused:
        assert speedups.ready(data, 1 << 30, NOTED) == ready_py(data, 1 << 30, NOTED) == 0, data
    assert speedups.ready(m.data_row([1] * 40) + z, 50, NOTED) == 0  # a message above the limit: walked
    with pytest.raises(ValueError):
        speedups.ready(reply + z, 1 << 30, b"SEG")
    with pytest.raises(TypeError):
        speedups.ready(reply + z, 1 << 30)


# -- steps: the client relay's walk over everything but one whole Query --------------------------------------

CLIENT_PARTS = [
    m.message(b"P", b"\x00select 1\x00\x00\x00"), m.message(b"P", b"s1\x00SET x = 1\x00\x00\x00"),
    m.message(b"B", b"\x00\x00\x00\x00\x00\x00\x00\x00"), m.message(b"D", b"P\x00"),
    m.message(b"E", b"\x00\x00\x00\x00\x00"),
    m.message(b"C", b"Ss1\x00"), m.message(b"H"), m.message(m.SYNC), m.query("select 1"), m.query("set x = 1"),
    m.message(b"F", b"\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00"), m.message(b"d", b"1\t2\n"), m.message(b"c"),
    m.message(b"f", b"no\x00"), m.message(b"X"), m.message(b"?", b"odd"),
]


def test_the_client_relay_uses_the_c_steps() -> None:
    assert scans.steps is speedups.steps


@settings(max_examples=600, deadline=None)
@given(st.lists(st.sampled_from(CLIENT_PARTS), max_size=10), st.integers(0, 40), st.integers(0, 3), st.booleans(),
       st.booleans(), st.booleans())
def test_c_steps_agree_on_reads_cut_anywhere(parts: list[bytes], cut: int, copy_syncs: int, unsynced: bool,
                                             watch: bool, copy_in: bool) -> None:
    data = b"".join(parts)
    for chunk in (data, data[:max(0, len(data) - cut)], memoryview(data)[:max(0, len(data) - cut)]):
        assert (speedups.steps(chunk, 1 << 30, copy_syncs, unsynced, watch, copy_in)
                == scans.steps_py(chunk, 1 << 30, copy_syncs, unsynced, watch, copy_in))


@pytest.mark.parametrize("bad", [
    b"B\x00\x00\x00\x03", b"S\xff\xff\xff\xff", b"Q\x00\x00\x10\x00", b"Z\x00\x00\x00\x06II",
])
def test_c_steps_refuse_the_same_lengths(bad: bytes) -> None:
    data = m.message(m.SYNC) + bad
    with pytest.raises(ValueError) as c_err:
        speedups.steps(data, 1000, 0, False, True, False)
    with pytest.raises(ValueError) as py_err:
        scans.steps_py(data, 1000, 0, False, True, False)
    assert c_err.value.args == py_err.value.args == (bad[0], int.from_bytes(bad[1:5], "big", signed=True))


def test_steps_results() -> None:
    parse, sync = m.message(b"P", b"\x00select 1\x00\x00\x00"), m.message(m.SYNC)
    execute = m.message(b"E", b"\x00\x00\x00\x00\x00")
    steps = scans.steps_py
    assert steps(parse + execute + sync, 1 << 30, 2, False, True, False) == (
        len(parse + execute + sync), 1, 1, False, True, False, 0, False, False)
    assert steps(parse + execute, 1 << 30, 0, False, True, False) == (
        len(parse + execute), 0, 0, True, True, False, 0, False, False)
    two = m.query("select 1") + m.query("SET x = 1")
    assert steps(two, 1 << 30, 0, False, True, False)[:6] == (len(two), 2, 0, False, False, True)
    assert steps(two, 1 << 30, 0, False, False, False)[5] is False  # not watched: not screened
    assert steps(sync + sync[:3], 1 << 30, 0, False, True, False)[:3] == (len(sync), 1, 1)
    # A Terminate ends the walk where it starts, whatever follows.
    assert steps(sync + m.message(b"X") + b"junk!", 1 << 30, 0, False, True, False) == (
        len(sync), 1, 1, False, False, False, 0, False, True)
    # libpq's extended-protocol COPY FROM STDIN: Execute, Sync, CopyData, CopyDone, Sync. PostgreSQL
    # reads the first Sync in copy-in mode and does not answer it.
    copy = m.message(b"d", b"1\n") + m.message(b"c")
    assert steps(copy + sync, 1 << 30, 1, False, True, True) == (
        len(copy + sync), 1, 1, False, False, False, 1, False, False)
    assert steps(copy + sync, 1 << 30, 1, False, True, False)[6:8] == (0, False)  # not in copy-in: all answered


# -- shape: what the extended-protocol fast path (session/fastpath.py's as_is) reads of a chunk ---------------

SHAPE_PARTS = [
    m.message(b"P", b"\x00select 1\x00\x00\x00"), m.message(b"P", b"\x00SET x = 1\x00\x00\x00"),
    m.message(b"P", b"s1\x00select 1\x00\x00\x00"), m.message(b"P", b"s1\x00create temp table t()\x00\x00\x00"),
    m.message(b"P", b"noname"), m.message(b"P"), m.message(b"B", b"\x00\x00\x00\x00\x00\x00\x00\x00"),
    m.message(b"B", b"p\x00\x00\x00\x00\x00\x00\x00\x00"), m.message(b"B", b"\x00s1\x00\x00\x00\x00\x00\x00\x00"),
    m.message(b"B", b"\x00"), m.message(b"D", b"P\x00"), m.message(b"D", b"S\x00"), m.message(b"D", b"Ss1\x00"),
    m.message(b"D", b"S"), m.message(b"C", b"Ss1\x00"), m.message(b"C", b"P\x00"), m.message(b"C"),
    m.message(b"E", b"\x00\x00\x00\x00\x00"), m.message(b"H"), m.message(m.SYNC), m.query("select 1"),
    m.message(b"F", b"\x00\x00\x00\x01"), m.message(b"d", b"x"),
]


def test_the_extended_fast_path_uses_the_c_shape() -> None:
    from pgmux.session import fastpath

    assert scans.shape is speedups.shape
    assert fastpath.shape is speedups.shape


@settings(max_examples=600, deadline=None)
@given(st.lists(st.sampled_from(SHAPE_PARTS), max_size=8), st.integers(0, 30))
def test_c_shape_agrees(parts: list[bytes], cut: int) -> None:
    data = b"".join(parts)
    screened = [None, *(p for p in SHAPE_PARTS[:2]), b"", SHAPE_PARTS[0][:-1]]  # (the second screens "SET")
    for chunk in (data, data[:max(0, len(data) - cut)], memoryview(data), bytearray(data)):
        for known in screened:
            assert speedups.shape(chunk, known) == scans.shape_py(chunk, known)
        assert speedups.shape(chunk) == scans.shape_py(chunk)


def test_shape_results() -> None:
    parse = m.message(b"P", b"\x00select 1\x00\x00\x00")
    bind = m.message(b"B", b"\x00\x00\x00\x00\x00\x00\x00\x00")
    rest = m.message(b"D", b"P\x00") + m.message(b"E", b"\x00\x00\x00\x00\x00") + m.message(m.SYNC)
    t = scans
    assert t.shape_py(parse + bind + rest) == (t.SHAPE_PARSE_UNNAMED | t.SHAPE_BIND | t.SHAPE_EXECUTE, 0, len(parse))
    assert t.shape_py(bind + rest) == (t.SHAPE_BIND | t.SHAPE_UNNAMED_EARLY | t.SHAPE_EXECUTE, -1, -1)
    named = m.message(b"P", b"s1\x00SET x = 1\x00\x00\x00")
    assert t.shape_py(named)[0] == t.SHAPE_PARSE_NAMED | t.SHAPE_SCREEN_NAMED
    assert t.shape_py(m.query("select 1"))[0] == t.SHAPE_OTHER
    assert t.shape_py(parse[:-1])[0] == t.SHAPE_OTHER  # cut short: not for the fast path
    # The client's last screened unnamed Parse: the same bytes are not screened again, and SHAPE_SAME says so
    # for the last unnamed Parse only.
    same = t.SHAPE_PARSE_UNNAMED | t.SHAPE_BIND | t.SHAPE_EXECUTE | t.SHAPE_SAME
    assert t.shape_py(parse + bind + rest, parse) == (same, 0, len(parse))
    other = m.message(b"P", b"\x00select 2\x00\x00\x00")
    assert t.shape_py(parse + other + bind, parse)[0] & t.SHAPE_SAME == 0
    assert t.shape_py(other + parse + bind, parse)[0] & t.SHAPE_SAME
    assert t.shape_py(parse + bind + rest, parse[:-1])[0] & t.SHAPE_SAME == 0  # a prefix is not the same
    with pytest.raises(TypeError):
        speedups.shape(parse, "not bytes")



# -- query's kind 3: an extended batch of the unnamed statement the client sent last -------------------------

PARSE = SHAPE_PARTS[0]
BATCH = PARSE + SHAPE_PARTS[6] + m.message(b"D", b"P\x00") + SHAPE_PARTS[17] + m.message(m.SYNC)  # pgbench -M extended


def test_query_finds_a_batch_of_the_unnamed_statement_sent_last() -> None:
    q = scans.query_py
    assert q(BATCH, 1 << 20, PARSE) == 3
    assert q(BATCH, 1 << 20) == 0 and q(BATCH, 1 << 20, None) == 0  # nothing screened yet: walked
    assert q(BATCH, 1 << 20, SHAPE_PARTS[1]) == 0  # another text: walked (and screened there)
    assert q(BATCH, len(PARSE) - 2, PARSE) == 0  # a message over max_packet_size: walked, refused there
    assert q(BATCH[:-1], 1 << 20, PARSE) == 0  # the Sync not whole
    assert q(BATCH + m.message(m.SYNC), 1 << 20, PARSE) == 0  # a second Sync
    assert q(BATCH[:-5], 1 << 20, PARSE) == 0  # no Sync: the batch goes on in the next read
    assert q(BATCH[len(PARSE):], 1 << 20, PARSE) == 0  # no Parse first
    no_execute = PARSE + SHAPE_PARTS[6] + m.message(m.SYNC)
    assert q(no_execute, 1 << 20, PARSE) == 0
    for part in SHAPE_PARTS[2:]:  # named, cut short, Close, Query, Flush...: walked
        if part not in (SHAPE_PARTS[6], SHAPE_PARTS[10], SHAPE_PARTS[11], SHAPE_PARTS[17]):
            assert q(PARSE + part + SHAPE_PARTS[17] + m.message(m.SYNC), 1 << 20, PARSE) == 0, part
    with pytest.raises(TypeError):
        speedups.query(BATCH, 1 << 20, "not bytes")


KIND3_FLAGS = scans.SHAPE_PARSE_UNNAMED | scans.SHAPE_SAME | scans.SHAPE_BIND | scans.SHAPE_EXECUTE


@settings(max_examples=800, deadline=None)
@given(st.lists(st.sampled_from(SHAPE_PARTS + [m.message(m.SYNC)]), max_size=6), st.integers(0, 30),
       st.sampled_from([1 << 20, 12, 20]))
def test_c_query_agrees_and_kind_3_is_what_steps_and_shape_say(parts: list[bytes], cut: int, limit: int) -> None:
    """query() in C equals its definition, and a read it calls kind 3 is one that steps() walks as one
    Sync after an Execute, nothing else, and whose shape() is what fastpath.same_batch assumes."""
    data = b"".join(parts[:1] and [PARSE] + parts) + m.message(m.SYNC)
    for chunk in (data, data[:max(0, len(data) - cut)]):
        for known in (None, PARSE, SHAPE_PARTS[1], PARSE[:-1]):
            kind = scans.query_py(chunk, limit, known)
            assert speedups.query(chunk, limit, known) == kind
            assert speedups.query(memoryview(chunk), limit, known) == kind
            if kind != 3:
                continue
            for copy_in in (False, True):
                assert scans.steps_py(chunk, limit, 5, True, True, copy_in) == (
                    len(chunk), 1, 1, False, True, False, 0, copy_in, False)
            flags, start, end = scans.shape_py(chunk, known)
            assert flags & ~(scans.SHAPE_BIND | scans.SHAPE_EXECUTE) == scans.SHAPE_PARSE_UNNAMED | scans.SHAPE_SAME
            assert flags & KIND3_FLAGS == flags and chunk[start:end] == known


# -- binds: the walk of named prepared statements' steady state (session/fastpath.py's rebound) -------------

BIND_PARTS = [
    m.message(b"B", b"\x00s1\x00\x00\x00\x00\x01\x00\x00\x00\x015\x00\x00"),
    m.message(b"B", b"p\x00s2\x00\x00\x00\x00\x00\x00\x00"),
    m.message(b"B", b"\x00\x00\x00\x00\x00\x00\x00\x00"), m.message(b"B", b"nonul"), m.message(b"B", b"p\x00nonul"),
    m.message(b"D", b"P\x00"), m.message(b"D", b"Ss1\x00"), m.message(b"D"), m.message(b"E", b"\x00\x00\x00\x00\x00"),
    m.message(m.SYNC), m.message(b"H"), m.message(b"P", b"s1\x00select 1\x00\x00\x00"), m.query("select 1"),
]


def test_the_prepared_fast_path_uses_the_c_binds() -> None:
    from pgmux.session import fastpath

    assert scans.binds is speedups.binds
    assert fastpath.binds is speedups.binds


@settings(max_examples=600, deadline=None)
@given(st.lists(st.sampled_from(BIND_PARTS), max_size=8), st.integers(0, 30))
def test_c_binds_agree(parts: list[bytes], cut: int) -> None:
    data = b"".join(parts)
    for chunk in (data, data[:max(0, len(data) - cut)], memoryview(data), bytearray(data)):
        assert speedups.binds(chunk) == scans.binds_py(chunk)


def test_binds_results() -> None:
    bind = m.message(b"B", b"\x00s1\x00\x00\x00\x00\x00\x00\x00")
    rest = m.message(b"D", b"P\x00") + m.message(b"E", b"\x00\x00\x00\x00\x00") + m.message(m.SYNC)
    assert scans.binds_py(bind + rest) == [(0, 5, 8, len(bind))]
    assert scans.binds_py(bind + rest + bind + rest) == [(0, 5, 8, len(bind)),
                                                            (len(bind + rest), len(bind + rest) + 5,
                                                             len(bind + rest) + 8, len(bind + rest + bind))]
    assert scans.binds_py(bind + m.message(b"E", b"\x00\x00\x00\x00\x00")) is None  # no Sync last
    assert scans.binds_py(m.message(b"B", b"\x00\x00\x00\x00\x00\x00\x00\x00") + rest) is None  # unnamed
    assert scans.binds_py(m.message(m.SYNC)) == []
