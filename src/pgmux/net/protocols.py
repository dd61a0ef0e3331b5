"""asyncio.Protocol adapters: the thin edge between sockets and the sans-IO sessions.

Callback-based protocols, not streams: one Python call per read, no awaits on the data path.
Flow control: when a client's socket buffer fills, the server linked to it stops being read, and the
other way round, so a slow reader never makes pgmux buffer a whole result set.

Faults: data_received is the session's own method (one call per read), which catches what it raises
itself; every other callback here is guarded (`_guard`), and `loop_exception_handler` catches whatever
still reaches the event loop. Each logs the traceback through pgmux's logger (logfile and stderr,
daemon mode too) with the connection's identity, and closes that connection, the client with
XX000 internal error: never the traceback itself.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any

from pgmux.errors import PgmuxError
from pgmux.net.sockopts import tune_tcp
from pgmux.session.client import ClientSession
from pgmux.session.replication import ReplicationServer
from pgmux.session.server import ServerSession

log = logging.getLogger("pgmux")


def crashed(session: Any, exc: BaseException, where: str) -> None:
    """An unexpected exception in a callback of this connection: log it with the traceback, then close
    the connection (a client gets XX000 first; a server's client too). Never raises."""
    prefix = getattr(session, "prefix", "?")
    try:
        if isinstance(session, ServerSession):
            session.hub.server_crashed(session, exc)  # logs with both identities
        else:
            log.error("%s internal error in %s", prefix, where, exc_info=exc)
            if isinstance(session, ClientSession):
                session.fail(PgmuxError(f"internal error in pgmux: {type(exc).__name__}", sqlstate="XX000",
                                        severity="FATAL"))
    except Exception as e:  # noqa: BLE001 - the last resort: the socket at least must go
        log.error("%s closing after an internal error failed", prefix, exc_info=e)
        transport = getattr(session, "transport", None)
        if transport is not None:
            transport.abort()


def _guard(fn: Callable[..., None]) -> Callable[..., None]:
    """A protocol callback that logs and closes its connection instead of raising into the loop."""
    def guarded(self: Any, *args: Any) -> None:
        try:
            fn(self, *args)
        except Exception as e:  # noqa: BLE001 - see crashed()
            crashed(self.session, e, fn.__name__)
    guarded.__name__ = fn.__name__
    guarded.__doc__ = fn.__doc__
    return guarded


def loop_exception_handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """Whatever reaches the event loop (a callback, a task): logged through pgmux's logger with the
    connection's identity when the loop names its protocol, and that connection closed."""
    exc = context.get("exception")
    session = getattr(context.get("protocol"), "session", None)
    if session is not None and isinstance(exc, Exception):
        crashed(session, exc, "an event loop callback")
        return
    where = context.get("message", "unhandled error in the event loop")
    log.error("internal error: %s", where, exc_info=exc if isinstance(exc, BaseException) else None)


class ClientProtocol(asyncio.Protocol):
    # Slots: no __dict__ per connection (issue 11: memory per idle client). The `data_received` slot
    # holds the session's bound method, which uvloop calls directly.
    __slots__ = ("session", "data_received")

    def __init__(self, app: Any, session: ClientSession | None = None) -> None:
        # `session`: a client handed over from another process (runtime/handover.py), logged in and
        # idle already; connection_made() below only gives it its transport.
        self.session: Any = app.new_client() if session is None else session
        # uvloop looks data_received up once, before connection_made: bind the session's method here
        # so every read is one call straight into the session.
        self.data_received = self.session.data_received  # type: ignore[method-assign]

    # connection_made and connection_lost guard themselves (as _guard does): once per connection each,
    # without the wrapper's frame.
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        try:
            self.session.hub.accepted(self.session, transport)  # (runtime/logins.py, compiled)
        except Exception as e:  # noqa: BLE001 - see crashed()
            crashed(self.session, e, "connection_made")

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            self.session.connection_lost(exc)
        except Exception as e:  # noqa: BLE001 - see crashed()
            crashed(self.session, e, "connection_lost")

    @_guard
    def pause_writing(self) -> None:
        self.session.pause_writing()

    @_guard
    def resume_writing(self) -> None:
        self.session.resume_writing()


class ServerProtocol(asyncio.Protocol):
    """For a pooled server (ServerSession) and a replication client's own (session/replication.py)."""

    __slots__ = ("session", "settings", "data_received")

    def __init__(self, session: ServerSession | ReplicationServer, settings: Any = None) -> None:
        self.session = session
        if settings is None:  # tcp_* socket options; a pooled server's session knows them through its hub
            assert isinstance(session, ServerSession), "a replication server is given its settings"
            hub: Any = session.hub  # the runtime's App (session/hub.py does not list its config)
            settings = hub.config.settings
        self.settings = settings
        self.data_received = session.data_received  # type: ignore[method-assign]

    @_guard
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family != socket.AF_UNIX:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.session.local_port = sock.getsockname()[1]
            except OSError:
                pass
            tune_tcp(sock, self.settings)
        self.session.connection_made(transport)

    @_guard
    def connection_lost(self, exc: Exception | None) -> None:
        self.session.connection_lost(exc)

    @_guard
    def pause_writing(self) -> None:
        # The server reads slower than its client sends (a long COPY, a streamed message): stop reading
        # the client until the buffer drains, so what pgmux holds for it stays bounded.
        self.session.wpaused = True
        client = self.session.client
        if client is not None:
            client.throttle(True)

    @_guard
    def resume_writing(self) -> None:
        self.session.wpaused = False
        client = self.session.client
        if client is not None:
            client.throttle(False)
