"""session/handover.py without sockets: which clients may move (why_not), and a session's snapshot
restored on a fresh ClientSession of another hub (tests/unit/fakehub.py), field for field; malformed,
foreign-version and oversized snapshots refused before anything changes."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fakehub import FakeHub
from fakes import FakeTransport, Peer

from pgmux.protocol import messages as m
from pgmux.session import handover
from pgmux.session.client import ClientSession
from pgmux.session.client_login import adopted
from pgmux.session.handover import HandoverError, load, restore, snapshot, why_not
from pgmux.session.prepared import ClientStatements
from pgmux.session.states import ClientState
from pgmux.session.tracking import Pins, own_params, query_effects

SHAPE = b"\x00\x01id\x00" + bytes(10)


def logged_in(hub: FakeHub) -> Peer:
    peer = hub.client()
    peer.send(m.startup_message({"user": "alice", "database": "app", "application_name": "first"}))
    peer.take()
    c = peer.session
    assert c.state is ClientState.IDLE
    c.stmts = ClientStatements(hub.registry)
    return peer


def busy_session(hub: FakeHub) -> ClientSession:
    """A logged-in client with one of everything a session can hold between transactions."""
    c: ClientSession = logged_in(hub).session
    assert c.stmts is not None
    c.stmts.parse("s1", "select $1", [23])
    stmt = c.stmts.lookup("s1")
    assert stmt is not None
    c.stmts.described("s1", stmt, SHAPE)
    c.stmts.parse("setter", "SET search_path = other")
    c.stmts.parse("", "select 'unnamed'", [])
    c.unnamed = m.message(m.PARSE, b"\x00select 'unnamed'\x00\x00\x00")
    c.stmt_fx = {b"setter": query_effects(b"SET search_path = other\x00")}
    assert c.stmt_fx[b"setter"]
    own_params(c)["search_path"] = "elsewhere"
    c.sql = {"p": "PREPARE p AS SELECT 1"}
    c.ryw_lsn = 0x1234
    c.cancel_pid, c.cancel_key = 4321, 98765
    return c


def fresh(hub: FakeHub) -> ClientSession:
    """A new client of `hub`, joined to its pool as the runtime joins an adopted one (logins._join_pool)."""
    c = ClientSession(hub.next_id, hub, hub.now(), 1 << 30, hub.sigs)
    hub.next_id += 1
    c.connection_made(FakeTransport(), "10.0.0.9", 4000, False, None)
    return c


def join(c: ClientSession, hub: FakeHub) -> None:
    c.pool = hub.pool
    c.watch = True
    c.stmts = ClientStatements(hub.registry)


def test_round_trip() -> None:
    a, b = FakeHub(max_prepared=100), FakeHub(max_prepared=100)
    c = busy_session(a)
    assert why_not(c) == ""
    a.clock.advance(30)
    blob = snapshot(c, a.now(), keys=(b"client-key", b"server-key"), secret="s3cret")
    assert b"s3cret" in blob  # (it travels: the receiver's server logins need it; never logged)

    d = fresh(b)
    snap = load(blob)
    handover.identify(d, snap, b.now())
    join(d, b)
    restore(d, snap, b.now())
    adopted(d)
    assert d.state is ClientState.IDLE
    assert (d.user, d.database, d.addr, d.port) == ("alice", "app", "127.0.0.1", c.port)
    assert b.now() - d.connect_time == pytest.approx(a.now() - c.connect_time)
    assert d.startup == c.startup and d.params == c.params and d.initial == c.initial
    assert d.params["search_path"] == "elsewhere" and d.params is not d.initial
    assert (d.cancel_pid, d.cancel_key) == (4321, 98765)
    assert d.sql == c.sql and d.ryw_lsn == 0x1234 and d.unnamed == c.unnamed and d.watch
    assert d.stmt_fx == c.stmt_fx
    assert d.stmts is not None and c.stmts is not None
    got = {name: (s.query, s.param_types, s.shape) for name, s in d.stmts.named()}
    assert got == {"s1": ("select $1", (23,), SHAPE), "setter": ("SET search_path = other", (), None)}
    s1 = d.stmts.lookup("s1")
    assert s1 is not None and b.registry.get(s1.name) is not None  # prepared on demand by b's servers
    unnamed = d.stmts.lookup("")
    assert unnamed is not None and unnamed.query == "select 'unnamed'"
    assert snap.keys == (b"client-key", b"server-key") and snap.secret == "s3cret"
    assert "s3cret" not in repr(snap) and "client-key" not in repr(snap)


def test_unchanged_parameters_stay_shared() -> None:
    a, b = FakeHub(), FakeHub()
    c = logged_in(a).session
    assert c.params is c.initial
    d = fresh(b)
    join(d, b)
    restore(d, snapshot(c, a.now()), b.now())
    assert d.params is d.initial and d.params == c.params  # the first SET copies it (tracking.own_params)


@pytest.mark.parametrize("blob, message", [
    (b"not json", "not JSON"),
    (b"[1, 2]", "not an object"),
    (json.dumps({"v": 99}).encode(), "version 99"),
    (json.dumps({"v": 1, "user": "alice"}).encode(), "missing"),
])
def test_malformed_refused(blob: bytes, message: str) -> None:
    with pytest.raises(HandoverError, match=message):
        load(blob)


def _doc(hub: FakeHub) -> dict[str, Any]:
    return json.loads(snapshot(busy_session(hub), hub.now()))


@pytest.mark.parametrize("field, value", [
    ("user", 7), ("port", "5432"), ("port", True), ("params", {"a": 1}), ("cancel", [1]),
    ("stmts", [["s1", "select 1", ["23"], None]]), ("stmts", [["s1", "select 1", [], "!!not base64"]]),
    ("stmts", [["s1", "select 1", [-1], None]]), ("keys", ["AA=="]), ("unnamed", 5),
    ("stmt_fx", ["c2V0dGVy", "bm9uZQ=="]),  # effects of a statement the snapshot does not hold
    ("stmts", [["s1", "select 1", [], None], ["s1", "select 2", [], None]]),  # one name twice
    ("stmts", [["", "select 1", [], None]]),
])
def test_wrong_fields_refused_before_any_change(field: str, value: Any) -> None:
    a, b = FakeHub(max_prepared=100), FakeHub(max_prepared=100)
    doc = _doc(a)
    doc[field] = value
    d = fresh(b)
    join(d, b)
    with pytest.raises(HandoverError, match="malformed"):
        restore(d, json.dumps(doc).encode(), b.now())
    assert d.user == "" and d.cancel_pid == 0 and d.stmts is not None and d.stmts.named() == []
    assert d.params == {} and d.sql is None and d.stmt_fx is None


def test_oversized(monkeypatch: pytest.MonkeyPatch) -> None:
    hub = FakeHub()
    c = busy_session(hub)
    blob = snapshot(c, hub.now())
    with pytest.raises(HandoverError, match="too large"):
        load(blob + b" " * (handover.MAX_SNAPSHOT - len(blob) + 1))
    monkeypatch.setattr(handover, "MAX_SNAPSHOT", len(blob) - 1)
    with pytest.raises(HandoverError, match="too large"):
        snapshot(c, hub.now())


def test_restore_needs_a_matching_pool() -> None:
    a, b = FakeHub(max_prepared=100), FakeHub()
    blob = snapshot(busy_session(a), a.now())
    d = fresh(b)
    d.pool, d.watch = b.pool, True  # max_prepared_statements = 0 here: no ClientStatements
    with pytest.raises(HandoverError, match="not tracked here"):
        restore(d, blob, b.now())
    e = fresh(b)
    e.pool = b.pool  # a session pool here: nothing tracked
    with pytest.raises(HandoverError, match="pool mode"):
        restore(e, blob, b.now())


class TlsTransport(FakeTransport):
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return object() if name == "ssl_object" else default


def test_why_not() -> None:
    hub = FakeHub()
    c = logged_in(hub).session
    assert why_not(c) == ""
    c.pending = [m.query("select 1")]
    assert why_not(c) == "busy (queued)"
    c.pending = None
    c.unsynced = True
    assert why_not(c) == "busy (batch without Sync)"
    c.unsynced = False
    c.pins, c.pinned = Pins(), "listen"
    assert why_not(c) == "pinned (listen)"
    c.pins, c.pinned = None, ""
    c.held = True  # as runtime/handover.py stops reading it
    c.suspend()
    assert why_not(c) == "reading paused" and why_not(c, moving=True) == ""
    assert c.transport.paused
    c.held = False
    c.suspend()
    assert not c.transport.paused
    c.is_admin = True
    assert why_not(c) == "console"
    c.is_admin = False
    c.transport = TlsTransport()
    assert why_not(c) == "TLS"
    fresh_client = hub.client().session
    assert why_not(fresh_client) == "login"
    fresh_client.replication = "physical"
    assert why_not(fresh_client) == "replication"
    session_hub = FakeHub(mode="session")
    assert why_not(logged_in(session_hub).session) == "session pooling"
    c.transport = FakeTransport()
    c.stmt_fx = {b"gone": query_effects(b"SET search_path = x\x00")}  # a statement it no longer holds
    assert why_not(c) == "statement effects"
