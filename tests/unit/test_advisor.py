"""The pool advisor's maths (pooling/advisor.py): Erlang C, Little's law on the counters SHOW STATS
keeps, and the verdict too small / saturated / ok from a simulated server (tests/unit/poolsim.py)."""

from __future__ import annotations

import math

import pytest
from poolsim import Model, Sim

from pgmux.pooling.advisor import Snapshot, Tracker, budget, erlang_c, offered_load, servers_for


def erlang_c_direct(c: int, a: float) -> float:
    top = a ** c / math.factorial(c) * c / (c - a)
    return top / (sum(a ** k / math.factorial(k) for k in range(c)) + top)


@pytest.mark.parametrize("c, a", [(1, 0.5), (2, 1.0), (5, 3.3), (10, 8.0), (30, 25.0), (60, 41.5)])
def test_erlang_c_matches_the_closed_form(c: int, a: float) -> None:
    assert erlang_c(c, a) == pytest.approx(erlang_c_direct(c, a), rel=1e-9)


def test_erlang_c_known_values() -> None:
    assert erlang_c(1, 0.5) == pytest.approx(0.5)  # M/M/1: P(wait) = utilisation
    assert erlang_c(2, 1.0) == pytest.approx(1 / 3)
    assert erlang_c(3, 3.0) == 1.0 and erlang_c(3, 0.0) == 0.0


def test_servers_for_is_the_smallest_enough() -> None:
    for a in (0.3, 1.0, 4.7, 20.0, 95.0):
        c = servers_for(a, 0.05)
        assert erlang_c(c, a) <= 0.05 < erlang_c(c - 1, a) if c > 1 else erlang_c(c, a) <= 0.05
        assert c > a  # never below the mean (Little)
    assert servers_for(0.0) == 0
    # the variance: a mean of 20 busy servers needs noticeably more than 20 to keep waits rare
    assert 26 <= servers_for(20.0, 0.05) <= 30


def test_offered_load_counts_what_waiting_clients_would_use() -> None:
    assert offered_load(1000, 0.002, 2.0, 0.0, 50) == 2.0  # nobody waits: what is used is what is wanted
    # 20 clients, 2 busy, 17 waiting, 1 elsewhere: Z = 5 ms per transaction, so each client would want a
    # server S/(S+Z) = 2/3 of the time if it never waited
    a = offered_load(200, 0.010, 2.0, 17.0, 20)
    assert a == pytest.approx(20 * 0.010 / (0.010 + 1 / 200))
    assert offered_load(200, 0.010, 2.0, 17.0, -1) == 19.0  # client count unknown: busy + waiting


def feed(t: Tracker, sim: Sim, size: int, seconds: float) -> None:
    for _ in range(round(seconds / sim.tick)):
        snap, _ = sim.step(size)
        t.add(snap)


def test_too_small_pool_needs_about_its_clients() -> None:
    """pg_sleep-like: 20 clients on 2 servers; hold times flat. Too small, needs 20 (the clients)."""
    t = Tracker("db", "u")
    sim = Sim(Model(clients=20, think=0.0003, latency=0.010, cpu=0.0001), seed=1)
    feed(t, sim, 2, 20.0)
    adv = t.advise(sim.now)
    assert adv.verdict == "too small" and adv.needed == 20, adv
    assert "too small, needs 20" in adv.detail
    assert adv.tps == pytest.approx(2 / 0.0101, rel=0.1)
    assert adv.busy == pytest.approx(2.0, rel=0.1)  # Little: tps x hold


def test_too_small_with_evidence_that_postgres_keeps_up() -> None:
    t = Tracker("db", "u")
    sim = Sim(Model(clients=40, think=0.0003, latency=0.010, cpu=0.0001), seed=2)
    feed(t, sim, 2, 10.0)
    feed(t, sim, 8, 10.0)
    adv = t.advise(sim.now)
    assert adv.verdict == "too small" and adv.elasticity is not None and adv.elasticity < 0.2, adv
    assert adv.needed == 40


def test_saturated_postgres_is_told_apart() -> None:
    """Every transaction holds one lock for 5 ms: hold time grows with concurrency, throughput does not.
    The clients wait, but a bigger pool would not help: saturated, and the knee is named."""
    t = Tracker("db", "u")
    sim = Sim(Model(clients=40, think=0.0003, latency=0.0, cpu=0.0001, lock=0.005), seed=3)
    feed(t, sim, 2, 10.0)
    feed(t, sim, 10, 10.0)
    adv = t.advise(sim.now)
    assert adv.verdict == "saturated", adv
    assert adv.elasticity is not None and adv.elasticity > 0.8
    assert adv.needed <= 2 and "PostgreSQL is saturated" in adv.detail


def test_enough_and_idle() -> None:
    t = Tracker("db", "u")
    sim = Sim(Model(clients=10, think=0.05, latency=0.002, cpu=0.0005), seed=4)
    feed(t, sim, 20, 10.0)
    adv = t.advise(sim.now)
    assert adv.verdict == "ok" and 1 <= adv.needed <= 10, adv
    t2 = Tracker("db", "u")
    for i in range(30):
        t2.add(Snapshot(i * 0.2, 5, 0.1, 0.0, 0, 0, 3, 20))
    assert t2.advise(6.0).verdict == "idle"
    assert Tracker().advise(0.0).verdict == "idle"


def test_window_forgets_old_snapshots_and_levels() -> None:
    t = Tracker()
    sim = Sim(Model(clients=20, latency=0.01), seed=1)
    feed(t, sim, 2, 400.0)
    assert sim.now - t.snaps[0].now <= 60.0
    assert all(sim.now - lv.seen <= 300.0 for lv in t.levels.values())


def test_budget() -> None:
    b = budget("pg:5432", [(20, 20), (5, 25)], 97, "server")
    assert b.verdict == "fits" and b.needed == 25 and b.configured == 45
    assert budget("pg:5432", [(20, 60), (5, 50)], 97, "server").verdict == "overcommitted"
    assert budget("pg:5432", [(80, 80), (25, 25)], 97, "server").verdict == "over"
    assert budget("pg:5432", [(70, 70)], 97, "server", others=20).verdict == "fits"
    assert budget("pg:5432", [(80, 80)], 97, "server", others=20).verdict == "over"
    assert budget("pg:5432", [(1, 1)], None, "unknown").verdict == "unknown"
