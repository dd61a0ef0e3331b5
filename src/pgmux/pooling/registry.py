"""All pools, keyed by (database, user), or (database, user, host) for the per-host pools of a
read/write-split database, and the limits they share.

max_db_connections and max_user_connections bound the sum over several pools, so no pool can
decide alone; the registry turns them into `headroom` for Pool.wanted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from pgmux.pooling.pool import Pool, PoolLimits


class Registry:
    def __init__(self) -> None:
        self.pools: dict[tuple[str, ...], Pool[Any, Any]] = {}
        self.max_db: dict[str, int] = {}  # database -> max_db_connections (0 = no limit)
        self.max_user: dict[str, int] = {}  # user -> max_user_connections (0 = no limit)
        # Server connections outside every pool (replication connections, runtime/replication.py) that
        # still count towards those two limits: (database, user) -> how many.
        self.unpooled: dict[tuple[str, str], int] = {}

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
        return pool

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
