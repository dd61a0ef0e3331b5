"""The pool advisor: how many server connections a pool needs, from what pgmux already counts.

Pure code, time passed in. The runtime (runtime/pool_watch.py) hands a `Tracker` one `Snapshot` of
each pool per janitor tick: the cumulative SHOW STATS counters (transactions, seconds servers were
held, seconds clients waited) and three instantaneous counts (servers in use, clients waiting, clients
of the pool). Nothing is added to the per-transaction path.

From a window of snapshots:
- Little's law: servers in use on average = transactions per second x seconds each holds a server.
- The size needed: the smallest number of servers at which a transaction waits for one with
  probability at most `TARGET_WAIT` (Erlang C, which carries the variance of arrivals and hold times
  that the mean alone hides), for the load the clients would offer if they never waited. While clients
  wait, that load is estimated from the clients' own cycle: each client spends S holding a server and Z
  elsewhere (Z = clients not holding or waiting / transactions per second), so it wants a server a
  fraction S/(S+Z) of the time.
- Too small or saturated: the tracker remembers the hold time seen at each level of concurrency
  (geometric buckets, last `HISTORY` seconds). When the hold time grows nearly as fast as the
  concurrency (elasticity d ln S / d ln busy >= `SATURATED`), more connections add little throughput:
  PostgreSQL (CPU, locks, I/O) is the bottleneck, not the pool. The advice then names the smallest
  size seen that gave 90% of the best throughput seen. Without a lower level to compare with, the
  verdict says it could not tell.
"""

from __future__ import annotations

import math
from array import array
from dataclasses import dataclass, field, replace

from pgmux.pooling.ring import Ring

TARGET_WAIT = 0.05  # Erlang C: at most 5% of transactions wait for a server
SATURATED = 0.6  # elasticity of hold time to concurrency from which PostgreSQL is called saturated
HISTORY = 300.0  # seconds a (concurrency, hold time) observation is remembered
WINDOW = 60.0  # seconds of snapshots kept
RECENT = 5.0  # seconds the "now" figures average over
_BUCKET = math.log(1.2)  # levels of concurrency 20% apart share a bucket
_MIN_XACTS = 20  # a one-second observation needs this many transactions to count


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One janitor tick's reading of one pool. xacts, hold and waits are cumulative (SHOW STATS's
    total_xact_count, total_xact_time and total_wait_time, in seconds); the others are counts now."""

    now: float
    xacts: int
    hold: float
    waits: float
    busy: int  # servers lent to clients
    waiting: int  # clients queued for a server
    clients: int  # clients of the pool, -1 when unknown
    size: int  # pool_size in force
    servers: int = -1  # servers logged in (lent, idle or being reset), -1 when unknown


@dataclass(frozen=True, slots=True)
class Advice:
    database: str
    user: str
    size: int  # pool_size in force
    auto: bool  # pool_size = auto chose `size`
    tps: float  # transactions per second, last RECENT seconds
    hold_ms: float  # mean server hold time per transaction
    busy: float  # servers in use on average (Little: tps x hold)
    waiting: float  # clients waiting on average
    clients: float
    needed: int  # the size this pool needs now (0: no load)
    verdict: str  # idle, ok, too small, saturated, oversized
    elasticity: float | None  # d ln hold / d ln concurrency, None when not seen
    detail: str


@dataclass(slots=True)
class _Level:
    busy: float
    hold: float
    seen: float
    n: int = 1


@dataclass(slots=True)
class Tracker:
    database: str = ""
    user: str = ""
    # the window: one row per tick in one buffer, not objects that outlive the tick (see pooling/ring.py)
    snaps: Ring[Snapshot] = field(default_factory=lambda: Ring(9, Snapshot, ints=(1, 4, 5, 6, 7, 8)))
    levels: dict[int, _Level] = field(default_factory=dict)
    # start of the current one-second observation: (now, xacts, hold), now NaN until the first; doubles in
    # place, not the tick's Snapshot (an object kept a second, replaced while alive, would stay put in
    # whatever arena it was made in: see pooling/ring.py)
    _mark: array[float] = field(default_factory=lambda: array("d", (math.nan, 0.0, 0.0)))

    def add(self, s: Snapshot) -> None:
        self.snaps.append((s.now, s.xacts, s.hold, s.waits, s.busy, s.waiting, s.clients, s.size, s.servers))
        while self.snaps and s.now - self.snaps.value(0, 0) > WINDOW:
            self.snaps.drop()
        mark = self._mark
        m_now, m_xacts, m_hold = mark
        if math.isnan(m_now) or s.xacts < m_xacts:  # first, or the counters were reset
            mark[0], mark[1], mark[2] = s.now, s.xacts, s.hold
            return
        if s.now - m_now >= 1.0:
            mark[0], mark[1], mark[2] = s.now, s.xacts, s.hold
            n = s.xacts - m_xacts
            if n >= _MIN_XACTS:
                self.observe(s.now, (s.hold - m_hold) / (s.now - m_now), (s.hold - m_hold) / n)
        for k in [k for k, lv in self.levels.items() if s.now - lv.seen > HISTORY]:
            del self.levels[k]

    def observe(self, now: float, busy: float, hold: float) -> None:
        """One second's mean concurrency and mean hold time, remembered by level (EMA per bucket)."""
        if busy <= 0 or hold <= 0:
            return
        key = round(math.log(busy) / _BUCKET)
        lv = self.levels.get(key)
        if lv is None:
            self.levels[key] = _Level(busy, hold, now)
        else:
            a = 0.3
            lv.busy += a * (busy - lv.busy)
            lv.hold += a * (hold - lv.hold)
            lv.seen, lv.n = now, lv.n + 1

    def advise(self, now: float, auto: bool = False) -> Advice:
        return advise(self, now, auto)


def erlang_c(c: int, a: float) -> float:
    """Probability that an arrival waits, with c servers and offered load a (Erlang C); 1 if c <= a."""
    if a <= 0:
        return 0.0
    if c <= a:
        return 1.0
    b = 1.0  # Erlang B by recursion, stable for any c
    for k in range(1, c + 1):
        b = a * b / (k + a * b)
    return c * b / (c - a * (1 - b))


def servers_for(a: float, target: float = TARGET_WAIT, cap: int = 10_000) -> int:
    """The smallest number of servers at which at most `target` of arrivals wait (Erlang C)."""
    if a <= 0:
        return 0
    c = max(1, math.floor(a) + 1)
    while c < cap and erlang_c(c, a) > target:
        c += 1
    return c


def offered_load(tps: float, hold: float, busy: float, waiting: float, clients: float) -> float:
    """The concurrency clients would ask for if none waited. Without waiting, Little's busy; with
    waiting and a known client count, clients x S/(S+Z), Z the time a client spends elsewhere."""
    if waiting < 0.05 or tps <= 0:
        return busy
    if clients <= 0:
        return busy + waiting
    elsewhere = max(0.0, clients - busy - waiting) / tps  # Z, per transaction
    return clients * hold / (hold + elsewhere) if hold + elsewhere > 0 else busy + waiting


def _window(snaps: Ring[Snapshot], now: float) -> tuple[float, float, float, float, float, int]:
    """(tps, hold, waiting, clients, mean wait, size) over the last RECENT seconds."""
    last = snaps[-1]
    first = next((s for s in snaps if now - s.now <= RECENT), last)
    if first is last and len(snaps) > 1:
        first = snaps[-2]
    recent = [s for s in snaps if s.now >= first.now]
    dt = last.now - first.now
    n = last.xacts - first.xacts
    tps = n / dt if dt > 0 else 0.0
    hold = (last.hold - first.hold) / n if n > 0 else 0.0
    wait = (last.waits - first.waits) / n if n > 0 else 0.0
    waiting = sum(s.waiting for s in recent) / len(recent)
    known = [s.clients for s in recent if s.clients >= 0]
    clients = sum(known) / len(known) if known else -1.0
    return tps, hold, waiting, clients, wait, last.size


def elasticity(levels: dict[int, _Level], busy: float) -> tuple[float | None, _Level | None, _Level | None]:
    """d ln hold / d ln busy between the lowest level remembered and the one nearest `busy`."""
    if not levels or busy <= 0:
        return None, None, None
    here = min(levels.values(), key=lambda lv: abs(math.log(lv.busy / busy)))
    low = min(levels.values(), key=lambda lv: lv.busy)
    if here.busy < low.busy * 1.3:
        return None, low, here
    return math.log(here.hold / low.hold) / math.log(here.busy / low.busy), low, here


def knee(levels: dict[int, _Level], share: float = 0.9) -> int:
    """The smallest concurrency seen whose throughput (busy / hold) is `share` of the best seen."""
    best = max(lv.busy / lv.hold for lv in levels.values())
    return max(1, math.ceil(min(lv.busy for lv in levels.values() if lv.busy / lv.hold >= share * best)))


def advise(t: Tracker, now: float, auto: bool = False) -> Advice:
    if not t.snaps:
        return Advice(t.database, t.user, 0, auto, 0.0, 0.0, 0.0, 0.0, 0.0, 0, "idle", None, "no data yet")
    tps, hold, waiting, clients, wait, size = _window(t.snaps, now)
    busy = tps * hold
    base = Advice(t.database, t.user, size, auto, round(tps, 1), round(hold * 1e3, 3), round(busy, 2),
                  round(waiting, 2), round(clients, 1), 0, "", None, "")
    if tps <= 0:
        return replace(base, needed=0, verdict="idle", elasticity=None, detail="no transactions in the last "
                      f"{RECENT:.0f} s")
    a = offered_load(tps, hold, busy, waiting, clients)
    needed = servers_for(a)
    if clients > 0:
        needed = min(needed, math.ceil(clients))
    e, low, here = elasticity(t.levels, busy)
    waits = waiting >= 0.05 and wait > 0.05 * hold
    load = f"{tps:.0f} tps x {hold * 1e3:.2f} ms = {busy:.1f} busy (Little)"
    if e is not None and e >= SATURATED and low is not None and here is not None:
        k = knee(t.levels)
        grew = (f"hold time {here.hold * 1e3:.2f} ms at {here.busy:.1f} busy vs {low.hold * 1e3:.2f} ms at "
                f"{low.busy:.1f} (elasticity {e:.2f})")
        if waits:
            return replace(base, needed=min(needed, k), verdict="saturated", elasticity=round(e, 2),
                          detail=f"clients wait because PostgreSQL is saturated, not the pool: {grew}; "
                                 f"more connections add little; {k} gave 90% of the best throughput seen")
        if size > 2 * k and busy > 1.5 * k:
            return replace(base, needed=k, verdict="oversized", elasticity=round(e, 2),
                          detail=f"{grew}; {k} connections gave 90% of the best throughput seen")
    el = None if e is None else round(e, 2)
    if waits:
        how = ("PostgreSQL's hold times have not been seen at other concurrency" if e is None else
               f"hold times barely grow with concurrency (elasticity {e:.2f})")
        return replace(base, needed=max(needed, size + 1), verdict="too small", elasticity=el,
                      detail=f"too small, needs {max(needed, size + 1)}: clients wait {wait * 1e3:.2f} ms per "
                             f"transaction; {load}; offered load {a:.1f}; {how}")
    return replace(base, needed=needed, verdict="ok", elasticity=el,
                  detail=f"{load}; {needed} keep waits under {TARGET_WAIT:.0%} (Erlang C)")


@dataclass(frozen=True, slots=True)
class Budget:
    """PostgreSQL max_connections against what the pools of one server need and may open."""

    server: str
    max_connections: int | None  # usable by pgmux: max_connections - superuser_reserved_connections
    source: str  # "server (SHOW max_connections, N s ago)", "configured (max_db_connections)", "unknown"
    needed: int
    configured: int  # sum of pool_size + reserve_pool_size
    verdict: str
    detail: str


def budget(server: str, needs: list[tuple[int, int]], max_connections: int | None, source: str,
           others: int = 0) -> Budget:
    """needs: (needed, configured) per pool of `server`; others: connections pgmux does not hold."""
    need = sum(n for n, _ in needs)
    conf = sum(c for _, c in needs)
    if max_connections is None:
        return Budget(server, None, source, need, conf, "unknown", "max_connections unknown")
    free = max_connections - others
    if need > free:
        verdict, detail = "over", f"the pools need {need} but only {free} connections are free"
    elif conf > free:
        verdict, detail = "overcommitted", f"pool sizes allow {conf}, more than the {free} free; needs fit"
    else:
        verdict, detail = "fits", f"{need} needed, {conf} allowed, {free} free"
    return Budget(server, max_connections, source, need, conf, verdict, detail)
