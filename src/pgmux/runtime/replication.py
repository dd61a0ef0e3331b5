"""Replication clients (session/replication.py): a dedicated server connection each, within the pool limits.

As in PgBouncer 1.23+: a replication connection is not pooled and does not count towards pool_size, but
it counts towards max_db_connections and max_user_connections (the registry's `unpooled` counts), and
its client towards max_client_conn. When those limits leave no room, idle servers of the pools that
share the limit are closed first (PgBouncer's eviction); if that is not enough the client waits, like a
pooled client, up to query_wait_timeout, and takes the first room a closing server leaves.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from pgmux.errors import PgmuxError
from pgmux.net import connector
from pgmux.protocol import messages as m
from pgmux.session.replication import ReplicationServer
from pgmux.session.states import ClientState, ServerState

if TYPE_CHECKING:
    from pgmux.runtime.handoff import Handoff
    from pgmux.session.client import ClientSession

log = logging.getLogger("pgmux")

_EARLY_MAX = 1 << 20  # bytes a replication client may send before its server is ready


class Replication:
    def __init__(self, app: Handoff) -> None:
        self.app = app
        self.servers: dict[int, ReplicationServer] = {}
        self.waiting: list[ClientSession] = []  # clients the pool limits keep waiting for room
        self._retrying = False

    # -- login -------------------------------------------------------------------------------------
    def start(self, c: ClientSession) -> None:
        """`c` authenticated: open its server, or wait for room under the limits."""
        c.move(ClientState.REPLICATION)
        c.wait_since = self.app.now()
        if not self._room(c):
            self.waiting.append(c)
            log.info("%s replication connection waits: max_db_connections/max_user_connections reached", c.prefix)
            return
        self._open(c)

    def _room(self, c: ClientSession) -> bool:
        """Whether the shared limits allow one more server for `c`'s pool; closes idle servers of the
        pools under the same limits to make room when they do not."""
        app = self.app
        pool = c.logged_in_pool()
        reg = app.registry
        if reg.unpooled_headroom(pool) > 0:
            return True
        for other in reg:
            if other.database != pool.database and other.user != pool.user:
                continue
            while reg.unpooled_headroom(pool) <= 0 and (victim := other.take_oldest_idle()) is not None:
                app.close_server(victim, "evicted for a replication connection")
            if reg.unpooled_headroom(pool) > 0:
                return True
        return False

    def _open(self, c: ClientSession) -> None:
        app = self.app
        pool = c.logged_in_pool()
        db = app.config.database(pool.database)
        if db is None:
            c.fail(PgmuxError(f"no such database: {pool.database}", sqlstate="3D000", severity="FATAL"))
            return
        if pool.host is not None:  # one host's pool of a split database
            target = app.server_target(db, pool.user, host=pool.host)
        else:
            target = app.server_target(db, pool.user)
        # The server gets the client's startup packet as the client sent it (PostgreSQL applies it
        # itself), with the database line's user and database, and its defaults where the client has none.
        ignored = {i.lower() for i in app.config.settings.ignore_startup_parameters} - {"replication"}
        startup = dict(target.startup)
        startup.update({k: v for k, v in c.startup.items()
                        if k not in ("user", "database") and k.lower() not in ignored})
        startup["user"] = target.user
        startup["database"] = target.dbname
        sid = app.next_id
        app.next_id += 1
        srv = ReplicationServer(sid, self, c, pool, target, startup, c.replication, app.now())
        c.repl = srv
        self.servers[sid] = srv
        reg = app.registry
        reg.unpooled[(pool.database, pool.user)] = reg.unpooled.get((pool.database, pool.user), 0) + 1
        app.spawn(self._connect, srv, app.config.settings.server_connect_timeout)

    async def _connect(self, srv: ReplicationServer, timeout: float) -> None:
        t = srv.target
        try:  # as a pooled server's: TLS per server_tls_sslmode, socket options per tcp_*
            await connector.open_server(srv, timeout, self.app.tls, self.app.config.settings)
        except (TimeoutError, OSError) as e:
            why = "timeout" if isinstance(e, asyncio.TimeoutError) else (e.strerror or str(e))
            self.login_failed(srv, None, f"pgmux cannot connect to server {t.label}: {why}", "57P03")

    def ready(self, srv: ReplicationServer, z: bytes) -> None:
        """The server's login is done: the client's welcome is the server's own, with our key."""
        c = srv.client
        log.info("%s new replication connection to server (pid %d)", srv.prefix, srv.backend_pid)
        srv.link_time = self.app.now()
        out = [c.auth_ok, *srv.welcome, m.backend_key_data(c.cancel_pid, c.cancel_key), z]
        c.auth_ok = b""
        srv.welcome = []
        c.transport.write(b"".join(out))
        early, srv.early = srv.early, []
        if c.sbuf:  # pipelined behind the password, before the welcome
            early.insert(0, c.sbuf)
            c.sbuf = b""
        for data in early:
            srv.transport.write(data)

    def login_failed(self, srv: ReplicationServer, raw_error: bytes | None, message: str,
                     sqlstate: str = "08006") -> None:
        """The server refused the login (its ErrorResponse goes to the client as it is) or could not be
        reached."""
        c = srv.client
        log.warning("%s replication login failed: %s", srv.prefix, message)
        self._close(srv, f"server login failed: {message}")
        if c.state is ClientState.CLOSED:
            return
        if raw_error is not None:
            c.transport.write(c.auth_ok + raw_error)
            c.auth_ok = b""
            self.app.client_closed(c, f"server login failed: {message}")
        else:
            c.fail(PgmuxError(message, sqlstate=sqlstate, severity="FATAL"))

    # -- relay and the end -------------------------------------------------------------------------
    def client_data(self, c: ClientSession, data: bytes) -> None:
        srv = c.repl
        c.request_time = self.app.now()
        if srv is not None and srv.state is ServerState.ACTIVE:
            srv.forward(data)
            return
        # Before its welcome a client has little to say; what it pipelines is kept, within a bound.
        if len(c.sbuf) + len(data) + sum(len(d) for d in (srv.early if srv is not None else ())) > _EARLY_MAX:
            c.fail(PgmuxError("replication client sent too much before its connection was ready",
                              sqlstate="08P01", severity="FATAL"))
        elif srv is not None:
            srv.forward(data)
        else:
            c.sbuf += data

    def client_gone(self, c: ClientSession) -> None:
        """The client closed (client_closed): its server goes with it."""
        if c in self.waiting:
            self.waiting.remove(c)
        srv = c.repl
        if srv is not None:
            if srv.transport is not None and srv.state is ServerState.ACTIVE:
                try:
                    srv.transport.write(m.terminate())
                except Exception:  # noqa: BLE001 - closing is what matters
                    pass
            self._close(srv, "client left")

    def server_closed(self, srv: ReplicationServer, reason: str) -> None:
        """The server's socket closed: the client's connection ends too (as directly)."""
        c = srv.client
        self._close(srv, reason)
        if c.state is not ClientState.CLOSED:
            if srv.state is ServerState.LOGIN:
                c.fail(PgmuxError(f"server closed the connection during login: {reason}", sqlstate="08006",
                                  severity="FATAL"))
            else:
                self.app.client_closed(c, f"replication server closed: {reason}")

    def _close(self, srv: ReplicationServer, reason: str) -> None:
        if srv.id not in self.servers:
            return
        del self.servers[srv.id]
        srv.closed_reason = reason
        was = srv.state
        srv.move(ServerState.CLOSED)
        if srv.transport is not None:
            srv.transport.close()
        reg = self.app.registry
        key = (srv.pool.database, srv.pool.user)
        reg.unpooled[key] = reg.unpooled.get(key, 1) - 1
        if reg.unpooled[key] <= 0:
            del reg.unpooled[key]
        if was is not ServerState.LOGIN or srv.backend_pid:
            log.info("%s closing because: %s (age=%.0fs)", srv.prefix, reason, self.app.now() - srv.created_at)
        self.retry()

    def retry(self) -> None:
        """Room may have come free: the waiting replication clients, oldest first; then the pools."""
        if self._retrying:
            return
        self._retrying = True
        try:
            self._retry()
        finally:
            self._retrying = False

    def _retry(self) -> None:
        for c in list(self.waiting):
            if c.state is ClientState.CLOSED:
                self.waiting.remove(c)
            elif self._room(c):
                self.waiting.remove(c)
                self._open(c)
        for pool in self.app.registry:
            if pool.waiters:
                self.app.launch(pool)

    def tick(self, now: float) -> None:
        """The janitor's pass: query_wait_timeout for clients still waiting for room, and
        server_connect_timeout for a server login that does not end."""
        s = self.app.config.settings
        for srv in list(self.servers.values()):
            if srv.state is ServerState.LOGIN and 0 < s.server_connect_timeout < now - srv.connect_started:
                self.login_failed(srv, None, f"server connect timeout ({srv.target.label})", "57P03")
        timeout = s.query_wait_timeout
        if self.waiting:
            self.retry()
        for c in list(self.waiting):
            if timeout > 0 and now - c.wait_since >= timeout:
                self.waiting.remove(c)
                c.fail(PgmuxError("query_wait_timeout", sqlstate="08P01", severity="FATAL"))

    def cancel_target(self, c: ClientSession) -> tuple[Any, int, int] | None:
        srv = c.repl
        if srv is None or srv.state is not ServerState.ACTIVE:
            return None
        return srv.target, srv.backend_pid, srv.backend_key

    def close_all(self, reason: str) -> None:
        for srv in list(self.servers.values()):
            self.server_closed(srv, reason)
