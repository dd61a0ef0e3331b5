"""A rolling restart of the worker processes (issue 14 item 5), the supervisor's side.

On SIGWINCH (the console's RESTART sends it), the supervisor reads the configuration file again and
replaces the workers one at a time, without a moment where fewer than N workers accept:

1. it starts the slot's replacement (a fresh interpreter: runtime/workerproc.py, so new code and new
   configuration) at the slot's other row in the shared counts (workershare.rows_for: two per slot);
2. once the replacement accepts (it marks its row ready), the old process gets SIGWINCH: it stops
   accepting and hands its clients over to the replacement between transactions (runtime/retire.py,
   runtime/handover.py); clients that cannot move (session mode, pinned, TLS, consoles) finish there,
   and it exits when none is left;
3. the next slot is replaced once the old process has exited, or after MOVE_WAIT seconds while some of
   its clients still cannot move (they go on there; the slot is replaced again only after they left).

A replacement that dies or does not accept within READY_WAIT seconds aborts the restart: the old
process of that slot serves on, the slots not reached keep theirs, and the error is logged.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
from typing import Final, Protocol

from pgmux.runtime import workershare as ws


class Owner(Protocol):
    """What the rolling restart needs of the supervisor (runtime/supervisor.py)."""

    n: int
    slots: list[Slot]
    counts: ws.Counts | None

    def spawn(self, row: int) -> int: ...
    def kill(self, pid: int, sig: signal.Signals) -> None: ...
    def reload_for_restart(self) -> bool: ...


log = logging.getLogger("pgmux")

READY_WAIT: Final = 30.0  # seconds a replacement may take to accept
MOVE_WAIT: Final = 10.0  # seconds before the next slot while an old process still has clients that cannot move


@dataclasses.dataclass
class Slot:
    index: int
    row: int = 0  # its process's row in the shared counts (index, or index + N: workershare.rows_for)
    pid: int = 0
    started: float = 0.0
    quick_deaths: int = 0
    restart_at: float | None = None
    old_pid: int = 0  # the process it replaced in a rolling restart, while that one still has clients
    old_row: int = 0


class Rolling:
    def __init__(self, supervisor: Owner) -> None:
        self.sup = supervisor
        self.queue: list[Slot] = []
        self.new: tuple[Slot, int, int, float] | None = None  # slot, pid, row, started at
        self.waiting: tuple[Slot, float] | None = None  # an old process handing its clients over, since
        self.strays: set[int] = set()  # replacements given up on, not reaped yet
        self.total = self.replaced = 0  # workers to replace in this restart, and replaced so far

    @property
    def running(self) -> bool:
        return bool(self.queue) or self.new is not None or self.waiting is not None

    def pids(self) -> list[int]:
        """Every worker process: the slots', their old processes', a replacement on its way."""
        out = [p for s in self.sup.slots for p in (s.pid, s.old_pid) if p]
        if self.new is not None:
            out.append(self.new[1])
        return out + sorted(self.strays)

    def begin(self) -> None:
        if self.running:
            log.warning("supervisor: a rolling restart is running already; this one is ignored")
            return
        draining = [s for s in self.sup.slots if s.old_pid]
        if draining:
            log.error("supervisor: rolling restart refused: worker %s still has clients that could not move in "
                      "the last restart (pid %s); they must leave first", draining[0].index, draining[0].old_pid)
            return
        if not self.sup.reload_for_restart():
            log.error("supervisor: rolling restart refused: the configuration cannot be read (the workers keep "
                      "running as they are)")
            return
        self.queue = [s for s in self.sup.slots if s.pid]
        self.total, self.replaced = len(self.queue), 0
        log.info("supervisor: rolling restart of %d workers begins", len(self.queue))

    def step(self, now: float) -> None:
        if self.new is not None:
            self._check_new(now)
        elif self.waiting is not None:
            slot, since = self.waiting
            if not slot.old_pid or now - since >= MOVE_WAIT:
                self.waiting = None
        if self.new is None and self.waiting is None and self.queue:
            self._next(now)

    def _next(self, now: float) -> None:
        slot = self.queue.pop(0)
        if not slot.pid or slot.old_pid:
            log.warning("supervisor: worker %d is not replaced in this rolling restart (%s)", slot.index,
                        "it is being restarted" if not slot.pid else f"its old process {slot.old_pid} still runs")
        else:
            row = ws.sibling(slot.row, self.sup.n)
            pid = self.sup.spawn(row)
            self.new = (slot, pid, row, now)
            log.info("supervisor: starting the replacement of worker %d (pid %d): pid %d", slot.index, slot.pid, pid)
        if not self.running:
            self._done()

    def _check_new(self, now: float) -> None:
        assert self.new is not None and self.sup.counts is not None
        slot, pid, row, since = self.new
        if self.sup.counts.ready[row] == pid:
            old = slot.pid
            slot.old_pid, slot.old_row = old, slot.row
            slot.pid, slot.row, slot.started, slot.quick_deaths = pid, row, now, 0
            self.new = None
            self.waiting = (slot, now)
            self.replaced += 1
            log.info("supervisor: worker %d: pid %d accepts; pid %d hands its clients over and stops", slot.index,
                     pid, old)
            self.sup.kill(old, signal.SIGWINCH)
            if not self.queue:
                self._done()
        elif now - since >= READY_WAIT:
            log.error("supervisor: the replacement of worker %d (pid %d) did not accept within %gs: rolling restart "
                      "aborted; pid %d serves on", slot.index, pid, READY_WAIT, slot.pid)
            self.strays.add(pid)
            self.sup.kill(pid, signal.SIGKILL)
            self._abort()

    def _done(self) -> None:
        pids = ", ".join(str(s.pid) for s in self.sup.slots)
        if self.replaced == self.total:
            log.info("supervisor: rolling restart: every worker has been replaced (pids %s)", pids)
        else:
            log.warning("supervisor: rolling restart ended: %d of %d workers replaced (pids now %s)", self.replaced,
                        self.total, pids)

    def _abort(self) -> None:
        self.new = None
        self.queue.clear()

    def reaped(self, pid: int, how: str) -> bool:
        """A worker process ended: True when it was one of the rolling restart's (handled here)."""
        counts = self.sup.counts
        assert counts is not None
        if pid in self.strays:
            self.strays.discard(pid)
            return True
        if self.new is not None and self.new[1] == pid:
            slot, _, row, _ = self.new
            counts.zero(row)
            log.error("supervisor: the replacement of worker %d (pid %d) ended before it accepted (%s): rolling "
                      "restart aborted; pid %d serves on", slot.index, pid, how, slot.pid)
            self._abort()
            return True
        for slot in self.sup.slots:
            if slot.old_pid == pid:
                counts.zero(slot.old_row)
                slot.old_pid = 0
                log.info("supervisor: worker %d's previous process (pid %d) has ended (%s)", slot.index, pid, how)
                return True
        return False
