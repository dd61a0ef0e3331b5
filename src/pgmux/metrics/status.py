"""The status page's data (/status.json): pools, the hosts of split databases, pinned clients, the pool
advisor's rows when there is an advisor, and the 15-minute history. Built from the admin console's row
builders, so the page shows what SHOW shows. With worker processes each worker builds its part (`local`)
and the worker that answers the request merges every worker's (`merge`, runtime/webshare.py).

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
from pgmux.metrics.history import PERIOD
from pgmux.metrics.history import merge as history_merge
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


def local(app: Any, history: Any) -> dict[str, Any]:
    """This process's part of /status.json (with workers, each worker's, for `merge`)."""
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
    return {"uptime": round(time.time() - app.start_time), "pools": pools, "hosts": hosts, "pinned": pinned,
            "pinned_by_reason": by_reason, "advice": _advice(admin), "history": history.raw()}


def snapshot(app: Any, history: Any) -> dict[str, Any]:
    """/status.json of one process."""
    return merge([(0, local(app, history))])


_POOL_SUMS = ("cl_active", "cl_waiting", "sv_active", "sv_idle", "sv_login")


def merge(parts: list[tuple[int, dict[str, Any]]], workers: int | None = None) -> dict[str, Any]:
    """(worker index, its `local`) for each worker that answered, ordered by index -> /status.json.
    Pools: counts summed, the oldest wait the largest, size and mode the first worker's. Hosts: the
    first worker's row (role, state, lag), reads, writes and bans summed. Pinned clients: each worker's
    (a `worker` field says whose; a client id is its worker's). The pool advisor's rows: the first
    worker's (`advice_worker`). The history: merged per wall-clock slot (metrics/history.merge).
    `workers` (with worker processes): how many, the rows that answered (a row is a worker process:
    `slot` or, during a rolling restart, `slot + workers`) and the worker slots none of whose processes did."""
    pools: dict[tuple[str, str], dict[str, Any]] = {}
    hosts: dict[tuple[str, str], dict[str, Any]] = {}
    pinned: list[dict[str, Any]] = []
    by_reason: dict[str, int] = {}
    for w, part in parts:
        for p in part["pools"]:
            acc = pools.get((p["database"], p["user"]))
            if acc is None:
                pools[(p["database"], p["user"])] = dict(p)
                continue
            for k in _POOL_SUMS:
                acc[k] += p[k]
            acc["maxwait"] = max(acc["maxwait"], p["maxwait"])
        for h in part["hosts"]:
            acc = hosts.get((h["database"], h["host"]))
            if acc is None:
                hosts[(h["database"], h["host"])] = dict(h)
                continue
            for k in ("bans", "reads", "writes"):
                acc[k] += h[k]
        for c in part["pinned"]:
            if len(pinned) < MAX_PINNED:
                pinned.append({**c, "worker": w} if workers is not None else c)
        for reason, n in part["pinned_by_reason"].items():
            by_reason[reason] = by_reason.get(reason, 0) + n
    first: tuple[int, dict[str, Any]] = parts[0] if parts else (0, {"advice": None, "history": {"period": PERIOD}})
    doc = {"version": VERSION_STRING, "time": time.time(), "uptime": max((p["uptime"] for _, p in parts), default=0),
           "pools": list(pools.values()), "hosts": list(hosts.values()), "pinned": pinned,
           "pinned_by_reason": by_reason, "advice": first[1]["advice"],
           "history": history_merge([p["history"] for _, p in parts]), "history_period": first[1]["history"]["period"],
           "workers": None}
    if workers is not None:
        answered = [w for w, _ in parts]
        doc["advice_worker"] = first[0]
        doc["workers"] = {"count": workers, "answered": answered,
                          "missing": [i for i in range(workers) if all(w % workers != i for w in answered)]}
    return doc
