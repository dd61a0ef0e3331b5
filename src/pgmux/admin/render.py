"""Turn admin results into the bytes PgBouncer's console sends.

Every function returns complete protocol messages up to and including CommandComplete (or the
ErrorResponse); the console session appends ReadyForQuery, as it does after any simple query.
Values are sent in text format exactly as PgBouncer prints them: integers in decimal, None as SQL
NULL, timestamps as "YYYY-MM-DD HH:MM:SS TZ" in local time, SHOW USERS' overrides padded to 9.
"""

from __future__ import annotations

import dataclasses
import functools
import time
import types
import typing
from collections.abc import Callable, Sequence

from pgmux.admin.commands import FAKE_PARAMS
from pgmux.admin.config_show import config_rows
from pgmux.admin.rows import (
    INT4,
    INT8,
    NUMERIC,
    PADDED_INT,
    TEXT,
    TIMESTAMP,
    ColumnType,
    VersionRow,
)
from pgmux.errors import PgmuxError
from pgmux.protocol.messages import (
    NOTICE_RESPONSE,
    OID_TEXT,
    command_complete,
    cstr,
    data_row,
    error_response,
    message,
    row_description,
)

__all__ = [
    "config_rows", "format_time", "render_error", "render_fake_show", "render_help", "render_notice", "render_ok",
    "render_rows", "render_set_ignored", "render_version", "row_columns",
]

# The text of PgBouncer 1.25's SHOW HELP, sent as the DETAIL of a NOTICE.
HELP_DETAIL = "\n\t" + "\n\t".join([
    "SHOW HELP|CONFIG|DATABASES|POOLS|CLIENTS|SERVERS|USERS|VERSION",
    "SHOW PEERS|PEER_POOLS",
    "SHOW FDS|SOCKETS|ACTIVE_SOCKETS|LISTS|MEM|STATE",
    "SHOW DNS_HOSTS|DNS_ZONES",
    "SHOW STATS|STATS_TOTALS|STATS_AVERAGES|TOTALS",
    "SET key = arg",
    "RELOAD",
    "PAUSE [<db>]",
    "RESUME [<db>]",
    "DISABLE <db>",
    "ENABLE <db>",
    "RECONNECT [<db>]",
    "KILL [<db>]",
    "KILL_CLIENT <client_id>",
    "SUSPEND",
    "SHUTDOWN",
    "SHUTDOWN WAIT_FOR_SERVERS|WAIT_FOR_CLIENTS",
    "WAIT_CLOSE [<db>]",
    "SHOW HOSTS|ADVICE",
    "BAN <db> <host:port>",
    "UNBAN <db> <host:port>",
    "RESTART",
])

Encoder = Callable[[object], "str | None"]


def format_time(epoch_seconds: float) -> str:
    """A timestamp as PgBouncer's format_time_s prints it (local time, zone abbreviation)."""
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(epoch_seconds))


def _integer(v: object) -> str | None:
    # int() also turns a bool flag from the runtime into 1/0, as PgBouncer's int columns show it,
    # and truncates a float (a wait time computed in seconds) the way its C casts do.
    if v is None:
        return None
    if isinstance(v, int | float):
        return str(int(v))
    raise TypeError(f"integer column got {type(v).__name__}")


def _text(v: object) -> str | None:
    return None if v is None else str(v)


def _timestamp(v: object) -> str | None:
    if v is None:
        return None
    if isinstance(v, int | float):
        return format_time(v)
    raise TypeError(f"timestamp column got {type(v).__name__}")


def _padded(v: object) -> str:
    if v is None:
        return ""
    if isinstance(v, int):
        return f"{v!s:>9}"  # pool_size = auto (config/values.AUTO) prints as `auto`
    raise TypeError(f"padded integer column got {type(v).__name__}")


_ENCODERS: dict[ColumnType, Encoder] = {
    INT4: _integer, INT8: _integer, NUMERIC: _integer,
    TEXT: _text, TIMESTAMP: _timestamp, PADDED_INT: _padded,
}


def _column_type(hint: object) -> ColumnType:
    if typing.get_origin(hint) is typing.Annotated:
        return typing.cast(ColumnType, typing.get_args(hint)[1])
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        (inner,) = [a for a in typing.get_args(hint) if a is not type(None)]
        return _column_type(inner)
    # Unannotated fields get plain defaults, so a new row class needs no ceremony.
    if hint is int:
        return INT8
    if hint is float:
        return NUMERIC
    if hint is str:
        return TEXT
    raise TypeError(f"no column type for {hint!r}")


@functools.cache
def row_columns(row_type: type) -> tuple[tuple[str, ColumnType], ...]:
    """(column name, column type) of a row class, in order."""
    hints = typing.get_type_hints(row_type, include_extras=True)
    return tuple((f.name, _column_type(hints[f.name])) for f in dataclasses.fields(row_type))


@functools.cache
def _header(row_type: type) -> tuple[bytes, tuple[tuple[str, Encoder], ...]]:
    cols = row_columns(row_type)
    desc = row_description((name, ct.oid) for name, ct in cols)
    return desc, tuple((name, _ENCODERS[ct]) for name, ct in cols)


def render_rows(rows: Sequence[object], row_type: type) -> bytes:
    """RowDescription + one DataRow per row + CommandComplete('SHOW')."""
    desc, encoders = _header(row_type)
    parts = [desc]
    for row in rows:
        if type(row) is not row_type:
            raise TypeError(f"expected {row_type.__name__}, got {type(row).__name__}")
        parts.append(data_row([enc(getattr(row, name)) for name, enc in encoders]))
    parts.append(command_complete("SHOW"))
    return b"".join(parts)


def render_ok(tag: str) -> bytes:
    """Success of a command without a result set; the tag is the command's name (AdminCommand.tag)."""
    return command_complete(tag)


def _notice(text: str, detail: str | None = None, severity: str = "NOTICE", code: str = "00000") -> bytes:
    # PgBouncer's notices carry only S, C, M (and D): built here to match them byte for byte.
    body = b"S" + cstr(severity) + b"C" + cstr(code) + b"M" + cstr(text)
    if detail is not None:
        body += b"D" + cstr(detail)
    return message(NOTICE_RESPONSE, body + b"\x00")


def render_notice(text: str, severity: str = "NOTICE") -> bytes:
    """A NoticeResponse ahead of a command's result (a WARNING gets SQLSTATE 01000, as in PostgreSQL)."""
    return _notice(text, severity=severity, code="01000" if severity == "WARNING" else "00000")


def render_help() -> bytes:
    return _notice("Console usage", HELP_DETAIL) + command_complete("SHOW")


def render_version(version: str) -> bytes:
    """SHOW VERSION. Monitoring parses 'PgBouncer X.Y.Z' from this; pass such a string."""
    return render_rows([VersionRow(version)], VersionRow)


def render_fake_show(name: str) -> bytes:
    """SHOW client_encoding and the other FAKE_PARAMS: one text column named after the parameter."""
    key = name.lower()
    return row_description([(key, OID_TEXT)]) + data_row([FAKE_PARAMS[key]]) + command_complete("SHOW")


def render_set_ignored() -> bytes:
    """SET of a FAKE_PARAMS name: accepted and ignored."""
    return _notice("SET ignored") + command_complete("SET")


def render_error(err: PgmuxError) -> bytes:
    return error_response(err.severity, err.sqlstate, err.message, detail=err.detail, hint=err.hint)
