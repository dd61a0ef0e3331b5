"""The last 15 minutes of the whole pooler, in memory, for the status page's charts.

Every `PERIOD` seconds (driven by the janitor's tick) one point is appended to a ring of fixed length
(`pooling/ring.Ring`, rows of C doubles in one buffer, bounded whatever the uptime: a tuple per point
kept 15 minutes would keep the memory arena it was made in resident, and during a storm of clients
that is the storm's; issue 11): transactions per second since the last
point, the p50 and p99 of the client wait times observed since then (from the wait histograms' deltas,
interpolated inside a bucket as Prometheus' histogram_quantile does), and the server connections in use
and in total, with the clients waiting. Only the pools' counters are read; nothing is added to the
per-transaction path.
"""

from __future__ import annotations

import math
from typing import Any

from pgmux.pooling.histogram import BOUNDS, quantile
from pgmux.pooling.ring import Ring

PERIOD = 2.0
WINDOW = 15 * 60.0
FIELDS = ("t", "tps", "wait_p50", "wait_p99", "sv_active", "sv_total", "cl_waiting")


class History:
    def __init__(self, period: float = PERIOD, window: float = WINDOW) -> None:
        self.period = period
        self.maxlen = max(int(window / period), 2)
        self.points: Ring[tuple[Any, ...]] = Ring(len(FIELDS), _point, ints=(4, 5, 6))
        self.last_at: float | None = None
        self.last_xacts = 0
        self.last_wait = [0] * (len(BOUNDS) + 1)

    def tick(self, app: Any, now: float, wall: float) -> None:
        if self.last_at is not None and now - self.last_at < self.period:
            return
        xacts = 0
        wait = [0] * (len(BOUNDS) + 1)
        sv_active = sv_total = cl_waiting = 0
        for pool in app.registry:
            xacts += pool.stats.xact_count
            t = pool.stats.timing
            if t is not None:
                for i, n in enumerate(t.wait.counts):
                    wait[i] += n
            sv_total += len(pool.servers)
            sv_active += sum(1 for s in pool.servers if s.client is not None)
            cl_waiting += len(pool.waiters)
        if self.last_at is not None:
            dt = now - self.last_at
            # a pool that went away takes its counters along: never a negative rate
            tps = max(xacts - self.last_xacts, 0) / dt if dt > 0 else 0.0
            delta = [max(a - b, 0) for a, b in zip(wait, self.last_wait, strict=True)]
            p50, p99 = quantile(delta, 0.5), quantile(delta, 0.99)
            if len(self.points) >= self.maxlen:
                self.points.drop()
            self.points.append((wall, round(tps, 1), math.nan if p50 is None else p50,
                                math.nan if p99 is None else p99, sv_active, sv_total, cl_waiting))
        self.last_at, self.last_xacts, self.last_wait = now, xacts, wait

    def series(self) -> dict[str, list[Any]]:
        cols: dict[str, list[Any]] = {f: [] for f in FIELDS}
        for point in self.points:
            for f, value in zip(FIELDS, point, strict=True):
                cols[f].append(value)
        return cols


def _point(*row: Any) -> tuple[Any, ...]:
    """A stored row as the point it was: the quantiles None where there was no observation."""
    return tuple(None if isinstance(v, float) and math.isnan(v) else v for v in row)
