"""min_pool_size for the pooler as a whole with workers > 1 (issue 14 item 2).

PgBouncer's meaning: "add more server connections to the pool if below this number". With N worker
processes the pooler keeps at least min_pool_size servers of each pool *in total*, not N times that.

How: the pool core (pooling/pool.py) keeps `limits.min_pool_size` of its own servers (`wanted` opens up
to it, `expired` closes idle ones only above it). A worker sets that number, for each of its pools, from
the rows of the shared counts (runtime/workershare.py): `local_minimum` is the part of the minimum its
servers fill when the rows fill it in row order (so that two workers whose idle servers time out at once
never both close down to nothing), plus what the pooler as a whole still lacks. It is set each
time the worker asks for room (`MinimumRegistry.topped_up`, before `WorkerShare.grant`: every janitor
tick and every launch), and when that asks for more servers, once more under the shared lock, held
through the claim: so two workers topping up the same pool at once take turns, and the second sees the
first one's claim (the total never passes the minimum, nor the pool's limit, which the claim is capped
by anyway). Pools without a minimum take no lock here. A worker whose row is zeroed (it died) counts as
nothing: the others' next tick opens what is missing.

Which worker tops up: any that has the pool (it had a client of that pool, or adopted it:
runtime/minpools.py). The servers stay where they were opened: at rest no worker's demand asks for them,
so the rebalance (WorkerShare._rebalance) leaves them be (no server login churn).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from pgmux.pooling.registry import Registry
from pgmux.runtime import workershare as ws
from pgmux.runtime.minpools import MinPools

if TYPE_CHECKING:
    from pgmux.pooling.pool import Pool, PoolLimits


def local_minimum(minimum: int, held: list[int], me: int) -> int:
    """How many servers of a pool worker row `me` keeps for min_pool_size, given what each row holds
    (`held`, one count per row, this worker's own exact): its part of the minimum when the rows fill it
    in row order (what it must not close: the lower rows keep theirs first, so two workers closing idle
    servers at once never both go below the minimum), plus what the pooler as a whole lacks (what it
    opens: the pooler ends with the minimum in total, not once per worker)."""
    lower = sum(held[:me])
    part = min(max(0, minimum - lower), held[me])
    return part + max(0, minimum - sum(held))


class Minimum:
    """Each pool's configured min_pool_size, and the worker's part of it written into the pool's limits.

    The configured number is read from the pool's limits whenever they are not the object this class
    made (a new pool, a reload's `apply_limits`): no configuration lookups per tick."""

    def __init__(self) -> None:
        self.configured: dict[Pool[Any, Any], int] = {}
        self.made: dict[Pool[Any, Any], PoolLimits] = {}

    def apply(self, pool: Pool[Any, Any], held: list[int], me: int) -> bool:
        """Set the pool's own minimum from what each worker row holds; True when it changed."""
        lim = pool.limits
        if lim is not self.made.get(pool):
            self.configured[pool] = lim.min_pool_size
        if self.configured[pool] <= 0:
            self.made[pool] = lim
            return False
        want = local_minimum(self.configured[pool], held, me)
        if want == lim.min_pool_size:
            self.made[pool] = lim
            return False
        pool.limits = self.made[pool] = replace(lim, min_pool_size=want)
        return True

    def replaced(self, pool: Pool[Any, Any], old: Any) -> None:
        """pool.limits replaced by a copy with another pool_size (pool_size = auto): still the one made here."""
        if self.made.get(pool) is old:
            self.made[pool] = pool.limits

    def configured_for(self, pool: Pool[Any, Any]) -> int:
        """The pool's min_pool_size for the pooler as a whole (its limits' own when not applied yet)."""
        lim = pool.limits
        return lim.min_pool_size if lim is not self.made.get(pool) else self.configured.get(pool, 0)

    def forget(self, live: set[Pool[Any, Any]]) -> None:
        """Pools the registry freed."""
        for pool in [p for p in self.made if p not in live]:
            del self.made[pool]
            self.configured.pop(pool, None)


def demand(pool: Pool[Any, Any], now: float) -> int:
    """New servers the pool's clients wait for, its min_pool_size not counted: what a worker publishes
    as unmet demand (a minimum must never make other workers give their servers up: login churn)."""
    return min(pool.wanted(now, 1 << 30), pool.queued_demand(now))


class MinimumRegistry(Registry):
    """The base of a worker's registry (runtime/worker.SharedRegistry): each pool's minimum kept for
    the pooler as a whole."""

    def __init__(self, share: Any) -> None:  # runtime/worker.WorkerShare (which imports this module)
        super().__init__()
        self.share = share
        self.minimum = Minimum()
        self.adopter = MinPools(share, self.minimum)

    def limits_replaced(self, pool: Pool[Any, Any], old: Any) -> None:
        self.minimum.replaced(pool, old)

    def topped_up(self, pool: Pool[Any, Any], local_room: int) -> int:
        """WorkerShare.grant's room for the pool, its minimum set first (under the lock when it would
        open servers for it)."""
        share = self.share
        if self._apply(pool) and pool.limits.min_pool_size > len(pool.servers):
            with share.counts.lock:  # (re-entrant: grant takes it again)
                self._apply(pool)
                return share.grant(pool, local_room, True)
        return share.grant(pool, local_room, True)

    def _apply(self, pool: Pool[Any, Any]) -> bool:
        """Set the pool's own minimum from the shared counts; True when the pool has one at all."""
        share = self.share
        if self.minimum.configured_for(pool) <= 0 and pool.limits is self.minimum.made.get(pool):
            return False
        try:
            slot = share.keys(pool)[0]
        except ws.TableFull:
            return False
        c, me, mine = share.counts, share.index, share._held(pool)
        held = [mine if w == me else c.get(w, slot) for w in range(share.rows)]
        self.minimum.apply(pool, held, me)
        return self.minimum.configured_for(pool) > 0

    def tick_minimum(self) -> None:
        """A janitor-tick hook: forget freed pools, adopt pools with a minimum (runtime/minpools.py)."""
        if len(self.minimum.made) > len(self.pools):
            self.minimum.forget(set(self.pools.values()))
        self.adopter()
