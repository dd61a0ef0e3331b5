"""SUSPEND and RESUME, as PgBouncer has them (issue 14, item 5).

SUSPEND: pgmux stops accepting (the listening sockets stay open: new connections wait in the kernel's
queue, as PgBouncer's do), stops reading from every client and server connection but the consoles', opens
no server connection, and runs no timeout (PgBouncer skips its maintenance too). Then it waits until
every connection's socket buffer has been written out, and answers SUSPEND. A connection whose buffer is
still not written after suspend_timeout is dropped (PgBouncer's words: "A connection is dropped if the
flush does not succeed"). Nothing is lost meanwhile: bytes a client or a server sends wait in the
kernel's buffers, and a client's query waits until RESUME.

RESUME (the console, or SIGUSR2) undoes it: every connection is read again, the waiting clients get
servers, and the listeners accept again. SHUTDOWN ends a suspension first.

Unlike PgBouncer, consoles already connected are not suspended, so any of them may RESUME: a suspension
whose issuer went away is not a pooler stuck until a signal. A new console connection waits with the
other new connections, as in PgBouncer (it may come over a worker's private socket).

With `workers` > 1 the console sends SUSPEND and RESUME to every worker (runtime/worker_admin.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Any, Final

from pgmux.admin import errors, render
from pgmux.errors import PgmuxError
from pgmux.session.states import ClientState

log = logging.getLogger("pgmux")

FLUSH_POLL: Final = 0.02  # how often a suspension looks whether every socket buffer is written out


class Suspension:
    """App.suspension. `app.suspended` is the flag the sessions read (session/hub.Hub)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.held: list[socket.socket] = []  # copies of the listening sockets, open while not accepting
        self.generation = 0  # a RESUME before the flush is done: the waiting SUSPEND is answered at once

    # -- SUSPEND ----------------------------------------------------------------------------------------
    def suspend(self, issuer: Any) -> bytes | None:
        """The console's SUSPEND: an error now, or None and the reply once the buffers are written out."""
        app = self.app
        if app.shutting_down:
            return render.render_error(errors.shutting_down())
        if app.suspended or app.paused:
            return render.render_error(errors.already_paused())
        if any(p.paused for p in app.registry):
            return render.render_error(errors.cannot_suspend_with_paused())
        app.suspended = True
        self.generation += 1
        self.stop_accepting()
        self._reading()
        log.info("%s suspended: no connection is read but the consoles', no new connection accepted; waiting "
                 "for the socket buffers to be written out (suspend_timeout %gs)", issuer.prefix,
                 app.config.settings.suspend_timeout)
        app.spawn(self._flush, issuer, self.generation)
        return None

    def _reading(self) -> None:
        """Every connection but the consoles' stops reading (app.suspended) or starts again."""
        app = self.app
        for c in list(app.clients.values()):
            if not c.is_admin and c.state is not ClientState.CLOSED:
                c.suspend()
        for server in list(app.servers.values()):
            server.suspend(app.suspended)
        for repl in list(app.replication.servers.values()):  # replication streams
            repl.suspend(app.suspended)

    def stop_accepting(self) -> None:
        app = self.app
        share = app.share
        if share is None:  # one process: keep copies, so that the kernel keeps queueing new connections
            self.held = [socket.socket(fileno=os.dup(s.fileno())) for srv in app.listeners for s in srv.sockets]
        # (a worker's listeners are copies of the sockets the supervisor bound: closing them is enough)
        for srv in app.listeners:
            srv.close()
        app.listeners = []

    def _unflushed(self) -> list[Any]:
        app = self.app
        out: list[Any] = []
        for c in app.clients.values():
            if not c.is_admin and c.transport is not None and c.transport.get_write_buffer_size() > 0:
                out.append(c)
        for server in app.servers.values():
            if server.transport is not None and server.transport.get_write_buffer_size() > 0:
                out.append(server)
        return out

    async def _flush(self, issuer: Any, generation: int) -> None:
        app = self.app
        loop = asyncio.get_running_loop()
        deadline = loop.time() + app.config.settings.suspend_timeout
        while self._unflushed() and loop.time() < deadline and app.suspended and self.generation == generation:
            await asyncio.sleep(FLUSH_POLL)
        dropped = self._unflushed() if app.suspended and self.generation == generation else []
        for conn in dropped:
            why = "suspend_timeout: its socket buffer was not written out in time"
            if app.servers.get(conn.id) is conn:
                client = conn.client
                app.close_server(conn, why)
                if client is not None:  # its transaction is lost with the server
                    client.detach()
                    client.fail(PgmuxError(f"server connection dropped: {why}", sqlstate="08006",
                                           severity="FATAL"))
            else:
                app.client_closed(conn, why)
            if conn.transport is not None:
                conn.transport.abort()
        if dropped:
            log.warning("SUSPEND dropped %d connections whose socket buffers were not written out within "
                        "suspend_timeout", len(dropped))
        if issuer.state is not ClientState.CLOSED:
            app.admin.answer_later(issuer, render.render_ok("SUSPEND"))

    # -- RESUME -----------------------------------------------------------------------------------------
    async def resume(self) -> None:
        """RESUME (or SIGUSR2, or SHUTDOWN) while suspended: read everything again, accept again."""
        app = self.app
        if not app.suspended:
            return
        app.suspended = False
        self.generation += 1
        self._reading()
        for pool in list(app.registry):
            while pool.waiters and pool.idle:  # a server that came back meanwhile (KILL, a drop)
                server = pool.take_idle()
                if server is None:
                    break
                app.give(server)
            app.launch(pool)
        log.info("resumed: reading and accepting again")
        await self._accept_again()

    async def _accept_again(self) -> None:
        from pgmux.net.listen import serve_sockets, while_stopping

        app = self.app
        if app.share is not None:  # a worker: fresh copies of the inherited sockets
            if not app.share.accept_paused:  # (else the end of its pause for spreading clients does it)
                await app.share.resume_accepting()
            return
        if app.finished:
            self.close()
            return
        held, self.held = self.held, []
        app.listeners = while_stopping(app, await serve_sockets(app, held, app.config.settings.listen_backlog))
        if app.suspended:  # SUSPEND again while these were being made: held again, as the first time
            self.stop_accepting()

    def close(self) -> None:
        """The pooler exits: the held copies go too."""
        for sock in self.held:
            sock.close()
        self.held = []
