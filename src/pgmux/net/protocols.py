"""asyncio.Protocol adapters: the thin edge between sockets and the sans-IO sessions.

Callback-based protocols, not streams: one Python call per read, no awaits on the data path.
Flow control: when a client's socket buffer fills, the server linked to it stops being read, and the
other way round, so a slow reader never makes pgmux buffer a whole result set.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any

from pgmux.session.server import ServerSession


class ClientProtocol(asyncio.Protocol):
    # Slots: no __dict__ per connection (issue 11: memory per idle client). The `data_received` slot
    # holds the session's bound method, which uvloop calls directly.
    __slots__ = ("session", "data_received")

    def __init__(self, app: Any) -> None:
        self.session = app.new_client()
        # uvloop looks data_received up once, before connection_made: bind the session's method here
        # so every read is one call straight into the session.
        self.data_received = self.session.data_received  # type: ignore[method-assign]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio and uvloop already set TCP_NODELAY on TCP transports; the peer address is all we
        # need, except on the Unix socket, where the peer's uid decides admin access.
        peer = transport.get_extra_info("peername")
        peer_uid = None
        if isinstance(peer, tuple):
            addr, port, is_unix = peer[0], peer[1], False
        else:
            addr, port, is_unix = "unix", 0, True
            sock = transport.get_extra_info("socket")
            try:
                creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
                peer_uid = struct.unpack("3i", creds)[1]
            except (OSError, AttributeError):
                peer_uid = None
        self.session.connection_made(transport, addr, port, is_unix, peer_uid)

    def connection_lost(self, exc: Exception | None) -> None:
        self.session.connection_lost(exc)

    def pause_writing(self) -> None:
        self.session.pause_writing()

    def resume_writing(self) -> None:
        self.session.resume_writing()


class ServerProtocol(asyncio.Protocol):
    __slots__ = ("session", "data_received")

    def __init__(self, session: ServerSession) -> None:
        self.session = session
        self.data_received = session.data_received  # type: ignore[method-assign]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family != socket.AF_UNIX:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.session.local_port = sock.getsockname()[1]
            except OSError:
                pass
        self.session.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.session.connection_lost(exc)

    def pause_writing(self) -> None:
        client = self.session.client
        if client is not None and client.transport is not None:
            client.transport.pause_reading()

    def resume_writing(self) -> None:
        client = self.session.client
        if client is not None and client.transport is not None:
            client.transport.resume_reading()
