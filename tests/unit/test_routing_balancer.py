"""Host selection policies: exact sequences where the policy is deterministic, statistics where not."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from pgmux.routing.balancer import (
    DEFAULT_POLICY,
    POLICIES,
    LeastOutstanding,
    RoundRobin,
    WeightedRandom,
    make_policy,
)

HOSTS = ["a", "b", "c"]
N = 10_000


def picks(policy, hosts=HOSTS, outstanding=None, weights=None, n=N, seed=1):
    rng = random.Random(seed)
    return [policy(hosts, outstanding or {}, weights or {}, rng) for _ in range(n)]


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_every_policy_returns_none_without_hosts_and_the_only_host_otherwise(name: str) -> None:
    policy = make_policy(name)
    assert policy([], {}, {}, random.Random(0)) is None
    assert set(picks(policy, hosts=["solo"], n=50)) == {"solo"}


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_zero_weight_hosts_get_nothing_unless_they_are_all_that_is_left(name: str) -> None:
    weights = {"a": 0.0, "b": 1.0, "c": 0.0}
    assert set(picks(make_policy(name), weights=weights, n=300)) == {"b"}
    everyone_zero = Counter(picks(make_policy(name), weights=dict.fromkeys(HOSTS, 0.0), n=3000))
    assert set(everyone_zero) == set(HOSTS)


def test_default_policy_and_unknown_names() -> None:
    assert DEFAULT_POLICY == "least_outstanding"
    assert isinstance(make_policy(), LeastOutstanding)
    with pytest.raises(ValueError, match="round_robin"):
        make_policy("fastest")


def test_round_robin_rotates_in_order() -> None:
    assert picks(RoundRobin(), n=7) == ["a", "b", "c", "a", "b", "c", "a"]


def test_round_robin_weights_are_smooth_and_exact() -> None:
    seq = picks(RoundRobin(), hosts=["a", "b"], weights={"a": 2, "b": 1}, n=6)
    assert seq == ["a", "b", "a", "a", "b", "a"]  # never a, a, a, a in a row
    counts = Counter(picks(RoundRobin(), weights={"a": 5, "b": 3, "c": 2}))
    assert counts == {"a": 5000, "b": 3000, "c": 2000}


def test_round_robin_survives_hosts_coming_and_going() -> None:
    rr = RoundRobin()
    rng = random.Random(0)
    first = [rr(HOSTS, {}, {}, rng) for _ in range(3)]
    without_b = [rr(["a", "c"], {}, {}, rng) for _ in range(4)]
    assert first == ["a", "b", "c"] and Counter(without_b) == {"a": 2, "c": 2}
    back = Counter(rr(HOSTS, {}, {}, rng) for _ in range(300))
    assert back == {"a": 100, "b": 100, "c": 100}  # b returns level, not owed a burst


def test_least_outstanding_picks_the_least_busy() -> None:
    lo = LeastOutstanding()
    assert set(picks(lo, outstanding={"a": 3, "b": 0, "c": 1}, n=100)) == {"b"}


def test_least_outstanding_ties_rotate_so_load_spreads() -> None:
    counts = Counter(picks(LeastOutstanding(), outstanding={"a": 2, "b": 2, "c": 2}))
    assert max(counts.values()) - min(counts.values()) <= 1
    assert sorted(counts) == HOSTS


def test_least_outstanding_simulated_load_stays_balanced() -> None:
    """Each pick adds a query; a random one finishes now and then: in flight stays within one."""
    lo, rng, inflight = LeastOutstanding(), random.Random(7), Counter()
    for i in range(N):
        inflight[lo(HOSTS, inflight, {}, rng)] += 1
        if i % 2:
            done = rng.choice([h for h in HOSTS if inflight[h]])
            inflight[done] -= 1
        assert max(inflight[h] for h in HOSTS) - min(inflight[h] for h in HOSTS) <= 2


def test_least_outstanding_weights_scale_capacity() -> None:
    # b has twice a's capacity: with 4 in flight on b and 2 on a they are equally loaded.
    lo, inflight = LeastOutstanding(), Counter()
    for _ in range(300):
        inflight[lo(["a", "b"], inflight, {"a": 1, "b": 2}, random.Random(0))] += 1
    assert inflight == {"a": 100, "b": 200}


def test_weighted_random_is_deterministic_with_a_seed() -> None:
    assert picks(WeightedRandom(), seed=42, n=200) == picks(WeightedRandom(), seed=42, n=200)
    assert picks(WeightedRandom(), seed=42, n=200) != picks(WeightedRandom(), seed=43, n=200)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_weighted_random_follows_the_weights(seed: int) -> None:
    weights = {"a": 1.0, "b": 2.0, "c": 7.0}
    counts = Counter(picks(WeightedRandom(), weights=weights, seed=seed))
    for host, w in weights.items():
        expected = N * w / 10
        # 4 standard deviations of a binomial: fails by chance about once in 15,000 seeds
        assert abs(counts[host] - expected) < 4 * (N * (w / 10) * (1 - w / 10)) ** 0.5


def test_weighted_random_uniform_by_default() -> None:
    counts = Counter(picks(WeightedRandom(), seed=5))
    assert all(abs(c - N / 3) < 4 * (N * (1 / 3) * (2 / 3)) ** 0.5 for c in counts.values())


def test_least_outstanding_ties_alternate_even_when_they_come_every_other_pick() -> None:
    # A steady load: every other pick sees a tie. Were the turn to move on every pick, every tie would
    # meet the same parity and go to the same host.
    policy = LeastOutstanding()
    rng = random.Random(0)
    tie_winners = []
    for _ in range(10):
        tie_winners.append(policy(["a", "b"], {"a": 0, "b": 0}, {}, rng))
        assert policy(["a", "b"], {"a": 1, "b": 0}, {}, rng) == "b"
    assert tie_winners.count("a") == tie_winners.count("b") == 5
