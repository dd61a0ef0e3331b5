"""Server connections: open (and on which host), log in, health (check query), fail, close, and come
back from a client (return_server, give). The layer of the hub above core.Core (see core.py)."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from typing import Any

from pgmux.config.model import DatabaseConfig, HostConfig
from pgmux.errors import PgmuxError
from pgmux.net import connector
from pgmux.net.connector import default_unix_dir
from pgmux.pooling import backoff
from pgmux.pooling.pool import Pool
from pgmux.protocol import messages as m
from pgmux.runtime.core import Core
from pgmux.session.client import ClientSession
from pgmux.session.server import ServerSession, ServerTarget
from pgmux.session.states import S_ACTIVE, S_IDLE, ServerState

log = logging.getLogger("pgmux")


class Servers(Core):
    def launch(self, pool: Pool[Any, Any]) -> None:
        if self.shedding or self.paused or pool.paused or self.suspended:
            return
        now = self.now()
        if pool.no_room_until > now:  # (workers: the shared limits said no a moment ago; asked again at the tick)
            return
        headroom = self.registry.headroom(pool)
        if headroom < 1 << 20 and (pool.waiters or pool.login_waiters):  # a shared limit, clients waiting
            need = pool.queued_demand(now)
            if need > headroom:
                victims = self.registry.evictable(pool, need)
                for victim in victims:
                    self.close_server(victim, "evicted: another pool of the database or user needs "
                                              "the connection (max_db_connections/max_user_connections)",
                                      relaunch=False)
                if victims:  # (asked again only then: with workers each answer takes the shared lock)
                    headroom = self.registry.headroom(pool)
        n = pool.wanted(now, headroom)
        for _ in range(n):
            self._open_server(pool)

    def check_server(self, server: ServerSession) -> None:
        """Run server_check_query on an idle server taken from its pool (state TESTED until it answers)."""
        q = self.config.settings.server_check_query
        server.move(ServerState.TESTED)
        # PgBouncer's "<empty>" means an empty query: the cheapest round trip there is.
        server.send_internal("" if q == "<empty>" else q)

    def _open_server(self, pool: Pool[Any, Any]) -> None:
        db = self.config.database(pool.database)
        if db is None:
            return
        sid = self.next_id
        self.next_id += 1
        if pool.host is not None:  # one host's pool of a split database
            target = self.server_target(db, pool.user, host=pool.host)
        else:
            # host=a,b,c: load_balance_hosts=round-robin (the default) takes one step per new
            # connection; =disable stays on a host until a connection to it fails (login_failed).
            turn = self.host_turn.get((pool.database, pool.user), 0)
            if db.load_balance_hosts != "disable":
                self.host_turn[(pool.database, pool.user)] = turn + 1
            target = self.server_target(db, pool.user, turn)
        # `self` is the App, whose layers together implement the hub port (core.Core derives from it).
        server = ServerSession(sid, self, pool, target, self.now(), self.prepared,
                               self.config.settings.max_prepared_statements)
        self.servers[sid] = server
        pool.add_server(server)
        pool.connecting += 1
        timeout = self.config.settings.server_connect_timeout
        self.spawn(self._connect, server, timeout)

    async def _connect(self, server: ServerSession, timeout: float) -> None:
        try:
            await connector.open_server(server, timeout, self.tls, self.config.settings)
        except (TimeoutError, OSError) as e:
            why = "timeout" if isinstance(e, asyncio.TimeoutError) else (e.strerror or str(e))
            # Nothing listening (refused, or no socket file): cheap to ask again soon (pooling/backoff.py).
            refused = isinstance(e, (ConnectionRefusedError, FileNotFoundError)) or \
                getattr(e, "errno", None) in (errno.ECONNREFUSED, errno.ENOENT)
            self.login_failed(server, PgmuxError(
                f"pgmux cannot connect to server {server.target.label}: {why}", sqlstate="57P03",
                severity="FATAL"), refused)

    def server_target(self, db: DatabaseConfig, user: str, turn: int = 0, *,
                host: HostConfig | None = None) -> ServerTarget:
        port = db.port
        if host is not None:
            hostname, port = host.host, host.port
        else:
            hostname = db.hosts[turn % len(db.hosts)] if db.hosts else None
            if db.ports and db.hosts:  # one port per host
                port = db.ports[turn % len(db.ports)]
        unix_path = None
        if hostname is None or hostname.startswith("/"):
            unix_path = os.path.join(hostname or default_unix_dir(), f".s.PGSQL.{port}")
        password = db.password if db.user else None
        if password is None:
            password = self.config.userlist.get(user) or self.auth_secrets.get(user)
        startup: dict[str, str] = {}
        for key, pname in (("application_name", "application_name"), ("client_encoding", "client_encoding"),
                           ("datestyle", "DateStyle"), ("timezone", "TimeZone")):
            value = getattr(db, key)
            if value:
                startup[pname] = value
        return ServerTarget(host=hostname, port=port, unix_path=unix_path, dbname=db.target_dbname, user=user,
                            password=password, startup=startup, connect_query=db.connect_query,
                            scram_keys=None if db.user else self.scram_keys.get(user))

    def server_login_done(self, server: ServerSession) -> None:
        pool = server.pool
        pool.connecting -= 1
        pool.last_login_failure = None
        pool.login_failures = 0
        pool.login_failure_kind = ""
        pool.login_error = ""
        log.info("%s new connection to server (pid %d)", server.prefix, server.backend_pid)
        self.events.server_opened(server)
        cq_error = server.take_error()
        if cq_error is not None:  # connect_query failed: say so, and don't blame a later query
            log.warning("%s connect_query failed: %s", server.prefix, cq_error.get("M"))
        if pool.server_params is None:
            pool.server_params = dict(server.params)
            for name in self.tracked_extra:
                if name not in pool.server_params:
                    log.warning("%s track_extra_parameters: the server does not report %s (no ParameterStatus), "
                                "so it cannot be tracked that way; SET %s is followed as SQL instead",
                                server.prefix, name, name)
        waiters = pool.take_login_waiters()
        for c in waiters:
            self.welcome(c, launch=False)  # (a probe waits for this server, given next)
        self.give(server)
        if pool.waiters:
            self.launch(pool)

    def login_failed(self, server: ServerSession, err: PgmuxError, refused: bool = False) -> None:
        pool = server.pool
        if server.state is ServerState.LOGIN:
            pool.connecting -= 1
        kind = backoff.kind_of(err.sqlstate, refused)
        if kind != pool.login_failure_kind:  # e.g. refused, then "starting up": it is coming, start over
            pool.login_failure_kind = kind
            pool.login_failures = 0
        pool.login_failures += 1
        pool.retry_delay = backoff.retry_delay(kind, pool.login_failures, pool.limits.server_login_retry)
        pool.last_login_failure = self.now()
        pool.login_error = err.message
        log.warning("%s server login failed: %s (next attempt in %.1fs at the earliest)", server.prefix,
                    err.message, pool.retry_delay)
        db = self.config.database(pool.database)
        if db is not None and db.load_balance_hosts == "disable" and pool.host is None:
            key = (pool.database, pool.user)  # the next connection tries the next host of the list
            self.host_turn[key] = self.host_turn.get(key, 0) + 1
        self._drop_server(server, f"server login failed: {err.message}")
        if pool.hstate is not None and self.routing.login_failed(pool, err):
            return  # a host of a split database is down: its clients were routed elsewhere
        waiters = pool.take_login_waiters()
        for c in waiters:
            c.fail(err, close=True)  # still logging in: an ERROR must end the connection too
        if not pool.servers and kind == backoff.REJECTED:
            # The server refused us (a password, a database...): nothing can serve the queued queries
            # until that changes; say so now instead of letting them hang until query_wait_timeout.
            # A server that is down or restarting is retried soon, and its queue waits (told so after
            # query_wait_notify, failed after query_wait_timeout: runtime/timeouts.py).
            for c in list(pool.waiters):
                pool.remove_waiter(c)
                c.fail(PgmuxError(err.message, sqlstate=err.sqlstate, severity="FATAL"))

    def server_failed(self, server: ServerSession, err: PgmuxError) -> None:
        if server.state is ServerState.LOGIN:
            self.login_failed(server, err)
            return
        client = server.client
        self.close_server(server, f"server protocol error: {err.message}")
        if client is not None:
            client.fail(PgmuxError("server conn crashed?", sqlstate="08006", severity="FATAL"))

    def server_crashed(self, server: ServerSession, exc: BaseException) -> None:
        """An unexpected exception while handling a server's bytes (or a client's, handed on from
        there): logged with both identities and the traceback; the server is closed and its client
        gets XX000 and is closed too, since neither is in a known state."""
        client = server.client
        who = server.prefix if client is None else f"{server.prefix} (client {client.prefix})"
        self.log_exception(who, exc)
        err = PgmuxError(f"internal error in pgmux: {type(exc).__name__}", sqlstate="XX000", severity="FATAL")
        try:
            self.close_server(server, err.message)
        finally:
            if client is not None:
                client.fail(err)

    def server_closed(self, server: ServerSession, reason: str) -> None:
        """The server's socket closed under us."""
        if server.state is ServerState.LOGIN:
            self.login_failed(server, PgmuxError(f"server closed the connection during login: {reason}",
                                                  sqlstate="08006", severity="FATAL"))
            return
        client = server.client
        self._drop_server(server, reason)
        if client is not None:
            client.detach()
            client.fail(PgmuxError("server conn crashed?", sqlstate="08006", severity="FATAL"))
        if server.pool.hstate is not None:  # a host of a split database: is it going away?
            self.routing.suspect(server.pool)
        self.launch(server.pool)

    def close_server(self, server: ServerSession, reason: str, relaunch: bool = True) -> None:
        if server.state is ServerState.CLOSED:
            return
        if server.state is ServerState.LOGIN:
            server.pool.connecting -= 1
        if server.transport is not None:
            try:
                    server.transport.write(m.terminate())
            except Exception:  # noqa: BLE001 - the socket may already be gone; closing is what matters
                pass
            server.transport.close()
        self._drop_server(server, reason)
        if relaunch:
            self.launch(server.pool)

    def _drop_server(self, server: ServerSession, reason: str) -> None:
        if server.state is ServerState.CLOSED:
            return
        server.move(ServerState.CLOSED)
        server.closed_reason = reason
        if server.transport is not None:
            server.transport.close()
        server.pool.remove_server(server)
        self.servers.pop(server.id, None)
        server.queue.clear()
        if server.stmts is not None:
            server.stmts.forget_all()
        log.info("%s closing because: %s (age=%.0fs)", server.prefix, reason, self.now() - server.created_at)
        self.events.server_closed(server, reason)
        client = server.client
        if client is not None and client.server is server:
            client.detach()
        self.after_change()

    def worn(self, server: ServerSession, now: float) -> str:
        """Why a server coming back from a client must be closed instead of reused ("" when it may be)."""
        if server.close_needed:
            return "server close needed"
        if self.shedding:
            return "pgmux shutdown"
        lifetime = server.pool.limits.server_lifetime
        if lifetime > 0 and now - server.created_at >= lifetime:
            return "server lifetime over"
        return ""

    def return_server(self, server: ServerSession, leaving: bool = False, now: float | None = None) -> None:
        """A clean server comes back from a client. Session mode (or server_reset_query_always)
        runs server_reset_query first."""
        s = self.config.settings
        pool = server.pool
        if now is None:
            now = self.now()
        why = self.worn(server, now)
        if why:
            self.close_server(server, why)
            return
        if s.server_reset_query and (leaving and pool.mode == "session" or s.server_reset_query_always):
            server.move(ServerState.TESTED)
            if any(w in s.server_reset_query.upper() for w in ("DISCARD ALL", "DEALLOCATE ALL")):
                if server.stmts is not None:
                    server.stmts.forget_all()
                server.sql.clear()
            if any(w in s.server_reset_query.upper() for w in ("DISCARD ALL", "RESET ALL")):
                for k in server.extra:  # the reset puts them back to their defaults
                    server.params.pop(k, None)
                server.extra.clear()
                server.sig = None
            server.send_internal(s.server_reset_query)
            return
        self.give(server, now)

    def give(self, server: ServerSession, now: float | None = None) -> None:
        """A clean, logged-in server: to the oldest waiter, else idle in its pool."""
        pool = server.pool
        if now is None:
            now = self.now()
        if self.paused or pool.paused or self.shedding:
            # PAUSE: servers are let go as their transactions finish; PAUSE returns once none is left.
            self.close_server(server, "pgmux shutdown" if self.shedding else "pause requested")
            return
        if pool.over_size():  # a reload lowered pool_size: no reuse beyond it
            self.close_server(server, "too many servers in the pool")
            return
        waiter: ClientSession | None = pool.put(server, now)  # typed: attach() called natively
        if waiter is not None:
            if server.state is not S_ACTIVE:  # (ACTIVE to ACTIVE, the usual case, is legal)
                server.move(S_ACTIVE)
            st = pool.stats
            st.server_assignment_count += 1
            st.wait_secs += now - waiter.wait_since
            if st.timing is not None:
                st.timing.wait.observe(now - waiter.wait_since)
            waiter.attach(server, now)
            return
        server.move(S_IDLE)
        if self.waiting_admin or self.shutting_down:
            self.after_change()
