"""pgmux's log prefix is PgBouncer's: time with milliseconds and zone, [pid], PgBouncer's level names."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

from pgmux.config import load_config
from pgmux.runtime.main import LogFiles, ZoneFormatter

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


def test_bytes_that_are_not_utf8_are_logged_escaped(tmp_path: Path) -> None:
    """A client's non-UTF-8 bytes reach log lines as surrogate escapes (found by bench/fuzz.py: each such
    line was a "Logging error" on stderr and lost from the log)."""
    ini = tmp_path / "pgbouncer.ini"
    ini.write_text(f"[databases]\nx = host=127.0.0.1\n[pgbouncer]\nlogfile = {tmp_path / 'pgmux.log'}\n")
    logs = LogFiles(load_config(str(ini)), quiet=True, verbose=0)
    try:
        logging.getLogger("pgmux").warning("C-1 pooler error: prepared statement %s does not exist",
                                           b'"pgmux_\xa4"'.decode("utf-8", "surrogateescape"))
        logs.tick()
    finally:
        for h in [*logs.handlers, logs.file]:
            if h is not None:
                h.close()
                h.stream.close()  # (a StreamHandler leaves its stream open)
        pgmux_log = logging.getLogger("pgmux")  # as other tests (caplog) expect it: no handlers, propagating
        pgmux_log.handlers.clear()
        pgmux_log.propagate = True
        pgmux_log.setLevel(logging.NOTSET)
    assert 'prepared statement "pgmux_\\udca4" does not exist' in (tmp_path / "pgmux.log").read_text()
