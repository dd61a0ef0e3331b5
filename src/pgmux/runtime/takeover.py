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
        loop = asyncio.get_running_loop()
        try:
            answer = loop.create_task(probe.query_reply("TAKEOVER"))
            accept = loop.create_task(loop.sock_accept(receiver))
            done, _ = await asyncio.wait({answer, accept}, timeout=WAIT, return_when=asyncio.FIRST_COMPLETED)
            if accept not in done:  # the old one refused (its reason), or said nothing
                accept.cancel()
                why = answer.exception() if answer in done else None
                raise PgmuxError(f"the running pgmux did not give its sockets: {why or 'no answer'}")
            conn, _ = accept.result()
            try:
                conn.setblocking(False)
                sockets, metrics = await asyncio.wait_for(_receive(conn), WAIT)
                await app.start(sockets)
                if app.web is not None:
                    await app.web.start(metrics)  # metrics_listen: the old one's socket, else bound anew
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


async def _receive(conn: socket.socket) -> tuple[list[socket.socket], list[socket.socket]]:
    """The old process's listening sockets, and its metrics_listen sockets."""
    data, fds = await fdpass.recv_fds_with(conn, _COUNT.size, 64)
    magic, n, m = _COUNT.unpack(data)
    if magic != MAGIC or n + m != len(fds) or n == 0:
        for fd in fds:
            os.close(fd)
        raise PgmuxError("-R: the old process sent no listening sockets", sqlstate="08P01")
    socks = [socket.socket(fileno=fd) for fd in fds]
    return socks[:n], socks[n:]


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
