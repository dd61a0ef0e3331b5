"""Bounded memory per connection: long messages are streamed, or held up to a bound, or refused.

A message longer than STREAM_FROM that pgmux only forwards goes on as it arrives, in both directions,
so what a connection holds does not grow with the length a peer claims. A message pgmux reads whole
is held up to MAX_INSPECTED and refused beyond it as soon as its header says so. Playbooks over fake
transports: the buffers each session holds are checked directly.
"""

from __future__ import annotations

import logging
import struct
from pathlib import Path

import pytest
from fakes import Rig, error_fields, reply, select_one_reply

from pgmux.net.protocols import ServerProtocol
from pgmux.protocol import messages as m
from pgmux.protocol.codec import MAX_INSPECTED, STREAM_FROM
from pgmux.session.states import ClientState, ServerState

CHUNK = 64 * 1024
GIB = 1 << 30
PG_LIMIT = 0x3FFFFFFE


def header(t: bytes, body_len: int) -> bytes:
    return t + struct.pack("!i", 4 + body_len)


def session_rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path, settings="pool_mode = session")


def held(peer: object) -> int:
    """Bytes a session keeps of a partial message, plus what it queued for a server."""
    s = peer.session  # type: ignore[attr-defined]
    return len(s.buf) + sum(len(p) for p in getattr(s, "pending", None) or ())


def test_long_query_in_session_mode_streams_to_the_server(tmp_path: Path) -> None:
    rig = session_rig(tmp_path)
    client = rig.login()
    (server,) = rig.servers
    client.send(m.query("select 1"))  # the session's server, linked for good
    server.take()
    server.send(select_one_reply())
    client.take()
    body = b"x" * (40 * CHUNK)
    msg = header(b"Q", len(body) + 1) + body + b"\x00"
    sent = 0
    for i in range(0, len(msg), CHUNK):
        client.send(msg[i:i + CHUNK])
        sent += len(msg[i:i + CHUNK])
        assert held(client) <= STREAM_FROM
        assert len(server.take()) == len(msg[i:i + CHUNK])  # forwarded as it came
    assert server.session.owed == 1 and client.session.passing == 0
    server.send(select_one_reply())
    assert client.take() == select_one_reply()
    client.send(m.query("select 2"))  # the stream ended at the message's last byte
    assert server.take() == m.query("select 2")


def test_one_gib_claim_streams_and_holds_nothing(tmp_path: Path) -> None:
    rig = session_rig(tmp_path)
    client = rig.login()
    (server,) = rig.servers
    client.send(m.query("select 1"))
    server.take()
    server.send(select_one_reply())
    claim = PG_LIMIT - 4  # a body of about 1 GiB: PostgreSQL's largest (its length word at most PG_LIMIT)
    client.send(header(b"Q", claim) + b"y" * (CHUNK - 5))
    for _ in range(200):
        client.send(b"y" * CHUNK)
        assert held(client) == 0
    assert client.session.passing == claim + 5 - 201 * CHUNK
    assert len(server.take()) == 201 * CHUNK


def test_first_long_message_waits_for_a_server_with_reading_paused(tmp_path: Path) -> None:
    rig = session_rig(tmp_path)
    client = rig.connect()
    (server,) = rig.servers
    rig.server_login(server)
    client.take()
    client.session.server and pytest.fail("no server linked before a query")
    client.transport.paused = False
    rig.app.paused = True  # PAUSE: the client must wait for its server
    body = b"z" * (3 * CHUNK)
    msg = header(b"Q", len(body) + 1) + body + b"\x00"
    client.send(msg[:CHUNK])
    assert client.transport.paused and client.state is ClientState.WAITING
    assert held(client) == CHUNK
    rig.app.paused = False
    rig.app.acquire(client.session)  # RESUME hands it the server
    assert server.take() == msg[:CHUNK] and not client.transport.paused
    client.send(msg[CHUNK:])
    assert server.take() == msg[CHUNK:] and held(client) == 0


def test_long_inspected_message_is_held_up_to_the_bound_then_refused(tmp_path: Path) -> None:
    rig = Rig(tmp_path)  # transaction pooling: pgmux reads each Query to track session state
    client = rig.login()
    body = b"x" * (4 * CHUNK)
    msg = header(b"Q", len(body) + 1) + body + b"\x00"
    client.send(msg[:CHUNK])
    assert held(client) == CHUNK  # held whole, to be read
    client.send(msg[CHUNK:])
    (server,) = rig.servers
    assert server.take() == msg
    server.send(select_one_reply())
    assert client.take() == select_one_reply()

    other = rig.login()
    other.send(header(b"P", MAX_INSPECTED) + b"\x00select")
    err = error_fields(other.take())
    assert err["C"] == "54000" and err["S"] == "FATAL" and str(MAX_INSPECTED) in err["M"], err
    assert other.state is ClientState.CLOSED and held(other) < 100


@pytest.mark.parametrize("t", [b"S", b"H", b"E", b"D", b"C", b"X", b"c", b"f"])
def test_long_small_message_types_are_refused_at_their_header(tmp_path: Path, t: bytes,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    rig = session_rig(tmp_path)
    client = rig.login()
    with caplog.at_level(logging.INFO, logger="pgmux"):
        client.send(header(t, STREAM_FROM + 10) + b"\x00" * 100)
    err = error_fields(client.take())
    assert err["C"] == "08P01" and err["S"] == "FATAL" and "invalid message length" in err["M"], err
    assert client.state is ClientState.CLOSED
    assert f"{client.session.prefix} client protocol error: invalid message length" in caplog.text


def test_above_max_packet_size_is_refused_before_any_body(tmp_path: Path) -> None:
    rig = Rig(tmp_path, settings="pool_mode = session\nmax_packet_size = 100000")
    client = rig.login()
    client.send(header(b"Q", GIB))
    err = error_fields(client.take())
    assert err["C"] == "08P01" and err["S"] == "FATAL" and "invalid message length" in err["M"], err


def start_copy_in(rig: Rig) -> tuple[object, object]:
    client = rig.login()
    (server,) = rig.servers
    client.send(m.query("COPY t FROM STDIN"))
    server.take()
    server.send(m.message(b"G", b"\x00\x00\x00"))  # CopyInResponse
    client.take()
    return client, server


def test_long_copy_data_streams_in_transaction_mode(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    client, server = start_copy_in(rig)
    data = b"1\n" * (20 * CHUNK)
    msg = m.message(b"d", data) + m.message(b"c")
    for i in range(0, len(msg), CHUNK):
        client.send(msg[i:i + CHUNK])
        assert held(client) <= STREAM_FROM
    assert server.take() == msg  # type: ignore[attr-defined]
    server.send(reply(m.command_complete("COPY 1")))  # type: ignore[attr-defined]
    assert client.session.server is None  # type: ignore[attr-defined]


def test_copy_that_fails_early_keeps_its_server_until_the_message_ends(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    client, server = start_copy_in(rig)
    msg = m.message(b"d", b"x" * (4 * CHUNK))
    client.send(msg[:CHUNK])  # type: ignore[attr-defined]
    err = m.error_response("ERROR", "22P02", "bad input")
    server.send(err + m.ready_for_query(b"I"))  # type: ignore[attr-defined]
    # Released now, the server would get the rest of this CopyData in front of another client's query.
    assert client.session.server is server.session  # type: ignore[attr-defined]
    client.send(msg[CHUNK:])  # type: ignore[attr-defined]
    assert client.session.server is None and server.session.state is ServerState.IDLE  # type: ignore
    assert server.take() == msg  # type: ignore[attr-defined]


def test_long_data_row_streams_to_the_client(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    client = rig.login()
    (server,) = rig.servers
    client.send(m.query("select big"))
    server.take()
    row = m.data_row([b"v" * (30 * CHUNK)])
    data = m.row_description([("x", m.OID_TEXT)]) + row + m.command_complete("SELECT 1") + m.ready_for_query(b"I")
    for i in range(0, len(data), CHUNK):
        server.send(data[i:i + CHUNK])
        assert len(server.session.buf) <= STREAM_FROM
    assert client.take() == data
    assert client.session.server is None and server.session.owed == 0


def test_long_error_from_server_beyond_the_bound_closes_it(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    client = rig.login()
    (server,) = rig.servers
    client.send(m.query("select 1"))
    server.take()
    server.send(header(b"E", MAX_INSPECTED + 10) + b"SERROR\x00")
    assert server.session.state is ServerState.CLOSED
    assert error_fields(client.take())["C"] == "08006"


def test_full_server_buffer_pauses_the_client_until_it_drains(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    client, server = start_copy_in(rig)
    proto = ServerProtocol(server.session)  # type: ignore[attr-defined]
    proto.pause_writing()
    assert client.transport.paused  # type: ignore[attr-defined]
    proto.resume_writing()
    assert not client.transport.paused  # type: ignore[attr-defined]
    proto.pause_writing()
    client.send(m.message(b"c"))  # type: ignore[attr-defined]
    server.send(reply(m.command_complete("COPY 0")))  # type: ignore[attr-defined]
    # Back in the pool with its buffer still full: the client no longer waits for it...
    assert client.session.server is None and not client.transport.paused  # type: ignore[attr-defined]
    client.send(m.query("select 1"))  # type: ignore[attr-defined]
    # ...and whoever gets it next waits until it drains.
    assert client.transport.paused  # type: ignore[attr-defined]
    proto.resume_writing()
    assert not client.transport.paused  # type: ignore[attr-defined]


def test_bytes_pipelined_behind_the_login_pause_the_client_until_the_welcome(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    client = rig.connect()  # the pool's first server still logging in
    (server,) = rig.servers
    assert client.state is ClientState.LOGIN_WAIT
    q = m.query("select 'a'")
    client.session.sbuf = q  # (as when they came in the same read as the startup packet)
    sent = q
    while not client.transport.paused:
        client.send(q * 1000)
        sent += q * 1000
        assert len(sent) < 4 * STREAM_FROM, "still reading"
    rig.server_login(server)
    assert not client.transport.paused
    assert server.take() == sent


def test_reads_queued_for_a_busy_pool_pause_the_client(tmp_path: Path) -> None:
    rig = Rig(tmp_path, settings="default_pool_size = 1")
    holder = rig.login()
    (server,) = rig.servers
    holder.send(m.query("begin"))
    server.take()
    server.send(reply(m.command_complete("BEGIN"), status=b"T"))
    other = rig.login()
    assert other.session.server is None
    sent = b""
    for i in range(40):
        if other.transport.paused:
            break
        q = m.query(f"select {i}")
        other.send(q)
        sent += q
    assert other.transport.paused and other.state is ClientState.WAITING
    assert len(other.session.pending or ()) <= 16
    holder.send(m.query("commit"))
    server.take()
    server.send(reply(m.command_complete("COMMIT")))
    assert other.session.server is server.session and not other.transport.paused
    assert server.take() == sent


def test_length_above_postgresql_limit_is_refused_at_its_header(tmp_path: Path) -> None:
    rig = session_rig(tmp_path)
    client = rig.login()
    client.send(m.query("select 1"))
    (server,) = rig.servers
    server.take()
    server.send(select_one_reply())
    client.take()
    client.send(header(b"d", GIB) + b"x" * CHUNK)  # PostgreSQL accepts 1 GiB - 2 at most
    err = error_fields(client.take())
    assert err["C"] == "08P01" and err["S"] == "FATAL" and "invalid message length" in err["M"], err
    assert server.take() == m.query("DISCARD ALL") and client.state is ClientState.CLOSED  # nothing of it
