"""pool_size = auto with worker processes: one controller for the pooler, not one per worker.

A pool's size is a limit of the whole pooler (runtime/worker.py shares it), so one AutoSizer decides it,
from the whole pooler's measurements. Controllers in each worker, each judging its own throughput, would
not do: a worker that adds a server takes PostgreSQL's time from the others' servers, so its own
throughput grows even where the pooler's does not (with two equal workers it sees half the pooler's
elasticity plus a half), and every worker would keep growing a saturated pool.

Each janitor tick, every worker writes its pool's measurements into its row of the shared counts
(`FIELDS`: transactions and hold and wait time, as running totals in 32 bits that wrap, and the gauges:
busy servers, waiting clients, clients, servers). The leader, the lowest live row (`WorkerShare.live`),
sums them into one advisor Snapshot, feeds its AutoSizer and writes the size it chose into its row;
the other workers apply the leader's size. The limits then hold it for the pooler as a whole, and each
worker's fair share of it follows its clients as for a fixed size. When the leader changes (it died, or a
rolling restart replaced it) the next one starts a controller from the size in force: what the old one had
measured is lost, and it learns again (a few seconds).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from pgmux.pooling.advisor import Snapshot
from pgmux.runtime import workershare as ws

if TYPE_CHECKING:
    from pgmux.pooling.pool import Pool

FIELDS: Final = ("xacts", "xact_us", "wait_us", "busy", "waiting", "clients", "servers", "size")
_TOTALS: Final = 3  # the first FIELDS are running totals (wrapping), the rest gauges
_WRAP: Final = 1 << 32


def auto_key(field: str, database: str, user: str, host: str = "") -> str:
    return f"a\0{field}\0{database}\0{user}\0{host}"


def wrap(n: int) -> int:
    """A running total as the shared counts' signed 32-bit cells hold it."""
    n %= _WRAP
    return n - _WRAP if n >= 1 << 31 else n


def step(new: int, old: int) -> int:
    """What a wrapped running total grew by since `old` (0 when it went back: a worker restarted)."""
    d = (new - old) % _WRAP
    return 0 if d >= 1 << 31 else d


class Totals:
    """The leader's sums of every worker's running totals of one pool: each row's last reading, and the
    pooler's totals since this leader began (a row whose process changed starts from what it shows)."""

    def __init__(self) -> None:
        self.last: dict[int, tuple[int, tuple[int, ...]]] = {}  # row -> (its pid, its totals)
        self.sums = [0] * _TOTALS

    def add(self, rows: dict[int, tuple[int, tuple[int, ...]]]) -> list[int]:
        for row, (pid, vals) in rows.items():
            seen = self.last.get(row)
            if seen is not None and seen[0] == pid:
                for i, (a, b) in enumerate(zip(vals, seen[1], strict=True)):
                    self.sums[i] += step(a, b)
            self.last[row] = (pid, vals)
        for row in [r for r in self.last if r not in rows]:
            del self.last[row]
        return self.sums


class AutoShare:
    """The pools of one worker under pool_size = auto (PoolWatch calls it once per tick and auto pool)."""

    def __init__(self, share: Any) -> None:  # runtime/worker.WorkerShare (which imports the hub: no import here)
        self.share = share
        self.slots: dict[Pool[Any, Any], tuple[int, ...]] = {}
        self.totals: dict[Pool[Any, Any], Totals] = {}

    def _slots(self, pool: Pool[Any, Any]) -> tuple[int, ...]:
        found = self.slots.get(pool)
        if found is None:
            label = "" if pool.host is None else f"{pool.host.host}:{pool.host.port}"
            c = self.share.counts
            found = self.slots[pool] = tuple(c.slot(auto_key(f, pool.database, pool.user, label)) for f in FIELDS)
        return found

    def forget(self, live: set[Pool[Any, Any]]) -> None:
        for pool in [p for p in self.slots if p not in live]:
            del self.slots[pool]
            self.totals.pop(pool, None)

    def publish(self, pool: Pool[Any, Any], snap: Snapshot) -> None:
        """This worker's measurements of the pool, in its row."""
        c, me = self.share.counts, self.share.index
        vals = (wrap(snap.xacts), wrap(round(snap.hold * 1e6)), wrap(round(snap.waits * 1e6)),
                snap.busy, snap.waiting, snap.clients, snap.servers)
        for slot, v in zip(self._slots(pool), vals, strict=False):
            c.set(me, slot, v)

    def leader(self) -> int:
        return min(self.share.live())

    def pooled(self, pool: Pool[Any, Any], snap: Snapshot) -> Snapshot:
        """The leader's view: the pool's Snapshot for the pooler as a whole (its own `snap` is in its row)."""
        c, slots = self.share.counts, self._slots(pool)
        rows: dict[int, tuple[int, tuple[int, ...]]] = {}
        gauges = [0] * (len(FIELDS) - 1 - _TOTALS)
        for row in self.share.live():
            rows[row] = (int(c.ready[row]), tuple(c.get(row, s) for s in slots[:_TOTALS]))
            for i, s in enumerate(slots[_TOTALS:-1]):
                gauges[i] += c.get(row, s)
        totals = self.totals.setdefault(pool, Totals())
        xacts, xact_us, wait_us = totals.add(rows)
        busy, waiting, clients, servers = gauges
        return Snapshot(snap.now, xacts, xact_us / 1e6, wait_us / 1e6, busy, waiting, clients, snap.size, servers)

    def decided(self, pool: Pool[Any, Any], size: int) -> None:
        """The leader's size for the pool, for the other workers."""
        try:
            self.share.counts.set(self.share.index, self._slots(pool)[-1], size)
        except ws.TableFull:
            pass  # (no room for the pool's keys: each worker sizes it on its own measurements, PoolWatch._shared)

    def size(self, pool: Pool[Any, Any]) -> int | None:
        """The size the leader decided (None until it has)."""
        try:
            n = self.share.counts.get(self.leader(), self._slots(pool)[-1])
        except ws.TableFull:
            return None
        return n if n > 0 else None
