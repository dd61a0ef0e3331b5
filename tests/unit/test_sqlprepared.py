"""SQL-level prepared statements (session/sqlprepared.py): what a server must be sent before a
statement that names one, so that it holds exactly the client's statement under that name."""

from __future__ import annotations

from pgmux.session import sqlprepared as sp
from pgmux.session.statements import Deallocate, Execute, Prepare, effects

A = "PREPARE p AS SELECT 'a'"
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
    client: dict[str, str] = {}
    server: dict[str, str] = {"other": "PREPARE other AS SELECT 0"}
    sp.record(client, server, Prepare("p", "SELECT 'a'"))
    assert client == {"p": A} and server["p"] == A
    sp.record(client, server, Deallocate("p"))
    assert client == {} and "p" not in server
    sp.record(client, server, Prepare("p", "SELECT 'a'"))
    sp.record(client, server, Deallocate(None))
    assert client == {} and server == {}


def test_evict_other_clients_leftovers_beyond_the_cap() -> None:
    server = {f"s{i}": f"PREPARE s{i} AS SELECT {i}" for i in range(5)}
    client = {"s0": server["s0"]}
    steps = sp.evict(client, server, 3)
    assert [s[0] for s in steps] == ["DEALLOCATE s1", "DEALLOCATE s2"]
    assert list(server) == ["s0", "s3", "s4"]
    assert sp.evict(client, server, 3) == []
