"""pool_size = auto with worker processes: one controller fed the pooler's measurements (runtime/autoshare.py)."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from pgmux.pooling.advisor import Snapshot
from pgmux.runtime import workershare as ws
from pgmux.runtime.autoshare import AutoShare, step, wrap


@dataclass(frozen=True)
class FakePool:
    database: str = "app"
    user: str = "alice"
    host: Any = None


def workers(n: int) -> tuple[ws.Counts, list[AutoShare]]:
    rows = ws.rows_for(n)
    buf = bytearray(ws.size_for(rows))
    shares = []
    for i in range(n):
        c = ws.Counts(buf, rows, ws.NoLock())  # one view per process, as each worker maps the block
        c.mark_ready(i, 1000 + i)
        share = SimpleNamespace(counts=c, index=i)
        share.live = lambda c=c: c.live()
        shares.append(AutoShare(share))  # type: ignore[arg-type]
    return shares[0].share.counts, shares


def snap(now: float, xacts: int, hold: float, busy: int, waiting: int, clients: int, size: int = 8,
         servers: int = 8) -> Snapshot:
    return Snapshot(now, xacts, hold, hold / 10, busy, waiting, clients, size, servers)


@given(st.integers(0, 1 << 40), st.integers(0, (1 << 31) - 1))
def test_a_wrapped_running_total_gives_its_growth(start: int, grew: int) -> None:
    assert step(wrap(start + grew), wrap(start)) == grew


def test_a_total_that_went_back_adds_nothing() -> None:
    assert step(wrap(0), wrap(5000)) == 0


def test_the_leader_sees_the_pooler_and_the_others_apply_its_size() -> None:
    _, (a, b) = workers(2)
    pool = FakePool()
    assert a.leader() == 0 and b.leader() == 0
    # first tick: both publish; the leader's sums start here
    b.publish(pool, snap(1.0, 100, 1.0, 3, 2, 10))
    a.publish(pool, snap(1.0, 50, 0.5, 1, 0, 6))
    first = a.pooled(pool, snap(1.0, 50, 0.5, 1, 0, 6))
    assert (first.xacts, first.busy, first.waiting, first.clients, first.servers) == (0, 4, 2, 16, 16)
    # a second later: 300 + 200 transactions more, 1.5 + 1.0 s more hold
    b.publish(pool, snap(2.0, 400, 2.5, 5, 1, 10))
    a.publish(pool, snap(2.0, 250, 1.5, 2, 0, 6))
    pooled = a.pooled(pool, snap(2.0, 250, 1.5, 2, 0, 6))
    assert pooled.xacts == 500 and abs(pooled.hold - 2.5) < 1e-5 and abs(pooled.waits - 0.25) < 1e-5
    assert (pooled.busy, pooled.waiting, pooled.now, pooled.size) == (7, 1, 2.0, 8)
    assert b.size(pool) is None  # nothing decided yet
    a.decided(pool, 13)
    assert b.size(pool) == 13


def test_a_restarted_worker_starts_again_from_what_it_shows() -> None:
    counts, (a, b) = workers(2)
    pool = FakePool()
    b.publish(pool, snap(1.0, 10_000, 100.0, 0, 0, 1))
    a.pooled(pool, snap(1.0, 0, 0.0, 0, 0, 0))
    counts.zero(1)  # worker 1 died; its successor counts from 0
    counts.mark_ready(1, 2001)
    b.publish(pool, snap(2.0, 40, 0.2, 0, 0, 1))
    assert a.pooled(pool, snap(2.0, 0, 0.0, 0, 0, 0)).xacts == 0  # no false jump (nor a negative one)
    b.publish(pool, snap(3.0, 90, 0.4, 0, 0, 1))
    assert a.pooled(pool, snap(3.0, 0, 0.0, 0, 0, 0)).xacts == 50


def test_the_next_live_row_leads_when_the_leader_is_gone() -> None:
    counts, (a, b) = workers(2)
    counts.zero(0)
    assert b.leader() == 1


def test_a_full_key_table_leaves_each_worker_its_own_measurements() -> None:
    counts, (a, _) = workers(2)
    for i in range(ws.KEYS):  # every slot taken by other keys
        if counts.keys[i] == 0:
            counts.keys[i] = 2 * i + 1
    pool = FakePool(database="late")
    a.decided(pool, 12)  # no exception: the leader keeps its size to itself
    assert a.slots == {}
