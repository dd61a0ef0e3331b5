"""What a server still owes the client, when pgmux rewrites the client's extended-protocol messages.

With protocol-level prepared statements tracked (transaction and statement pooling,
`max_prepared_statements` > 0), the messages a server gets are not the client's: a Parse the server
already has is answered by pgmux (ParseComplete), a Parse is injected before a Bind or Describe of a
statement the server lacks (its ParseComplete swallowed), Close of a statement is answered locally,
and evictions send a Close whose CloseComplete is swallowed. The client must still see exactly the
replies PostgreSQL would have sent, in order.

So each server keeps a FIFO (`server.queue`) of the requests it has been sent and not yet answered,
each marked forward or swallow, with pgmux's own answers (`SYNTH`) queued between them: a synthesized
reply goes out once every reply before it has. PgDog's `backend/protocol/state.rs` keeps the same
kind of queue. The queue exists only while it holds something: with it empty, both relays stay on
their header-only paths. Replies to requests sent while the queue was empty (simple queries) are
counted by `server.owed`; when the queue starts, one placeholder per owed ReadyForQuery goes first.

On an ErrorResponse the server skips everything up to the next Sync, so the queued requests before
that Sync are dropped; those that had recorded a statement optimistically undo it (a failed Parse
leaves no statement, on the server or for the client).

Here: `to_server`, the client's messages as the server gets them, one named function per message type
(`_parse`, `_bind`, `_describe`, `_close`, ...) on one `_Batch`. Beside it: session/entries.py (the
queue's `Entry`), session/replies.py (`to_client`, the replies in the client's order),
session/fastpath.py (the two cheap ways through while nothing is queued), session/watch.py (session
effects through the extended protocol, SQL-level prepared statements brought to a server first).
"""

from __future__ import annotations

import logging
import struct
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pgmux.errors import CachedPlanChanged, MissingPreparedStatement, PgmuxError, ProtocolViolation
from pgmux.protocol import messages as m
from pgmux.protocol.codec import MAX_INSPECTED, scan
from pgmux.protocol.extended import (
    build_close_statement,
    build_parse,
    read_parse,
    read_target,
    rename_parse,
    rename_target,
)
from pgmux.session import sqlprepared
from pgmux.session.effects import RollbackToSavepoint, TxEnd
from pgmux.session.entries import (
    AT_Z,
    BIND,
    CLOSE,
    DESCRIBE,
    EXECUTE,
    FAIL,
    PARSE,
    PLACEHOLDER,
    QUERY,
    REFUSED,
    SWALLOWED_CLOSE,
    SYNC,
    SYNTH,
    Described,
    Entry,
    Undo,
    batch_open,
    drop_last_syncs,
    forget,
    query_in_batch,
    still_failed,
    undo_close,
    undo_parse,
    unset_unnamed,
)
from pgmux.session.fastpath import as_is, rebound
from pgmux.session.prepared import NAME_PREFIX, ClientStatements, ServerStatements, Statement
from pgmux.session.replies import to_client
from pgmux.session.shapecheck import check, unchecked
from pgmux.session.statements import effects
from pgmux.session.tracking import pin_refused, query_effects
from pgmux.session.watch import note_extended, prelude, prelude_for, refuse_parse

if TYPE_CHECKING:
    from pgmux.session.client import ClientSession
    from pgmux.session.server import ServerSession

# What session/client.py and session/server.py take from here (the rest moved beside it: see above).
__all__ = ["Entry", "release", "server_statements", "to_client", "to_server"]

log = logging.getLogger("pgmux")

_P, _B, _D, _E, _C, _S, _Q, _F, _H = (ord(c) for c in "PBDECSQFH")
_I16 = struct.Struct("!h")
_BIND_HDR = struct.Struct("!Bi")
_DECODED = frozenset((_P, _B, _D, _C, _Q))  # what to_server reads beyond the header (see _malformed)
_TARGETS = frozenset(b"SP")
_NAMES = {_P: "Parse", _B: "Bind", _D: "Describe", _C: "Close", _Q: "Query"}
_PLAIN = {_P: PARSE, _B: BIND, _D: DESCRIBE, _E: EXECUTE, _C: CLOSE, _S: SYNC, _Q: QUERY, _F: QUERY}
_PARSE_COMPLETE = m.message(m.PARSE_COMPLETE)
_CLOSE_COMPLETE = m.message(m.CLOSE_COMPLETE)
_FLUSH = m.message(m.FLUSH)
# The Parse (or Query) that makes the server fail where pgmux answered an error itself (entries.FAIL).
_FAIL_SQL = "pgmux: failing on purpose, the client got an error from pgmux for its statement"
_FAIL_PARSE = build_parse(sqlprepared.HELPER, _FAIL_SQL)
_FAIL_QUERY = m.query(_FAIL_SQL)
# A handler's kind when the rest of the chunk must wait for a statement's shape check (_check); -1:
# nothing to queue for the message (queued by the handler, or nothing owed).
_HOLD = -2

Out = list[bytes | memoryview]
Handled = tuple[int, Out | None]  # (the kind to queue for the message; what to send instead, or None)


def server_statements(server: ServerSession) -> ServerStatements:
    st = server.stmts
    if st is None:
        st = server.stmts = ServerStatements(server.registry, server.max_prepared, stats=server.pool.stats)
    return st


class _Batch:
    """One call of to_server: the client's chunk, its server, and the replies pgmux gives itself."""

    __slots__ = ("c", "server", "q", "stmts", "sst", "mv", "raw", "now")

    def __init__(self, c: ClientSession, server: ServerSession, chunk: bytes | memoryview) -> None:
        self.c = c
        self.server = server
        self.q: deque[Entry] = server.queue
        self.stmts: ClientStatements | None = c.stmts
        self.sst: ServerStatements | None = server_statements(server) if c.stmts is not None else None
        self.mv = memoryview(chunk)
        self.raw: bytes = chunk if isinstance(chunk, bytes) else bytes(chunk)
        self.now: list[bytes] = []  # pgmux's own replies with nothing before them: written at once

    def synth(self, msg: bytes, undo: Undo = None) -> None:
        if self.q:
            self.q.append(Entry(SYNTH, False, msg, undo))
        else:
            self.now.append(msg)

    def ensure(self, stmt: Statement, sst: ServerStatements) -> Out:
        """Before a Bind/Describe of `stmt` (named): what to send first to evict and prepare. A copy
        older than the client's Parse is prepared again, unless the server is in a failed transaction,
        where PostgreSQL refuses the Bind anyway and a Parse would fail in its place."""
        server, q = self.server, self.q
        since = 0 if server.tx_status == b"E" and still_failed(q) else stmt.since
        need, evict = sst.ensure(stmt.name, since)
        first: Out = []
        for old in evict:
            first.append(build_close_statement(old))
            q.append(SWALLOWED_CLOSE)
        if need:
            first.append(build_parse(stmt.name, stmt.query, stmt.param_types))
            q.append(Entry(PARSE, True, stmt.name, forget(sst, stmt.name)))  # (payload: replies._reply)
        return first

    def ensure_unnamed(self, whole: memoryview) -> Out | None:
        """The client's unnamed statement re-parsed first when this server's is another (or none).
        Kept as the client's Parse message itself: nothing to decode on pgbench -M extended's path."""
        server = self.server
        u = self.c.unnamed
        if u is not None and server.unnamed is not u and server.unnamed != u:
            server.unnamed = u
            self.q.append(Entry(PARSE, True, None, unset_unnamed(server)))
            return [u, whole]
        return None


# -- client -> server --------------------------------------------------------------------------------
def to_server(c: ClientSession, server: ServerSession, chunk: bytes | memoryview, ignored: int = 0) -> Out:
    """The client's complete messages in `chunk` as `server` must get them, queueing what each makes
    the server owe. Replies pgmux gives itself with nothing before them are written at once."""
    q = server.queue
    held = server.held
    if held is not None:  # pgmux is checking a statement's shape first (_check): these wait for it
        size = sum(map(len, held)) + len(chunk)
        if size > MAX_INSPECTED:  # (a query before the check may run for long: the client must wait)
            raise PgmuxError(f"too much pipelined while pgmux checks a prepared statement on its server: "
                             f"{size} bytes, above the {MAX_INSPECTED} bytes pgmux holds meanwhile",
                             sqlstate="54000", severity="FATAL",
                             hint="wait for the replies before sending more, or use session pooling")
        held.append(bytes(chunk))
        return []
    if not q and not ignored and not c.skip and not c.unsynced and not server.skipping:  # (entries.query_in_batch)
        if as_is(c, server, chunk):
            return [chunk]
        if c.stmts is not None and server.stmts is not None and not c.stmt_fx and not c.portal_fx:
            fast = rebound(c.stmts, server.stmts, chunk)
            if fast is not None:
                return fast
    if ignored:  # Syncs a backend in copy-in mode reads and ignores: no ReadyForQuery will come
        drop_last_syncs(q, ignored)
    if not q and server.owed:
        q.extend([PLACEHOLDER] * server.owed)
    b = _Batch(c, server, chunk)
    mv = b.mv
    msgs, end = scan(mv, 0, 1 << 30)
    out: Out = []  # what goes to the server, in order
    run = 0  # start of the bytes forwarded unchanged since the last rewritten message
    hold = -1  # where the messages held back for a shape check start (_check)
    new: Out | None = None
    for t, s, total in msgs:
        skipped = c.skip
        if skipped:  # after an error pgmux gave itself, PostgreSQL ignores everything up to Sync
            if t != _S:
                if run < s:
                    out.append(mv[run:s])
                run = s + total
                if t == _Q or t == _F:  # counted as owed a ReadyForQuery, but the server never sees it
                    server.owed -= 1
                continue
            c.skip = False
        elif server.skipping and (t == _Q or t == _F):
            server.owed -= 1  # the server skips it, after an error with no Sync sent: no ReadyForQuery
            continue
        if t == _H and total > 5:  # PostgreSQL refuses it (08P01) and skips to Sync: see replies._error
            q.append(Entry(REFUSED))
            continue
        kind, new = _message(b, t, s, total)
        if kind == _HOLD:
            hold = s
            break
        if new is not None:  # rewritten (or answered here): the bytes so far go first
            if run < s:
                out.append(mv[run:s])
            out.extend(new)
            run = s + total
        if kind >= 0 and not (skipped and t == _S):  # that Sync's entry is the FAIL one
            q.append(Entry(kind))
    if hold >= 0:  # the rest waits for the shape check: see _check
        if run < hold:
            out.append(mv[run:hold])
        out.extend(new or [])
        run = end
        server.held = [b.raw[hold:end]]
    if run < end:
        out.append(mv[run:end])
    if q and q[-1].kind in AT_Z and all(e.plain() for e in q) and not query_in_batch(q):
        # Nothing to swallow, add or watch, and every reply is followed by a ReadyForQuery that
        # server.owed counts: the header-only relay will do (pgbench -M prepared, once prepared).
        q.clear()
    if b.now:
        c.transport.write(b"".join(b.now))
    return out


def _message(b: _Batch, t: int, s: int, total: int) -> Handled:
    """One client message of type t at b.raw[s:s + total]: what to queue and send for it."""
    c = b.c
    raw = b.raw
    if t in _DECODED and _malformed(t, raw, s, s + total):
        # A body too short or inconsistent for what pgmux reads of it: the server gets it as the
        # client sent it, and PostgreSQL answers ERROR 08P01 and skips to Sync, as without pgmux.
        _client_protocol_error(c, t)
        return _PLAIN[t], None
    fx = note_extended(c, t, raw, s, total) if c.watch and (t == _P or t == _B or t == _E) else None
    try:
        if t == _P and c.stmt_fx and c.watch and c.logged_in_pool().refuse_pins:
            refuse_parse(c, raw, s, total)
        stmts, sst = b.stmts, b.sst
        if stmts is None or sst is None:  # statements not tracked: forwarded, replies still counted
            return _untracked(b, t, s, total, fx)
        if t == _P:
            return _parse(b, stmts, sst, s, total)
        if t == _B:
            return _bind(b, stmts, sst, s, total)
        if t == _D:
            return _describe(b, stmts, sst, s, total)
        if t == _C:
            return _close(b, stmts, s, total)
        if t == _E:
            if fx:
                b.q.append(Entry(EXECUTE, False, fx))  # watched: see session/tracking.py
                return -1, None
            return EXECUTE, None
        if t == _S:
            b.server.skipping = False  # read before whatever comes next
            return SYNC, None
        if t == _Q:  # a simple query destroys the unnamed statement
            c.unnamed = b.server.unnamed = None
            return _watched_query(b, s, total) if c.watch else (QUERY, None)
        return (QUERY, None) if t == _F else (-1, None)
    except ProtocolViolation:
        raise  # (malformed bodies are passed on before this: see _malformed)
    except PgmuxError as e:  # what PostgreSQL would answer; it then skips to Sync
        return _pooler_error(b, e)


def _pooler_error(b: _Batch, e: PgmuxError) -> Handled:
    c = b.c
    c.pooler_error(e)
    b.synth(b.server.registry.revalidate_error if isinstance(e, CachedPlanChanged) else
            m.error_response("ERROR", e.sqlstate, e.message, detail=e.detail, hint=e.hint))
    c.skip = True
    # The server fails as PostgreSQL would have (see entries.FAIL). The entry stands for the Sync to
    # come, which is not queued again: the queue stays non-empty until its ReadyForQuery, so that the
    # Sync comes through here (and ends c.skip) even when the server's error is back before it.
    b.q.append(Entry(SYNC, False, FAIL))
    return -1, [_FAIL_PARSE]


def _untracked(b: _Batch, t: int, s: int, total: int, fx: Any) -> Handled:
    """Protocol-level statements not tracked (max_prepared_statements = 0, session pooling): the
    messages go as they are, their replies counted; session effects are still watched."""
    c = b.c
    kind = _PLAIN.get(t, -1)
    if fx:
        b.q.append(Entry(EXECUTE, False, fx))  # watched: see session/tracking.py
        kind = -1
    if t == _Q and c.watch:
        return _watched_query(b, s, total)
    if c.watch and (t == _P or (c.stmt_fx and (t == _B or t == _D))):
        pre = prelude_for(c, b.server, b.q, b.raw, t, s, total)
        if pre:
            return kind, [*pre, b.mv[s:s + total]]
    return kind, None


def _parse(b: _Batch, stmts: ClientStatements, sst: ServerStatements, s: int, total: int) -> Handled:
    c, server, q, mv = b.c, b.server, b.q, b.mv
    body = mv[s + 5:s + total]
    pre = prelude_for(c, server, q, b.raw, _P, s, total) if c.watch else None
    if body[0] == 0:
        # No undo if it fails: PostgreSQL drops the old unnamed statement before parsing, so a later
        # Bind("") fails there as it would have anyway.
        c.unnamed = server.unnamed = bytes(mv[s:s + total])
        return PARSE, [*pre, mv[s:s + total]] if pre else None
    if server.tx_status == b"E" and still_failed(q) and not _ends_transaction(read_parse(body).query):
        # PostgreSQL refuses a Parse in a failed transaction (25P02) before it looks at the name: the
        # server says so, and nothing is prepared anywhere.
        return PARSE, None
    p = read_parse(body)
    sname = stmts.parse(p.name, p.query, p.param_types)
    # Prepared anew, as on a fresh connection: a copy this server holds may predate a DDL that changed
    # the text's parameter types or result shape (session/prepared.py).
    need, evict = sst.ensure(sname, stmts.resolve(p.name).since)
    new = pre or []
    for old in evict:
        new.append(build_close_statement(old))
        q.append(SWALLOWED_CLOSE)
    if need:
        new.append(rename_parse(body, sname))
        q.append(Entry(PARSE, False, sname, undo_parse(c, p.name, sst, sname)))
    else:
        b.synth(_PARSE_COMPLETE, undo_parse(c, p.name, None, sname))
    return -1, new


def _bind(b: _Batch, stmts: ClientStatements, sst: ServerStatements, s: int, total: int) -> Handled:
    c, server, q, raw, mv = b.c, b.server, b.q, b.raw, b.mv
    # The names by bytes.find on the chunk: a Bind's parameters can be large, and this runs for every
    # execution of a prepared statement.
    pe = raw.find(b"\x00", s + 5, s + total)
    ne = raw.find(b"\x00", pe + 1, s + total) if pe >= 0 else -1
    if ne < 0:
        raise ProtocolViolation("malformed Bind message: unterminated string")
    pre = prelude_for(c, server, q, raw, _B, s, total) if c.watch and c.stmt_fx else None
    whole = mv[s:s + total]
    if ne == pe + 1:
        new = b.ensure_unnamed(whole)
        return BIND, [*pre, *(new or [whole])] if pre else new
    cname = raw[pe + 1:ne].decode("utf-8", "surrogateescape")
    stmt = _known(stmts.resolve, cname)
    if stmt is None:
        return BIND, [*pre, whole] if pre else None
    if unchecked(server, q, sst, stmt):
        return _HOLD, (pre or []) + check(server, q, sst, stmt)
    stmts.bind(cname)
    new = (pre or []) + b.ensure(stmt, sst)
    head = raw[s + 5:pe + 1] + stmt.name.encode() + b"\x00"
    new.append(_BIND_HDR.pack(_B, 4 + len(head) + s + total - ne - 1) + head)
    new.append(mv[ne + 1:s + total])
    return BIND, new


def _describe(b: _Batch, stmts: ClientStatements, sst: ServerStatements, s: int, total: int) -> Handled:
    c, server, q, mv = b.c, b.server, b.q, b.mv
    body = mv[s + 5:s + total]
    if body[0] != _S:  # a portal
        return DESCRIBE, None
    pre = prelude_for(c, server, q, b.raw, _D, s, total) if c.watch and c.stmt_fx else None
    whole = mv[s:s + total]
    if body[1] == 0:
        new = b.ensure_unnamed(whole)
        return DESCRIBE, [*pre, *(new or [whole])] if pre else new
    target = read_target(body)
    stmt = _known(stmts.resolve, target.name)
    if stmt is None:
        return DESCRIBE, [*pre, whole] if pre else None
    if unchecked(server, q, sst, stmt):
        return _HOLD, (pre or []) + check(server, q, sst, stmt)
    new = (pre or []) + b.ensure(stmt, sst)
    new.append(rename_target(m.DESCRIBE, body, stmt.name))
    q.append(Entry(DESCRIBE, False, Described(sst, stmt.name, stmts, target.name, stmt, False)))
    return -1, new


def _close(b: _Batch, stmts: ClientStatements, s: int, total: int) -> Handled:
    body = b.mv[s + 5:s + total]
    if body[0] == _S and body[1] != 0:
        cname = read_target(body, "Close").name
        closed = stmts.lookup(cname)
        stmts.close(cname)  # others may use the server's: it stays
        b.synth(_CLOSE_COMPLETE, None if closed is None else undo_close(stmts, cname, closed))
        return -1, []
    if body[0] == _S:
        b.c.unnamed = b.server.unnamed = None
    return CLOSE, None


def _watched_query(b: _Batch, s: int, total: int) -> Handled:
    """A Query in transaction mode: its session effects watched (session/tracking.py), the SQL-level
    prepared statements it names brought to this server first, or, when pinning is refused, the
    client's error in its place."""
    c, server, q = b.c, b.server, b.q
    done = query_effects(b.mv[s + 5:s + total])
    if not done and not c.tx_effects:
        return QUERY, None
    if c.logged_in_pool().refuse_pins:
        err = pin_refused(c, done)
        if err is not None:
            # The whole query string is refused before any of it runs. The server runs a query that
            # fails, so that its ReadyForQuery (and a transaction block's state) is what PostgreSQL
            # would have given; its own error is swallowed.
            c.pooler_error(err)
            b.synth(m.error_response("ERROR", err.sqlstate, err.message, detail=err.detail, hint=err.hint))
            q.append(Entry(QUERY, False, FAIL))
            return -1, [_FAIL_QUERY]
    pre = prelude(c, server, q, done, sync=not batch_open(q))
    q.append(Entry(QUERY, False, done))  # watched: see session/tracking.py
    return -1, [*pre, b.mv[s:s + total]] if pre else None


def _malformed(t: int, raw: bytes, s: int, end: int) -> bool:
    """Whether the client's message raw[s:end] of type t (Query, Parse, Bind, Describe or Close) is too
    short or inconsistent for what to_server decodes of it. PostgreSQL refuses such a message with
    ERROR 08P01 before it does anything with it (and a Bind whose names are whole but whose
    parameters are not, after it looked up the statement, as it would here)."""
    if t == _P:
        ne = raw.find(b"\x00", s + 5, end)
        qe = raw.find(b"\x00", ne + 1, end) if ne >= 0 else -1
        if qe < 0 or qe + 3 > end:
            return True
        (count,) = _I16.unpack_from(raw, qe + 1)
        return count < 0 or qe + 3 + 4 * count != end
    if t == _B:
        pe = raw.find(b"\x00", s + 5, end)
        return pe < 0 or raw.find(b"\x00", pe + 1, end) < 0
    if t == _Q:
        return raw.find(b"\x00", s + 5, end) != end - 1
    # Describe, Close: 'S' or 'P', then one name that ends the message
    return end - s < 7 or raw[s + 5] not in _TARGETS or raw.find(b"\x00", s + 6, end) != end - 1


def _client_protocol_error(c: ClientSession, t: int) -> None:
    log.warning("%s client protocol error: malformed %s message, passed on for the server to refuse", c.prefix,
                _NAMES.get(t, chr(t)))


def release(server: ServerSession) -> None:
    """The shape check is answered: the held messages go to the server, through to_server again."""
    held, server.held = server.held, None
    server.release = False
    c = server.client
    if held and c is not None:
        owed, server.owed = server.owed, 0  # owed already counts the held Syncs: nothing else is unqueued
        try:
            out = to_server(c, server, b"".join(held))
        finally:
            server.owed += owed
            server.checked = ""
        if out:
            server.transport.write(b"".join(out))
    server.checked = ""


def _ends_transaction(query: str) -> bool:
    """COMMIT, ROLLBACK [TO SAVEPOINT] and PREPARE TRANSACTION: what PostgreSQL still parses in a failed
    transaction (IsTransactionExitStmt)."""
    return any(isinstance(e, (TxEnd, RollbackToSavepoint)) for e in effects(query))


def _known(lookup: Callable[[str], Statement], name: str) -> Statement | None:
    """The client's statement `name`, or None when it has none by that name: its Bind or Describe then
    goes to the server as the client sent it, and PostgreSQL itself answers that the statement does
    not exist (every field of its ErrorResponse, then the skip to Sync). Names in pgmux's own namespace
    could exist on the server for another client: for those pgmux answers in PostgreSQL's words."""
    try:
        return lookup(name)
    except MissingPreparedStatement:
        if name.startswith(NAME_PREFIX):
            raise
        return None
