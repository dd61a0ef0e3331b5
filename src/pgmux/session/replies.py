"""Server -> client while `server.queue` holds something (session/pipeline.py says why it does): the
server's replies as the client must see them, swallowed ones left out, pgmux's own answers (SYNTH
entries) put in their place, and each reply matched to the request it ends (session/entries.py)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from pgmux.protocol import messages as m
from pgmux.session.effects import DiscardAll, Effect, ResetAll, ResetParam
from pgmux.session.entries import AT_Z, DESCRIBE, ENDS, EXECUTE, FAIL, PARSE, QUERY, SYNC, SYNTH, Described, Entry
from pgmux.session.params import canon
from pgmux.session.prepared import shape_of
from pgmux.session.tracking import executed, note_end, own_params, query_done

if TYPE_CHECKING:
    from pgmux.session.client import ClientSession
    from pgmux.session.server import ServerSession

_Z, _ERR, _PSTATUS, _G, _CC, _EMPTY = (ord(c) for c in "ZESGCI")
_PDESC, _ROWDESC, _NODATA = (ord(c) for c in "tTn")
_ROLLBACK = b"ROLLBACK\x00"
_COMMIT = b"COMMIT\x00"
_SQL_TAGS = (b"PREPARE\x00", b"DEALLOCATE\x00", b"DEALLOCATE ALL\x00")  # session/sqlprepared.py


def to_client(server: ServerSession, data: bytes, msgs: list[tuple[int, int, int]], first: int,
              end: int) -> tuple[list[bytes | memoryview], int, int]:
    """The server's replies in data[first:end] as the client must see them: swallowed ones left out,
    pgmux's own answers put in their place. Returns (parts, last ReadyForQuery status byte or 0, its
    offset) and keeps server.owed, copy_in, parameters and errors as the plain relay does."""
    q = server.queue
    c = server.client
    assert c is not None
    mv = memoryview(data)
    parts: list[bytes | memoryview] = []
    run = first
    z = zpos = 0
    instead: bytes | None = None
    for t, s, total in msgs:
        if s < first:
            continue
        swallow = False
        if t == _Z:
            z = data[s + 5]
            zpos = s
            swallow = _ready(server, c, q, z)
        elif t == _PSTATUS:
            instead = _status(server, c, q, data, s, total)
            swallow = instead is not None
        elif t == _ERR:
            swallow = _error(server, c, q, data, s, total)
        elif t == _G:
            server.copy_in = True
        elif q:
            swallow = _reply(server, c, q, t, mv, s, total)
        if swallow:
            if run < s:
                parts.append(mv[run:s])
            run = s + total
            if instead:
                parts.append(instead)
                instead = None
        if q and q[0].kind == SYNTH:
            if run < s + total:
                parts.append(mv[run:s + total])
            run = s + total
            while q and q[0].kind == SYNTH:
                msg = q.popleft().payload
                assert msg is not None
                parts.append(msg)
    if z and z != 73 and server.owed <= 0 and server.pool.mode == "statement" and zpos >= run:
        end = zpos  # withhold ReadyForQuery: BEGIN itself must fail, as in PgBouncer
    if run < end:
        parts.append(mv[run:end])
    return parts, z, zpos


def _ready(server: ServerSession, c: ClientSession, q: deque[Entry], z: int) -> bool:
    """A ReadyForQuery: it ends the first Sync or Query queued; what is before that was skipped.
    Returns whether the client must not see it."""
    server.owed -= 1
    server.copy_in = False
    while q:
        e = q.popleft()
        if e.kind in AT_Z:
            if e.swallow:  # the Sync that ended pgmux's own PREPAREs (see watch.prelude)
                c.q_error = False
                return True
            if e.payload is not None or c.tx_effects:  # a watched Query, or the end of a transaction
                query_done(c, server, e.payload if e.payload is not None and e.payload is not FAIL else (),
                           bytes((z,)))
            return False
        if e.undo is not None:  # unanswered before ReadyForQuery: the server skipped it
            e.undo()
    return False


def _status(server: ServerSession, c: ClientSession, q: deque[Entry], data: bytes, s: int,
            total: int) -> bytes | None:
    """A ParameterStatus. After a watched statement that may RESET: PostgreSQL reports changed
    parameters just before ReadyForQuery; after an Execute, its effects wait in tx_effects by then.
    Returns what the client gets instead (b"" for nothing), or None for the message as is."""
    head = q[0] if q else None
    fx = head.payload if head is not None and head.payload and head.kind in (QUERY, EXECUTE) \
        and head.payload is not FAIL else c.tx_effects
    if fx:
        return _reset_status(c, server, fx, data, s, total)
    server._param(data, s, total)
    return None


def _error(server: ServerSession, c: ClientSession, q: deque[Entry], data: bytes, s: int, total: int) -> bool:
    """An ErrorResponse: the failed request and what the server now skips up to the next Sync are
    dropped (their undo run). Swallowed when pgmux gave the client its own error already."""
    server._error(data, s, total)
    swallow = bool(q) and q[0].payload is FAIL
    if (q and q[0].kind == QUERY and q[0].payload is not None) or c.tx_effects:
        c.q_error = True
    if q and q[0].kind != QUERY:  # (a Query's own error ends at its ReadyForQuery)
        # The failed request, and all the server now skips up to the next Sync: Queries and
        # FunctionCalls too, which get no ReadyForQuery then. Undone last to first.
        undo: list[Callable[[], Any]] = []
        while q and q[0].kind != SYNC:
            e = q.popleft()
            if e.kind == QUERY:
                server.owed -= 1
            if e.undo is not None:
                undo.append(e.undo)
        while undo:
            undo.pop()()
        # No Sync in flight: what the client sends next is skipped too. The Syncs of messages held
        # for a shape check (shapecheck.check) count as owed, but the server has not got them: a
        # check sent behind the failed request, or failing itself, is popped here, and the held
        # messages then go to a server that skips them, their Queries unanswered.
        if server.owed <= 0 or not q and server.held is not None:
            server.skipping = True
    return swallow


def _reply(server: ServerSession, c: ClientSession, q: deque[Entry], t: int, mv: memoryview, s: int,
           total: int) -> bool:
    """Any other reply with requests queued: the shape a Describe gives, the tags that tell what a
    watched statement did, and the end of the first request's reply. Returns whether to swallow it."""
    e = q[0]
    swallow = False
    if e.kind == DESCRIBE and e.payload is not None:  # a statement's shape (see Described)
        if t == _PDESC:
            swallow = e.swallow
        elif t == _ROWDESC or t == _NODATA:
            _described(server, e.payload, bytes(mv[s:s + total]))
    if t == _CC and (c.tx_effects or e.payload is not None):
        tag = mv[s + 5:s + total]
        if tag == _ROLLBACK or tag == _COMMIT:  # what a transaction-ending statement did
            note_end(c, tag == _ROLLBACK)
        elif e.kind == QUERY and e.payload is not None and tag in _SQL_TAGS:
            c.q_sql += 1  # a PREPARE or DEALLOCATE ran: recorded at the query's end (tracking.py)
    ends = ENDS.get(e.kind)
    if ends is not None and t in ends:
        q.popleft()
        swallow = e.swallow
        if e.kind == PARSE and e.payload is not None:  # some server parses it (session/localparse.py)
            server.registry.parsed(e.payload)
        # A portal suspended by the Execute's row limit has run its effects for the rows it
        # returned: asyncpg's fetchval() executes `SELECT set_config(...)` with a limit of 1.
        if e.kind == EXECUTE and e.payload is not None and e.payload is not FAIL and t != _EMPTY:
            executed(c, server, e.payload)
    return swallow


def _described(server: ServerSession, d: Described, msg: bytes) -> None:
    shape = shape_of(msg)
    d.sst.described(d.name, shape)
    if d.stmts is not None and d.stmt is not None:
        d.stmts.described(d.client_name, d.stmt, shape)
    if d.check:
        server.checked = d.name
        server.release = True


def _reset_status(c: ClientSession, server: ServerSession, done: Sequence[Effect], data: bytes, s: int,
                  total: int) -> bytes | None:
    """A ParameterStatus while a statement with session effects runs. RESET, RESET ALL and DISCARD ALL
    bring a reported parameter back to the session's default, which is the client's startup value
    directly but the pooled server's own default here: when the server reports its default for a
    parameter the client started with another value, the client must see its own (or nothing, if
    that is what it had). Returns the message to send instead (b"" for none), or None for as is.
    The server keeps its value; the parameter sync sets the client's on the next server it gets."""
    before = c.params.get(canon(bytes(data[s + 5:data.index(b"\x00", s + 5)]).decode(errors="replace")))
    name, value = server._param(data, s, total)
    initial = c.initial.get(name)
    default = (c.pool.server_params or {}).get(name) if c.pool is not None else None
    if initial is None or value == initial or value != default:
        return None
    if not any(isinstance(e, (ResetAll, DiscardAll)) or (isinstance(e, ResetParam) and e.name == name)
               for e in done):
        return None
    own_params(c)[name] = initial
    c.sig = None
    return b"" if before == initial else m.parameter_status(name, initial)
