"""Playbooks for pinning under transaction pooling: state that lives only in one server's session
(LISTEN, temp tables, session advisory locks, WITH HOLD cursors, LOAD) keeps the client on that server
until the state is gone or the client leaves."""

from __future__ import annotations

from pathlib import Path

import pytest
from fakes import Peer, Rig, reply

from pgmux.protocol import messages as m
from pgmux.session.states import ServerState


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path)


def run(client: Peer, server: Peer, sql: str, *answer: bytes, status: bytes = b"I") -> None:
    client.send(m.query(sql))
    assert server.take() == m.query(sql)
    server.send(reply(*answer, status=status))
    assert client.take() == reply(*answer, status=status)


def linked(client: Peer, server: Peer) -> bool:
    return client.session.server is server.session and server.state is ServerState.ACTIVE


def test_listen_pins_until_unlisten_all(rig: Rig) -> None:
    a = rig.login()
    (s,) = rig.servers
    run(a, s, "LISTEN jobs", m.command_complete("LISTEN"))
    assert linked(a, s) and a.session.pinned == "listen"
    assert s.session.pool.stats.pin_count == 1
    s.send(m.message(b"A", b"\x00\x00\x00\x07jobs\x00hi\x00"))  # a notification while idle reaches it
    assert a.take() == m.message(b"A", b"\x00\x00\x00\x07jobs\x00hi\x00")
    b = rig.login()
    b.send(m.query("select 1"))  # another client needs another server
    assert len(rig.servers) == 2
    run(a, s, "UNLISTEN *", m.command_complete("UNLISTEN"))
    assert a.session.pinned == "" and not linked(a, s)


def test_listen_in_a_rolled_back_transaction_does_not_pin(rig: Rig) -> None:
    a = rig.login()
    (s,) = rig.servers
    run(a, s, "BEGIN", m.command_complete("BEGIN"), status=b"T")
    run(a, s, "LISTEN jobs", m.command_complete("LISTEN"), status=b"T")
    run(a, s, "ROLLBACK", m.command_complete("ROLLBACK"))
    assert a.session.pinned == "" and not linked(a, s)


def test_temp_table_pins_until_discard(rig: Rig) -> None:
    a = rig.login()
    (s,) = rig.servers
    run(a, s, "CREATE TEMP TABLE t (x int)", m.command_complete("CREATE TABLE"))
    assert a.session.pinned == "temp table" and linked(a, s)
    run(a, s, "select 1", m.command_complete("SELECT 1"))
    assert linked(a, s)
    run(a, s, "DISCARD TEMP", m.command_complete("DISCARD TEMP"))
    assert not linked(a, s)


def test_advisory_lock_pins_even_when_the_query_failed_later(rig: Rig) -> None:
    a = rig.login()
    (s,) = rig.servers
    run(a, s, "select pg_advisory_lock(1); select 1/0", m.command_complete("SELECT 1"),
        m.error_response("ERROR", "22012", "division by zero"))
    assert a.session.pinned == "advisory lock" and linked(a, s)
    run(a, s, "select pg_advisory_unlock_all()", m.command_complete("SELECT 1"))
    assert not linked(a, s)


def test_with_hold_cursor_and_load(rig: Rig) -> None:
    a = rig.login()
    (s,) = rig.servers
    run(a, s, "DECLARE c CURSOR WITH HOLD FOR select 1", m.command_complete("DECLARE CURSOR"))
    assert a.session.pinned == "with hold cursor"
    run(a, s, "CLOSE c", m.command_complete("CLOSE CURSOR"))
    assert not linked(a, s)
    run(a, s, "LOAD 'auto_explain'", m.command_complete("LOAD"))
    assert a.session.pinned == "load"
    run(a, s, "DISCARD ALL", m.command_complete("DISCARD ALL"))
    assert a.session.pinned == "load" and linked(a, s)  # a loaded library stays loaded


def test_pinned_client_leaving_closes_its_server(rig: Rig) -> None:
    a = rig.login()
    (s,) = rig.servers
    run(a, s, "LISTEN jobs", m.command_complete("LISTEN"))
    a.send(m.terminate())
    assert s.state is ServerState.CLOSED and "listen" in s.session.closed_reason


def test_show_clients_prints_the_pin(rig: Rig) -> None:
    a = rig.login()
    (s,) = rig.servers
    run(a, s, "LISTEN jobs", m.command_complete("LISTEN"))
    from pgmux.admin import rows as r
    from pgmux.runtime.admin_service import AdminService

    svc = AdminService(rig.app)
    rows, kind = svc._show_clients()
    assert kind is r.ClientRow and [row.pin for row in rows] == ["listen"]
