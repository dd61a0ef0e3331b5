"""pool_size = auto (pooling/autosize.py) against a simulated server (tests/unit/poolsim.py): it finds a
size within 5% of the best fixed size's throughput for CPU-bound, contended and latency-bound loads,
settles, stays in its bounds, and follows a change of workload within seconds."""

from __future__ import annotations

from pathlib import Path

import pytest
from poolsim import Model, Sim

from pgmux.config import load_config
from pgmux.config.values import AUTO
from pgmux.errors import ConfigError
from pgmux.pooling.advisor import Snapshot
from pgmux.pooling.autosize import PROBE_BACKOFF, START, AutoSizer, bounds, start_size

MODELS = {
    # pgbench -S on 2 cores: CPU-bound, flat beyond 2-3, a slow decline from context switches
    "select": Model(clients=100, think=0.0002, cpu=0.0003, cores=2, thrash=2e-7),
    # TPC-B at scale 1: one hot row; best near 5, 60 connections give about 40% of it
    "tpcb": Model(clients=100, think=0.001, latency=0.0005, cpu=0.001, cores=2, thrash=2e-5),
    # SELECT pg_sleep(0.01): latency-bound, the more connections the better
    "sleep": Model(clients=200, think=0.0003, latency=0.010, cpu=0.0001, cores=2),
    # a broad optimum: flat between 20 and 60
    "broad": Model(clients=100, think=0.0005, latency=0.002, cpu=0.0008, cores=2, lock=0.0002, thrash=1.5e-6),
}


def run(sim: Sim, sizer: AutoSizer, seconds: float) -> list[tuple[int, float]]:
    """(size, throughput) per tick."""
    out = []
    size = sizer.size
    for _ in range(round(seconds / sim.tick)):
        snap, x = sim.step(size)
        size = sizer.feed(snap)
        assert sizer.lo <= size <= sizer.hi
        out.append((size, x))
    return out


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_reaches_95_percent_of_the_best_fixed_size(name: str, seed: int) -> None:
    model = MODELS[name]
    best, best_tps = model.best(200)
    trace = run(Sim(model, seed=seed), AutoSizer(1, 200), 60.0)
    late = [x for _, x in trace[len(trace) // 2:]]
    whole = [x for _, x in trace]
    # "broad" rises by 2-7% per step of x1.5 from 12 to 37: gains within the noise margin are not taken
    # (fewer connections, the latency that comes with more not paid for a few percent): 90% there
    bar = 0.90 if name == "broad" else 0.95
    assert sum(late) / len(late) >= bar * best_tps, (name, best, trace[-1])
    assert sum(whole) / len(whole) >= (bar - 0.03) * best_tps, (name, best)  # the climb included


@pytest.mark.parametrize("name", sorted(MODELS))
def test_settles(name: str) -> None:
    """After the climb, the home size stays put: the only moves are one-step probes and returns."""
    sizer = AutoSizer(1, 200)
    sim = Sim(MODELS[name], seed=7)
    run(sim, sizer, 30.0)
    homes = []
    size = sizer.size
    for _ in range(300):
        snap, _ = sim.step(size)
        size = sizer.feed(snap)
        homes.append(sizer.home)
    # noise may move home one step either way on a flat optimum, no further, and not often
    assert len(set(homes)) <= 4 and max(homes) <= 2.5 * min(homes), sorted(set(homes))
    assert sum(1 for a, b in zip(homes, homes[1:], strict=False) if a != b) <= 6, homes
    changes = [t for t, _ in sizer.history if t > 30.0]
    assert len(changes) <= 16, changes  # two probes (out and back) per 20 s, and a home move or two


def test_probes_rejected_by_a_wide_margin_come_ever_less_often() -> None:
    """A latency-bound pool settled at its clients' number: each probe of the size below closes and opens a
    third of its servers at a third less throughput, and is rejected by far every time; the interval
    between them doubles, to PROBE_BACKOFF x stale."""
    sizer = AutoSizer(1, 200)
    sim = Sim(MODELS["sleep"], seed=3)
    run(sim, sizer, 30.0)
    assert sizer.home == 200, sizer.history[-5:]
    start = sim.now
    run(sim, sizer, 600.0)
    probes = [t for t, size in sizer.history if t > start and size < sizer.home]
    gaps = [b - a for a, b in zip(probes, probes[1:], strict=False)]
    assert probes and len(probes) <= 8, probes  # without the backoff: one every 2 x stale (40 s), some 15
    assert max(gaps) >= 0.9 * PROBE_BACKOFF * sizer.stale, gaps
    assert all(b >= a * 0.9 for a, b in zip(gaps, gaps[1:], strict=False)), gaps  # never more often again


@pytest.mark.parametrize("before, after", [("sleep", "tpcb"), ("tpcb", "sleep"), ("select", "sleep")])
def test_follows_a_change_of_workload_within_seconds(before: str, after: str) -> None:
    sim = Sim(MODELS[before], seed=5)
    sizer = AutoSizer(1, 200)
    run(sim, sizer, 40.0)
    sim.model = MODELS[after]
    best, best_tps = MODELS[after].best(200)
    trace = run(sim, sizer, 20.0)
    after10 = [x for _, x in trace[50:]]  # from 10 s after the change
    assert sum(after10) / len(after10) >= 0.9 * best_tps, (before, after, best, trace[-1], sizer.history[-8:])


def test_does_not_grow_without_waiting_clients() -> None:
    """A pool its clients never fill keeps its size: nothing to learn, nothing to gain."""
    sizer = AutoSizer(1, 200, size=8)
    now = 0.0
    for i in range(200):
        now += 0.2
        sizer.feed(Snapshot(now, i * 100, i * 0.1, 0.0, 2, 0, 10, sizer.size))
    assert sizer.size == 8 and sizer.history == []


def test_never_beyond_demand() -> None:
    """20 clients: a latency-bound load climbs to 20 servers, not to the cap."""
    sizer = AutoSizer(1, 200)
    trace = run(Sim(Model(clients=20, latency=0.01, cpu=0.0001), seed=2), sizer, 20.0)
    assert max(s for s, _ in trace) <= 20
    assert sizer.home >= 18


def test_bounds() -> None:
    assert bounds(0, 0) == (1, 100)
    assert bounds(5, 0) == (5, 100)
    assert bounds(0, 30) == (1, 30)
    assert bounds(40, 30) == (40, 40)  # min_pool_size wins, as PgBouncer keeps min_pool_size
    sizer = AutoSizer(3, 6, size=50)
    assert sizer.size == 6 and sizer.home == 6
    trace = run(Sim(MODELS["sleep"], seed=1), sizer, 10.0)
    assert {s for s, _ in trace} <= {3, 4, 5, 6}


def test_auto_in_config(tmp_path: Path) -> None:
    """default_pool_size, a [databases] pool_size and a [users] pool_size accept `auto` (any case); a new
    pool of an auto database starts at START within its bounds; other words are refused with the reason."""
    ini = tmp_path / "pgbouncer.ini"
    ini.write_text("[databases]\na = host=h pool_size=AUTO max_db_connections=5\nb = host=h pool_size=7\n"
                   "c = host=h min_pool_size=12\n[users]\nu = pool_size=auto\n[pgbouncer]\ndefault_pool_size = auto\n")
    cfg = load_config(str(ini))
    assert cfg.settings.default_pool_size == AUTO and str(cfg.settings.default_pool_size) == "auto"
    a, b, c = (cfg.databases[n] for n in "abc")
    assert cfg.pool_size_for(a, "x") == AUTO and cfg.pool_size_for(b, "x") == 7 and cfg.pool_size_for(c, "x") == AUTO
    assert cfg.pool_size_for(b, "u") == AUTO  # the [users] entry wins, as for a number
    assert start_size(cfg.pool_size_for(a, "x"), 0, 5) == 5  # max_db_connections bounds it
    assert start_size(cfg.pool_size_for(c, "x"), 12, 0) == 12  # min_pool_size too
    assert start_size(7, 0, 0) == 7 and start_size(AUTO, 0, 0) == START
    for bad in ("default_pool_size = automatic", "default_pool_size = -1"):
        ini.write_text(f"[databases]\n[pgbouncer]\n{bad}\n")
        with pytest.raises(ConfigError, match="default_pool_size") as e:
            load_config(str(ini))
        assert "or auto" in str(e.value) or "at least 0" in str(e.value)


def test_a_surge_of_clients_is_followed_within_seconds() -> None:
    """5 clients, then 100: a latency-bound pool follows them up within a few seconds."""
    model = Model(clients=5, think=0.0003, latency=0.010, cpu=0.0001)
    sim = Sim(model, seed=4)
    sizer = AutoSizer(1, 200)
    run(sim, sizer, 30.0)
    assert sizer.size <= 6
    sizer.fast = False  # as after any rejected step: from here x1.5 steps would take 10 s to reach 100
    model.clients = 100
    trace = run(sim, sizer, 10.0)
    first = next((i for i, (size, _) in enumerate(trace) if size >= 90), None)
    assert first is not None and first * sim.tick <= 6.0, (trace[-1], sizer.history[-6:])


def test_a_pool_whose_clients_left_keeps_its_size() -> None:
    """Between two runs nobody is connected: the size stays for their return (no climb from 1 again)."""
    sizer = AutoSizer(1, 200, size=50)
    now = 0.0
    for _ in range(100):
        now += 0.2
        sizer.feed(Snapshot(now, 1000, 10.0, 0.0, 0, 0, 0, sizer.size, 0))
    assert sizer.size == 50 and sizer.history == []


def test_a_fast_step_with_a_clear_but_modest_gain_keeps_its_first_part() -> None:
    """Latency-bound at 200 clients on 2 cores (bench/poolsize.py, --log): 128 -> 200 gained eff 0.35 with
    a noise margin of 0.12, short of the 0.25 a step of more than x1.5 must clear. The first x1.5 of it
    is kept, with no measurement of its own; a step whose hold time jumped 2x is a new workload instead."""
    from pgmux.pooling.autosize import _Obs

    def sizer_after_step(hold_at_200: float) -> AutoSizer:
        s = AutoSizer(1, 200)
        s.size, s.home, s.fast = 200, 128, True
        s.levels[128] = _Obs(12000.0, 0.0107, 10.0, 0.003)
        s.levels[200] = _Obs(14044.0, hold_at_200, 12.0, 0.055)
        return s

    s = sizer_after_step(0.0130)
    e, margin = s.eff(128, 200), s.noise(128, 200)
    assert e is not None and 0.25 > e - margin >= 0.05, (e, margin)
    s._decide(12.0, 200)
    assert (s.home, s.size, s.fast) == (192, 192, False)
    s = sizer_after_step(0.0330)  # 3x the hold time: not the same load
    s._decide(12.0, 200)
    assert (s.home, s.size) == (128, 128)
