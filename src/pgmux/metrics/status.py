"""The status page's data (/status.json): pools, the hosts of split databases, pinned clients, the pool
advisor's rows when there is an advisor, and the 15-minute history. Built from the admin console's row
builders, so the page shows what SHOW shows.

The advisor panel: pgmux's pool advisor (SHOW ADVICE) is a separate piece of work. When the running
pgmux has it (a module pgmux.pooling.advisor, and the console answering SHOW ADVICE), its rows are shown as
they are; otherwise `advice` is null and the page says the panel is absent.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import time
from typing import Any

from pgmux import VERSION_STRING
from pgmux.metrics.exporter import pool_rows
from pgmux.session.states import ClientState

ADVISOR_MODULE = "pgmux.pooling.advisor"
HAS_ADVISOR = importlib.util.find_spec(ADVISOR_MODULE) is not None
MAX_PINNED = 100  # pinned clients listed one by one; the counts by reason cover all of them


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and value != value:  # NaN
        return None
    return value


def _advice(admin: Any) -> list[dict[str, Any]] | None:
    build = getattr(admin, "_show_advice", None)
    if not HAS_ADVISOR or build is None:
        return None
    rows, _ = build()
    return [{k: _jsonable(v) for k, v in dataclasses.asdict(r).items()} for r in rows]


def snapshot(app: Any, history: Any) -> dict[str, Any]:
    admin = app.admin
    sizes = {(p.database, p.user): p.limits.pool_size for p in app.registry}
    modes = {(p.database, p.user): p.mode for p in app.registry}
    pools = []
    for (db, user), acc in pool_rows(admin).items():
        if db == "pgbouncer":
            continue
        pools.append({"database": db, "user": user, "cl_active": acc["cl_active"], "cl_waiting": acc["cl_waiting"],
                      "sv_active": acc["sv_active"], "sv_idle": acc["sv_idle"], "sv_login": acc["sv_login"],
                      "maxwait": round(acc["maxwait"] + acc["maxwait_us"] / 1e6, 3),
                      "pool_size": sizes.get((db, user)), "pool_mode": modes.get((db, user))})
    hosts = []
    host_rows, _ = admin._show_hosts()
    bans = {(name, f"{h.host.host or 'unix'}:{h.host.port}"): sum(h.ban_count.values())
            for name, sp in app.routing.splits.items() for h in sp.router.hosts}
    for r in host_rows:
        key = f"{r.host}:{r.port}"
        hosts.append({"database": r.database, "host": key, "role": r.role, "state": r.state,
                      "lag_bytes": r.lag_bytes, "lag_seconds": r.lag_seconds, "bans": bans.get((r.database, key), 0),
                      "reads": r.reads, "writes": r.writes, "reason": r.reason})
    pinned: list[dict[str, Any]] = []
    by_reason: dict[str, int] = {}
    for c in list(app.clients.values()):
        if c.pinned and c.state is not ClientState.CLOSED:
            for reason in c.pinned.split(", "):
                by_reason[reason] = by_reason.get(reason, 0) + 1
            if len(pinned) < MAX_PINNED:
                pinned.append({"id": c.id, "database": c.database, "user": c.user,
                               "addr": "unix" if c.is_unix else f"{c.addr}:{c.port}", "reason": c.pinned})
    return {"version": VERSION_STRING, "time": time.time(), "uptime": round(time.time() - app.start_time),
            "pools": pools, "hosts": hosts, "pinned": pinned, "pinned_by_reason": by_reason,
            "advice": _advice(admin), "history": history.series(), "history_period": history.period}
