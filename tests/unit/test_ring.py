"""pooling/ring.py: the advisor's window as rows of C doubles (issue 11: nothing allocated per janitor tick
outlives the tick, so no long-lived object lands in the arenas of a storm of clients)."""

from __future__ import annotations

import gc
import random
import tracemalloc
from collections import deque
from typing import Any

import pytest

from pgmux.pooling.advisor import WINDOW, Snapshot, Tracker
from pgmux.pooling.ring import Ring


def row(i: int) -> tuple[float, ...]:
    return (i * 0.2, i, i * 0.5)


def test_behaves_as_the_deque_it_replaces_through_growth_and_wrap_around() -> None:
    rng = random.Random(7)
    ring: Ring[tuple[float, int, float]] = Ring(3, lambda a, b, c: (a, b, c), ints=(1,))
    ref: deque[tuple[float, int, float]] = deque()
    buf = ring.buf
    for i in range(5000):
        if ref and rng.random() < 0.45:
            assert ring.popleft() == ref.popleft()
        else:
            ring.append(row(i))
            ref.append((i * 0.2, i, i * 0.5))
        assert len(ring) == len(ref) and bool(ring) == bool(ref)
        if ref:
            assert ring[0] == ref[0] and ring[-1] == ref[-1] and ring.value(0, 1) == ref[0][1]
            assert type(ring[-1][1]) is int and type(ring[-1][0]) is float
    assert list(ring) == list(ref)
    assert ring.buf is buf and len(buf) > 3 * 64  # grown in place: no new array object made mid-life
    while ref:
        ring.drop()
        ref.popleft()
    assert not ring and list(ring) == []
    with pytest.raises(IndexError):
        ring.popleft()
    with pytest.raises(IndexError):
        ring[0]


def test_a_full_window_allocates_nothing_per_tick() -> None:
    t = Tracker("db", "u")
    now = 0.0
    for i in range(int(WINDOW / 0.2) + 50):  # the buffer has reached its size for a 0.2 s tick
        now = i * 0.2
        t.add(Snapshot(now, 0, 0.0, 0.0, 0, 0, 5000 + i, 2, 1))
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(1000):
            now += 0.2
            t.add(Snapshot(now, 0, 0.0, 0.0, 0, 0, 7000 + i, 2, 1))
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 2000, grown  # the last ticks' objects (the tracker's mark); a deque of the window: some 60 kB
    assert len(t.snaps) == int(WINDOW / 0.2) + 1 and t.snaps[-1].clients == 7999
    assert sum(1 for o in gc.get_objects() if type(o) is Snapshot) <= 2


def test_keep_overwrites_the_same_arrays_in_place() -> None:
    from pgmux.pooling.ring import keep

    kept: dict[str, Any] = {}
    keep(kept, {"a": [1, 2, 3], "b": [4, 5, 6]})
    a = kept["a"]
    keep(kept, {"a": [10_000, 20_000, 30_000], "c": [7, 8, 9]})
    assert kept["a"] is a and list(a) == [10_000, 20_000, 30_000]
    assert sorted(kept) == ["a", "c"] and list(kept["c"]) == [7, 8, 9]
