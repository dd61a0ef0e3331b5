"""The body of DirectLogger's direct path (runtime/logline.py), compiled (setup.py): with a connection
per transaction (pgbench -C) every login writes two lines. In pure Python their checks, time prefix
and writes cost about 16,000 instructions a line, a fifth of a login; compiled, 7,600, most of it the
checks' attribute lookups on the logger and its handlers. What the checks found is kept (a _Plan)
while nothing they looked at changes, so a line costs its prefix, its text and its write. Same rules,
same bytes: see logline.py."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import Any, Final

# PgBouncer's level names; DEBUG, WARNING and ERROR are the same.
LEVEL_NAMES: Final = {logging.DEBUG: "DEBUG", logging.INFO: "LOG", logging.WARNING: "WARNING",
                      logging.ERROR: "ERROR", logging.CRITICAL: "FATAL"}
MS: Final = [f"{i:03d}" for i in range(1000)]
_PLAIN: Final = frozenset({str, int, float})  # argument types that are surely not mappings (no ABC check)
_WARNING: Final = logging.WARNING
_INFO: Final = logging.INFO
_now: Final = time.time  # (Final: a C global here, not a lookup of time.time per line)

# The prefix of a direct line, worked out once per second: [converter, second, "2026-12-02 19:40:09.",
# {level: " UTC [4242] LOG "}]. The pid is in it (a LogRecord asks the kernel for it, a getpid() per
# line): a fork starts it afresh.
_line: Final[list[Any]] = [None, -1, "", {}]  # changed in place only


def _forked() -> None:
    _line[1] = -1


os.register_at_fork(after_in_child=_forked)


def _new_second(converter: Any, sec: int) -> None:
    ct = converter(sec)
    tail = f" {time.strftime('%Z', ct)} [{os.getpid()}] "
    _line[:] = [converter, sec, time.strftime("%Y-%m-%d %H:%M:%S.", ct),
                {level: f"{tail}{name} " for level, name in LEVEL_NAMES.items()}]


class _Target:
    """One handler as a line is written to it: its filters list (checked empty at every line), its level,
    its lock's acquire and release and its stream's write and flush, looked up once."""

    def __init__(self, handler: Any) -> None:
        self.handler = handler
        self.filters: list[Any] = handler.filters
        self.level: int = handler.level
        lock = handler.lock
        self.acquire: Any = lock.acquire
        self.release: Any = lock.release
        stream = handler.stream
        self.write: Any = stream.write
        self.flush: Any = stream.flush


class _Plan:
    """What direct()'s checks found for a logger: kept (in _held) until DirectLogger or its handler class
    sees a change (forget(): a handler or filter added or removed, any attribute set: level, propagate,
    disabled, formatter, stream). What a hook cannot see is checked at every line: the logger's
    isEnabledFor cache (cleared in place by any setLevel and by logging.disable), and the lengths of the
    handler and filter lists (changed in place by `handlers.clear()`)."""

    def __init__(self, lg: Any, handlers: list[Any], formatter: Any) -> None:
        self.logger = lg
        self.cache: dict[int, bool] = lg._cache
        self.handlers = handlers
        self.count = len(handlers)
        self.filters: list[Any] = lg.filters
        self.formatter = formatter
        self.targets = [_Target(h) for h in handlers]

    def holds(self, lg: Any, level: int) -> bool:
        if self.logger is not lg or self.cache.get(level) is not True or len(self.handlers) != self.count \
                or len(self.filters) > 0:
            return False
        for t in self.targets:
            if len(t.filters) > 0:
                return False
        return True


_held: Final[list[_Plan | None]] = [None]  # changed in place only


def forget() -> None:
    """Something a _Plan relies on changes (logline.py's hooks): the next line checks afresh."""
    _held[0] = None


def _plan(lg: Any, level: int) -> _Plan | None:
    """The checks: a line of `lg` at `level` that nothing but LogFiles' handlers would see; None: the
    stdlib path takes it."""
    handlers: list[Any] = lg.handlers
    if lg.propagate or lg.filters or not handlers or lg.disabled:
        return None
    enabled = lg._cache.get(level)  # (isEnabledFor()'s, without the call)
    if not (lg.isEnabledFor(level) if enabled is None else enabled):
        return None
    cls, fmt = getattr(lg, "handler_class", None), getattr(lg, "formatter", None)
    if fmt is None or cls is None:  # (not a DirectLogger: info() below was given another logger)
        return None
    for h in handlers:
        if type(h) is not cls or h.formatter is not fmt or h.filters:
            return None
    p = _held[0] = _Plan(lg, handlers, fmt)
    return p


def direct(lg: Any, level: int, msg: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Write the line of logger `lg` (a DirectLogger) here when nothing but LogFiles' handlers would see
    it; False: take the stdlib path."""
    if kwargs:
        return False
    p = _held[0]
    if p is None or not p.holds(lg, level):
        p = _plan(lg, level)
        if p is None:
            return False
    if len(args) == 1 and type(args[0]) not in _PLAIN and isinstance(args[0], Mapping):
        return False  # a dict argument (%(name)s): the stdlib's own rule
    try:
        text = (msg if type(msg) is str else str(msg)) % args if args else str(msg)
    except Exception:  # noqa: BLE001 - a bad format string: let the stdlib report it as it does
        return False
    _emit(p, lg, level, text, msg, args)
    return True


def _emit(p: _Plan, lg: Any, level: int, text: str, msg: Any, args: tuple[Any, ...]) -> None:
    now = _now()
    sec = int(now)
    converter = p.formatter.converter
    if _line[1] != sec or _line[0] is not converter:
        _new_second(converter, sec)
    # milliseconds as LogRecord.msecs has them
    line = f"{_line[2]}{MS[int((now - sec) * 1000)]}{_line[3][level]}{text}\n"
    for t in p.targets:
        if level < t.level:
            continue
        t.acquire()
        try:
            t.write(line)
            if level >= _WARNING:
                t.flush()
        except Exception:  # noqa: BLE001 - as Handler.emit: report on stderr, go on
            t.handler.handleError(lg.makeRecord(lg.name, level, "(unknown file)", 0, msg, args, None))
        finally:
            t.release()


def info(lg: Any, text: str) -> None:
    """`lg.info(text)` (a finished text, no %-arguments), from compiled code without the call through
    DirectLogger.info's Python frame: the lines every login writes (log_connections, log_disconnections)."""
    p = _held[0]
    if p is not None and p.holds(lg, _INFO):
        _emit(p, lg, _INFO, text, text, ())
    elif not direct(lg, _INFO, text, (), {}):
        lg.info(text)
