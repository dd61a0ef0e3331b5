"""Fuzzing the client session (issue 11): arbitrary and mutated frontend messages, cut anywhere, fed to a
ClientSession of the real App hub, with a fake PostgreSQL answering whatever pgmux forwards.

Whatever a client sends: nothing but pgmux's own ErrorResponse comes of it (no exception reaches
App.log_exception), a read buffer never holds more than one message of at most max_packet_size, and
another client interleaved with the garbage gets exactly its own replies. The bugs it found have tests
of their own below.
"""

from __future__ import annotations

import random
import struct
from pathlib import Path

import pytest
from fakes import Peer, Rig, frames, select_one_reply
from fuzzing import FUZZ, FakePg, chunked, frame, frontend, internal_errors, known_short_body, pump
from hypothesis import given
from hypothesis import strategies as st

from pgmux.protocol import messages as m
from pgmux.runtime.admin_service import AdminService
from pgmux.session.states import ClientState, ServerState

MAX_PACKET = 65536
Q1, SYNC = m.query("select 1"), frame(b"S", b"")


@pytest.fixture(scope="module")
def where(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-client")


def new_rig(where: Path, mode: str, extra: str = "") -> Rig:
    return Rig(where, settings=f"pool_mode = {mode}\nmax_packet_size = {MAX_PACKET}\n{extra}")


def check_buffers(c: Peer) -> None:
    s = c.session
    assert len(s.buf) <= MAX_PACKET + 1, f"read buffer holds {len(s.buf)} bytes"
    assert len(s.sbuf) <= 10000 + MAX_PACKET, f"startup buffer holds {len(s.sbuf)} bytes"


def select_one_works(rig: Rig, pg: FakePg, client: Peer) -> None:
    client.send(Q1)
    pump(rig, pg)
    assert client.take() == select_one_reply()


def servers_in_pool_are_clean(rig: Rig) -> None:
    for s in rig.servers:
        sess = s.session
        if sess.state is ServerState.IDLE:
            assert not s.transport.closed
            assert (sess.owed, sess.swallow, sess.tx_status, len(sess.queue), sess.copy_in) == (0, 0, b"I", 0, False)


def ended_with_an_error(c: Peer, out: bytes) -> None:
    """A client pgmux closed got an ErrorResponse (08P01, 08006...) as its last message."""
    assert c.transport.closed
    msgs = frames(out) if out else []
    assert msgs and msgs[-1][0] == "E", msgs[-3:]


@pytest.mark.parametrize("mode", ["transaction", "session"])
@FUZZ
@given(data=st.data(), msgs=st.lists(frontend(), min_size=1, max_size=25), seed=st.integers(0, 2**32))
def test_garbage_client_beside_a_valid_one(where: Path, mode: str, data: st.DataObject, msgs: list[bytes],
                                           seed: int) -> None:
    rig = new_rig(where, mode)
    r = random.Random(seed)
    pg = FakePg(lambda: r.random() < 0.15)
    with internal_errors() as errors:
        bad = rig.login()
        good = rig.connect()
        pump(rig, pg)
        good.take()
        out = b""
        for chunk in data.draw(chunked(b"".join(msgs))):
            bad.send(chunk)
            pump(rig, pg)
            out += bad.take()
            check_buffers(bad)
            if data.draw(st.booleans()):
                select_one_works(rig, pg, good)
            if bad.state is ClientState.CLOSED:
                break
        assert errors.tracebacks() == []
        if bad.state is ClientState.CLOSED:
            ended_with_an_error(bad, out)
        elif not bad.session.buf.pending:
            # Still talking: a Sync ends any batch, then its own query gets its own rows.
            bad.send(SYNC + Q1)
            pump(rig, pg)
            reply = bad.take()
            if bad.state is not ClientState.CLOSED:
                assert select_one_reply()[:-6] in reply and reply[-6:-1] == b"Z\0\0\0\5", frames(reply)
        select_one_works(rig, pg, good)
        servers_in_pool_are_clean(rig)
        assert errors.tracebacks() == []


@FUZZ
@given(data=st.data(), garbage=st.binary(min_size=1, max_size=200))
def test_arbitrary_bytes_after_login(where: Path, data: st.DataObject, garbage: bytes) -> None:
    """Bytes that are not messages: pgmux answers 08P01 and closes, or waits for the rest of a message."""
    rig = new_rig(where, "transaction")
    pg = FakePg(lambda: False)
    with internal_errors() as errors:
        bad = rig.login()
        good = rig.login()
        out = b""
        for chunk in data.draw(chunked(garbage)):
            bad.send(chunk)
            pump(rig, pg)
            out += bad.take()
            check_buffers(bad)
        assert errors.tracebacks() == [] or any(known_short_body(x) for x in _messages(garbage)), \
            errors.tracebacks()
        if bad.state is ClientState.CLOSED:
            ended_with_an_error(bad, out)
        select_one_works(rig, pg, good)


def _messages(data: bytes) -> list[bytes]:
    out, pos = [], 0
    while len(data) - pos >= 5:
        (n,) = struct.unpack_from("!i", data, pos + 1)
        out.append(data[pos:pos + 1 + max(n, 4)])
        pos += 1 + max(n, 4)
    return out


@st.composite
def startup_packets(draw: st.DrawFn) -> bytes:
    params = draw(st.dictionaries(st.sampled_from(["user", "database", "options", "application_name",
                                                   "client_encoding", "_pq_.x", "TimeZone", "replication"]),
                                  st.sampled_from(["alice", "app", "nope", "", "-c a=b", "é", "UTF8", "x" * 300]),
                                  max_size=5))
    version = draw(st.sampled_from([m.PROTOCOL_V3, (3 << 16) | 1, 2 << 16, 80877103, 80877104, 80877102, 0]))
    pkt = bytearray(m.startup_message(params, protocol=version))
    how = draw(st.integers(0, 4))
    if how == 1:
        for i in draw(st.lists(st.integers(0, len(pkt) - 1), min_size=1, max_size=4)):
            pkt[i] = draw(st.integers(0, 255))
    elif how == 2:
        pkt = pkt[:draw(st.integers(1, len(pkt)))]
    elif how == 3:
        pkt = bytearray(draw(st.binary(min_size=1, max_size=64)))
    elif how == 4:
        pkt = bytearray(struct.pack("!ii", 8, m.SSL_REQUEST_CODE)) + pkt
    return bytes(pkt) + draw(st.sampled_from([b"", Q1, frame(b"p", b"pw\0"), b"\0" * 9]))


@FUZZ
@given(data=st.data(), pkt=startup_packets())
def test_startup_fuzz(where: Path, data: st.DataObject, pkt: bytes) -> None:
    rig = new_rig(where, "transaction")
    pg = FakePg(lambda: False)
    with internal_errors() as errors:
        c = rig.new_client()
        out = b""
        for chunk in data.draw(chunked(pkt)):
            c.send(chunk)
            pump(rig, pg)
            out += c.take()
            check_buffers(c)
        assert errors.tracebacks() == []
        if c.state is ClientState.CLOSED and out and out[:1] not in (b"N", b"v"):
            ended_with_an_error(c, out)
        good = rig.login()
        pump(rig, pg)
        select_one_works(rig, pg, good)


# -- malformed extended messages: what pgmux cannot read, PostgreSQL refuses ------------------------------
# An empty or too short Parse/Bind/Describe/Close once escaped pipeline.to_server as IndexError (found by
# this fuzzing). Now pgmux passes what it cannot read on, unchanged, for PostgreSQL to answer with its own
# ERROR 08P01 (tests/integration/test_malformed.py compares that with a real server, message by message):
# nothing escapes, pgmux closes nothing, and the session goes on.

MALFORMED = [(b"P", b""), (b"D", b""), (b"C", b""), (b"D", b"S"), (b"C", b"S"), (b"B", b""), (b"P", b"s1"),
             (b"B", b"\0s1")]


@pytest.mark.parametrize("t,body", MALFORMED)
def test_malformed_extended_message_reaches_the_server_and_the_session_goes_on(where: Path, t: bytes,
                                                                                body: bytes) -> None:
    rig = new_rig(where, "transaction")
    pg = FakePg(lambda: False)
    with internal_errors() as errors:
        c = rig.login()
        c.send(frame(t, body) + SYNC)
        pump(rig, pg)
        c.take()
        assert errors.tracebacks() == []
        assert c.state is not ClientState.CLOSED
        select_one_works(rig, pg, c)


@pytest.mark.parametrize("t,body", MALFORMED[:3])
def test_malformed_extended_message_queued_for_a_server(where: Path, t: bytes, body: bytes) -> None:
    rig = new_rig(where, "transaction")
    pg = FakePg(lambda: False)
    with internal_errors() as errors:
        c = rig.connect()
        c.send(frame(t, body) + SYNC)  # pipelined behind the login: queued until a server is there
        pump(rig, pg)  # the server's login hands it over: must not raise
        c.take()
        assert errors.tracebacks() == []
        assert c.state is not ClientState.CLOSED
        select_one_works(rig, pg, c)


def test_huge_declared_length_is_refused_at_its_header(where: Path) -> None:
    """Above PostgreSQL's own 1 GiB limit: FATAL 08P01 before any of the body is read (a length pgmux may
    accept but reads whole is bounded by MAX_INSPECTED; one it only forwards streams: test_bounded)."""
    rig = Rig(where, settings="pool_mode = transaction")  # max_packet_size: its default
    c = rig.login()
    c.send(b"Q" + struct.pack("!i", 2**31 - 1) + b"x" * 1000)
    assert c.state is ClientState.CLOSED
    assert m.parse_error_fields(frames(c.take())[-1][1])["C"] == "08P01"
    assert len(c.session.buf) < 16 << 20


def test_queue_of_a_waiting_client_is_bounded(where: Path) -> None:
    rig = Rig(where, settings="pool_mode = transaction\ndefault_pool_size = 1")
    holder = rig.login()
    holder.send(m.query("BEGIN"))  # holds the only server
    c = rig.login()
    q = m.query("select '" + "x" * 10000 + "'")
    for _ in range(3200):  # 32 MB
        c.send(q)
        if c.transport.paused:
            break
    queued = sum(len(p) for p in c.session.pending or ())
    assert c.transport.paused or queued < 16 << 20, f"{queued} bytes queued, reading not paused"


def test_bytes_behind_a_waiting_login_are_bounded(where: Path) -> None:
    rig = Rig(where, settings="pool_mode = transaction")
    c = rig.new_client()
    q = m.query("select '" + "x" * (1 << 20) + "'")  # (big reads: sbuf grows by copying, so many small
    c.send(m.startup_message({"user": "alice", "database": "app"}) + q)  # ones are quadratic, too)
    for _ in range(32):
        c.send(q)
        if c.transport.paused:
            break
    assert c.transport.paused or len(c.session.sbuf) < 16 << 20, f"{len(c.session.sbuf)} bytes held"


@FUZZ
@given(data=st.data(), msgs=st.lists(st.one_of(frontend(nonempty_targets=False),
                                               st.sampled_from(["SHOW POOLS", "SHOW CLIENTS", "SHOW HELP", "PAUSE x",
                                                                "KILL", "SHOW", "", "SET x = 1", "RESUME"])
                                               .map(m.query)), min_size=1, max_size=15))
def test_admin_console_fuzz(where: Path, data: st.DataObject, msgs: list[bytes]) -> None:
    """The console reads whole messages itself (ClientSession._admin_data): garbage gets an error."""
    rig = new_rig(where, "transaction", "admin_users = alice")
    rig.app.admin = AdminService(rig.app)  # what App.start() sets up, without its listeners
    pg = FakePg(lambda: False)
    with internal_errors() as errors:
        admin = rig.connect(database="pgbouncer")
        assert admin.state is ClientState.IDLE, frames(admin.take())
        admin.take()
        out = b""
        for chunk in data.draw(chunked(b"".join(msgs))):
            admin.send(chunk)
            pump(rig, pg)
            out += admin.take()
            check_buffers(admin)
            if admin.state is ClientState.CLOSED:
                break
        assert errors.tracebacks() == []
        if admin.state is ClientState.CLOSED and out:
            assert frames(out)[-1][0] in ("E", "Z")  # an error, or a Terminate after a reply
        good = rig.login()
        select_one_works(rig, pg, good)
