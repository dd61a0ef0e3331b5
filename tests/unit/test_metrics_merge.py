"""/metrics and /status.json of several workers made into one (metrics/merge.py, status.merge, history.merge):
pure, no socket. Families here are built by the real collectors' library (prometheus-client) where the
shape matters, and written out where the rule does."""

from __future__ import annotations

import json
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.parser import text_string_to_metric_families

from pgmux.metrics import status
from pgmux.metrics.history import NB, History
from pgmux.metrics.history import merge as history_merge
from pgmux.metrics.merge import Family, from_data, merge_families, monotonic, to_data, worker_families
from pgmux.runtime.webshare import read_counters, render, write_counters


def _worker(clients: int, waiting: int, xacts: int, buckets: list[float], hsum: float, pool_size: int,
            maxwait: tuple[int, float], paused: int = 0, extra_db: bool = False) -> list[Family]:
    active = GaugeMetricFamily("pgbouncer_pools_client_active_connections", "a", labels=["database", "user"])
    active.add_metric(["app", "u"], clients)
    if extra_db:
        active.add_metric(["other", "u"], 7)
    wait = GaugeMetricFamily("pgbouncer_pools_client_waiting_connections", "w", labels=["database", "user"])
    wait.add_metric(["app", "u"], waiting)
    secs = GaugeMetricFamily("pgbouncer_pools_client_maxwait_seconds", "s", labels=["database", "user"])
    secs.add_metric(["app", "u"], maxwait[0])
    frac = GaugeMetricFamily("pgbouncer_pools_client_maxwait_fractional", "f", labels=["database", "user"])
    frac.add_metric(["app", "u"], maxwait[1])
    x = CounterMetricFamily("pgbouncer_stats_sql_transactions_pooled", "x", labels=["database"])
    x.add_metric(["app"], xacts)
    h = HistogramMetricFamily("pgmux_transaction_seconds", "h", labels=["database", "user"])
    h.add_metric(["app", "u"], list(zip(["0.001", "0.01", "+Inf"], buckets, strict=True)), hsum)
    size = GaugeMetricFamily("pgbouncer_databases_pool_size", "p", labels=["name"])
    size.add_metric(["app"], pool_size)
    conf = GaugeMetricFamily("pgbouncer_config_max_client_connections", "c", value=100)
    p = GaugeMetricFamily("pgbouncer_databases_paused", "p", labels=["name"])
    p.add_metric(["app"], paused)
    up = GaugeMetricFamily("pgmux_host_up", "u", labels=["database", "host"])
    up.add_metric(["split", "h:1"], 1 - paused)
    info = GaugeMetricFamily("pgmux_host_info", "i", labels=["database", "host", "role", "state"])
    info.add_metric(["split", "h:1", "replica", "down" if paused else "up"], 1)
    clients_now = GaugeMetricFamily("pgmux_clients", "n")
    clients_now.add_metric([], clients + waiting)
    return to_data([active, wait, secs, frac, x, h, size, conf, p, up, info, clients_now])


def _samples(families: list[Family]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s, tuple(sorted(lab.items()))): v for _, _, _, samples in families for s, lab, v in samples}


def _v(samples: dict[Any, float], metric: str, /, **labels: str) -> float:
    return samples[(metric, tuple(sorted(labels.items())))]


W0 = _worker(3, 1, 100, [10, 60, 100], 2.5, 20, (0, 0.9))
W1 = _worker(5, 0, 40, [1, 30, 40], 1.0, 20, (1, 0.2), paused=1, extra_db=True)
APP = {"database": "app", "user": "u"}


def test_counters_gauges_and_histograms_are_summed_per_label_set() -> None:
    s = _samples(merge_families([W0, W1]))
    assert _v(s, "pgbouncer_pools_client_active_connections", **APP) == 8
    assert _v(s, "pgbouncer_pools_client_waiting_connections", **APP) == 1
    assert _v(s, "pgbouncer_stats_sql_transactions_pooled_total", database="app") == 140
    assert _v(s, "pgmux_transaction_seconds_bucket", le="0.001", **APP) == 11
    assert _v(s, "pgmux_transaction_seconds_bucket", le="+Inf", **APP) == 140
    assert _v(s, "pgmux_transaction_seconds_count", **APP) == 140
    assert _v(s, "pgmux_transaction_seconds_sum", **APP) == 3.5
    assert _v(s, "pgmux_clients") == 9


def test_configuration_once_flags_and_maxima_the_largest_up_only_when_all_are() -> None:
    s = _samples(merge_families([W0, W1]))
    assert _v(s, "pgbouncer_databases_pool_size", name="app") == 20  # not 40
    assert _v(s, "pgbouncer_config_max_client_connections") == 100
    assert _v(s, "pgbouncer_databases_paused", name="app") == 1  # paused when any worker is
    assert _v(s, "pgmux_host_up", database="split", host="h:1") == 0
    # the oldest wait: seconds and fraction from the same worker (1.2 s beats 0.9 s)
    assert _v(s, "pgbouncer_pools_client_maxwait_seconds", **APP) == 1
    assert _v(s, "pgbouncer_pools_client_maxwait_fractional", **APP) == 0.2
    other = _samples(merge_families([_worker(0, 0, 0, [0, 0, 0], 0, 20, (2, 0.0)), W0]))
    assert _v(other, "pgbouncer_pools_client_maxwait_seconds", **APP) == 2
    assert _v(other, "pgbouncer_pools_client_maxwait_fractional", **APP) == 0.0
    # one series per host: the first worker's role and state, not one per state the workers saw
    info = [k for k in s if k[0] == "pgmux_host_info"]
    assert info == [("pgmux_host_info", (("database", "split"), ("host", "h:1"), ("role", "replica"),
                                         ("state", "up")))]


def test_label_sets_and_families_only_one_worker_has_are_kept() -> None:
    lone = GaugeMetricFamily("pgmux_pinned_clients_now", "p", labels=["database", "user", "reason"])
    lone.add_metric(["app", "u", "listen"], 2)
    merged = merge_families([W0, [*W1, *to_data([lone])]])
    s = _samples(merged)
    assert _v(s, "pgbouncer_pools_client_active_connections", database="other", user="u") == 7
    assert _v(s, "pgmux_pinned_clients_now", database="app", user="u", reason="listen") == 2
    assert [f[0] for f in merged][:2] == ["pgbouncer_pools_client_active_connections",
                                          "pgbouncer_pools_client_waiting_connections"]
    assert merge_families([W0]) == W0  # one worker: its own, unchanged
    assert merge_families([]) == []


def test_merged_families_render_as_prometheus_text_and_openmetrics() -> None:
    answered = {0: W0, 2: W1, 3: W0}  # worker 1 did not answer; 3 is worker 0's other process (rolling restart)
    families = merge_families([W0, W1]) + worker_families(3, answered)
    for accept in ("", "application/openmetrics-text; version=1.0.0"):
        _, headers, body = render(families, accept)
        text = body.decode()
        parsed = {s.name: s for fam in text_string_to_metric_families(text.replace("# EOF\n", ""))
                  for s in fam.samples if not s.labels or s.name.startswith("pgmux_worker")}
        assert parsed["pgmux_workers"].value == 3 and parsed["pgmux_workers_missing"].value == 1
        assert "pgbouncer_stats_sql_transactions_pooled_total{database=\"app\"} 140.0" in text
        assert 'pgmux_worker_up{worker="1"} 0.0' in text and 'pgmux_worker_clients{worker="2"} 5.0' in text
        assert 'pgmux_worker_clients{worker="0"} 8.0' in text and 'worker="3"' not in text
    # round trip through JSON, as a worker's reply travels
    assert from_data(json.loads(json.dumps(W1))) == W1


def test_a_malformed_worker_reply_is_refused() -> None:
    for bad in ({"x": 1}, [["a", "gauge"]], [["a", "gauge", "h", [["a", {}, "NaNx"]]]], None):
        try:
            from_data(bad)
        except ValueError:
            continue
        raise AssertionError(f"accepted {bad!r}")


def _part(cl: int, waiting: int, maxwait: float, reads: int, pinned: int, uptime: int,
          history: dict[str, Any]) -> dict[str, Any]:
    return {"uptime": uptime, "advice": [{"database": "app"}],
            "pools": [{"database": "app", "user": "u", "cl_active": cl, "cl_waiting": waiting, "sv_active": 1,
                       "sv_idle": 2, "sv_login": 0, "maxwait": maxwait, "pool_size": 20, "pool_mode": "transaction"}],
            "hosts": [{"database": "split", "host": "h:1", "role": "replica", "state": "up", "lag_bytes": 0,
                       "lag_seconds": 0, "bans": 1, "reads": reads, "writes": 0, "reason": ""}],
            "pinned": [{"id": i + 1, "database": "app", "user": "u", "addr": "unix", "reason": "listen"}
                       for i in range(pinned)],
            "pinned_by_reason": {"listen": pinned} if pinned else {}, "history": history}


def _history(points: list[tuple[int, float, int, list[int]]]) -> dict[str, Any]:
    """points: (slot, tps, sv_active, wait bucket deltas (first buckets; the rest 0))"""
    return {"period": 2.0, "points": [[slot, tps, sv, sv + 1, 0, *(wait + [0] * (NB - len(wait)))]
                                      for slot, tps, sv, wait in points]}


def test_status_pools_hosts_pinned_merged_and_the_missing_named() -> None:
    a = _part(3, 1, 0.5, 10, 2, 100, _history([]))
    b = _part(4, 0, 1.5, 5, 1, 40, _history([]))
    doc = status.merge([(0, a), (2, b)], 3)
    pool = doc["pools"][0]
    assert (pool["cl_active"], pool["cl_waiting"], pool["sv_active"], pool["sv_idle"]) == (7, 1, 2, 4)
    assert pool["maxwait"] == 1.5 and pool["pool_size"] == 20  # the oldest wait; the size once
    host = doc["hosts"][0]
    assert (host["reads"], host["bans"], host["state"]) == (15, 2, "up")
    assert [(c["worker"], c["id"]) for c in doc["pinned"]] == [(0, 1), (0, 2), (2, 1)]
    assert doc["pinned_by_reason"] == {"listen": 3} and doc["uptime"] == 100
    assert doc["workers"] == {"count": 3, "answered": [0, 2], "missing": [1]} and doc["advice_worker"] == 0
    one = status.merge([(0, a)])  # one process: no worker fields
    assert one["workers"] is None and "worker" not in one["pinned"][0] and one["pools"][0]["cl_active"] == 3


def test_history_merged_per_wall_clock_slot() -> None:
    a = _history([(500, 10.0, 1, [0, 0, 0, 0, 10]), (501, 20.0, 2, [])])
    b = _history([(499, 5.0, 1, []), (501, 5.0, 1, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10]),
                  (502, 1.0, 1, [])])
    h = history_merge([a, b])
    assert h["t"] == [998.0, 1000.0, 1002.0]  # 502: worker a has not reached it yet (one janitor tick)
    assert h["tps"] == [5.0, 10.0, 25.0] and h["sv_active"] == [1, 1, 3] and h["sv_total"] == [2, 2, 5]
    assert h["wait_p50"][0] is None  # no observation in that slot
    assert 0.0005 < h["wait_p50"][1] <= 0.001 and h["wait_p50"][2] > 0.1  # worker b's waits in slot 501
    assert history_merge([a, b, {"period": 2.0, "points": []}])["t"] == h["t"]  # a worker with no point yet


def test_history_points_land_on_wall_clock_slots_in_every_process() -> None:
    class App:
        registry: list[object] = []

    one, two = History(period=2.0), History(period=2.0)
    for i in range(40):  # the janitor's 0.2 s tick, the two processes' ticks apart by 0.13 s
        one.tick(App, i * 0.2, 1000.0 + i * 0.2)
        two.tick(App, i * 0.2 + 0.13, 1000.13 + i * 0.2)
    t1, t2 = one.series()["t"], two.series()["t"]
    assert t1 == t2 == [1002.0, 1004.0, 1006.0]
    assert history_merge([one.raw(), two.raw()])["t"] == t1


def test_counters_kept_in_a_file_are_the_monotonic_families_only(tmp_path: Any) -> None:
    path = str(tmp_path / "metrics.counters.json")
    assert read_counters(path) == []  # none yet: a first worker carries nothing
    write_counters(path, W1)
    kept = read_counters(path)
    assert {f[1] for f in kept} == {"counter", "histogram"} and kept == monotonic(W1)
    # carried on in a successor's numbers: its own counters plus its predecessor's, its gauges its own
    successor = _worker(1, 0, 2, [1, 2, 2], 0.5, 20, (0, 0.0))
    s = _samples(merge_families([successor, kept]))
    assert _v(s, "pgbouncer_stats_sql_transactions_pooled_total", database="app") == 42
    assert _v(s, "pgmux_transaction_seconds_count", **APP) == 42
    assert _v(s, "pgbouncer_pools_client_active_connections", **APP) == 1
    (tmp_path / "metrics.counters.json").write_text("{not json")
    assert read_counters(path) == []
