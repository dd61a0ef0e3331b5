"""The supervisor of `workers = N > 1` worker processes (issue 14).

It binds the listening sockets once (net/listen.bind_listeners), maps the shared counts
(runtime/workershare.py) in a memfd, then starts N workers (runtime/workerproc.py: fresh interpreters
that inherit the sockets, the counts and the lock, and read the configuration file themselves), each
running the usual event loop (runtime/main._serve with a WorkerShare). Inherited sockets rather than
SO_REUSEPORT per worker: the Unix socket cannot be shared with SO_REUSEPORT, a restarted worker takes up
its predecessor's place without a moment where the port is closed, and the kernel's accept queue is one,
so no connection waits in the queue of a worker that is busy or dead (SO_REUSEPORT hashes each connection
to one socket for good).

Its pid is the one in pidfile, and signals to it act on the whole pooler: HUP (reload, and the
supervisor's own config for the workers it starts later), USR1 and USR2 go to every worker; INT, TERM and
QUIT too, after which it closes its copies of the listening sockets, restarts nobody, and exits when the
last worker has; WINCH (or RESTART on the console) replaces the workers one at a time
(runtime/rolling.py). A worker that dies otherwise is restarted at once, then, if it keeps dying within
QUICK_DEATH seconds of its start, after 0.5 s doubling up to MAX_BACKOFF, each logged; its shared counts
are zeroed first (what it held died with it). A worker that exits with status 0 on its own (SHUTDOWN on
its console) takes the pooler down: the others get TERM.
"""

from __future__ import annotations

import dataclasses
import logging
import mmap
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from typing import Any, Final

from pgmux.config import diff, load_config
from pgmux.config.model import Config
from pgmux.net import sdnotify
from pgmux.net.listen import bind_listeners, unix_socket_path
from pgmux.runtime import workerproc
from pgmux.runtime import workershare as ws
from pgmux.runtime.rolling import Rolling, Slot
from pgmux.runtime.web import bind_metrics
from pgmux.runtime.workershare import per_worker

log = logging.getLogger("pgmux")

SIGNALS: Final = (signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2,
                  signal.SIGWINCH, signal.SIGCHLD)
QUICK_DEATH: Final = 10.0  # a worker that dies sooner than this after its start counts towards the backoff
MAX_BACKOFF: Final = 30.0
POLL: Final = 0.2  # the supervisor's loop wakes at least this often


def backoff(quick_deaths: int) -> float:
    """Seconds before restarting a worker that died `quick_deaths` times in a row soon after its start."""
    return 0.0 if quick_deaths <= 1 else min(MAX_BACKOFF, 0.5 * 2 ** (quick_deaths - 2))


class Supervisor:
    def __init__(self, config: Config, config_path: str, logs: Any, entry: Callable[[dict[str, Any]], int]) -> None:
        self.entry = entry  # runtime/main.worker_run: what a worker process runs
        self.config = config
        self.config_path = config_path
        self.logs = logs
        self.n = config.settings.workers
        self.slots = [Slot(i, i) for i in range(self.n)]
        self.stopping = False
        self.sockets: list[Any] = []
        self.metrics: tuple[str, list[Any]] | None = None  # metrics_listen, bound (runtime/webshare.py)
        self.rundir = ""
        self.counts: ws.Counts | None = None
        self.counts_fd = -1
        self.lock_fd = -1
        self.mask: set[int | signal.Signals] = set()
        self.rolling = Rolling(self)

    # -- start and stop -----------------------------------------------------------------------------
    def run(self) -> int:
        for note in per_worker(self.config):
            log.warning("workers = %d: %s", self.n, note)
        try:
            self.sockets = bind_listeners(self.config.settings)
            self.metrics = bind_metrics(self.config.settings)  # one /metrics for all (runtime/webshare.py)
        except OSError as e:
            log.error("cannot listen: %s", e)
            if self.sockets:  # bound (bind_listeners undoes its own failures): closed and unlinked
                self._cleanup()
            return 1
        self.rundir = tempfile.mkdtemp(prefix="pgmux-workers-")  # 0700: the cancel sockets, the lock file
        self.lock_fd = os.open(os.path.join(self.rundir, "lock"), os.O_RDWR | os.O_CREAT, 0o600)
        rows = ws.rows_for(self.n)
        self.counts_fd = os.memfd_create("pgmux-counts")  # shared with every worker it starts
        os.ftruncate(self.counts_fd, ws.size_for(rows))
        block = mmap.mmap(self.counts_fd, ws.size_for(rows))
        self.counts = ws.Counts(memoryview(block), rows, ws.FileLock(self.lock_fd))
        self.mask = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        try:
            for slot in self.slots:
                self._start(slot)
            s = self.config.settings
            log.info("supervisor: %d workers listening on %s port %d%s", self.n, ",".join(s.listen_addr) or "(no tcp)",
                     s.listen_port, f" and unix socket in {s.unix_socket_dir}" if s.unix_socket_dir else "")
            sdnotify.notify(f"READY=1\nSTATUS={self.n} workers listening on port {s.listen_port}\n"
                            f"MAINPID={os.getpid()}")
            self._loop()
        finally:
            self._cleanup()
            signal.pthread_sigmask(signal.SIG_SETMASK, self.mask)
        log.info("pgmux stopped")
        return 0

    def _loop(self) -> None:
        while True:
            info = signal.sigtimedwait(SIGNALS, POLL)
            # (si_signo 0: an empty answer after a wait interrupted by SIGSTOP/SIGCONT, not a signal)
            if info is not None and info.si_signo in SIGNALS and info.si_signo != signal.SIGCHLD:
                self._on_signal(signal.Signals(info.si_signo))
            self._reap()
            if self.stopping and not self.rolling.pids():
                return
            now = time.monotonic()
            for slot in self.slots:
                if not self.stopping and not slot.pid and slot.restart_at is not None and now >= slot.restart_at:
                    self._start(slot)
            if not self.stopping:
                self.rolling.step(now)
            self.logs.tick()

    def _cleanup(self) -> None:
        for sock in self.sockets + (self.metrics[1] if self.metrics else []):
            sock.close()
        s = self.config.settings
        if s.unix_socket_dir:
            try:
                os.unlink(unix_socket_path(s.unix_socket_dir, s.listen_port))
            except OSError:
                pass
        if self.rundir:
            shutil.rmtree(self.rundir, ignore_errors=True)

    # -- workers ----------------------------------------------------------------------------------------
    def _start(self, slot: Slot) -> None:
        slot.pid = self.spawn(slot.row)
        slot.started, slot.restart_at = time.monotonic(), None
        log.info("supervisor: worker %d started (pid %d)", slot.index, slot.pid)

    def spawn(self, row: int) -> int:
        """A new worker process at `row` (runtime/workerproc.py); its pid."""
        assert self.counts is not None
        self.counts.zero(row)  # whatever a process there before left
        self.logs.tick()  # nothing buffered may be written twice, by a forked child too
        return workerproc.spawn(self.entry, row=row, workers=self.n, config_path=self.config_path,
                                settings=self.config.settings, sockets=self.sockets, counts_fd=self.counts_fd,
                                counts_size=ws.size_for(ws.rows_for(self.n)), lock_fd=self.lock_fd,
                                rundir=self.rundir, quiet=self.logs.quiet, verbose=self.logs.verbose,
                                metrics=self.metrics)

    def _reap(self) -> None:
        assert self.counts is not None
        for _ in range(2 * self.n + 2):  # bounded: at most one reap per worker process per pass
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            how = (f"killed by signal {signal.Signals(os.WTERMSIG(status)).name}" if os.WIFSIGNALED(status)
                   else f"exit code {os.waitstatus_to_exitcode(status)}")
            if self.rolling.reaped(pid, how):
                continue
            slot = next((s for s in self.slots if s.pid == pid), None)
            if slot is None:
                continue
            slot.pid = 0
            self.counts.zero(slot.row)
            if self.stopping:
                log.info("supervisor: worker %d (pid %d) stopped (%s)", slot.index, pid, how)
                continue
            if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
                log.info("supervisor: worker %d (pid %d) shut down on its own: stopping the other workers",
                         slot.index, pid)
                self._stop(signal.SIGTERM)
                continue
            now = time.monotonic()
            slot.quick_deaths = slot.quick_deaths + 1 if now - slot.started < QUICK_DEATH else 1
            delay = backoff(slot.quick_deaths)
            slot.restart_at = now + delay
            log.warning("supervisor: worker %d (pid %d) died (%s); restarting it in %.1fs", slot.index, pid, how,
                        delay)

    # -- signals --------------------------------------------------------------------------------------------
    def _on_signal(self, sig: signal.Signals) -> None:
        if sig == signal.SIGHUP:
            log.info("supervisor: got SIGHUP, passing it on to the workers")
            sdnotify.reloading()
            self._reload()
            self._forward(sig)
            sdnotify.notify("READY=1")
        elif sig in (signal.SIGUSR1, signal.SIGUSR2):
            self._forward(sig)
        elif sig == signal.SIGWINCH:
            log.info("supervisor: got SIGWINCH, replacing the workers one at a time")
            self.rolling.begin()
        else:
            log.info("supervisor: got %s, passing it on to the workers", sig.name)
            self._stop(sig)

    def _stop(self, sig: signal.Signals) -> None:
        if not self.stopping:
            sdnotify.notify("STOPPING=1")
        self.stopping = True
        self._forward(sig)
        for sock in self.sockets:  # the workers close theirs: then the port refuses, as PgBouncer's does
            sock.close()

    def _forward(self, sig: signal.Signals) -> None:
        for pid in self.rolling.pids():
            self.kill(pid, sig)

    @staticmethod
    def kill(pid: int, sig: signal.Signals) -> None:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass

    def reload_for_restart(self) -> bool:
        return self._reload(restart=True)

    def _reload(self, restart: bool = False) -> bool:
        """The configuration the workers started from now on get: restart-only settings kept, except, for
        a rolling restart (`restart`), those a new worker process applies itself. False when refused."""
        try:
            new = load_config(self.config_path)
        except Exception as e:  # noqa: BLE001 - a bad file must not take the pooler down
            log.error("supervisor: reload failed, keeping the old configuration: %s", e)
            self.logs.reopen(self.config)
            return False
        plan = diff(self.config, new)
        keep = [k for k in plan.needs_restart if not restart or k in workerproc.SUPERVISOR_OWNED]
        if keep:
            kept = {k: getattr(self.config.settings, k) for k in keep}
            new = dataclasses.replace(new, settings=dataclasses.replace(new.settings, **kept))
        self.config = new
        self.logs.reopen(new)
        return True
