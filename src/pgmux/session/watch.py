"""Session effects on the pipeline's way (session/pipeline.py): what travels through the extended
protocol (a Parse's statement bound to a portal and run by an Execute), and the SQL-level prepared
statements (`EXECUTE p(1)`, session/sqlprepared.py) a statement names, brought to its server first.

pgmux's own PREPARE/DEALLOCATE run through one named statement and portal, so that neither the
client's unnamed statement nor its portals are touched, even in the middle of its batch. Each step
closes both (a portal outlives its statement's Close), and each run starts by closing them too, in
case an earlier run failed half-way.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from pgmux.protocol import messages as m
from pgmux.protocol.extended import build_close_statement, build_parse, build_target
from pgmux.session import sqlprepared
from pgmux.session.effects import Effect, SetConfigBound, Unknown
from pgmux.session.entries import BIND, EXECUTE, PARSE, SWALLOWED_CLOSE, SYNC, Entry
from pgmux.session.tracking import keep, pin_refused, query_effects

if TYPE_CHECKING:
    from pgmux.session.client import ClientSession
    from pgmux.session.server import ServerSession

_P, _B, _S = (ord(c) for c in "PBS")
_LEN = struct.Struct("!i")
_I16 = struct.Struct("!h")
_CLOSE_HELPER = build_close_statement(sqlprepared.HELPER) + build_target(m.CLOSE, "P", sqlprepared.HELPER)
_CLOSE_HELPER_ENTRIES: tuple[Entry, ...] = (SWALLOWED_CLOSE, SWALLOWED_CLOSE)
_BIND_HELPER = m.message(m.BIND, m.cstr(sqlprepared.HELPER) * 2 + struct.pack("!hhh", 0, 0, 0))
_EXECUTE_HELPER = m.message(m.EXECUTE, m.cstr(sqlprepared.HELPER) + struct.pack("!i", 0))
_SYNC = m.message(m.SYNC)


def note_extended(c: ClientSession, t: int, raw: bytes, s: int, total: int) -> tuple[Effect, ...] | None:
    """Session effects that travel through the extended protocol: a Parse's statement (a SET, or
    `SELECT set_config($1, $2, false)`, or `pg_advisory_lock($1)`), bound to a portal by a Bind, run by
    an Execute. Names are kept as the client's bytes. Returns the effects an Execute will have."""
    end = s + total
    if t == _P:
        ne = raw.find(b"\x00", s + 5, end)
        qe = raw.find(b"\x00", ne + 1, end) if ne >= 0 else -1
        if qe >= 0:
            name = raw[s + 5:ne]
            done = query_effects(raw[ne + 1:qe + 1])
            c.stmt_fx = keep(c.stmt_fx, name, done)
    elif t == _B:
        pe = raw.find(b"\x00", s + 5, end)
        ne = raw.find(b"\x00", pe + 1, end) if pe >= 0 else -1
        if ne >= 0:
            bound = c.stmt_fx.get(raw[pe + 1:ne]) if c.stmt_fx else None
            if bound and any(isinstance(e, SetConfigBound) for e in bound):
                bound = _with_values(bound, raw, ne + 1, end)
            c.portal_fx = keep(c.portal_fx, raw[s + 5:pe], bound)
    else:
        pe = raw.find(b"\x00", s + 5, end)
        return c.portal_fx.get(raw[s + 5:pe]) if pe >= 0 and c.portal_fx else None
    return None


def prelude_for(c: ClientSession, server: ServerSession, q: deque[Entry], raw: bytes, t: int, s: int,
                total: int) -> list[bytes | memoryview] | None:
    """Before a Parse, or a Bind or Describe of a statement, whose text names SQL-level prepared
    statements (`EXECUTE p(1)` through the extended protocol): those brought to this server."""
    if not (c.sql or server.sql):
        return None
    end = s + total
    if t == _P:
        name = raw[s + 5:raw.find(b"\x00", s + 5, end)]
    elif t == _B:
        pe = raw.find(b"\x00", s + 5, end)
        name = raw[pe + 1:raw.find(b"\x00", pe + 1, end)]
    elif raw[s + 5] == _S:
        name = raw[s + 6:end - 1]
    else:
        return None
    done = c.stmt_fx.get(name) if c.stmt_fx else None
    return prelude(c, server, q, done, sync=False) if done else None


def prelude(c: ClientSession, server: ServerSession, q: deque[Entry], done: tuple[Effect, ...],
            sync: bool) -> list[bytes | memoryview]:
    """The messages that bring `server` to the client's view of the SQL-level prepared statements
    `done` names (session/sqlprepared.py), their replies queued to be swallowed. Before a simple Query
    they end with a Sync of their own, whose ReadyForQuery is swallowed too: after an error the
    server would otherwise ignore the Query and never answer it. An error is passed on to the client."""
    if not (c.sql or server.sql) or server.tx_status == b"E":  # in a failed transaction all fails anyway
        return []
    wanted = sqlprepared.names(done)
    if not wanted:
        return []
    steps = sqlprepared.plan(c.sql, server.sql, wanted)
    steps += sqlprepared.evict(c.sql, server.sql, server.max_prepared or sqlprepared.DEFAULT_CAP)
    if not steps:
        return []
    out: list[bytes | memoryview] = [_CLOSE_HELPER]
    q.extend(_CLOSE_HELPER_ENTRIES)
    for step in steps:
        out += [build_parse(sqlprepared.HELPER, step[0]), _BIND_HELPER, _EXECUTE_HELPER, _CLOSE_HELPER]
        q.append(Entry(PARSE, True))
        q.append(Entry(BIND, True))
        q.append(Entry(EXECUTE, True, None, _undo_step(server.sql, step)))
        q.extend(_CLOSE_HELPER_ENTRIES)
    if sync:
        out.append(_SYNC)
        q.append(Entry(SYNC, True))
        server.owed += 1
    return out


def _undo_step(held: dict[str, str], step: sqlprepared.Step) -> Callable[[], None]:
    return lambda: sqlprepared.undo(held, step)


def refuse_parse(c: ClientSession, raw: bytes, s: int, total: int) -> None:
    """pin_mode = refuse: a Parse of a statement that would pin fails, as its Query would."""
    name = raw[s + 5:raw.find(b"\x00", s + 5, s + total)]
    err = pin_refused(c, c.stmt_fx.get(name, ()) if c.stmt_fx else ())
    if err is not None:
        c.stmt_fx = keep(c.stmt_fx, name, None)
        raise err


def _with_values(bound: tuple[Effect, ...], raw: bytes, pos: int, end: int) -> tuple[Effect, ...]:
    """A statement's effects with its parameterised set_config calls resolved by this Bind's values
    (read as text: a text parameter's binary format is the same bytes). Those set_config calls that
    stay unreadable, or are local to their transaction, are left out, as for a Query."""
    values: list[str | None] = []
    try:
        (nfmt,) = _I16.unpack_from(raw, pos)
        pos += 2 + 2 * nfmt
        (count,) = _I16.unpack_from(raw, pos)
        pos += 2
        for _ in range(count):
            (size,) = _LEN.unpack_from(raw, pos)
            pos += 4
            values.append(None if size < 0 else raw[pos:pos + size].decode("utf-8", "surrogateescape"))
            pos += max(size, 0)
    except struct.error:
        values = []
    if pos > end:
        values = []
    out = [e.resolve(values) if isinstance(e, SetConfigBound) else e for e in bound]
    return tuple(e for e in out if not isinstance(e, Unknown) and not getattr(e, "local", False))
