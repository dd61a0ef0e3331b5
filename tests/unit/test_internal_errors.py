"""Unexpected exceptions are logged with the connection's identity and a traceback, and the connection
is closed cleanly: the client gets XX000 internal error, never the traceback itself.

Faults are injected through the transports (a write that raises once), the protocol adapters of
net/protocols.py, and the event loop's exception handler.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeTransport, Rig, error_fields, select_one_reply

from pgmux.net.protocols import ClientProtocol, ServerProtocol, loop_exception_handler
from pgmux.protocol import messages as m
from pgmux.session.states import ClientState, ServerState


class Flaky(FakeTransport):
    """A transport whose next write raises once (then works again)."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.armed:
            self.armed = False
            raise RuntimeError("injected fault")
        super().write(data)


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path)


def flaky_client(rig: Rig) -> Any:
    client = rig.login()
    flaky = Flaky()
    client.session.transport = client.transport = flaky
    return client


def internal_errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "internal error" in r.getMessage() and r.levelno >= logging.ERROR]


def test_fault_in_the_server_relay_is_logged_and_both_ends_closed(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    client = flaky_client(rig)
    (server,) = rig.servers
    client.send(m.query("select 1"))
    server.take()
    client.transport.armed = True  # the reply's write to the client raises
    with caplog.at_level(logging.INFO, logger="pgmux"):
        server.send(select_one_reply())  # must not raise into the event loop
    (rec,) = internal_errors(caplog)
    assert rec.getMessage().startswith(server.session.prefix) and client.session.prefix in rec.getMessage()
    assert rec.exc_info is not None and "injected fault" in caplog.text and "Traceback" in caplog.text
    err = error_fields(client.take())
    assert err["C"] == "XX000" and err["S"] == "FATAL" and "Traceback" not in err["M"], err
    assert "RuntimeError" in err["M"]
    assert client.state is ClientState.CLOSED and server.session.state is ServerState.CLOSED


def test_fault_in_the_client_relay_is_logged_and_the_client_closed(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    client = rig.login()
    (server,) = rig.servers
    flaky = Flaky()
    server.session.transport = server.transport = flaky
    flaky.armed = True  # the query's write to the server raises
    with caplog.at_level(logging.INFO, logger="pgmux"):
        client.send(m.query("select 1"))
    (rec,) = internal_errors(caplog)
    assert rec.getMessage().startswith(client.session.prefix) and rec.exc_info is not None
    assert "injected fault" in caplog.text
    err = error_fields(client.take())
    assert err["C"] == "XX000" and err["S"] == "FATAL", err
    assert client.state is ClientState.CLOSED


class Broken(FakeTransport):
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        raise RuntimeError("injected fault in get_extra_info")


@pytest.mark.parametrize("compiled", [False, True], ids=["ClientProtocol", "ClientConnection"])
def test_fault_in_a_protocol_callback_is_logged_and_the_client_answered(rig: Rig, caplog: pytest.LogCaptureFixture,
                                                                         compiled: bool) -> None:
    """Both client protocols (net/protocols.py's, and runtime/logins.py's compiled one that the C
    Acceptor makes) guard their callbacks: the fault is logged with the client's identity, the client
    gets XX000, and the loop's handler finds the session too."""
    proto: Any = rig.app.new_protocol() if compiled else ClientProtocol(rig.app)
    assert proto.data_received == proto.session.data_received
    transport = Broken()
    proto.session.transport = transport  # what connection_made would have set before the fault
    with caplog.at_level(logging.INFO, logger="pgmux"):
        proto.connection_made(transport)  # type: ignore[arg-type]
    (rec,) = internal_errors(caplog)
    assert rec.getMessage().startswith(f"C-{proto.session.id}") and "connection_made" in rec.getMessage()
    assert "injected fault in get_extra_info" in caplog.text
    assert error_fields(transport.take())["C"] == "XX000"
    assert transport.closed and proto.session.state is ClientState.CLOSED
    other: Any = rig.app.new_protocol() if compiled else ClientProtocol(rig.app)
    other.session.transport = FakeTransport()
    with caplog.at_level(logging.INFO, logger="pgmux"):
        loop_exception_handler(None, {"message": "Exception in callback",  # type: ignore[arg-type]
                                      "exception": ValueError("escaped"), "protocol": other})
    assert other.session.state is ClientState.CLOSED and error_fields(other.session.transport.take())["C"] == "XX000"
    assert other.eof_received() is None  # (the stream then closes, as asyncio.Protocol's)


def test_loop_exception_handler_logs_with_identity_and_closes_the_connection(
        rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    client = rig.login()
    (server,) = rig.servers
    client.send(m.query("select 1"))
    server.take()
    try:
        raise ValueError("escaped a callback")
    except ValueError as e:
        exc = e
    with caplog.at_level(logging.INFO, logger="pgmux"):
        loop_exception_handler(None, {"message": "Exception in callback", "exception": exc,  # type: ignore[arg-type]
                                      "protocol": ServerProtocol(server.session)})
        loop_exception_handler(None, {"message": "Task exception was never retrieved",  # type: ignore[arg-type]
                                      "exception": exc})
    first, second = internal_errors(caplog)
    assert first.getMessage().startswith(server.session.prefix) and first.exc_info is not None
    assert "Task exception was never retrieved" in second.getMessage() and second.exc_info is not None
    assert server.session.state is ServerState.CLOSED and client.state is ClientState.CLOSED
    assert error_fields(client.take())["C"] == "XX000"
