"""One worker process of several (issue 14): what makes it one part of one pooler.

`WorkerShare` is `App.share` in a worker (None in the single process): it holds the listening sockets
the supervisor bound, the worker's index, and the shared counts (runtime/workershare.py). It hooks in at
four places, each a few lines in the hub:

- the cancel keys: the low bits of every BackendKeyData pid name the worker (`tag_pid`), and a
  CancelRequest for another worker's client is passed on to that worker's private Unix socket, where it
  arrives as any CancelRequest does (`forward_cancel`);
- max_client_conn: a login checks the sum over workers (`clients_full`);
- server connections: `SharedRegistry.headroom` adds the pooler-wide pool_size (+ reserve),
  max_db_connections and max_user_connections to the registry's own, and claims what it grants in the
  shared counts before the hub opens anything (under the lock, so two workers never both take the last
  slot); the exact counts are published again right after (call_soon) and every janitor tick;
- max_db_client_connections / max_user_client_connections: `SharedAdmission`.

Rebalance, every tick (0.2 s): a worker whose clients wait for a pool publishes how many; a worker
holding idle servers of that pool beyond its fair share (the limit in proportion to its clients of the
pool), or idle for SPARE seconds, or of a pool under the same max_db/max_user limit that is full, closes
them, and one holding more than its fair share closes servers as their transactions end (close_needed);
beyond the share only at SETTLE_TICKS ticks in a row (the shares swing while many clients connect at
once). The waiting worker opens its own at its next tick. Worst-case extra wait for a client while another
worker holds an idle server: three ticks (0.6 s), the server's end of the connection after Terminate (a
handed-over server counts until then), plus one server login; plus SPARE when that server is within its
worker's share.

A refusal is remembered (`Pool.no_room_until`): the next waiting acquires of the pool do not ask the
shared counts again until the worker's next tick or until one of its own servers of the pool closes. Under
load most acquires wait, and asking each time cost more user time per transaction than all the relaying
(18 against 7-9 us at 0.1 core); room another worker gives back is found at the tick, as the worst case
above already counted.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import TYPE_CHECKING, Any, Final

from pgmux.errors import PgmuxError
from pgmux.metrics.events import Events
from pgmux.pooling.registry import Registry
from pgmux.protocol import messages as m
from pgmux.runtime import workershare as ws
from pgmux.runtime.admission import Admission
from pgmux.runtime.app import TICK
from pgmux.runtime.minshare import MinimumRegistry, demand
from pgmux.session.states import ServerState

if TYPE_CHECKING:
    from pgmux.config.model import DatabaseConfig
    from pgmux.pooling.pool import Pool
    from pgmux.runtime.app import App
    from pgmux.session.client import ClientSession

log = logging.getLogger("pgmux")

CLOSING: Final = 0.3  # seconds a closed server still counts (its backend's exit in PostgreSQL)
ACCEPT_PAUSE: Final = 0.1  # seconds a worker with clearly more than its part of the clients stops accepting
SPARE: Final = 1.0  # seconds an idle server waits unused before any other worker's clients may have it
HAND_OVER_WAIT: Final = 5.0  # seconds a handed-over server may take to end its connection
SETTLE_TICKS: Final = 2  # ticks in a row beyond its share, others waiting, before a worker gives servers up


cancel_path = ws.private_socket


class WorkerShare:
    def __init__(self, row: int, workers: int, counts: ws.Counts, sockets: list[socket.socket],
                 rundir: str, supervisor: int) -> None:
        # Its row (workershare.rows_for: two per worker slot, the slot's process and, during a rolling
        # restart, its replacement) names it: its counts, its cancel keys' tag, its private socket.
        self.index = row
        self.slot = row % workers
        self.workers = workers
        self.rows = ws.rows_for(workers)
        self.supervisor = supervisor
        self.bits = ws.worker_bits(self.rows)
        self.counts = counts
        self.sockets = sockets
        self.rundir = rundir
        self.app: App | None = None
        self.published: dict[int, int] = {}  # slot -> what this worker last wrote there (held)
        self.private: asyncio.AbstractServer | None = None
        self.clients_slot = 0
        # Servers pgmux closed, still counted for CLOSING seconds: PostgreSQL ends the backend a moment
        # later, and another worker's new server must not meet it there. pool -> close times, oldest first.
        self.closing: dict[Pool[Any, Any], list[float]] = {}
        self.over: dict[Pool[Any, Any], int] = {}  # pools beyond their share: ticks in a row (_rebalance)
        self.quitting: dict[Any, float] = {}  # idle servers handed over: Terminate sent, at
        self.accept_paused = False
        self.retiring = False  # replaced in a rolling restart: accepts no more (runtime/retire.py)
        self.retirement: Any = None
        self.adopting: Any = None  # runtime/handover.Adopting: where a predecessor hands its clients over
        self.pool_slots: dict[Pool[Any, Any], tuple[int, int, int, int]] = {}  # slots(), of the registry's pools
        self.metrics: tuple[str, list[socket.socket]] | None = None  # metrics_listen, bound (runtime/webshare.py)

    # -- set-up --------------------------------------------------------------------------------------
    def install(self, app: App) -> None:
        """Before app.start(): the shared registry and admission, and the tick that keeps counts true."""
        self.app = app
        self.clients_slot = self.counts.slot(ws.CLIENTS)  # the first key of all: the table has room
        app.share = self
        app.events = ClosingEvents(self)
        app.registry = registry = SharedRegistry(self)
        app.admission = SharedAdmission(app, self)
        app.tick_hooks += [self.tick, registry.tick_minimum]  # (min_pool_size: runtime/minshare.py)

    async def start(self, app: App) -> None:
        from pgmux.net.listen import start_private_listener
        from pgmux.runtime.handover import start_adopting
        from pgmux.runtime.retire import handover_path

        self.private = await start_private_listener(app, cancel_path(self.rundir, self.index))
        # where the process this one replaces in a rolling restart hands its clients over
        self.adopting = await start_adopting(app, handover_path(self.rundir, self.index))

    def retire(self) -> None:
        """SIGWINCH: replaced in a rolling restart (runtime/retire.py)."""
        from pgmux.runtime.retire import retire_worker

        retire_worker(self)

    def started(self, app: App) -> None:
        from pgmux.runtime.worker_admin import WorkerAdmin

        app.admin.__class__ = WorkerAdmin  # same state, its commands act on every worker or are refused
        self.counts.mark_ready(self.index, os.getpid())  # the supervisor's sign that this worker serves

    def live(self) -> list[int]:
        """The workers of the pooler now, this one included (whose private sockets answer): during a
        rolling restart, a slot's old process and its replacement both."""
        rows = self.counts.live()
        return rows if self.index in rows else sorted([*rows, self.index])

    # -- cancel ----------------------------------------------------------------------------------------
    def tag_pid(self, pid: int) -> int:
        return ws.tag_pid(pid, self.index, self.bits)

    def forward_cancel(self, app: App, requester: ClientSession, pid: int, key: int) -> bool:
        """A CancelRequest whose key no client of this worker has: passed on (runtime/worker_cancel.py)?"""
        from pgmux.runtime.worker_cancel import forward_cancel

        return forward_cancel(self, app, requester, pid, key)

    # -- max_client_conn -------------------------------------------------------------------------------
    def clients_full(self, mine: int, limit: int) -> bool:
        """A login: more than max_client_conn clients in the whole pooler (this one counted)?"""
        c = self.counts
        with c.lock:
            c.set(self.index, self.clients_slot, mine)
            total = c.total(self.clients_slot)
        if ws.crowded(mine, total, self.workers):
            self.pause_accepting()
        return total > limit

    # -- spreading the clients ----------------------------------------------------------------------------
    def pause_accepting(self) -> None:
        """This worker has clearly more than its part of the clients: it stops accepting for ACCEPT_PAUSE
        seconds, and the others take the next ones (all wait on one listening socket; the first awake
        accepts, and a worker that has just accepted is often that one again: 27/14/6/1 of 48 clients
        connected one after the other). Only ever for ACCEPT_PAUSE: with the other workers busy, stopped
        or dead, a new client waits that long at most."""
        app = self.app
        if self.accept_paused or app is None or app.shutting_down or not app.listeners or self.retiring:
            return
        self.accept_paused = True
        for srv in app.listeners:
            srv.close()  # (a copy of the inherited socket: net/listen.start_listeners)
        app.listeners = []
        asyncio.get_running_loop().call_later(ACCEPT_PAUSE, app.spawn, self.resume_accepting)

    async def resume_accepting(self) -> None:
        """Accept again on fresh copies of the inherited sockets (after ACCEPT_PAUSE, or RESUME)."""
        from pgmux.net.listen import start_listeners, while_stopping

        app = self.app
        assert app is not None
        if app.finished or self.retiring:
            return
        if app.suspended:  # RESUME accepts again (runtime/suspend.py)
            self.accept_paused = False
            return
        s = app.config.settings
        try:
            servers = await start_listeners(app, s.listen_addr, s.listen_port, s.unix_socket_dir)
        except Exception as e:  # (out of file descriptors for the copies, say): again shortly, never given up
            log.warning("worker %d cannot accept again yet: %s (next attempt in %gs)", self.index, e, ACCEPT_PAUSE)
            asyncio.get_running_loop().call_later(ACCEPT_PAUSE, app.spawn, self.resume_accepting)
            return
        self.accept_paused = False
        app.listeners = while_stopping(app, servers)
        if app.suspended:  # SUSPEND came while these were being made: closed again
            app.suspension.stop_accepting()

    # -- server connections -----------------------------------------------------------------------------
    def keys(self, pool: Pool[Any, Any]) -> tuple[int, int, int]:
        """The slots of the pool, its database and its user."""
        pk, dk, uk, _ = self.slots(pool)
        return pk, dk, uk

    def slots(self, pool: Pool[Any, Any]) -> tuple[int, int, int, int]:
        """keys(), and the slot of the pool's clients (kept per pool: a waiting acquire asks)."""
        found = self.pool_slots.get(pool)
        if found is not None:
            return found
        label = "" if pool.host is None else f"{pool.host.host}:{pool.host.port}"
        c = self.counts
        found = (c.slot(ws.pool_key(pool.database, pool.user, label)), c.slot(ws.db_key(pool.database)),
                 c.slot(ws.user_key(pool.user)), c.slot(ws.pool_clients_key(pool.database, pool.user, label)))
        self.pool_slots[pool] = found
        return found

    def share(self, pool: Pool[Any, Any], limit: int) -> int:
        """This worker's fair share of the pool's limit (workershare.fair_share)."""
        pk, _, _, ck = self.slots(pool)
        c = self.counts
        return ws.fair_share(limit, c.active_workers(pk), [c.get(w, ck) for w in range(self.rows)], self.index)

    def local(self, pool: Pool[Any, Any]) -> tuple[int, int, int]:
        """This worker's servers of the pool, of its database and of its user (replication ones too),
        those closed less than CLOSING seconds ago included."""
        reg = self.registry()
        db = sum(self._held(p) for p in reg.pools.values() if p.database == pool.database)
        db += sum(n for (d, _), n in reg.unpooled.items() if d == pool.database)
        user = sum(self._held(p) for p in reg.pools.values() if p.user == pool.user)
        user += sum(n for (_, u), n in reg.unpooled.items() if u == pool.user)
        return self._held(pool), db, user

    def _held(self, pool: Pool[Any, Any]) -> int:
        times = self.closing.get(pool)
        if not times:
            return len(pool.servers)
        assert self.app is not None
        cutoff = self.app.now() - CLOSING
        while times and times[0] < cutoff:
            times.pop(0)
        if not times:
            del self.closing[pool]
        return len(pool.servers) + len(times)

    def server_closed(self, pool: Pool[Any, Any]) -> None:
        assert self.app is not None
        times = self.closing.setdefault(pool, [])
        if len(times) < 1024:  # a bound: a storm of closes counts at most this many
            times.append(self.app.now())

    def registry(self) -> Registry:
        assert self.app is not None
        return self.app.registry

    def grant(self, pool: Pool[Any, Any], local_room: int, in_pool: bool) -> int:
        """Room for new servers of `pool` in the whole pooler, claimed in the shared counts: at most what
        the pool wants (`in_pool`), or one (a replication connection, outside pool_size)."""
        app = self.app
        assert app is not None
        now = app.now()
        reg = self.registry()
        try:
            pk, dk, uk = self.keys(pool)
        except ws.TableFull as e:
            log.error("cannot open a server connection for %s/%s: %s", pool.database, pool.user, e)
            return 0
        want = max(1, pool.wanted(now, local_room)) if in_pool else 1
        c = self.counts
        if in_pool and ws.room(pool.limit(now), c.others(self.index, pk) + self._held(pool)) <= 0:
            # Full as far as any worker can tell (counts only ever err high): no lock, no claim; say how
            # many of ours wait, for the rebalance. A waiting acquire pays no system call here. (Its own
            # row may still hold a claim not used yet, made a moment ago: launch() asks twice when it
            # looks for servers to evict. Counted, that claim refused itself, every tick: starvation.)
            short = demand(pool, now)
            for k in (pk, dk, uk):
                c.want(self.index, k, short)
            pool.no_room_until = now + TICK  # the next waiting acquire does not ask again: the tick will
            return 0
        with c.lock:
            mine_p, mine_d, mine_u = self.local(pool)
            room = min(local_room, ws.room(reg.max_db.get(pool.database, 0), c.others(self.index, dk) + mine_d),
                       ws.room(reg.max_user.get(pool.user, 0), c.others(self.index, uk) + mine_u))
            if in_pool:
                limit = pool.limit(now)
                room = min(room, ws.room(limit, c.others(self.index, pk) + mine_p))
                if c.others_demand(self.index, pk) > 0 and mine_p >= self.share(pool, limit):
                    room = 0  # others wait for this pool and this worker holds its share: leave them the room
            claim = max(0, min(want, room))
            self._set(pk, mine_p + (claim if in_pool else 0))
            self._set(dk, mine_d + claim)
            self._set(uk, mine_u + claim)
            short = max(0, demand(pool, now) - claim) if in_pool else 0
            for k in (pk, dk, uk):
                c.want(self.index, k, short)
        if claim == 0 and in_pool:
            pool.no_room_until = now + TICK
        asyncio.get_running_loop().call_soon(self.publish, pool)
        return claim

    def _set(self, slot: int, n: int) -> None:
        self.counts.set(self.index, slot, n)
        self.published[slot] = n

    def publish(self, pool: Pool[Any, Any]) -> None:
        """This worker's exact counts for the keys of `pool`."""
        try:
            pk, dk, uk = self.keys(pool)
        except ws.TableFull:
            return
        for slot, n in zip((pk, dk, uk), self.local(pool), strict=True):
            self._set(slot, n)

    # -- the tick: counts, demand, rebalance -----------------------------------------------------------------
    def tick(self) -> None:
        app = self.app
        if app is None:
            return
        c = self.counts
        now = app.now()
        fresh: dict[int, int] = {}
        demand: dict[int, int] = {}
        for gone in list(self.closing):  # CLOSING times that ran out, of pools freed meanwhile too
            self._held(gone)
        if self.quitting:
            self._quitting(now)
        pools = list(self.registry())
        if len(self.pool_slots) > len(pools):  # pools freed since (each one's slots are kept in the table)
            live = set(pools)
            self.pool_slots = {p: k for p, k in self.pool_slots.items() if p in live}
            self.over = {p: n for p, n in self.over.items() if p in live}
        clients: dict[Pool[Any, Any], int] = {}
        for client in app.clients.values():
            if client.pool is not None:
                clients[client.pool] = clients.get(client.pool, 0) + 1
        for pool in pools:
            try:
                *keys, clients_slot = self.slots(pool)
            except ws.TableFull:
                continue
            fresh[clients_slot] = clients.get(pool, 0)
            waiting = max(0, len(pool.waiters) - pool.connecting)
            if pool.login_waiters and not pool.servers and not pool.connecting:
                waiting = max(waiting, 1)
            for slot, n in zip(keys, self.local(pool), strict=True):
                fresh[slot] = n
                demand[slot] = demand.get(slot, 0) + waiting
        fresh[self.clients_slot] = len(app.clients)
        for slot in list(self.published):
            if slot not in fresh:
                fresh[slot] = 0
        for slot, n in fresh.items():
            self._set(slot, n)
            c.want(self.index, slot, demand.get(slot, 0))
        for pool in pools:
            pool.no_room_until = 0.0  # the shared limits are asked again now
            self._rebalance(pool, now)
            if pool.waiters or pool.login_waiters:
                app.launch(pool)

    def _hand_over(self, server: Any, now: float) -> None:
        """An idle server another worker's clients need: Terminate, then keep counting it until PostgreSQL
        closes the connection (its backend has exited then, so the other worker's new server never meets
        it in pg_stat_activity); after HAND_OVER_WAIT seconds it is closed from this side."""
        app = self.app
        assert app is not None
        server.pool.discard_idle(server)
        server.close_needed = True
        log.info("%s closing: another worker's clients wait for this pool (Terminate sent, waiting for the "
                 "server to end the connection)", server.prefix)
        self.quitting[server] = now
        if server.transport is not None:
            server.transport.write(m.terminate())

    def _quitting(self, now: float) -> None:
        app = self.app
        assert app is not None
        for server, since in list(self.quitting.items()):
            if server.state is ServerState.CLOSED:
                del self.quitting[server]
            elif now - since > HAND_OVER_WAIT:
                del self.quitting[server]
                app.close_server(server, "another worker's clients wait for this pool (no end from the server)",
                                 relaunch=False)

    def _rebalance(self, pool: Pool[Any, Any], now: float) -> None:
        app = self.app
        assert app is not None
        c = self.counts
        reg = self.registry()
        try:
            pk, dk, uk = self.keys(pool)
        except ws.TableFull:
            return
        limit = pool.limit(now)
        marked = sum(1 for s in pool.servers if s.close_needed)  # given up already, still finishing
        others, total = c.others_demand(self.index, pk), c.total(pk) - marked
        share = self.share(pool, limit)
        beyond = len(pool.servers) - marked - share  # given up only at SETTLE_TICKS ticks in a row of this
        streak = self.over[pool] = self.over.get(pool, 0) + 1 if others > 0 and limit > 0 and beyond > 0 else 0
        settled = streak >= SETTLE_TICKS
        # Idle servers, up to what another worker's clients lack: those beyond this worker's fair share,
        # and those idle for SPARE seconds whatever the shares (no client of ours wanted them meanwhile).
        # One idle for a moment only is between two of our clients' transactions: given away, it would
        # be wanted back at once (a server login each way, every tick). Busy ones beyond the share: as
        # their transactions end.
        idle = 0
        if others > 0 and limit > 0:
            spare = max(beyond if settled else 0, sum(1 for s in pool.idle if now - s.idle_since >= SPARE))
            idle = min(len(pool.idle), max(0, others - ws.room(limit, c.total(pk))), spare)
        busy = max(0, ws.to_give_up(limit, len(pool.servers) - marked, others, total, share) - idle) if settled else 0
        # More than pool_size + reserve in the pooler (lowered: RELOAD, SET, pool_size = auto; as over_size()
        # in one process): each worker gives up what it holds beyond its share, the idle ones now, the
        # others as their transactions end.
        cap = pool.limits.pool_size + pool.limits.reserve_pool_size
        surplus = min(total - cap, len(pool.servers) - marked - share) - idle - busy if limit > 0 else 0
        for server in pool.idle[idle:idle + max(0, surplus)]:
            surplus -= 1
            app.close_server(server, f"the pooler holds more than pool_size ({cap})", relaunch=False)
        busy += max(0, surplus)
        for lim, slot in ((reg.max_db.get(pool.database, 0), dk), (reg.max_user.get(pool.user, 0), uk)):
            other = c.others_demand(self.index, slot)
            if lim > 0 and other > 0 and ws.room(lim, c.total(slot)) < other:
                idle = max(idle, min(len(pool.idle), other))  # idle servers under a full shared limit
        if idle <= 0 and busy <= 0:
            return
        for server in pool.idle[:idle]:
            self._hand_over(server, now)
        for server in list(pool.servers):
            if busy <= 0:
                break
            if not server.close_needed and server not in pool.idle:
                server.close_needed = True  # closed when its transaction ends (or its client leaves)
                busy -= 1
        self.publish(pool)


class ClosingEvents(Events):
    """App.events of a worker: every server close also starts its CLOSING time (WorkerShare.server_closed)."""

    def __init__(self, share: WorkerShare) -> None:
        super().__init__()
        self.share = share

    def server_closed(self, server: Any, reason: str) -> None:
        super().server_closed(server, reason)
        self.share.server_closed(server.pool)


class SharedRegistry(MinimumRegistry):
    """The registry of a worker: the shared limits count every worker's servers (WorkerShare.grant)."""

    def headroom(self, pool: Pool[Any, Any]) -> int:
        return self.topped_up(pool, super().headroom(pool))  # min_pool_size, then WorkerShare.grant

    def unpooled_headroom(self, pool: Pool[Any, Any]) -> int:
        return self.share.grant(pool, super().headroom(pool), False)


class SharedAdmission(Admission):
    """max_db_client_connections and max_user_client_connections over every worker's clients."""

    def __init__(self, app: App, share: WorkerShare) -> None:
        super().__init__(app)
        self.share = share

    def admit(self, c: ClientSession, db: DatabaseConfig) -> None:
        cfg = self.app.config
        user = db.user if cfg.settings.auth_type == "any" and db.user else c.user
        counts, me = self.share.counts, self.share.index
        try:
            dk, uk = counts.slot(ws.db_clients_key(c.database)), counts.slot(ws.user_clients_key(user))
        except ws.TableFull as e:
            raise PgmuxError(f"no more connections allowed: {e}", sqlstate="53300", severity="FATAL") from None
        with counts.lock:
            for slot, name, local, limit in (
                    (dk, "max_db_client_connections", self.per_db.get(c.database, 0),
                     cfg.max_db_client_connections_for(db)),
                    (uk, "max_user_client_connections", self.per_user.get(user, 0),
                     cfg.max_user_client_connections_for(user))):
                if limit > 0 and counts.others(me, slot) + local >= limit:
                    what = f'database "{c.database}"' if slot == dk else f'user "{user}"'
                    raise PgmuxError(f"client connections exceeded ({name})", sqlstate="53300", severity="FATAL",
                                     detail=f"{what} allows {limit} client connections (all workers)")
            super().admit(c, db)
            self._publish(c.database, user)

    def release(self, c: ClientSession) -> None:
        held = self.held.get(c)
        super().release(c)
        self.share.counts.set(self.share.index, self.share.clients_slot, len(self.app.clients))
        if held is not None:
            self._publish(*held)

    def _publish(self, database: str, user: str) -> None:
        counts, me = self.share.counts, self.share.index
        try:  # (both keys were made at admit(): found in this process's memo)
            counts.set(me, counts.slot(ws.db_clients_key(database)), self.per_db.get(database, 0))
            counts.set(me, counts.slot(ws.user_clients_key(user)), self.per_user.get(user, 0))
        except ws.TableFull:
            pass
