"""One console over several worker processes: SHOW replies of every worker made into one (issue 14).

Each worker answers a SHOW with its own rows (RowDescription, DataRows, CommandComplete); these are read
back as text and merged:

- one row per connection (`CONNECTION_SUBJECTS`: clients, servers, sockets, active_sockets): every
  worker's rows, with the worker's index in a last column, `worker`;
- one row per pool or database (`SUMMED_SUBJECTS`: pools, stats, stats_totals, stats_averages, lists):
  rows with equal key columns (the non-numeric ones: database, user, pool_mode, host, ...) become one,
  numbers summed, except mean times (`avg_*_time`, the mean over the workers that have the row),
  maximum waits (`maxwait*`, the largest) and what every worker shares (`SHARED_COLUMNS`: SHOW POOLS'
  pool_size, the pooler's limit; SHOW LISTS' `SHARED_LISTS` rows, the configured databases and users:
  the largest);
- one row per name, where most columns are configuration every worker shares (`KEYED_SUBJECTS`:
  databases, users, mem, state, totals): rows with the same first column become one, and only the
  columns `KEYED_SUBJECTS` names are combined (connection counts summed, paused/disabled the largest,
  SHOW STATE's active only when every worker is, paused and suspended when any is, SHOW TOTALS' mean times
  averaged and the rest summed); the other columns are the first worker's.

Pure: bytes in, bytes out.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence
from typing import Final

from pgmux.protocol import messages as m

CONNECTION_SUBJECTS: Final = frozenset({"clients", "servers", "sockets", "active_sockets"})
SUMMED_SUBJECTS: Final = frozenset({"pools", "stats", "stats_totals", "stats_averages", "lists"})
# subject -> {column: how}: "sum", "max", "mean", "all-yes", "any-yes", or "totals" (mean for an avg_*_time
# row, else sum); a column not named keeps the first worker's value.
KEYED_SUBJECTS: Final[dict[str, dict[str, str]]] = {
    "databases": {"current_connections": "sum", "current_client_connections": "sum", "paused": "max",
                  "disabled": "max"},
    "users": {"current_connections": "sum", "current_client_connections": "sum"},
    "mem": {"used": "sum", "free": "sum", "memtotal": "sum", "size": "mean"},
    "state": {"value": "state"},
    "totals": {"value": "totals"},
}
SHARED_COLUMNS: Final = frozenset({"pool_size"})  # summed subjects: the same limit in every worker
SHARED_LISTS: Final = frozenset({b"databases", b"users"})  # SHOW LISTS rows counting configuration
OID_TEXT: Final = 25
_NUMBER = re.compile(rb"-?[0-9]+(\.[0-9]+)?")

Columns = list[tuple[str, int]]
Rows = list[list[bytes | None]]


def split_reply(data: bytes) -> tuple[Columns, Rows]:
    """The columns (name, type oid) and rows of one SHOW reply; other messages are skipped."""
    cols: Columns = []
    rows: Rows = []
    pos = 0
    while pos + 5 <= len(data):
        mtype = data[pos:pos + 1]
        (length,) = struct.unpack_from("!i", data, pos + 1)
        body = data[pos + 5:pos + 1 + length]
        pos += 1 + length
        if mtype == m.ROW_DESCRIPTION:
            (n,) = struct.unpack_from("!h", body, 0)
            at = 2
            for _ in range(n):
                end = body.index(b"\x00", at)
                name = body[at:end].decode()
                (oid,) = struct.unpack_from("!i", body, end + 7)
                cols.append((name, oid))
                at = end + 19
        elif mtype == m.DATA_ROW:
            rows.append(m.data_row_values(body))
    return cols, rows


def _reply(cols: Columns, rows: Rows) -> bytes:
    return (m.row_description(cols) + b"".join(m.data_row(r) for r in rows)
            + m.command_complete("SHOW"))


def merge(subject: str, replies: Sequence[tuple[int, bytes]]) -> bytes:
    """(worker index, its reply) for each worker that answered -> one reply."""
    parts = [(w, *split_reply(data)) for w, data in replies]
    cols = next((c for _, c, _ in parts if c), [])
    if subject in CONNECTION_SUBJECTS:
        rows = [row + [str(w).encode()] for w, _, rs in parts for row in rs]
        return _reply(cols + [("worker", OID_TEXT)], rows)
    if subject in KEYED_SUBJECTS:
        return _reply(cols, keyed(KEYED_SUBJECTS[subject], cols, [rs for _, _, rs in parts]))
    return _reply(cols, summed(cols, [rs for _, _, rs in parts], SHARED_LISTS if subject == "lists" else frozenset()))


def keyed(how: dict[str, str], cols: Columns, per_worker: Sequence[Rows]) -> Rows:
    """Rows with the same first column merged, in the order they first appear; see KEYED_SUBJECTS."""
    groups: dict[bytes | None, Rows] = {}
    for rows in per_worker:
        for r in rows:
            groups.setdefault(r[0], []).append(r)
    out: Rows = []
    for key, rows in groups.items():
        row = list(rows[0])
        for i, (name, _) in enumerate(cols):
            rule = how.get(name)
            if rule is not None:
                row[i] = _combine(rule, key, [r[i] for r in rows])
        out.append(row)
    return out


def _combine(rule: str, key: bytes | None, values: list[bytes | None]) -> bytes | None:
    if rule == "state":  # SHOW STATE: active when every worker is; paused, suspended when any is
        want_all = key == b"active"
        yes = all(v == b"yes" for v in values) if want_all else any(v == b"yes" for v in values)
        return b"yes" if yes else b"no"
    if not all(_is_number(v) for v in values):
        return values[0]
    nums = [float(v or 0) for v in values]
    is_int = all(b"." not in (v or b"") for v in values)
    if rule == "totals":
        rule = "mean" if key is not None and key.startswith(b"avg_") and key.endswith(b"_time") else "sum"
    v = max(nums) if rule == "max" else sum(nums) / len(nums) if rule == "mean" else sum(nums)
    return str(int(v) if is_int else v).encode()


def _is_number(v: bytes | None) -> bool:
    return v is not None and _NUMBER.fullmatch(v) is not None


def summed(cols: Columns, per_worker: Sequence[Rows], shared: frozenset[bytes] = frozenset()) -> Rows:
    """Rows with equal key columns merged; a column is a key unless every value in it is a number. Rows
    whose first column is in `shared` take the largest value (SHOW LISTS' configuration counts)."""
    all_rows = [r for rows in per_worker for r in rows]
    numeric = [bool(all_rows) and all(_is_number(r[i]) for r in all_rows) for i in range(len(cols))]
    merged: dict[tuple[bytes | None, ...], list[Rows]] = {}
    for rows in per_worker:
        for r in rows:
            key = tuple(v for v, num in zip(r, numeric, strict=True) if not num)
            merged.setdefault(key, []).append([r])
    out: Rows = []
    for group in merged.values():
        rows = [g[0] for g in group]
        first = rows[0]
        row: list[bytes | None] = []
        for i, (name, _) in enumerate(cols):
            if not numeric[i]:
                row.append(first[i])
                continue
            values = [float(r[i] or 0) for r in rows]
            is_int = all(b"." not in (r[i] or b"") for r in rows)
            if name.startswith("maxwait") or name in SHARED_COLUMNS or first[0] in shared:
                v = max(values)
            elif name.startswith("avg_") and name.endswith("_time"):
                v = sum(values) / len(values)
            else:
                v = sum(values)
            row.append(str(int(v) if is_int else v).encode())
        out.append(row)
    return out
