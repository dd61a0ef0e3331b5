"""Every stats_period: the averages SHOW STATS reports are taken, and with log_stats on, the stats lines
are logged (PgBouncer's one line for all databases, then one per database, pgmux's own).

Driven by the janitor's tick (App.tick_hooks, see runtime/periodic.py), with the App's clock.
"""

from __future__ import annotations

import logging
from array import array
from typing import Any

from pgmux.admin.stats_line import FIELDS, averages, stats_line
from pgmux.pooling.ring import keep

log = logging.getLogger("pgmux")


def _counters(app: Any) -> dict[str, dict[str, int]]:
    """Totals since start, per database, summed over its pools."""
    out: dict[str, dict[str, int]] = {}
    for pool in app.registry:
        acc = out.setdefault(pool.database, dict.fromkeys(FIELDS, 0))
        for f in FIELDS:
            acc[f] += getattr(pool.stats, f)
    return out


class StatsLog:
    def __init__(self, app: Any, admin: Any) -> None:
        self.app = app
        self.admin = admin
        self.last = app.now()
        # the counters at the last period, per database, kept in place as C integers: a dict of ints made
        # every period and kept for the next would each keep the memory arena it was made in resident,
        # and during a storm of clients that is the storm's (issue 11, runtime/memtrim.py)
        self.prev: dict[str, array[int]] = {}

    def tick(self) -> None:
        s = self.app.config.settings
        now = self.app.now()
        period = now - self.last
        if s.stats_period <= 0 or period < s.stats_period:
            return
        cur = _counters(self.app)
        if s.log_stats:
            for line in self.lines(cur, period):
                log.info("%s", line)
        self.admin.sample(now)  # SHOW STATS averages, over the same period
        keep(self.prev, {db: [c[f] for f in FIELDS] for db, c in cur.items()})
        self.last = now

    def lines(self, cur: dict[str, dict[str, int]], period: float) -> list[str]:
        prev = {db: dict(zip(FIELDS, arr, strict=True)) for db, arr in self.prev.items()}
        total_cur = {f: sum(c[f] for c in cur.values()) for f in FIELDS}
        total_old = {f: sum(c[f] for c in prev.values()) for f in FIELDS}
        out = [stats_line(averages(total_cur, total_old, period))]
        for db, counters in cur.items():
            out.append(stats_line(averages(counters, prev.get(db, {}), period), db))
        return out

