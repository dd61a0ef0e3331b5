"""log_format = json: one object per line, the connection identity in fields of its own."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from pgmux.config import load_config
from pgmux.runtime.logjson import JsonFormatter
from pgmux.runtime.main import LogFiles


def _line(msg: str, *args: object, level: int = logging.INFO, exc: bool = False) -> dict[str, object]:
    info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            info = sys.exc_info()
    rec = logging.LogRecord("pgmux", level, __file__, 1, msg, args, info)
    rec.created, rec.msecs, rec.process = 1796240409.125, 125.0, 4242
    text = JsonFormatter().format(rec)
    assert "\n" not in text and text.isascii()
    out: dict[str, object] = json.loads(text)
    return out


def test_client_and_server_identities_become_fields() -> None:
    d = _line("%s closing because: %s", "C-7 app/alice@10.0.0.5:51012", "client close request")
    assert d["conn"] == "C-7" and d["kind"] == "client" and d["id"] == 7
    assert (d["database"], d["user"], d["addr"]) == ("app", "alice", "10.0.0.5:51012")
    assert d["msg"] == "closing because: client close request" and d["level"] == "LOG" and d["pid"] == 4242
    assert str(d["ts"]).startswith("2026-12-0") and ".125" in str(d["ts"])
    s = _line("%s new connection to server (pid %d)", "S-3 app/alice@db1:5432", 99, level=logging.WARNING)
    assert (s["kind"], s["id"], s["addr"], s["level"]) == ("server", 3, "db1:5432", "WARNING")
    early = _line("%s client protocol error: x", "C-12")
    assert early["conn"] == "C-12" and "database" not in early and early["msg"] == "client protocol error: x"
    plain = _line("listening on %s", "127.0.0.1")
    assert "conn" not in plain and plain["msg"] == "listening on 127.0.0.1"


def test_traceback_and_non_utf8_stay_on_one_line() -> None:
    d = _line("%s internal error", "C-1 db/u@unix", level=logging.ERROR, exc=True)
    assert "ValueError: boom" in str(d["exc"]) and d["level"] == "ERROR"
    odd = b'"pgmux_\xa4"'.decode("utf-8", "surrogateescape")
    assert _line("prepared statement %s does not exist", odd)["msg"] == f"prepared statement {odd} does not exist"


def test_logfile_gets_json_and_a_reload_switches_back(tmp_path: Path) -> None:
    log_path = tmp_path / "pgmux.log"
    ini = tmp_path / "pgbouncer.ini"
    ini.write_text(f"[databases]\nx = host=127.0.0.1\n[pgbouncer]\nlogfile = {log_path}\nlog_format = json\n")
    logs = LogFiles(load_config(str(ini)), quiet=True, verbose=0)
    log = logging.getLogger("pgmux")
    try:
        log.info("%s login attempt: db=x user=u", "C-1 x/u@127.0.0.1:5000")
        logs.tick()
        ini.write_text(f"[databases]\nx = host=127.0.0.1\n[pgbouncer]\nlogfile = {log_path}\n")
        logs.reopen(load_config(str(ini)))
        log.info("%s back to text", "C-1 x/u@127.0.0.1:5000")
        logs.tick()
    finally:
        for h in [*logs.handlers, logs.file]:
            if h is not None:
                h.close()
                h.stream.close()
        log.handlers.clear()  # as other tests (caplog) expect it: no handlers, propagating
        log.propagate = True
        log.setLevel(logging.NOTSET)
    first, second = log_path.read_text().splitlines()
    assert json.loads(first)["user"] == "u" and json.loads(first)["msg"] == "login attempt: db=x user=u"
    assert second.endswith("LOG C-1 x/u@127.0.0.1:5000 back to text")
