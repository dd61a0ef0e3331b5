"""The rolling restart's bookkeeping (runtime/rolling.py) against a supervisor that starts nothing, and
the rows of the shared counts it relies on (runtime/workershare.py)."""

from __future__ import annotations

import signal
from typing import Any

from pgmux.runtime import workershare as ws
from pgmux.runtime.rolling import MOVE_WAIT, READY_WAIT, Rolling
from pgmux.runtime.supervisor import Slot


class FakeSupervisor:
    def __init__(self, n: int, config_ok: bool = True) -> None:
        self.n = n
        self.counts = ws.Counts(bytearray(ws.size_for(ws.rows_for(n))), ws.rows_for(n), ws.NoLock())
        self.slots = [Slot(i, i, pid=100 + i) for i in range(n)]
        for s in self.slots:
            self.counts.mark_ready(s.row, s.pid)
        self.next_pid = 200
        self.spawned: list[tuple[int, int]] = []  # (row, pid)
        self.killed: list[tuple[int, signal.Signals]] = []
        self.config_ok = config_ok

    def spawn(self, row: int) -> int:
        self.next_pid += 1
        self.spawned.append((row, self.next_pid))
        return self.next_pid

    def kill(self, pid: int, sig: signal.Signals) -> None:
        self.killed.append((pid, sig))

    def reload_for_restart(self) -> bool:
        return self.config_ok


def test_rows_and_siblings() -> None:
    assert ws.rows_for(3) == 6
    assert [ws.sibling(r, 3) for r in range(6)] == [3, 4, 5, 0, 1, 2]
    counts = ws.Counts(bytearray(ws.size_for(4)), 4, ws.NoLock())
    counts.mark_ready(2, 1234)
    counts.set(2, counts.slot("k"), 5)
    assert counts.live() == [2] and counts.total(counts.slot("k")) == 5
    counts.zero(2)  # a process ended: its counts and its mark go
    assert counts.live() == [] and counts.total(counts.slot("k")) == 0


def test_each_slot_is_replaced_in_turn_and_the_old_process_told_once_the_new_accepts() -> None:
    sup: Any = FakeSupervisor(2)
    r = Rolling(sup)
    r.begin()
    r.step(0.0)
    assert sup.spawned == [(2, 201)]  # slot 0's replacement at its sibling row
    r.step(1.0)
    assert sup.killed == []  # not ready yet: the old one serves on
    sup.counts.mark_ready(2, 201)
    r.step(1.2)
    assert sup.killed == [(100, signal.SIGWINCH)]
    assert (sup.slots[0].pid, sup.slots[0].row, sup.slots[0].old_pid, sup.slots[0].old_row) == (201, 2, 100, 0)
    assert set(r.pids()) == {201, 100, 101}
    r.step(2.0)
    assert len(sup.spawned) == 1  # slot 1 waits while slot 0's old process hands its clients over
    assert r.reaped(100, "exit code 0")
    assert sup.slots[0].old_pid == 0 and sup.counts.live() == [1, 2]
    r.step(2.2)
    assert sup.spawned[-1] == (3, 202)
    sup.counts.mark_ready(3, 202)
    r.step(2.4)
    assert sup.killed[-1] == (101, signal.SIGWINCH) and not r.queue and r.new is None
    r.step(2.4 + MOVE_WAIT)  # the old process still has clients that cannot move: the restart is over anyway
    assert not r.running
    assert [s.pid for s in sup.slots] == [201, 202]


def test_a_replacement_that_never_accepts_aborts_and_the_old_process_serves_on() -> None:
    sup: Any = FakeSupervisor(2)
    r = Rolling(sup)
    r.begin()
    r.step(0.0)
    r.step(READY_WAIT + 1)
    assert (201, signal.SIGKILL) in sup.killed and not r.running
    assert sup.slots[0].pid == 100 and sup.slots[0].old_pid == 0
    assert r.reaped(201, "killed by signal SIGKILL")  # the stray is the rolling restart's, not a slot's


def test_a_replacement_that_dies_aborts() -> None:
    sup: Any = FakeSupervisor(2)
    r = Rolling(sup)
    r.begin()
    r.step(0.0)
    assert r.reaped(201, "exit code 78")
    assert not r.running and sup.slots[0].pid == 100 and sup.killed == []


def test_refused_while_a_slot_still_drains_or_the_config_is_bad() -> None:
    sup: Any = FakeSupervisor(2)
    sup.slots[1].old_pid = 99
    r = Rolling(sup)
    r.begin()
    assert not r.running
    sup.slots[1].old_pid = 0
    sup.config_ok = False
    r.begin()
    assert not r.running


def test_a_slot_being_restarted_is_skipped_and_the_end_says_so(caplog: Any) -> None:
    sup: Any = FakeSupervisor(2)
    r = Rolling(sup)
    r.begin()
    sup.slots[1].pid = 0  # died meanwhile: the supervisor restarts it on its own
    r.step(0.0)
    sup.counts.mark_ready(2, 201)
    r.step(0.2)
    r.reaped(100, "exit code 0")
    with caplog.at_level("INFO", logger="pgmux"):
        r.step(0.4)
    assert not r.running
    assert "1 of 2 workers replaced" in caplog.text
