"""One console over several worker processes: SHOW replies of every worker made into one (issue 14).

Each worker answers a SHOW with its own rows (RowDescription, DataRows, CommandComplete); these are read
back as text and merged:

- one row per connection (`CONNECTION_SUBJECTS`: clients, servers, sockets, active_sockets): every
  worker's rows, with the worker's index in a last column, `worker`;
- one row per pool or database (`SUMMED_SUBJECTS`: pools, stats, stats_totals, stats_averages, lists):
  rows with equal key columns (the non-numeric ones: database, user, pool_mode, host, ...) become one,
  numbers summed, except mean times (`avg_*_time`, the mean over the workers that have the row) and
  maximum waits (`maxwait*`, the largest).

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
    return _reply(cols, summed(cols, [rs for _, _, rs in parts]))


def _is_number(v: bytes | None) -> bool:
    return v is not None and _NUMBER.fullmatch(v) is not None


def summed(cols: Columns, per_worker: Sequence[Rows]) -> Rows:
    """Rows with equal key columns merged; a column is a key unless every value in it is a number."""
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
            if name.startswith("maxwait"):
                v = max(values)
            elif name.startswith("avg_") and name.endswith("_time"):
                v = sum(values) / len(values)
            else:
                v = sum(values)
            row.append(str(int(v) if is_int else v).encode())
        out.append(row)
    return out
