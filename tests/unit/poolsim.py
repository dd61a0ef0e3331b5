"""A simulated PostgreSQL behind a pool, for the pool advisor and pool_size = auto (no sockets, no sleeps).

Closed loop, as pgbench: `clients` clients each hold a server for S(k) seconds, then spend `think`
seconds elsewhere (their own round trip through pgmux), then ask again. With k transactions running at
once the server's hold time is

    S(k) = latency + cpu * max(1, k / cores) + lock * k + thrash * k * k

latency: time a transaction waits without using the server (pg_sleep, network); cpu: CPU seconds it
needs, shared by `cores`; lock: a section every transaction runs alone (one hot row: TPC-B at scale 1);
thrash: what each extra connection costs all the others (context switches, lock queues), which makes
throughput fall past the best size, as real TPC-B does. The steady state per pool size is solved
exactly (Little's law on the closed loop); `noise` perturbs each tick's throughput and hold time.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from pgmux.pooling.advisor import Snapshot


@dataclass
class Model:
    clients: int = 100
    think: float = 0.0002
    latency: float = 0.0
    cpu: float = 0.0005
    cores: int = 2
    lock: float = 0.0
    thrash: float = 0.0

    def hold(self, k: float) -> float:
        k = max(k, 1.0)
        return self.latency + self.cpu * max(1.0, k / self.cores) + self.lock * k + self.thrash * k * k

    def steady(self, size: int) -> tuple[float, float, float, float]:
        """(tps, hold, busy, waiting) with `size` servers."""
        size = max(1, min(size, self.clients))
        s = self.hold(size)
        tps = size / s
        if tps * (self.think + s) <= self.clients:  # the pool binds: every server busy
            return tps, s, float(size), self.clients - size - tps * self.think
        lo, hi = 0.0, float(size)  # it does not: busy k solves k = clients * S(k) / (think + S(k))
        for _ in range(60):
            k = (lo + hi) / 2
            if self.clients * self.hold(k) / (self.think + self.hold(k)) > k:
                lo = k
            else:
                hi = k
        k = (lo + hi) / 2
        return k / self.hold(k), self.hold(k), k, 0.0

    def best(self, hi: int) -> tuple[int, float]:
        return max(((n, self.steady(n)[0]) for n in range(1, hi + 1)), key=lambda p: p[1])


class Sim:
    """Ticks of 0.2 s through a Model, producing the Snapshots the runtime would."""

    def __init__(self, model: Model, seed: int = 1, noise: float = 0.05, tick: float = 0.2) -> None:
        self.model, self.rng, self.noise, self.tick = model, random.Random(seed), noise, tick
        self.now, self.xacts, self.held, self.waits = 0.0, 0, 0.0, 0.0
        self.carry = 0.0

    def step(self, size: int) -> tuple[Snapshot, float]:
        """One tick at `size`: the snapshot at its end and the tick's throughput."""
        tps, hold, busy, waiting = self.model.steady(size)
        f = math.exp(self.rng.gauss(0.0, self.noise))
        g = math.exp(self.rng.gauss(0.0, self.noise))
        tps_t = tps * f
        n = tps_t * self.tick + self.carry
        done = int(n)
        self.carry = n - done
        self.now += self.tick
        self.xacts += done
        self.held += done * hold * g
        self.waits += waiting * self.tick
        snap = Snapshot(self.now, self.xacts, self.held, self.waits, round(busy), round(waiting),
                        self.model.clients, size)
        return snap, tps_t
