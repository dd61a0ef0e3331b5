"""The running pooler: the hub every session reports to, and the owner of pools and listeners.

Sessions (sans-IO) call the hub for every decision that involves more than one connection; the hub
asks the pool core (pure, given `now`) and acts: links, releases, opens and closes connections.
Timeouts are checked by a janitor tick, as PgBouncer does, instead of a timer per connection.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from collections.abc import Callable, Coroutine
from typing import Any, Final

from pgmux import __version__
from pgmux.config import diff, load_config
from pgmux.config.model import Config, DatabaseConfig, HostConfig
from pgmux.errors import PgmuxError
from pgmux.net import connector
from pgmux.net.connector import default_unix_dir
from pgmux.net.listen import start_listeners, unix_socket_path
from pgmux.pooling.pool import Pool, PoolLimits
from pgmux.pooling.registry import Registry
from pgmux.protocol import messages as m
from pgmux.protocol.auth import ClientAuthenticator
from pgmux.runtime.routing import Routing, is_split
from pgmux.runtime.timeouts import check_timeouts
from pgmux.session.client import ClientSession
from pgmux.session.params import startup_params
from pgmux.session.prepared import ClientStatements
from pgmux.session.prepared import Registry as StatementRegistry
from pgmux.session.server import ServerSession, ServerTarget
from pgmux.session.states import C_ACTIVE, C_IDLE, C_WAITING, S_ACTIVE, S_IDLE, ClientState, ServerState

log = logging.getLogger("pgmux")

ADMIN_DATABASES: Final = ("pgbouncer", "pgmux")
TICK: Final = 0.2


class App:
    def __init__(self, config: Config, config_path: str) -> None:
        self.config = config
        self.config_path = config_path
        self.registry = Registry()
        self.clients: dict[int, ClientSession] = {}
        self.servers: dict[int, ServerSession] = {}
        self.by_cancel: dict[int, ClientSession] = {}
        self.next_id = 1
        self.listeners: list[asyncio.AbstractServer] = []
        self.paused = False
        self.shutting_down = False
        self.stopped: asyncio.Future[None] | None = None
        self.start_time = time.time()
        self.admin: Any = None  # set by start(): the admin console service
        self.waiting_admin: list[tuple[ClientSession, str, Any]] = []  # PAUSE/WAIT_CLOSE answered later
        # SCRAM keys a client proved against a stored verifier, per user: pgmux logs in to PostgreSQL
        # with them when auth_file holds only the server's own verifier (PgBouncer's pass-through).
        self.scram_keys: dict[str, tuple[bytes, bytes]] = {}
        self._janitor: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.host_turn: dict[tuple[str, str], int] = {}
        self.tick_hooks: list[Any] = []  # called after each janitor pass (log flushing)
        self._random = b""
        # Protocol-level prepared statements of every pool, by (query, types): names unique per process.
        self.prepared = StatementRegistry()
        self.routing = Routing(self)  # read/write split databases: per-host pools, health, failover
        self.sigs: dict[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]] = {}  # ClientSession.attach
        # The two ways out of the synchronous core, as attributes so that tests drive it without a loop
        # or a clock (tests/unit/fakes.py): the clock, and "run this coroutine function in the background".
        self.now: Callable[[], float] = time.monotonic
        self.spawn: Callable[..., None] = self._start_task
        self._apply_limits()

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        from pgmux.runtime.admin_service import AdminService

        self.admin = AdminService(self)
        s = self.config.settings
        self.stopped = asyncio.get_running_loop().create_future()
        self.listeners = await start_listeners(self, s.listen_addr, s.listen_port, s.unix_socket_dir,
                                               getattr(s, "unix_socket_mode", 0o777))
        self._janitor = asyncio.get_running_loop().create_task(self._janitor_loop())
        for db in self.config.databases.values():
            if db.user and db.name != "*" and is_split(db):  # checks as the forced user, from the start
                self.routing.split_for(db, db.user, db.password if db.password is not None
                                       else self.config.userlist.get(db.user))
        for w in self.config.warnings:
            log.warning("%s", w)
        log.info("listening on %s port %d%s", ",".join(s.listen_addr) or "(no tcp)", s.listen_port,
                 f" and unix socket in {s.unix_socket_dir}" if s.unix_socket_dir else "")

    async def wait_stopped(self) -> None:
        assert self.stopped is not None
        await self.stopped

    def shutdown(self, immediate: bool = False) -> None:
        """INT/TERM: stop accepting, let transactions finish, then exit. QUIT: exit now."""
        if self.shutting_down and not immediate:
            return
        self.shutting_down = True
        log.info("shutting down%s", " immediately" if immediate else " gracefully")
        for srv in self.listeners:
            srv.close()
        if immediate:
            self._finish_shutdown()

    def _finish_shutdown(self) -> None:
        for c in list(self.clients.values()):
            c.fail(PgmuxError("pgmux is shutting down", sqlstate="57P01", severity="FATAL"))
        for srv in list(self.servers.values()):
            self.close_server(srv, "pgmux shutdown")
        self.routing.stop()
        if self._janitor is not None:
            self._janitor.cancel()
        unix_dir = self.config.settings.unix_socket_dir
        if unix_dir:
            try:
                os.unlink(unix_socket_path(unix_dir, self.config.settings.listen_port))
            except OSError:
                pass
        if self.stopped is not None and not self.stopped.done():
            self.stopped.set_result(None)

    def _start_task(self, fn: Callable[..., Coroutine[Any, Any, None]], *args: Any) -> None:
        task = asyncio.get_running_loop().create_task(fn(*args))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- logging ---------------------------------------------------------------------------------
    def log_exception(self, prefix: str, exc: BaseException) -> None:
        log.error("%s internal error", prefix, exc_info=exc)

    # -- clients ---------------------------------------------------------------------------------
    def new_client(self) -> ClientSession:
        cid = self.next_id
        self.next_id += 1
        c = ClientSession(cid, self, self.now(), self.config.settings.max_packet_size)
        self.clients[cid] = c
        return c

    def login(self, c: ClientSession, params: dict[str, str]) -> None:
        cfg = self.config
        s = cfg.settings
        user = params.get("user", "")
        if not user:
            raise PgmuxError("no PostgreSQL user name specified in startup packet", sqlstate="28000",
                             severity="FATAL")
        dbname = params.get("database") or user
        c.set_identity(dbname, user)
        if self.shutting_down:
            raise PgmuxError("pgmux is shutting down", sqlstate="57P03", severity="FATAL")
        if len(self.clients) > s.max_client_conn:
            raise PgmuxError("no more connections allowed (max_client_conn)", sqlstate="53300", severity="FATAL")
        self._new_cancel_key(c)
        if dbname in ADMIN_DATABASES:
            self._admin_login(c, user)
            return
        db = cfg.database(dbname)
        if db is None:
            raise PgmuxError(f'no such database: {dbname}', sqlstate="3D000", severity="FATAL",
                             hint="add it to [databases] in the pgmux configuration, or a \"*\" fallback line")
        server_user = db.user or user
        if is_split(db):  # one pool per host; each transaction is routed (runtime/routing.py)
            password = db.password if db.user else cfg.userlist.get(server_user)
            pool = self.routing.login_pool(c, db, server_user, password)
        else:
            pool = self.registry.get_or_create(dbname, server_user, lambda: self._pool_setup(db, server_user))
        if pool.disabled:
            raise PgmuxError(f"database \"{dbname}\" is disabled", sqlstate="57P03",  # PgBouncer's words
                             severity="FATAL")
        c.pool = pool
        pool.refuse_pins = db.pin_mode == "refuse"
        auth_type = s.auth_type
        if auth_type in ("hba", "cert", "pam", "ldap"):
            raise PgmuxError(f"auth_type {auth_type} is not supported by pgmux yet", sqlstate="28000",
                             severity="FATAL")
        c.auth = ClientAuthenticator(auth_type, user, cfg.userlist.get(user))
        try:
            c.params = startup_params(params, s.ignore_startup_parameters)
        except ValueError as e:
            raise PgmuxError(f"unsupported startup parameter: {e}", sqlstate="08P01", severity="FATAL") from e
        c.watch = pool.mode != "session"
        if pool.mode != "session" and s.max_prepared_statements > 0:
            c.stmts = ClientStatements(self.prepared, pool.stats)

    def _admin_login(self, c: ClientSession, user: str) -> None:
        s = self.config.settings
        c.is_admin = True
        if c.is_unix and c.peer_uid is not None and c.peer_uid == os.getuid():
            c.admin_level = "admin"  # same OS user over the Unix socket, as PgBouncer allows
            c.auth = ClientAuthenticator("any", user, None)  # "trust" would still want the user in auth_file
            return
        if user in s.admin_users:
            c.admin_level = "admin"
        elif user in s.stats_users:
            c.admin_level = "stats"
        else:
            raise PgmuxError(f'not allowed: user "{user}" is in neither admin_users nor stats_users',
                             sqlstate="28000", severity="FATAL")
        c.auth = ClientAuthenticator(s.auth_type if s.auth_type in ("trust", "any", "plain", "md5", "scram-sha-256")
                                     else "md5", user, self.config.userlist.get(user))

    def _new_cancel_key(self, c: ClientSession) -> None:
        # Our own BackendKeyData: a cancel names a client, and reaches whichever server serves it then.
        # Random bytes come from the OS in blocks: one getrandom() per 512 logins, not two per login.
        while True:
            if len(self._random) < 8:
                self._random = os.urandom(4096)
            raw, self._random = self._random[:8], self._random[8:]
            pid = int.from_bytes(raw[:4], "big") >> 1 or 1
            if pid not in self.by_cancel:
                break
        c.cancel_pid, c.cancel_key = pid, int.from_bytes(raw[4:], "big") >> 1
        self.by_cancel[pid] = c

    def client_authenticated(self, c: ClientSession) -> None:
        if self.config.settings.log_connections:
            log.info("%s login attempt: db=%s user=%s", c.prefix, c.database, c.user)
        if c.is_admin:
            c.send_welcome({"server_version": f"{__version__}/pgmux", "server_encoding": "UTF8",
                            "client_encoding": "UTF8", "DateStyle": "ISO", "TimeZone": "UTC",
                            "integer_datetimes": "on", "standard_conforming_strings": "on",
                            "application_name": c.startup.get("application_name", "")})
            return
        auth = c.auth
        if auth is not None and auth.client_key is not None and auth.server_key is not None:
            self.scram_keys[c.user] = (auth.client_key, auth.server_key)
        pool = c.logged_in_pool()
        if pool.server_params is not None:
            c.send_welcome(pool.server_params)
        else:
            pool.login_waiters.append(c)
            self.launch(pool)

    def acquire(self, c: ClientSession, now: float | None = None) -> None:
        pool = c.logged_in_pool()
        if now is None:
            now = self.now()
        if c.route is not None:  # read/write split: this transaction's host, or wait for one
            routed = self.routing.route(c, now)
            if routed is None:
                return
            pool = routed
        server = None if self.paused else pool.take_idle()
        if server is not None:
            server.move(S_ACTIVE)
            pool.stats.server_assignment_count += 1
            c.attach(server, now)
            return
        c.state = C_WAITING
        pool.add_waiter(c, now)
        # A full pool (the usual case under load) opens nothing: skip the arithmetic of launch().
        if not self.paused and len(pool.servers) < pool.limits.pool_size + pool.limits.reserve_pool_size:
            self.launch(pool)

    def server_ready(self, c: ClientSession, server: ServerSession) -> None:
        """The linked server sent ReadyForQuery and owes nothing: count it, and in transaction or
        statement mode give the server back when the transaction is over.

        This runs once per transaction. The usual case (the transaction is over, nothing is queued,
        held or pinned) hands the server on here with detach() and return_server() inline; everything
        else goes through _ready_other()."""
        pool = server.pool
        st = pool.stats
        now = self.now()
        st.query_count += 1
        st.query_secs += now - server.query_start
        if (server.tx_status != b"I" or pool.mode == "session" or c.pending or c.unsynced or c.pinned
                or c.lsn_wanted or c.passing):
            self._ready_other(c, server, now)
            return
        st.xact_count += 1
        st.xact_secs += now - c.xact_start
        c.xact_start = 0.0
        c.server = None
        server.client = None
        if c.state is C_ACTIVE:
            c.state = C_IDLE
        if server.paused:
            server.resume_reading()
        if c.throttled:  # paused for this server's full socket buffer: no longer its business
            c.throttle(False)
        lifetime = pool.limits.server_lifetime
        if (server.close_needed or self.shutting_down or self.config.settings.server_reset_query_always
                or lifetime > 0 and now - server.created_at >= lifetime):
            self.return_server(server, now=now)
        else:
            self.give(server, now)

    def _ready_other(self, c: ClientSession, server: ServerSession, now: float) -> None:
        """server_ready() for a transaction still open, session mode, and a client with something
        queued, half-sent, pinned or a WAL position to capture."""
        pool = server.pool
        idle = server.tx_status == b"I"
        if idle:
            st = pool.stats
            st.xact_count += 1
            st.xact_secs += now - c.xact_start
            c.xact_start = 0.0
        mode = pool.mode
        if mode == "session":
            return
        if c.pending and (idle or mode != "statement"):  # held back from a replica (runtime/routing.py)
            if idle and not c.unsynced and not c.pinned:
                c.detach()
                self.return_server(server, now=now)
                self.acquire(c, now)  # routed on its own: a write goes to the primary
            else:
                c.send_pending(server, now)  # inside the replica's transaction: it is answered there
            return
        if not idle:
            if mode == "statement":
                err = PgmuxError("transaction blocks not allowed in statement pooling mode", sqlstate="08P01",
                                 severity="FATAL")
                self.close_server(server, err.message)
                c.fail(err)
            return
        if c.unsynced or c.pinned:  # pinned: LISTEN, temp tables... live on this server only
            return
        if c.passing:  # the rest of a long message is on its way to this server (ClientSession._pass)
            return
        if c.lsn_wanted:  # read-your-writes: the commit's WAL position first (runtime/routing.py)
            self.routing.capture_lsn(c, server)
            return
        c.detach()
        self.return_server(server, now=now)

    def client_closed(self, c: ClientSession, reason: str) -> None:
        if c.state is ClientState.CLOSED:
            return
        was = c.state
        c.state = ClientState.CLOSED
        self.clients.pop(c.id, None)
        if self.by_cancel.get(c.cancel_pid) is c:
            del self.by_cancel[c.cancel_pid]
        if self.config.settings.log_disconnections:
            log.info("%s closing because: %s (age=%.0fs)", c.prefix, reason, self.now() - c.connect_time)
        pool = c.pool
        if c.route is not None:
            self.routing.forget(c)
        if pool is not None:
            if was is ClientState.WAITING:
                pool.remove_waiter(c)
            elif was is ClientState.LOGIN_WAIT and c in pool.login_waiters:
                pool.login_waiters.remove(c)
        if c.stmts is not None:
            c.stmts.clear()
        # read before detach(): server.clean no longer sees the client after it; a message the server
        # got only part of leaves it unusable too
        unsynced = c.unsynced or c.passing > 0
        server = c.detach()
        if server is not None:
            if c.pinned:  # its LISTENs, temp tables or locks must not reach another client
                self.close_server(server, f"client left session state on the server ({c.pinned})")
            elif server.clean and not unsynced and not server.close_needed:
                self.return_server(server, leaving=True)
            else:
                self.close_server(server, "client disconnect while server was not ready")
        c.transport.close()
        self._after_change()

    # -- servers ---------------------------------------------------------------------------------
    def return_server(self, server: ServerSession, leaving: bool = False, now: float | None = None) -> None:
        """A clean server comes back from a client. Session mode (or server_reset_query_always)
        runs server_reset_query first."""
        s = self.config.settings
        pool = server.pool
        if now is None:
            now = self.now()
        if server.close_needed or self.shutting_down and not pool.waiters:
            self.close_server(server, "server close needed" if server.close_needed else "pgmux shutdown")
            return
        lifetime = pool.limits.server_lifetime
        if lifetime > 0 and now - server.created_at >= lifetime:
            self.close_server(server, "server lifetime over")
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
        if self.paused or pool.paused:
            # PAUSE: servers are let go as their transactions finish; PAUSE returns once none is left.
            self.close_server(server, "pause requested")
            return
        waiter = pool.put(server, now)
        if waiter is not None:
            if server.state is not S_ACTIVE:  # (ACTIVE to ACTIVE, the usual case, is legal)
                server.move(S_ACTIVE)
            st = pool.stats
            st.server_assignment_count += 1
            st.wait_secs += now - waiter.wait_since
            waiter.attach(server, now)
            return
        server.move(S_IDLE)
        if self.waiting_admin or self.shutting_down:
            self._after_change()

    def internal_done(self, server: ServerSession) -> None:
        """pgmux's own query on this server finished (reset, check, or parameter sync)."""
        err = server.swallow_error
        server.swallow_error = None
        if err is not None:
            log.warning("%s internal query failed: %s", server.prefix, err.get("M"))
        if server.want_lsn:
            self.routing.lsn_done(server, err)
            return
        if server.state is ServerState.TESTED:
            if err is not None or server.close_needed:
                self.close_server(server, "server reset or check query failed")
            else:
                self.give(server)
        elif err is not None and server.client is not None:
            server.client.transport.write(m.notice_response(
                f"pgmux could not apply a session parameter on the server: {err.get('M')}", severity="WARNING",
                sqlstate=err.get("C", "01000")))

    def launch(self, pool: Pool[Any, Any]) -> None:
        if self.shutting_down or self.paused or pool.paused:
            return
        n = pool.wanted(self.now(), self.registry.headroom(pool))
        for _ in range(n):
            self._open_server(pool)

    def _open_server(self, pool: Pool[Any, Any]) -> None:
        db = self.config.database(pool.database)
        if db is None:
            return
        sid = self.next_id
        self.next_id += 1
        if pool.host is not None:  # one host's pool of a split database
            target = self._target(db, pool.user, host=pool.host)
        else:
            # host=a,b,c: PgBouncer's load_balance_hosts=round-robin, one step per new connection.
            turn = self.host_turn.get((pool.database, pool.user), 0)
            self.host_turn[(pool.database, pool.user)] = turn + 1
            target = self._target(db, pool.user, turn)
        server = ServerSession(sid, self, pool, target, self.now())
        self.servers[sid] = server
        pool.add_server(server)
        pool.connecting += 1
        timeout = self.config.settings.server_connect_timeout
        self.spawn(self._connect, server, timeout)

    async def _connect(self, server: ServerSession, timeout: float) -> None:
        try:
            await connector.open_server(server, timeout)
        except (TimeoutError, OSError) as e:
            why = "timeout" if isinstance(e, asyncio.TimeoutError) else (e.strerror or str(e))
            self._login_failed(server, PgmuxError(
                f"pgmux cannot connect to server {server.target.label}: {why}", sqlstate="57P03",
                severity="FATAL"))

    def _target(self, db: DatabaseConfig, user: str, turn: int = 0, *,
                host: HostConfig | None = None) -> ServerTarget:
        port = db.port
        if host is not None:
            hostname, port = host.host, host.port
        else:
            hostname = db.hosts[turn % len(db.hosts)] if db.hosts else None
        unix_path = None
        if hostname is None or hostname.startswith("/"):
            unix_path = os.path.join(hostname or default_unix_dir(), f".s.PGSQL.{port}")
        password = db.password if db.user else None
        if password is None:
            password = self.config.userlist.get(user)
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
        log.info("%s new connection to server (pid %d)", server.prefix, server.backend_pid)
        if server.swallow_error is not None:  # connect_query failed: say so, and don't blame a later query
            log.warning("%s connect_query failed: %s", server.prefix, server.swallow_error.get("M"))
            server.swallow_error = None
        if pool.server_params is None:
            pool.server_params = dict(server.params)
        waiters, pool.login_waiters = pool.login_waiters, []
        for c in waiters:
            c.send_welcome(pool.server_params)
        self.give(server)

    def _login_failed(self, server: ServerSession, err: PgmuxError) -> None:
        pool = server.pool
        if server.state is ServerState.LOGIN:
            pool.connecting -= 1
        pool.last_login_failure = self.now()
        log.warning("%s server login failed: %s", server.prefix, err.message)
        self._drop_server(server, f"server login failed: {err.message}")
        if pool.hstate is not None and self.routing.login_failed(pool, err):
            return  # a host of a split database is down: its clients were routed elsewhere
        waiters, pool.login_waiters = pool.login_waiters, []
        for c in waiters:
            c.fail(err, close=True)  # still logging in: an ERROR must end the connection too
        if not pool.servers:
            # Nothing can serve the queued queries until server_login_retry passes: say so now
            # instead of letting them hang until query_wait_timeout.
            for c in list(pool.waiters):
                pool.remove_waiter(c)
                c.fail(PgmuxError(err.message, sqlstate=err.sqlstate, severity="FATAL"))

    def server_failed(self, server: ServerSession, err: PgmuxError) -> None:
        if server.state is ServerState.LOGIN:
            self._login_failed(server, err)
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
            self._login_failed(server, PgmuxError(f"server closed the connection during login: {reason}",
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

    def close_server(self, server: ServerSession, reason: str) -> None:
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
        self.launch(server.pool)

    def _drop_server(self, server: ServerSession, reason: str) -> None:
        if server.state is ServerState.CLOSED:
            return
        server.state = ServerState.CLOSED
        server.closed_reason = reason
        if server.transport is not None:
            server.transport.close()
        server.pool.remove_server(server)
        self.servers.pop(server.id, None)
        server.queue.clear()
        if server.stmts is not None:
            server.stmts.forget_all()
        log.info("%s closing because: %s (age=%.0fs)", server.prefix, reason, self.now() - server.created_at)
        client = server.client
        if client is not None and client.server is server:
            client.detach()
        self._after_change()

    # -- cancel ----------------------------------------------------------------------------------
    def cancel_request(self, pid: int, key: int) -> None:
        c = self.by_cancel.get(pid)
        # Keys are random 31-bit numbers; compare in constant time so a probe learns nothing.
        if c is None or not secrets.compare_digest(c.cancel_key.to_bytes(4, "big", signed=True),
                                                   key.to_bytes(4, "big", signed=True)):
            log.info("cancel request for unknown or mismatched key ignored")
            return
        server = c.server
        if server is None:
            return  # nothing running for this client now; PostgreSQL would ignore it too
        t = server.target
        log.info("%s sending cancel request to %s", c.prefix, server.prefix)
        self.spawn(self._send_cancel, t, server.backend_pid, server.backend_key)

    async def _send_cancel(self, t: ServerTarget, pid: int, key: int) -> None:
        try:
            await connector.send_cancel(t.host, t.port, t.unix_path, pid, key,
                                        self.config.settings.server_connect_timeout)
        except (TimeoutError, OSError) as e:
            log.warning("cancel request to %s failed: %s", t.label, e)

    # -- admin -----------------------------------------------------------------------------------
    def admin_message(self, c: ClientSession, mtype: int, body: bytes) -> None:
        self.admin.message(c, mtype, body)

    # -- pools and limits ------------------------------------------------------------------------
    def _pool_setup(self, db: DatabaseConfig, user: str) -> tuple[PoolLimits, str]:
        cfg = self.config
        s = cfg.settings
        limits = PoolLimits(pool_size=cfg.pool_size_for(db, user), min_pool_size=cfg.min_pool_size_for(db),
                            reserve_pool_size=cfg.reserve_pool_size_for(db, user),
                            reserve_pool_timeout=s.reserve_pool_timeout, server_login_retry=s.server_login_retry,
                            server_lifetime=cfg.server_lifetime_for(db))
        self.registry.max_db[db.name] = cfg.max_db_connections_for(db)
        self.registry.max_user[user] = cfg.max_user_connections_for(user)
        return limits, cfg.pool_mode_for(db, user)

    def _apply_limits(self) -> None:
        for pool in self.registry:
            db = self.config.database(pool.database)
            if db is None:
                pool.disabled = True
                continue
            pool.limits, pool.mode = self._pool_setup(db, pool.user)
            pool.refuse_pins = db.pin_mode == "refuse"

    def _after_change(self) -> None:
        if self.waiting_admin:
            self.admin.check_waiting()
        if self.shutting_down and not self.clients_busy():
            self._finish_shutdown()

    def clients_busy(self) -> bool:
        """A client is busy while it waits for a server or its server is inside a transaction;
        graceful shutdown waits for those and no longer."""
        return any(c.state is ClientState.WAITING or (c.server is not None and not c.server.clean)
                   for c in self.clients.values())

    # -- reload ----------------------------------------------------------------------------------
    def reload(self) -> list[str]:
        """HUP or RELOAD: apply what can change live, keep restart-only settings as they are (and say
        so), and let servers made from a changed database line be replaced as they come back."""
        import dataclasses

        new = load_config(self.config_path)
        plan = diff(self.config, new)
        if plan.needs_restart:
            kept = {k: getattr(self.config.settings, k) for k in plan.needs_restart}
            new = dataclasses.replace(new, settings=dataclasses.replace(new.settings, **kept))
        self.config = new
        stale = set(plan.databases_reconnect) | set(plan.databases_removed)
        for name in sorted(stale & set(self.routing.splits)):
            log.warning("database %s: changes to a read/write-split database (hosts, roles, routing keys) "
                        "apply at the next restart", name)
        for pool in self.registry:
            if pool.database in stale or (new.database(pool.database) is None):
                for srv in list(pool.servers):
                    srv.close_needed = True
                for srv in list(pool.idle):
                    pool.idle.remove(srv)
                    self.close_server(srv, "database configuration changed")
        self._apply_limits()
        for pool in self.registry:
            self.launch(pool)
        for note in plan.notes:
            log.warning("%s", note)
        log.info("configuration reloaded from %s", self.config_path)
        return list(plan.notes)

    # -- janitor ---------------------------------------------------------------------------------
    async def _janitor_loop(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            try:
                self.tick(self.now())
            except Exception as e:  # noqa: BLE001 - the janitor must outlive any one bad pass
                log.error("janitor pass failed", exc_info=e)

    def tick(self, now: float) -> None:
        check_timeouts(self, now)
        if self.routing.splits:
            self.routing.tick(now)
        if self.shutting_down:
            self._after_change()
        for hook in self.tick_hooks:
            hook()

