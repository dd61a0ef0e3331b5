"""The figures of bench/scaling.py: its configurations (pool division), one run's measurements, the medians,
the table and the done-when bars of issue 14 item 7. Pure: no processes, no sockets (tests/unit/test_scaling_bench.py).
"""

from __future__ import annotations

import dataclasses
import statistics
from typing import Any

from run import fmt

# The bars of issue 14 (done when): pgmux N workers / 1 worker, and pgmux N / PgBouncer N.
SCALING_BARS = {2: 1.8, 4: 3.4}


def divide_pool(total: int, n: int) -> list[int]:
    """Pool sizes of n processes that add up to `total`, as equal as can be (the larger first)."""
    if n < 1 or total < n:
        raise ValueError(f"a pool of {total} cannot be divided among {n} processes (each needs at least 1)")
    return [total // n + (1 if i < total % n else 0) for i in range(n)]


@dataclasses.dataclass(frozen=True)
class Config:
    kind: str  # pgmux | pgbouncer | pgmux-metrics (pgmux with metrics_listen set: one process only)
    n: int  # pgmux workers, or PgBouncer processes
    pool_total: int

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.n}"

    def pool_sizes(self) -> list[int]:
        """Per process: pgmux's workers share one default_pool_size; PgBouncer's processes each get a part."""
        return [self.pool_total] if self.kind.startswith("pgmux") else divide_pool(self.pool_total, self.n)


def plan(kinds: list[str], sizes: list[int], pool_total: int) -> list[Config]:
    """Every configuration, pairs of equal N next to each other so that drift hits both alike."""
    return [Config(kind, n, pool_total) for n in sizes for kind in kinds if kind != METRICS or n == 1]


METRICS = "pgmux-metrics"  # its "x 1 proc" is against pgmux-1: the cost of the metrics on the hot path
METRICS_BAR = 0.97  # issue 15: the metrics cost under 3% of TPS

@dataclasses.dataclass
class Run:
    tps: float | None
    txns: int = 0
    aborted: int = 0
    errors: int = 0
    max_servers: int | None = None
    logins: int | None = None  # server connections opened during the timed run (pg_stat_database.sessions)
    samples: int = 0
    cpu: list[float | None] = dataclasses.field(default_factory=list)  # cores used, per pooled process
    supervisor_cpu: float | None = None
    cpu_us_per_txn: float | None = None  # the pooled processes' CPU (supervisor excluded) per transaction
    throttled: float | None = None  # mean over the groups of the share of periods throttled
    clients: list[int] = dataclasses.field(default_factory=list)  # per process, mid-run
    servers: list[int] = dataclasses.field(default_factory=list)
    note: str = ""



def median_tps(runs: list[Run]) -> float | None:
    values = [r.tps for r in runs if r.tps is not None]
    return statistics.median(values) if values else None


def median_of(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return statistics.median(kept) if kept else None


def median_run(runs: list[Run]) -> Run | None:
    """The run with the median TPS (the lower middle one of an even count): its per-process figures."""
    measured = sorted((r for r in runs if r.tps is not None), key=lambda r: r.tps or 0.0)
    return measured[(len(measured) - 1) // 2] if measured else None


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def summarize(configs: list[Config], results: dict[str, list[Run]]) -> list[dict[str, Any]]:
    tps = {c.name: median_tps(results[c.name]) for c in configs}
    rows = []
    for c in configs:
        runs = results[c.name]
        mid = median_run(runs)
        servers = [r.max_servers for r in runs if r.max_servers is not None]
        rows.append({
            "config": c.name, "kind": c.kind, "processes": c.n, "pool_per_process": c.pool_sizes(),
            "median_tps": tps[c.name],
            "vs_1": ratio(tps[c.name], tps.get("pgmux-1" if c.kind == METRICS else f"{c.kind}-1")),
            "pgmux_vs_pgbouncer": ratio(tps[c.name], tps.get(f"pgbouncer-{c.n}")) if c.kind == "pgmux" else None,
            "max_servers": max(servers) if servers else None,
            "server_logins": median_of([float(r.logins) if r.logins is not None else None for r in runs]),
            "clients_per_process": mid.clients if mid else [],
            "servers_per_process": mid.servers if mid else [],
            "cpu_per_process": median_of([statistics.mean(x for x in r.cpu if x is not None)
                                          if any(x is not None for x in r.cpu) else None for r in runs]),
            "throttled": median_of([r.throttled for r in runs]),
            "supervisor_cpu": median_of([r.supervisor_cpu for r in runs]),
            "cpu_us_per_txn": median_of([r.cpu_us_per_txn for r in runs]),
            "aborted": sum(r.aborted for r in runs), "errors": sum(r.errors for r in runs),
            "measured_rounds": sum(1 for r in runs if r.tps is not None), "rounds": len(runs),
        })
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    head = ["config", "pool/proc", "tps", "x 1 proc", "pgmux/pgb", "servers max", "logins", "clients/proc",
            "servers/proc", "cpu/proc", "us/txn", "throttled", "superv cpu", "abort/err", "rounds"]
    lines = [head]
    for r in rows:
        sizes = r["pool_per_process"]
        lines.append([
            r["config"], str(sizes[0]) if len(set(sizes)) == 1 else "/".join(map(str, sizes)),
            fmt(r["median_tps"]), fmt(r["vs_1"], ".2f"), fmt(r["pgmux_vs_pgbouncer"], ".2f"),
            fmt(r["max_servers"], "d"), fmt(r["server_logins"]), "/".join(map(str, r["clients_per_process"])) or "-",
            "/".join(map(str, r["servers_per_process"])) or "-", fmt(r["cpu_per_process"], ".3f"),
            fmt(r["cpu_us_per_txn"], ".1f"),
            fmt(r["throttled"] * 100 if r["throttled"] is not None else None, ".0f") + "%",
            fmt(r["supervisor_cpu"], ".3f"), f"{r['aborted']}/{r['errors']}",
            f"{r['measured_rounds']}/{r['rounds']}",
        ])
    widths = [max(len(x[i]) for x in lines) for i in range(len(head))]
    out = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(x, widths, strict=True)))
           for x in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def bars(rows: list[dict[str, Any]], pool_total: int) -> list[tuple[str, bool | None]]:
    """The done-when bars of issue 14 item 7 that these rows can decide: (text, met); met None = not measured."""
    by = {r["config"]: r for r in rows}
    out: list[tuple[str, bool | None]] = []
    for n, bar in SCALING_BARS.items():
        if f"pgmux-{n}" in by and "pgmux-1" in by:
            v = by[f"pgmux-{n}"]["vs_1"]
            out.append((f"pgmux {n} workers / 1 worker = {fmt(v, '.2f')}x (bar {bar}x)",
                        None if v is None else v >= bar))
    if f"{METRICS}-1" in by and "pgmux-1" in by:
        v = by[f"{METRICS}-1"]["vs_1"]
        out.append((f"pgmux with metrics_listen / without = {fmt(v, '.3f')}x (bar {METRICS_BAR}x: cost under 3%)",
                    None if v is None else v >= METRICS_BAR))
    for r in rows:
        if r["kind"] == "pgmux" and f"pgbouncer-{r['processes']}" in by:
            v = r["pgmux_vs_pgbouncer"]
            out.append((f"pgmux {r['processes']} / PgBouncer {r['processes']} = {fmt(v, '.2f')}x (bar 1.00x)",
                        None if v is None else v >= 1.0))
    for r in rows:
        if r["max_servers"] is not None:
            out.append((f"{r['config']}: at most {r['max_servers']} server connections (pool total {pool_total})",
                        r["max_servers"] <= pool_total))
    return out
