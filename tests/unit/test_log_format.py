"""pgmux's log prefix is PgBouncer's: time with milliseconds and zone, [pid], PgBouncer's level names."""

from __future__ import annotations

import logging
import re
import time

from pgmux.runtime.main import ZoneFormatter

FORMAT = "%(asctime)s [%(process)d] %(pglevel)s %(message)s"


def _record(level: int, created: float) -> logging.LogRecord:
    rec = logging.LogRecord("pgmux", level, __file__, 1, "C-1 db/u@host: hello %s", ("x",), None)
    rec.created, rec.msecs, rec.process = created, (created % 1) * 1000, 4242
    return rec


def test_prefix_has_zone_pid_and_pgbouncer_levels() -> None:
    fmt = ZoneFormatter(FORMAT)
    fmt.converter = time.gmtime
    line = fmt.format(_record(logging.INFO, 1796240409.125))
    assert re.fullmatch(r"2026-12-02 19:40:09\.125 (UTC|GMT) \[4242\] LOG C-1 db/u@host: hello x", line), line
    assert " [4242] WARNING " in fmt.format(_record(logging.WARNING, 0.5))
    assert " [4242] ERROR " in fmt.format(_record(logging.ERROR, 0.5))
    assert " [4242] FATAL " in fmt.format(_record(logging.CRITICAL, 0.5))
    assert fmt.format(_record(logging.DEBUG, 0.5)).startswith("1970-01-01 00:00:00.500 ")


def test_local_zone_is_named() -> None:
    fmt = ZoneFormatter(FORMAT)
    now = time.time()
    assert fmt.format(_record(logging.INFO, now)).split()[2] == time.strftime("%Z", time.localtime(now))
