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
second (`stamp`), for both paths. The direct path's body is runtime/logdirect.py (compiled); it keeps
what its checks found while nothing they look at changes, and the hooks here (DirectLogger's and
PlannedHandler's: a handler or filter added or removed, any attribute set) tell it when it does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from pgmux.runtime.logdirect import LEVEL_NAMES, MS, direct, forget

__all__ = ["LEVEL_NAMES", "DirectLogger", "PlannedHandler", "stamp"]

# The last second formatted, per converter: (second, "2026-12-02 19:40:09.", " UTC").
_last: dict[Callable[..., Any], tuple[int, str, str]] = {}


def stamp(created: float, converter: Callable[..., Any] = time.localtime) -> str:
    """`2026-12-02 19:40:09.123 UTC` for `created` (seconds since the epoch), as ZoneFormatter writes it.
    The date, time and zone name are formatted once per second: two strftime() calls a line were the
    dearest part of a log line."""
    sec = int(created)
    last = _last.get(converter)
    if last is None or last[0] != sec:
        ct = converter(sec)
        last = _last[converter] = (sec, time.strftime("%Y-%m-%d %H:%M:%S.", ct), " " + time.strftime("%Z", ct))
    return last[1] + MS[int((created - sec) * 1000)] + last[2]  # milliseconds as LogRecord.msecs has them


class _Watched(logging.Filterer):
    """The hooks a logger and a handler share: an attribute set or a filter added or removed drops
    logdirect's plan (see DirectLogger and PlannedHandler)."""

    def __setattr__(self, name: str, value: Any) -> None:
        forget()
        super().__setattr__(name, value)

    def addFilter(self, filter: Any) -> None:  # noqa: N802, A002
        forget()
        super().addFilter(filter)

    def removeFilter(self, filter: Any) -> None:  # noqa: N802, A002
        forget()
        super().removeFilter(filter)


class DirectLogger(_Watched, logging.Logger):
    # Set by install(): the handler class and formatter whose lines this class may write itself.
    handler_class: type[logging.StreamHandler] | None = None  # type: ignore[type-arg]
    formatter: logging.Formatter | None = None

    @classmethod
    def install(cls, logger: logging.Logger, handler_class: type[logging.StreamHandler],  # type: ignore[type-arg]
                formatter: logging.Formatter) -> None:
        """Make `logger` one of these (the logger object stays the same: every module's `log` is it)."""
        cls.handler_class, cls.formatter = handler_class, formatter
        logger.__class__ = cls
        forget()

    # What logdirect's plan relies on changes: each of these drops it (and _Watched's).
    def addHandler(self, hdlr: logging.Handler) -> None:  # noqa: N802
        forget()
        super().addHandler(hdlr)

    def removeHandler(self, hdlr: logging.Handler) -> None:  # noqa: N802
        forget()
        super().removeHandler(hdlr)

    def debug(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        if not direct(self, logging.DEBUG, msg, args, kwargs):
            super().debug(msg, *args, **kwargs)

    def info(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        if not direct(self, logging.INFO, msg, args, kwargs):
            super().info(msg, *args, **kwargs)

    def warning(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        if not direct(self, logging.WARNING, msg, args, kwargs):
            super().warning(msg, *args, **kwargs)

    def error(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        if not direct(self, logging.ERROR, msg, args, kwargs):
            super().error(msg, *args, **kwargs)


class PlannedHandler(_Watched, logging.StreamHandler):  # type: ignore[type-arg]
    """A handler whose lines DirectLogger may write itself (LogFiles' TickFlushedHandler is one): any
    change of it (setLevel, setFormatter, setStream, a filter) drops logdirect's plan."""
