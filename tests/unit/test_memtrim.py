"""runtime/memtrim.py: memory goes back to the OS once many clients have left, and only then."""

from __future__ import annotations

import sys
from types import SimpleNamespace

from pgmux.runtime.memtrim import FOLLOW, MAX_WAIT, MIN_DROP, Trimmer


def test_trims_once_a_storm_has_left_and_rebuilds_the_client_dicts() -> None:
    app = SimpleNamespace(clients={}, by_cancel={}, admission=SimpleNamespace(held={}))
    calls: list[int] = []
    t = Trimmer(app, trim=calls.append, release=lambda: (0, 0))
    clients, by_cancel, held = app.clients, app.by_cancel, app.admission.held
    for i in range(3 * MIN_DROP):
        clients[i] = by_cancel[i] = held[i] = object()
        t()
    big = sys.getsizeof(held)
    for i in range(MIN_DROP):
        del clients[i]
        del by_cancel[i]
        del held[i]
    t()  # a third left: less than half of the peak gone, no trim
    assert calls == [] and t.peak == 3 * MIN_DROP
    for i in range(MIN_DROP, 3 * MIN_DROP - 10):
        del clients[i]
        del by_cancel[i]
        del held[i]
    assert sys.getsizeof(held) == big  # a dict keeps its table when emptied
    t()  # still falling since the last tick: the storm is leaving, wait for it
    assert calls == [] and sys.getsizeof(held) == big
    released: list[int] = []
    t.release = lambda: (released.append(1), (3, 3 * 12288))[1]
    t()
    assert sys.getsizeof(held) < big / 10 and sorted(held) == sorted(clients)
    assert released == [1] and t.released == 3 * 12288  # the empty pools given back after the trim
    assert calls == [0] and t.trims == 1 and t.peak == 10
    # The same dicts (others hold them), with what was left in them.
    assert app.clients is clients and app.by_cancel is by_cancel
    assert sorted(clients) == list(range(3 * MIN_DROP - 10, 3 * MIN_DROP))
    t()
    assert calls == [0]  # nothing new left: no second trim
    for _ in range(FOLLOW - 1):
        t()
    assert calls == [0, 0] and t.trims == 1  # but a second pass for what the storm freed late
    for _ in range(3 * FOLLOW):
        t()
    assert calls == [0, 0]


def test_a_few_clients_leaving_cost_nothing() -> None:
    app = SimpleNamespace(clients={i: i for i in range(MIN_DROP - 1)}, by_cancel={})
    calls: list[int] = []
    t = Trimmer(app, trim=calls.append, release=lambda: (0, 0))
    t()
    app.clients.clear()
    t()
    assert calls == []


def test_a_trickle_that_never_stops_is_trimmed_after_a_bounded_wait() -> None:
    app = SimpleNamespace(clients={i: i for i in range(4 * MIN_DROP)}, by_cancel={})
    calls: list[int] = []
    t = Trimmer(app, trim=calls.append, release=lambda: (0, 0))
    t()
    for i in range(3 * MIN_DROP):
        del app.clients[i]
    for k in range(MAX_WAIT):
        del app.clients[3 * MIN_DROP + k]  # one more leaves every tick
        t()
        assert calls == [], k
    del app.clients[3 * MIN_DROP + MAX_WAIT]
    t()
    assert calls == [0]



def test_login_times_are_counted_in_c_integers() -> None:
    """A login count kept as a Python int would be a new object per login above 256; the last ones,
    made during a storm of logins, would keep that storm's arenas resident (issue 11)."""
    from array import array

    from pgmux.metrics.events import Events

    ev = Events()
    for _ in range(1000):
        ev.client_login(0.003)
    assert isinstance(ev._login, array) and ev._login.typecode == "q"
    h = ev.login
    assert h.count == 1000 and h.cumulative()[-1] == 1000 and abs(h.total - 3.0) < 1e-6

def test_uvloops_free_list_of_handles_is_given_back_after_a_storm() -> None:
    """uvloop keeps FREE_LIST freed Handles for reuse; after a storm they are the storm's and keep its
    arenas. The swap frees them (the allocator's block count drops) and keeps the start-up ones."""
    import asyncio
    import gc

    import uvloop

    from pgmux.runtime.memtrim import FREE_LIST, HandleSwap

    async def run() -> tuple[int, int, set[int], set[int]]:
        loop = asyncio.get_running_loop()
        hs = HandleSwap()
        hs.prime(loop)
        kept = {id(h) for h in hs.kept}
        for _ in range(3):
            await asyncio.sleep(0)
        storm = [loop.call_soon(lambda: None) for _ in range(4 * FREE_LIST)]
        for _ in range(3):
            await asyncio.sleep(0)
        storm.clear()  # the free list now holds FREE_LIST of the storm's handles
        gc.collect()
        before = sys.getallocatedblocks()
        hs.swap(loop)
        for _ in range(3):
            await asyncio.sleep(0)
        gc.collect()
        assert hs.swaps == 1
        return before, sys.getallocatedblocks(), kept, {id(h) for h in hs.kept}

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        before, after, kept, kept_again = runner.run(run())
    assert len(kept_again & kept) >= FREE_LIST - 5  # the start-up handles went into the free list and back
    #                                                 (a handle or two of the loop's own passes in between)
    assert before - after >= FREE_LIST * 0.9, (before, after)  # and the storm's went back to the allocator
