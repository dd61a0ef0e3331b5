"""The hub's state and the smallest layer of it: what every other layer reads and writes.

App (runtime/app.py) is built in layers, each a class in its own module, each knowing only those
below it: core.Core (the state: connections, pools, settings; the small hub-port forwards) <-
servers.Servers (server connects, logins, health, closing and returning servers) <- handoff.Handoff
(the per-transaction hand-off: acquire, server_ready, client_closed) <- logins.Logins (login policy,
admission, cancel keys, the welcome, cancel requests) <- app.App (lifecycle, shutdown, reload, the
janitor). A layer calls up only through the two methods declared here and defined above (welcome,
after_change). All are compiled (setup.py): calls between them are direct.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from pgmux.config.model import Config, DatabaseConfig, UserConfig
from pgmux.metrics.events import Events
from pgmux.net.tls import Contexts
from pgmux.pooling.autosize import start_size
from pgmux.pooling.pool import PoolLimits
from pgmux.pooling.registry import Registry
from pgmux.runtime.routing import Routing
from pgmux.session.client import ClientSession
from pgmux.session.hub import Hub
from pgmux.session.params import TRACKED, canon
from pgmux.session.prepared import Registry as StatementRegistry
from pgmux.session.server import ServerSession

log = logging.getLogger("pgmux")


class HotSettings:
    """The settings every login and logout reads, as native fields: Settings and Config are Python
    dataclasses, and each attribute compiled code reads of them is a dictionary lookup (about 20 a
    login). Made from the config at start and again wherever the config changes (App.reload)."""

    def __init__(self, config: Config) -> None:
        s = config.settings
        self.log_connections: bool = bool(s.log_connections)
        self.log_disconnections: bool = bool(s.log_disconnections)
        self.max_client_conn: int = int(s.max_client_conn)
        self.max_packet_size: int = int(s.max_packet_size)
        self.auth_type: str = s.auth_type
        self.auth_user: str | None = s.auth_user
        self.scram_iterations: int = int(s.scram_iterations)
        self.ignore_startup_parameters: tuple[str, ...] = s.ignore_startup_parameters
        self.application_name_add_host: bool = bool(s.application_name_add_host)
        self.listen_port: int = int(s.listen_port)
        self.max_prepared_statements: int = int(s.max_prepared_statements)
        self.max_db_client_connections: int = int(s.max_db_client_connections)
        self.max_user_client_connections: int = int(s.max_user_client_connections)
        # [databases] by name (a dict: Config's is a read-only Mapping, whose get() is a Python call)
        self.databases: dict[str, DatabaseConfig] = dict(config.databases)
        self.users: dict[str, UserConfig] = dict(config.users)  # ([users]: per-user limits)


class Core(Hub):
    routing: Routing

    def __init__(self, config: Config, config_path: str) -> None:
        self.config = config
        # server_reset_query_always, read once per transaction (runtime/handoff.py): a native field,
        # set again wherever the configuration changes (App.reload).
        self.reset_always: bool = config.settings.server_reset_query_always
        self.hot = HotSettings(config)  # (the same: set again by App.reload)
        self.config_path = config_path
        self.registry = Registry()
        self.clients: dict[int, ClientSession] = {}
        # The clients accepted and not (yet) logged in, as far as the janitor's last pass knows: the ones
        # client_login_timeout applies to (runtime/timeouts.py drops the others as it meets them).
        self.arriving: dict[int, ClientSession] = {}
        self.servers: dict[int, ServerSession] = {}
        self.by_cancel: dict[int, ClientSession] = {}
        self.next_id = 1
        self.listeners: list[asyncio.AbstractServer] = []
        self.paused = False
        self.suspended = False  # SUSPEND: nothing is read but the consoles (runtime/suspend.py)
        self.shutting_down = False
        # How: "servers" (SIGINT, SHUTDOWN WAIT_FOR_SERVERS), "clients" (SIGTERM, SHUTDOWN WAIT_FOR_CLIENTS),
        # "immediate"; "" while running. `shedding`: "servers", no new transaction starts.
        self.shutdown_mode = ""
        self.shedding = False
        self.finished = False
        self.stopped: asyncio.Future[None] | None = None
        self.start_time = time.time()
        self.admin: Any = None  # set by start(): the admin console service
        self.suspension: Any = None  # set by start(): SUSPEND and RESUME (runtime/suspend.py)
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
        self._random_at = 0  # the next unused byte of _random (runtime/logins.py)
        # Protocol-level prepared statements of every pool, by (query, types): names unique per process.
        self.prepared = StatementRegistry()
        self.tls: Contexts = Contexts(config.settings)  # client and server TLS contexts (net/tls.py)
        self.auth_query: Any = None  # users not in auth_file, looked up as auth_user (runtime/auth_query.py)
        self.auth_secrets: dict[str, str] = {}  # secrets auth_query found for users who then logged in
        # Made by App.__init__ (their modules type the hub as a layer above this one): read/write split
        # databases (per-host pools, health, failover); client limits, the console past max_client_conn,
        # idle pools (`admission`, declared by Handoff); replication clients, each with a server of its own.
        self.replication: Any = None
        self.last_tick = 0.0  # when the janitor last ran (query_wait_notify: who crossed the mark since)
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
        self.share: Any = None  # a worker process of several: runtime/worker.WorkerShare (issue 14)
        # Told of each client whose transaction ended with nothing queued (its server given back): a worker
        # replaced in a rolling restart hands such a client over at once (runtime/retire.py). None otherwise.
        self.on_idle: Any = None
        # The listening sockets were given to the process that took over (`pgmux -R`, runtime/reboot.py):
        # their socket files are its own now, not removed at this process's exit.
        self.listeners_given = False
        self.web: Any = None  # metrics_listen's server (runtime/web.Web), set by runtime/main

    def _start_task(self, fn: Callable[..., Coroutine[Any, Any, None]], *args: Any) -> None:
        task = asyncio.get_running_loop().create_task(fn(*args))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def log_exception(self, prefix: str, exc: BaseException) -> None:
        log.error("%s internal error", prefix, exc_info=exc)

    def log_pooler_error(self, prefix: str, message: str) -> None:
        if self.config.settings.log_pooler_errors:
            log.warning("%s pooler error: %s", prefix, message)

    def admin_message(self, c: ClientSession, mtype: int, body: bytes) -> None:
        self.admin.message(c, mtype, body)

    def replication_data(self, c: ClientSession, data: bytes) -> None:
        self.replication.client_data(c, data)

    def route_hold(self, c: ClientSession, server: ServerSession, data: bytes | memoryview) -> bool:
        return self.routing.hold(c, server, data)

    def host_error(self, server: ServerSession, fields: dict[str, str]) -> None:
        self.routing.server_error(server, fields)

    def pool_setup(self, db: DatabaseConfig, user: str) -> tuple[PoolLimits, str]:
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

    def apply_limits(self) -> None:
        for pool in self.registry:
            db = self.config.database(pool.database)
            if db is None:
                pool.disabled = True
                continue
            pool.limits, pool.mode = self.pool_setup(db, pool.user)
            pool.refuse_pins = db.pin_mode == "refuse"

    # -- defined by the layers above: logins.Logins and app.App -------------------------------------
    def welcome(self, c: ClientSession, launch: bool = True) -> None:
        raise NotImplementedError  # logins.Logins.welcome

    def after_change(self) -> None:
        raise NotImplementedError  # app.App.after_change
