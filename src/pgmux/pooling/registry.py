"""All pools, keyed by (database, user), or (database, user, host) for the per-host pools of a
read/write-split database, and the limits they share.

max_db_connections and max_user_connections bound the sum over several pools, so no pool can
decide alone; the registry turns them into `headroom` for Pool.wanted. When idle servers of other pools
fill such a limit while clients of this pool wait, `evictable` names the idle servers to close to make
room (PgBouncer's evict_connection / evict_user_connection), instead of leaving the clients to wait
until query_wait_timeout.

Pools come into being only for authenticated clients (App.client_authenticated) and leave again once
empty and unused for autodb_idle_timeout / pool_idle_timeout (runtime/admission.py): so the registry,
and the janitor's pass over it, stay as large as what is in use, not as what was ever asked for.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from pgmux.pooling.histogram import Timings
from pgmux.pooling.pool import Pool, PoolLimits


class Registry:
    def __init__(self) -> None:
        self.pools: dict[tuple[str, ...], Pool[Any, Any]] = {}
        self.max_db: dict[str, int] = {}  # database -> max_db_connections (0 = no limit)
        self.max_user: dict[str, int] = {}  # user -> max_user_connections (0 = no limit)
        self.empty_since: dict[tuple[str, ...], float] = {}  # pools seen empty, since when
        # Server connections outside every pool (replication connections, runtime/replication.py) that
        # still count towards those two limits: (database, user) -> how many.
        self.unpooled: dict[tuple[str, str], int] = {}
        self.timings = False  # metrics_listen set: every pool keeps histograms (pooling/histogram.py)

    def get(self, database: str, user: str) -> Pool[Any, Any] | None:
        return self.pools.get((database, user))

    def get_or_create(self, database: str, user: str, make: Callable[[], tuple[PoolLimits, str]],
                      host: Any = None, label: str = "") -> Pool[Any, Any]:
        """The pool of (database, user), or with `host` (and its `label`, "addr:port") the pool of
        that one host of a split database."""
        key = (database, user) if host is None else (database, user, label)
        pool = self.pools.get(key)
        if pool is None:
            limits, mode = make()
            pool = self.pools[key] = Pool(database, user, limits, mode, host)
            if self.timings:
                pool.stats.timing = Timings()
        return pool

    def set_timings(self, on: bool) -> None:
        """Metrics turned on or off: every pool (and each new one) gets histograms, or drops them."""
        self.timings = on
        for pool in self.pools.values():
            if not on:
                pool.stats.timing = None
            elif pool.stats.timing is None:
                pool.stats.timing = Timings()

    def remove(self, pools: list[Pool[Any, Any]]) -> None:
        """Forget these empty pools of (database, user), and the shared limits of a database or user
        no pool is left for. One pass over the rest, however many go."""
        for pool in pools:
            key = (pool.database, pool.user)
            if self.pools.get(key) is pool:
                del self.pools[key]
                self.empty_since.pop(key, None)
        dbs = {p.database for p in self.pools.values()}
        users = {p.user for p in self.pools.values()}
        for name in [d for d in self.max_db if d not in dbs]:
            del self.max_db[name]
        for name in [u for u in self.max_user if u not in users]:
            del self.max_user[name]

    def __len__(self) -> int:
        return len(self.pools)

    def __iter__(self) -> Iterator[Pool[Any, Any]]:
        return iter(list(self.pools.values()))

    def for_database(self, database: str) -> list[Pool[Any, Any]]:
        return [p for p in self.pools.values() if p.database == database]

    def headroom(self, pool: Pool[Any, Any]) -> int:
        room = 1 << 30
        lim = self.max_db.get(pool.database, 0)
        if lim > 0:
            used = sum(len(p.servers) for p in self.pools.values() if p.database == pool.database)
            used += sum(n for (db, _), n in self.unpooled.items() if db == pool.database)
            room = min(room, lim - used)
        lim = self.max_user.get(pool.user, 0)
        if lim > 0:
            used = sum(len(p.servers) for p in self.pools.values() if p.user == pool.user)
            used += sum(n for (_, user), n in self.unpooled.items() if user == pool.user)
            room = min(room, lim - used)
        return room

    def limits_replaced(self, pool: Pool[Any, Any], old: Any) -> None:
        """pool.limits was replaced (pool_size = auto's size): worker processes keep their minimum on it."""

    def unpooled_headroom(self, pool: Pool[Any, Any]) -> int:
        """Room for a server connection outside the pool (a replication connection) under max_db_connections
        and max_user_connections: the same as headroom() here; worker processes count it apart
        (runtime/worker.py), since it does not count towards pool_size."""
        return self.headroom(pool)

    def evictable(self, pool: Pool[Any, Any], need: int) -> list[Any]:
        """Idle servers of other pools to close so that `pool` can open `need` more connections under
        max_db_connections and max_user_connections: the longest idle first, and none at all when
        closing every candidate would still not make room for one."""
        db_lim = self.max_db.get(pool.database, 0)
        user_lim = self.max_user.get(pool.user, 0)
        db_used = user_used = 0
        candidates: list[tuple[float, int, Pool[Any, Any], Any]] = []
        for p in self.pools.values():
            same_db, same_user = p.database == pool.database, p.user == pool.user
            if same_db:
                db_used += len(p.servers)
            if same_user:
                user_used += len(p.servers)
            if p is not pool and (db_lim > 0 and same_db or user_lim > 0 and same_user):
                candidates.extend((s.idle_since, len(candidates), p, s) for s in p.idle)
        candidates.sort(key=lambda c: (c[0], c[1]))
        out: list[Any] = []
        for _, _, p, s in candidates:
            db_short = db_lim > 0 and db_lim - db_used < need
            user_short = user_lim > 0 and user_lim - user_used < need
            if not (db_short or user_short):
                break
            if db_short and p.database != pool.database or user_short and p.user != pool.user:
                continue  # frees the wrong limit
            out.append(s)
            if p.database == pool.database:
                db_used -= 1
            if p.user == pool.user:
                user_used -= 1
        if (db_lim > 0 and db_lim - db_used < 1) or (user_lim > 0 and user_lim - user_used < 1):
            return []
        return out
