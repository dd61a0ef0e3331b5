"""min_pool_size for the pooler as a whole with workers > 1 (issue 14 item 2).

PgBouncer's meaning: "add more server connections to the pool if below this number". With N worker
processes the pooler keeps at least min_pool_size servers of each pool *in total*, not N times that.

How: the pool core (pooling/pool.py) keeps `limits.min_pool_size` of its own servers (`wanted` opens up
to it, `expired` closes idle ones only above it). A worker sets that number, for each of its pools, to
what the pooler still lacks besides the other workers' servers: `local_minimum(configured, others)`,
where `others` is the sum of the other rows of the shared counts (runtime/workershare.py). It is set
again each time the worker asks for room (`WorkerShare.grant`, every janitor tick and every launch),
and once more under the shared lock before the claim: so two workers topping up the same pool at once
take turns, and the second sees the first one's claim (the total never passes the minimum, nor the
pool's limit, which the claim is capped by anyway). A worker whose row is zeroed (it died) counts as
nothing: the others' next tick opens what is missing.

Which worker tops up: any that has the pool (it had a client of that pool, or adopted it:
runtime/minpools.py). The servers stay where they were opened: at rest no worker's demand asks for them,
so the rebalance (WorkerShare._rebalance) leaves them be (no server login churn).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pgmux.pooling.pool import Pool, PoolLimits


def local_minimum(minimum: int, others: int) -> int:
    """How many servers of a pool one worker keeps for min_pool_size when the other workers hold
    `others` of them: what the pooler lacks besides theirs (0 once they hold the minimum)."""
    return max(0, minimum - others)


class Minimum:
    """Each pool's configured min_pool_size, and the worker's part of it written into the pool's limits.

    The configured number is read from the pool's limits whenever they are not the object this class
    made (a new pool, a reload's `apply_limits`): no configuration lookups per tick."""

    def __init__(self) -> None:
        self.configured: dict[Pool[Any, Any], int] = {}
        self.made: dict[Pool[Any, Any], PoolLimits] = {}

    def apply(self, pool: Pool[Any, Any], others: int) -> bool:
        """Set the pool's own minimum from what the other workers hold; True when it changed."""
        lim = pool.limits
        if lim is not self.made.get(pool):
            self.configured[pool] = lim.min_pool_size
        want = local_minimum(self.configured[pool], others)
        if want == lim.min_pool_size:
            self.made[pool] = lim
            return False
        pool.limits = self.made[pool] = replace(lim, min_pool_size=want)
        return True

    def configured_for(self, pool: Pool[Any, Any]) -> int:
        """The pool's min_pool_size for the pooler as a whole (its limits' own when not applied yet)."""
        lim = pool.limits
        return lim.min_pool_size if lim is not self.made.get(pool) else self.configured.get(pool, 0)

    def forget(self, live: set[Pool[Any, Any]]) -> None:
        """Pools the registry freed."""
        for pool in [p for p in self.made if p not in live]:
            del self.made[pool]
            self.configured.pop(pool, None)
