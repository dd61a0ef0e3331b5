"""Janitor-tick work beside the timeouts (App.start registers these in App.tick_hooks):

- StatsLog (runtime/stats_log.py): stats_period and log_stats.
- WaitNotify: query_wait_notify. A client queued longer than that for a server gets one NOTICE per wait,
  in PgBouncer's words (objects.c, activate_client()): "No server connection available in postgres
  backend, client being queued". 0 turns it off.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pgmux.protocol import messages as m
from pgmux.runtime.stats_log import StatsLog
from pgmux.session.states import ClientState

QUEUED = "No server connection available in postgres backend, client being queued"


class WaitNotify:
    def __init__(self, app: Any) -> None:
        self.app = app
        self.told: dict[int, float] = {}  # client id -> the wait_since of the wait it was told about

    def tick(self) -> None:
        after = self.app.config.settings.query_wait_notify
        if after <= 0:
            self.told.clear()
            return
        now = self.app.now()
        told: dict[int, float] = {}
        for pool in self.app.registry:
            for c in pool.waiters:
                if c.state is not ClientState.WAITING:
                    continue
                if self.told.get(c.id) == c.wait_since:
                    told[c.id] = c.wait_since
                elif now - c.wait_since > after:
                    c.transport.write(m.notice_response(QUEUED))
                    told[c.id] = c.wait_since
        self.told = told  # clients served or gone are forgotten; a new wait is told again


def hooks(app: Any) -> list[Callable[[], None]]:
    return [StatsLog(app, app.admin).tick, WaitNotify(app).tick]
