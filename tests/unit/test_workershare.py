"""The pure parts of worker processes (issue 14): cancel-key tags, the shared counts and their rules,
the settings refused with workers > 1, the restart backoff. No sockets, no processes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgmux.config import load_config
from pgmux.config import values as v
from pgmux.config.model import Config
from pgmux.runtime import workershare as ws
from pgmux.runtime.supervisor import MAX_BACKOFF, backoff


@given(st.integers(0, 2**31 - 1), st.integers(2, 256), st.data())
def test_tag_names_the_worker_and_stays_a_positive_31_bit_pid(raw: int, workers: int, data: st.DataObject) -> None:
    index = data.draw(st.integers(0, workers - 1))
    bits = ws.worker_bits(workers)
    pid = ws.tag_pid(raw, index, bits)
    assert 0 < pid < 2**31
    assert ws.owner(pid, bits) == index
    assert pid >> bits == raw >> bits or raw >> bits == 0  # the random part is kept (or made non-zero)


def test_one_process_keeps_its_keys() -> None:
    assert ws.worker_bits(1) == 0
    assert ws.tag_pid(12345, 0, 0) == 12345
    assert [ws.worker_bits(n) for n in (2, 3, 4, 5, 8, 9)] == [1, 2, 2, 3, 3, 4]
    assert ws.tag_pid(0, 0, 1) == 2  # never 0


def counts(workers: int = 3) -> ws.Counts:
    return ws.Counts(bytearray(ws.size_for(workers)), workers, ws.NoLock())


def test_counts_sum_rows_and_zero_a_dead_worker() -> None:
    c = counts()
    k = c.slot(ws.pool_key("app", "alice"))
    assert c.slot(ws.pool_key("app", "alice")) == k
    other = c.slot(ws.db_key("app"))
    assert other != k
    c.set(0, k, 3)
    c.set(1, k, 2)
    c.set(2, other, 7)
    assert c.total(k) == 5 and c.others(0, k) == 2 and c.total(other) == 7
    c.want(2, k, 4)
    assert c.others_demand(0, k) == 4 and c.others_demand(2, k) == 0
    assert c.active_workers(k) == 3
    c.zero(1)
    assert c.total(k) == 3 and c.get(1, k) == 0
    assert c.active_workers(k) == 2


def test_a_second_process_finds_the_same_slot() -> None:
    buf = bytearray(ws.size_for(2))
    a, b = ws.Counts(buf, 2, ws.NoLock()), ws.Counts(buf, 2, ws.NoLock())
    ka = a.slot("p\0x\0y\0")
    a.set(0, ka, 4)
    kb = b.slot("p\0x\0y\0")
    assert kb == ka and b.total(kb) == 4


def test_table_full_is_an_error_not_a_lost_count() -> None:
    c = counts(1)
    for i in range(ws.KEYS):
        c.slot(f"k{i}")
    with pytest.raises(ws.TableFull):
        c.slot("one more")


def test_small_buffer_refused() -> None:
    with pytest.raises(ValueError):
        ws.Counts(bytearray(10), 2, ws.NoLock())


def test_room_and_fair_share() -> None:
    assert ws.room(0, 10**6) >= 1 << 20  # 0 = no limit
    assert ws.room(5, 3) == 2 and ws.room(5, 7) == 0
    assert ws.fair_share(20, 2) == 10 and ws.fair_share(1, 2) == 1 and ws.fair_share(3, 0) == 3
    # with clients counted: in proportion to them, adding up to the limit (19, 14, 15 and 16 of 64
    # clients share 20 servers: 5.9, 4.4, 4.7, 5.0)
    spread = [19, 14, 15, 16]
    assert [ws.fair_share(20, 4, spread, w) for w in range(4)] == [6, 4, 5, 5]
    assert ws.fair_share(20, 2, [0, 10], 0) == 1  # at least 1
    assert ws.fair_share(20, 2, [0, 0], 0) == 10  # no clients counted: equal shares


@given(st.integers(1, 200), st.lists(st.integers(0, 10_000), min_size=1, max_size=16))
def test_shares_by_clients_add_up_to_the_limit(limit: int, spread: list[int]) -> None:
    shares = [ws.fair_share(limit, len(spread), spread, w) for w in range(len(spread))]
    if sum(spread) == 0:
        return
    exact = [limit * k / sum(spread) for k in spread]
    assert all(s >= 1 and (abs(s - e) < 1 or s == 1) for s, e in zip(shares, exact, strict=True)), (shares, exact)
    assert sum(max(0, s - 1) for s in shares) <= limit  # only the "at least 1" goes beyond it
    if all(s >= 1 for s in exact):
        assert sum(shares) == limit

def test_give_up_only_beyond_the_fair_share_and_only_when_others_wait() -> None:
    # worker A holds all 20 of a pool, B waits for 5: A gives up 5 (still above its share of 10)
    assert ws.to_give_up(20, 20, 5, 20, ws.fair_share(20, 2)) == 5
    # B waits for 15: A gives down to its fair share, 10
    assert ws.to_give_up(20, 20, 15, 20, ws.fair_share(20, 2)) == 10
    # room left for B: nothing to give
    assert ws.to_give_up(20, 10, 5, 10, ws.fair_share(20, 2)) == 0
    # nobody waits
    assert ws.to_give_up(20, 20, 0, 20, ws.fair_share(20, 2)) == 0
    # A holds no more than its share
    assert ws.to_give_up(20, 10, 10, 20, ws.fair_share(20, 2)) == 0
    # part of the room is free: give only what is missing
    assert ws.to_give_up(4, 3, 2, 3, ws.fair_share(4, 2)) == 1


def test_accounting_never_exceeds_the_limit_across_workers() -> None:
    """Workers taking in turn what room() grants, each publishing, never sum above the limit."""
    c = counts(4)
    k = c.slot(ws.pool_key("d", "u"))
    limit = 7
    for turn in range(40):
        w = turn % 4
        with c.lock:
            grant = min(3, ws.room(limit, c.total(k)))
            c.set(w, k, c.get(w, k) + grant)
        assert c.total(k) <= limit
    assert c.total(k) == limit


def test_workers_setting() -> None:
    assert v.workers("4") == 4 and v.workers(2) == 2 and v.workers("auto") >= 1
    for bad in ("0", "-1", "x", "257"):
        with pytest.raises(ValueError):
            v.workers(bad)


def test_per_worker_names_what_runs_in_each_worker(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    assert ws.per_worker(cfg) == [] and ws.per_worker(_with(cfg, workers=2)) == []
    two = _with(cfg, workers=2, auth_user="pgmux_auth")
    assert any("auth_query" in n for n in ws.per_worker(two))
    assert ws.per_worker(_with(two, workers=1)) == []  # one process: nothing to say


def _config(tmp_path: Path) -> Config:
    path = tmp_path / "pgmux.toml"
    path.write_text('[pgmux]\nlisten_port = 6432\n[databases.app]\nhost = "127.0.0.1"\n')
    return load_config(str(path))


def _with(cfg: Config, **settings: object) -> Config:
    return dataclasses.replace(cfg, settings=dataclasses.replace(cfg.settings, **settings))


def test_backoff() -> None:
    assert backoff(1) == 0.0  # the first death: restarted at once
    assert backoff(2) == 0.5 and backoff(3) == 1.0
    assert backoff(50) == MAX_BACKOFF


def test_asking_twice_for_room_grants_it_twice() -> None:
    """App.launch asks the registry for room, and asks again when it looked for idle servers to evict
    (more clients wait than the room allows). The first answer claims the room in this worker's row of
    the shared counts; the second must not read that claim as another worker's server. It did, through
    the lock-free "full" test: a worker whose clients outnumbered the room (every one after the others
    took its servers) opened nothing, tick after tick, while its clients waited."""
    import asyncio
    from types import SimpleNamespace

    from pgmux.pooling.pool import PoolLimits
    from pgmux.runtime.worker import SharedRegistry, WorkerShare

    async def run() -> tuple[int, int, int]:
        counts = ws.Counts(bytearray(ws.size_for(ws.rows_for(2))), ws.rows_for(2), ws.NoLock())
        share = WorkerShare(0, 2, counts, [], "/nonexistent", 1)
        registry = SharedRegistry(share)
        share.app = SimpleNamespace(now=lambda: 100.0, registry=registry)  # type: ignore[assignment]
        pool = registry.get_or_create("db", "u", lambda: (PoolLimits(pool_size=4), "transaction"))
        counts.set(1, counts.slot(ws.pool_key("db", "u")), 2)  # the other worker holds 2 of the 4
        pool.waiters.extend(object() for _ in range(5))  # more clients wait than there is room for
        first, second = registry.headroom(pool), registry.headroom(pool)
        await asyncio.sleep(0)  # the exact counts published (call_soon): nothing opened, so 0 held
        return first, second, counts.get(0, counts.slot(ws.pool_key("db", "u")))

    assert asyncio.run(run()) == (2, 2, 0)


def test_crowded_is_clearly_more_than_a_workers_part() -> None:
    assert not ws.crowded(22, 80, 4) and ws.crowded(23, 80, 4)  # an eighth above the mean of 20
    assert not ws.crowded(36, 64, 2) and ws.crowded(37, 64, 2)
    assert not ws.crowded(3, 4, 4) and ws.crowded(4, 4, 4)  # and at least 2 above it
    assert not ws.crowded(0, 0, 4) and not ws.crowded(1, 1, 1) and not ws.crowded(50, 50, 1)  # alone: never


def test_servers_beyond_the_share_go_only_after_two_ticks_in_a_row() -> None:
    """The rebalance gives up what a worker holds beyond its fair share while another worker's clients
    wait, but only when that holds at SETTLE_TICKS ticks in a row: while many clients connect at once the
    shares swing for a moment, and acting on the first tick moved servers the next ticks moved back."""
    import asyncio
    from types import SimpleNamespace

    from pgmux.pooling.pool import PoolLimits
    from pgmux.runtime.worker import SETTLE_TICKS, SharedRegistry, WorkerShare

    class Busy:
        def __init__(self) -> None:
            self.created_at = self.idle_since = 0.0
            self.close_needed = False

    async def run() -> list[int]:
        counts = ws.Counts(bytearray(ws.size_for(ws.rows_for(2))), ws.rows_for(2), ws.NoLock())
        share = WorkerShare(0, 2, counts, [], "/nonexistent", 1)
        registry = SharedRegistry(share)
        share.app = SimpleNamespace(now=lambda: 100.0, registry=registry)  # type: ignore[assignment]
        pool = registry.get_or_create("db", "u", lambda: (PoolLimits(pool_size=4), "transaction"))
        for _ in range(4):
            pool.add_server(Busy())  # all four of the limit, busy: the other worker's clients wait
        pk, _, _, ck = share.slots(pool)
        counts.set(0, pk, 4)
        counts.set(0, ck, 2)
        counts.set(1, ck, 2)  # two clients each: a share of 2 each
        marked = []
        for waiting in (2, 0, 2, 2, 2):  # the other worker's waiting clients at each tick
            counts.want(1, pk, waiting)
            share._rebalance(pool, 100.0)
            marked.append(sum(1 for s in pool.servers if s.close_needed))
            await asyncio.sleep(0)
        return marked

    assert SETTLE_TICKS == 2
    # beyond at one tick, then no one waits: nothing; beyond again at two ticks in a row: the 2 beyond the
    # share are marked at the second (closed as their transactions end), and nothing more after
    assert asyncio.run(run()) == [0, 0, 0, 2, 2]
