"""Which of several healthy hosts gets the next read.

A policy is called as `policy(hosts, outstanding, weights, rng)` and returns one of `hosts`, or None
when there is none. Hosts are opaque and hashable (health.HostState in practice). `outstanding`
counts queries or transactions in flight per host, `weights` are relative capacities (missing = 1.0;
0 = take no traffic while any positively weighted host is a candidate), and `rng` is a
random.Random the caller seeds, so every policy is deterministic under test.

Policies that keep a cursor (round robin) are small objects: make one per replica set with
`make_policy(name)`, never share one module-wide.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

__all__ = ["DEFAULT_POLICY", "POLICIES", "LeastOutstanding", "Policy", "RoundRobin", "WeightedRandom",
           "make_policy"]

H = TypeVar("H", bound=Hashable)


class Policy(Protocol):
    def __call__(self, hosts: Sequence[H], outstanding: Mapping[H, int], weights: Mapping[H, float],
                 rng: random.Random) -> H | None: ...


def _eligible(hosts: Sequence[H], weights: Mapping[H, float]) -> list[tuple[H, float]]:
    """Hosts with their weight; zero-weight hosts only if nothing else is left (then all count as 1)."""
    weighted = [(h, max(0.0, float(weights.get(h, 1.0)))) for h in hosts]
    positive = [(h, w) for h, w in weighted if w > 0]
    return positive or [(h, 1.0) for h in hosts]


class RoundRobin:
    """Smooth weighted round robin: each pick adds every host's weight to its credit, the richest host
    wins and pays the total. Equal weights give plain rotation; weights 2:1 give a, b, a, a, b, a, ...
    spread out rather than in bursts. Credit is kept only for the current candidates, so a host that
    comes back after a ban starts level instead of owed a burst."""

    def __init__(self) -> None:
        self._credit: dict[Any, float] = {}

    def __call__(self, hosts: Sequence[H], outstanding: Mapping[H, int], weights: Mapping[H, float],
                 rng: random.Random) -> H | None:
        if not hosts:
            return None
        eligible = _eligible(hosts, weights)
        credit = {h: self._credit.get(h, 0.0) + w for h, w in eligible}
        best = max(credit, key=credit.__getitem__)  # first of the richest: ties go in list order
        credit[best] -= sum(w for _, w in eligible)
        self._credit = credit
        return best


class LeastOutstanding:
    """The host with the least work in flight per unit of weight. Ties, the usual case at low load,
    rotate among the tied hosts so that short queries still spread over every replica."""

    def __init__(self) -> None:
        self._turn = 0

    def __call__(self, hosts: Sequence[H], outstanding: Mapping[H, int], weights: Mapping[H, float],
                 rng: random.Random) -> H | None:
        if not hosts:
            return None
        scored = [(outstanding.get(h, 0) / w, h) for h, w in _eligible(hosts, weights)]
        low = min(score for score, _ in scored)
        tied = [h for score, h in scored if score == low]
        if len(tied) == 1:
            return tied[0]
        # The turn moves only on ties: were it to move on every pick, ties that come every other pick
        # (a steady load) would always meet the same parity and always go to the same host.
        self._turn += 1
        return tied[self._turn % len(tied)]


class WeightedRandom:
    """A random host, chosen with probability proportional to its weight."""

    def __call__(self, hosts: Sequence[H], outstanding: Mapping[H, int], weights: Mapping[H, float],
                 rng: random.Random) -> H | None:
        if not hosts:
            return None
        eligible = _eligible(hosts, weights)
        return rng.choices([h for h, _ in eligible], [w for _, w in eligible])[0]


POLICIES: dict[str, Callable[[], Policy]] = {
    "round_robin": RoundRobin,
    "least_outstanding": LeastOutstanding,
    "weighted_random": WeightedRandom,
}
DEFAULT_POLICY = "least_outstanding"


def make_policy(name: str = DEFAULT_POLICY) -> Policy:
    """A fresh policy by its config name; ValueError names the known ones."""
    try:
        return POLICIES[name]()
    except KeyError:
        raise ValueError(f"unknown load balancing policy {name!r}; one of {', '.join(POLICIES)}") from None
