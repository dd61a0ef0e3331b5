"""Replication clients as playbooks: a dedicated server opened with the client's startup packet, its
login becoming the client's welcome, then bytes both ways as they come; limits; both ends closing."""

from __future__ import annotations

from pathlib import Path

import pytest
from fakes import Peer, Rig, error_fields

from pgmux.protocol import messages as m
from pgmux.protocol.codec import read_startup
from pgmux.session.replication import replication_mode
from pgmux.session.states import ClientState, ServerState


@pytest.mark.parametrize(("value", "mode"), [
    ("true", "physical"), ("TRUE", "physical"), ("t", "physical"), ("on", "physical"), ("yes", "physical"),
    ("y", "physical"), ("1", "physical"), ("database", "logical"),
    ("false", ""), ("f", ""), ("off", ""), ("of", ""), ("no", ""), ("0", ""),
])
def test_replication_mode_reads_the_value_as_postgresql(value: str, mode: str) -> None:
    assert replication_mode(value) == mode


@pytest.mark.parametrize("value", ["", "maybe", "o", "2", "Database", " true", "yess"])
def test_replication_mode_refuses_what_postgresql_refuses(value: str) -> None:
    with pytest.raises(ValueError):
        replication_mode(value)


def repl_server(rig: Rig, before: int) -> Peer:
    (srv,) = rig.servers[before:]
    return srv


def login(rig: Rig, **params: str) -> tuple[Peer, Peer]:
    before = len(rig.servers)
    client = rig.connect(database="app", replication="true", application_name="pg_receivewal", **params)
    srv = repl_server(rig, before)
    startup, _ = read_startup(srv.take())
    assert startup is not None
    assert startup.params == {"user": "alice", "database": "appdb", "replication": "true",
                              "application_name": "pg_receivewal", **params}
    assert client.take() == b""  # nothing before the server's own welcome
    srv.send(m.auth_ok() + m.parameter_status("server_version", "15.8") + m.parameter_status("in_hot_standby", "off")
             + m.backend_key_data(99, 1234) + m.ready_for_query(b"I"))
    return client, srv


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path, settings="default_pool_size = 1")


def test_a_replication_client_gets_its_own_server_and_a_plain_relay(rig: Rig) -> None:
    client, srv = login(rig)
    welcome = client.take()
    c = client.session
    assert welcome == (m.auth_ok() + m.parameter_status("server_version", "15.8")
                       + m.parameter_status("in_hot_standby", "off")
                       + m.backend_key_data(c.cancel_pid, c.cancel_key) + m.ready_for_query(b"I"))
    assert client.state is ClientState.REPLICATION and c.replication == "physical"
    pool = c.pool
    assert not pool.servers and not pool.idle  # nothing taken from the pool, nothing given back
    client.send(m.query("IDENTIFY_SYSTEM"))
    assert srv.take() == m.query("IDENTIFY_SYSTEM")
    # CopyBoth and CopyData, cut anywhere: relayed as they come, uninterpreted.
    stream = m.message(b"W", b"\x00\x00\x00") + m.message(b"d", b"w" + b"\x00" * 40)
    srv.send(stream[:7])
    srv.send(stream[7:])
    assert client.take() == stream
    client.send(b"d\x00\x00")  # a partial CopyData from the client: forwarded as is too
    assert srv.take() == b"d\x00\x00"
    assert rig.app.registry.unpooled == {("app", "alice"): 1}
    client.session.connection_lost(None)
    assert srv.transport.closed and srv.state is ServerState.CLOSED
    assert rig.app.registry.unpooled == {} and not rig.app.replication.servers


def test_the_server_closing_ends_the_client(rig: Rig) -> None:
    client, srv = login(rig)
    client.take()
    srv.session.connection_lost(None)
    assert client.state is ClientState.CLOSED and client.transport.closed


def test_a_server_refusing_the_login_is_relayed(rig: Rig) -> None:
    before = len(rig.servers)
    client = rig.connect(replication="database")
    srv = repl_server(rig, before)
    srv.take()
    refusal = m.error_response("FATAL", "28000", "no pg_hba.conf entry for replication connection")
    srv.send(refusal)
    assert client.take() == m.auth_ok() + refusal
    assert client.state is ClientState.CLOSED and srv.transport.closed
    assert rig.app.registry.unpooled == {}


def test_a_bad_replication_value_is_refused_as_postgresql_does(rig: Rig) -> None:
    client = rig.connect(replication="maybe")
    err = error_fields(client.take())
    assert (err["S"], err["C"], err["M"]) == ("FATAL", "22023", 'invalid value for parameter "replication": "maybe"')
    assert not rig.servers


def test_replication_false_is_an_ordinary_client(rig: Rig) -> None:
    client = rig.login(replication="false")
    assert client.state is ClientState.IDLE and client.session.replication == ""


def test_max_db_connections_makes_a_replication_client_wait(tmp_path: Path) -> None:
    rig = Rig(tmp_path, databases="capped = host=127.0.0.1 port=5432 dbname=c max_db_connections=1",
              settings="query_wait_timeout = 5")
    before = len(rig.servers)
    first = rig.connect(database="capped", replication="true")
    (srv,) = rig.servers[before:]
    second = rig.connect(database="capped", replication="true")
    assert len(rig.servers) == before + 1 and second.state is ClientState.REPLICATION
    assert second.session.repl is None  # waiting for room
    rig.clock.advance(2)
    rig.app.tick(rig.clock())
    assert second.session.repl is None
    first.session.connection_lost(None)  # room again: the second gets its server
    assert second.session.repl is not None and len(rig.servers) == before + 2
    third = rig.connect(database="capped", replication="true")
    rig.clock.advance(6)
    rig.app.tick(rig.clock())
    assert third.state is ClientState.CLOSED
    assert error_fields(third.take())["M"] == "query_wait_timeout"
    assert srv.transport.closed and srv.state is ServerState.CLOSED  # the first client's, gone with it


def test_a_server_login_that_never_ends_times_out(rig: Rig) -> None:
    before = len(rig.servers)
    client = rig.connect(replication="true")
    srv = repl_server(rig, before)
    client.send(m.query("IDENTIFY_SYSTEM"))  # pipelined before the welcome: kept for the server
    rig.clock.advance(rig.app.config.settings.server_connect_timeout + 1)
    rig.app.tick(rig.clock())
    err = error_fields(client.take())
    assert (err["S"], err["C"]) == ("FATAL", "57P03") and "server connect timeout" in err["M"]
    assert client.state is ClientState.CLOSED and srv.transport.closed


def test_what_a_client_pipelines_before_its_welcome_reaches_the_server_after_the_login(rig: Rig) -> None:
    before = len(rig.servers)
    client = rig.connect(replication="true")
    srv = repl_server(rig, before)
    srv.take()
    client.send(m.query("IDENTIFY_SYSTEM"))
    assert srv.take() == b""
    srv.send(m.auth_ok() + m.backend_key_data(1, 2) + m.ready_for_query(b"I"))
    assert srv.take() == m.query("IDENTIFY_SYSTEM")
