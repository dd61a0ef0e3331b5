"""The body of DirectLogger's direct path (runtime/logline.py), compiled (setup.py): with a connection
per transaction (pgbench -C) every login writes two lines, and in pure Python their checks, time
prefix and writes cost about 16,000 instructions a line, a fifth of a login. Same rules, same bytes:
see logline.py."""

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


def direct(lg: Any, level: int, msg: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Write the line of logger `lg` (a DirectLogger) here when nothing but LogFiles' handlers would see
    it; False: take the stdlib path."""
    handlers: list[Any] = lg.handlers
    if kwargs or lg.propagate or lg.filters or not handlers or lg.disabled:
        return False
    enabled = lg._cache.get(level)  # (isEnabledFor()'s, without the call)
    if not (lg.isEnabledFor(level) if enabled is None else enabled):
        return False
    cls, fmt = getattr(lg, "handler_class", None), getattr(lg, "formatter", None)
    if fmt is None or cls is None:  # (not a DirectLogger: info() below was given another logger)
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
    now = _now()
    sec = int(now)
    converter = fmt.converter
    if _line[1] != sec or _line[0] is not converter:
        _new_second(converter, sec)
    # milliseconds as LogRecord.msecs has them
    line = f"{_line[2]}{MS[int((now - sec) * 1000)]}{_line[3][level]}{text}\n"
    for h in handlers:
        if level < h.level:
            continue
        stream: Any = h.stream
        with h.lock:
            try:
                stream.write(line)
                if level >= _WARNING:
                    stream.flush()
            except Exception:  # noqa: BLE001 - as Handler.emit: report on stderr, go on
                h.handleError(lg.makeRecord(lg.name, level, "(unknown file)", 0, msg, args, None))
    return True


def info(lg: Any, text: str) -> None:
    """`lg.info(text)` (a finished text, no %-arguments), from compiled code without the call through
    DirectLogger.info's Python frame: the lines every login writes (log_connections, log_disconnections)."""
    if not direct(lg, _INFO, text, (), {}):
        lg.info(text)
