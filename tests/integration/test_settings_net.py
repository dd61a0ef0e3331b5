"""Network settings read back from pgmux's live sockets: tcp_keepalive, tcp_keepcnt, tcp_keepidle,
tcp_keepintvl, tcp_user_timeout and tcp_socket_buffer on client and server connections; listen_backlog,
tcp_defer_accept and so_reuseport on the listeners; unix_socket_group and unix_socket_mode on the socket
file. pgmux runs in this process (inprocess.py), so the test reads the very sockets it uses."""

from __future__ import annotations

import grp
import os
import socket
import subprocess
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from inprocess import run_in_process

from pgmux.net.listen import unix_socket_path
from pgmux.runtime.app import App
from pgmux.testing.cluster import HOST, PgCluster


def _opts(sock: Any) -> dict[str, int]:
    return {
        "keepalive": sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
        "keepcnt": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
        "keepidle": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
        "keepintvl": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
        "user_timeout": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
        "sndbuf": sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
        "rcvbuf": sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
    }


def _kernel_defaults() -> dict[str, int]:
    with socket.socket() as s:
        return _opts(s)


async def _live_socket_options(app: App) -> tuple[list[dict[str, int]], list[dict[str, int]]]:
    s = app.config.settings
    conn = await asyncpg.connect(host=HOST, port=s.listen_port, user="postgres", database="testdb",
                                 statement_cache_size=0)
    try:
        assert await conn.fetchval("SELECT 1") == 1  # session mode: the server stays linked to us
        clients = [_opts(c.transport.get_extra_info("socket")) for c in app.clients.values()]
        servers = [_opts(srv.transport.get_extra_info("socket")) for srv in app.servers.values()]
    finally:
        await conn.close()
    return clients, servers


def test_tcp_settings_reach_client_and_server_sockets(pg: PgCluster, tmp_path: Path) -> None:
    settings = {"tcp_keepalive": 1, "tcp_keepcnt": 4, "tcp_keepidle": 33, "tcp_keepintvl": 7,
                "tcp_user_timeout": 12345, "tcp_socket_buffer": 262144}
    seen: dict[str, Any] = {}

    async def body(app: App) -> None:
        seen["clients"], seen["servers"] = await _live_socket_options(app)

    run_in_process(pg, tmp_path, settings, body)
    assert len(seen["clients"]) == 1 and len(seen["servers"]) == 1
    for opts in seen["clients"] + seen["servers"]:
        assert (opts["keepalive"], opts["keepcnt"], opts["keepidle"], opts["keepintvl"]) == (1, 4, 33, 7)
        assert opts["user_timeout"] == 12345
        # Linux doubles the buffer sizes it is given (for its bookkeeping) and reports the doubled value.
        assert opts["sndbuf"] == opts["rcvbuf"] == 2 * 262144


def test_tcp_keepalive_off_and_defaults(pg: PgCluster, tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    async def body(app: App) -> None:
        seen["clients"], seen["servers"] = await _live_socket_options(app)

    run_in_process(pg, tmp_path, {"tcp_keepalive": 0, "tcp_keepcnt": 4}, body)
    defaults = _kernel_defaults()
    for opts in seen["clients"] + seen["servers"]:
        assert opts["keepalive"] == 0
        # keepcnt applies only with keepalive on, as in PgBouncer; the rest stay the kernel's.
        assert opts["keepcnt"] == defaults["keepcnt"] != 4
        assert opts["user_timeout"] == defaults["user_timeout"] == 0


def _listen_backlog(port: int) -> int:
    out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True,
                         timeout=10).stdout.split()
    assert out and out[0] == "LISTEN", out
    return int(out[2])  # Send-Q of a listening socket is its backlog


def _other_group() -> grp.struct_group:
    """A group this process may give the socket file: any group when root, else one of its own."""
    mine = os.getgid()
    candidates = [g for g in grp.getgrall() if g.gr_gid != mine] if os.getuid() == 0 else [
        grp.getgrgid(g) for g in os.getgroups() if g != mine]
    return candidates[0] if candidates else grp.getgrgid(mine)


def test_listener_settings(pg: PgCluster, tmp_path: Path) -> None:
    group = _other_group()
    sock_dir = Path(os.path.realpath("/tmp")) / f"pgmux-it-{os.getpid()}-{tmp_path.name}"[:40]
    sock_dir.mkdir()
    settings = {"listen_backlog": 37, "tcp_defer_accept": 1, "so_reuseport": 1,
                "unix_socket_dir": str(sock_dir), "unix_socket_mode": "0660", "unix_socket_group": group.gr_name}
    seen: dict[str, Any] = {}

    async def body(app: App) -> None:
        port = app.config.settings.listen_port
        seen["backlog"] = _listen_backlog(port)
        (tcp,) = [sock for srv in app.listeners for sock in srv.sockets if sock.family == socket.AF_INET]
        seen["defer"] = tcp.getsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT)
        st = os.stat(unix_socket_path(str(sock_dir), port))
        seen["gid"], seen["mode"] = st.st_gid, st.st_mode & 0o7777
        # so_reuseport: another socket that asks for SO_REUSEPORT may bind the same port.
        with socket.socket() as other:
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            other.bind((HOST, port))
        conn = await asyncpg.connect(host=HOST, port=port, user="postgres", database="testdb")
        seen["one"] = await conn.fetchval("SELECT 1")  # tcp_defer_accept: a real client still gets in
        await conn.close()

    try:
        run_in_process(pg, tmp_path, settings, body)
    finally:
        for p in sock_dir.iterdir():
            p.unlink()
        sock_dir.rmdir()
    assert seen["backlog"] == 37
    assert seen["defer"] > 0
    assert (seen["gid"], seen["mode"]) == (group.gr_gid, 0o660)
    assert seen["one"] == 1


def test_listener_defaults(pg: PgCluster, tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    async def body(app: App) -> None:
        port = app.config.settings.listen_port
        seen["backlog"] = _listen_backlog(port)
        (tcp,) = [sock for srv in app.listeners for sock in srv.sockets]
        seen["defer"] = tcp.getsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT)
        with socket.socket() as other, pytest.raises(OSError):  # no so_reuseport: the port is taken
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            other.bind((HOST, port))

    run_in_process(pg, tmp_path, {"tcp_defer_accept": 0}, body)
    assert seen["backlog"] == 128  # PgBouncer's default
    assert seen["defer"] == 0
