"""Process lifecycle: logging with identity prefixes, pidfile, daemon mode, signals, the event loop."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from pgmux.config.model import Config
from pgmux.runtime.app import App
from pgmux.runtime.memtrim import Trimmer

log = logging.getLogger("pgmux")


class TickFlushedHandler(logging.StreamHandler):  # type: ignore[type-arg]
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


def setup_logging(config: Config, quiet: bool, verbose: int) -> list[TickFlushedHandler]:
    s = config.settings
    level = logging.DEBUG if verbose or getattr(s, "verbose", 0) else logging.INFO
    # Nobody reads the caller's file/line or thread names in these logs: skip the work.
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logProcesses = True
    logging.logMultiprocessing = False
    fmt = logging.Formatter("%(asctime)s.%(msecs)03d %(process)d %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    root = logging.getLogger("pgmux")
    root.handlers.clear()
    root.setLevel(level)
    root.propagate = False
    handlers = []
    if s.logfile:
        handlers.append(TickFlushedHandler(open(s.logfile, "a", buffering=1 << 16)))
    if not quiet:
        handlers.append(TickFlushedHandler(os.fdopen(os.dup(2), "w", buffering=1 << 16)))
    for h in handlers:
        h.setFormatter(fmt)
        root.addHandler(h)
    return handlers


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


def write_pidfile(path: str) -> None:
    if os.path.exists(path):
        try:
            with open(path) as f:
                old = int(f.read().strip() or 0)
            if old > 0:
                os.kill(old, 0)
                raise SystemExit(f"pidfile {path} exists and process {old} is running")
        except (ValueError, ProcessLookupError):
            pass
        except PermissionError as e:
            raise SystemExit(f"pidfile {path} exists and its process may be running") from e
    with open(path, "w") as f:
        f.write(f"{os.getpid()}\n")


def run(config: Config, config_path: str, *, daemon: bool = False, quiet: bool = False, verbose: int = 0) -> int:
    if daemon:
        if not config.settings.logfile:
            print("pgmux: daemon mode needs logfile set in the configuration", file=sys.stderr)
            return 1
        daemonize()
        quiet = True
    handlers = setup_logging(config, quiet, verbose)
    pidfile = config.settings.pidfile
    if pidfile:
        write_pidfile(pidfile)
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # uvloop is a dependency; this only guards odd platforms
        runner = asyncio.Runner()
    try:
        with runner:
            return runner.run(_serve(config, config_path, handlers))
    finally:
        for h in handlers:
            h.tick()
        if pidfile:
            try:
                os.unlink(pidfile)
            except OSError:
                pass


async def _serve(config: Config, config_path: str, handlers: list[TickFlushedHandler]) -> int:
    app = App(config, config_path)
    app.tick_hooks.extend(h.tick for h in handlers)
    app.tick_hooks.append(Trimmer(app))
    try:
        await app.start()
    except OSError as e:
        log.error("cannot listen: %s", e)
        return 1
    loop = asyncio.get_running_loop()

    def on_hup() -> None:
        try:
            app.reload()
        except Exception as e:  # noqa: BLE001 - a bad file must not take the pooler down
            log.error("reload failed, keeping the old configuration: %s", e)

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    loop.add_signal_handler(signal.SIGINT, app.shutdown)
    loop.add_signal_handler(signal.SIGTERM, app.shutdown)
    loop.add_signal_handler(signal.SIGQUIT, lambda: app.shutdown(immediate=True))
    loop.add_signal_handler(signal.SIGUSR1, app.admin.pause_all)
    loop.add_signal_handler(signal.SIGUSR2, app.admin.resume_all)
    await app.wait_stopped()
    log.info("pgmux stopped")
    return 0
