"""`pgmux -R` (`--reboot`): PgBouncer's online restart, a new pgmux process taking over from the running
one without closing the port, and (beyond PgBouncer) without dropping its clients.

As PgBouncer does, the new process finds the old one through its Unix socket (unix_socket_dir and
listen_port of the same configuration) and talks to its console as the same OS user. The exchange:

1. new: listens on `<socket>.takeover` and `<socket>.handover` in unix_socket_dir (mode 0600), then sends
   TAKEOVER on the old one's console;
2. old: connects to `<socket>.takeover`, checks that the process listening there runs as its own OS user
   (SO_PEERCRED), and sends its listening sockets (SCM_RIGHTS, net/fdpass.py);
3. new: accepts on them at once (App.start with the inherited sockets) and answers `Y`;
4. old: stops accepting (its copies closed; the socket files are the new one's now), answers TAKEOVER,
   and hands its clients over to `<socket>.handover` as a worker replaced in a rolling restart does
   (runtime/retire.py: each between two transactions; clients that cannot move finish here); it exits
   when no pooled client is left, leaving the pidfile to the new process.

No moment without a process accepting, and no connection refused. Without a running pgmux at that socket,
-R starts normally (as PgBouncer's). Not with workers > 1, whose RESTART replaces workers without dropping
clients (runtime/rolling.py), and only with unix_socket_dir set (the socket is how the old one is found).
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
from typing import Any, Final

from pgmux.admin import render
from pgmux.errors import PgmuxError
from pgmux.net import fdpass
from pgmux.net.listen import unix_socket_path

log = logging.getLogger("pgmux")

MAGIC: Final = b"PGML"
_COUNT: Final = struct.Struct("!4sII")  # magic, listening sockets, metrics_listen sockets
WAIT: Final = 10.0  # seconds each step of the exchange may take


def paths(settings: Any) -> tuple[str, str, str]:
    """(the old process's Unix socket, where the listeners go, where the clients go)."""
    sock = unix_socket_path(settings.unix_socket_dir, settings.listen_port)
    return sock, sock + ".takeover", sock + ".handover"


def refusal(settings: Any) -> str:
    """Why -R cannot take over with these settings ("" when it can try)."""
    if settings.workers > 1:
        return "-R is not for workers > 1: RESTART on the console replaces the workers without dropping clients"
    if not settings.unix_socket_dir:
        return "-R finds the running pgmux through its Unix socket: set unix_socket_dir"
    return ""


# -- the old process -----------------------------------------------------------------------------------

def console(app: Any, c: Any, verb: str) -> bytes | None:
    """TAKEOVER (sent by `pgmux -R`): answered once the listening sockets are given. RESTART in one process:
    refused (runtime/worker_admin.py runs it with workers)."""
    if verb == "RESTART":
        return render.render_error(PgmuxError(
            "RESTART replaces worker processes one at a time, handing clients over; this pgmux is one "
            "process (workers = 1)", sqlstate="0A000",
            hint="set workers = 2 or more, or start a new pgmux with -R (it takes this one's clients over)"))
    why = refusal(app.config.settings)
    if not why and not (c.is_unix and c.peer_uid == os.getuid()):
        why = "TAKEOVER is pgmux -R's, over the Unix socket as pgmux's own OS user"
    if not why and (app.shutting_down or not app.listeners or app.suspended):
        why = "this pgmux is not accepting (shutting down, suspended, or given over already)"
    if why:
        return render.render_error(PgmuxError(why, sqlstate="55000"))
    app.spawn(_give, app, c)
    return None


async def _give(app: Any, c: Any) -> None:
    from pgmux.runtime.retire import Retirement

    _, lpath, hpath = paths(app.config.settings)
    try:
        conn = await fdpass.connect(lpath, WAIT)
        try:
            fds = [sock.fileno() for srv in app.listeners for sock in srv.sockets]  # type: ignore[attr-defined]
            http = app.web.http if app.web is not None else None  # metrics_listen goes along (runtime/web.py)
            mfds = [sock.fileno() for srv in http.servers for sock in srv.sockets] if http is not None else []
            await fdpass.send_fds_with(conn, _COUNT.pack(MAGIC, len(fds), len(mfds)), fds + mfds)
            if await asyncio.wait_for(fdpass.recv_exact(conn, 1), WAIT + 5) != b"Y":
                raise PgmuxError("the new process did not take the sockets")
        finally:
            conn.close()
    except (OSError, TimeoutError, PgmuxError) as e:
        log.error("TAKEOVER failed, serving on: %s", e)
        app.admin.answer_later(c, render.render_error(PgmuxError(f"TAKEOVER failed: {e}", sqlstate="58000")))
        return
    log.info("TAKEOVER: a new pgmux (-R) accepts on the listening sockets now; handing the clients over")
    app.listeners_given = True  # the socket files are the new process's: not removed at the exit
    if app.web is not None:
        app.web.given()  # metrics_listen is the new process's too
    Retirement(app, hpath, f"pgmux (pid {os.getpid()})").begin()
    app.admin.answer_later(c, render.render_ok("TAKEOVER"))


