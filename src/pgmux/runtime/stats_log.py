"""Every stats_period: the averages SHOW STATS reports are taken, and with log_stats on, the stats lines
are logged (PgBouncer's one line for all databases, then one per database, pgmux's own).

Driven by the janitor's tick (App.tick_hooks, see runtime/periodic.py), with the App's clock.
"""

from __future__ import annotations

import logging
from typing import Any

from pgmux.admin.stats_line import FIELDS, averages, stats_line

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
        self.prev: dict[str, dict[str, int]] = {}

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
        self.prev, self.last = cur, now

    def lines(self, cur: dict[str, dict[str, int]], period: float) -> list[str]:
        total_cur = {f: sum(c[f] for c in cur.values()) for f in FIELDS}
        total_old = {f: sum(c[f] for c in self.prev.values()) for f in FIELDS}
        out = [stats_line(averages(total_cur, total_old, period))]
        for db, counters in cur.items():
            out.append(stats_line(averages(counters, self.prev.get(db, {}), period), db))
        return out
