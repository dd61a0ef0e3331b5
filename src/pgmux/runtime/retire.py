"""A process handing all its clients to another one, between their transactions: a worker replaced in a
rolling restart (runtime/rolling.py: SIGWINCH from the supervisor once the replacement accepts at the
worker's sibling row; WorkerShare.retire), or a pgmux taken over by `pgmux -R` (runtime/reboot.py).

It stops accepting (the successor, and the other workers, take the new connections) and hands the
clients that may move over to the successor (runtime/handover.py: between transactions, in transaction
or statement mode, not pinned, not TLS): each one the moment its transaction ends (App.on_idle, so that a
busy client is caught between its ReadyForQuery and its next query), and every tick (0.2 s) those idle
at rest. The others finish here as with SHUTDOWN WAIT_FOR_CLIENTS, and are tried again each tick (a pin
can end). When no client of a pool is left, the consoles still connected are told to connect again and
the process exits (status 0; the supervisor knows it was replaced and starts nothing).
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any, Final

from pgmux.errors import PgmuxError
from pgmux.runtime import workershare as ws
from pgmux.session.states import ClientState

if TYPE_CHECKING:
    from pgmux.session.client import ClientSession

log = logging.getLogger("pgmux")

REPORT_EVERY: Final = 10.0  # seconds between two log lines about clients that cannot move yet


def handover_path(rundir: str, row: int) -> str:
    """Where worker `row` takes clients handed over to it."""
    return os.path.join(ws.private_dir(rundir, row), "handover")


def retire_worker(share: Any) -> None:
    """SIGWINCH to a worker (WorkerShare `share`) from the supervisor in a rolling restart
    (runtime/rolling.py), once the replacement accepts at its sibling row: accept no more, hand the clients
    over to it."""
    app = share.app
    if share.retirement is not None or app is None or app.shutting_down:
        return
    successor = ws.sibling(share.index, share.workers)
    pid = share.counts.ready[successor]
    if pid == 0:
        log.warning("worker %d: SIGWINCH ignored: no replacement accepts at row %d (only the supervisor sends "
                    "it, in a rolling restart)", share.slot, successor)
        return
    share.retiring = True
    log.info("worker %d (pid %d) is replaced by pid %d: accepting no more, handing clients over between "
             "transactions", share.slot, os.getpid(), pid)
    label = f"worker {share.slot} (pid {os.getpid()})"
    share.retirement = Retirement(app, handover_path(share.rundir, successor), label)
    share.retirement.begin()


class Retirement:
    """A process handing all its clients to another one at `path` (a worker replaced in a rolling
    restart, WorkerShare.retire; or a pgmux taken over by `pgmux -R`, runtime/reboot.py)."""

    def __init__(self, app: Any, path: str, label: str) -> None:  # runtime/app.App (imports this, lazily)
        self.app = app
        self.path = path
        self.label = label  # who, in the log: "worker 1" or "pgmux (pid 4242)"
        self.moving = False
        self.reported = 0.0
        self.moved = 0
        self.queue: list[ClientSession] = []  # caught between transactions, reading stopped, to hand over

    def begin(self) -> None:
        """Accept no more and hand the clients over from now on."""
        app = self.app
        for srv in app.listeners:
            srv.close()
        app.listeners = []
        app.tick_hooks.append(self.tick)
        app.on_idle = self.idle
        self.tick()

    def idle(self, c: ClientSession) -> None:
        """A client's transaction just ended (App.on_idle): under load a client is idle only between its
        ReadyForQuery and its next query, so it is caught here, its reading stopped at once (its next query
        waits in the kernel's buffer and is read by the replacement), and queued for the hand-over."""
        from pgmux.runtime.handover import refusal

        if refusal(self.app, c):
            return
        c.held = True  # as runtime/handover._move does; it reads the client again if the move fails
        c.suspend()
        self.queue.append(c)
        if not self.moving:
            self.moving = True
            self.app.spawn(self._move)

    def tick(self) -> None:
        """Every janitor tick: the clients idle at rest, and the exit once no pooled client is left."""
        app = self.app
        if app.finished or self.moving:
            return
        pooled = [c for c in app.clients.values() if not c.is_admin]
        if not pooled:
            self._finish()
            return
        self.moving = True
        app.spawn(self._move, True)

    async def _move(self, everyone: bool = False) -> None:
        from pgmux.runtime.handover import hand_over

        app = self.app
        moved = 0
        stayed: dict[str, int] = {}
        try:
            if everyone:
                moved, stayed = await hand_over(app, self.path)
            while self.queue:  # caught by idle() meanwhile
                batch, self.queue = self.queue, []
                try:
                    n, _ = await hand_over(app, self.path, batch)
                finally:
                    self._read_again(batch)
                moved += n
        except Exception as e:  # noqa: BLE001 - logged; tried again next tick
            app.log_exception(f"{self.label} hand-over:", e)
            return
        finally:
            self.moving = False
            self._read_again(self.queue)  # (only after an error) tried again later
            self.queue = []
        self.moved += moved
        now = app.now()
        if stayed and now - self.reported >= REPORT_EVERY:
            self.reported = now
            log.info("%s: %d clients handed over so far; %s stay until they can move or leave", self.label,
                     self.moved, ", ".join(f"{n} {why}" for why, n in sorted(stayed.items())))

    def _read_again(self, clients: list[ClientSession]) -> None:
        """Clients idle() stopped reading that are still here (refused, or busy again): read again."""
        for c in clients:
            if c.held and self.app.clients.get(c.id) is c and c.state is not ClientState.CLOSED:
                c.held = False
                c.suspend()

    def _finish(self) -> None:
        app = self.app
        log.info("%s: no client left (%d handed over), exiting", self.label, self.moved)
        err = PgmuxError("this pgmux worker process was replaced in a rolling restart; connect again",
                         sqlstate="57P01", severity="FATAL")
        for c in list(app.clients.values()):
            c.fail(err)
        app.shutdown("immediate")
