"""/metrics of several worker processes made into one (issue 15): every worker's metric families, as
plain data, merged into the pooler's. Pure: lists in, lists out (runtime/webshare.py asks the workers).

A family is `(name, type, help, samples)` with samples `(sample name, labels, value)`, as prometheus-client
builds them (a counter's family name without `_total`, its samples with it; a histogram's samples are its
`_bucket`, `_count` and `_sum`). The replies come ordered by worker index. Per sample name and label set:

- counters and histograms (buckets, counts, sums): summed;
- gauges: summed (they count things now: clients, servers, pinned clients), except those `RULES` names:
  `one` (configuration every worker has the same: pool sizes, limits, the version; taken from the
  lowest-numbered worker that has the label set, never multiplied by the workers), `max` (paused,
  disabled, banned, lag; the counts of configured databases and users and of pools, which every worker
  has its own copy of), `min` (a host is up when every worker sees it up) and `maxwait` (the oldest wait:
  `client_maxwait_seconds` and its `_fractional` part taken together from the worker that waited longest);
- `pgmux_host_info` (one series per host, its role and state in labels): the lowest-numbered worker's
  series of each (database, host).

No `worker` label is added to any series: a dashboard sees the same series as with one process. The
additions, with workers only: `pgmux_workers`, `pgmux_workers_missing` and `pgmux_worker_up{worker}` (1 if
it answered this scrape), `pgmux_worker_clients{worker}` (its client connections).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

Labels = dict[str, str]
Sample = tuple[str, Labels, float]
Family = tuple[str, str, str, list[Sample]]

MAXWAIT = ("pgbouncer_pools_client_maxwait_seconds", "pgbouncer_pools_client_maxwait_fractional")
RULES: dict[str, str] = {
    **dict.fromkeys(MAXWAIT, "maxwait"),
    **dict.fromkeys(("pgbouncer_databases_pool_size", "pgbouncer_databases_reserve_pool",
                     "pgbouncer_databases_max_connections", "pgbouncer_config_max_client_connections",
                     "pgbouncer_config_max_user_connections", "pgbouncer_version_info", "pgbouncer_up"), "one"),
    **dict.fromkeys(("pgbouncer_databases_paused", "pgbouncer_databases_disabled", "pgbouncer_databases",
                     "pgbouncer_users", "pgbouncer_pools", "pgbouncer_cached_dns_names",
                     "pgbouncer_cached_dns_zones", "pgmux_host_banned", "pgmux_host_replica_lag_bytes",
                     "pgmux_host_replica_lag_seconds"), "max"),
    "pgmux_host_up": "min",
}
ONE_PER = {"pgmux_host_info": ("database", "host")}  # family -> the labels that name one series


def rule(name: str, typ: str) -> str:
    """How a family's samples combine across workers: sum, one, max, min or maxwait."""
    if typ != "gauge":
        return "sum"
    return RULES.get(name, "sum")


def _key(name: str, labels: Labels) -> tuple[str, tuple[tuple[str, str], ...]]:
    return name, tuple(sorted(labels.items()))


def merge_families(replies: Sequence[Sequence[Family]]) -> list[Family]:
    """Each worker's families (ordered by worker index) -> the pooler's. Families and label sets only one
    worker has are kept as they are; the order is the first appearance."""
    order: list[str] = []
    per_name: dict[str, list[Family]] = {}
    for families in replies:
        for fam in families:
            if fam[0] not in per_name:
                order.append(fam[0])
                per_name[fam[0]] = []
            per_name[fam[0]].append(fam)
    out = []
    for name in order:
        fams = per_name[name]
        _, typ, doc, _ = fams[0]
        if name in ONE_PER:
            samples = _one_per(fams, ONE_PER[name])
        elif name not in MAXWAIT:
            samples = _combine(rule(name, typ), [f[3] for f in fams])
        else:
            samples = []  # filled below, the two together
        out.append((name, typ, doc, samples))
    _maxwait(out, per_name)
    return out


def _combine(how: str, per_worker: list[list[Sample]]) -> list[Sample]:
    acc: dict[tuple[str, tuple[tuple[str, str], ...]], list[Any]] = {}
    for samples in per_worker:
        for sname, labels, value in samples:
            k = _key(sname, labels)
            seen = acc.get(k)
            if seen is None:
                acc[k] = [sname, labels, value]
            elif how == "sum":
                seen[2] += value
            elif how == "max":
                seen[2] = max(seen[2], value)
            elif how == "min":
                seen[2] = min(seen[2], value)
            # "one": the first worker's value stays
    return [(s, lab, v) for s, lab, v in acc.values()]


def _one_per(fams: list[Family], names: tuple[str, ...]) -> list[Sample]:
    taken: set[tuple[str, ...]] = set()
    out: list[Sample] = []
    for fam in fams:
        mine = set()
        for sname, labels, value in fam[3]:
            k = tuple(labels.get(n, "") for n in names)
            if k in taken:
                continue
            mine.add(k)
            out.append((sname, labels, value))
        taken |= mine
    return out


def _maxwait(out: list[Family], per_name: dict[str, list[Family]]) -> None:
    """The oldest wait per label set: seconds and fraction from the same worker."""
    secs_name, frac_name = MAXWAIT
    if secs_name not in per_name:
        return
    secs = [{_key(secs_name, lab)[1]: (lab, v) for _, lab, v in f[3]} for f in per_name[secs_name]]
    fracs = [{_key(frac_name, lab)[1]: v for _, lab, v in f[3]} for f in per_name.get(frac_name, [])]
    best: dict[tuple[tuple[str, str], ...], tuple[Labels, float, float]] = {}
    for i, worker in enumerate(secs):
        for k, (labels, s) in worker.items():
            f = fracs[i].get(k, 0.0) if i < len(fracs) else 0.0
            have = best.get(k)
            if have is None or s + f > have[1] + have[2]:
                best[k] = (labels, s, f)
    for idx, fam in enumerate(out):
        if fam[0] == secs_name:
            out[idx] = (fam[0], fam[1], fam[2], [(secs_name, lab, s) for lab, s, _ in best.values()])
        elif fam[0] == frac_name:
            out[idx] = (fam[0], fam[1], fam[2], [(frac_name, lab, f) for lab, _, f in best.values()])


def worker_families(workers: int, answered: dict[int, list[Family]]) -> list[Family]:
    """The series about the workers themselves, per worker slot (0..workers-1; during a rolling restart a
    slot has two processes, rows `slot` and `slot + workers`): 1 if a process of the slot answered this
    scrape, and the clients of the slot's processes that did."""
    clients = dict.fromkeys(range(workers), 0.0)
    for row, fams in answered.items():
        clients[row % workers] += next((s[2] for f in fams if f[0] == "pgmux_clients" for s in f[3]), 0.0)
    up = {slot: any(row % workers == slot for row in answered) for slot in range(workers)}
    return [
        ("pgmux_workers", "gauge", "Worker processes of the pooler (workers)", [("pgmux_workers", {}, float(workers))]),
        ("pgmux_workers_missing", "gauge", "Workers whose numbers are missing from this scrape (no answer in time)",
         [("pgmux_workers_missing", {}, float(sum(1 for ok in up.values() if not ok)))]),
        ("pgmux_worker_up", "gauge", "1 if the worker answered this scrape",
         [("pgmux_worker_up", {"worker": str(i)}, 1.0 if ok else 0.0) for i, ok in up.items()]),
        ("pgmux_worker_clients", "gauge", "Client connections of the worker",
         [("pgmux_worker_clients", {"worker": str(i)}, n) for i, n in clients.items() if up[i]]),
    ]


def monotonic(families: list[Family]) -> list[Family]:
    """The counters and histograms: what only grows while a process lives."""
    return [f for f in families if f[1] in ("counter", "histogram")]


def to_data(metrics: Any) -> list[Family]:
    """prometheus-client Metric objects (a registry's collect()) as plain families."""
    return [(mf.name, mf.type, mf.documentation, [(s.name, dict(s.labels), float(s.value)) for s in mf.samples])
            for mf in metrics]


def from_data(raw: Any) -> list[Family]:
    """Families read back from JSON (lists for tuples), checked for shape: a bad reply raises ValueError."""
    out: list[Family] = []
    try:
        for name, typ, doc, samples in raw:
            out.append((str(name), str(typ), str(doc),
                        [(str(s), {str(k): str(v) for k, v in lab.items()}, float(v)) for s, lab, v in samples]))
    except (TypeError, ValueError, AttributeError) as e:
        raise ValueError(f"not a list of metric families: {e}") from None
    return out
