"""Watching the pools: the advisor's measurements, pool_size = auto, and SHOW ADVICE.

One janitor-tick hook (App.tick_hooks, registered by runtime/periodic.py) reads every pool once per
tick: the SHOW STATS counters the hand-off already keeps (transactions, hold and wait seconds) and the
lengths of its lists. Nothing is added to the per-transaction path. Each pool gets a pooling/advisor
Tracker; a pool whose pool_size is `auto` also gets a pooling/autosize AutoSizer, whose size is applied
here (a larger size launches servers for the waiting clients at once; a smaller one lets the surplus
close as it comes back, as after a reload that lowers pool_size). With worker processes one worker's
AutoSizer sizes each auto pool for the pooler, from every worker's measurements (runtime/autoshare.py).

PostgreSQL's max_connections, for the advisor's budget, is asked of each server pgmux connects to (a
short connection of its own, net/probe.py, with the credentials of a live pooled server, at most once
a minute); when that fails the budget says so and uses max_db_connections when configured.
"""

from __future__ import annotations

import logging
import math
from array import array
from dataclasses import replace
from typing import Any

from pgmux.admin.rows import AdviceRow
from pgmux.config.values import AUTO
from pgmux.net.connector import default_unix_dir
from pgmux.net.probe import Probe
from pgmux.pooling.advisor import Advice, Budget, Snapshot, Tracker, budget
from pgmux.pooling.autosize import AutoSizer, bounds
from pgmux.runtime.autoshare import AutoShare
from pgmux.runtime.workershare import TableFull

log = logging.getLogger("pgmux")

_MAXCONN_SQL = ("SELECT current_setting('max_connections')::int - current_setting('superuser_reserved_connections')"
                "::int, (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')")
_MAXCONN_EVERY = 60.0


class PoolWatch:
    def __init__(self, app: Any) -> None:
        self.app = app
        self.watched: dict[int, tuple[Any, Tracker, AutoSizer | None]] = {}  # id(pool) -> ...
        self.clients: dict[int, int] = {}  # id(pool) -> clients, counted every fifth tick
        self.ticks = 0
        # server label -> (usable max_connections or None, client backends then, when, how it was learnt)
        self.maxconn: dict[str, Asked] = {}
        self.asking: set[str] = set()
        self.auto: AutoShare | None = None  # workers: pool_size = auto decided once for the pooler
        self.leading: set[int] = set()  # id(pool) of auto pools whose controller runs here (the leader)
        app.reload_hooks.append(self.reapply)

    def __call__(self) -> None:
        app = self.app
        now = app.now()
        self.ticks += 1
        if self.ticks % 5 == 1:
            # In place, the old counts freed before the new are made: a dict replaced while it is alive
            # stays in the memory arena it was made in, and after a storm of clients that one is held
            # by it alone (runtime/memtrim.py).
            counts = self.clients
            counts.clear()
            for c in app.clients.values():
                if c.pool is not None:
                    counts[id(c.pool)] = counts.get(id(c.pool), 0) + 1
        seen = set()
        for pool in app.registry:
            key = id(pool)
            seen.add(key)
            entry = self.watched.get(key)
            if entry is None or entry[0] is not pool:
                entry = self.watched[key] = (pool, Tracker(pool.database, pool.user), self._sizer(pool))
            _, tracker, sizer = entry
            st = pool.stats
            busy = len(pool.servers) - len(pool.idle) - pool.connecting
            snap = Snapshot(now, st.xact_count, st.xact_secs, st.wait_secs, max(0, busy), len(pool.waiters),
                            self.clients.get(key, 0), pool.limits.pool_size, len(pool.servers) - pool.connecting)
            tracker.add(snap)
            if sizer is not None and app.share is not None:  # workers: one controller for the pooler
                sizer, snap = self._shared(pool, sizer, snap)
            if sizer is not None:
                size = sizer.feed(snap)
                if self.auto is not None:
                    self.auto.decided(pool, size)
                if size != pool.limits.pool_size:
                    o = sizer.levels.get(pool.limits.pool_size)
                    log.debug("pool %s/%s: pool_size = auto: %d -> %d (home %d; at %d: %s)", pool.database,
                              pool.user, pool.limits.pool_size, size, sizer.home, pool.limits.pool_size,
                              "not measured" if o is None else
                              f"{o.tps:.0f} tps (se {o.se:.1%}), hold {o.hold * 1e3:.2f} ms")
                    self._apply(pool, size)
        for key in [k for k in self.watched if k not in seen]:
            del self.watched[key]
            self.leading.discard(key)
        if self.auto is not None and len(self.auto.slots) > len(seen):
            self.auto.forget({entry[0] for entry in self.watched.values()})
        if self.ticks % 25 == 1:
            self._ask_max_connections(now)

    # -- pool_size = auto ----------------------------------------------------------------------------
    def _sizer(self, pool: Any) -> AutoSizer | None:
        cfg = self.app.config
        db = cfg.database(pool.database)
        if db is None or cfg.pool_size_for(db, pool.user) != AUTO:
            return None
        lo, hi = bounds(cfg.min_pool_size_for(db), cfg.max_db_connections_for(db))
        return AutoSizer(lo, hi, size=pool.limits.pool_size)

    def _shared(self, pool: Any, sizer: AutoSizer, snap: Snapshot) -> tuple[AutoSizer | None, Snapshot]:
        """With workers (runtime/autoshare.py): this worker's measurements published; the leader's sizer fed
        the pooler's (a fresh one when this worker has just become the leader), the others' size applied."""
        if self.auto is None:
            self.auto = AutoShare(self.app.share)
        auto, key = self.auto, id(pool)
        try:
            auto.publish(pool, snap)
            if auto.leader() != auto.share.index:
                self.leading.discard(key)
                size = auto.size(pool)
                if size is not None:
                    self._apply(pool, size)
                return None, snap
            if key not in self.leading:
                self.leading.add(key)
                fresh = self._sizer(pool)
                if fresh is not None:
                    sizer = fresh
                    self.watched[key] = (pool, self.watched[key][1], sizer)
            return sizer, auto.pooled(pool, snap)
        except TableFull:
            return sizer, snap  # (no room for its keys in the shared table: sized on this worker's own)

    def _apply(self, pool: Any, size: int) -> None:
        old = pool.limits
        if size == old.pool_size:
            return
        pool.limits = replace(old, pool_size=size)
        self.app.registry.limits_replaced(pool, old)
        if size > old.pool_size and pool.waiters:
            self.app.launch(pool)

    def reapply(self) -> None:
        """After a reload or SET: pools that stay auto keep their chosen size (and new bounds); pools
        that became auto start a controller; pools no longer auto drop theirs."""
        for key, (pool, tracker, sizer) in list(self.watched.items()):
            fresh = self._sizer(pool)
            if fresh is None:
                self.watched[key] = (pool, tracker, None)
                continue
            if sizer is not None:
                sizer.lo, sizer.hi = fresh.lo, fresh.hi
                sizer.size = sizer.home = min(sizer.hi, max(sizer.lo, sizer.size))
                fresh = sizer
            self.watched[key] = (pool, tracker, fresh)
            old = pool.limits
            pool.limits = replace(old, pool_size=fresh.size)
            self.app.registry.limits_replaced(pool, old)

    # -- SHOW ADVICE ---------------------------------------------------------------------------------
    def advice(self) -> tuple[list[Advice], list[Budget]]:
        now = self.app.now()
        advices: list[Advice] = []
        per_server: dict[str, list[tuple[int, int]]] = {}
        ours: dict[str, int] = {}
        for pool, tracker, sizer in self.watched.values():
            adv = tracker.advise(now, auto=sizer is not None)
            advices.append(adv)
            label = _label(pool)
            if label is not None:
                lim = pool.limits
                per_server.setdefault(label, []).append((max(adv.needed, lim.min_pool_size),
                                                         lim.pool_size + lim.reserve_pool_size))
                ours[label] = ours.get(label, 0) + len(pool.servers)
        budgets = []
        for label, needs in per_server.items():
            asked = self.maxconn.get(label)
            value, backends, when, how = (None, 0, 0.0, "not asked yet") if asked is None else asked.get()
            if value is not None:
                source = f"server (max_connections - superuser_reserved_connections, {now - when:.0f} s ago)"
                budgets.append(budget(label, needs, value, source, others=max(0, backends - ours.get(label, 0))))
            else:
                configured = self._configured(label)
                source = f"configured max_db_connections (server: {how})" if configured else f"unknown ({how})"
                budgets.append(budget(label, needs, configured, source))
        return advices, budgets

    def _configured(self, label: str) -> int | None:
        cfg = self.app.config
        total = 0
        for pool, _, _ in self.watched.values():
            db = cfg.database(pool.database)
            if _label(pool) == label and db is not None:
                n = cfg.max_db_connections_for(db)
                if n <= 0:
                    return None
                total = max(total, n)
        return total or None

    def rows(self) -> list[AdviceRow]:
        advices, budgets = self.advice()
        out = [AdviceRow(database=a.database, user=a.user, pool_size=a.size, auto="yes" if a.auto else "no",
                         tps=f"{a.tps:.1f}", hold_ms=f"{a.hold_ms:.3f}", busy=f"{a.busy:.2f}",
                         waiting=f"{a.waiting:.2f}", clients=f"{max(a.clients, 0):.0f}", needed=a.needed,
                         verdict=a.verdict, elasticity=None if a.elasticity is None else f"{a.elasticity:.2f}",
                         detail=a.detail) for a in advices]
        for b in budgets:
            limit = "unknown" if b.max_connections is None else str(b.max_connections)
            out.append(AdviceRow(database="*", user=b.server, pool_size=b.configured, auto="", tps="", hold_ms="",
                                 busy="", waiting="", clients="", needed=b.needed, verdict="budget " + b.verdict,
                                 elasticity=None,
                                 detail=f"max_connections {limit} usable, from {b.source}: {b.detail}"))
        return out

    # -- max_connections -----------------------------------------------------------------------------
    def _ask_max_connections(self, now: float) -> None:
        for pool, _, _ in list(self.watched.values()):
            label = _label(pool)
            if label is None or label in self.asking:
                continue
            known = self.maxconn.get(label)
            if known is not None and now - known.nums[2] < _MAXCONN_EVERY:
                continue
            server = next((s for s in pool.servers if s.state.name in ("IDLE", "ACTIVE")), None)
            if server is None:
                continue
            self.asking.add(label)
            self.app.spawn(self._ask, label, server.target)

    async def _ask(self, label: str, t: Any) -> None:
        conn = None
        now = self.app.now()
        try:
            host = t.host if t.unix_path is None else t.unix_path.rsplit("/", 1)[0]
            conn = await Probe.open(host, t.port, t.user, t.password, t.dbname, default_unix_dir(),
                                    self.app.tls, application_name="pgmux pool advisor")
            row = await conn.query_row(_MAXCONN_SQL)
            self.maxconn.setdefault(label, Asked()).set(int(row[0] or 0), int(row[1] or 0), self.app.now(), "asked")
        except Exception as e:  # noqa: BLE001 - a failed question leaves the budget on the configured value
            self.maxconn.setdefault(label, Asked()).set(None, 0, now, f"could not ask: {e}")
            log.debug("pool advisor: max_connections of %s: %s", label, e)
        finally:
            if conn is not None:
                conn.close()
            self.asking.discard(label)


class Asked:
    """What a server said of max_connections, overwritten in place once a minute: numbers as C doubles,
    not a new tuple of objects kept a minute (one made while a storm of clients passes would keep the
    storm's memory arena resident; issue 11, runtime/memtrim.py)."""

    __slots__ = ("nums", "how")

    def __init__(self) -> None:
        self.nums = array("d", (math.nan, 0.0, 0.0))  # usable max_connections (NaN: unknown), backends, when
        self.how = "not asked yet"

    def set(self, value: int | None, backends: int, when: float, how: str) -> None:
        self.nums[0] = math.nan if value is None else value
        self.nums[1], self.nums[2] = backends, when
        self.how = how

    def get(self) -> tuple[int | None, int, float, str]:
        value, backends, when = self.nums
        return None if math.isnan(value) else int(value), int(backends), when, self.how


def _label(pool: Any) -> str | None:
    server = next(iter(pool.servers), None)
    return None if server is None else server.target.label


def watch_of(app: Any) -> PoolWatch | None:
    return next((h for h in app.tick_hooks if isinstance(h, PoolWatch)), None)


def advice_rows(app: Any) -> list[AdviceRow]:
    watch = watch_of(app)
    return [] if watch is None else watch.rows()

