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
object made during the storm and kept after it pins the whole arena. The ones found (bench/memory.py,
arenas counted with sys._debugmallocstats, survivors located by their pool headers) were the advisor's
per-tick snapshots, histogram counts and a status byte, and objects replaced while alive; they are
made elsewhere now (docs/ARCHITECTURE.md, "Nothing made per tick or per login outlives it"). What
remains is uvloop's free list of callback handles (up to 250 kept from the storm) and the janitor's own
per-tick objects, a few arenas at most.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from collections.abc import Callable
from typing import Any

MIN_DROP = 1000  # clients gone since the peak before a trim is worth it
MAX_WAIT = 10  # ticks a trim waits for the count to stop falling (a storm still leaving)


def _load_trim() -> Callable[[int], Any] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim  # type: ignore[no-any-return]
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to do
        return None


class Trimmer:
    """A janitor hook: call it once per tick. `app` has the dicts `clients` and `by_cancel`, and
    `admission.held` (runtime/admission.py) when it has an admission."""

    def __init__(self, app: Any, trim: Callable[[int], Any] | None = None) -> None:
        self.app = app
        self.trim = trim if trim is not None else _load_trim()
        self.peak = 0
        self.trims = 0
        self.last = 0  # the count at the previous tick
        self.waited = 0

    def __call__(self) -> None:
        n, last = len(self.app.clients), self.last
        self.last = n
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
            for d in (self.app.clients, self.app.by_cancel, *held):
                live = dict(d)
                d.clear()
                d.update(live)
            # A session, its transport and its protocol refer to each other: only the cyclic GC frees
            # them, and its oldest generation may not run for a long while. Collect first, then trim.
            gc.collect()
            if self.trim is not None:
                self.trim(0)
            self.trims += 1
            self.peak = n
