"""pgmux's log prefix is PgBouncer's: time with milliseconds and zone, [pid], PgBouncer's level names."""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

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


@pytest.fixture
def logs(tmp_path: Path) -> Iterator[LogFiles]:
    ini = tmp_path / "pgbouncer.ini"
    ini.write_text(f"[databases]\nx = host=127.0.0.1\n[pgbouncer]\nlogfile = {tmp_path / 'pgmux.log'}\n")
    files = LogFiles(load_config(str(ini)), quiet=True, verbose=0)
    try:
        yield files
    finally:
        for h in files.handlers:
            h.close()
            h.stream.close()
        pgmux_log = logging.getLogger("pgmux")  # as other tests (caplog) expect it: no handlers, propagating
        pgmux_log.handlers.clear()
        pgmux_log.filters.clear()
        pgmux_log.propagate = True
        pgmux_log.setLevel(logging.NOTSET)


def _lines(logs: LogFiles) -> list[str]:
    logs.tick()
    assert logs.file is not None
    with open(logs.file.stream.name) as f:
        return f.read().splitlines()


def _no_time(line: str) -> str:
    return line.split(" ", 3)[3]  # after the date, time and zone


def test_direct_lines_are_the_stdlib_lines(logs: LogFiles, monkeypatch: pytest.MonkeyPatch) -> None:
    """The usual lines skip the LogRecord (runtime/logline.py): the same text as the stdlib path writes
    (taken here by passing `extra`, which only the stdlib path handles)."""
    log = logging.getLogger("pgmux")
    records = []
    make = logging.Logger.makeRecord
    monkeypatch.setattr(logging.Logger, "makeRecord", lambda *a, **k: records.append(a[3]) or make(*a, **k))
    calls: list[tuple[int, str, tuple[object, ...]]] = [
        (logging.INFO, "%s closing because: %s (age=%.0fs)", ("C-1 db/u@127.0.0.1:5000", "client close request", 1.4)),
        (logging.WARNING, "setsockopt(%d, %d, %d) failed: %s", (6, 18, 1000, "Invalid argument")),
        (logging.ERROR, "plain text, no args: 100%", ()),
        (logging.INFO, "%(a)s and %(b)s", ({"a": 1, "b": 2},)),  # a dict argument: the stdlib's own rule
    ]
    for level, msg, args in calls:
        log.log(level, msg, *args, extra={"x": 1})
        {logging.INFO: log.info, logging.WARNING: log.warning, logging.ERROR: log.error}[level](msg, *args)
    lines = _lines(logs)
    assert len(lines) == 2 * len(calls)
    assert len(records) == len(calls) + 1  # the stdlib ones, and the direct call with a dict argument
    for stdlib, direct in zip(lines[0::2], lines[1::2], strict=True):
        assert _no_time(direct) == _no_time(stdlib)
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} \S+ \[\d+\] (LOG|WARNING|ERROR) .*", direct), direct
    assert _no_time(lines[1]).endswith("LOG C-1 db/u@127.0.0.1:5000 closing because: client close request (age=1s)")
    assert _no_time(lines[-1]).endswith("LOG 1 and 2")


def test_direct_lines_keep_levels_and_flush_warnings_at_once(logs: LogFiles) -> None:
    log = logging.getLogger("pgmux")
    assert logs.file is not None
    log.debug("not at INFO")
    log.info("buffered until the tick")
    with open(logs.file.stream.name) as f:
        assert f.read() == ""
    log.warning("written at once")
    with open(logs.file.stream.name) as f:
        text = f.read()
    assert "LOG buffered until the tick\n" in text and text.endswith(" WARNING written at once\n")
    assert "not at INFO" not in text
    logs.file.setLevel(logging.ERROR)  # a handler's own level holds too
    log.warning("below the handler's level")
    assert not any("below the handler" in ln for ln in _lines(logs))


def test_anything_else_takes_the_stdlib_path(logs: LogFiles, caplog: pytest.LogCaptureFixture) -> None:
    """A filter, another handler or propagation (caplog) sees every record, as before."""
    log = logging.getLogger("pgmux")
    seen: list[str] = []

    def keep(record: logging.LogRecord) -> bool:
        seen.append(record.getMessage())
        return True

    log.addFilter(keep)
    log.info("filtered %d", 1)
    log.removeFilter(keep)
    other = logging.Handler()
    other.emit = lambda record: seen.append("handler: " + record.getMessage())  # type: ignore[method-assign]
    log.addHandler(other)
    log.info("handled %d", 2)
    log.removeHandler(other)
    log.propagate = True
    with caplog.at_level(logging.INFO, logger="pgmux"):
        log.info("captured %d", 3)
    log.propagate = False
    log.error("with a traceback", exc_info=ValueError("bad"))
    assert seen == ["filtered 1", "handler: handled 2"]
    assert [r.getMessage() for r in caplog.records] == ["captured 3"]
    lines = _lines(logs)
    assert [_no_time(ln) for ln in lines[:3]] == [f"[{os.getpid()}] LOG {t}" for t in ("filtered 1", "handled 2",
                                                                                       "captured 3")]
    assert "ValueError: bad" in lines


def test_what_the_direct_path_keeps_gives_way_to_every_change(logs: LogFiles, caplog: pytest.LogCaptureFixture) -> None:
    """runtime/logdirect.py keeps what its checks found between lines (its plan): each change of the logger
    or its handlers after a line, hooked or done on their lists in place, is seen by the next line."""
    from pgmux.runtime import logdirect

    log = logging.getLogger("pgmux")
    assert logs.file is not None
    seen: list[str] = []

    def keep(record: logging.LogRecord) -> bool:
        seen.append(record.getMessage())
        return True

    other = logging.Handler()
    other.emit = lambda record: seen.append("handler: " + record.getMessage())  # type: ignore[method-assign]
    logdirect.info(log, "one")
    logs.file.setLevel(logging.WARNING)  # the handler's level
    logdirect.info(log, "below the handler's level")
    logs.file.setLevel(logging.NOTSET)
    logdirect.info(log, "two")
    log.filters.append(keep)  # in place, no hook: the line's check sees it
    logdirect.info(log, "filtered")
    log.filters.clear()
    logdirect.info(log, "three")
    logs.file.filters.append(keep)  # a handler's filter, in place
    logdirect.info(log, "handler filtered")
    logs.file.filters.clear()
    logging.disable(logging.INFO)  # the isEnabledFor cache, cleared in place
    logdirect.info(log, "disabled")
    logging.disable(logging.NOTSET)
    log.handlers.append(other)  # another handler, in place
    logdirect.info(log, "other handler")
    log.handlers.remove(other)
    log.setLevel(logging.WARNING)
    logdirect.info(log, "below the logger's level")
    log.setLevel(logging.INFO)
    log.propagate = True
    with caplog.at_level(logging.INFO, logger="pgmux"):
        logdirect.info(log, "captured")
    log.propagate = False
    logdirect.info(log, "four")
    lines = [_no_time(ln) for ln in _lines(logs)]
    pid = os.getpid()
    written = ("one", "two", "filtered", "three", "handler filtered", "other handler", "captured", "four")
    assert lines == [f"[{pid}] LOG {t}" for t in written]
    assert seen == ["filtered", "handler filtered", "handler: other handler"]
    assert [r.getMessage() for r in caplog.records] == ["captured"]
