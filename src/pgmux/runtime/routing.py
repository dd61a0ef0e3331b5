"""Read/write split wired into the hub: per-host pools, health checks, failover waits, read-your-writes.

A database is split when its config says `read_write_split` and it has more than one host. It then
gets a Router (routing/router.py: the pure decisions), a HealthMonitor (runtime/health_monitor.py:
role, lag and replay position of every host, every `health_check_period`), and one pool per
(user, host) instead of one per user. A client of a split database has `c.route` set; the hub calls
`route()` when it wants a server for a transaction and lets the client's `c.pool` point at the pool
of the host chosen for it. Databases without split never reach this module. With worker processes one
worker checks the hosts for all and the others follow its verdicts (runtime/health_monitor.py,
runtime/health_share.py); a ban from a worker's own traffic (below) stays that worker's.

Failures, and what they do:
- A connect (or login) to a host that fails for a network or availability reason (SQLSTATE class 08
  or 57P) bans a replica for `ban_time`, or marks the primary down until the next successful check;
  clients queued for that host are routed again, so only transactions already running there fail.
- A class-08 error from a server (except 08P01, a protocol violation, which is the client's doing)
  bans its host the same way; a FATAL (shutdown, termination) asks for an immediate check.
- No usable primary: a write (and a read when no host at all is usable) waits, like under PAUSE,
  until a check finds a primary (a promoted replica), up to `failover_wait_timeout`, then fails with
  FATAL 57P03 (cannot_connect_now: PostgreSQL's own code for a server that cannot take the connection
  now, which drivers and poolers treat as "retry later"), and the client is disconnected, as after
  query_wait_timeout. pgmux never promotes anything.

Read-your-writes (opt-in per database): when a write transaction ends on the primary, before the
server is released, pgmux runs `SELECT pg_current_wal_insert_lsn()` on it (swallowed) and keeps the
position on the client. The client's later reads go only to replicas whose replay position, as last
polled by the health monitor, has reached it; otherwise to the primary. The polled position is a
lower bound of the replica's real one, so the rule errs towards the primary, never towards a stale
read. Cost: one extra round trip on the primary per write transaction, and reads right after a write
go to the primary until the next poll shows a replica caught up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from pgmux.config.model import DatabaseConfig, HostConfig
from pgmux.errors import PgmuxError
from pgmux.routing.classify import Classifier
from pgmux.routing.health import HostState, parse_lsn
from pgmux.routing.router import Kind, Router, transaction_kind
from pgmux.session.states import ClientState, ServerState

if TYPE_CHECKING:
    from pgmux.config.model import Config
    from pgmux.pooling.pool import Pool, PoolLimits
    from pgmux.pooling.registry import Registry
    from pgmux.session.client import ClientSession
    from pgmux.session.server import ServerSession

log = logging.getLogger("pgmux")

LSN_QUERY = "SELECT pg_current_wal_insert_lsn()"
UNKNOWN_LSN = 1 << 63  # a write whose position could not be read: no replica qualifies until the next one
# The insert position, not pg_current_wal_lsn(): with synchronous_commit=off the commit record may still
# sit in WAL buffers, past the write position, for up to wal_writer_delay.


def is_split(db: DatabaseConfig) -> bool:
    return db.read_write_split and len(db.topology) > 1


def label(host: HostConfig) -> str:
    return f"{host.host or 'unix'}:{host.port}"


class Split:
    """One split database: its router, its monitor and the clients waiting for a primary."""

    def __init__(self, db: DatabaseConfig, router: Router) -> None:
        self.db = db
        self.router = router
        self.monitor: Any = None  # HealthMonitor once started
        self.parked: list[ClientSession] = []  # waiting for a usable host (failover)
        self.kicked = 0.0  # when the last out-of-turn check of every host was asked for


class RoutingHub(Protocol):
    """What routing asks of the hub (runtime/app.py implements it): this module does not import App."""

    config: Config
    registry: Registry
    now: Callable[[], float]
    spawn: Callable[..., None]
    tls: Any

    def acquire(self, c: ClientSession, now: float | None = None) -> None: ...

    def launch(self, pool: Pool[Any, Any]) -> None: ...

    def return_server(self, server: ServerSession, leaving: bool = False, now: float | None = None) -> None: ...

    def pool_setup(self, db: DatabaseConfig, user: str) -> tuple[PoolLimits, str]: ...


class Routing:
    def __init__(self, app: RoutingHub) -> None:
        self.app = app
        self.splits: dict[str, Split] = {}

    # -- setup ----------------------------------------------------------------------------------
    def split_for(self, db: DatabaseConfig, user: str, password: str | None) -> Split:
        sp = self.splits.get(db.name)
        if sp is not None:
            return sp
        hosts = [HostState(h, h.role if h.role in ("primary", "replica") else "auto",  # type: ignore[arg-type]
                           max_lag_bytes=db.max_lag_bytes, max_lag_seconds=db.max_lag_seconds)
                 for h in db.topology]
        router = Router(db.name, hosts, db.balance, read_your_writes=db.read_your_writes,
                        classifier=Classifier(db.write_functions))
        sp = self.splits[db.name] = Split(db, router)
        self._start_monitor(sp, user, password)
        return sp

    def _start_monitor(self, sp: Split, user: str, password: str | None) -> None:
        s = self.app.config.settings
        if s.health_check_period <= 0:
            return  # checks disabled: bans from failed connects still apply
        from pgmux.runtime.health_monitor import HealthMonitor
        from pgmux.runtime.health_share import HealthShare

        worker = getattr(self.app, "share", None)  # workers: one checker for all (runtime/health_share.py)
        share = None
        if worker is not None:
            try:
                share = HealthShare(worker.rundir, sp.db.name, worker.index)
            except OSError as e:
                log.error("health checks of %s: cannot share them with the other workers (%s): this worker "
                          "checks the hosts itself", sp.db.name, e)
        sp.monitor = HealthMonitor(sp.router.hosts, s.health_check_period, s.health_check_timeout, user, password,
                                   sp.db.target_dbname, lambda st: self._changed(sp, st), ban_time=s.ban_time,
                                   clock=self.app.now, tls=lambda: self.app.tls, share=share)
        sp.monitor.start()

    def stop(self) -> None:
        for sp in self.splits.values():
            if sp.monitor is not None:
                self.app.spawn(sp.monitor.stop)

    def host_pool(self, sp: Split, state: HostState[Any], user: str) -> Pool[Any, Any]:
        host = state.host
        pool = self.app.registry.get_or_create(sp.db.name, user, lambda: self.app.pool_setup(sp.db, user),
                                               host=host, label=label(host))
        if pool.hstate is None:  # new: PAUSE and DISABLE of the database apply to it too
            pool.hstate = state
            siblings = [p for p in self.app.registry.for_database(sp.db.name) if p is not pool]
            pool.paused = any(p.paused for p in siblings)
            pool.disabled = any(p.disabled for p in siblings)
        return pool

    def login_pool(self, c: ClientSession, db: DatabaseConfig, user: str, password: str | None) -> Pool[Any, Any]:
        """The pool a new client of a split database logs in with (it gives the welcome's parameters):
        a host that can take reads, else the first host."""
        sp = self.split_for(db, user, password)
        c.route = sp
        now = self.app.now()
        state = sp.router.pick("read", now, self._outstanding(sp), count=False) or sp.router.hosts[0]
        return self.host_pool(sp, state, user)

    # -- routing a transaction --------------------------------------------------------------------
    def _outstanding(self, sp: Split) -> dict[HostState[Any], int]:
        out = dict.fromkeys(sp.router.hosts, 0)
        for pool in self.app.registry.for_database(sp.db.name):
            st = pool.hstate
            if st is not None:
                out[st] += len(pool.servers) - len(pool.idle) + len(pool.waiters)
        return out

    def route(self, c: ClientSession, now: float) -> Pool[Any, Any] | None:
        """The pool of the host this client's next transaction goes to; None when it must wait for a
        usable host (it is then parked, state WAITING)."""
        sp: Split = c.route
        router = sp.router
        pool = c.logged_in_pool()
        kind: Kind
        if pool.mode == "session":
            kind, why = "write", "session pooling"  # the whole session on one server: the primary
        elif c.params.get("pgmux.route", "").lower() == "primary":
            kind, why = "write", "session setting pgmux.route"
        else:
            queued = c.pending or []
            data = queued[0] if len(queued) == 1 else b"".join(queued)
            kind, why = self._kind(c, data)
        # No monitor, no replay positions known: reads after a write go to the primary.
        lsns = sp.monitor.current_lsn if sp.monitor is not None else {}
        state = router.pick(kind, now, self._outstanding(sp), c.ryw_lsn if router.read_your_writes else 0, lsns)
        if state is None:
            self._park(sp, c, now, kind)
            return None
        c.lsn_wanted = router.read_your_writes and kind == "write"
        pool = self.host_pool(sp, state, pool.user)
        c.use_pool(pool)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s (%s) -> %s %s", c.prefix, kind, why, state.role, label(state.host))
        return pool

    @staticmethod
    def _kind(c: ClientSession, data: bytes | memoryview) -> tuple[Kind, str]:
        stmts = c.stmts

        def text(name: str) -> str | None:
            st = stmts.lookup(name) if stmts is not None else None
            return st.query if st is not None else None

        return transaction_kind(c.route.router.classifier, bytes(data), text)

    def hold(self, c: ClientSession, server: ServerSession, chunk: bytes | memoryview) -> bool:
        """Whether what a client pipelines while its replica still owes replies must wait: a write, or a
        transaction not declared read only, is queued until the replica is done and then routed on its
        own, to the primary (ClientSession._relay queues it, App.server_ready routes it). Inside an
        unfinished extended-protocol batch, or when the replica's transaction stays open, it goes to
        the replica after all, where PostgreSQL answers it as it would on any read-only server."""
        if c.pending:
            return True  # something is queued already: keep the order
        st = server.pool.hstate
        if st is None or st.role == "primary" or not server.owed or c.unsynced:
            return False
        return self._kind(c, chunk)[0] == "write"

    def _park(self, sp: Split, c: ClientSession, now: float, kind: Kind) -> None:
        if c.state is not ClientState.WAITING:  # not a retry: the wait starts now
            c.move(ClientState.WAITING)
            c.wait_since = now
            log.info("%s no usable %s for %s: waiting up to failover_wait_timeout", c.prefix,
                     "primary" if kind == "write" else "host", sp.db.name)
        if c not in sp.parked:
            sp.parked.append(c)
        self._kick(sp, now)

    def _kick(self, sp: Split, now: float) -> None:
        """Check every host now instead of at the next period (at most twice a second)."""
        if sp.monitor is not None and now - sp.kicked >= 0.5:
            sp.kicked = now
            self.app.spawn(sp.monitor.check_all)

    def forget(self, c: ClientSession) -> None:
        sp: Split = c.route
        if c in sp.parked:
            sp.parked.remove(c)

    def _retry(self, sp: Split) -> None:
        """A host changed: parked clients try again (in arrival order)."""
        parked, sp.parked = sp.parked, []
        for c in parked:
            if c.state is ClientState.WAITING:
                self.app.acquire(c)

    # -- read-your-writes ------------------------------------------------------------------------
    def capture_lsn(self, c: ClientSession, server: ServerSession) -> None:
        """A write transaction just ended on the primary: read its WAL position before the server goes
        back. The server stays linked meanwhile, so a query the client sends at once runs after it."""
        c.lsn_wanted = False
        server.want_lsn = True
        server.lsn = None
        server.send_internal(LSN_QUERY)

    def lsn_done(self, server: ServerSession, err: dict[str, str] | None) -> None:
        server.want_lsn = False
        c = server.client
        text, server.lsn = server.lsn, None
        if c is None:
            return
        lsn = None
        if err is None and text:
            try:
                lsn = parse_lsn(text)
            except ValueError:
                pass
        if lsn is not None:
            # The position now is past every commit this client made before; it replaces an unknown one.
            c.ryw_lsn = lsn if c.ryw_lsn == UNKNOWN_LSN else max(c.ryw_lsn, lsn)
        else:
            # Unknown position (the host was demoted under us, say): keep this client's reads on the
            # primary until a later write tells a position again.
            c.ryw_lsn = UNKNOWN_LSN
            log.warning("%s could not read the WAL position: %s", server.prefix, (err or {}).get("M", text))
        if server.state is not ServerState.ACTIVE or c.server is not server:
            return
        if server.clean and not c.unsynced and not c.pinned:
            c.detach()
            self.app.return_server(server)
        else:
            c.lsn_wanted = True  # the client went on on this server: learn the position again at its end

    # -- health ------------------------------------------------------------------------------------
    def _changed(self, sp: Split, state: HostState[Any]) -> None:
        """The monitor saw a role or status change: pools of a usable host may connect again, and
        parked clients get another chance."""
        now = self.app.now()
        if state.usable(now):
            for pool in self.app.registry.for_database(sp.db.name):
                if pool.hstate is state:
                    pool.last_login_failure = None
                    self.app.launch(pool)
        self._retry(sp)

    def _mark(self, sp: Split, state: HostState[Any], reason: str) -> None:
        now = self.app.now()
        if state.role == "replica" or sp.monitor is None:
            if not state.banned(now):
                state.ban(now, self.app.config.settings.ban_time, reason)
                log.warning("host %s of %s banned for %gs: %s", label(state.host), sp.db.name,
                            self.app.config.settings.ban_time, reason)
        else:
            # The primary (or a host whose role is not known yet) is never banned: down until a check
            # succeeds, so a failover or a restart is followed as soon as it happens.
            state.record_check(now, False, detail=reason)
            log.warning("host %s of %s marked down: %s", label(state.host), sp.db.name, reason)
        self._kick(sp, now)

    def login_failed(self, pool: Pool[Any, Any], err: PgmuxError) -> bool:
        """A server of a split database could not connect or log in. For host failures, ban or mark
        the host and route the clients queued for it again; True if the caller has nothing left to do."""
        if not (err.sqlstate.startswith("08") or err.sqlstate.startswith("57P")):
            return False  # a wrong password or a missing database: the client must hear it
        sp = self.splits.get(pool.database)
        state = pool.hstate
        if sp is None or state is None:
            return False
        self._mark(sp, state, err.message)
        now = self.app.now()
        waiters = pool.take_login_waiters()
        for c in waiters:
            other = sp.router.pick("read", now, self._outstanding(sp), count=False)
            if other is None or other is state:
                c.fail(err, close=True)
                continue
            c.use_pool(self.host_pool(sp, other, pool.user))
            c.pool.add_login_waiter(c)
            self.app.launch(c.pool)
        for c in list(pool.waiters):
            pool.remove_waiter(c)
            c.move(ClientState.IDLE)
            c.use_pool(pool)
            self.app.acquire(c, now)
        return True

    def server_error(self, server: ServerSession, fields: dict[str, str]) -> None:
        sp = self.splits.get(server.pool.database)
        state = server.pool.hstate
        if sp is None or state is None:
            return
        code = fields.get("C", "")
        if code.startswith("08") and code != "08P01":
            self._mark(sp, state, f"server error {code}: {fields.get('M', '')}")
        else:
            self.suspect(server.pool)

    def suspect(self, pool: Pool[Any, Any]) -> None:
        """A server of this host closed or sent a FATAL: check the host now."""
        sp = self.splits.get(pool.database)
        if sp is not None and sp.monitor is not None and pool.hstate is not None:
            self.app.spawn(sp.monitor.check, pool.hstate)

    def tick(self, now: float) -> None:
        """Janitor: parked clients retry (bans expire without a monitor event) or give up."""
        timeout = self.app.config.settings.failover_wait_timeout
        for sp in self.splits.values():
            if not sp.parked:
                continue
            for c in [c for c in sp.parked if now - c.wait_since >= timeout]:
                sp.parked.remove(c)
                c.fail(PgmuxError(
                    f"no usable server for database \"{sp.db.name}\": no primary (or no host) reachable "
                    f"within failover_wait_timeout ({timeout:g}s)", sqlstate="57P03", severity="FATAL",
                    hint="check the hosts with SHOW HOSTS on the pgmux console"))
            self._retry(sp)

    # -- admin -------------------------------------------------------------------------------------
    def ban(self, db: str, host: str, port: int, on: bool) -> str | None:
        """BAN/UNBAN from the console; an error text, or None when done."""
        sp = self.splits.get(db)
        if sp is None:
            return f"no read/write-split database {db!r} in use"
        state = sp.router.find(host, port)
        if state is None:
            return f"database {db!r} has no host {host}:{port}"
        now = self.app.now()
        if on:
            state.ban(now, self.app.config.settings.ban_time, "banned by admin")
        else:
            state.unban()
            self._changed(sp, state)
        if sp.monitor is not None:
            sp.monitor.console_ban(state, on)  # workers: the checker publishes it too
        return None

    def wall(self, mono: float) -> float:
        return time.time() - (self.app.now() - mono)
