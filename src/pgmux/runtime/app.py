"""The running pooler: the hub every session reports to, and the owner of pools and listeners.

Sessions (sans-IO) call the hub for every decision that involves more than one connection; the hub
asks the pool core (pure, given `now`) and acts: links, releases, opens and closes connections.
Timeouts are checked by a janitor tick, as PgBouncer does, instead of a timer per connection.
"""

from __future__ import annotations

import asyncio
import errno
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
from pgmux.metrics.events import Events
from pgmux.net import connector, sdnotify
from pgmux.net.connector import default_unix_dir
from pgmux.net.listen import is_unix_listener, start_listeners, unix_socket_path
from pgmux.net.tls import Contexts, TlsConfigError, accept_client_tls, client_tls_missing
from pgmux.pooling import backoff
from pgmux.pooling.autosize import start_size
from pgmux.pooling.pool import Pool, PoolLimits
from pgmux.pooling.registry import Registry
from pgmux.protocol import messages as m
from pgmux.protocol.auth import ClientAuthenticator
from pgmux.runtime import client_auth, welcome
from pgmux.runtime.admission import Admission
from pgmux.runtime.auth_query import AuthQuery
from pgmux.runtime.replication import Replication
from pgmux.runtime.routing import Routing, is_split
from pgmux.runtime.timeouts import check_timeouts, fast_close
from pgmux.session.client import ClientSession
from pgmux.session.params import TRACKED, canon, startup_params, with_client_host
from pgmux.session.prepared import ClientStatements
from pgmux.session.prepared import Registry as StatementRegistry
from pgmux.session.replication import replication_mode
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
        # How: "servers" (SIGINT, SHUTDOWN WAIT_FOR_SERVERS), "clients" (SIGTERM, SHUTDOWN WAIT_FOR_CLIENTS),
        # "immediate"; "" while running. `shedding`: "servers", no new transaction starts.
        self.shutdown_mode = ""
        self.shedding = False
        self.finished = False
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
        self.reload_hooks: list[Any] = []  # called after each reload or SET (reopen the logfile)
        self._random = b""
        # Protocol-level prepared statements of every pool, by (query, types): names unique per process.
        self.prepared = StatementRegistry()
        self.tls: Contexts = Contexts(config.settings)  # client and server TLS contexts (net/tls.py)
        self.auth_query: Any = AuthQuery(self)  # users not in auth_file, looked up as auth_user
        self.auth_secrets: dict[str, str] = {}  # secrets auth_query found for users who then logged in
        self.routing = Routing(self)  # read/write split databases: per-host pools, health, failover
        self.admission = Admission(self)  # client limits, the console past max_client_conn, idle pools
        self.last_tick = 0.0  # when the janitor last ran (query_wait_notify: who crossed the mark since)
        self.replication = Replication(self)  # replication clients, each with a server of its own
        self.sigs: dict[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]] = {}  # ClientSession.attach
        # Reported parameters every client has a value for (the pool's default unless it asked for its
        # own): pgmux's set, plus track_extra_parameters (PgBouncer's name; a restart setting).
        extra = tuple(canon(n) for n in config.settings.track_extra_parameters)
        self.tracked_extra = tuple(n for n in dict.fromkeys(extra) if n not in TRACKED)
        self.tracked = TRACKED + self.tracked_extra
        # Clients whose startup parameters a server is applying before their welcome: id -> what (App.probe).
        self.probing: dict[int, list[tuple[str, str]]] = {}
        # The two ways out of the synchronous core, as attributes so that tests drive it without a loop
        # or a clock (tests/unit/fakes.py): the clock, and "run this coroutine function in the background".
        self.now: Callable[[], float] = time.monotonic
        self.spawn: Callable[..., None] = self._start_task
        self.events = Events()  # servers opened/closed, login times, TLS handshakes (pgmux/metrics/)
        self._apply_limits()

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        from pgmux.runtime.admin_service import AdminService
        from pgmux.runtime.periodic import hooks

        self.admin = AdminService(self)
        self.tick_hooks.extend(hooks(self))  # stats_period/log_stats
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

    def shutdown(self, mode: str = "servers") -> None:
        """PgBouncer 1.25's three shutdowns. "servers" (SIGINT, SHUTDOWN WAIT_FOR_SERVERS): stop accepting,
        start no new transaction (a client that asks for a server, or waits for one, is disconnected),
        close each server as its transaction ends, exit when none is left. "clients" (SIGTERM, SHUTDOWN
        WAIT_FOR_CLIENTS): stop accepting, serve the connected clients as usual, exit when the last one
        has left. "immediate" (SIGQUIT, SHUTDOWN): exit now. The Unix socket stays open for the admin
        console until the exit; other logins are refused."""
        if not self.shutting_down:
            sdnotify.notify("STOPPING=1")
        if mode == "immediate":
            log.info("shutting down immediately")
            self.shutting_down, self.shutdown_mode, self.shedding = True, mode, True
            self._finish_shutdown()
            return
        if self.shutdown_mode in (mode, "servers", "immediate"):
            return  # already on the way out, as fast or faster
        self.shutting_down, self.shutdown_mode = True, mode
        log.info("shutting down: %s", "waiting for server connections to be released" if mode == "servers"
                 else "waiting for all clients to disconnect")
        for srv in self.listeners:
            if not is_unix_listener(srv):
                srv.close()
        if mode == "servers":
            self.shedding = True
            err = PgmuxError("pgmux is shutting down", sqlstate="57P01", severity="FATAL")
            for pool in self.registry:
                for c in list(pool.waiters) + list(pool.login_waiters):
                    c.fail(err)
                for server in list(pool.idle):
                    pool.idle.remove(server)
                    self.close_server(server, "pgmux shutdown")
        self._after_change()

    def _finish_shutdown(self) -> None:
        if self.finished:
            return
        self.finished = True
        for listener in self.listeners:
            listener.close()
        for c in list(self.clients.values()):
            c.fail(PgmuxError("pgmux is shutting down", sqlstate="57P01", severity="FATAL"))
        for srv in list(self.servers.values()):
            self.close_server(srv, "pgmux shutdown")
        self.routing.stop()
        self.auth_query.close()
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

    def start_tls(self, c: ClientSession, hello: bytes = b"") -> bool:
        """SSLRequest (or a ClientHello first: `hello`): True when a TLS handshake now runs on the
        client's connection (net/tls.py)."""
        return accept_client_tls(self, c, hello)

    def login(self, c: ClientSession, params: dict[str, str]) -> None:
        """The StartupMessage: decide whether and how this client may authenticate. Nothing that
        outlives the client is made here (no pool, no count, no cancel key): a client that never
        authenticates leaves nothing behind. client_authenticated() does the rest."""
        cfg = self.config
        s = cfg.settings
        user = params.get("user", "")
        if not user:
            raise PgmuxError("no PostgreSQL user name specified in startup packet", sqlstate="28000",
                             severity="FATAL")
        dbname = params.get("database") or user
        c.set_identity(dbname, user)
        if self.shutting_down and dbname not in ADMIN_DATABASES:  # the console still works
            raise PgmuxError("pgmux is shutting down", sqlstate="57P03", severity="FATAL")
        if client_tls_missing(self, c):
            raise PgmuxError("SSL required", sqlstate="28000", severity="FATAL",
                             hint=f"client_tls_sslmode = {self.tls.client_mode}: connect with sslmode=require")
        console = dbname in ADMIN_DATABASES
        if len(self.clients) > s.max_client_conn and not (console and self.admission.console_may_exceed(c, user)):
            raise PgmuxError("no more connections allowed (max_client_conn)", sqlstate="53300", severity="FATAL")
        if "replication" in params:
            self._replication_login(c, params["replication"], dbname)
        if console:
            self._admin_login(c, user)
            return
        db = cfg.database(dbname)
        if db is None:
            raise PgmuxError(f'no such database: {dbname}', sqlstate="3D000", severity="FATAL",
                             hint="add it to [databases] in the pgmux configuration, or a \"*\" fallback line"
                             + ("; physical replication clients (pg_basebackup, pg_receivewal) ask for database "
                                "\"replication\"" if c.replication == "physical" else ""))
        if s.auth_type == "any" and not db.user:
            # As PgBouncer: unchecked names must not each get a pool (and a server login) of their own.
            raise PgmuxError(f'auth_type "any" needs a forced user, and database "{dbname}" has none',
                             sqlstate="28000", severity="FATAL",
                             hint=f"add user=NAME to the line of {dbname} in [databases]")
        auth_type = client_auth.choose(self, c, dbname, user, bool(c.replication))  # or the auth_hba_file line
        if auth_type != "any" and self.auth_query.wanted(db, user):
            c.auth = None  # the session waits; _look_up gives it its authenticator
            self.spawn(self._look_up, c, db, user, auth_type)
        else:
            c.auth = ClientAuthenticator(auth_type, user, cfg.userlist.get(user), s.scram_iterations,
                                         self.tls.cbind_for(c.transport))
        try:
            c.params = startup_params(params, s.ignore_startup_parameters)
        except ValueError as e:
            raise PgmuxError(f"unsupported startup parameter: {e}", sqlstate="08P01", severity="FATAL") from e
        if s.application_name_add_host:
            c.params["application_name"] = with_client_host(c.params.get("application_name"), c.addr, c.port,
                                                            c.is_unix, s.listen_port)

    async def _look_up(self, c: ClientSession, db: DatabaseConfig, user: str, auth_type: str) -> None:
        secret = await self.auth_query.lookup(db, user)
        if c.state is not ClientState.AUTH:
            return  # the client left (or timed out) meanwhile
        c.auth = ClientAuthenticator(auth_type, user, secret, self.config.settings.scram_iterations,
                                     self.tls.cbind_for(c.transport))
        try:
            c.begin_auth()
        except PgmuxError as e:
            c.fail(e)
        except Exception as e:  # noqa: BLE001 - never a traceback to the client
            self.log_exception(c.prefix, e)
            c.fail(PgmuxError(f"internal error in pgmux: {type(e).__name__}", sqlstate="XX000", severity="FATAL"))

    def _replication_login(self, c: ClientSession, value: str, dbname: str) -> None:
        """`replication=...` in the startup packet, read as PostgreSQL reads it (runtime/replication.py
        serves the connection once the client has authenticated)."""
        try:
            c.replication = replication_mode(value)
        except ValueError:
            raise PgmuxError(f'invalid value for parameter "replication": "{value}"', sqlstate="22023",
                             severity="FATAL", hint='Valid values are: "false", 0, "true", 1, "database".') from None
        if c.replication and dbname in ADMIN_DATABASES:
            raise PgmuxError("replication connections to the pgmux admin console are not supported",
                             sqlstate="08P01", severity="FATAL")

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
        c.auth = ClientAuthenticator(client_auth.choose(self, c, c.database, user), user,
                                     self.config.userlist.get(user), s.scram_iterations,
                                     self.tls.cbind_for(c.transport))

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
        self._new_cancel_key(c)
        self.events.client_login(c, self.now())
        if c.is_admin:
            if self.admin is not None:  # (unit tests drive the hub without start())
                self.admin.stats.client_login_count += 1
            c.send_welcome({"server_version": f"{__version__}/pgmux", "server_encoding": "UTF8",
                            "client_encoding": "UTF8", "DateStyle": "ISO", "TimeZone": "UTC",
                            "integer_datetimes": "on", "standard_conforming_strings": "on",
                            "application_name": c.startup.get("application_name", "")})
            return
        pool = self._join_pool(c)
        auth = c.auth
        if auth is not None and auth.client_key is not None and auth.server_key is not None:
            self.scram_keys[c.user] = (auth.client_key, auth.server_key)
        if auth is not None and auth.secret is not None and c.user not in self.config.userlist:
            self.auth_secrets[c.user] = auth.secret  # from auth_query: the server logins of its pool need it
        pool.stats.client_login_count += 1
        if c.replication:  # a server of its own, not from the pool (runtime/replication.py)
            self.replication.start(c)
            return
        if pool.server_params is not None:
            self.welcome(c)
        else:
            pool.login_waiters.append(c)
            self.launch(pool)

    def _join_pool(self, c: ClientSession) -> Pool[Any, Any]:
        """An authenticated client: count it (max_db/user_client_connections) and give it its pool,
        made now if it is the first of its (database, user)."""
        cfg = self.config
        dbname = c.database
        db = cfg.database(dbname)
        if db is None:  # a reload removed it while the client logged in
            raise PgmuxError(f'no such database: {dbname}', sqlstate="3D000", severity="FATAL")
        server_user = db.user or c.user
        known = self.registry.get(dbname, server_user)
        if known is not None and known.disabled:
            raise PgmuxError(f"database \"{dbname}\" is disabled", sqlstate="57P03",  # PgBouncer's words
                             severity="FATAL")
        self.admission.admit(c, db)
        if is_split(db):  # one pool per host; each transaction is routed (runtime/routing.py)
            password = db.password if db.user else cfg.userlist.get(server_user)
            pool = self.routing.login_pool(c, db, server_user, password)
        else:
            pool = known or self.registry.get_or_create(dbname, server_user,
                                                        lambda: self._pool_setup(db, server_user))
        if pool.disabled:
            raise PgmuxError(f"database \"{dbname}\" is disabled", sqlstate="57P03", severity="FATAL")
        c.pool = pool
        pool.refuse_pins = db.pin_mode == "refuse"
        c.watch = pool.mode != "session"
        if pool.mode != "session" and cfg.settings.max_prepared_statements > 0:
            c.stmts = ClientStatements(self.prepared, pool.stats)
        return pool
    def welcome(self, c: ClientSession, launch: bool = True) -> None:
        """Welcome a client of a pool whose servers' parameters are known, in PostgreSQL's spelling of its
        own (runtime/welcome.py: a server may have to apply them first)."""
        welcome.welcome(self, c, launch)

    def probe(self, c: ClientSession, server: ServerSession, now: float) -> None:
        """ClientSession.attach for a client still logging in: the server applies its parameters first."""
        welcome.probe(self, c, server, now)

    def acquire(self, c: ClientSession, now: float | None = None) -> None:
        pool = c.logged_in_pool()
        if self.shedding:  # SHUTDOWN WAIT_FOR_SERVERS: no new transaction starts
            c.fail(PgmuxError("pgmux is shutting down", sqlstate="57P01", severity="FATAL"))
            return
        if now is None:
            now = self.now()
        if c.route is not None:  # read/write split: this transaction's host, or wait for one
            routed = self.routing.route(c, now)
            if routed is None:
                return
            pool = routed
        server = None if self.paused else pool.take_idle()
        if server is not None and pool.needs_check(server, now):
            # server_check_delay: the server waited long enough (0: any time) to run the check query
            # first; internal_done() gives it to the oldest waiter, this client, or closes it.
            c.state = C_WAITING
            pool.add_waiter(c, now)
            self._check(server)
            return
        if server is not None:
            server.move(S_ACTIVE)
            pool.stats.server_assignment_count += 1
            if pool.stats.timing is not None:  # metrics: a wait of 0
                pool.stats.timing.wait.observe(0.0)
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
        timing = st.timing  # metrics (pooling/histogram.py), None when off
        if timing is not None:
            timing.query.observe(now - server.query_start)
        if (server.tx_status != b"I" or pool.mode == "session" or c.pending or c.unsynced or c.pinned
                or c.lsn_wanted or c.passing or server.skipping):
            self._ready_other(c, server, now)
            return
        st.xact_count += 1
        st.xact_secs += now - c.xact_start
        if timing is not None:
            timing.xact.observe(now - c.xact_start)
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
        if (server.close_needed or self.shedding or self.config.settings.server_reset_query_always
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
            if st.timing is not None:
                st.timing.xact.observe(now - c.xact_start)
            c.xact_start = 0.0
        mode = pool.mode
        if mode == "session":
            if idle and server.close_needed and self.config.settings.server_fast_close and server.clean:
                fast_close(self, server)
            return
        if c.pending and (idle or mode != "statement"):  # held back from a replica (runtime/routing.py)
            if idle and not c.unsynced and not c.pinned and not server.skipping:
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
        if server.skipping:
            # An extended-protocol message failed and no Sync followed (a Query after it was skipped
            # with no reply, or the ReadyForQuery was a Query's before it): PostgreSQL ignores all up
            # to the client's next Sync. That is this client's session state; another client's
            # messages there would be ignored too (its simple Query never answered).
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
        self.admission.release(c)
        if self.config.settings.log_disconnections:
            log.info("%s closing because: %s (age=%.0fs)", c.prefix, reason, self.now() - c.connect_time)
        pool = c.pool
        if c.route is not None:
            self.routing.forget(c)
        if c.replication:
            self.replication.client_gone(c)
        if pool is not None:
            if was is ClientState.WAITING:
                pool.remove_waiter(c)
            elif was is ClientState.LOGIN_WAIT:
                if c in pool.login_waiters:
                    pool.login_waiters.remove(c)
                else:
                    pool.remove_waiter(c)  # waiting for a server to apply its parameters (probe())
                self.probing.pop(c.id, None)
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
        if server.close_needed or self.shedding:
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
        if self.paused or pool.paused or self.shedding:
            # PAUSE: servers are let go as their transactions finish; PAUSE returns once none is left.
            self.close_server(server, "pgmux shutdown" if self.shedding else "pause requested")
            return
        if pool.over_size():  # a reload lowered pool_size: no reuse beyond it
            self.close_server(server, "too many servers in the pool")
            return
        waiter = pool.put(server, now)
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
            self._after_change()

    def internal_done(self, server: ServerSession) -> None:
        """pgmux's own query on this server finished (reset, check, or parameter sync)."""
        err = server.swallow_error
        server.swallow_error = None
        c = server.client
        if c is not None and c.state is ClientState.LOGIN_WAIT:  # a client's startup parameters (probe())
            welcome.probe_done(self, c, server, err)
            return
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
        if self.shedding or self.paused or pool.paused:
            return
        now = self.now()
        headroom = self.registry.headroom(pool)
        if headroom < 1 << 20 and (pool.waiters or pool.login_waiters):  # a shared limit, clients waiting
            need = pool.queued_demand(now)
            if need > headroom:
                for victim in self.registry.evictable(pool, need):
                    self.close_server(victim, "evicted: another pool of the database or user needs "
                                              "the connection (max_db_connections/max_user_connections)",
                                      relaunch=False)
                headroom = self.registry.headroom(pool)
        n = pool.wanted(now, headroom)
        for _ in range(n):
            self._open_server(pool)

    def _check(self, server: ServerSession) -> None:
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
            target = self._target(db, pool.user, host=pool.host)
        else:
            # host=a,b,c: load_balance_hosts=round-robin (the default) takes one step per new
            # connection; =disable stays on a host until a connection to it fails (_login_failed).
            turn = self.host_turn.get((pool.database, pool.user), 0)
            if db.load_balance_hosts != "disable":
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
            await connector.open_server(server, timeout, self.tls)
        except (TimeoutError, OSError) as e:
            why = "timeout" if isinstance(e, asyncio.TimeoutError) else (e.strerror or str(e))
            # Nothing listening (refused, or no socket file): cheap to ask again soon (pooling/backoff.py).
            refused = isinstance(e, (ConnectionRefusedError, FileNotFoundError)) or \
                getattr(e, "errno", None) in (errno.ECONNREFUSED, errno.ENOENT)
            self._login_failed(server, PgmuxError(
                f"pgmux cannot connect to server {server.target.label}: {why}", sqlstate="57P03",
                severity="FATAL"), refused)

    def _target(self, db: DatabaseConfig, user: str, turn: int = 0, *,
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
        if server.swallow_error is not None:  # connect_query failed: say so, and don't blame a later query
            log.warning("%s connect_query failed: %s", server.prefix, server.swallow_error.get("M"))
            server.swallow_error = None
        if pool.server_params is None:
            pool.server_params = dict(server.params)
            for name in self.tracked_extra:
                if name not in pool.server_params:
                    log.warning("%s track_extra_parameters: the server does not report %s (no ParameterStatus), "
                                "so it cannot be tracked that way; SET %s is followed as SQL instead",
                                server.prefix, name, name)
        waiters, pool.login_waiters = pool.login_waiters, []
        for c in waiters:
            self.welcome(c, launch=False)  # (a probe waits for this server, given next)
        self.give(server)
        if pool.waiters:
            self.launch(pool)

    def _login_failed(self, server: ServerSession, err: PgmuxError, refused: bool = False) -> None:
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
        waiters, pool.login_waiters = pool.login_waiters, []
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
        self.events.server_closed(server, reason)
        client = server.client
        if client is not None and client.server is server:
            client.detach()
        self._after_change()

    # -- cancel ----------------------------------------------------------------------------------
    def cancel_request(self, requester: ClientSession, pid: int, key: int) -> None:
        """A CancelRequest arrived on `requester`'s connection (already CLOSED as a session: it carries
        nothing else). Its connection ends when the cancel has reached the server, or at once when
        there is nothing to cancel."""
        self.clients.pop(requester.id, None)
        c = self.by_cancel.get(pid)
        # Keys are random 31-bit numbers; compare in constant time so a probe learns nothing.
        if c is None or not secrets.compare_digest(c.cancel_key.to_bytes(4, "big", signed=True),
                                                   key.to_bytes(4, "big", signed=True)):
            log.info("cancel request for unknown or mismatched key ignored")
            requester.transport.close()
            return
        server = c.server
        if server is None:
            if c.replication:  # its own server (runtime/replication.py)
                found = self.replication.cancel_target(c)
                if found is not None:
                    self.spawn(self._send_cancel, requester, *found)
                    return
            requester.transport.close()
            return  # nothing running for this client now; PostgreSQL would ignore it too
        t = server.target
        log.info("%s sending cancel request to %s", c.prefix, server.prefix)
        self.spawn(self._send_cancel, requester, t, server.backend_pid, server.backend_key)

    async def _send_cancel(self, requester: ClientSession, t: ServerTarget, pid: int, key: int) -> None:
        wait = self.config.settings.cancel_wait_timeout
        try:
            # cancel_wait_timeout bounds how long the cancel may take to reach the server (0: no bound);
            # then the requester is disconnected, as PgBouncer does.
            await connector.send_cancel(t.host, t.port, t.unix_path, pid, key, wait)
        except TimeoutError:
            log.warning("cancel request to %s failed: not sent within cancel_wait_timeout (%gs)", t.label, wait)
        except OSError as e:
            log.warning("cancel request to %s failed: %s", t.label, e)
        finally:
            requester.transport.close()

    # -- admin -----------------------------------------------------------------------------------
    def admin_message(self, c: ClientSession, mtype: int, body: bytes) -> None:
        self.admin.message(c, mtype, body)

    # -- pools and limits ------------------------------------------------------------------------
    def _pool_setup(self, db: DatabaseConfig, user: str) -> tuple[PoolLimits, str]:
        cfg = self.config
        s = cfg.settings
        size = start_size(cfg.pool_size_for(db, user), cfg.min_pool_size_for(db), cfg.max_db_connections_for(db))
        limits = PoolLimits(pool_size=size, min_pool_size=cfg.min_pool_size_for(db),
                            reserve_pool_size=cfg.reserve_pool_size_for(db, user),
                            reserve_pool_timeout=s.reserve_pool_timeout, server_login_retry=s.server_login_retry,
                            server_lifetime=cfg.server_lifetime_for(db), round_robin=s.server_round_robin,
                            check_delay=s.server_check_delay if s.server_check_query else -1.0)
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
        if self.shutting_down and not self.finished and (not self.servers if self.shedding else not self.clients):
            log.info("%s, exiting", "server connections dropped" if self.shedding else "client connections dropped")
            self._finish_shutdown()

    # -- reload ----------------------------------------------------------------------------------
    def reload(self, new: Config | None = None) -> list[str]:
        """HUP or RELOAD: apply what can change live, keep restart-only settings as they are (and say
        so), and let servers made from a changed database line be replaced as they come back. `new`:
        a config to apply instead of re-reading the file (the console's SET)."""
        import dataclasses

        if new is None:
            new = load_config(self.config_path)
        plan = diff(self.config, new)
        try:  # new certificates and keys for new connections; connected clients keep their sessions
            self.tls = Contexts(new.settings)
        except TlsConfigError as e:
            log.error("TLS configuration not reloaded, keeping the previous one: %s", e)
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
        for w in new.warnings:  # what the new file sets that pgmux ignores, as at start-up
            log.warning("%s", w)
        for hook in self.reload_hooks:
            hook()
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
        self.last_tick = now
        self.admission.free_idle_pools(now)
        if self.replication.waiting or self.replication.servers:
            self.replication.tick(now)
        if self.routing.splits:
            self.routing.tick(now)
        if self.shutting_down:
            self._after_change()
        for hook in self.tick_hooks:
            hook()

