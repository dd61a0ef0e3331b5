"""pgmux's log lines without the stdlib's per-line machinery, when nothing needs it.

With a connection per transaction (pgbench -C) every login logs two lines (log_connections,
log_disconnections), and stdlib logging made each one a LogRecord (a getpid(), path splitting for
the source file nobody reads), a walk through Logger.handle, Handler.handle, Formatter.format and
two strftime() calls: that was about a third of pgmux's CPU per login. PgBouncer formats the line
into a buffer with the time it already has.

DirectLogger is the class of the "pgmux" logger once LogFiles (runtime/main.py) has set it up. A
call with plain %-arguments (no exc_info, extra or stack_info) whose only handlers are LogFiles' own
(the tick-flushed stream handlers with PgBouncer's prefix, no filters, the logger not propagating)
is formatted here and written to their streams: the same bytes, in the same order, flushed by the
same rules. Anything else (a traceback, a handler or filter someone added, caplog in tests, a
formatter of another kind) takes the stdlib path unchanged. The time prefix is worked out once per
second (`stamp`), for both paths.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

# PgBouncer's level names; DEBUG, WARNING and ERROR are the same.
LEVEL_NAMES = {logging.DEBUG: "DEBUG", logging.INFO: "LOG", logging.WARNING: "WARNING", logging.ERROR: "ERROR",
               logging.CRITICAL: "FATAL"}

# The last second formatted, per converter: (second, "2026-12-02 19:40:09.", " UTC").
_last: dict[Callable[..., Any], tuple[int, str, str]] = {}
_MS = [f"{i:03d}" for i in range(1000)]
_PLAIN = frozenset({str, int, float})  # argument types that are surely not mappings (no ABC check)


def stamp(created: float, converter: Callable[..., Any] = time.localtime) -> str:
    """`2026-12-02 19:40:09.123 UTC` for `created` (seconds since the epoch), as ZoneFormatter writes it.
    The date, time and zone name are formatted once per second: two strftime() calls a line were the
    dearest part of a log line."""
    sec = int(created)
    last = _last.get(converter)
    if last is None or last[0] != sec:
        ct = converter(sec)
        last = _last[converter] = (sec, time.strftime("%Y-%m-%d %H:%M:%S.", ct), " " + time.strftime("%Z", ct))
    return last[1] + _MS[int((created - sec) * 1000)] + last[2]  # milliseconds as LogRecord.msecs has them


# The prefix of a direct line, worked out once per second: [converter, second, "2026-12-02 19:40:09.",
# {level: " UTC [4242] LOG "}]. The pid is in it (a LogRecord asks the kernel for it, a getpid() per
# line): a fork starts it afresh.
_line: list[Any] = [None, -1, "", {}]
os.register_at_fork(after_in_child=lambda: _line.__setitem__(1, -1))


def _new_second(converter: Callable[..., Any], sec: int) -> None:
    ct = converter(sec)
    tail = f" {time.strftime('%Z', ct)} [{os.getpid()}] "
    _line[:] = [converter, sec, time.strftime("%Y-%m-%d %H:%M:%S.", ct),
                {level: f"{tail}{name} " for level, name in LEVEL_NAMES.items()}]


class DirectLogger(logging.Logger):
    # Set by install(): the handler class and formatter whose lines this class may write itself.
    handler_class: type[logging.StreamHandler] | None = None  # type: ignore[type-arg]
    formatter: logging.Formatter | None = None

    @classmethod
    def install(cls, logger: logging.Logger, handler_class: type[logging.StreamHandler],  # type: ignore[type-arg]
                formatter: logging.Formatter) -> None:
        """Make `logger` one of these (the logger object stays the same: every module's `log` is it)."""
        cls.handler_class, cls.formatter = handler_class, formatter
        logger.__class__ = cls

    def _direct(self, level: int, msg: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        """Write the line here when nothing but LogFiles' handlers would see it; False: take the stdlib path."""
        handlers = self.handlers
        if kwargs or self.propagate or self.filters or not handlers or self.disabled:
            return False
        enabled = self._cache.get(level)  # type: ignore[attr-defined]  # (isEnabledFor()'s, without the call)
        if not (self.isEnabledFor(level) if enabled is None else enabled):
            return False
        cls, fmt = self.handler_class, self.formatter
        if fmt is None:
            return False
        if len(args) == 1 and type(args[0]) not in _PLAIN and isinstance(args[0], Mapping):
            return False  # a dict argument (%(name)s): the stdlib's own rule
        for h in handlers:
            if type(h) is not cls or h.formatter is not fmt or h.filters:
                return False
        try:
            text = (msg if type(msg) is str else str(msg)) % args if args else str(msg)
        except Exception:  # noqa: BLE001 - a bad format string: let the stdlib report it as it does
            return False
        now = time.time()
        sec = int(now)
        if _line[1] != sec or _line[0] is not fmt.converter:
            _new_second(fmt.converter, sec)
        # milliseconds as LogRecord.msecs has them
        line = f"{_line[2]}{_MS[int((now - sec) * 1000)]}{_line[3][level]}{text}\n"
        for h in handlers:
            if level < h.level:
                continue
            stream: Any = h.stream  # type: ignore[attr-defined]
            with h.lock:  # type: ignore[union-attr]
                try:
                    stream.write(line)
                    if level >= logging.WARNING:
                        stream.flush()
                except Exception:  # noqa: BLE001 - as Handler.emit: report on stderr, go on
                    h.handleError(self.makeRecord(self.name, level, "(unknown file)", 0, msg, args, None))
        return True

    def debug(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        if not self._direct(logging.DEBUG, msg, args, kwargs):
            super().debug(msg, *args, **kwargs)

    def info(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        if not self._direct(logging.INFO, msg, args, kwargs):
            super().info(msg, *args, **kwargs)

    def warning(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        if not self._direct(logging.WARNING, msg, args, kwargs):
            super().warning(msg, *args, **kwargs)

    def error(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        if not self._direct(logging.ERROR, msg, args, kwargs):
            super().error(msg, *args, **kwargs)
