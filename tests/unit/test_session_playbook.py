"""Session playbooks against a fake hub (tests/unit/fakehub.py): the client and server state machines
alone, without App. Each test plays the peers' bytes and checks what the sessions wrote and which hub
calls they made, so a change in the runtime cannot make these pass or fail.

(tests/unit/test_sessions.py plays the same kind of scenes through the real App: the hand-off, pools
and limits included.)"""

from __future__ import annotations

import inspect
import struct

import pytest
from fakehub import CANCEL_KEY, CANCEL_PID, FakeHub
from fakes import SERVER_PARAMS, Peer, error_fields, frames, reply, select_one_reply

from pgmux.protocol import messages as m
from pgmux.runtime.app import App
from pgmux.session import hub as hub_module
from pgmux.session.states import ClientState, ServerState

Q1 = m.query("select 1")
SYNC = m.message(m.SYNC)


def extended(sql: str = "select $1", value: bytes = b"1") -> bytes:
    """Parse, Bind, Execute of an unnamed statement: a batch without its Sync."""
    return (m.message(m.PARSE, b"\x00" + m.cstr(sql) + b"\x00\x00")
            + m.message(m.BIND, b"\x00\x00\x00\x00\x00\x01" + struct.pack("!i", len(value)) + value
                        + b"\x00\x00")
            + m.message(m.EXECUTE, b"\x00\x00\x00\x00\x00"))


EXT_REPLY = (m.message(m.PARSE_COMPLETE) + m.message(m.BIND_COMPLETE) + m.data_row([1])
             + m.command_complete("SELECT 1"))


@pytest.fixture
def hub() -> FakeHub:
    return FakeHub()


def logged_in(hub: FakeHub, **params: str) -> Peer:
    c = hub.client()
    c.send(m.startup_message({"user": "alice", "database": "app", **params}))
    c.take()
    assert c.state is ClientState.IDLE
    return c


# -- the port itself ----------------------------------------------------------------------------------
def protocol_members() -> set[str]:
    """Hub's methods, and its one attribute (`now`: an annotation in Python, a descriptor compiled)."""
    return ({n for n in vars(hub_module.Hub) if not n.startswith("_")}
            | set(getattr(hub_module.Hub, "__annotations__", {})))


ATTRIBUTES = {"now", "suspended"}  # the port's members that are values, not methods


def test_the_fake_and_the_app_both_implement_every_member_of_the_port() -> None:
    members = protocol_members()
    assert {"acquire", "server_ready", "client_closed", "now", "server_login_done"} <= members
    assert issubclass(App, hub_module.Hub) and issubclass(FakeHub, hub_module.Hub)
    assert [n for n in sorted(members) if not hasattr(FakeHub(), n)] == []
    # Hub's own methods only raise: each must be App's own (or a layer's), and the fake's
    for impl in (App, FakeHub):
        assert [n for n in sorted(members - ATTRIBUTES) if getattr(impl, n) is getattr(hub_module.Hub, n)] == [], impl
    for name in members - ATTRIBUTES:  # same parameters, in the same order
        proto = list(inspect.signature(getattr(hub_module.Hub, name)).parameters)
        assert list(inspect.signature(getattr(FakeHub, name)).parameters) == proto, name
        assert list(inspect.signature(getattr(App, name)).parameters) == proto, name


def test_the_port_itself_does_nothing() -> None:
    with pytest.raises(NotImplementedError):
        hub_module.Hub().acquire(FakeHub().client().session)


def test_sessions_reach_the_hub_only_through_the_port() -> None:
    """Every `hub.X` a session module names is a member of the port."""
    import ast
    from pathlib import Path

    import pgmux.session
    members = protocol_members()
    used = set()
    for f in Path(pgmux.session.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
                    and node.value.attr == "hub"):
                used.add(node.attr)
    assert used and used <= members, used - members


# -- login ------------------------------------------------------------------------------------------
def test_trust_login_gets_the_welcome_in_one_write(hub: FakeHub) -> None:
    c = hub.client()
    c.send(m.startup_message({"user": "alice", "database": "app", "application_name": "pb"}))
    assert c.state is ClientState.IDLE
    assert len(c.transport.chunks) == 1
    got = frames(c.take())
    assert got[0] == ("R", struct.pack("!i", 0))
    assert got[-2] == ("K", struct.pack("!ii", CANCEL_PID, CANCEL_KEY)) and got[-1] == ("Z", b"I")
    shown = dict(b.split(b"\x00")[:2] for t, b in got if t == "S")
    assert shown[b"application_name"] == b"pb"  # the client's own value, not the server's
    assert hub.names() == ["login", "client_authenticated"]


def test_startup_fed_one_byte_at_a_time(hub: FakeHub) -> None:
    c = hub.client()
    c.send_bytewise(m.startup_message({"user": "alice", "database": "app"}))
    assert c.state is ClientState.IDLE and hub.names() == ["login", "client_authenticated"]


def test_ssl_request_asks_the_hub_then_goes_on_in_plain_text(hub: FakeHub) -> None:
    c = hub.client()
    c.send(struct.pack("!ii", 8, 80877103))
    assert c.take() == b"N" and hub.names() == ["start_tls"]
    c.send(m.startup_message({"user": "alice"}))
    assert c.state is ClientState.IDLE


def test_a_refused_login_is_fatal_and_closes(hub: FakeHub) -> None:
    c = hub.client()
    c.send(m.startup_message({"database": "app"}))
    assert error_fields(c.take())["C"] == "28000"
    assert c.state is ClientState.CLOSED and c.transport.closed
    assert hub.names() == ["login", "client_closed"]


def test_cancel_request_goes_to_the_hub_and_the_connection_reads_no_more(hub: FakeHub) -> None:
    c = hub.client()
    c.send(m.cancel_request(5, 6) + b"junk")
    assert c.state is ClientState.CLOSED
    assert hub.calls == [("cancel_request", c.session, 5, 6)]


def test_protocol_2_is_refused(hub: FakeHub) -> None:
    c = hub.client()
    c.send(m.startup_message({"user": "alice"}, protocol=2 << 16))
    assert error_fields(c.take())["C"] == "08P01" and c.state is ClientState.CLOSED


# -- relay ------------------------------------------------------------------------------------------
def test_query_and_reply_byte_exact_then_the_server_goes_back(hub: FakeHub) -> None:
    s = hub.server()
    c = logged_in(hub)
    c.send(Q1)
    assert c.state is ClientState.ACTIVE and s.session.client is c.session
    assert s.take() == Q1
    s.send(select_one_reply())
    assert c.take() == select_one_reply()
    assert c.state is ClientState.IDLE and s.state is ServerState.IDLE and s.session.client is None
    assert hub.names()[-2:] == ["acquire", "server_ready"]


def test_reply_split_at_every_byte_is_one_transaction(hub: FakeHub) -> None:
    s = hub.server()
    c = logged_in(hub)
    c.send(Q1)
    s.take()
    s.send_bytewise(select_one_reply())
    assert c.take() == select_one_reply()
    assert hub.names().count("server_ready") == 1 and s.state is ServerState.IDLE


def test_query_split_at_every_byte(hub: FakeHub) -> None:
    s = hub.server()
    c = logged_in(hub)
    c.send_bytewise(Q1)
    assert s.take() == Q1 and hub.names().count("acquire") == 1


def test_a_query_waits_for_a_server(hub: FakeHub) -> None:
    c = logged_in(hub)
    c.send(Q1)
    assert c.state is ClientState.WAITING and c.session.pending == [Q1]
    s = hub.server()  # logs in, comes back to the pool: the waiter gets it
    assert c.state is ClientState.ACTIVE and s.take() == Q1


def test_open_transaction_keeps_the_server(hub: FakeHub) -> None:
    s = hub.server()
    c = logged_in(hub)
    c.send(m.query("begin"))
    s.take()
    s.send(reply(m.command_complete("BEGIN"), status=b"T"))
    assert c.state is ClientState.ACTIVE and s.session.tx_status == b"T"
    c.send(m.query("commit"))
    assert s.take() == m.query("commit")
    s.send(reply(m.command_complete("COMMIT")))
    assert c.state is ClientState.IDLE and s.state is ServerState.IDLE


def test_extended_batch_keeps_the_server_until_sync(hub: FakeHub) -> None:
    s = hub.server()
    c = logged_in(hub)
    c.send(extended())
    assert c.session.unsynced and s.take() == extended()
    s.send(EXT_REPLY)
    assert c.take() == EXT_REPLY and c.state is ClientState.ACTIVE  # no ReadyForQuery yet
    c.send(SYNC)
    assert s.take() == SYNC
    s.send(m.ready_for_query(b"I"))
    assert c.state is ClientState.IDLE and hub.names().count("server_ready") == 1


def test_two_pipelined_syncs_need_two_ready_for_query(hub: FakeHub) -> None:
    s = hub.server()
    c = logged_in(hub)
    c.send(extended() + SYNC + extended() + SYNC)
    assert s.session.owed == 2
    s.send(EXT_REPLY + m.ready_for_query(b"I"))
    assert c.state is ClientState.ACTIVE and s.session.owed == 1
    s.send(EXT_REPLY + m.ready_for_query(b"I"))
    assert c.state is ClientState.IDLE


def test_terminate_goes_to_the_hub(hub: FakeHub) -> None:
    hub.server()
    c = logged_in(hub)
    c.send(m.terminate())
    assert hub.calls[-1] == ("client_closed", c.session, "client close request")
    assert c.state is ClientState.CLOSED


def test_eof_goes_to_the_hub(hub: FakeHub) -> None:
    c = logged_in(hub)
    c.session.connection_lost(None)
    assert hub.calls[-1] == ("client_closed", c.session, "client unexpected eof")


def test_a_bad_message_length_is_the_clients_protocol_error(hub: FakeHub) -> None:
    c = logged_in(hub)
    c.send(b"Q\x00\x00\x00\x02")
    assert error_fields(c.take())["C"] == "08P01" and c.state is ClientState.CLOSED


def test_a_bug_is_logged_through_the_hub_and_answered_xx000(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    c = logged_in(hub)

    def broken(*_: object) -> None:
        raise KeyError("boom")

    monkeypatch.setattr(hub, "acquire", broken)
    c.send(Q1)
    assert error_fields(c.take())["C"] == "XX000"
    assert hub.logged and "internal error" in hub.logged[-1]


def test_pooler_errors_are_logged_through_the_hub(hub: FakeHub) -> None:
    from pgmux.errors import PgmuxError
    c = logged_in(hub)
    c.session.fail(PgmuxError("query_wait_timeout", sqlstate="08P01"), close=True)
    assert hub.logged == [f"{c.session.prefix} pooler error: query_wait_timeout"]


def test_slow_client_pauses_its_server(hub: FakeHub) -> None:
    s = hub.server()
    c = logged_in(hub)
    c.send(Q1)
    c.session.pause_writing()
    assert s.transport.paused
    c.session.resume_writing()
    assert not s.transport.paused


# -- server -----------------------------------------------------------------------------------------
def test_server_login_reports_to_the_hub(hub: FakeHub) -> None:
    s = hub.server(logged_in=False)
    assert s.take() == m.startup_message({"user": "alice", "database": "appdb"}) and s.state is ServerState.LOGIN
    s.send_bytewise(m.auth_ok() + m.parameter_status("TimeZone", "UTC") + m.backend_key_data(9, 10)
                    + m.ready_for_query(b"I"))
    assert hub.names() == ["server_login_done"] and s.state is ServerState.IDLE
    assert (s.session.backend_pid, s.session.backend_key) == (9, 10) and s.session.params == {"TimeZone": "UTC"}


def test_server_login_error_is_a_failure_for_the_hub(hub: FakeHub) -> None:
    s = hub.server(logged_in=False)
    s.send(m.error_response("FATAL", "28P01", "password authentication failed"))
    assert hub.calls[0][:3] == ("server_failed", s.session, "password authentication failed")


def test_server_eof_goes_to_the_hub(hub: FakeHub) -> None:
    s = hub.server()
    s.session.connection_lost(None)
    assert hub.calls[-1] == ("server_closed", s.session, "server closed the connection unexpectedly")


def test_fatal_from_a_linked_server_marks_it_for_closing(hub: FakeHub) -> None:
    s = hub.server()
    c = logged_in(hub)
    c.send(Q1)
    s.send(reply(m.error_response("FATAL", "57P01", "terminating connection")))
    assert s.session.close_needed and "host_error" not in hub.names()  # not a split database's host
    assert error_fields(c.take())["C"] == "57P01"


def test_server_protocol_violation_drops_both(hub: FakeHub) -> None:
    s = hub.server()
    c = logged_in(hub)
    c.send(Q1)
    s.send(b"D\x00\x00\x00\x01")
    assert hub.names()[-3:] == ["server_failed", "close_server", "client_closed"]
    assert error_fields(c.take())["C"] == "08006" and c.state is ClientState.CLOSED


def test_unexpected_data_from_an_idle_server_closes_it(hub: FakeHub) -> None:
    s = hub.server()
    s.send(m.data_row([1]))
    assert hub.calls[-1] == ("close_server", s.session, "unexpected data from idle server")
    assert s.state is ServerState.CLOSED


def test_notices_from_an_idle_server_are_fine(hub: FakeHub) -> None:
    s = hub.server()
    s.send(m.notice_response("hello") + m.parameter_status("TimeZone", "Europe/Paris"))
    assert s.state is ServerState.IDLE and s.session.params["TimeZone"] == "Europe/Paris"


def test_internal_query_replies_are_swallowed_then_the_hub_told(hub: FakeHub) -> None:
    s = hub.server()
    s.session.send_internal("DISCARD ALL")
    assert s.take() == m.query("DISCARD ALL")
    s.send_bytewise(m.command_complete("DISCARD ALL") + m.ready_for_query(b"I"))
    assert hub.calls[-1] == ("internal_done", s.session, None)


def test_internal_query_error_is_kept_for_the_hub(hub: FakeHub) -> None:
    s = hub.server()
    s.session.send_internal("SET bad = 1")
    s.send(m.error_response("ERROR", "42704", "unrecognized parameter") + m.ready_for_query(b"I"))
    name, server, err = hub.calls[-1]
    assert name == "internal_done" and err is not None and err["C"] == "42704"


def test_parameters_reported_back_reach_the_linked_client(hub: FakeHub) -> None:
    s = hub.server()
    c = logged_in(hub, TimeZone="UTC")
    c.send(m.query("set timezone = 'Europe/Paris'"))
    s.take()
    s.send(reply(m.command_complete("SET"), m.parameter_status("TimeZone", "Europe/Paris")))
    assert c.session.params["TimeZone"] == "Europe/Paris" and c.session.sig is None


def test_a_new_server_gets_the_clients_parameters_first(hub: FakeHub) -> None:
    s = hub.server()
    c = logged_in(hub, DateStyle="German")
    c.send(Q1)
    sent = frames(s.take())
    assert sent[0][0] == "Q" and b"DateStyle" in sent[0][1] and sent[-1] == ("Q", Q1[5:])
    s.send(m.command_complete("SET") + m.ready_for_query(b"I"))  # swallowed
    assert c.take() == b"" and s.session.swallow == 0
    s.send(select_one_reply())
    assert c.take() == select_one_reply()
    assert SERVER_PARAMS["DateStyle"] != s.session.params.get("DateStyle")



def begin(c: Peer, s: Peer | None) -> None:
    """The client opens a transaction on `s`, which it then keeps."""
    assert s is not None
    c.send(m.query("begin"))
    s.take()
    s.send(reply(m.command_complete("BEGIN"), status=b"T"))
    c.take()

# -- the fast path and the general one ----------------------------------------------------------------
@pytest.mark.parametrize("case", ["idle", "in-transaction", "watched-set", "no-server"])
def test_the_one_query_fast_path_and_the_general_relay_agree(case: str) -> None:
    """ClientSession.data_received relays a read of exactly one Query itself (the usual read); _relay
    takes every other read. Both must leave the same bytes, state, counts and hub calls."""
    from pgmux.protocol.scans import query
    sql = "set search_path = x" if case == "watched-set" else "select 1"
    q = m.query(sql)
    assert query(q, 1 << 30)  # the fast path takes this read
    seen = []
    for path in ("fast", "relay"):
        hub = FakeHub()
        s = hub.server() if case != "no-server" else None
        c = logged_in(hub)
        if case == "in-transaction":
            begin(c, s)
        before = len(hub.calls)
        if path == "fast":
            c.send(q)
        else:
            c.session._relay(q)
        cs = c.session
        seen.append((s.take() if s else None, cs.state, s.session.owed if s else None, list(cs.pending or []),
                     cs.pending_syncs, cs.pending_ext, cs.unsynced, cs.pool.stats.bytes_received if cs.pool else 0,
                     [n[0] for n in hub.calls[before:]], s.session.queue and len(s.session.queue) if s else None))
    assert seen[0] == seen[1]



@pytest.mark.parametrize("case", ["idle", "in-transaction", "no-server", "tracked", "effects", "other-text",
                                  "after-another-client"])
def test_the_unnamed_batch_fast_path_and_the_general_relay_agree(case: str) -> None:
    """data_received also relays a read of one batch of the unnamed statement whose Parse is the one the
    client sent (and the screen passed) last, as pgbench -M extended and drivers with parameters send
    it (protocol/scans.py query, kind 3; fastpath.same_batch). Both paths leave the same bytes, state,
    counts, hub calls, and the same unnamed statement recorded on client and server."""
    from pgmux.protocol.scans import query
    batch = extended() + SYNC
    seen = []
    for path in ("fast", "relay"):
        hub = FakeHub(max_prepared=100 if case == "tracked" else 0)
        s = hub.server() if case != "no-server" else None
        c = logged_in(hub)
        cs = c.session
        if s is None:  # the Parse as screened by an earlier transaction (on a server since gone)
            cs.screened = batch[:batch.index(b"B")]
        c.send(batch)  # the first: walked, and its Parse screened (queued, with no server)
        if s is not None:
            s.take()
            s.send(reply(EXT_REPLY))
        c.take()
        if case == "in-transaction":
            begin(c, s)
        if case == "after-another-client":  # the server ran another client's transaction since
            assert s is not None
            other = logged_in(hub)
            other.send(Q1)
            s.take()
            s.send(select_one_reply())
            assert other.take() == select_one_reply()
        if case == "effects":
            cs.portal_fx = {b"": ()}  # an Execute of a portal with session effects: walked
        again = extended("select $2") + SYNC if case == "other-text" else batch
        assert query(again, 1 << 30, cs.screened) == (0 if case == "other-text" else 3)
        before = len(hub.calls)
        if path == "fast":
            c.send(again)
        else:
            cs._relay(again)
        ss = s.session if s else None
        seen.append((s.take() if s else None, cs.state, ss.owed if ss else None, list(cs.pending or []),
                     cs.pending_syncs, bool(cs.pending_ext), cs.unsynced, cs.copy_syncs,
                     cs.pool.stats.bytes_received if cs.pool else 0, [n[0] for n in hub.calls[before:]],
                     ss.queue and len(ss.queue) if ss else None, cs.unnamed, ss.unnamed if ss else None,
                     cs.screened))
        if case == "no-server":  # a server comes: both send the same, and record the same
            s = hub.server()
            seen.append((s.take(), s.session.unnamed, cs.unnamed, s.session.owed))
    assert seen[0] == seen[len(seen) // 2]
    assert seen[-1] == seen[len(seen) // 2 - 1]


def test_cut_splits_a_read_at_the_end_of_a_long_message() -> None:
    from pgmux.session.passing import cut
    part, rest, left = cut(b"abcdef", 4)
    assert (bytes(part), rest, left) == (b"abcd", b"ef", 0)
    part, rest, left = cut(b"abc", 10)
    assert (bytes(part), rest, left) == (b"abc", b"", 7)
    part, rest, left = cut(b"abc", 3)
    assert (bytes(part), rest, left) == (b"abc", b"", 0)


SERVER_REPLIES = {
    "idle": select_one_reply(),
    "in-transaction": reply(m.command_complete("BEGIN"), status=b"T"),
    "failed": reply(m.error_response("ERROR", "42P01", "no such table"), status=b"E"),
    "notice": reply(m.notice_response("careful"), m.command_complete("SELECT 0")),
    "parameter": reply(m.parameter_status("TimeZone", "UTC"), m.command_complete("SET")),
    "cut": select_one_reply()[:-3],
    "two": select_one_reply() + select_one_reply(),
    "extended": reply(EXT_REPLY),
}


@pytest.mark.parametrize("case", sorted(SERVER_REPLIES) + ["waiter"])
def test_the_usual_reply_fast_path_and_the_server_walk_agree(case: str) -> None:
    """ServerSession.data_received relays a reply of whole messages with one ReadyForQuery, last, and
    nothing the relay must read (protocol/scans.py ready) itself; _relay_walk takes every other reply.
    Both must leave the same bytes to the client, the same server and client state, counts and hub
    calls; and ready tells exactly the replies walk sees that way."""
    from pgmux.protocol.scans import ready, walk
    from pgmux.session.server import _NOTED
    data = SERVER_REPLIES.get(case, select_one_reply())
    pos, nz, z, zpos, items = walk(data, 1 << 30, _NOTED)
    fast = (pos, nz, items, zpos) == (len(data), 1, None, len(data) - 6)
    assert ready(data, 1 << 30, _NOTED) == (z if fast else 0)
    assert fast == (case in ("idle", "in-transaction", "notice", "extended", "waiter"))  # an error is read
    seen = []
    for path in ("fast", "walk"):
        hub = FakeHub()
        s = hub.server()
        c = logged_in(hub)
        sent = m.query("select 1; select 1") if case == "two" else Q1
        c.send(sent + SYNC if case == "extended" else sent)
        s.take()
        other = None
        if case == "waiter":  # a second client waits: the server goes to it when this reply ends
            other = logged_in(hub)
            other.send(Q1)
        before = len(hub.calls)
        if path == "fast":
            s.send(data)
        else:
            s.session._relay_walk(data)
        ss, cs = s.session, c.session
        seen.append((c.take(), cs.state, ss.state, ss.owed, ss.copy_in, ss.tx_status, ss.client is cs,
                     ss.pool.stats.bytes_sent, [n[0] for n in hub.calls[before:]], bytes(ss.buf.pending or b""),
                     s.take(), other.state if other else None))
    assert seen[0] == seen[1]
