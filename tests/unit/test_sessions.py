"""Session playbooks: the real App hub with fake connections. Events in, expected bytes out.

Each test plays a client and PostgreSQL by feeding bytes to the sans-IO sessions and checks what
pgmux writes to each side and where the server connection ends up. Transaction pooling unless a
test says otherwise.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from fakes import (
    SERVER_KEY,
    SERVER_PARAMS,
    SERVER_PID,
    Peer,
    Rig,
    error_fields,
    frames,
    reply,
    select_one_reply,
)

from pgmux.protocol import messages as m
from pgmux.session.states import ClientState, ServerState

Q1 = m.query("select 1")
BEGIN_REPLY = reply(m.command_complete("BEGIN"), status=b"T")
COMMIT_REPLY = reply(m.command_complete("COMMIT"))


def extended(sql: str = "select $1", value: bytes = b"1") -> bytes:
    """Parse, Bind, Execute of an unnamed statement: a batch without its Sync."""
    return (m.message(m.PARSE, b"\x00" + m.cstr(sql) + b"\x00\x00")
            + m.message(m.BIND, b"\x00\x00\x00\x00\x00\x01" + struct.pack("!i", len(value)) + value
                        + b"\x00\x00")
            + m.message(m.EXECUTE, b"\x00\x00\x00\x00\x00"))


EXT_REPLY = (m.message(m.PARSE_COMPLETE) + m.message(m.BIND_COMPLETE) + m.data_row([1])
             + m.command_complete("SELECT 1"))
SYNC, FLUSH = m.message(m.SYNC), m.message(m.FLUSH)


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path)


def is_idle_in_pool(server: Peer) -> bool:
    pool = server.session.pool
    return server.state is ServerState.IDLE and server.session in pool.idle and server.session.client is None


def run_select(client: Peer, server: Peer) -> None:
    client.send(Q1)
    assert server.take() == Q1
    server.send(select_one_reply())
    assert client.take() == select_one_reply()


# -- login ----------------------------------------------------------------------------------------

def test_login_with_trust_sends_postgresql_welcome(rig: Rig) -> None:
    client = rig.connect()
    assert client.take() == b""  # AuthenticationOk waits for the welcome: one write, as PgBouncer sends it
    assert client.state is ClientState.LOGIN_WAIT
    (server,) = rig.servers
    assert server.take() == m.startup_message({"user": "alice", "database": "appdb"})

    rig.server_login(server)
    c = client.session
    assert (c.cancel_pid, c.cancel_key) != (SERVER_PID, SERVER_KEY)
    assert rig.app.by_cancel[c.cancel_pid] is c
    assert client.take() == (m.auth_ok() + b"".join(m.parameter_status(k, v) for k, v in SERVER_PARAMS.items())
                             + m.backend_key_data(c.cancel_pid, c.cancel_key) + m.ready_for_query(b"I"))
    assert client.state is ClientState.IDLE
    assert is_idle_in_pool(server)
    assert (server.session.backend_pid, server.session.backend_key) == (SERVER_PID, SERVER_KEY)
    assert server.session.params == SERVER_PARAMS


def test_server_startup_message(rig: Rig) -> None:
    rig.connect()
    (server,) = rig.servers
    raw = server.take()
    (length, code) = struct.unpack_from("!ii", raw)
    assert (length, code) == (len(raw), m.PROTOCOL_V3)
    assert raw[8:] == b"user\x00alice\x00database\x00appdb\x00\x00"


def test_second_client_gets_the_welcome_without_a_new_server(rig: Rig) -> None:
    rig.login()
    client = rig.connect()  # same pool (database, user): its parameters are known now
    out = frames(client.take())
    assert [t for t, _ in out] == ["R"] + ["S"] * len(SERVER_PARAMS) + ["K", "Z"]
    assert len(rig.servers) == 1
    pid, key = struct.unpack("!ii", out[-2][1])
    assert (pid, key) == (client.session.cancel_pid, client.session.cancel_key)
    assert pid != rig.app.clients[1].cancel_pid


def test_server_login_fed_one_byte_at_a_time(rig: Rig) -> None:
    client = rig.connect()
    (server,) = rig.servers
    server.take()
    server.send_bytewise(m.auth_ok() + b"".join(m.parameter_status(k, v) for k, v in SERVER_PARAMS.items())
                         + m.backend_key_data(1, 2) + m.ready_for_query(b"I"))
    assert client.state is ClientState.IDLE and is_idle_in_pool(server)


def test_ssl_and_gss_requests_are_refused_then_login_goes_on(rig: Rig) -> None:
    client = rig.new_client()
    client.send(struct.pack("!ii", 8, m.SSL_REQUEST_CODE))
    assert client.take() == b"N"
    client.send(struct.pack("!ii", 8, m.GSSENC_REQUEST_CODE) + m.startup_message({"user": "alice",
                                                                                  "database": "app"}))
    assert client.take() == b"N"
    assert client.state is ClientState.LOGIN_WAIT
    rig.server_login(rig.servers[0])
    assert frames(client.take())[0] == ("R", m.auth_ok()[5:])


def test_startup_fed_one_byte_at_a_time(rig: Rig) -> None:
    client = rig.new_client()
    client.send_bytewise(m.startup_message({"user": "alice", "database": "app"}))
    assert client.state is ClientState.LOGIN_WAIT
    rig.server_login(rig.servers[0])
    assert client.take().startswith(m.auth_ok())
    assert client.state is ClientState.IDLE


def test_unknown_database(rig: Rig) -> None:
    client = rig.connect(database="nope")
    fields = error_fields(client.take())
    assert (fields["S"], fields["C"], fields["M"]) == ("FATAL", "3D000", "no such database: nope")
    assert client.transport.closed and client.state is ClientState.CLOSED
    assert rig.servers == [] and rig.app.clients == {}


def test_unknown_user_with_trust(rig: Rig) -> None:
    client = rig.connect(user="mallory")
    fields = error_fields(client.take())
    assert (fields["S"], fields["C"]) == ("FATAL", "28000")
    assert client.transport.closed and rig.app.clients == {}


def test_protocol_2_is_refused(rig: Rig) -> None:
    client = rig.new_client()
    client.send(struct.pack("!ii", 8 + 128, 2 << 16) + b"alice".ljust(64, b"\x00") + b"db".ljust(64, b"\x00"))
    fields = error_fields(client.take())
    assert (fields["S"], fields["C"]) == ("FATAL", "08P01")
    assert "unsupported frontend protocol 2.0" in fields["M"]
    assert client.transport.closed and rig.app.clients == {}


def test_oversized_startup_packet(rig: Rig) -> None:
    client = rig.new_client()
    client.send(struct.pack("!i", 10001))
    assert error_fields(client.take())["C"] == "08P01"
    assert client.transport.closed


def test_newer_minor_version_is_negotiated_down(rig: Rig) -> None:
    client = rig.new_client()
    client.send(m.startup_message({"user": "alice", "database": "app", "_pq_.opt": "1"},
                                  protocol=(3 << 16) | 2))
    rig.server_login(rig.servers[0])
    out = frames(client.take())
    assert out[0] == ("v", struct.pack("!ii", m.PROTOCOL_V3, 1) + b"_pq_.opt\x00")
    assert out[1][0] == "R"


def test_max_client_conn(tmp_path: Path) -> None:
    rig = Rig(tmp_path, settings="max_client_conn = 2")
    rig.login()
    rig.login()
    third = rig.connect()
    fields = error_fields(third.take())
    assert (fields["S"], fields["C"], fields["M"]) == (
        "FATAL", "53300", "no more connections allowed (max_client_conn)")
    assert third.transport.closed and len(rig.app.clients) == 2
    rig.login()  # still two after the refusal: a third fails again, not a count that drifted
    assert len(rig.app.clients) == 2


# -- transaction pooling: the relay -------------------------------------------------------------------

def test_query_and_reply_are_forwarded_byte_exact_and_the_server_returns(rig: Rig) -> None:
    client = rig.login()
    (server,) = rig.servers
    client.send(Q1)
    assert client.state is ClientState.ACTIVE and server.state is ServerState.ACTIVE
    assert server.take() == Q1
    data = select_one_reply()
    server.send(data)
    assert client.take() == data
    assert client.state is ClientState.IDLE and client.session.server is None
    assert is_idle_in_pool(server)
    assert server.session.owed == 0


def test_reply_split_at_every_byte_boundary(rig: Rig) -> None:
    client = rig.login()
    (server,) = rig.servers
    data = select_one_reply()
    for cut in range(1, len(data)):
        client.send(Q1)
        assert server.take() == Q1
        server.send(data[:cut])
        assert client.session.server is server.session  # not released before its last byte
        server.send(data[cut:])
        assert client.take() == data, cut
        assert is_idle_in_pool(server)
    client.send(Q1)
    server.take()
    server.send_bytewise(data)
    assert client.take() == data and is_idle_in_pool(server)
    assert len(rig.servers) == 1


def test_query_split_at_every_byte_boundary(rig: Rig) -> None:
    client = rig.login()
    (server,) = rig.servers
    batch = Q1 + m.query("select 2")
    for cut in range(1, len(batch)):
        client.send(batch[:cut])
        client.send(batch[cut:])
        assert server.take() == batch, cut
        assert server.session.owed == 2
        server.send(select_one_reply() + select_one_reply())
        assert client.take() == select_one_reply() * 2
        assert is_idle_in_pool(server)


def test_query_waits_for_a_server(tmp_path: Path) -> None:
    rig = Rig(tmp_path, settings="default_pool_size = 1")
    first, second = rig.login(), rig.login()
    (server,) = rig.servers
    first.send(m.query("begin"))
    server.take()
    server.send(BEGIN_REPLY)
    first.take()

    second.send(Q1)
    assert second.state is ClientState.WAITING
    assert list(server.session.pool.waiters) == [second.session]
    assert server.take() == b"" and len(rig.servers) == 1  # pool_size reached: no new server

    first.send(m.query("commit"))
    assert server.take() == m.query("commit")
    server.send(COMMIT_REPLY)
    assert first.take() == COMMIT_REPLY
    assert second.state is ClientState.ACTIVE and second.session.server is server.session
    assert server.take() == Q1  # queued bytes, exactly
    server.send(select_one_reply())
    assert second.take() == select_one_reply()
    assert is_idle_in_pool(server)


def test_query_pipelined_behind_the_startup_packet(rig: Rig) -> None:
    client = rig.new_client()
    client.send(m.startup_message({"user": "alice", "database": "app"}) + Q1)
    (server,) = rig.servers
    rig.server_login(server)
    assert frames(client.take())[-1] == ("Z", b"I")
    assert server.take() == Q1
    server.send(select_one_reply())
    assert client.take() == select_one_reply()
    assert is_idle_in_pool(server)


def test_pipelined_bytes_keep_their_order_across_the_login_wait(rig: Rig) -> None:
    # A query pipelined behind the startup packet, then more bytes before the first server is in:
    # they reach the server in the order sent, and a message split across the two is framed whole.
    client = rig.new_client()
    rest = Q1 + m.query("select 2")
    client.send(m.startup_message({"user": "alice", "database": "app"}) + rest[:7])
    client.send(rest[7:])
    (server,) = rig.servers
    rig.server_login(server)
    assert server.take() == rest
    assert client.state is ClientState.ACTIVE


def test_ready_for_query_in_transaction_keeps_the_server(rig: Rig) -> None:
    client = rig.login()
    (server,) = rig.servers
    client.send(m.query("begin"))
    server.take()
    server.send(BEGIN_REPLY)
    assert client.take() == BEGIN_REPLY
    assert client.session.server is server.session and server.state is ServerState.ACTIVE
    assert server.session.tx_status == b"T"
    client.send(Q1)  # goes straight to the linked server
    assert server.take() == Q1
    server.send(reply(m.error_response("ERROR", "42P01", "no such table"), status=b"E"))
    assert client.session.server is server.session and server.session.tx_status == b"E"
    client.send(m.query("rollback"))
    server.take()
    server.send(reply(m.command_complete("ROLLBACK")))
    assert is_idle_in_pool(server) and client.session.server is None


def test_extended_batch_keeps_the_server_until_sync(rig: Rig) -> None:
    client = rig.login()
    (server,) = rig.servers
    client.send(extended())
    client.send(FLUSH)
    assert server.take() == extended() + FLUSH
    server.send(EXT_REPLY)
    assert client.take() == EXT_REPLY
    assert client.session.server is server.session and client.session.unsynced
    assert not server.session.clean
    client.send(SYNC)
    assert server.take() == SYNC
    server.send(m.ready_for_query(b"I"))
    assert client.take() == m.ready_for_query(b"I")
    assert is_idle_in_pool(server) and not client.session.unsynced


def test_two_pipelined_syncs_need_two_ready_for_query(rig: Rig) -> None:
    client = rig.login()
    (server,) = rig.servers
    batch = extended() + SYNC + extended() + SYNC
    client.send(batch)
    assert server.take() == batch and server.session.owed == 2
    server.send(EXT_REPLY + m.ready_for_query(b"I"))
    assert client.session.server is server.session and server.state is ServerState.ACTIVE
    server.send(EXT_REPLY + m.ready_for_query(b"I"))
    assert client.take() == (EXT_REPLY + m.ready_for_query(b"I")) * 2
    assert is_idle_in_pool(server)


def test_two_pipelined_syncs_answered_in_one_read(rig: Rig) -> None:
    client = rig.login()
    (server,) = rig.servers
    client.send(extended() + SYNC)
    client.send(extended() + SYNC)  # a second batch while the first is still running
    assert server.session.owed == 2
    server.take()
    data = (EXT_REPLY + m.ready_for_query(b"I")) * 2
    server.send(data)
    assert client.take() == data and is_idle_in_pool(server)


def test_errors_that_are_not_fatal_leave_the_server_reusable(rig: Rig) -> None:
    client = rig.login()
    (server,) = rig.servers
    client.send(Q1)
    server.take()
    server.send(reply(m.error_response("ERROR", "42P01", "no such table")))
    assert not server.session.close_needed and is_idle_in_pool(server)


# -- closing ------------------------------------------------------------------------------------------

def test_terminate_with_a_clean_server(rig: Rig) -> None:
    client = rig.login()
    (server,) = rig.servers
    run_select(client, server)
    client.send(m.terminate())
    assert client.transport.closed and client.state is ClientState.CLOSED
    assert rig.app.clients == {} and client.session.cancel_pid not in rig.app.by_cancel
    assert is_idle_in_pool(server) and server.take() == b""


def test_terminate_mid_transaction_closes_the_server(rig: Rig) -> None:
    client = rig.login()
    (server,) = rig.servers
    client.send(m.query("begin"))
    server.take()
    server.send(BEGIN_REPLY)
    client.send(m.terminate())
    assert client.transport.closed
    assert server.state is ServerState.CLOSED
    assert server.session.closed_reason == "client disconnect while server was not ready"
    assert server.take() == m.terminate() and server.transport.closed
    assert server.session not in server.session.pool.servers and rig.app.servers == {}


def test_terminate_pipelined_behind_a_query_closes_the_busy_server(rig: Rig) -> None:
    client = rig.login()
    (server,) = rig.servers
    client.send(Q1 + m.terminate())
    assert server.take() == Q1 + m.terminate()  # the query, then pgmux's own Terminate on close
    assert server.state is ServerState.CLOSED and client.transport.closed


def test_client_eof_mid_extended_batch_closes_the_server(rig: Rig) -> None:
    client = rig.login()
    (server,) = rig.servers
    client.send(extended() + FLUSH)
    server.send(EXT_REPLY)
    client.session.connection_lost(None)
    assert server.state is ServerState.CLOSED
    assert server.session.closed_reason == "client disconnect while server was not ready"


def test_waiting_client_that_leaves_is_no_longer_a_waiter(tmp_path: Path) -> None:
    rig = Rig(tmp_path, settings="default_pool_size = 1")
    first, second = rig.login(), rig.login()
    (server,) = rig.servers
    first.send(m.query("begin"))
    server.send(BEGIN_REPLY)
    second.send(Q1)
    second.send(m.terminate())
    assert list(server.session.pool.waiters) == []
    first.send(m.query("commit"))
    server.take()
    server.send(COMMIT_REPLY)
    assert is_idle_in_pool(server) and server.take() == b""


# -- statement and session pooling -------------------------------------------------------------------

def test_statement_mode_refuses_transaction_blocks(tmp_path: Path) -> None:
    rig = Rig(tmp_path, settings="pool_mode = statement")
    client = rig.login()
    (server,) = rig.servers
    run_select(client, server)
    assert is_idle_in_pool(server)
    client.send(m.query("begin"))
    server.take()
    server.send(BEGIN_REPLY)
    out = client.take()
    # BEGIN itself fails: its ReadyForQuery ('T') is withheld and the error takes its place.
    assert out.startswith(BEGIN_REPLY[:-6]) and not out.startswith(BEGIN_REPLY)
    fields = error_fields(out)
    assert fields["M"] == "transaction blocks not allowed in statement pooling mode"
    assert client.transport.closed and client.state is ClientState.CLOSED
    assert server.state is ServerState.CLOSED
    assert server.session.closed_reason == "transaction blocks not allowed in statement pooling mode"


def test_session_mode_keeps_the_server_then_resets_it(tmp_path: Path) -> None:
    rig = Rig(tmp_path, settings="pool_mode = session")
    client = rig.login()
    (server,) = rig.servers
    run_select(client, server)
    assert client.session.server is server.session and server.state is ServerState.ACTIVE
    run_select(client, server)
    client.send(m.terminate())
    assert client.transport.closed
    assert server.state is ServerState.TESTED and server.take() == m.query("DISCARD ALL")
    server.send(reply(m.command_complete("DISCARD ALL")))
    assert client.transport.after_close == [] and client.take() == b""
    assert is_idle_in_pool(server)

    other = rig.login()  # the reset server is reused as is
    other.send(Q1)
    assert server.take() == Q1 and len(rig.servers) == 1


def test_session_mode_reset_reply_split_bytewise(tmp_path: Path) -> None:
    rig = Rig(tmp_path, settings="pool_mode = session")
    client = rig.login()
    (server,) = rig.servers
    run_select(client, server)
    client.send(m.terminate())
    server.take()
    server.send_bytewise(reply(m.command_complete("DISCARD ALL")))
    assert is_idle_in_pool(server)


def test_session_mode_without_reset_query(tmp_path: Path) -> None:
    rig = Rig(tmp_path, settings="pool_mode = session\nserver_reset_query =")
    client = rig.login()
    (server,) = rig.servers
    run_select(client, server)
    client.send(m.terminate())
    assert server.take() == b"" and is_idle_in_pool(server)


def test_failed_reset_query_closes_the_server(tmp_path: Path) -> None:
    rig = Rig(tmp_path, settings="pool_mode = session")
    client = rig.login()
    (server,) = rig.servers
    run_select(client, server)
    client.send(m.terminate())
    server.take()
    server.send(reply(m.error_response("ERROR", "25001", "cannot run inside a transaction")))
    assert server.state is ServerState.CLOSED
    assert server.session.closed_reason == "server reset or check query failed"


# -- parameters ---------------------------------------------------------------------------------------

def test_client_parameters_are_set_and_the_reply_swallowed(rig: Rig) -> None:
    client = rig.login(application_name="psql", options="-c search_path=app")
    (server,) = rig.servers
    client.send(Q1)
    set_sql = "SET application_name = 'psql';SET search_path = 'app'"
    assert server.take() == m.query(set_sql) + Q1  # one write
    set_reply = reply(m.command_complete("SET"), m.parameter_status("application_name", "psql"),
                      m.command_complete("SET"))
    server.send(set_reply + select_one_reply())
    assert client.take() == select_one_reply()
    assert server.session.params["application_name"] == "psql"
    assert is_idle_in_pool(server)

    client.send(Q1)  # same server, parameters already right: no SET this time
    assert server.take() == Q1


@pytest.mark.parametrize("cut", range(1, 40))
def test_swallowed_set_reply_split_anywhere(rig: Rig, cut: int) -> None:
    client = rig.login(application_name="psql")
    (server,) = rig.servers
    client.send(Q1)
    server.take()
    data = reply(m.command_complete("SET"), m.parameter_status("application_name", "psql"))
    data += select_one_reply()
    server.send(data[:cut])
    server.send(data[cut:])
    assert client.take() == select_one_reply()
    assert is_idle_in_pool(server)


def test_welcome_shows_the_client_parameters(rig: Rig) -> None:
    client = rig.connect(application_name="psql")
    client.take()
    rig.server_login(rig.servers[0])
    shown = dict(body[:-1].split(b"\x00") for t, body in frames(client.take()) if t == "S")
    assert shown[b"application_name"] == b"psql"
    assert shown[b"server_version"] == SERVER_PARAMS["server_version"].encode()


def test_failed_parameter_set_warns_the_client(rig: Rig) -> None:
    client = rig.login(options="-c no_such_guc=1")
    (server,) = rig.servers
    client.send(Q1)
    server.take()
    error = m.error_response("ERROR", "42704", 'unrecognized configuration parameter "no_such_guc"')
    server.send(reply(error) + select_one_reply())
    out = frames(client.take())
    assert out[0][0] == "N" and m.parse_error_fields(out[0][1])["S"] == "WARNING"
    assert b"".join(m.message(t.encode(), b) for t, b in out[1:]) == select_one_reply()


# -- broken servers -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("severity", "code"), [("FATAL", "57P01"), ("PANIC", "XX000"), ("ERROR", "08006")])
def test_fatal_error_from_a_linked_server_is_never_reused(rig: Rig, severity: str, code: str) -> None:
    client = rig.login()
    (server,) = rig.servers
    client.send(Q1)
    server.take()
    data = reply(m.error_response(severity, code, "terminating connection"))
    server.send(data)
    assert server.session.close_needed
    assert client.take() == data  # the client hears PostgreSQL's own words
    assert server.state is ServerState.CLOSED and server.session.closed_reason == "server close needed"
    assert server.session not in server.session.pool.idle

    client.send(Q1)  # the next transaction needs a new server
    assert len(rig.servers) == 2
    new = rig.servers[1]
    rig.server_login(new)
    assert new.take() == Q1 and server.take() == m.terminate()


def test_server_eof_after_fatal(rig: Rig) -> None:
    client = rig.login()
    (server,) = rig.servers
    client.send(Q1)
    server.take()
    server.send(m.error_response("FATAL", "57P01", "terminating connection due to administrator command"))
    assert server.session.close_needed
    server.session.connection_lost(None)
    assert server.state is ServerState.CLOSED
    out = client.take()
    assert frames(out)[0][0] == "E"
    assert m.parse_error_fields(frames(out)[-1][1])["C"] == "08006"
    assert client.transport.closed and rig.app.clients == {}


def test_server_protocol_violation_drops_both(rig: Rig) -> None:
    client = rig.login()
    (server,) = rig.servers
    client.send(Q1)
    server.take()
    server.send(b"T\x00\x00\x00\x02")
    assert server.state is ServerState.CLOSED
    assert server.session.closed_reason.startswith("server protocol error")
    assert error_fields(client.take())["C"] == "08006" and client.transport.closed


def test_unexpected_data_from_an_idle_server_closes_it(rig: Rig) -> None:
    rig.login()
    (server,) = rig.servers
    server.send(m.parameter_status("TimeZone", "UTC") + m.notice_response("hi"))
    assert is_idle_in_pool(server)
    server.send(m.data_row([1]))
    assert server.state is ServerState.CLOSED
    assert server.session.closed_reason == "unexpected data from idle server"


def test_server_login_error_fails_waiting_clients(rig: Rig) -> None:
    client = rig.connect()
    (server,) = rig.servers
    server.take()
    server.send(m.error_response("FATAL", "3D000", 'database "appdb" does not exist'))
    fields = error_fields(client.take())
    assert (fields["C"], fields["M"]) == ("3D000", 'database "appdb" does not exist')
    assert client.transport.closed and server.state is ServerState.CLOSED
    pool = server.session.pool
    assert pool.last_login_failure == rig.clock.t
    rig.connect()  # within server_login_retry: no new attempt yet
    assert len(rig.servers) == 1
    rig.clock.advance(15.0)
    rig.connect()
    assert len(rig.servers) == 2


# -- cancel ---------------------------------------------------------------------------------------------

def test_cancel_reaches_the_server_the_client_is_linked_to(rig: Rig) -> None:
    client = rig.login()
    (server,) = rig.servers
    client.send(m.query("select pg_sleep(10)"))
    c = client.session
    other = rig.new_client()
    other.send(m.cancel_request(c.cancel_pid, c.cancel_key))
    # Open until the cancel has been passed on (runtime: _send_cancel closes it), and never a reply.
    assert not other.transport.closed and other.take() == b""
    assert other.session.id not in rig.app.clients  # not a client: SHOW CLIENTS, max_client_conn
    (name, args), = [s for s in rig.spawned if s[0] == "_send_cancel"]
    assert args[0] is other.session and args[2:] == (SERVER_PID, SERVER_KEY)


def test_cancel_with_a_wrong_key_is_ignored(rig: Rig) -> None:
    client = rig.login()
    client.send(Q1)
    c = client.session
    probes = [rig.new_client(), rig.new_client()]
    probes[0].send(m.cancel_request(c.cancel_pid, c.cancel_key ^ 1))
    probes[1].send(m.cancel_request(c.cancel_pid ^ 1, c.cancel_key))
    assert [s for s in rig.spawned if s[0] == "_send_cancel"] == []
    assert all(p.transport.closed and p.take() == b"" for p in probes)  # closed at once, no reply


# -- login extras, flow control, state machine ------------------------------------------------------

def test_connect_query_runs_before_the_server_is_used(tmp_path: Path) -> None:
    rig = Rig(tmp_path, databases="cq = host=127.0.0.1 dbname=appdb connect_query='set jit = off'")
    client = rig.connect(database="cq")
    (server,) = rig.servers
    server.take()
    server.send(m.auth_ok() + m.parameter_status("TimeZone", "UTC") + m.backend_key_data(1, 2)
                + m.ready_for_query(b"I"))
    assert server.take() == m.query("set jit = off")
    assert server.state is ServerState.LOGIN and client.state is ClientState.LOGIN_WAIT
    server.send(reply(m.command_complete("SET")))
    assert client.state is ClientState.IDLE and is_idle_in_pool(server)
    assert frames(client.take())[-1] == ("Z", b"I")


def test_slow_client_pauses_its_server(rig: Rig) -> None:
    client = rig.login()
    (server,) = rig.servers
    client.send(m.query("select big"))
    client.session.pause_writing()
    assert server.transport.paused
    client.session.resume_writing()
    assert not server.transport.paused
    client.session.pause_writing()
    server.send(select_one_reply())  # released while paused: the next client must be able to read it
    assert is_idle_in_pool(server) and not server.transport.paused


def test_internal_error_answers_in_postgresql_words(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    client = rig.login()

    def broken() -> float:
        raise RuntimeError("boom")

    client.session.clock = broken  # the relay reads the clock for every Query
    client.send(Q1)
    fields = error_fields(client.take())
    assert (fields["S"], fields["C"]) == ("FATAL", "XX000")
    assert fields["M"] == "internal error in pgmux: RuntimeError"
    assert client.transport.closed
    assert "internal error" in caplog.text


def test_illegal_server_move_fails_loudly(rig: Rig) -> None:
    from pgmux.session.states import IllegalTransition

    rig.login()
    (server,) = rig.servers
    rig.app.close_server(server.session, "test")
    with pytest.raises(IllegalTransition):
        server.session.move(ServerState.IDLE)


def connect_query_rig(tmp_path: Path, settings: str = "") -> tuple[Rig, Peer, Peer]:
    rig = Rig(tmp_path, settings=settings,
              databases="cq = host=127.0.0.1 dbname=appdb connect_query='select 1'")
    client = rig.connect(database="cq")
    (server,) = rig.servers
    rig.server_login(server)
    assert server.take() == m.query("select 1")
    return rig, client, server


def test_connect_query_rows_are_swallowed_bytewise(tmp_path: Path) -> None:
    rig, client, server = connect_query_rig(tmp_path)
    server.send_bytewise(select_one_reply())
    assert client.state is ClientState.IDLE and is_idle_in_pool(server)
    assert [t for t, _ in frames(client.take())][-2:] == ["K", "Z"]


def test_failed_connect_query_is_logged_and_forgotten(tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    rig, client, server = connect_query_rig(tmp_path, settings="pool_mode = session")
    server.send(reply(m.error_response("ERROR", "42P01", "relation does not exist")))
    assert client.state is ClientState.IDLE and is_idle_in_pool(server)  # usable all the same
    assert "relation does not exist" in caplog.text
    client.take()
    run_select(client, server)
    client.send(m.terminate())
    assert server.take() == m.query("DISCARD ALL")
    server.send(reply(m.command_complete("DISCARD ALL")))
    assert is_idle_in_pool(server)  # the old connect_query error is not blamed on the reset


def test_idle_server_eof_leaves_the_pool(tmp_path: Path) -> None:
    rig = Rig(tmp_path, settings="min_pool_size = 1")
    client = rig.login()
    (server,) = rig.servers
    server.session.connection_lost(None)
    assert server.state is ServerState.CLOSED and server.session not in server.session.pool.servers
    assert server.session.closed_reason == "server closed the connection unexpectedly"
    assert client.state is ClientState.IDLE and not client.transport.closed
    assert len(rig.servers) == 2  # min_pool_size: a replacement is on its way


def test_copy_messages_after_a_failed_copy_take_no_server(tmp_path: Path) -> None:
    """PostgreSQL ignores CopyData/CopyDone that arrive after a COPY FROM STDIN failed (asyncpg sends its
    CopyDone after the error). In transaction mode the server is back in the pool by then: taking one
    for them would hold it until the client's next query, as no ReadyForQuery comes."""
    rig = Rig(tmp_path, settings="default_pool_size = 1")
    c = rig.login()
    (s,) = rig.servers
    copy_data, copy_done = m.message(m.COPY_DATA, b"x\n"), m.message(m.COPY_DONE)
    c.send(m.query("copy t from stdin"))
    s.take()
    s.send(m.message(m.COPY_IN_RESPONSE, b"\x00\x00\x01\x00\x00"))
    c.take()
    c.send(copy_data)
    assert s.take() == copy_data
    err = m.error_response("ERROR", "22P02", "invalid input syntax")
    s.send(err + m.ready_for_query(b"I"))
    assert c.take() == err + m.ready_for_query(b"I")
    c.send(copy_data + copy_done)
    assert c.session.server is None and s.take() == b""
    other = rig.login()  # the server is free for others
    other.send(m.query("begin"))
    assert s.take() == m.query("begin")
    s.send(reply(m.command_complete("BEGIN"), status=b"T"))
    other.take()
    c.send(m.query("copy t from stdin"))  # waits for the server; its data, sent meanwhile, is kept
    c.send(copy_data + copy_done)
    assert c.session.server is None
    other.send(m.query("commit"))
    s.take()
    s.send(reply(m.command_complete("COMMIT")))
    assert c.session.server is s.session
    assert s.take() == m.query("copy t from stdin") + copy_data + copy_done


def test_server_reset_query_always_in_transaction_mode_follows_reloads(tmp_path: Path) -> None:
    """server_reset_query_always = 1 runs server_reset_query after every transaction in transaction mode too;
    the hand-off reads it from a field of the hub (App.reset_always), which a reload sets again both ways."""
    rig = Rig(tmp_path, settings="server_reset_query_always = 0")
    client = rig.login()
    (server,) = rig.servers
    run_select(client, server)
    assert server.take() == b"" and is_idle_in_pool(server)  # given back as it is

    path = Path(rig.app.config_path)
    for value, reset in (("1", True), ("0", False), ("1", True)):
        old = f"server_reset_query_always = {1 - int(value)}"
        path.write_text(path.read_text().replace(old, f"server_reset_query_always = {value}"))
        rig.app.reload()
        run_select(client, server)
        if reset:
            assert server.state is ServerState.TESTED and server.take() == m.query("DISCARD ALL")
            server.send(reply(m.command_complete("DISCARD ALL")))
        else:
            assert server.take() == b""
        assert is_idle_in_pool(server)
