"""The last 15 minutes of the whole pooler, in memory, for the status page's charts.

Every `PERIOD` seconds of wall-clock time (driven by the janitor's tick: one point in each slot
`floor(wall / PERIOD)`) one point is appended to a ring of fixed length (`pooling/ring.Ring`, rows of C
doubles in one buffer, bounded whatever the uptime: a tuple per point kept 15 minutes would keep the
memory arena it was made in resident, and during a storm of clients that is the storm's; issue 11):
transactions per second since the last point, the client wait times observed since then (the wait
histograms' deltas, per bucket), and the server connections in use and in total, with the clients
waiting. Only the pools' counters are read; nothing is added to the per-transaction path.

With worker processes each keeps its own ring; the points are on the same wall-clock slots in every
worker, so the pooler's history is the workers' `raw()` merged slot by slot (`merge`): rates and counts
summed, the wait p50/p99 interpolated (as Prometheus' histogram_quantile does) from the summed bucket
deltas. A slot where a worker had no point (restarting, or not answering) has the others' only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pgmux.pooling.histogram import BOUNDS, quantile
from pgmux.pooling.ring import Ring

PERIOD = 2.0
WINDOW = 15 * 60.0
FIELDS = ("t", "tps", "wait_p50", "wait_p99", "sv_active", "sv_total", "cl_waiting")
NB = len(BOUNDS) + 1  # wait buckets per point
# a stored point: slot, tps, sv_active, sv_total, cl_waiting, then the NB wait buckets' deltas
_WIDTH = 5 + NB


class History:
    def __init__(self, period: float = PERIOD, window: float = WINDOW) -> None:
        self.period = period
        self.maxlen = max(int(window / period), 2)
        self.points: Ring[tuple[Any, ...]] = Ring(_WIDTH, _row, ints=(0, 2, 3, 4, *range(5, _WIDTH)))
        self.last_at: float | None = None
        self.last_slot = -1
        self.last_xacts = 0
        self.last_wait = [0] * NB

    def tick(self, app: Any, now: float, wall: float) -> None:
        slot = int(wall // self.period)
        if slot == self.last_slot:
            return
        xacts = 0
        wait = [0] * NB
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
            if len(self.points) >= self.maxlen:
                self.points.drop()
            self.points.append((slot, round(tps, 1), sv_active, sv_total, cl_waiting, *delta))
        self.last_at, self.last_slot, self.last_xacts, self.last_wait = now, slot, xacts, wait

    def raw(self) -> dict[str, Any]:
        """This process's points as stored (JSON-able), for `merge`."""
        return {"period": self.period, "points": [list(p) for p in self.points]}

    def series(self) -> dict[str, list[Any]]:
        """This process's history as the page draws it (one column per field of FIELDS)."""
        return merge([self.raw()])


def _row(*row: Any) -> tuple[Any, ...]:
    return row


def merge(raws: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
    """Several processes' `raw()` -> one history: per wall-clock slot, tps and counts summed and the wait
    quantiles of the summed bucket deltas; columns named by FIELDS, oldest first, up to the newest slot
    that every process with points has."""
    period = float(raws[0]["period"]) if raws else PERIOD
    # Up to the slot every process has reached: each records a slot at its first tick past the boundary
    # (up to one janitor tick apart), and a newest slot with one process's point only would dip the charts.
    ends = [int(raw["points"][-1][0]) for raw in raws if raw.get("points")]
    last = min(ends) if ends else 0
    slots: dict[int, list[Any]] = {}
    for raw in raws:
        for p in raw.get("points", ()):
            if int(p[0]) > last:
                break
            acc = slots.get(int(p[0]))
            if acc is None:
                slots[int(p[0])] = [float(p[1]), int(p[2]), int(p[3]), int(p[4]), [int(n) for n in p[5:5 + NB]]]
                continue
            acc[0] += float(p[1])
            for i in (1, 2, 3):
                acc[i] += int(p[i + 1])
            acc[4] = [a + int(b) for a, b in zip(acc[4], p[5:5 + NB], strict=True)]
    cols: dict[str, list[Any]] = {f: [] for f in FIELDS}
    for slot in sorted(slots):
        tps, sv_active, sv_total, cl_waiting, wait = slots[slot]
        point = (slot * period, round(tps, 1), quantile(wait, 0.5), quantile(wait, 0.99), sv_active, sv_total,
                 cl_waiting)
        for f, value in zip(FIELDS, point, strict=True):
            cols[f].append(value)
    return cols
