"""Listening sockets: TCP on listen_addr:listen_port and a Unix socket in unix_socket_dir."""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

from pgmux.net.protocols import ClientProtocol


def _tcp_hosts(listen_addr: tuple[str, ...]) -> list[str | None]:
    hosts: list[str | None] = []
    for a in listen_addr:
        a = a.strip()
        if not a:
            continue
        hosts.append(None if a == "*" else a)
    return hosts


async def start_listeners(app: Any, listen_addr: tuple[str, ...], port: int, unix_dir: str,
                          unix_mode: int = 0o777) -> list[asyncio.AbstractServer]:
    loop = asyncio.get_running_loop()
    servers: list[asyncio.AbstractServer] = []
    for host in _tcp_hosts(listen_addr):
        srv = await loop.create_server(lambda: ClientProtocol(app), host, port, reuse_address=True,
                                       backlog=1024)
        servers.append(srv)
    if unix_dir:
        path = unix_socket_path(unix_dir, port)
        if os.path.exists(path):
            # A leftover from a crash: only remove it if nobody answers there.
            probe = socket.socket(socket.AF_UNIX)
            try:
                probe.connect(path)
            except OSError:
                os.unlink(path)
            else:
                raise OSError(f"another process is listening on {path}")
            finally:
                probe.close()
        srv = await loop.create_unix_server(lambda: ClientProtocol(app), path, backlog=1024)
        os.chmod(path, unix_mode)
        servers.append(srv)
    return servers


def unix_socket_path(unix_dir: str, port: int) -> str:
    return os.path.join(unix_dir, f".s.PGSQL.{port}")


def is_unix_listener(srv: Any) -> bool:
    """A listener on a Unix socket (kept open for the admin console during a graceful shutdown)."""
    return any(sock.family == socket.AF_UNIX for sock in (getattr(srv, "sockets", None) or ()))
