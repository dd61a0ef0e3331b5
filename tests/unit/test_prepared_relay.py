"""Playbooks for protocol-level prepared statements under transaction pooling (session/pipeline.py).

The client's statement names never reach a server: a named Parse becomes `pgmux_<n>` and is prepared
again on its server (a copy the server holds is Closed first, its CloseComplete swallowed: it may
predate a DDL), a Bind/Describe on a server without the statement, or with a copy older than the
client's Parse, gets a Parse injected before it (its ParseComplete swallowed), and Close of a
statement is answered locally, in order. The client sees exactly what PostgreSQL would have sent.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from fakes import Peer, Rig, frames, reply

from pgmux.protocol import messages as m
from pgmux.session.pipeline import _FAIL_PARSE as FAIL_PARSE
from pgmux.session.states import ServerState

SYNC, FLUSH = m.message(m.SYNC), m.message(m.FLUSH)
PC, BC, CC = m.message(m.PARSE_COMPLETE), m.message(m.BIND_COMPLETE), m.message(m.CLOSE_COMPLETE)
SQL = "select $1::int"


def parse(sql: str = SQL, name: str = "", types: tuple[int, ...] = ()) -> bytes:
    return m.message(m.PARSE, m.cstr(name) + m.cstr(sql) + struct.pack(f"!h{len(types)}I", len(types), *types))


def bind(name: str = "", value: bytes = b"1", portal: str = "") -> bytes:
    return m.message(m.BIND, m.cstr(portal) + m.cstr(name) + b"\x00\x00\x00\x01"
                     + struct.pack("!i", len(value)) + value + b"\x00\x00")


def execute() -> bytes:
    return m.message(m.EXECUTE, b"\x00\x00\x00\x00\x00")


def describe(name: str, kind: bytes = b"S") -> bytes:
    return m.message(m.DESCRIBE, kind + m.cstr(name))


def close(name: str, kind: bytes = b"S") -> bytes:
    return m.message(m.CLOSE, kind + m.cstr(name))


ROW = m.data_row([1]) + m.command_complete("SELECT 1")
RFQ = m.ready_for_query(b"I")
FAIL_ERR = m.error_response("ERROR", "42601", 'syntax error at or near "pgmux"')  # the server's, swallowed


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path)


def with_s1(rig: Rig) -> tuple[Peer, Peer]:
    """A client that has prepared "s1" (SQL) on its one server, the replies taken."""
    c = rig.login()
    (s,) = rig.servers
    c.send(parse(name="s1") + SYNC)
    s.take()
    s.send(PC + RFQ)
    c.take()
    return c, s


def two_servers(rig: Rig) -> tuple[Peer, Peer, Peer]:
    """A client, and two logged-in idle servers: the one it used first, and a second."""
    c = rig.login()
    other = rig.login(user="alice")
    c.send(m.query("begin"))
    other.send(m.query("begin"))
    assert len(rig.servers) == 2
    rig.server_login(rig.servers[1])
    a, b = rig.servers
    for s, cl in ((a, c), (b, other)):
        assert s.take() == m.query("begin")
        s.send(reply(m.command_complete("BEGIN"), status=b"T"))
        assert cl.take() == reply(m.command_complete("BEGIN"), status=b"T")
    for s, cl in ((a, c), (b, other)):
        cl.send(m.query("commit"))
        assert s.take() == m.query("commit")
        s.send(reply(m.command_complete("COMMIT")))
        cl.take()
    assert a.state is ServerState.IDLE and b.state is ServerState.IDLE
    return c, a, b


def test_named_parse_is_renamed_and_replies_pass_through(rig: Rig) -> None:
    c = rig.login()
    (s,) = rig.servers
    c.send(parse(name="s1") + bind("s1") + execute() + SYNC)
    assert s.take() == parse(name="pgmux_1") + bind("pgmux_1") + execute() + SYNC
    s.send(PC + BC + ROW + RFQ)
    assert c.take() == PC + BC + ROW + RFQ
    assert s.state is ServerState.IDLE and not s.session.queue
    assert c.session.stmts.prepared_statements == 1 and s.session.stmts.prepared_statements == 1
    st = s.session.pool.stats
    assert (st.client_parse_count, st.server_parse_count, st.bind_count) == (1, 1, 1)


def test_parse_of_a_statement_the_server_has_prepares_it_again(rig: Rig) -> None:
    """A client's Parse must see the text as it means now (a DDL may have come since the server's copy
    was prepared): the shared copy is replaced, under the same name, and the server answers."""
    c = rig.login()
    (s,) = rig.servers
    c.send(parse(name="s1") + SYNC)
    s.take()
    s.send(PC + RFQ)
    assert c.take() == PC + RFQ
    d = rig.login()  # another client parses the same text under its own name
    d.send(parse(name="mine") + bind("mine") + execute() + SYNC)
    assert s.take() == close("pgmux_1") + parse(name="pgmux_1") + bind("pgmux_1") + execute() + SYNC
    assert d.take() == b""
    s.send(CC + PC + BC + ROW + RFQ)
    assert d.take() == PC + BC + ROW + RFQ
    c.send(bind("s1") + execute() + SYNC)  # prepared since c's own Parse: used as it is
    assert s.take() == bind("pgmux_1") + execute() + SYNC
    assert len(rig.app.prepared) == 1 and s.session.stmts.prepared_statements == 1


def test_synthesized_parse_complete_waits_for_earlier_replies(rig: Rig) -> None:
    c, s = with_s1(rig)
    c.send(parse("select 2") + bind() + execute() + close("s1") + parse("select 3", name="s2") + SYNC)
    assert s.take() == parse("select 2") + bind() + execute() + parse("select 3", name="pgmux_2") + SYNC
    s.send(PC + BC)
    assert c.take() == PC + BC
    s.send(m.data_row([2]))
    assert c.take() == m.data_row([2])
    s.send(m.command_complete("SELECT 1") + PC)  # the synthesized CloseComplete goes between the two
    assert c.take() == m.command_complete("SELECT 1") + CC + PC
    s.send(RFQ)
    assert c.take() == RFQ


def test_bind_on_a_server_without_the_statement_injects_a_parse(rig: Rig) -> None:
    c, a, b = two_servers(rig)
    c.send(parse(name="s1") + SYNC)
    assert b.take() == parse(name="pgmux_1") + SYNC  # LIFO: the most recently idle server
    b.send(PC + RFQ)
    c.take()
    holder = rig.login()
    holder.send(m.query("begin"))  # keeps b busy: the next transaction gets a
    assert b.take() == m.query("begin")
    c.send(bind("s1") + execute() + SYNC)
    assert a.take() == parse(name="pgmux_1", sql=SQL) + bind("pgmux_1") + execute() + SYNC
    a.send(PC)
    assert c.take() == b""  # swallowed
    a.send(BC + ROW + RFQ)
    assert c.take() == BC + ROW + RFQ
    assert a.session.stmts.prepared_statements == 1
    assert a.session.pool.stats.server_parse_count == 2


def test_describe_statement_is_renamed_and_prepared_where_missing(rig: Rig) -> None:
    c = rig.login()
    (s,) = rig.servers
    c.send(parse(name="s1") + describe("s1") + SYNC)
    assert s.take() == parse(name="pgmux_1") + describe("pgmux_1") + SYNC
    desc = m.message(m.PARAMETER_DESCRIPTION, b"\x00\x01\x00\x00\x00\x17") + m.row_description([("x", 23)])
    s.send(PC + desc + RFQ)
    assert c.take() == PC + desc + RFQ


def test_close_statement_is_answered_locally(rig: Rig) -> None:
    c, s = with_s1(rig)
    c.send(close("s1") + SYNC)
    assert s.take() == SYNC
    assert c.take() == CC
    s.send(RFQ)
    assert c.take() == RFQ
    assert c.session.stmts.prepared_statements == 0
    assert s.session.stmts.prepared_statements == 1  # others may still use it on this server
    c.send(bind("s1") + execute() + SYNC)  # gone for this client: the server says so itself
    assert s.take() == bind("s1") + execute() + SYNC
    err = m.error_response("ERROR", "26000", 'prepared statement "s1" does not exist')
    s.send(err + RFQ)
    assert c.take() == err + RFQ


def test_parse_in_a_failed_transaction_goes_to_the_server_even_if_it_has_the_statement(rig: Rig) -> None:
    """PostgreSQL refuses a Parse in a failed transaction (25P02) before it looks at the name: pgmux must
    not answer ParseComplete for a statement the server already has, nor keep the client's name."""
    c, a, b = two_servers(rig)
    other = rig.login(user="alice")
    other.send(parse(name="o1") + parse("rollback", name="o2") + SYNC)  # the same texts, on the server c gets
    (s, t) = (a, b) if a.take() else (b, a)
    s.send(PC + PC + RFQ)
    other.take()
    c.send(m.query("begin;select 1/0"))
    sent = s.take()
    err = m.error_response("ERROR", "22012", "division by zero")
    s.send(reply(m.command_complete("BEGIN"))[:-6] + err + m.ready_for_query(b"E"))
    c.take()
    assert sent.endswith(m.query("begin;select 1/0"))
    c.send(parse(name="s1") + SYNC)
    assert s.take() == parse(name="s1") + SYNC  # refused whatever its name: sent as it is
    aborted = m.error_response("ERROR", "25P02", "current transaction is aborted")
    s.send(aborted + m.ready_for_query(b"E"))
    assert c.take() == aborted + m.ready_for_query(b"E")
    assert c.session.stmts.prepared_statements == 0 and s.session.stmts.prepared_statements == 2
    c.send(parse("rollback", name="r1") + SYNC)  # a statement that ends it is parsed, as PostgreSQL does
    assert s.take() == close("pgmux_2") + parse("rollback", name="pgmux_2") + SYNC
    s.send(CC + PC + m.ready_for_query(b"E"))
    assert c.take() == PC + m.ready_for_query(b"E")
    c.send(parse(name="r1") + SYNC)  # a duplicate name too: 25P02 comes first
    assert s.take() == parse(name="r1") + SYNC
    s.send(aborted + m.ready_for_query(b"E"))
    assert c.take() == aborted + m.ready_for_query(b"E")
    c.send(m.query("rollback") + parse(name="s1") + SYNC)  # the transaction ends before the Parse
    assert s.take() == m.query("rollback") + close("pgmux_1") + parse(name="pgmux_1") + SYNC
    s.send(reply(m.command_complete("ROLLBACK")) + CC + PC + RFQ)
    assert c.take() == reply(m.command_complete("ROLLBACK")) + PC + RFQ
    assert c.session.stmts.lookup("s1") is not None


def test_unknown_statement_names_go_to_the_server_as_sent(rig: Rig) -> None:
    """PostgreSQL answers for a name the client never prepared, with every field of its ErrorResponse
    (file, line, routine), and skips to Sync: what follows in the pipeline is undone as after any error."""
    c = rig.login()
    (s,) = rig.servers
    c.send(describe("nope") + parse(name="s1") + bind("s1") + execute() + SYNC)
    assert s.take() == describe("nope") + parse(name="pgmux_1") + bind("pgmux_1") + execute() + SYNC
    err = m.error_response("ERROR", "26000", 'prepared statement "nope" does not exist')
    s.send(err + RFQ)
    assert c.take() == err + RFQ
    assert c.session.stmts.prepared_statements == 0 and s.session.stmts.prepared_statements == 0
    c.send(bind("pgmux_1") + execute() + SYNC)  # pgmux's own names may exist there for others: answered here
    assert s.take() == FAIL_PARSE + SYNC  # and the server fails too, so its ReadyForQuery is PostgreSQL's
    out = c.take()
    assert [t for t, _ in frames(out)] == ["E"] and b"26000" in out
    s.send(FAIL_ERR + RFQ)
    assert c.take() == RFQ


def test_close_portal_and_unnamed_are_forwarded(rig: Rig) -> None:
    c = rig.login()
    (s,) = rig.servers
    c.send(close("p", b"P") + close("") + SYNC)
    assert s.take() == close("p", b"P") + close("") + SYNC
    s.send(CC + CC + RFQ)
    assert c.take() == CC + CC + RFQ


def test_failed_parse_is_forgotten_and_does_not_poison_others(rig: Rig) -> None:
    c = rig.login()
    (s,) = rig.servers
    c.send(parse("selec 1", name="bad") + bind("bad") + execute() + SYNC)
    assert s.take() == parse("selec 1", name="pgmux_1") + bind("pgmux_1") + execute() + SYNC
    err = m.error_response("ERROR", "42601", 'syntax error at or near "selec"')
    s.send(err + RFQ)
    assert c.take() == err + RFQ
    assert c.session.stmts.prepared_statements == 0 and s.session.stmts.prepared_statements == 0
    assert len(rig.app.prepared) == 0
    c.send(parse("select 1", name="bad") + bind("bad") + execute() + SYNC)  # the name is free again
    assert s.take() == parse("select 1", name="pgmux_2") + bind("pgmux_2") + execute() + SYNC
    s.send(PC + BC + ROW + RFQ)
    assert c.take() == PC + BC + ROW + RFQ


def test_error_in_an_injected_parse_reaches_the_client_and_skips_to_sync(rig: Rig) -> None:
    c, a, b = two_servers(rig)
    c.send(parse(name="s1") + SYNC)
    b.take()
    b.send(PC + RFQ)
    c.take()
    holder = rig.login()
    holder.send(m.query("begin"))
    b.take()
    c.send(bind("s1") + execute() + SYNC)
    a.take()
    err = m.error_response("ERROR", "42P01", 'relation "t" does not exist')
    a.send(err + RFQ)
    assert c.take() == err + RFQ
    assert a.session.stmts.prepared_statements == 0
    assert c.session.stmts.prepared_statements == 1  # the client's statement is still its own


def test_duplicate_name_gets_postgresql_error(rig: Rig) -> None:
    c, s = with_s1(rig)
    c.send(parse(name="s1") + bind("s1") + execute() + SYNC)
    assert s.take() == FAIL_PARSE + SYNC
    out = c.take()
    assert b"42P05" in out and [t for t, _ in frames(out)] == ["E"]
    s.send(FAIL_ERR + RFQ)
    assert c.take() == RFQ


def test_pgmux_error_inside_a_transaction_block_fails_the_transaction(rig: Rig) -> None:
    """PostgreSQL answers an error in a transaction block with ReadyForQuery 'E' and refuses what
    follows until ROLLBACK: the server must be in that state too, not just the client told so."""
    c = rig.login()
    (s,) = rig.servers
    c.send(m.query("begin"))
    s.take()
    s.send(m.command_complete("BEGIN") + m.ready_for_query(b"T"))
    c.take()
    c.send(bind("pgmux_7") + execute() + SYNC)  # a name of pgmux's own: pgmux answers (others go as sent)
    assert s.take() == FAIL_PARSE + SYNC
    out = c.take()
    assert b"26000" in out and [t for t, _ in frames(out)] == ["E"]
    s.send(FAIL_ERR + m.ready_for_query(b"E"))
    assert c.take() == m.ready_for_query(b"E")
    c.send(m.query("rollback"))
    assert s.take() == m.query("rollback")
    s.send(m.command_complete("ROLLBACK") + RFQ)
    assert c.take() == m.command_complete("ROLLBACK") + RFQ
    assert s.state is ServerState.IDLE


def test_eviction_closes_the_oldest_and_swallows_its_close_complete(tmp_path: Path) -> None:
    rig = Rig(tmp_path, settings="max_prepared_statements = 1")
    c, s = with_s1(rig)
    c.send(parse("select 2", name="s2") + bind("s2") + execute() + SYNC)
    assert s.take() == (m.message(m.CLOSE, b"Spgmux_1\x00") + parse("select 2", name="pgmux_2")
                        + bind("pgmux_2") + execute() + SYNC)
    s.send(CC + PC + BC + ROW + RFQ)
    assert c.take() == PC + BC + ROW + RFQ
    assert s.session.stmts.names() == ["pgmux_2"]
    c.send(bind("s1") + execute() + SYNC)  # s1 comes back: s2 goes
    assert s.take() == (m.message(m.CLOSE, b"Spgmux_2\x00") + parse(name="pgmux_1") + bind("pgmux_1")
                        + execute() + SYNC)
    s.send(CC + PC + BC + ROW + RFQ)
    assert c.take() == BC + ROW + RFQ


def test_unnamed_statement_reparsed_when_the_server_changed(rig: Rig) -> None:
    """asyncpg without a statement cache: Parse("")/Describe/Sync, then Bind("")/Execute/Sync."""
    c, a, b = two_servers(rig)
    c.send(parse() + describe("") + SYNC)
    assert b.take() == parse() + describe("") + SYNC
    b.send(PC + m.message(m.NO_DATA) + RFQ)
    c.take()
    holder = rig.login()
    holder.send(m.query("select pg_sleep(1)"))
    b.take()
    c.send(bind() + execute() + SYNC)
    assert a.take() == parse() + bind() + execute() + SYNC
    a.send(PC + BC + ROW + RFQ)
    assert c.take() == BC + ROW + RFQ
    holder.take()


def test_unnamed_statement_not_reparsed_on_the_same_server(rig: Rig) -> None:
    c = rig.login()
    (s,) = rig.servers
    c.send(parse() + describe("") + SYNC)
    s.take()
    s.send(PC + m.message(m.NO_DATA) + RFQ)
    c.take()
    c.send(bind() + execute() + SYNC)
    assert s.take() == bind() + execute() + SYNC


def test_unnamed_reparsed_after_another_client_used_the_server(rig: Rig) -> None:
    c = rig.login()
    (s,) = rig.servers
    c.send(parse() + describe("") + SYNC)
    s.take()
    s.send(PC + m.message(m.NO_DATA) + RFQ)
    c.take()
    other = rig.login()
    other.send(m.query("select 1"))  # destroys the unnamed statement on the server
    s.take()
    s.send(reply(ROW))
    other.take()
    c.send(bind() + execute() + SYNC)
    assert s.take() == parse() + bind() + execute() + SYNC


def test_pipelined_batch_queued_before_a_server_is_rewritten_on_attach(rig: Rig) -> None:
    c = rig.login()
    (s,) = rig.servers
    holder = rig.login()
    holder.send(m.query("begin"))
    s.take()
    c.send(parse(name="s1") + bind("s1") + execute() + SYNC)  # waits for a server
    assert len(rig.servers) == 2
    rig.server_login(rig.servers[1])
    t = rig.servers[1]
    assert t.take() == parse(name="pgmux_1") + bind("pgmux_1") + execute() + SYNC
    t.send(PC + BC + ROW + RFQ)
    assert c.take() == PC + BC + ROW + RFQ


def test_replies_split_anywhere_keep_their_order(rig: Rig) -> None:
    c, s = with_s1(rig)
    d = rig.login()
    d.send(m.query("select 1") + parse(name="x") + bind("x") + execute() + SYNC)
    assert d.take() == b""
    assert s.take() == (m.query("select 1") + close("pgmux_1") + parse(name="pgmux_1") + bind("pgmux_1") + execute()
                        + SYNC)
    s.send_bytewise(reply(ROW) + CC + PC + BC + ROW + RFQ)
    assert d.take() == reply(ROW) + PC + BC + ROW + RFQ
    assert s.state is ServerState.IDLE


def test_tracking_off_forwards_names_unchanged(tmp_path: Path) -> None:
    rig = Rig(tmp_path, settings="max_prepared_statements = 0")
    c = rig.login()
    (s,) = rig.servers
    c.send(parse(name="s1") + bind("s1") + execute() + SYNC)
    assert s.take() == parse(name="s1") + bind("s1") + execute() + SYNC
    assert c.session.stmts is None


def test_session_mode_forwards_names_unchanged(tmp_path: Path) -> None:
    rig = Rig(tmp_path, settings="pool_mode = session")
    c = rig.login()
    (s,) = rig.servers
    c.send(parse(name="s1") + SYNC)
    assert s.take() == parse(name="s1") + SYNC


def test_client_leaving_releases_its_statements(rig: Rig) -> None:
    c, s = with_s1(rig)
    c.send(m.terminate())
    assert len(rig.app.prepared) == 1  # the server still holds it
    rig.app.close_server(s.session, "test")
    assert len(rig.app.prepared) == 0


def test_malformed_bind_goes_to_the_server_as_sent_and_the_session_goes_on(rig: Rig) -> None:
    # PostgreSQL answers ERROR 08P01 for it and skips to Sync (tests/integration/test_malformed.py).
    c, s = with_s1(rig)
    bad = m.message(m.BIND, b"\x00s1")  # the statement name never ends
    c.send(bad + SYNC)
    assert s.take() == bad + SYNC and c.session.state.value != "closed"


def test_prepared_steady_state_uses_the_header_only_reply_path(rig: Rig) -> None:
    c, s = with_s1(rig)
    c.send(bind("s1") + execute() + SYNC)
    assert s.take() == bind("pgmux_1") + execute() + SYNC
    assert not s.session.queue  # nothing to swallow or add: replies relayed by headers only
    c.send(parse() + bind() + execute() + SYNC)  # unnamed, as psycopg sends queries with parameters
    assert s.take() == parse() + bind() + execute() + SYNC and not s.session.queue


def test_rebound_fast_path_counts_each_bind_once_and_falls_back_whole(rig: Rig) -> None:
    c, a, b = two_servers(rig)
    c.send(parse(name="s1") + parse("select 2", name="s2") + SYNC)
    x, y = (a, b) if c.session.server is a.session else (b, a)  # x: the server c got
    x.take()
    x.send(PC + PC + RFQ)
    c.take()
    st = x.session.pool.stats
    c.send(bind("s1", portal="p") + describe("p", b"P") + execute() + bind("s2") + execute() + SYNC)
    assert x.take() == (bind("pgmux_1", portal="p") + describe("p", b"P") + execute() + bind("pgmux_2")
                        + execute() + SYNC)
    assert not x.session.queue and st.bind_count == 2
    x.send(BC + m.row_description([("int4", 23)]) + ROW + BC + ROW + RFQ)
    assert c.take() == BC + m.row_description([("int4", 23)]) + ROW + BC + ROW + RFQ
    # On the other server both are missing: the batch takes the full walk, each Bind counted once.
    other = rig.login()
    other.send(m.query("begin"))  # takes x (the idle LIFO's top), so c gets y
    assert x.take() == m.query("begin")
    c.send(bind("s1") + execute() + bind("s2") + execute() + SYNC)
    assert y.take() == (parse(name="pgmux_1") + bind("pgmux_1") + execute() + parse("select 2", name="pgmux_2")
                        + bind("pgmux_2") + execute() + SYNC)
    assert st.bind_count == 4
    y.send(PC + BC + ROW + PC + BC + ROW + RFQ)
    assert c.take() == BC + ROW + BC + ROW + RFQ
    # Both are on y now: the next batch takes the fast path there.
    c.send(bind("s1") + execute() + SYNC)
    assert y.take() == bind("pgmux_1") + execute() + SYNC and not y.session.queue
    assert st.bind_count == 5


def test_rebound_fast_path_needs_a_sync_last(rig: Rig) -> None:
    c, s = with_s1(rig)
    c.send(bind("s1") + execute() + FLUSH)  # no Sync: the replies stay queued ahead of what pgmux answers
    assert s.take() == bind("pgmux_1") + execute() + FLUSH
    assert s.session.queue
    c.send(close("s1") + SYNC)  # answered by pgmux, after the Bind/Execute replies
    assert s.take() == SYNC
    assert c.take() == b""
    s.send(BC + ROW)
    assert c.take() == BC + ROW + CC
    s.send(RFQ)
    assert c.take() == RFQ


@pytest.mark.parametrize("sql", ["DEALLOCATE ALL", "DISCARD ALL"])
def test_deallocate_all_through_the_extended_protocol_forgets_the_servers_statements(rig: Rig, sql: str) -> None:
    """psycopg with prepare_threshold=0 sends DEALLOCATE ALL as a named statement of its own: the server's
    statements are gone, so the next Bind must prepare again, for this client and every other."""
    c = rig.login()
    (s,) = rig.servers
    c.send(parse(name="s1") + bind("s1") + execute() + SYNC)
    s.take()
    s.send(PC + BC + ROW + RFQ)
    c.take()
    c.send(parse(sql, name="d") + bind("d") + execute() + SYNC)
    assert s.take() == parse(sql, name="pgmux_2") + bind("pgmux_2") + execute() + SYNC
    s.send(PC + BC + m.command_complete(sql) + RFQ)
    assert c.take() == PC + BC + m.command_complete(sql) + RFQ
    assert s.session.stmts.prepared_statements == 0 and c.session.stmts.prepared_statements == 0
    other = rig.login()
    other.send(parse(name="o1") + bind("o1") + execute() + SYNC)
    assert s.take() == parse(name="pgmux_3") + bind("pgmux_3") + execute() + SYNC


def test_a_statement_whose_result_type_changed_is_prepared_again(rig: Rig) -> None:
    """After a DDL changed a statement's result type: a client that Parses it after the DDL gets it
    prepared again; one that held it from before gets PostgreSQL's 0A000, as on a direct connection,
    and the server stays, its copies marked stale: the next Bind prepares the statement again."""
    c = rig.login()
    (s,) = rig.servers
    c.send(parse("select * from t", name="s1") + bind("s1") + execute() + SYNC)
    s.take()
    s.send(PC + BC + ROW + RFQ)
    c.take()
    later = rig.login()
    later.send(parse("select * from t", name="l1") + bind("l1") + execute() + SYNC)
    assert s.take() == close("pgmux_1") + parse("select * from t", name="pgmux_1") + bind("pgmux_1") + execute() + SYNC
    s.send(CC + PC + BC + ROW + RFQ)
    assert later.take() == PC + BC + ROW + RFQ
    c.send(bind("s1") + execute() + SYNC)  # the copy is newer than c's Parse: the fast path
    assert s.take() == bind("pgmux_1") + execute() + SYNC
    err = m.message(m.ERROR_RESPONSE, b"SERROR\x00VERROR\x00C0A000\x00Mcached plan must not change result type\x00"
                    b"Fplancache.c\x00L722\x00RRevalidateCachedQuery\x00\x00")
    s.send(err + RFQ)
    assert c.take() == err + RFQ
    assert s.session.state is ServerState.IDLE
    later.send(bind("l1") + execute() + SYNC)
    assert s.take() == close("pgmux_1") + parse("select * from t", name="pgmux_1") + bind("pgmux_1") + execute() + SYNC
    s.send(CC + PC + BC + ROW + RFQ)
    assert later.take() == BC + ROW + RFQ


PD = m.message(m.PARAMETER_DESCRIPTION, b"\x00\x00")
ONE_COL, TWO_COLS = m.row_description([("a", 23)]), m.row_description([("a", 23), ("b", 25)])
REVALIDATE = m.message(m.ERROR_RESPONSE, b"SERROR\x00VERROR\x00C0A000\x00Mcached plan must not change result type\x00"
                       b"Fplancache.c\x00L722\x00RRevalidateCachedQuery\x00\x00")


def described_on_b(rig: Rig) -> tuple[Peer, Peer, Peer]:
    """A client that Parsed and Described "s1" (one column) on server b, then b kept busy: its next
    transaction runs on a, which lacks the statement."""
    c, a, b = two_servers(rig)
    c.send(parse("select * from t", name="s1") + describe("s1") + SYNC)
    assert b.take() == parse("select * from t", name="pgmux_1") + describe("pgmux_1") + SYNC
    b.send(PC + PD + ONE_COL + RFQ)
    assert c.take() == PC + PD + ONE_COL + RFQ
    holder = rig.login()
    holder.send(m.query("begin"))
    assert b.take() == m.query("begin")
    return c, a, b


def test_a_described_statement_is_checked_where_it_is_prepared_again(rig: Rig) -> None:
    """The client knows its statement's result shape: on a server without it, pgmux prepares and
    Describes it first, holding the client's messages until the reply; the same shape, and they go on."""
    c, a, _ = described_on_b(rig)
    c.send(bind("s1") + execute() + SYNC)
    assert a.take() == parse("select * from t", name="pgmux_1") + describe("pgmux_1") + FLUSH
    c.send(bind("s1") + execute() + SYNC)  # more, while the check runs: held too, in order
    assert a.take() == b""
    a.send(PC + PD + m.row_description([("a", 23)]))
    assert c.take() == b""
    assert a.take() == bind("pgmux_1") + execute() + SYNC + bind("pgmux_1") + execute() + SYNC
    a.send(BC + ROW + RFQ + BC + ROW + RFQ)
    assert c.take() == BC + ROW + RFQ + BC + ROW + RFQ
    assert a.state is ServerState.IDLE
    c.send(bind("s1") + execute() + SYNC)  # known now: no check
    assert a.take() == bind("pgmux_1") + execute() + SYNC


def test_a_changed_result_shape_fails_as_postgresql_fails_it(rig: Rig) -> None:
    """A DDL added a column since the client's Parse: PostgreSQL would refuse its statement (0A000, with
    the routine asyncpg tells it by); so does pgmux, and the server fails the rest of the batch too."""
    c, a, _ = described_on_b(rig)
    c.send(bind("s1") + execute() + bind("s1") + execute() + SYNC)
    assert a.take() == parse("select * from t", name="pgmux_1") + describe("pgmux_1") + FLUSH
    a.send(PC + PD + TWO_COLS)
    assert c.take() == REVALIDATE
    assert a.take() == FAIL_PARSE + SYNC  # the server skips to the Sync, as after PostgreSQL's own error
    a.send(FAIL_ERR + RFQ)
    assert c.take() == RFQ
    assert a.state is ServerState.IDLE
    c.send(close("s1") + parse("select * from t", name="s1") + describe("s1") + bind("s1") + execute() + SYNC)
    assert a.take() == (close("pgmux_1") + parse("select * from t", name="pgmux_1") + describe("pgmux_1")
                        + bind("pgmux_1") + execute() + SYNC)
    a.send(CC + PC + PD + TWO_COLS + BC + ROW + RFQ)
    assert c.take() == CC + PC + PD + TWO_COLS + BC + ROW + RFQ


def test_a_failed_check_lets_the_held_messages_go_on(rig: Rig) -> None:
    """The check's Parse fails (the table is gone): the client gets that error, and its held messages
    go to the server, which skips them up to their Sync."""
    c, a, _ = described_on_b(rig)
    c.send(bind("s1") + execute() + SYNC)
    assert a.take() == parse("select * from t", name="pgmux_1") + describe("pgmux_1") + FLUSH
    gone = m.error_response("ERROR", "42P01", 'relation "t" does not exist')
    a.send(gone)
    assert c.take() == gone
    assert a.take() == parse("select * from t", name="pgmux_1") + bind("pgmux_1") + execute() + SYNC
    a.send(RFQ)
    assert c.take() == RFQ
    assert a.state is ServerState.IDLE and "pgmux_1" not in a.session.stmts


def test_no_check_while_the_server_skips_to_a_sync(rig: Rig) -> None:
    """After an error with no Sync in flight the server ignores everything up to the next Sync: a check
    would never be answered, so there is none; the client's messages go as they are, to be skipped."""
    c, a, _ = described_on_b(rig)
    c.send(parse("selec 1", name="bad") + FLUSH)
    assert a.take() == parse("selec 1", name="pgmux_2") + FLUSH
    err = m.error_response("ERROR", "42601", 'syntax error at or near "selec"')
    a.send(err)
    assert c.take() == err
    c.send(bind("s1") + execute() + SYNC)
    assert a.take() == parse("select * from t", name="pgmux_1") + bind("pgmux_1") + execute() + SYNC
    a.send(RFQ)
    assert c.take() == RFQ
    assert a.state is ServerState.IDLE
    c.send(bind("s1") + execute() + SYNC)  # the Sync ended the skipping: checked now
    assert a.take() == parse("select * from t", name="pgmux_1") + describe("pgmux_1") + FLUSH


def test_the_same_unnamed_parse_again_is_not_screened_again(rig: Rig) -> None:
    """pgbench -M extended sends the same unnamed Parse in every transaction: once its text has passed the
    session-state screen, the same bytes go as they are without a second screen (ClientSession.screened),
    and a text the screen flags is never kept as passed."""
    c = rig.login()
    (s,) = rig.servers
    kept = []
    for _ in range(3):
        c.send(parse() + bind() + execute() + SYNC)
        assert s.take() == parse() + bind() + execute() + SYNC
        s.send(PC + BC + ROW + RFQ)
        assert c.take() == PC + BC + ROW + RFQ
        kept.append(c.session.screened)
    assert c.session.screened == parse()
    assert kept[0] is kept[1] is kept[2]  # recognised as the same bytes: not copied (nor screened) again
    assert c.session.unnamed is c.session.screened  # the bytes kept once
    flagged = parse("set search_path = public")
    c.send(flagged + bind() + execute() + SYNC)
    assert s.take() == flagged + bind() + execute() + SYNC
    s.send(PC + BC + m.command_complete("SET") + RFQ)
    assert c.take() == PC + BC + m.command_complete("SET") + RFQ
    assert c.session.screened == parse() and c.session.unnamed == flagged
