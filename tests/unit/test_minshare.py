"""min_pool_size for the pooler as a whole with workers > 1 (runtime/minshare.py): the share-of-minimum
rule, and workers topping a pool up in turn through WorkerShare.grant on one shared block (no sockets, no
processes: each "worker" is a WorkerShare on the same bytearray, servers are plain objects)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from pgmux.pooling.pool import Pool, PoolLimits
from pgmux.runtime import workershare as ws
from pgmux.runtime.minshare import Minimum, local_minimum
from pgmux.runtime.worker import SharedRegistry, WorkerShare


class Server:
    def __init__(self) -> None:
        self.created_at = 0.0
        self.idle_since = 0.0
        self.close_needed = False


def test_local_minimum_is_what_the_others_lack() -> None:
    # the pooler lacks servers: each worker would open what is missing (one of them does, under the lock)
    assert local_minimum(4, [0, 0], 0) == 4 and local_minimum(4, [0, 0], 1) == 4
    assert local_minimum(4, [3, 0], 1) == 1
    assert local_minimum(4, [3, 0], 0) == 4  # its 3 kept, one more
    # the minimum is there: the lower rows keep theirs first, the rest may close past server_idle_timeout
    assert local_minimum(4, [4, 0], 0) == 4 and local_minimum(4, [4, 0], 1) == 0
    assert local_minimum(4, [2, 2], 0) == 2 and local_minimum(4, [2, 2], 1) == 2
    assert local_minimum(2, [2, 2], 0) == 2 and local_minimum(2, [2, 2], 1) == 0  # not both down to 0
    assert local_minimum(4, [1, 5, 3], 1) == 3 and local_minimum(4, [1, 5, 3], 2) == 0
    assert local_minimum(0, [0, 3], 1) == 0


@given(st.integers(0, 12), st.lists(st.integers(0, 8), min_size=2, max_size=8))
def test_kept_parts_add_up_to_the_minimum(minimum: int, held: list[int]) -> None:
    """Every worker closing down to its part at once still leaves min(minimum, total) in the pooler; and
    below the minimum each would open exactly the deficit."""
    total = sum(held)
    kept = [min(local_minimum(minimum, held, w), held[w]) for w in range(len(held))]
    assert sum(kept) == min(minimum, total)
    for w in range(len(held)):
        assert local_minimum(minimum, held, w) - held[w] <= max(0, minimum - total)


def test_minimum_keeps_the_configured_number_and_rereads_it_after_a_reload() -> None:
    pool: Pool[Any, Any] = Pool("db", "u", PoolLimits(pool_size=10, min_pool_size=4), "transaction")
    m = Minimum()
    assert m.apply(pool, [3, 0], 1) and pool.limits.min_pool_size == 1
    assert not m.apply(pool, [3, 0], 1)
    assert m.apply(pool, [0, 0], 1) and pool.limits.min_pool_size == 4  # a worker died: its servers count no more
    assert m.configured_for(pool) == 4 and pool.limits.pool_size == 10
    pool.limits = PoolLimits(pool_size=10, min_pool_size=6)  # a reload's apply_limits
    for _ in range(3):
        s = Server()
        pool.add_server(s)
        pool.idle.append(s)
    assert m.apply(pool, [4, 3], 1) and pool.limits.min_pool_size == 2 and m.configured_for(pool) == 6
    # idle servers past server_idle_timeout close only while the pooler stays above the minimum
    assert len(pool.expired(1000.0, 10.0, 0.0)) == 1  # 3 here + 4 in row 0: one may go, 6 stay
    m.forget(set())
    assert m.made == {} and m.configured == {}


def _workers(n: int, minimum: int, pool_size: int) -> tuple[ws.Counts, list[tuple[WorkerShare, Pool[Any, Any]]]]:
    rows = ws.rows_for(n)
    counts = ws.Counts(bytearray(ws.size_for(rows)), rows, ws.NoLock())
    out = []
    for row in range(n):
        share = WorkerShare(row, n, counts, [], "/nonexistent", 1)
        registry = SharedRegistry(share)
        share.app = SimpleNamespace(now=lambda: 100.0, registry=registry)  # type: ignore[assignment]
        pool = registry.get_or_create(
            "db", "u", lambda: (PoolLimits(pool_size=pool_size, min_pool_size=minimum), "transaction"))
        out.append((share, pool))
    return counts, out


def _launch(share: WorkerShare, pool: Pool[Any, Any]) -> int:
    """What App.launch does: ask for room, open what the pool then wants (here: plain objects)."""
    n = pool.wanted(100.0, share.registry().headroom(pool))
    for _ in range(n):
        pool.add_server(Server())
    return n


@given(st.integers(2, 4), st.integers(1, 12), st.lists(st.integers(0, 3), min_size=4, max_size=30))
def test_workers_top_up_to_the_minimum_in_total(n: int, minimum: int, order: list[int]) -> None:
    """Whatever order the workers' ticks come in, the pooler ends with exactly the minimum (never N times
    it, never above pool_size); a dead worker's servers are made up for by the others."""
    pool_size = 10

    async def run() -> None:
        counts, workers = _workers(n, minimum, pool_size)
        key = counts.slot(ws.pool_key("db", "u"))
        for turn in [*order, *range(n)]:
            share, pool = workers[turn % n]
            _launch(share, pool)
            await asyncio.sleep(0)  # the exact counts published
            total = sum(len(p.servers) for _, p in workers)
            assert total <= min(minimum, pool_size)
            assert counts.total(key) == total
        assert sum(len(p.servers) for _, p in workers) == min(minimum, pool_size)
        # the worker holding most dies: the supervisor zeroes its row, its servers are gone
        dead = max(range(n), key=lambda w: len(workers[w][1].servers))
        counts.zero(dead)
        workers[dead][1].servers.clear()
        for share, pool in workers:
            if share.index != dead:
                _launch(share, pool)
                await asyncio.sleep(0)
        assert sum(len(p.servers) for _, p in workers) == min(minimum, pool_size)

    asyncio.run(run())


def test_the_minimum_is_never_demand_for_the_rebalance() -> None:
    """A pool below its minimum but full (the others hold the rest of the limit) publishes no demand: a
    minimum must not make other workers give their idle servers up (server login churn)."""

    async def run() -> int:
        counts, workers = _workers(2, 4, 4)
        share, pool = workers[0]
        key = counts.slot(ws.pool_key("db", "u"))
        counts.set(1, key, 4)  # the other worker holds the whole limit
        pool.limits = PoolLimits(pool_size=4, min_pool_size=4)
        share.registry().minimum.made.clear()  # type: ignore[attr-defined]
        assert _launch(share, pool) == 0
        await asyncio.sleep(0)
        return counts.others_demand(1, key)

    assert asyncio.run(run()) == 0
