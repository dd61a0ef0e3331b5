"""Timeouts and pool settings played through the real App with fake connections and a hand-turned clock
(tests/unit/fakes.py): transaction_timeout and the per-user / per-database timeouts with PgBouncer's
precedence, server_check_delay = 0, server_fast_close, and eviction under max_db_connections."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from fakes import SERVER_KEY, SERVER_PID, Peer, Rig, error_fields, reply, select_one_reply

from pgmux.config import Config, DatabaseConfig, Settings, UserConfig
from pgmux.net import connector
from pgmux.protocol import messages as m
from pgmux.protocol.auth import md5_response
from pgmux.session.states import ClientState, ServerState

Q1 = m.query("select 1")
BEGIN_REPLY = reply(m.command_complete("BEGIN"), status=b"T")
IN_TX_REPLY = reply(m.row_description([("x", m.OID_INT4)]), m.data_row([1]), m.command_complete("SELECT 1"),
                    status=b"T")


def begin(rig: Rig, client: Peer, server: Peer) -> None:
    client.send(m.query("begin"))
    assert server.take() == m.query("begin")
    server.send(BEGIN_REPLY)
    assert client.take() == BEGIN_REPLY


def assert_ended(rig: Rig, client: Peer, server: Peer, why: str) -> None:
    fields = error_fields(client.take())
    assert (fields["S"], fields["C"], fields["M"]) == ("FATAL", "08P01", why)
    assert client.state is ClientState.CLOSED and client.transport.closed
    # The server inside the transaction is closed, never handed back.
    assert server.state is ServerState.CLOSED and server.transport.closed
    assert server.session not in server.session.pool.idle


# -- transaction_timeout -------------------------------------------------------------------------------

def test_transaction_timeout_ends_a_busy_transaction(tmp_path: Path) -> None:
    rig = Rig(tmp_path, settings="transaction_timeout = 5")
    client = rig.login()
    (server,) = rig.servers
    begin(rig, client, server)
    for _ in range(3):  # active all along: idle_transaction_timeout would never fire, this does
        rig.clock.advance(1.5)
        client.send(Q1)
        server.take()
        server.send(IN_TX_REPLY)
        client.take()
        rig.app.tick(rig.clock())
        assert client.state is not ClientState.CLOSED
    rig.clock.advance(1.0)  # 5.5 s since BEGIN
    rig.app.tick(rig.clock())
    assert_ended(rig, client, server, "transaction timeout")


def test_transaction_timeout_counts_from_the_transactions_start_not_the_login(tmp_path: Path) -> None:
    rig = Rig(tmp_path, settings="transaction_timeout = 5\npool_mode = session")
    client = rig.login()
    (server,) = rig.servers
    client.send(Q1)  # a first transaction, autocommit
    server.take()
    server.send(select_one_reply())
    client.take()
    rig.clock.advance(20)  # idle in the session, no transaction: no timeout
    rig.app.tick(rig.clock())
    assert client.state is not ClientState.CLOSED
    begin(rig, client, server)  # session mode: the same server, a new transaction starts now
    rig.clock.advance(4)
    rig.app.tick(rig.clock())
    assert client.state is not ClientState.CLOSED
    rig.clock.advance(2)
    rig.app.tick(rig.clock())
    assert_ended(rig, client, server, "transaction timeout")


def test_transaction_timeout_per_user_overrides_the_global(tmp_path: Path) -> None:
    rig = Rig(tmp_path, settings="transaction_timeout = 100",
              databases="[users]\nalice = transaction_timeout=2\nbob = transaction_timeout=0\n")
    alice, bob = rig.login("alice"), rig.login("bob")
    a_srv, b_srv = rig.servers
    begin(rig, alice, a_srv)
    begin(rig, bob, b_srv)
    rig.clock.advance(3)
    rig.app.tick(rig.clock())
    assert_ended(rig, alice, a_srv, "transaction timeout")
    # bob's 0 means "not set" in a [users] line (PgBouncer): the global 100 s applies.
    assert bob.state is ClientState.ACTIVE
    rig.clock.advance(98)
    rig.app.tick(rig.clock())
    assert_ended(rig, bob, b_srv, "transaction timeout")


def test_idle_transaction_timeout_per_user(tmp_path: Path) -> None:
    rig = Rig(tmp_path, databases="[users]\nalice = idle_transaction_timeout=2\n")
    alice, bob = rig.login("alice"), rig.login("bob")
    a_srv, b_srv = rig.servers
    begin(rig, alice, a_srv)
    begin(rig, bob, b_srv)
    rig.clock.advance(3)
    rig.app.tick(rig.clock())
    assert_ended(rig, alice, a_srv, "idle transaction timeout")
    assert bob.state is ClientState.ACTIVE  # no global idle_transaction_timeout


def test_query_timeout_per_user(tmp_path: Path) -> None:
    rig = Rig(tmp_path, databases="[users]\nalice = query_timeout=2\n")
    alice = rig.login("alice")
    (server,) = rig.servers
    alice.send(m.query("select pg_sleep(10)"))
    server.take()
    rig.clock.advance(3)
    rig.app.tick(rig.clock())
    assert_ended(rig, alice, server, "query timeout")


def test_query_wait_timeout_user_then_database_then_global(tmp_path: Path) -> None:
    # One pool (forced user) for alice and bob: the waiting clients' own [users] entries decide.
    rig = Rig(tmp_path, settings="default_pool_size = 1\nquery_wait_timeout = 100",
              databases="slow = host=127.0.0.1 port=5432 dbname=appdb user=alice query_wait_timeout=3\n"
                        "[users]\nbob = query_wait_timeout=0\n")
    holder = rig.login("alice", "slow")
    (server,) = rig.servers
    begin(rig, holder, server)  # the one server is taken
    alice2, bob = rig.login("alice", "slow"), rig.login("bob", "slow")
    alice2.send(Q1)
    bob.send(Q1)
    assert alice2.state is ClientState.WAITING and bob.state is ClientState.WAITING
    rig.clock.advance(4)
    rig.app.tick(rig.clock())
    fields = error_fields(alice2.take())
    assert (fields["C"], fields["M"]) == ("08P01", "query_wait_timeout")  # the database's 3 s
    assert alice2.state is ClientState.CLOSED
    rig.clock.advance(200)
    rig.app.tick(rig.clock())
    assert bob.state is ClientState.WAITING  # bob's 0 disables it, past the global 100 s too


def test_user_query_wait_timeout_zero_disables_it() -> None:
    db = DatabaseConfig("d", query_wait_timeout=3.0)
    cfg = Config(Settings(query_wait_timeout=100.0), {"d": db},
                 {"bob": UserConfig("bob", query_wait_timeout=0.0), "eve": UserConfig("eve")}, {}, "x")
    assert cfg.query_wait_timeout_for(db, "bob") == 0.0  # set, even to 0: the user's value counts
    assert cfg.query_wait_timeout_for(db, "eve") == 3.0
    assert cfg.query_wait_timeout_for(DatabaseConfig("e"), "eve") == 100.0


def test_server_timeouts_follow_the_pools_user_and_zero_is_unset() -> None:
    cfg = Config(Settings(query_timeout=9.0, transaction_timeout=7.0), {},
                 {"svc": UserConfig("svc", query_timeout=0.0, transaction_timeout=2.0)}, {}, "x")
    assert cfg.query_timeout_for("svc") == 9.0  # 0 in [users]: not set, as PgBouncer reads it
    assert cfg.transaction_timeout_for("svc") == 2.0
    assert cfg.any_user_timeouts and not Config(Settings(), {}, {}, {}, "x").any_user_timeouts


# -- server_check_delay = 0 ---------------------------------------------------------------------------

def test_check_delay_zero_checks_before_every_reuse(tmp_path: Path) -> None:
    rig = Rig(tmp_path, settings="server_check_delay = 0")
    client = rig.login()
    (server,) = rig.servers
    for _ in range(3):  # every time the client takes the idle server, however briefly it was idle
        client.send(Q1)
        assert server.take() == m.query("")  # PgBouncer's <empty> check first
        assert client.state is ClientState.WAITING
        server.send(m.empty_query_response() + m.ready_for_query(b"I"))
        assert server.take() == Q1
        server.send(select_one_reply())
        assert client.take() == select_one_reply()


def check_ok(server: Peer) -> None:
    assert server.take() == m.query("")
    server.send(m.empty_query_response() + m.ready_for_query(b"I"))


def test_check_delay_default_does_not_check_a_recent_server(tmp_path: Path) -> None:
    rig = Rig(tmp_path)  # server_check_delay = 30
    client = rig.login()
    (server,) = rig.servers
    client.send(Q1)
    assert server.take() == Q1
    server.send(select_one_reply())
    client.take()
    rig.clock.advance(31)
    client.send(Q1)
    check_ok(server)  # idle longer than the delay: checked on the way out, before the janitor got to it
    assert server.take() == Q1


def test_failed_check_gets_the_client_a_new_server(tmp_path: Path) -> None:
    rig = Rig(tmp_path, settings="server_check_delay = 0")
    client = rig.login()
    (server,) = rig.servers
    client.send(Q1)
    check_ok(server)
    server.take()
    server.send(select_one_reply())
    client.take()
    client.send(Q1)
    assert server.take() == m.query("")
    # pg_terminate_backend: the server says FATAL 57P01 and goes.
    server.send(m.error_response("FATAL", "57P01", "terminating connection due to administrator command"))
    server.session.connection_lost(None)
    assert server.state is ServerState.CLOSED
    assert len(rig.servers) == 2
    fresh = rig.servers[1]
    rig.server_login(fresh)
    assert fresh.take() == Q1  # handed over at login: not checked
    fresh.send(select_one_reply())
    assert client.take() == select_one_reply()  # the client never saw the dead server


# -- server_fast_close --------------------------------------------------------------------------------

def test_server_fast_close_ends_the_session_after_its_transaction(tmp_path: Path) -> None:
    rig = Rig(tmp_path, settings="pool_mode = session\nserver_fast_close = 1")
    client = rig.login()
    (server,) = rig.servers
    begin(rig, client, server)
    server.session.close_needed = True  # what RECONNECT or a RELOAD that changed the database does
    rig.app.tick(rig.clock())
    assert client.state is ClientState.ACTIVE  # a transaction is never interrupted
    client.send(m.query("commit"))
    server.take()
    server.send(reply(m.command_complete("COMMIT")))
    out = client.take()
    assert out.startswith(reply(m.command_complete("COMMIT")))
    fields = error_fields(out)
    assert (fields["S"], fields["M"]) == ("FATAL", "database configuration changed")
    assert client.state is ClientState.CLOSED and server.state is ServerState.CLOSED


def test_without_server_fast_close_the_session_keeps_its_server(tmp_path: Path) -> None:
    rig = Rig(tmp_path, settings="pool_mode = session")
    client = rig.login()
    (server,) = rig.servers
    client.send(Q1)
    server.take()
    server.session.close_needed = True
    server.send(select_one_reply())
    assert client.take() == select_one_reply()
    rig.app.tick(rig.clock())
    assert client.state is not ClientState.CLOSED and server.state is ServerState.ACTIVE


def test_fast_close_by_the_janitor_for_an_idle_session(tmp_path: Path) -> None:
    rig = Rig(tmp_path, settings="pool_mode = session\nserver_fast_close = 1")
    client = rig.login()
    (server,) = rig.servers
    client.send(Q1)
    server.take()
    server.send(select_one_reply())
    client.take()
    server.session.close_needed = True  # set between transactions
    rig.app.tick(rig.clock())
    assert error_fields(client.take())["M"] == "database configuration changed"
    assert client.state is ClientState.CLOSED and server.state is ServerState.CLOSED


# -- max_db_connections: eviction ---------------------------------------------------------------------

def test_idle_server_of_another_pool_is_evicted_for_a_waiting_client(tmp_path: Path) -> None:
    rig = Rig(tmp_path, settings="max_db_connections = 1")
    alice = rig.login("alice")
    (a_srv,) = rig.servers
    alice.send(Q1)
    a_srv.take()
    a_srv.send(select_one_reply())
    alice.take()
    assert a_srv.state is ServerState.IDLE
    bob = rig.connect("bob")  # bob's pool has no server, and the database's one connection is alice's
    assert a_srv.state is ServerState.CLOSED and len(rig.servers) == 2
    b_srv = rig.servers[1]
    rig.server_login(b_srv)
    bob.take()
    bob.send(Q1)
    assert b_srv.take() == Q1
    assert len(rig.app.registry.get("app", "alice").servers) == 0


def test_client_idle_timeout_per_user(tmp_path: Path) -> None:
    rig = Rig(tmp_path, databases="[users]\nalice = client_idle_timeout=5\n")
    alice, bob = rig.login("alice"), rig.login("bob")
    rig.clock.advance(6)
    rig.app.tick(rig.clock())
    fields = error_fields(alice.take())
    assert (fields["S"], fields["M"]) == ("FATAL", "client_idle_timeout")
    assert alice.state is ClientState.CLOSED
    assert bob.state is not ClientState.CLOSED  # no global client_idle_timeout


# -- cancel_wait_timeout ------------------------------------------------------------------------------

def _cancel(rig: Rig) -> tuple[Peer, tuple[object, ...]]:
    client = rig.login()
    client.send(m.query("select pg_sleep(10)"))
    c = client.session
    requester = rig.new_client()
    requester.send(m.cancel_request(c.cancel_pid, c.cancel_key))
    ((_, args),) = [s for s in rig.spawned if s[0] == "_send_cancel"]
    return requester, args


def test_cancel_connection_ends_when_the_cancel_is_sent(tmp_path: Path, monkeypatch: Any) -> None:
    rig = Rig(tmp_path, settings="cancel_wait_timeout = 3")
    requester, args = _cancel(rig)
    sent: list[tuple[object, ...]] = []

    async def fake_send(*a: object) -> None:
        assert not requester.transport.closed  # still waiting while the cancel is on its way
        sent.append(a)

    monkeypatch.setattr(connector, "send_cancel", fake_send)
    asyncio.run(rig.app._send_cancel(*args))
    assert sent and sent[0][3:] == (SERVER_PID, SERVER_KEY, 3.0)  # bounded by cancel_wait_timeout
    assert requester.transport.closed and requester.take() == b""


def test_cancel_connection_ends_after_cancel_wait_timeout(tmp_path: Path, monkeypatch: Any) -> None:
    rig = Rig(tmp_path, settings="cancel_wait_timeout = 0.1")
    requester, args = _cancel(rig)

    async def never(*a: object) -> None:
        await asyncio.wait_for(asyncio.sleep(60), float(a[-1]))  # type: ignore[arg-type]

    monkeypatch.setattr(connector, "send_cancel", never)
    asyncio.run(rig.app._send_cancel(*args))  # returns: the timeout is caught and logged
    assert requester.transport.closed


# -- client_login_timeout ------------------------------------------------------------------------------

def test_client_login_timeout_ends_logins_left_unfinished_and_only_those(tmp_path: Path) -> None:
    rig = Rig(tmp_path, settings="client_login_timeout = 5\nauth_type = md5")
    done = rig.new_client()  # logs in (md5: the password exchange)
    done.send(m.startup_message({"user": "alice", "database": "app"}))
    assert done.state is ClientState.AUTH
    silent = rig.new_client()  # connected, no StartupMessage
    halfway = rig.connect()  # asked for its password, never sends it
    assert halfway.state is ClientState.AUTH
    rig.clock.advance(1)
    done.send(m.password_message(md5_response("alice", "secret", done.take()[-4:]) + b"\x00"))
    for s in rig.servers:
        rig.server_login(s)
    assert done.state is ClientState.IDLE
    rig.clock.advance(3.9)
    rig.app.tick(rig.clock())
    assert [p.state for p in (done, silent, halfway)] == [ClientState.IDLE, ClientState.STARTUP, ClientState.AUTH]
    assert set(rig.app.arriving) == {silent.session.id, halfway.session.id}  # the logged-in one left it
    rig.clock.advance(0.2)  # 5.1 s since they connected
    rig.app.tick(rig.clock())
    for p in (silent, halfway):
        assert p.state is ClientState.CLOSED and p.transport.closed
    assert error_fields(halfway.take())["M"] == "client_login_timeout"
    rig.clock.advance(100)
    rig.app.tick(rig.clock())
    assert done.state is ClientState.IDLE and rig.app.arriving == {}


def test_no_client_login_timeout_leaves_a_login_waiting(tmp_path: Path) -> None:
    rig = Rig(tmp_path, settings="client_login_timeout = 0")
    silent = rig.new_client()
    rig.clock.advance(1000)
    rig.app.tick(rig.clock())
    assert silent.state is ClientState.STARTUP and not silent.transport.closed
