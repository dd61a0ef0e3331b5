"""pool_size = auto: a pool size that follows the load, in the manner of adaptive concurrency limits.

Pure code, time passed in: runtime/pool_watch.py feeds one advisor Snapshot per janitor tick and applies
the size this returns. It climbs the throughput curve X(size) of the pool, measured, not modelled:

- Each size it tries is measured for `span` seconds (half that while climbing fast), after its new
  servers have logged in or its surplus has closed (at most `FILL_WAIT` seconds: opening and closing
  connections costs the server CPU, which would be taken for congestion) and `settle` seconds more. At
  its home size a measurement counts only while the size binds: clients waited, nearly every server
  was in use, or there were no more clients than servers, and the servers were busy 40% of the time on
  average (Little: tps x hold time); a step away from home is always measured, and judged by its
  throughput. A pool whose clients never fill it teaches nothing about its size and keeps the size it
  has; one far larger than its clients (or, when they are not counted, than busy + waiting at the
  peak) comes down to that at once, while they run transactions (a pool whose clients all left keeps
  its size for their return).
- It compares each measurement with the best recent one at a neighbouring size through the elasticity
  of throughput, eff = d ln X / d ln size: 1 when the hold time stays flat as concurrency grows (each
  connection adds its full share: a latency-bound workload), 0 when it grows as fast as concurrency
  (PostgreSQL saturated: CPU, locks), below 0 when throughput falls (contention collapse). This is
  Vegas's comparison of the current round-trip time with the best one, read as throughput so that a
  fixed latency (pg_sleep, network) does not count as congestion.
- A step up is kept when eff >= `UP` (the extra connections paid for themselves; `UP_FAST` for a fast
  step); a step down is kept when eff < `DOWN` (the connections given up were doing nothing); either by
  a margin of `Z` standard errors (at most `NOISE_CAP`), from the spread of the per-tick throughput of
  the two measurements, so that noise on a busy machine is not taken for a gain or for a free step
  down. A fast step whose gain is clear (above `UP` after the margin) but short of `UP_FAST` keeps its
  first x1.5 without measuring it, when the two hold times agree within 2x. Otherwise it returns to its
  home size. While nothing has shown saturation it climbs fast (x4,
  capped by the clients' demand), and again after the demand doubled; after a rejected step it moves
  by `STEP` (x1.5, at least one). Kept steps down in a row accelerate.
- It settles: at a home size whose neighbours were both measured within `stale` seconds and rejected,
  it stays. Each neighbour is measured again once its measurement is older than `stale` (one probe of
  a second or two per `stale` seconds on each side; a neighbour rejected by a wide margin is probed half
  as often, and half as often again after each such rejection in a row, down to once per
  `PROBE_BACKOFF` x `stale`), so it follows slow drifts. These probes are the only moves of a settled pool.
- It reacts within seconds: when the hold time at the same size jumps by 2x (either way) on two
  measurements in a row, the workload changed; what it knew is forgotten and it climbs fast again.

Bounds: at least min_pool_size (and 1), at most max_db_connections when set, else `CAP` (100).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from pgmux.pooling.advisor import Snapshot

UP = 0.05
UP_FAST = 0.25
Z = 1.0
NOISE_CAP = 0.2  # the margin never asks more than this of eff: a busy machine must not freeze it
DOWN = 0.03
STEP = 1.5
FAST = 4.0
CAP = 100
FILL_WAIT = 3.0  # seconds a step up waits at most for its new servers to log in
START = 8
PROBE_BACKOFF = 8  # a neighbour rejected by a wide margin again and again: probed every 8 x stale at most


@dataclass(slots=True)
class _Obs:
    tps: float
    hold: float
    seen: float
    se: float = 0.0  # relative standard error of tps, from its per-tick rates
    rejected: int = 0  # probes of this size rejected by a wide margin in a row (each waits twice as long)


def _rel_se(rates: list[float]) -> float:
    n = len(rates)
    if n < 2:
        return 0.0
    mean = sum(rates) / n
    if mean <= 0:
        return 0.0
    var = sum((r - mean) ** 2 for r in rates) / (n - 1)
    return math.sqrt(var / n) / mean


@dataclass(slots=True)
class AutoSizer:
    lo: int
    hi: int
    size: int = START
    span: float = 1.5
    settle: float = 0.2
    stale: float = 20.0
    home: int = 0
    fast: bool = True
    down_step: float = STEP
    levels: dict[int, _Obs] = field(default_factory=dict)
    changed_at: float = -1e9
    start: Snapshot | None = None
    jumps: int = 0
    drain: int = 0  # after a step down: the servers to wait for the surplus to close down to
    prev: Snapshot | None = None
    rates: list[float] = field(default_factory=list)  # per-tick throughput in this measurement
    fill: int = 0  # after a step up: the servers to wait for before measuring
    peak: int = 0  # the demand of the last measurement
    demand: int = 0  # most clients seen wanting a server at once (busy + waiting) in this measurement
    bound: int = 0  # ticks in this measurement during which the size bound
    ticks: int = 0
    history: list[tuple[float, int]] = field(default_factory=list)  # (time, size) of each change

    def __post_init__(self) -> None:
        self.lo = max(1, self.lo)
        self.hi = max(self.lo, self.hi)
        self.size = min(self.hi, max(self.lo, self.size))
        self.home = self.size
        self.fill = self.size  # the first measurement too waits for the pool's servers

    def feed(self, s: Snapshot) -> int:
        """One janitor tick: returns the pool size to use from now on."""
        if s.now - self.changed_at < self.settle:
            return self.size
        if self.fill or self.drain:  # measure once the new servers are in, or the surplus gone: opening
            # and closing connections costs the server CPU that would be taken for congestion
            fill = min(self.fill, s.clients) if s.clients > 0 else self.fill
            if s.servers >= 0 and s.now - self.changed_at < FILL_WAIT and (
                    s.servers < fill or self.drain and s.servers > self.drain):
                return self.size
            self.fill = self.drain = 0
            self.changed_at = s.now
            return self.size
        st = self.start
        if st is None or s.xacts < st.xacts:
            self._begin(s)
            return self.size
        self.ticks += 1
        prev = self.prev
        if prev is not None and s.now > prev.now:
            self.rates.append((s.xacts - prev.xacts) / (s.now - prev.now))
        self.prev = s
        self.demand = max(self.demand, s.busy + s.waiting, s.clients)
        if s.waiting > 0 or s.busy >= 0.9 * self.size or 0 < s.clients <= self.size:
            self.bound += 1
        dt, n = s.now - st.now, s.xacts - st.xacts
        span = self.span / 2 if self.fast else self.span  # while climbing fast, the steps are large
        if dt < span or (n < 30 and dt < 3 * span):
            return self.size
        # binding: clients waited or the servers were full at most ticks, and (Little) the servers were
        # busy on average: servers that sit idle while clients wait mean the limit is elsewhere
        binding = self.bound * 2 >= self.ticks and (s.hold - st.hold) / dt >= 0.4 * self.size
        demand = self.demand
        se = _rel_se(self.rates)
        self._begin(s)
        if n >= 5 and demand < 0.75 * self.size:  # far more servers than its clients: no measuring needed
            # (only under traffic: a pool whose clients all left keeps its size for their return)
            self.home = max(self.lo, math.ceil(demand * 1.1))
            self.peak = demand
            self._go(s.now, self.home)
            return self.size
        if n < 5 and self.size > self.home:  # no traffic on a step up: back home
            self._go(s.now, self.home)
            return self.size
        if n < 5 or not binding and self.size <= self.home:  # a step is judged by its throughput anyway
            return self.size
        self._record(s.now, n / dt, (s.hold - st.hold) / n, se)
        self._decide(s.now, demand)
        return self.size

    def _begin(self, s: Snapshot) -> None:
        self.start, self.demand, self.bound, self.ticks, self.prev = s, 0, 0, 0, s
        self.rates = []

    def _record(self, now: float, tps: float, hold: float, se: float = 0.0) -> None:
        old = self.levels.get(self.size)
        if old is not None and now - old.seen <= self.stale and old.hold > 0 and hold > 0:
            if not 0.5 <= hold / old.hold <= 2.0:
                self.jumps += 1
                if self.jumps >= 2:  # the same size, a different hold time: a new workload
                    self.levels.clear()
                    self.fast, self.down_step, self.home, self.jumps = True, STEP, self.size, 0
                    self.levels[self.size] = _Obs(tps, hold, now, se)
                return
            self.jumps = 0
            self.levels[self.size] = _Obs(old.tps + 0.5 * (tps - old.tps), old.hold + 0.5 * (hold - old.hold), now,
                                          math.hypot(old.se, se) / 2, old.rejected)
            return
        self.jumps = 0
        self.levels[self.size] = _Obs(tps, hold, now, se, 0 if old is None else old.rejected)

    def _same_load(self, a: int, b: int) -> bool:
        """Whether the measurements at a and b look like one workload: hold times within 2x of each other
        (a larger jump is a change of workload, which `_record` answers by starting over)."""
        oa, ob = self.levels.get(a), self.levels.get(b)
        return oa is not None and ob is not None and oa.hold > 0 and 0.5 <= ob.hold / oa.hold <= 2.0

    def eff(self, a: int, b: int) -> float | None:
        """Elasticity of throughput between sizes a < b, None when either is not measured."""
        oa, ob = self.levels.get(a), self.levels.get(b)
        if oa is None or ob is None or oa.tps <= 0 or ob.tps <= 0 or a == b:
            return None
        return math.log(ob.tps / oa.tps) / math.log(b / a)

    def noise(self, a: int, b: int) -> float:
        """`Z` standard errors of eff(a, b): a step is kept only when its gain (or its loss) is clear of the
        per-tick spread of the two measurements."""
        oa, ob = self.levels.get(a), self.levels.get(b)
        if oa is None or ob is None or a == b:
            return 0.0
        return min(NOISE_CAP, Z * math.hypot(oa.se, ob.se) / abs(math.log(b / a)))

    def _keep(self, k: int, now: float, clear: bool) -> None:
        """A neighbour rejected by a wide margin is probed again half as often, and after each such
        rejection in a row half as often again, up to every `PROBE_BACKOFF` x `stale` seconds: a probe costs
        throughput (a settled latency-bound pool at its clients' number lost some 8% to probes of the
        size below every 40 s, each closing and opening a third of its servers), and a change of workload
        is caught by the hold time anyway (`_record`)."""
        o = self.levels.get(k)
        if o is None:
            return
        if not clear:
            o.rejected = 0
            return
        o.rejected += 1
        o.seen = now + self.stale * (min(2 ** o.rejected, PROBE_BACKOFF) - 1)

    def _fresh(self, now: float, k: int) -> bool:
        o = self.levels.get(k)
        return o is not None and now - o.seen <= self.stale

    def _decide(self, now: float, demand: int) -> None:
        if demand >= 2 * max(1, self.peak) and self.peak:  # a surge of clients: climb fast again
            self.fast = True
        self.peak = demand
        cur, home = self.size, self.home
        if cur > home:  # a step up was measured (a fast one must show a clear gain: noise is not one)
            e = self.eff(home, cur)
            big = cur > home * STEP + 1
            gain = None if e is None else e - self.noise(home, cur)
            if gain is not None and gain >= (UP_FAST if big else UP):
                self.home = cur
                self._up(now, demand, self.fast)
            elif big and gain is not None and gain >= UP and self._same_load(home, cur):
                # A clear gain, not a strong one: keep the first x1.5 of the step, with no measurement of its
                # own (throughput grows ever less per connection, so that part gained at least as much).
                # Measuring it would close the step's new servers and open most of them again, and a
                # measurement taken right after dozens of backends started reads low (latency-bound, 200
                # clients on 2 cores: 200 at eff 0.35 rejected, then 192 rejected too, auto at 0.77-0.92).
                self.fast = False
                self.home = min(cur - 1, max(home + 1, round(home * STEP)))
                self._go(now, self.home)
            else:
                self.fast = False
                self._keep(cur, now, e is not None and e < -0.2)
                self._go(now, home)
            return
        if cur < home:  # a step down was measured
            e = self.eff(cur, home)
            if e is not None and e + self.noise(cur, home) < DOWN:
                self.home = cur
                self.fast = False
                self.down_step = min(FAST, self.down_step * 1.5)
                self._down(now)
            else:
                self.down_step = STEP
                self._keep(cur, now, e is not None and e >= 0.5)
                self._go(now, home)
            return
        up, down = self._up_size(demand, self.fast), self._down_size()
        if up != cur and not self._fresh(now, up):
            self._go(now, up)
        elif down != cur and not self._fresh(now, down):
            self._go(now, down)

    def _up_size(self, demand: int, fast: bool) -> int:
        cur = self.size
        want = max(cur + 1, round(cur * (FAST if fast else STEP)))
        return max(cur, min(self.hi, want, demand))

    def _down_size(self) -> int:
        cur = self.size
        return max(self.lo, min(cur - 1, math.floor(cur / self.down_step)))

    def _up(self, now: float, demand: int, fast: bool) -> None:
        nxt = self._up_size(demand, fast)
        if nxt != self.size:
            self._go(now, nxt)

    def _down(self, now: float) -> None:
        nxt = self._down_size()
        if nxt != self.size:
            self._go(now, nxt)

    def _go(self, now: float, size: int) -> None:
        if size == self.size:
            return
        self.fill = min(size, max(1, self.peak)) if size > self.size else 0
        self.drain = size if size < self.size else 0
        self.size = size
        self.changed_at = now
        self.start = None
        self.history.append((now, size))
        if len(self.history) > 64:
            del self.history[:32]


def bounds(min_pool_size: int, max_db_connections: int, cap: int = CAP) -> tuple[int, int]:
    """(lo, hi) of an auto pool: min_pool_size (at least 1) to max_db_connections, else `cap`."""
    lo = max(1, min_pool_size)
    hi = max_db_connections if max_db_connections > 0 else cap
    return lo, max(lo, hi)


def start_size(size: int, min_pool_size: int, max_db_connections: int) -> int:
    """The pool_size a new pool starts with: `size`, or for auto (a negative size) START in its bounds."""
    if size >= 0:
        return size
    lo, hi = bounds(min_pool_size, max_db_connections)
    return min(hi, max(lo, START))
