"""Give memory back to the OS after a storm of clients has gone (issue 11).

Freed sessions go back to CPython's allocator and to glibc's malloc, which keep most of it: glibc
returns the top of its heap only, so one live object above a freed region holds it all. After 10,000
clients come and go, RSS stayed some 30 MB above where it started. `malloc_trim(0)` releases the free
pages inside the heap too. It costs a full garbage collection and a walk over the heap (tens of
milliseconds), so it runs from the janitor only when many clients have left since the last time: the
count fell by `MIN_DROP` and to half of its peak or less, and it has stopped falling (what is freed
after the trim would stay resident until the next storm). The dicts of all clients (App.clients,
App.by_cancel, Admission.held) are rebuilt then too (a dict never shrinks by itself).

What it cannot give back is a CPython small-object arena (1 MiB) in which one object still lives: an
object made during the storm and kept after it pins the whole arena. The ones found (`bench/memory.py
--arenas N` lists the survivors of the arenas a storm left) were the advisor's per-tick snapshots,
login-time counts, SHOW STATS averages, a status byte, and objects replaced while alive; they are
made elsewhere now (docs/ARCHITECTURE.md, "Nothing made per tick or per login outlives it"). uvloop
keeps up to 250 freed callback handles for reuse (a Cython free list, never given back): after a storm
they are the storm's, spread over its arenas. `HandleSwap` puts handles made at start-up in their place.

What is still pinned after all that (2-5 arenas after a storm of 10,000 clients) is mostly empty pools:
`pgmux._arenas` (C, optional) gives back all but the first page of every empty pool of the arenas made
since start-up, after the collection and the trim.
"""

from __future__ import annotations

import asyncio
import contextvars
import ctypes
import ctypes.util
import gc
from collections.abc import Callable
from typing import Any

MIN_DROP = 1000  # clients gone since the peak before a trim is worth it
MAX_WAIT = 10  # ticks a trim waits for the count to stop falling (a storm still leaving)
FOLLOW = 5  # ticks after a trim, a second collection and trim: what the storm freed late (closed
#             transports, the free lists of tuples, floats and contexts it refilled) goes back too
FREE_LIST = 250  # uvloop's DEFAULT_FREELIST_SIZE (uvloop/includes/consts.pxi): handles it keeps


def _noop() -> None:
    pass


class HandleSwap:
    """uvloop's free list of callback handles (loop.call_soon's Handle), refilled with handles from
    before the storm. At start-up `prime` takes FREE_LIST handles and keeps them (cancelled). After a
    storm `swap` takes the free list's handles (the storm's) off it; once the loop has dropped them, the
    kept ones are let go first, so that they fill the free list, and then the storm's, which the full
    free list gives back to the allocator; the kept ones are taken again for the next storm."""

    def __init__(self) -> None:
        self.kept: list[asyncio.Handle] = []
        self.swaps = 0
        # one context for all: call_soon would otherwise copy the current one per handle, and the kept
        # handles' contexts, made after a storm, would keep its arenas in their turn
        self.context = contextvars.Context()

    def take(self, loop: asyncio.AbstractEventLoop) -> list[asyncio.Handle]:
        handles = [loop.call_soon(_noop, context=self.context) for _ in range(FREE_LIST)]
        for h in handles:
            h.cancel()  # the loop drops it on its next pass
        return handles

    def prime(self, loop: asyncio.AbstractEventLoop) -> None:
        self.kept = self.take(loop)

    def swap(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self.kept:
            return
        storms = self.take(loop)
        loop.call_soon(self._let_go, loop, storms, context=self.context)  # after the loop has dropped them

    def _let_go(self, loop: asyncio.AbstractEventLoop, storms: list[asyncio.Handle]) -> None:
        self.kept.clear()  # into the free list, empty since `take`
        storms.clear()  # the free list is full: back to the allocator, and the storm's arenas with them
        self.kept = self.take(loop)
        self.swaps += 1


def _uvloop() -> asyncio.AbstractEventLoop | None:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # not on a loop (unit tests)
        return None
    return loop if type(loop).__module__.startswith("uvloop") else None


def _load_arenas() -> Callable[[], tuple[int, int]] | None:
    """pgmux._arenas's release, its arena allocator installed; None where the module was not built."""
    try:
        from pgmux import _arenas
    except ImportError:
        return None
    _arenas.install()
    return _arenas.release


def _load_trim() -> Callable[[int], Any] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim  # type: ignore[no-any-return]
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to do
        return None


class Trimmer:
    """A janitor hook: call it once per tick. `app` has the dicts `clients` and `by_cancel`, and
    `admission.held` (runtime/admission.py) when it has an admission."""

    def __init__(self, app: Any, trim: Callable[[int], Any] | None = None,
                 release: Callable[[], tuple[int, int]] | None = None) -> None:
        self.app = app
        self.trim = trim if trim is not None else _load_trim()
        self.release = release if release is not None else _load_arenas()
        self.released = 0  # bytes of empty pools given back, all passes
        self.peak = 0
        self.trims = 0
        self.last = 0  # the count at the previous tick
        self.waited = 0
        self.handles = HandleSwap()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.primed = False
        self.follow = 0  # ticks to the second pass of the last trim

    def __call__(self) -> None:
        if not self.primed:  # the first tick, at start-up: the handles kept for after a storm
            self.primed = True
            self.loop = _uvloop()
            if self.loop is not None:
                self.handles.prime(self.loop)
        n, last = len(self.app.clients), self.last
        self.last = n
        if self.follow:
            self.follow -= 1
            if not self.follow:
                self._collect()
        if n > self.peak:
            self.peak = n
        elif self.peak - n >= MIN_DROP and n * 2 <= self.peak:
            # Not while the storm is still leaving: what is freed after the trim would stay resident
            # (glibc gives back free pages only when asked) until the next storm's trim.
            if n < last and self.waited < MAX_WAIT:
                self.waited += 1
                return
            self.waited = 0
            # A dict never shrinks on deletion: the tables sized for the storm stay, unless rebuilt.
            admission = getattr(self.app, "admission", None)
            held = [admission.held] if admission is not None else []
            for d in (self.app.clients, getattr(self.app, "arriving", {}), self.app.by_cancel, *held):
                live = dict(d)
                d.clear()
                d.update(live)
            if self.loop is not None:
                self.handles.swap(self.loop)
            self._collect()
            self.trims += 1
            self.peak = n
            self.follow = FOLLOW

    def _collect(self) -> None:
        # A session, its transport and its protocol refer to each other: only the cyclic GC frees
        # them, and its oldest generation may not run for a long while. A full collection also empties
        # CPython's free lists. Collect first, then trim.
        gc.collect()
        if self.trim is not None:
            self.trim(0)
        if self.release is not None:
            self.released += max(0, self.release()[1])
