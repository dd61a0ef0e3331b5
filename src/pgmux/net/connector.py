"""Opening connections to PostgreSQL: for a pooled server, and for a CancelRequest."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from pgmux.net.protocols import ServerProtocol
from pgmux.net.streams import open_connection
from pgmux.net.tls import connect_server
from pgmux.protocol import messages as m


def default_unix_dir() -> str:
    """Where PostgreSQL's Unix socket is, for a host given as no host at all: Debian's place, else /tmp."""
    return "/var/run/postgresql" if os.path.isdir("/var/run/postgresql") else "/tmp"


async def open_server(session: Any, timeout: float, tls: Any = None, settings: Any = None) -> None:
    """Connect; the session takes over from connection_made. Raises OSError/TimeoutError.
    Over TCP with server TLS on (`tls`: net/tls.Contexts), SSLRequest goes first."""
    t = session.target
    coro: Any
    if tls is not None and tls.server is not None and not t.unix_path:
        assert t.host is not None
        coro = connect_server(ServerProtocol(session, settings), t.host, t.port, tls.server, tls.server_mode,
                              timeout if timeout > 0 else None)
    elif t.unix_path:
        coro = open_connection(lambda: ServerProtocol(session, settings), None, None, t.unix_path)
    else:
        assert t.host is not None  # a target without a Unix socket path has a TCP host
        coro = open_connection(lambda: ServerProtocol(session, settings), t.host, t.port)
    if timeout > 0:
        await asyncio.wait_for(coro, timeout)
    else:
        await coro


async def send_cancel(host: str | None, port: int, unix_path: str | None, pid: int, key: int,
                      timeout: float) -> None:
    """A CancelRequest goes on a new connection of its own, which the server closes."""
    async def run() -> None:
        if unix_path:
            reader, writer = await asyncio.open_unix_connection(unix_path)
        else:
            reader, writer = await asyncio.open_connection(host, port)
        writer.write(m.cancel_request(pid, key))
        await writer.drain()
        await reader.read()  # the server closes when done
        writer.close()

    if timeout > 0:  # cancel_wait_timeout; 0: wait as long as it takes, as PgBouncer does
        await asyncio.wait_for(run(), timeout)
    else:
        await run()
