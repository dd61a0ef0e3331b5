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

from pgmux.net import streams
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
    share = getattr(app, "share", None)
    if share is not None:  # a worker process: the supervisor bound them (bind_listeners), we accept
        # On a copy of each: closing the server (a worker that stops accepting for a moment,
        # WorkerShare.pause_accepting, or SUSPEND) leaves the inherited socket open for the next one.
        return await serve_sockets(app, [copy(sock) for sock in share.sockets], backlog)
    if streams.AVAILABLE:  # bound here, accepted by pgmux._streams (net/streams.py)
        return await serve_sockets(app, bind_listeners(s, listen_addr, port, unix_dir, unix_mode), backlog)
    # The Unix socket first: whoever sees the TCP port accept (a test, a health probe) can then use both.
    path = unix_socket_path(unix_dir, port) if unix_dir else ""
    srv: asyncio.AbstractServer
    try:
        if path:
            _remove_stale(path)  # a leftover from a crash
            srv = await loop.create_unix_server(lambda: ClientProtocol(app), path, backlog=backlog)
            servers.append(srv)
            os.chmod(path, unix_mode)
            if s.unix_socket_group:
                os.chown(path, -1, group_id(s.unix_socket_group))
        for host in _tcp_hosts(listen_addr):
            srv = await loop.create_server(lambda: ClientProtocol(app), host, port, reuse_address=True,
                                           reuse_port=s.so_reuseport or None, backlog=backlog)
            servers.append(srv)
            for sock in srv.sockets:
                tune_listener(sock, s)
    except BaseException:
        for srv in servers:
            srv.close()
        if path and servers:
            _unlink_quietly(path)
        raise
    return servers


async def serve_sockets(app: Any, socks: list[socket.socket], backlog: int) -> list[asyncio.AbstractServer]:
    """Accept clients on sockets already bound and listening (a worker's copies of the supervisor's, or the
    copies SUSPEND kept: runtime/suspend.py). The sockets become the servers'; on a failure all are closed."""
    loop = asyncio.get_running_loop()
    servers: list[Any] = []
    try:
        for sock in socks:
            if streams.AVAILABLE:
                sock.listen(backlog)  # (listening already: this sets the backlog, as create_server does)
                servers.append(streams.Listener(sock, app.new_protocol))  # (compiled: runtime/logins.py)
            elif sock.family == socket.AF_UNIX:
                servers.append(await loop.create_unix_server(lambda: ClientProtocol(app), sock=sock, backlog=backlog))
            else:
                servers.append(await loop.create_server(lambda: ClientProtocol(app), sock=sock, backlog=backlog))
    except BaseException:
        for srv in servers:
            srv.close()
        for sock in socks[len(servers):]:
            sock.close()
        raise
    return servers


def copy(sock: socket.socket) -> socket.socket:
    """A second descriptor of a listening socket that other processes share (the workers' inherited
    ones), never changing its blocking mode. socket.dup() sets the copy's timeout to the original's,
    and a copy's O_NONBLOCK is the shared file's: a dup() of a socket object in blocking mode made the
    listening socket blocking for every worker until the next setblocking(False), and a worker whose
    accept loop ran in that window sat in accept() until the next client came (seen under the scaling
    bench with 4 workers: clients read by nobody)."""
    return socket.socket(sock.family, sock.type, sock.proto, fileno=os.dup(sock.fileno()))


def bind_listeners(s: Any, listen_addr: tuple[str, ...] | None = None, port: int | None = None,
                   unix_dir: str | None = None, unix_mode: int | None = None) -> list[socket.socket]:
    """The listening sockets, bound and listening, for worker processes to inherit (runtime/supervisor.py),
    and for start_listeners() where pgmux._streams accepts: synchronously, before any fork. The address,
    port, socket directory and mode are the settings' unless given."""
    listen_addr = s.listen_addr if listen_addr is None else listen_addr
    port = s.listen_port if port is None else port
    unix_dir = s.unix_socket_dir if unix_dir is None else unix_dir
    unix_mode = s.unix_socket_mode if unix_mode is None else unix_mode
    socks: list[socket.socket] = []
    try:
        if unix_dir:
            path = unix_socket_path(unix_dir, port)
            _remove_stale(path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.bind(path)
            except BaseException:
                sock.close()
                raise
            socks.append(sock)  # bound: ours to unlink on a failure below
            os.chmod(path, unix_mode)
            if s.unix_socket_group:
                os.chown(path, -1, group_id(s.unix_socket_group))
            sock.listen(s.listen_backlog)
            sock.setblocking(False)
        for host in _tcp_hosts(listen_addr):
            infos = socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0,
                                       socket.AI_PASSIVE)
            for family, kind, proto, _, addr in dict.fromkeys(infos):
                sock = socket.socket(family, kind, proto)
                socks.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if s.so_reuseport:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(addr)
                sock.listen(s.listen_backlog)
                tune_listener(sock, s)
                sock.setblocking(False)
    except BaseException:
        for sock in socks:
            if sock.family == socket.AF_UNIX:
                _unlink_quietly(unix_socket_path(unix_dir, port))
            sock.close()
        raise
    return socks


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _remove_stale(path: str) -> None:
    """A socket file left by a crash: removed when nobody answers there."""
    if not os.path.exists(path):
        return
    probe = socket.socket(socket.AF_UNIX)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)
    else:
        raise OSError(f"another process is listening on {path}")
    finally:
        probe.close()


async def start_private_listener(app: Any, path: str) -> asyncio.AbstractServer:
    """A worker's own Unix socket (mode 0600, in the supervisor's private directory): the other workers
    forward the CancelRequests of this worker's clients there, and ask its console for SHOW rows
    (runtime/worker.py, worker_admin.py)."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    if os.path.exists(path):
        os.unlink(path)  # this worker's predecessor's, killed
    srv = await asyncio.get_running_loop().create_unix_server(lambda: ClientProtocol(app), path)
    os.chmod(path, 0o600)
    return srv


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


def while_stopping(app: Any, servers: list[asyncio.AbstractServer]) -> list[asyncio.AbstractServer]:
    """Listeners made again (after a worker's accept pause, or RESUME), as App.shutdown leaves them: all
    while running, the console's Unix socket only while shutting down, none once finished (closed here)."""
    if not app.shutting_down and not app.finished:
        return servers
    keep = [] if app.finished else [srv for srv in servers if is_unix_listener(srv)]
    for srv in servers:
        if srv not in keep:
            srv.close()
    return keep


def is_unix_listener(srv: Any) -> bool:
    """A listener on a Unix socket (kept open for the admin console during a graceful shutdown)."""
    return any(sock.family == socket.AF_UNIX for sock in (getattr(srv, "sockets", None) or ()))
