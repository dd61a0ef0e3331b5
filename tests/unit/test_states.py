"""The state machines own their state: every change goes through a session's move(), checked against
its table (session/states.py), and each illegal move is refused. Pool lists are edited by the pool core
only. The AST checks keep the runtime from writing around the tables again."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest

import pgmux
from pgmux.pooling.pool import Pool, PoolLimits
from pgmux.session.client import ClientSession
from pgmux.session.hub import Hub
from pgmux.session.prepared import Registry
from pgmux.session.replication import ReplicationServer
from pgmux.session.server import ServerSession, ServerTarget
from pgmux.session.states import CLIENT_MOVES, SERVER_MOVES, ClientState, IllegalTransition, ServerState

ROOT = Path(pgmux.__file__).parent


class ClockOnly(Hub):
    """A hub of which only the clock is read: no hub call is made."""

    def __init__(self) -> None:
        self.now = lambda: 0.0


def client() -> ClientSession:
    return ClientSession(1, ClockOnly(), 0.0, 1 << 20, {})


def server() -> ServerSession:
    pool: Pool[Any, Any] = Pool("db", "u", PoolLimits(), "transaction")
    target = ServerTarget(host="127.0.0.1", port=5432, unix_path=None, dbname="db", user="u")
    return ServerSession(2, ClockOnly(), pool, target, 0.0, Registry(), 0)


def test_every_state_has_a_row() -> None:
    assert set(CLIENT_MOVES) == set(ClientState) and set(SERVER_MOVES) == set(ServerState)
    assert all(ClientState.CLOSED in CLIENT_MOVES[s] for s in ClientState if s is not ClientState.CLOSED)
    assert CLIENT_MOVES[ClientState.CLOSED] == frozenset()  # a closed client never comes back


CLIENT_PAIRS = [(a, b) for a in ClientState for b in ClientState]
SERVER_PAIRS = [(a, b) for a in ServerState for b in ServerState]


@pytest.mark.parametrize(("old", "new"), CLIENT_PAIRS, ids=[f"{a.value}->{b.value}" for a, b in CLIENT_PAIRS])
def test_client_moves(old: ClientState, new: ClientState) -> None:
    c = client()
    c.state = old
    if new in CLIENT_MOVES[old]:
        c.move(new)
        assert c.state is new
    else:
        with pytest.raises(IllegalTransition, match=f"client state {old.value} -> {new.value}"):
            c.move(new)
        assert c.state is old  # refused: nothing changed


@pytest.mark.parametrize(("old", "new"), SERVER_PAIRS, ids=[f"{a.value}->{b.value}" for a, b in SERVER_PAIRS])
def test_server_moves(old: ServerState, new: ServerState) -> None:
    target = ServerTarget(host="127.0.0.1", port=5432, unix_path=None, dbname="db", user="u")
    for s in (server(), ReplicationServer(3, None, None, server().pool, target, {}, "physical", 0.0)):
        s.state = old
        if new in SERVER_MOVES[old]:
            s.move(new)
            assert s.state is new
        else:
            with pytest.raises(IllegalTransition, match=f"server state {old.value} -> {new.value}"):
                s.move(new)
            assert s.state is old


def test_the_tables_allow_the_usual_lives() -> None:
    c = client()
    for new in ("auth", "login_wait", "idle", "waiting", "active", "idle", "active", "idle", "closed"):
        c.move(ClientState(new))
    s = server()
    for snew in ("idle", "active", "idle", "tested", "active", "closed"):
        s.move(ServerState(snew))


# -- nobody writes around the tables ------------------------------------------------------------------
_MOVERS = {"move", "use_pool", "__init__"}  # where a session's own `state` and `pool` are written
_OWNED = {"state", "pool"}
_POOL_LISTS = {"idle", "waiters", "login_waiters"}
_MUTATORS = {"append", "appendleft", "extend", "insert", "remove", "pop", "popleft", "clear", "sort", "reverse"}


def _functions(tree: ast.AST) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def state_writes(source: str, label: str) -> list[str]:
    """Assignments to `<anything>.state` or `.pool` outside a session's move(), use_pool() and __init__."""
    tree = ast.parse(source, label)
    allowed = {id(n) for f in _functions(tree) if f.name in _MOVERS for n in ast.walk(f)}
    found = []
    for node in ast.walk(tree):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = list(node.targets)
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        for t in targets:
            for el in (t.elts if isinstance(t, ast.Tuple) else [t]):  # the attribute written, not x.pool.y
                if isinstance(el, ast.Attribute) and el.attr in _OWNED and id(node) not in allowed:
                    found.append(f"{label}:{getattr(node, 'lineno', 0)}")
    return sorted(set(found), key=lambda w: int(w.rpartition(":")[2]))


def pool_list_edits(source: str, label: str) -> list[str]:
    """Calls that change, and assignments that replace, a pool's idle/waiters/login_waiters lists."""
    found = []
    for node in ast.walk(ast.parse(source, label)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in _MUTATORS
                and isinstance(node.func.value, ast.Attribute) and node.func.value.attr in _POOL_LISTS):
            found.append(f"{label}:{node.lineno} {node.func.value.attr}.{node.func.attr}()")
        elif isinstance(node, (ast.Assign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                for el in ast.walk(t):
                    if isinstance(el, ast.Attribute) and el.attr in _POOL_LISTS:
                        found.append(f"{label}:{node.lineno} {el.attr} =")
    return sorted(found, key=lambda w: int(w.split(":")[1].split()[0]))


def _sources(skip: str = "") -> list[tuple[str, str]]:
    return [(f.read_text(), str(f.relative_to(ROOT.parent))) for f in sorted(ROOT.rglob("*.py"))
            if not (skip and f.is_relative_to(ROOT / skip))]


def test_a_clients_pool_changes_only_while_it_holds_no_server() -> None:
    c, s = client(), server()
    other: Pool[Any, Any] = Pool("db", "u2", PoolLimits(), "transaction")
    c.use_pool(s.pool)
    c.state = ClientState.IDLE
    c.link(s, 1.0)
    assert c.server is s and s.client is c and s.link_time == 1.0
    with pytest.raises(IllegalTransition, match="pool changed while a server is linked"):
        c.use_pool(other)
    assert c.pool is s.pool
    c.detach()
    c.use_pool(other)
    assert c.pool is other


def test_only_the_sessions_write_their_state() -> None:
    found = [w for text, label in _sources() for w in state_writes(text, label)]
    assert found == []


def test_only_the_pool_core_edits_pool_lists() -> None:
    found = [w for text, label in _sources(skip="pooling") for w in pool_list_edits(text, label)]
    assert found == []


def test_the_checkers_see_what_they_look_for() -> None:
    src = ("class A:\n    def __init__(self):\n        self.state = 1\n    def move(self, x):\n        self.state = x\n"
           "def f(c):\n    c.state = 2\n    c.a.state, y = 3, 4\n    c.pool.x = 1\n    c.pool = 5\n")
    assert state_writes(src, "x.py") == ["x.py:7", "x.py:8", "x.py:10"]
    src = "def f(p, s):\n    p.idle.remove(s)\n    p.login_waiters = []\n    p.waiters.popleft()\n    len(p.idle)\n"
    assert pool_list_edits(src, "x.py") == [
        "x.py:2 idle.remove()", "x.py:3 login_waiters =", "x.py:4 waiters.popleft()"]


def test_the_moves_client_move_takes_by_identity_are_in_the_table() -> None:
    """ClientSession.move lets the per-transaction moves through without the table lookup: each must be
    a move the table allows (test_client_moves drives every pair through move() as well)."""
    fast = [(ClientState.IDLE, ClientState.ACTIVE), (ClientState.WAITING, ClientState.ACTIVE),
            (ClientState.ACTIVE, ClientState.IDLE), (ClientState.IDLE, ClientState.WAITING)]
    assert all(new in CLIENT_MOVES[old] for old, new in fast)
