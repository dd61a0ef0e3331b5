"""The admin console's extended protocol (psycopg, asyncpg and JDBC send SHOW through Parse/Bind/
Execute): a batch's state until its Sync, and the binary result formats drivers ask for. Used by
runtime/admin_service.py."""

from __future__ import annotations

import logging
import struct
from typing import Any

from pgmux.admin import render
from pgmux.errors import PgmuxError
from pgmux.protocol import messages as m
from pgmux.protocol.scans import ANY_LENGTH, message_end

log = logging.getLogger("pgmux")

class ExtState:
    __slots__ = ("sql", "failed", "formats", "deferred", "synced")

    def __init__(self) -> None:
        self.sql = ""
        self.failed = False
        self.formats: tuple[int, ...] = ()  # result format codes from Bind: 0 text, 1 binary
        # An Execute of a command answered later (PAUSE, WAIT_CLOSE, SUSPEND): its Sync's ReadyForQuery
        # waits for that answer (AdminService.answer_later), so that the client sees them in order.
        self.deferred = False
        self.synced = False


def _result_formats(bind: bytes) -> tuple[int, ...]:
    """The result-column format codes at the end of a Bind body."""
    pos = bind.index(b"\x00") + 1
    pos = bind.index(b"\x00", pos) + 1
    (n,) = struct.unpack_from("!h", bind, pos)
    pos += 2 + 2 * n
    (n,) = struct.unpack_from("!h", bind, pos)
    pos += 2
    for _ in range(n):
        (size,) = struct.unpack_from("!i", bind, pos)
        pos += 4 + max(size, 0)
    (n,) = struct.unpack_from("!h", bind, pos)
    return struct.unpack_from(f"!{n}h", bind, pos + 2)


def _numeric_binary(text: str) -> bytes:
    """PostgreSQL's binary numeric for the whole numbers the console shows."""
    value = int(text)
    sign = 0x4000 if value < 0 else 0
    value = abs(value)
    groups: list[int] = []
    while value:
        value, rem = divmod(value, 10000)
        groups.insert(0, rem)
    weight = len(groups) - 1 if groups else 0
    while groups and groups[-1] == 0:
        groups.pop()
    return struct.pack(f"!hhHH{len(groups)}h", len(groups), weight, sign, 0, *groups)


_BINARY = {m.OID_INT4: lambda t: struct.pack("!i", int(t)), m.OID_INT8: lambda t: struct.pack("!q", int(t)),
           m.OID_NUMERIC: _numeric_binary}


def binary_rows(head: bytes, rest: bytes, formats: tuple[int, ...]) -> bytes:
    """Re-encode DataRows for the columns a driver asked to get in binary (asyncpg does). Text is
    the same bytes in both formats; integers and numerics are not."""
    (ncols,) = struct.unpack_from("!h", head, 5)
    oids, pos = [], 7
    for _ in range(ncols):
        pos = head.index(b"\x00", pos) + 1
        oids.append(struct.unpack_from("!i", head, pos + 6)[0])
        pos += 18
    binary = [(formats[i] if len(formats) > 1 else formats[0]) == 1 and oids[i] in _BINARY for i in range(ncols)]
    out, pos = [], 0
    while pos < len(rest):
        mtype = rest[pos:pos + 1]
        end = message_end(rest, pos, ANY_LENGTH)
        if mtype != b"D":
            out.append(rest[pos:end])
            pos = end
            continue
        values: list[object] = []
        p = pos + 7
        for i in range(ncols):
            (size,) = struct.unpack_from("!i", rest, p)
            p += 4
            raw = None if size < 0 else rest[p:p + size]
            p += max(size, 0)
            values.append(_BINARY[oids[i]](raw.decode()) if binary[i] and raw is not None else raw)
        out.append(m.data_row(values))
        pos = end
    return b"".join(out)


def parse_or_bind(c: Any, st: Any, ch: str, body: bytes) -> bytes:
    """A console Parse (its text is the command) or Bind (its result formats). A short or inconsistent
    body is the client's error: ERROR 08P01, as PostgreSQL answers it, and the batch skips to Sync."""
    try:
        if ch == "P":
            name_end = body.index(b"\x00")
            st.sql = body[name_end + 1:body.index(b"\x00", name_end + 1)].decode(errors="replace")
            return m.message(m.PARSE_COMPLETE)
        st.formats = _result_formats(body)
        return m.message(m.BIND_COMPLETE)
    except (ValueError, struct.error):
        log.warning("%s client protocol error: malformed %s message", c.prefix, "Parse" if ch == "P" else "Bind")
        return render.render_error(PgmuxError("invalid message format", sqlstate="08P01"))
