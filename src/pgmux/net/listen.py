"""Listening sockets: TCP on listen_addr:listen_port and a Unix socket in unix_socket_dir.

Both listen with listen_backlog; TCP sockets get tcp_defer_accept and so_reuseport, the Unix socket
unix_socket_mode and unix_socket_group, as PgBouncer sets them.
"""

from __future__ import annotations

import asyncio
import grp
import os
import socket
from typing import Any

from pgmux.net.protocols import ClientProtocol
from pgmux.net.sockopts import tune_listener


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
    s = app.config.settings
    backlog = s.listen_backlog
    servers: list[asyncio.AbstractServer] = []
    for host in _tcp_hosts(listen_addr):
        srv = await loop.create_server(lambda: ClientProtocol(app), host, port, reuse_address=True,
                                       reuse_port=s.so_reuseport or None, backlog=backlog)
        for sock in srv.sockets:
            tune_listener(sock, s)
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
        srv = await loop.create_unix_server(lambda: ClientProtocol(app), path, backlog=backlog)
        os.chmod(path, unix_mode)
        if s.unix_socket_group:
            os.chown(path, -1, group_id(s.unix_socket_group))
        servers.append(srv)
    return servers


def group_id(name: str) -> int:
    """unix_socket_group: a group name, or a numeric id."""
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        if name.isdigit():
            return int(name)
        raise OSError(f"unix_socket_group: no such group: {name}") from None


def unix_socket_path(unix_dir: str, port: int) -> str:
    return os.path.join(unix_dir, f".s.PGSQL.{port}")


def is_unix_listener(srv: Any) -> bool:
    """A listener on a Unix socket (kept open for the admin console during a graceful shutdown)."""
    return any(sock.family == socket.AF_UNIX for sock in (getattr(srv, "sockets", None) or ()))
