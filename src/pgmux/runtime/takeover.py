"""`pgmux -R`, the new process's side (runtime/reboot.py has the exchange and the old process's side):
take the running pgmux's listening sockets, start on them, and take its clients on."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import TYPE_CHECKING, Any

from pgmux.errors import PgmuxError
from pgmux.net import fdpass
from pgmux.runtime.reboot import _COUNT, MAGIC, WAIT, paths

if TYPE_CHECKING:
    from pgmux.runtime.app import App

log = logging.getLogger("pgmux")


async def take_over(app: App) -> Any:
    """Instead of app.start(): take the running pgmux's listening sockets and start on them; the clients'
    receiver (runtime/handover.Adopting), or None when no pgmux answers at the Unix socket (start
    normally). Raises OSError/PgmuxError/TimeoutError on a failure after the old one was found (it keeps
    running: nothing was taken)."""
    from pgmux.net.probe import Probe
    from pgmux.runtime.handover import start_adopting

    s = app.config.settings
    sock_path, lpath, hpath = paths(s)
    if not os.path.exists(sock_path):
        log.info("-R: no pgmux listens at %s: starting normally", sock_path)
        return None
    receiver = fdpass.listen(lpath)
    try:
        try:
            probe = await asyncio.wait_for(Probe.open(s.unix_socket_dir, s.listen_port, "pgbouncer", None,
                                                      "pgbouncer", "", application_name="pgmux -R"), WAIT)
        except (OSError, TimeoutError) as e:
            log.info("-R: no pgmux answers at %s (%s): starting normally", sock_path, e)
            return None
        try:
            answer = asyncio.get_running_loop().create_task(probe.query_reply("TAKEOVER"))
            conn, _ = await asyncio.wait_for(asyncio.get_running_loop().sock_accept(receiver), WAIT)
            try:
                conn.setblocking(False)
                sockets = await asyncio.wait_for(_receive(conn), WAIT)
                await app.start(sockets)
                adopting = await start_adopting(app, hpath)
                await fdpass.send_all(conn, b"Y")
            finally:
                conn.close()
            await asyncio.wait_for(answer, WAIT)
        finally:
            probe.close()
    finally:
        receiver.close()
        _unlink(lpath)
    log.info("-R: took over the listening sockets; the old process hands its clients over and exits")
    return adopting


async def _receive(conn: socket.socket) -> list[socket.socket]:
    data, fds = await fdpass.recv_fds_with(conn, _COUNT.size, 64)
    magic, n = _COUNT.unpack(data)
    if magic != MAGIC or n != len(fds) or n == 0:
        for fd in fds:
            os.close(fd)
        raise PgmuxError("-R: the old process sent no listening sockets", sqlstate="08P01")
    return [socket.socket(fileno=fd) for fd in fds]


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
