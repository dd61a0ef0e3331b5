"""The pure parts of bench/scaling.py (in bench/scaling_report.py and bench/cpugroups.py): pool division, the
configurations' order, cgroup names and stale groups, quotas, cpu.stat and /proc/net/tcp parsing, the medians
and the bars. No sockets, no cgroups, no processes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

BENCH = str(Path(__file__).resolve().parents[2] / "bench")
sys.path.insert(0, BENCH)  # only while importing: bench/'s module names (run, memory...) stay off the path
try:
    import cpugroups as cg
    import scaling_report as scaling
finally:
    sys.path.remove(BENCH)


@given(st.integers(1, 500), st.integers(1, 16))
def test_divide_pool_adds_up_and_is_even(total: int, n: int) -> None:
    if total < n:
        with pytest.raises(ValueError):
            scaling.divide_pool(total, n)
        return
    sizes = scaling.divide_pool(total, n)
    assert len(sizes) == n and sum(sizes) == total
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
    assert sizes == sorted(sizes, reverse=True)


def test_pool_sizes_per_process() -> None:
    assert scaling.Config("pgmux", 4, 20).pool_sizes() == [20]  # shared by the workers
    assert scaling.Config("pgbouncer", 4, 20).pool_sizes() == [5, 5, 5, 5]
    assert scaling.Config("pgbouncer", 4, 22).pool_sizes() == [6, 6, 5, 5]
    assert scaling.Config("pgbouncer", 1, 20).pool_sizes() == [20]


def test_plan_puts_equal_sizes_side_by_side() -> None:
    names = [c.name for c in scaling.plan(["pgmux", "pgbouncer"], [1, 2, 4], 20)]
    assert names == ["pgmux-1", "pgbouncer-1", "pgmux-2", "pgbouncer-2", "pgmux-4", "pgbouncer-4"]


def test_group_names_round_trip_and_other_names_are_left_alone() -> None:
    assert cg.group_name(1234, 3) == "pgmux-bench-1234-3"
    assert cg.parse_group_name("pgmux-bench-1234-3") == (1234, 3)
    for other in ("pgmux-bench-1234", "pgmux-bench-x-1", "docker", "pgmux-bench-1-2-3", "cpu.stat",
                  "xpgmux-bench-1-2"):
        assert cg.parse_group_name(other) is None


def test_stale_groups_are_those_of_dead_benches_only() -> None:
    names = ["pgmux-bench-10-0", "pgmux-bench-10-1", "pgmux-bench-20-0", "system.slice", "pgmux-bench-30"]
    assert cg.stale_groups(names, alive=lambda pid: pid == 20) == ["pgmux-bench-10-0", "pgmux-bench-10-1"]
    assert cg.stale_groups(names, alive=lambda pid: True) == []


def test_quota_us() -> None:
    assert cg.quota_us(0.25) == 25_000
    assert cg.quota_us(1.5) == 150_000
    assert cg.quota_us(0) == -1  # no limit
    for bad in (-0.1, 0.005):
        with pytest.raises(ValueError):
            cg.quota_us(bad)


def test_cpu_stat_deltas() -> None:
    before = cg.parse_cpu_stat("nr_periods 10\nnr_throttled 2\nthrottled_time 5000\nnr_bursts 0\n")
    after = cg.parse_cpu_stat("nr_periods 110\nnr_throttled 42\nthrottled_time 905000\n")
    delta = after.minus(before)
    assert delta == cg.Throttle(100, 40, 900000)
    assert delta.fraction() == pytest.approx(0.4)
    assert cg.Throttle().fraction() is None  # never ran: unknown, not 0


NET_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000   999        0 111 1 0 100 0 0 10 0
   1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000   999        0 222 1 0 20 4 30 10 -1
   2: 0100007F:1F90 0100007F:C351 01 00000000:00000000 00:00000000 00000000   999        0 333 1 0 20 4 30 10 -1
   3: 0100007F:D000 0100007F:1538 01 00000000:00000000 00:00000000 00000000   999        0 444 1 0 20 4 30 10 -1
   4: 0100007F:1F90 0100007F:C352 06 00000000:00000000 03:00000000 00000000     0        0 0 3 0
garbage
"""


def test_proc_net_tcp_and_ownership() -> None:
    socks = cg.parse_proc_net_tcp(NET_TCP)
    assert socks[0] == cg.TcpSocket(8080, 0, 10, 111)
    assert [s.inode for s in socks] == [111, 222, 333, 444, 0]
    owners = {7: {111, 222, 444}, 8: {111, 333}}
    clients = cg.count_owned(socks, owners, lambda s: s.state == 1 and s.local_port == 8080)
    servers = cg.count_owned(socks, owners, lambda s: s.state == 1 and s.remote_port == 5432)
    assert clients == {7: 1, 8: 1} and servers == {7: 1, 8: 0}


def run(tps: float | None, servers: int | None = 20) -> scaling.Run:
    return scaling.Run(tps=tps, max_servers=servers, cpu=[0.25], clients=[64], servers=[20])


def test_medians_skip_runs_that_do_not_count() -> None:
    runs = [run(300.0), run(None), run(100.0), run(200.0)]
    assert scaling.median_tps(runs) == 200.0
    mid = scaling.median_run(runs)
    assert mid is not None and mid.tps == 200.0
    assert scaling.median_run([run(None)]) is None and scaling.median_tps([]) is None


def test_bars_follow_the_issue() -> None:
    configs = scaling.plan(["pgmux", "pgbouncer"], [1, 2, 4], 20)
    tps = {"pgmux-1": 1000.0, "pgmux-2": 1850.0, "pgmux-4": 3000.0,
           "pgbouncer-1": 1100.0, "pgbouncer-2": 1800.0, "pgbouncer-4": 2500.0}
    results = {name: [run(t, 21 if name == "pgbouncer-4" else 20)] for name, t in tps.items()}
    rows = scaling.summarize(configs, results)
    got = dict(scaling.bars(rows, 20))
    assert got["pgmux 2 workers / 1 worker = 1.85x (bar 1.8x)"] is True
    assert got["pgmux 4 workers / 1 worker = 3.00x (bar 3.4x)"] is False
    assert got["pgmux 1 / PgBouncer 1 = 0.91x (bar 1.00x)"] is False
    assert got["pgmux 2 / PgBouncer 2 = 1.03x (bar 1.00x)"] is True
    assert got["pgbouncer-4: at most 21 server connections (pool total 20)"] is False
    assert "x 1 proc" in scaling.table(rows)


def test_metrics_cost_is_against_pgmux_with_one_process() -> None:
    """pgmux-metrics runs one process only (the metrics' cost where one process is the limit), and its ratio is against
    pgmux-1: the metrics' cost on the hot path, bar 3%."""
    configs = scaling.plan(["pgmux", "pgmux-metrics"], [1, 2], 20)
    assert [c.name for c in configs] == ["pgmux-1", "pgmux-metrics-1", "pgmux-2"]
    for metrics_tps, met in ((980.0, True), (960.0, False)):
        results = {"pgmux-1": [run(1000.0)], "pgmux-metrics-1": [run(metrics_tps)], "pgmux-2": [run(1900.0)]}
        rows = scaling.summarize(configs, results)
        assert rows[1]["vs_1"] == metrics_tps / 1000.0 and rows[1]["pool_per_process"] == [20]
        got = dict(scaling.bars(rows, 20))
        assert got[f"pgmux with metrics_listen / without = {metrics_tps / 1000:.3f}x (bar 0.97x: cost under 3%)"] is met
