"""Janitor-tick work beside the timeouts (App.start registers these in App.tick_hooks):

- StatsLog (runtime/stats_log.py): stats_period and log_stats.
(query_wait_notify is the janitor's own: runtime/timeouts.py notify_waiters.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pgmux.runtime.stats_log import StatsLog


def hooks(app: Any) -> list[Callable[[], None]]:
    return [StatsLog(app, app.admin).tick]
