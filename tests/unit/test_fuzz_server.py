"""Fuzzing the server session (issue 11): arbitrary and mutated backend messages, cut anywhere, fed to a
ServerSession at login, while it serves a client, and while it sits idle in the pool.

Whatever a server sends: no exception leaves ServerSession.data_received (a protocol error closes that
server and fails its client with 08006), no read buffer holds more than one message, a server pgmux
keeps in the pool is clean, and another client then gets exactly its own replies.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from fakes import Peer, Rig, frames, select_one_reply
from fuzzing import FUZZ, LOGIN_BACKEND, FakePg, backend, chunked, internal_errors, pump
from hypothesis import given
from hypothesis import strategies as st

from pgmux.protocol import messages as m
from pgmux.session.server import MAX_SERVER_MESSAGE
from pgmux.session.states import ClientState, ServerState

Q1 = m.query("select 1")


@pytest.fixture(scope="module")
def where(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-server")


def feed(rig: Rig, pg: FakePg, server: Peer, data: st.DataObject, stream: bytes) -> None:
    for chunk in data.draw(chunked(stream)):
        if server.transport.closed:
            break
        server.send(chunk)  # any exception but the ones pgmux handles fails the test here
        assert len(server.session.buf) <= MAX_SERVER_MESSAGE + 1
        pump(rig, pg)


def a_fresh_client_works(rig: Rig, pg: FakePg) -> None:
    """Another client: logs in, gets exactly its rows (from a clean server, old or new)."""
    c = rig.connect()
    pump(rig, pg)
    assert c.state is ClientState.IDLE, frames(c.take())
    c.take()
    c.send(Q1)
    pump(rig, pg)
    assert c.take() == select_one_reply()
    for s in rig.servers:
        if s.session.state is ServerState.IDLE:
            sess = s.session
            assert (sess.owed, sess.swallow, sess.tx_status, len(sess.queue)) == (0, 0, b"I", 0)


@pytest.mark.parametrize("mode", ["transaction", "session"])
@FUZZ
@given(data=st.data(), replies=st.lists(backend(), min_size=1, max_size=12), seed=st.integers(0, 2**32))
def test_garbage_from_a_linked_server(where: Path, mode: str, data: st.DataObject, replies: list[bytes],
                                      seed: int) -> None:
    rig = Rig(where, settings=f"pool_mode = {mode}\ndefault_pool_size = 3")
    r = random.Random(seed)
    pg = FakePg(lambda: r.random() < 0.1)
    with internal_errors() as errors:
        client = rig.login()
        client.send(Q1)
        server = rig.servers[0]
        server.take()  # the query: answered by the garbage below, not by the fake
        feed(rig, pg, server, data, b"".join(replies))
        out = client.take()
        assert errors.tracebacks() == []
        if client.state is ClientState.CLOSED:
            assert frames(out)[-1][0] == "E" if out and frames(out) else True
            assert server.transport.closed or server.session.state is ServerState.IDLE
        a_fresh_client_works(rig, pg)
        assert errors.tracebacks() == []


@FUZZ
@given(data=st.data(), replies=st.lists(backend(), min_size=1, max_size=8))
def test_garbage_from_an_idle_server(where: Path, data: st.DataObject, replies: list[bytes]) -> None:
    """Between clients only a notice or a ParameterStatus is expected; anything else closes the server."""
    rig = Rig(where, settings="pool_mode = transaction")
    pg = FakePg(lambda: False)
    with internal_errors() as errors:
        rig.login()
        server = rig.servers[0]
        assert server.session.state is ServerState.IDLE
        feed(rig, pg, server, data, b"".join(replies))
        assert errors.tracebacks() == []
        a_fresh_client_works(rig, pg)


@FUZZ
@given(data=st.data(), replies=st.lists(backend(LOGIN_BACKEND), min_size=1, max_size=10))
def test_garbage_during_server_login(where: Path, data: st.DataObject, replies: list[bytes]) -> None:
    rig = Rig(where, settings="pool_mode = transaction\nserver_login_retry = 0")  # the next client: a new server
    pg = FakePg(lambda: False)
    with internal_errors() as errors:
        client = rig.connect()
        server = rig.servers[0]
        server.take()  # the StartupMessage
        for chunk in data.draw(chunked(b"".join(replies))):
            if server.transport.closed:
                break
            server.send(chunk)
            assert len(server.session.buf) <= (1 << 20) + 1
        assert errors.tracebacks() == []
        out = client.take()
        if client.state is ClientState.CLOSED:
            assert frames(out)[-1][0] == "E"
        if server.session.state is ServerState.LOGIN and not server.transport.closed:
            server.send(m.auth_ok() + m.backend_key_data(1, 2) + m.ready_for_query(b"I"))  # the rest, if fits
        pump(rig, pg)  # servers opened since log in normally
        if client.state is ClientState.IDLE:
            client.take()
            client.send(Q1)
            pump(rig, pg)
            assert client.take() == select_one_reply()
        a_fresh_client_works(rig, pg)
        assert errors.tracebacks() == []
