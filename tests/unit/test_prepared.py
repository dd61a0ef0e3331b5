"""Protocol-level prepared statements: the shared registry, per-client names, per-server LRUs, counters,
and the Parse/Bind/Describe/Close rewriting, which must leave everything but the name byte-identical."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgmux.errors import DuplicatePreparedStatement, MissingPreparedStatement, ProtocolViolation
from pgmux.protocol import extended as x
from pgmux.protocol.messages import BIND, CLOSE, DESCRIBE, PARSE, message
from pgmux.session.prepared import (
    DEFAULT_MAX_PREPARED_STATEMENTS,
    ClientStatements,
    PreparedStats,
    Registry,
    ServerStatements,
    Statement,
)

Q1, Q2, Q3 = "SELECT $1::int", "SELECT 2", "SELECT 3"


def setup(capacity: int = 3) -> tuple[Registry, PreparedStats, ClientStatements, ClientStatements,
                                      ServerStatements]:
    reg, stats = Registry(), PreparedStats()
    return (reg, stats, ClientStatements(reg, stats), ClientStatements(reg, stats),
            ServerStatements(reg, capacity, stats))


# --- registry and clients ------------------------------------------------------------------------

def test_same_query_and_types_share_one_server_name_across_clients() -> None:
    reg, _, a, b, _ = setup()
    assert a.parse("s1", Q1, [23]) == "pgmux_1"
    assert b.parse("other", Q1, [23]) == "pgmux_1"
    assert a.parse("s2", Q1, [20]) == "pgmux_2"  # other parameter types, other statement
    assert a.parse("s3", Q1) == "pgmux_3"
    assert len(reg) == 3 and reg.refs("pgmux_1") == 2
    assert a.lookup("s1") == b.lookup("other") == Statement("pgmux_1", Q1, (23,))


def test_names_are_not_reused_after_an_entry_dies() -> None:
    reg, _, a, _, _ = setup()
    a.parse("s1", Q1)
    a.close("s1")
    assert len(reg) == 0 and reg.get("pgmux_1") is None
    assert a.parse("s1", Q1) == "pgmux_2"


def test_duplicate_name_is_postgresql_s_error() -> None:
    _, _, a, _, _ = setup()
    a.parse("s1", Q1)
    with pytest.raises(DuplicatePreparedStatement, match='"s1" already exists') as info:
        a.parse("s1", Q2)
    assert info.value.sqlstate == "42P05"


def test_unnamed_is_replaced_by_the_next_unnamed_parse_and_stays_unnamed() -> None:
    reg, stats, a, _, _ = setup()
    assert a.parse("", Q1, [23]) == ""
    assert a.parse("", Q2) == ""
    assert a.lookup("") == Statement("", Q2, ())
    assert len(reg) == 0 and a.prepared_statements == 0 and stats.client_parse_count == 0
    a.forget_unnamed()
    with pytest.raises(MissingPreparedStatement, match="unnamed prepared statement does not exist"):
        a.bind("")


def test_close_and_clear_release_references() -> None:
    reg, _, a, b, _ = setup()
    a.parse("s1", Q1)
    a.parse("s2", Q2)
    b.parse("t", Q1)
    assert a.close("s1") is True and a.close("s1") is False and a.close("nope") is False
    assert reg.refs("pgmux_1") == 1 and a.lookup("s1") is None
    a.parse("s1", Q3)  # the name is free again
    a.parse("", Q3)
    a.clear()
    assert a.prepared_statements == 0 and a.lookup("") is None
    assert [s.name for s in reg] == ["pgmux_1"]  # still b's


def test_bind_and_describe_of_unknown_name() -> None:
    _, stats, a, _, _ = setup()
    with pytest.raises(MissingPreparedStatement, match='"nope" does not exist') as info:
        a.resolve("nope")
    assert info.value.sqlstate == "26000" and stats.bind_count == 0


# --- servers -------------------------------------------------------------------------------------

def test_ensure_parses_once_then_reuses() -> None:
    _, stats, a, b, srv = setup()
    name = a.parse("s1", Q1)
    assert srv.ensure(name) == (True, [])
    assert b.parse("x", Q1) == name
    assert srv.ensure(name) == (False, [])  # b's Parse is answered by pgmux: ParseComplete
    assert name in srv and srv.prepared_statements == 1 and stats.server_parse_count == 1


def test_a_copy_older_than_the_clients_parse_is_prepared_again() -> None:
    """Each client Parse is a tick of the registry's clock: a server copy prepared before it may predate
    a DDL, so it is Closed and prepared again (its own name among those to Close), once; clients that
    parsed earlier use the newer copy as it is."""
    reg, stats, a, b, srv = setup()
    name = a.parse("s1", Q1)
    since_a = a.resolve("s1").since
    assert srv.ensure(name, since_a) == (True, []) and srv.touch(name, since_a)
    assert b.parse("x", Q1) == name
    since_b = b.resolve("x").since
    assert since_b > since_a and reg.clock == since_b
    assert not srv.touch(name, since_b)  # the fast path leaves it to ensure
    assert srv.ensure(name, since_b) == (True, [name])
    assert srv.ensure(name, since_b) == (False, []) and srv.touch(name, since_a) and srv.touch(name, since_b)
    assert stats.server_parse_count == 2 and srv.prepared_statements == 1 and reg.refs(name) == 3
    srv.stale_all()  # the server refused a copy: every one is prepared again at next use
    assert not srv.touch(name, since_a) and srv.ensure(name, since_a) == (True, [name])
    assert a.resolve("s1") == b.resolve("x") == Statement(name, Q1, ())  # the tick is not part of equality


def test_lru_evicts_least_recently_used_first() -> None:
    reg, _, a, _, srv = setup(capacity=3)
    n1, n2, n3, n4, n5 = (a.parse(f"s{i}", f"SELECT {i}") for i in range(1, 6))
    for n in (n1, n2, n3):
        srv.ensure(n)
    srv.ensure(n1)  # n1 used again: n2 is now the oldest
    assert srv.names() == [n2, n3, n1]
    assert srv.ensure(n4) == (True, [n2])
    assert srv.ensure(n5) == (True, [n3])
    assert srv.names() == [n1, n4, n5]
    assert srv.ensure(n2) == (True, [n1])  # evicted ones are parsed again when needed
    a.clear()
    assert sorted(s.name for s in reg) == sorted([n4, n5, n2])  # still held by the server
    srv.forget_all()
    assert len(reg) == 0 and srv.prepared_statements == 0


def test_a_server_keeps_a_statement_its_clients_closed() -> None:
    reg, _, a, b, srv = setup()
    name = a.parse("s1", Q1)
    srv.ensure(name)
    a.close("s1")
    assert reg.get(name) is not None  # the server still has it prepared
    assert b.parse("y", Q1) == name and srv.ensure(name) == (False, [])


def test_a_close_undone_stays_with_its_client() -> None:
    # Clients without named statements share one empty dict: the undo of a Close that emptied the
    # client's names must not write into it (every other client would then have the statement).
    reg, _, a, b, _ = setup()
    a.parse("s1", Q1)
    closed = a.lookup("s1")
    assert closed is not None and a.close("s1")
    a.reopen("s1", closed)
    assert a.lookup("s1") is not None and a.prepared_statements == 1
    assert b.lookup("s1") is None and b.prepared_statements == 0
    assert ClientStatements(reg).lookup("s1") is None
    b.clear()
    a.clear()
    assert len(reg) == 0


def test_forget_after_a_failed_parse() -> None:
    reg, _, a, _, srv = setup()
    name = a.parse("bad", "SELEC 1")
    srv.ensure(name)
    assert srv.forget(name) is True and srv.forget(name) is False
    a.close("bad")
    assert len(reg) == 0


def test_capacity_zero_means_no_tracking() -> None:
    with pytest.raises(ValueError):
        ServerStatements(Registry(), 0)
    assert DEFAULT_MAX_PREPARED_STATEMENTS == 200


def test_unnamed_on_a_server() -> None:
    _, stats, a, _, srv = setup()
    a.parse("", Q1)
    stmt = a.resolve("")
    assert srv.ensure_unnamed(stmt) is True  # the client's own Parse goes through
    assert srv.ensure_unnamed(a.bind("")) is False
    srv.drop_unnamed()  # a simple Query ran
    assert srv.ensure_unnamed(stmt) is True  # re-send Parse("") before the Bind
    a.parse("", Q2)
    assert srv.ensure_unnamed(a.resolve("")) is True
    assert (stats.bind_count, stats.server_parse_count, srv.prepared_statements) == (0, 0, 0)


def test_counters() -> None:
    _, stats, a, b, srv = setup()
    for c in (a, b):
        srv.ensure(c.parse("s", Q1))
        c.bind("s")
        c.bind("s")
    a.parse("t", Q2)
    assert (stats.client_parse_count, stats.server_parse_count, stats.bind_count) == (3, 1, 4)
    assert (a.prepared_statements, b.prepared_statements, srv.prepared_statements) == (2, 1, 1)


# --- messages ------------------------------------------------------------------------------------

def parse_body(name: bytes, query: bytes, types: list[int]) -> bytes:
    return name + b"\0" + query + b"\0" + struct.pack(f"!h{len(types)}I", len(types), *types)


def bind_body(portal: bytes, name: bytes, rest: bytes) -> bytes:
    return portal + b"\0" + name + b"\0" + rest


BIND_REST = struct.pack("!hh", 1, 1) + struct.pack("!h", 2) + struct.pack("!i", 3) + b"abc" + struct.pack(
    "!i", -1) + struct.pack("!hh", 1, 0)


def test_read_parse() -> None:
    body = parse_body(b"s1", "SELECT 'é' -- ünïcode".encode(), [23, 4294967295])
    assert x.read_parse(body) == x.ParseMessage("s1", "SELECT 'é' -- ünïcode", (23, 4294967295))
    assert x.read_parse(memoryview(body)) == x.read_parse(body)


def test_parse_round_trip_and_rename() -> None:
    body = parse_body(b"s1", b"SELECT $1", [23])
    assert x.rename_parse(body, "s1") == message(PARSE, body)
    assert x.rename_parse(body, "pgmux_12") == message(PARSE, parse_body(b"pgmux_12", b"SELECT $1", [23]))
    assert x.build_parse("s1", "SELECT $1", [23]) == message(PARSE, body)


def test_bind_round_trip_and_rename() -> None:
    body = bind_body(b"portal", b"s1", BIND_REST)
    assert x.read_bind(body) == ("portal", "s1")
    assert x.rename_bind(body, "s1") == message(BIND, body)
    want = message(BIND, bind_body(b"portal", b"pgmux_7", BIND_REST))
    assert x.rename_bind(memoryview(body), "pgmux_7") == want
    head, tail = x.rename_bind_parts(body, "")
    assert isinstance(tail, memoryview) and bytes(tail) == BIND_REST
    assert head + tail == message(BIND, bind_body(b"portal", b"", BIND_REST))


def test_describe_and_close() -> None:
    assert x.read_target(b"Ss1\0") == x.Target("S", "s1")
    assert x.read_target(memoryview(b"P\0")) == x.Target("P", "")
    for mtype in (DESCRIBE, CLOSE):
        assert x.rename_target(mtype, b"Ss1\0", "s1") == message(mtype, b"Ss1\0")
        assert x.rename_target(mtype, b"Ss1\0", "pgmux_3") == message(mtype, b"Spgmux_3\0")
    assert x.build_close_statement("pgmux_1") == message(CLOSE, b"Spgmux_1\0")
    with pytest.raises(ValueError):
        x.build_target(PARSE, "S", "x")


@pytest.mark.parametrize(("reader", "body"), [
    (x.read_parse, b"s1\0SELECT 1"),  # query not terminated
    (x.read_parse, b"s1\0SELECT 1\0"),  # no parameter count
    (x.read_parse, b"s1\0SELECT 1\0\0\x02\0\0\0\x17"),  # two types announced, one present
    (x.read_parse, b"s1\0SELECT 1\0\0\0extra"),
    (x.read_parse, b"s1\0SELECT 1\0\xff\xff"),  # negative count
    (x.read_bind, b"portal\0s1"),
    (x.read_bind, memoryview(b"p" * 5000)),
    (x.read_target, b"Xs1\0"),
    (x.read_target, b"Ss1"),
    (x.read_target, b"Ss1\0junk"),
    (x.read_target, b""),
])
def test_malformed_messages_are_protocol_violations(reader, body) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ProtocolViolation):
        reader(body)


_NAME = st.binary(max_size=70).map(lambda b: b.replace(b"\0", b""))


_QUERY = st.binary().map(lambda b: b.replace(b"\0", b""))
_OIDS = st.lists(st.integers(0, 2**32 - 1), max_size=8)


@given(_NAME, _QUERY, _OIDS, _NAME)
def test_parse_rewrite_is_byte_exact(name: bytes, query: bytes, types: list[int], new: bytes) -> None:
    body = parse_body(name, query, types)
    msg = x.read_parse(body)
    assert x.build_parse(msg.name, msg.query, msg.param_types) == message(PARSE, body)
    assert x.rename_parse(body, msg.name) == message(PARSE, body)
    renamed = x.rename_parse(memoryview(body), new.decode("utf-8", "surrogateescape"))
    assert renamed == message(PARSE, parse_body(new, query, types))


@given(_NAME, _NAME, st.binary(max_size=2000), _NAME)
def test_bind_rewrite_is_byte_exact(portal: bytes, name: bytes, rest: bytes, new: bytes) -> None:
    body = bind_body(portal, name, rest)
    _, got = x.read_bind(body)
    assert x.rename_bind(body, got) == message(BIND, body)
    new_name = new.decode("utf-8", "surrogateescape")
    assert x.rename_bind(memoryview(body), new_name) == message(BIND, bind_body(portal, new, rest))
