"""SQL-level prepared statements (session/sqlprepared.py): what a server must be sent before a
statement that names one, so that it holds exactly the client's statement under that name."""

from __future__ import annotations

from pathlib import Path

from fakes import Rig, frames

from pgmux.protocol import messages as m
from pgmux.session import sqlprepared as sp
from pgmux.session.statements import Deallocate, Execute, Prepare, effects
from pgmux.session.states import ServerState

A = "PREPARE p AS SELECT 'a'"
RFQ = m.ready_for_query(b"I")
B = "PREPARE p AS SELECT 'b'"


def test_definition_recreates_the_statement_under_the_clients_name() -> None:
    (p,) = effects('PREPARE "Mixed Case" (int, text) AS SELECT $1, $2')
    assert isinstance(p, Prepare)
    assert sp.definition(p) == 'PREPARE "Mixed Case" (integer, text) AS SELECT $1, $2'
    assert sp.definition(Prepare("q", "SELECT 1")) == "PREPARE q AS SELECT 1"


def test_names_in_order_once_each() -> None:
    assert sp.names([Prepare("a", "x"), Execute("b"), Execute("a"), Deallocate("c"), Deallocate(None)]) == [
        "a", "b", "c"]
    assert sp.names(effects("EXPLAIN EXECUTE e(1)")) == ["e"]
    assert sp.names(effects("CREATE TABLE t AS EXECUTE f")) == ["f"]


def test_plan_shares_replaces_and_clears() -> None:
    server = {"p": A}
    assert sp.plan({"p": A}, server, ["p"]) == []  # same statement: shared
    assert sp.plan({"p": B}, server, ["p"]) == [("DEALLOCATE p", "p", A), (B, "p", None)]
    assert server == {"p": B}
    assert sp.plan({}, server, ["p"]) == [("DEALLOCATE p", "p", B)]  # not the client's: gone first
    assert server == {}
    assert sp.plan({"p": A}, server, ["p"]) == [(A, "p", None)]
    assert server == {"p": A}


def test_undo_puts_back_what_the_server_still_holds() -> None:
    server = {"p": A}
    steps = sp.plan({"p": B}, server, ["p"])
    for step in steps:  # both skipped: the server still has A
        sp.undo(server, step)
    assert server == {"p": A}
    steps = sp.plan({"p": B}, server, ["p"])
    sp.undo(server, steps[1])  # DEALLOCATE ran, PREPARE failed: nothing under p
    assert server == {}


def test_record_after_the_server_confirmed() -> None:
    server: dict[str, str] = {"other": "PREPARE other AS SELECT 0"}
    client = sp.record(None, server, Prepare("p", "SELECT 'a'"))  # the client's dict, made for its first
    assert client == {"p": A} and server["p"] == A
    same = sp.record(client, server, Prepare("q", "SELECT 'a'"))
    assert same is client and set(client) == {"p", "q"}
    client = sp.record(client, server, Deallocate("q"))
    assert client == {"p": A} and "q" not in server
    client = sp.record(client, server, Deallocate("p"))
    assert client is None and "p" not in server  # none left: no dict kept (issue 11)
    client = sp.record(client, server, Prepare("p", "SELECT 'a'"))
    client = sp.record(client, server, Deallocate(None))
    assert client is None and server == {}
    assert sp.plan(None, {"p": A}, ["p"]) == [("DEALLOCATE p", "p", A)]  # a client without any
    assert sp.evict(None, {"p": A, "q": B}, 1) == [("DEALLOCATE p", "p", A)]


def test_evict_other_clients_leftovers_beyond_the_cap() -> None:
    server = {f"s{i}": f"PREPARE s{i} AS SELECT {i}" for i in range(5)}
    client = {"s0": server["s0"]}
    steps = sp.evict(client, server, 3)
    assert [s[0] for s in steps] == ["DEALLOCATE s1", "DEALLOCATE s2"]
    assert list(server) == ["s0", "s3", "s4"]
    assert sp.evict(client, server, 3) == []


def test_playbook_another_clients_statement_is_deallocated_first(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    a = rig.login()
    (s,) = rig.servers
    a.send(m.query("PREPARE p AS SELECT 'a'"))
    assert s.take() == m.query("PREPARE p AS SELECT 'a'")
    s.send(m.command_complete("PREPARE") + RFQ)
    assert a.take() == m.command_complete("PREPARE") + RFQ
    assert a.session.sql == {"p": A} and s.session.sql == {"p": A}
    b = rig.login()
    b.send(m.query("EXECUTE p"))
    sent = frames(s.take())
    assert [t for t, _ in sent] == ["C", "C", "P", "B", "E", "C", "C", "S", "Q"]
    assert b"DEALLOCATE p" in sent[2][1] and sent[-1][1] == b"EXECUTE p\x00"
    closes = m.message(m.CLOSE_COMPLETE) * 2
    s.send(closes + m.message(m.PARSE_COMPLETE) + m.message(m.BIND_COMPLETE) + m.command_complete("DEALLOCATE")
           + closes + RFQ)
    assert b.take() == b""  # all pgmux's own
    err = m.error_response("ERROR", "26000", 'prepared statement "p" does not exist')
    s.send(err + RFQ)
    assert b.take() == err + RFQ
    assert s.session.sql == {} and b.session.sql is None and a.session.sql == {"p": A}
    a.send(m.query("EXECUTE p"))  # a's statement is prepared again for it
    sent = frames(s.take())
    assert [t for t, _ in sent] == ["C", "C", "P", "B", "E", "C", "C", "S", "Q"]
    assert A.encode() in sent[2][1]
    s.send(closes + m.message(m.PARSE_COMPLETE) + m.message(m.BIND_COMPLETE) + m.command_complete("PREPARE")
           + closes + RFQ)
    s.send(m.data_row(["a"]) + m.command_complete("SELECT 1") + RFQ)
    assert a.take() == m.data_row(["a"]) + m.command_complete("SELECT 1") + RFQ
    assert s.session.sql == {"p": A} and s.state is ServerState.IDLE


def test_playbook_pipelined_prepare_then_execute(tmp_path: Path) -> None:
    """PREPARE and EXECUTE in one write: the server holds another client's statement of that name,
    so it goes first; the client's own PREPARE then makes the EXECUTE right, with nothing in between."""
    rig = Rig(tmp_path)
    a = rig.login()
    (s,) = rig.servers
    a.send(m.query("PREPARE p AS SELECT 'a'"))
    s.take()
    s.send(m.command_complete("PREPARE") + RFQ)
    a.take()
    b = rig.login()
    b.send(m.query("PREPARE p AS SELECT 'b'") + m.query("EXECUTE p"))
    sent = frames(s.take())
    assert [t for t, _ in sent] == ["C", "C", "P", "B", "E", "C", "C", "S", "Q", "Q"]
    assert b"DEALLOCATE p" in sent[2][1]
    closes = m.message(m.CLOSE_COMPLETE) * 2
    s.send(closes + m.message(m.PARSE_COMPLETE) + m.message(m.BIND_COMPLETE) + m.command_complete("DEALLOCATE")
           + closes + RFQ + m.command_complete("PREPARE") + RFQ + m.data_row(["b"]) + m.command_complete("SELECT 1")
           + RFQ)
    assert b.take() == (m.command_complete("PREPARE") + RFQ + m.data_row(["b"]) + m.command_complete("SELECT 1")
                        + RFQ)
    assert b.session.sql == {"p": "PREPARE p AS SELECT 'b'"} == s.session.sql
    assert s.state is ServerState.IDLE
