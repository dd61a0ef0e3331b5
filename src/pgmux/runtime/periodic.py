"""Janitor-tick work beside the timeouts (App.start registers these in App.tick_hooks):

- StatsLog (runtime/stats_log.py): stats_period and log_stats.
- PoolWatch (runtime/pool_watch.py): the pool advisor's measurements and pool_size = auto.
(query_wait_notify is the janitor's own: runtime/timeouts.py notify_waiters.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pgmux.runtime.pool_watch import PoolWatch
from pgmux.runtime.stats_log import StatsLog


def hooks(app: Any) -> list[Callable[[], None]]:
    return [StatsLog(app, app.admin).tick, PoolWatch(app)]
