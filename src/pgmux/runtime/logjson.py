"""log_format = json: one JSON object per line, for log shippers that parse rather than grep.

    {"ts": "2026-12-03T01:02:03.456+0000", "pid": 4242, "level": "LOG", "conn": "C-7", "kind": "client",
     "id": 7, "database": "app", "user": "alice", "addr": "10.0.0.5:51012", "msg": "closing because: ..."}

The connection identity every pgmux line starts with (`C-7 app/alice@10.0.0.5:51012`, `S-3 app/alice@db1:5432`,
or just `C-7` before the startup packet names them) is split into fields of their own and taken off the
message; lines about no connection have only ts, pid, level and msg. Levels are PgBouncer's names, as in
the text format. A traceback goes in "exc". Output is ASCII (json.dumps' escapes), so a client's non-UTF-8
bytes (surrogate escapes) stay on their line as \\udcXX escapes.
"""

from __future__ import annotations

import json
import logging
import re
import time

_LEVELS = {"INFO": "LOG", "CRITICAL": "FATAL"}
_IDENT = re.compile(r"([CS])-(\d+)(?: ([^\s/]*)/([^\s@]*)@(\S+))?(?: |$)")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ct = self.converter(record.created)
        out: dict[str, object] = {
            "ts": f"{time.strftime('%Y-%m-%dT%H:%M:%S', ct)}.{int(record.msecs):03d}{time.strftime('%z', ct)}",
            "pid": record.process,
            "level": _LEVELS.get(record.levelname, record.levelname),
        }
        msg = record.getMessage()
        m = _IDENT.match(msg)
        if m is not None:
            kind, cid, database, user, addr = m.groups()
            out.update(conn=f"{kind}-{cid}", kind="client" if kind == "C" else "server", id=int(cid))
            if database is not None:
                out.update(database=database, user=user, addr=addr)
            msg = msg[m.end():]
        out["msg"] = msg
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)
