"""Process lifecycle: logging (time zone in every line, logfile reopened on reload), pidfile, daemon mode,
signals as PgBouncer 1.25 handles them, systemd notifications, the event loop."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import mmap
import os
import signal
import socket
import sys
from typing import Any

from pgmux.config.model import Config
from pgmux.errors import PgmuxError
from pgmux.net import sdnotify
from pgmux.net.protocols import loop_exception_handler
from pgmux.net.tls import Contexts, TlsConfigError
from pgmux.runtime.app import App
from pgmux.runtime.logjson import JsonFormatter
from pgmux.runtime.logline import DirectLogger, PlannedHandler, stamp
from pgmux.runtime.memtrim import Trimmer

log = logging.getLogger("pgmux")


# Bytes a client sent that are not UTF-8 reach log lines as surrogate escapes (names, statement names,
# query text): written as backslash escapes, not a "Logging error" that loses the line.
LOG_ERRORS = "backslashreplace"


class TickFlushedHandler(PlannedHandler):
    """Writes into a buffered stream; the janitor flushes it every tick (0.2 s), and WARNING and
    worse are flushed at once. A log line per connection then costs no write() of its own, which
    matters with a connection per transaction (pgbench -C)."""

    def emit(self, record: logging.LogRecord) -> None:
        super().emit(record)
        if record.levelno >= logging.WARNING:
            self.stream.flush()

    def flush(self) -> None:
        pass

    def tick(self) -> None:
        try:
            self.stream.flush()
        except (OSError, ValueError):
            pass


_LEVELS = {"INFO": "LOG", "CRITICAL": "FATAL"}  # PgBouncer's names; DEBUG, WARNING and ERROR are the same


class ZoneFormatter(logging.Formatter):
    """PgBouncer's log prefix: `2026-12-02 19:40:09.123 UTC [4242] LOG ...`: milliseconds, the time zone,
    the pid in brackets and its level names, so that tools reading PgBouncer's logs (pgbadger) read these."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return stamp(record.created, self.converter)  # (formatted once per second)

    def format(self, record: logging.LogRecord) -> str:
        record.pglevel = _LEVELS.get(record.levelname, record.levelname)
        return super().format(record)


_FORMAT = ZoneFormatter("%(asctime)s [%(process)d] %(pglevel)s %(message)s")
_JSON = JsonFormatter()  # log_format = json (runtime/logjson.py)


class LogFiles:
    """The handlers of the pgmux logger: stderr (unless quiet) and the logfile (if set). `reopen()`
    runs after every reload and SET: the logfile is opened again by name, so a file logrotate moved
    away (its `create` mode) is replaced by a new one, and a changed `logfile` or `verbose` applies."""

    def __init__(self, config: Config, quiet: bool, verbose: int) -> None:
        self.quiet = quiet  # (a worker process makes its own LogFiles: runtime/workerproc.py)
        self.verbose = verbose
        self.config = config
        self.formatter: logging.Formatter = _JSON if config.settings.log_format == "json" else _FORMAT
        self.file: TickFlushedHandler | None = None
        # Nobody reads the caller's file/line or thread names in these logs: skip the work.
        logging._srcfile = None  # type: ignore[attr-defined]
        logging.logThreads = False
        logging.logProcesses = True
        logging.logMultiprocessing = False
        self.root = logging.getLogger("pgmux")
        DirectLogger.install(self.root, TickFlushedHandler, _FORMAT)  # its usual lines skip LogRecord
        for h in list(self.root.handlers):  # (not handlers.clear(): DirectLogger sees what removeHandler does)
            self.root.removeHandler(h)
        self.root.propagate = False
        self.handlers: list[TickFlushedHandler] = []
        if not quiet:
            self._add(TickFlushedHandler(os.fdopen(os.dup(2), "w", buffering=1 << 16, errors=LOG_ERRORS)))
        self.reopen(config)

    def _add(self, h: TickFlushedHandler) -> None:
        h.setFormatter(self.formatter)
        self.root.addHandler(h)
        self.handlers.append(h)

    def reopen(self, config: Config) -> None:
        s = config.settings
        self.root.setLevel(logging.DEBUG if self.verbose or s.verbose else logging.INFO)
        self.formatter = _JSON if s.log_format == "json" else _FORMAT
        for h in self.handlers:
            h.setFormatter(self.formatter)
        old, self.file = self.file, None
        if s.logfile:
            try:
                self.file = TickFlushedHandler(open(s.logfile, "a", buffering=1 << 16, errors=LOG_ERRORS))
            except OSError as e:
                self.file = old  # keep logging where we could, and say why
                log.error("cannot open logfile %s: %s; still logging to the old one", s.logfile, e.strerror)
                return
            self._add(self.file)
        if old is not None:
            old.tick()
            self.root.removeHandler(old)
            self.handlers.remove(old)
            old.stream.close()

    def tick(self) -> None:
        for h in self.handlers:
            h.tick()


def daemonize() -> None:
    """The classic double fork: detach from the terminal, as `pgbouncer -d` does."""
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)


def check_pidfile(path: str) -> None:
    """Refuse to start when the pidfile names a running process (PgBouncer's check_pidfile); remove
    a stale one. Runs before daemonizing, so `pgmux -d` itself exits non-zero."""
    try:
        with open(path) as f:
            text = f.read().strip()
    except FileNotFoundError:
        return
    except OSError as e:
        raise SystemExit(f"pgmux: cannot read pidfile {path}: {e.strerror}") from None
    try:
        old = int(text or 0)
    except ValueError:
        old = 0
    if old > 0:
        try:
            os.kill(old, 0)
        except ProcessLookupError:
            old = 0
        except PermissionError:
            pass  # it exists, as another user
    if old > 0 or not text:
        raise SystemExit(f"pgmux: pidfile {path} exists and names a running process ({old or 'unknown'}): "
                         "is another pgmux running? Stop it, or remove the file if it is not")
    try:
        os.unlink(path)  # stale: its process is gone
    except OSError as e:
        raise SystemExit(f"pgmux: cannot remove stale pidfile {path}: {e.strerror}") from None


def write_pidfile(path: str, replace: bool = False) -> None:
    """This process's pid in `path`; `replace` (-R): over the file of the process taken over, atomically."""
    if replace:
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(f"{os.getpid()}\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(f"{os.getpid()}\n")


def remove_pidfile(path: str) -> None:
    """At the exit: the pidfile goes if it still names this process (after `pgmux -R` took over, it
    names the new one)."""
    try:
        with open(path) as f:
            if f.read().strip() != str(os.getpid()):
                return
        os.unlink(path)
    except OSError:
        pass


def run(config: Config, config_path: str, *, daemon: bool = False, quiet: bool = False, verbose: int = 0,
        reboot: bool = False) -> int:
    try:  # certificates and keys are read now, so a bad one stops start-up here, before any fork
        Contexts(config.settings)
    except TlsConfigError as e:
        print(f"pgmux: {config_path}: {e}", file=sys.stderr)
        return 1
    pidfile = config.settings.pidfile
    if pidfile and not reboot:  # (-R: the running process named there is the one to take over)
        check_pidfile(pidfile)
    if daemon:
        if not config.settings.logfile:
            print("pgmux: daemon mode needs logfile set in the configuration", file=sys.stderr)
            return 1
        daemonize()
        quiet = True
    logs = LogFiles(config, quiet, verbose)
    if pidfile:
        try:
            write_pidfile(pidfile, replace=reboot)
        except OSError as e:
            log.error("cannot write pidfile %s: %s", pidfile, e.strerror)
            logs.tick()
            return 1
    try:
        if config.settings.workers > 1:  # a supervisor and its worker processes (runtime/supervisor.py)
            from pgmux.runtime.supervisor import Supervisor

            return Supervisor(config, config_path, logs, worker_run).run()
        return serve(config, config_path, logs, reboot=reboot)
    finally:
        logs.tick()
        if pidfile:
            remove_pidfile(pidfile)


def serve(config: Config, config_path: str, logs: LogFiles, share: Any = None, reboot: bool = False) -> int:
    """The event loop of the pooler, or of one worker process (`share`: runtime/worker.WorkerShare)."""
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # uvloop is a dependency; this only guards odd platforms
        runner = asyncio.Runner()
    with runner:
        return runner.run(_serve(config, config_path, logs, share, reboot))


async def _serve(config: Config, config_path: str, logs: LogFiles, share: Any = None, reboot: bool = False) -> int:
    # Errors that reach the loop go to pgmux's log (asyncio's own handler writes to stderr, which is
    # /dev/null in daemon mode), with the connection's identity, and close that connection.
    asyncio.get_running_loop().set_exception_handler(loop_exception_handler)
    app = App(config, config_path)
    if share is not None:  # a worker: shared listeners, limits and cancels (runtime/worker.py)
        share.install(app)
        await share.start(app)
    app.tick_hooks.append(logs.tick)
    app.reload_hooks.append(lambda: logs.reopen(app.config))
    app.tick_hooks.append(Trimmer(app))
    from pgmux.runtime.web import Web  # metrics_listen: /metrics and the status page

    app.web = Web(app)
    adopting = None  # -R: where the process taken over hands its clients (runtime/takeover.py)
    try:
        if reboot:  # the old one's sockets, metrics_listen's too, or None: start normally
            from pgmux.runtime.takeover import take_over

            adopting = await take_over(app)
        if adopting is None:
            try:  # bound first: a metrics address in use stops start-up before clients are accepted
                await app.web.start()
            except OSError as e:
                log.error("cannot listen on metrics_listen = %s: %s", config.settings.metrics_listen,
                          e.strerror or e)
                return 1
            await app.start()
    except OSError as e:
        log.error("cannot listen: %s", e)
        return 1
    except (PgmuxError, TimeoutError) as e:
        log.error("-R: taking over failed (the running pgmux serves on): %s", e or type(e).__name__)
        return 1
    if share is not None:
        share.started(app)  # the console of one worker among several (runtime/worker_admin.py)
    loop = asyncio.get_running_loop()

    def on_hup() -> None:
        log.info("got SIGHUP, re-reading the configuration")
        sdnotify.reloading()
        try:
            app.reload()
        except Exception as e:  # noqa: BLE001 - a bad file must not take the pooler down
            log.error("reload failed, keeping the old configuration: %s", e)
            logs.reopen(app.config)  # the logfile is reopened all the same (logrotate sent the HUP)
        sdnotify.notify("READY=1")

    def on_stop(name: str, mode: str) -> None:
        if app.shutting_down:  # a second signal: PgBouncer's "fast exit"
            log.info("got %s while shutting down, exiting now", name)
            app.shutdown("immediate")
        else:
            log.info("got %s", name)
            app.shutdown(mode)

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    loop.add_signal_handler(signal.SIGINT, on_stop, "SIGINT", "servers")
    loop.add_signal_handler(signal.SIGTERM, on_stop, "SIGTERM", "clients")
    loop.add_signal_handler(signal.SIGQUIT, on_stop, "SIGQUIT", "immediate")
    loop.add_signal_handler(signal.SIGUSR1, app.admin.pause_all)
    loop.add_signal_handler(signal.SIGUSR2, app.admin.resume_all)
    if share is not None:  # the supervisor's word that this worker is replaced (runtime/rolling.py)
        loop.add_signal_handler(signal.SIGWINCH, share.retire)
    sdnotify.notify(f"READY=1\nSTATUS=listening on port {config.settings.listen_port}\nMAINPID={os.getpid()}")
    await app.wait_stopped()
    log.info("pgmux stopped")
    return 0


def worker_run(place: dict[str, Any]) -> int:
    """A worker process (runtime/workerproc.py): the configuration from the file, the rest from `place`."""
    # The supervisor blocks the signals it waits for, and a new process inherits the mask: until the
    # event loop handles them, HUP/USR1/USR2/WINCH are ignored (not fatal), then every signal is let in.
    for sig in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH):
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    from pgmux.config import load_config
    from pgmux.runtime import workershare as ws
    from pgmux.runtime.worker import WorkerShare
    from pgmux.runtime.workerproc import CONFIG_ERROR, die_with

    die_with(place["supervisor"])

    try:
        config = load_config(place["config"])
    except Exception as e:  # noqa: BLE001 - said, and the supervisor tries again later
        print(f"pgmux worker {place['row'] % place['workers']}: cannot read {place['config']}: {e}", file=sys.stderr)
        return CONFIG_ERROR
    owned: dict[str, Any] = {k: tuple(v) if isinstance(getattr(config.settings, k), tuple) else v
                             for k, v in place["owned"].items()}
    config = dataclasses.replace(config, settings=dataclasses.replace(config.settings, **owned))
    logs = LogFiles(config, place["quiet"], place["verbose"])
    block = mmap.mmap(place["counts"], place["size"])
    counts = ws.Counts(memoryview(block), ws.rows_for(place["workers"]), ws.FileLock(place["lock"]))
    sockets = [socket.socket(fileno=fd) for fd in place["sockets"]]
    for sock in sockets:  # (non-blocking, as the supervisor made them: a copy must never change that)
        sock.setblocking(False)
    share = WorkerShare(place["row"], place["workers"], counts, sockets, place["rundir"], place["supervisor"])
    if place.get("metrics"):  # metrics_listen, bound by the supervisor (runtime/webshare.py)
        share.metrics = (place["metrics"][0], [socket.socket(fileno=fd) for fd in place["metrics"][1]])
    try:
        return serve(config, place["config"], logs, share)
    finally:
        logs.tick()
