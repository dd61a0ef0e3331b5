"""A StartupMessage equal byte for byte to an earlier one is not parsed again (session/client_login.py
_PACKETS): the login must be the same as with a parsed one, and a packet that differs in any byte is
parsed on its own."""

from __future__ import annotations

from pathlib import Path

from fakes import Rig

from pgmux.protocol import messages as m
from pgmux.session import client_login
from pgmux.session.states import ClientState


def test_same_packet_same_parameters_and_login(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    client_login._PACKETS.clear()
    first = rig.login(application_name="bench")
    packet = m.startup_message({"user": "alice", "database": "app", "application_name": "bench"})
    assert client_login._PACKETS.get(packet) is first.session.startup
    again = rig.login(application_name="bench")
    assert again.session.startup is first.session.startup
    assert again.state is ClientState.IDLE and again.session.params == first.session.params
    other = rig.login(application_name="benci")  # one byte apart: its own parameters
    assert other.session.startup["application_name"] == "benci"
    assert other.session.params["application_name"] == "benci"


def test_cached_packet_with_bytes_behind_it(tmp_path: Path) -> None:
    """The bytes after a known packet in the same read (here its password) are read as after a parsed one."""
    rig = Rig(tmp_path, settings="auth_type = plain")
    packet = m.startup_message({"user": "alice", "database": "app"})
    rig.connect().send(m.message(b"p", b"secret\x00"))  # parsed; known from now on
    assert packet in client_login._PACKETS
    c = rig.new_client()
    c.send(packet + m.message(b"p", b"secret\x00"))
    for server in rig.servers:  # the pool's first server, opened for the first client
        rig.server_login(server)
    assert c.state is ClientState.IDLE, c.take()
    assert c.session.user == "alice" and c.session.database == "app"
    wrong = rig.new_client()
    wrong.send(packet + m.message(b"p", b"wrong\x00"))
    assert wrong.state is ClientState.CLOSED
    assert b"28P01" in wrong.take()


def test_a_packet_split_across_reads_and_protocol_options(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    packet = m.startup_message({"user": "alice", "database": "app"})
    rig.login()
    c = rig.new_client()
    c.send_bytewise(packet)
    assert c.state is ClientState.IDLE
    client_login._PACKETS.clear()
    opts = m.startup_message({"user": "alice", "database": "app", "_pq_.x": "1"})
    for _ in range(2):  # never kept: the NegotiateProtocolVersion must go out each time
        c = rig.new_client()
        c.send(opts)
        assert c.take()[:1] == m.NEGOTIATE_PROTOCOL_VERSION and c.state is ClientState.IDLE
    assert client_login._PACKETS == {}
