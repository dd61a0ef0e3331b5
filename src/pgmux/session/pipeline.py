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
"""

from __future__ import annotations

import logging
import struct
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from pgmux.errors import CachedPlanChanged, MissingPreparedStatement, PgmuxError, ProtocolViolation
from pgmux.protocol import messages as m
from pgmux.protocol.codec import MAX_INSPECTED, scan
from pgmux.protocol.extended import (
    build_close_statement,
    build_parse,
    build_target,
    read_parse,
    read_target,
    rename_parse,
    rename_target,
)
from pgmux.session import sqlprepared
from pgmux.session.params import canon
from pgmux.session.prepared import (
    NAME_PREFIX,
    ClientStatements,
    ServerStatements,
    Statement,
    shape_of,
)
from pgmux.session.statements import (
    DiscardAll,
    Effect,
    ResetAll,
    ResetParam,
    RollbackToSavepoint,
    SetConfigBound,
    TxEnd,
    Unknown,
    effects,
)
from pgmux.session.tracking import (
    SHAPE_BIND,
    SHAPE_BIND_NAMED,
    SHAPE_CLOSE_STATEMENT,
    SHAPE_DESCRIBE_NAMED,
    SHAPE_EXECUTE,
    SHAPE_OTHER,
    SHAPE_PARSE_NAMED,
    SHAPE_PARSE_UNNAMED,
    SHAPE_SCREEN_NAMED,
    SHAPE_SCREEN_UNNAMED,
    SHAPE_UNNAMED_EARLY,
    binds,
    executed,
    keep,
    note_end,
    own_params,
    pin_refused,
    query_done,
    query_effects,
    shape,
)

if TYPE_CHECKING:
    from pgmux.session.client import ClientSession
    from pgmux.session.server import ServerSession

# What ends the reply to one request. QUERY (Query, FunctionCall, or a placeholder) and SYNC end at
# ReadyForQuery; SYNTH is a reply pgmux writes itself; REFUSED (a Flush with a body) gets only an error.
PARSE, BIND, DESCRIBE, EXECUTE, CLOSE, SYNC, QUERY, SYNTH, REFUSED = range(9)
_ENDS: dict[int, frozenset[int]] = {
    PARSE: frozenset(b"1"), BIND: frozenset(b"2"), DESCRIBE: frozenset(b"Tn"), EXECUTE: frozenset(b"CIs"),
    CLOSE: frozenset(b"3"),
}
_AT_Z = (SYNC, QUERY)

Undo = Callable[[], Any] | None
# (kind, swallow, payload, undo when the server skips it). The payload of SYNTH is the reply pgmux
# writes; that of a watched QUERY the session effects to record once it succeeds (session/tracking.py).
Entry = tuple[int, bool, Any, Undo]
_PLACEHOLDER: Entry = (QUERY, False, None, None)

log = logging.getLogger("pgmux")

_P, _B, _D, _E, _C, _S, _Q, _F, _H = (ord(c) for c in "PBDECSQFH")
_Z, _ERR, _PSTATUS, _G, _CC, _EMPTY = (ord(c) for c in "ZESGCI")
_PDESC, _ROWDESC, _NODATA = (ord(c) for c in "tTn")
_LEN = struct.Struct("!i")
_I16 = struct.Struct("!h")
_BIND_HDR = struct.Struct("!Bi")
_DECODED = frozenset((_P, _B, _D, _C, _Q))  # what to_server reads beyond the header (see _malformed)
_TARGETS = frozenset(b"SP")
_NAMES = {_P: "Parse", _B: "Bind", _D: "Describe", _C: "Close", _Q: "Query"}
_PLAIN = {_P: PARSE, _B: BIND, _D: DESCRIBE, _E: EXECUTE, _C: CLOSE, _S: SYNC, _Q: QUERY, _F: QUERY}
_ROLLBACK = b"ROLLBACK\x00"
_COMMIT = b"COMMIT\x00"
_PARSE_COMPLETE = m.message(m.PARSE_COMPLETE)
_CLOSE_COMPLETE = m.message(m.CLOSE_COMPLETE)
_SQL_TAGS = (b"PREPARE\x00", b"DEALLOCATE\x00", b"DEALLOCATE ALL\x00")  # session/sqlprepared.py

# pgmux's own PREPARE/DEALLOCATE run through one named statement and portal, so that neither the
# client's unnamed statement nor its portals are touched, even in the middle of its batch. Each step
# closes both (a portal outlives its statement's Close), and each run starts by closing them too, in
# case an earlier run failed half-way.
_CLOSE_HELPER = build_close_statement(sqlprepared.HELPER) + build_target(m.CLOSE, "P", sqlprepared.HELPER)
_CLOSE_HELPER_ENTRIES: tuple[Entry, ...] = ((CLOSE, True, None, None), (CLOSE, True, None, None))
_BIND_HELPER = m.message(m.BIND, m.cstr(sqlprepared.HELPER) * 2 + struct.pack("!hhh", 0, 0, 0))
_EXECUTE_HELPER = m.message(m.EXECUTE, m.cstr(sqlprepared.HELPER) + struct.pack("!i", 0))
_SYNC = m.message(m.SYNC)
_FLUSH = m.message(m.FLUSH)
# When pgmux answers an error itself, the server must fail too: inside a transaction block PostgreSQL
# would abort the transaction (ReadyForQuery 'E', later statements refused until ROLLBACK) and skip the
# rest of the batch. A Parse that cannot succeed does exactly that; its own ErrorResponse is swallowed
# (entries whose payload is _FAIL), and the server's log says why.
_FAIL: Any = ("fail",)
_FAIL_SQL = "pgmux: failing on purpose, the client got an error from pgmux for its statement"
_FAIL_PARSE = build_parse(sqlprepared.HELPER, _FAIL_SQL)
_FAIL_QUERY = m.query(_FAIL_SQL)


class Described:
    """The payload of a Describe of a named statement: its reply gives the result shape of the server's
    copy (and of the client's statement, for the client's own Describe). `check`: pgmux's own Describe,
    after preparing the copy again to see its shape, with the client's messages held meanwhile."""

    __slots__ = ("sst", "name", "stmts", "client_name", "stmt", "check")

    def __init__(self, sst: ServerStatements, name: str, stmts: ClientStatements | None, client_name: str,
                 stmt: Statement | None, check: bool) -> None:
        self.sst = sst
        self.name = name
        self.stmts = stmts
        self.client_name = client_name
        self.stmt = stmt
        self.check = check


def server_statements(server: ServerSession) -> ServerStatements:
    st = server.stmts
    if st is None:
        hub = server.hub
        st = server.stmts = ServerStatements(hub.prepared, hub.config.settings.max_prepared_statements,
                                             stats=server.pool.stats)
    return st


# -- client -> server --------------------------------------------------------------------------------
def to_server(c: ClientSession, server: ServerSession, chunk: bytes | memoryview,
              ignored: int = 0) -> list[bytes | memoryview]:
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
    if not q and not ignored and not c.skip and not c.unsynced and not server.skipping:  # (see _query_in_batch)
        if _as_is(c, server, chunk):
            return [chunk]
        if c.stmts is not None and server.stmts is not None and not c.stmt_fx and not c.portal_fx:
            rebound = _rebound(c.stmts, server.stmts, chunk)
            if rebound is not None:
                return rebound
    if ignored:  # Syncs a backend in copy-in mode reads and ignores: no ReadyForQuery will come
        _drop_last_syncs(q, ignored)
    if not q and server.owed:
        q.extend([_PLACEHOLDER] * server.owed)
    stmts = c.stmts
    sst = server_statements(server) if stmts is not None else None
    mv = memoryview(chunk)
    raw = chunk if isinstance(chunk, bytes) else bytes(chunk)
    msgs, end = scan(mv, 0, 1 << 30)
    out: list[bytes | memoryview] = []  # what goes to the server, in order
    now_to_client: list[bytes] = []
    run = 0  # start of the bytes forwarded unchanged since the last rewritten message
    hold = -1  # where the messages held back for a shape check start (_check)

    def synth(msg: bytes, undo: Undo = None) -> None:
        if q:
            q.append((SYNTH, False, msg, undo))
        else:
            now_to_client.append(msg)

    def ensure(stmt: Statement, sst: ServerStatements) -> list[bytes | memoryview]:
        """Before a Bind/Describe of `stmt` (named): what to send first to evict and prepare. A copy
        older than the client's Parse is prepared again, unless the server is in a failed transaction,
        where PostgreSQL refuses the Bind anyway and a Parse would fail in its place."""
        since = 0 if server.tx_status == b"E" and _still_failed(q) else stmt.since
        need, evict = sst.ensure(stmt.name, since)
        first: list[bytes | memoryview] = []
        for old in evict:
            first.append(build_close_statement(old))
            q.append((CLOSE, True, None, None))
        if need:
            first.append(build_parse(stmt.name, stmt.query, stmt.param_types))
            q.append((PARSE, True, None, _forget(sst, stmt.name)))
        return first

    def ensure_unnamed(whole: memoryview) -> list[bytes | memoryview] | None:
        """The client's unnamed statement re-parsed first when this server's is another (or none).
        Kept as the client's Parse message itself: nothing to decode on pgbench -M extended's path."""
        u = c.unnamed
        if u is not None and server.unnamed is not u and server.unnamed != u:
            server.unnamed = u
            q.append((PARSE, True, None, _unset_unnamed(server)))
            return [u, whole]
        return None

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
        body = mv[s + 5:s + total]
        if t == _H and total > 5:  # PostgreSQL refuses it (08P01) and skips to Sync: see to_client
            q.append((REFUSED, False, None, None))
            continue
        if t in _DECODED and _malformed(t, raw, s, s + total):
            # A body too short or inconsistent for what pgmux reads of it: the server gets it as the
            # client sent it, and PostgreSQL answers ERROR 08P01 and skips to Sync, as without pgmux.
            _client_protocol_error(c, t)
            q.append((_PLAIN[t], False, None, None))
            continue
        kind = -1
        new: list[bytes | memoryview] | None = None
        fx = _note_extended(c, t, raw, s, total) if c.watch and (t == _P or t == _B or t == _E) else None
        try:
            if t == _P and c.stmt_fx and c.watch and c.logged_in_pool().refuse_pins:
                _refuse_parse(c, raw, s, total)
            if stmts is None or sst is None:  # statements not tracked: forwarded, replies still counted
                kind = _PLAIN.get(t, -1)
                if fx:
                    q.append((EXECUTE, False, fx, None))  # watched: see session/tracking.py
                    kind = -1
                if t == _Q and c.watch:
                    kind, new = _watched_query(c, server, q, mv[s:s + total], body, synth)
                elif c.watch and (t == _P or (c.stmt_fx and (t == _B or t == _D))):
                    pre = _prelude_for(c, server, q, raw, t, s, total)
                    if pre:
                        new = [*pre, mv[s:s + total]]
            elif t == _P:
                pre = _prelude_for(c, server, q, raw, t, s, total) if c.watch else None
                if body[0] == 0:
                    # No undo if it fails: PostgreSQL drops the old unnamed statement before parsing,
                    # so a later Bind("") fails there as it would have anyway.
                    c.unnamed = server.unnamed = bytes(mv[s:s + total])
                    kind = PARSE
                    if pre:
                        new = [*pre, mv[s:s + total]]
                elif server.tx_status == b"E" and _still_failed(q) and not _ends_transaction(read_parse(body).query):
                    # PostgreSQL refuses a Parse in a failed transaction (25P02) before it looks at the
                    # name: the server says so, and nothing is prepared anywhere.
                    kind = PARSE
                else:
                    p = read_parse(body)
                    sname = stmts.parse(p.name, p.query, p.param_types)
                    # Prepared anew, as on a fresh connection: a copy this server holds may predate a DDL
                    # that changed the text's parameter types or result shape (session/prepared.py).
                    need, evict = sst.ensure(sname, stmts.resolve(p.name).since)
                    new = pre or []
                    for old in evict:
                        new.append(build_close_statement(old))
                        q.append((CLOSE, True, None, None))
                    if need:
                        new.append(rename_parse(body, sname))
                        q.append((PARSE, False, None, _undo_parse(c, p.name, sst, sname)))
                    else:
                        synth(_PARSE_COMPLETE, _undo_parse(c, p.name, None, sname))
            elif t == _B:
                kind = BIND
                # The names by bytes.find on the chunk: a Bind's parameters can be large, and this runs
                # for every execution of a prepared statement.
                pe = raw.find(b"\x00", s + 5, s + total)
                ne = raw.find(b"\x00", pe + 1, s + total) if pe >= 0 else -1
                if ne < 0:
                    raise ProtocolViolation("malformed Bind message: unterminated string")
                pre = _prelude_for(c, server, q, raw, t, s, total) if c.watch and c.stmt_fx else None
                if ne == pe + 1:
                    new = ensure_unnamed(mv[s:s + total])
                    if pre:
                        new = [*pre, *(new or [mv[s:s + total]])]
                else:
                    cname = raw[pe + 1:ne].decode("utf-8", "surrogateescape")
                    stmt = _known(stmts.resolve, cname)
                    if stmt is not None and _unchecked(server, q, sst, stmt):
                        new = (pre or []) + _check(server, q, sst, stmt)
                        hold = s
                        kind = -1
                        break
                    if stmt is not None:
                        stmts.bind(cname)
                        new = (pre or []) + ensure(stmt, sst)
                        head = raw[s + 5:pe + 1] + stmt.name.encode() + b"\x00"
                        new.append(_BIND_HDR.pack(_B, 4 + len(head) + s + total - ne - 1) + head)
                        new.append(mv[ne + 1:s + total])
                    elif pre:
                        new = [*pre, mv[s:s + total]]
            elif t == _D:
                kind = DESCRIBE
                if body[0] == _S:  # a statement, not a portal
                    pre = _prelude_for(c, server, q, raw, t, s, total) if c.watch and c.stmt_fx else None
                    if body[1] == 0:
                        new = ensure_unnamed(mv[s:s + total])
                        if pre:
                            new = [*pre, *(new or [mv[s:s + total]])]
                    else:
                        target = read_target(body)
                        stmt = _known(stmts.resolve, target.name)
                        if stmt is not None and _unchecked(server, q, sst, stmt):
                            new = (pre or []) + _check(server, q, sst, stmt)
                            hold = s
                            kind = -1
                            break
                        if stmt is not None:
                            new = (pre or []) + ensure(stmt, sst)
                            new.append(rename_target(m.DESCRIBE, body, stmt.name))
                            q.append((DESCRIBE, False, Described(sst, stmt.name, stmts, target.name, stmt, False),
                                      None))
                            kind = -1
                        elif pre:
                            new = [*pre, mv[s:s + total]]
            elif t == _C:
                if body[0] == _S and body[1] != 0:
                    cname = read_target(body, "Close").name
                    closed = stmts.lookup(cname)
                    stmts.close(cname)  # others may use the server's: it stays
                    new = []
                    synth(_CLOSE_COMPLETE, None if closed is None else _undo_close(stmts, cname, closed))
                else:
                    if body[0] == _S:
                        c.unnamed = server.unnamed = None
                    kind = CLOSE
            elif t == _E:
                kind = EXECUTE
                if fx:
                    q.append((EXECUTE, False, fx, None))  # watched: see session/tracking.py
                    kind = -1
            elif t == _S:
                kind = SYNC
                server.skipping = False  # read before whatever comes next
            elif t == _Q or t == _F:
                kind = QUERY
                if t == _Q:  # a simple query destroys the unnamed statement
                    c.unnamed = server.unnamed = None
                    if c.watch:
                        kind, new = _watched_query(c, server, q, mv[s:s + total], body, synth)
        except ProtocolViolation:
            raise  # (malformed bodies are passed on before this: see _malformed)
        except PgmuxError as e:  # what PostgreSQL would answer; it then skips to Sync
            c.pooler_error(e)
            synth(server.hub.prepared.revalidate_error if isinstance(e, CachedPlanChanged) else
                  m.error_response("ERROR", e.sqlstate, e.message, detail=e.detail, hint=e.hint))
            c.skip = True
            # The server fails as PostgreSQL would have (see _FAIL). The entry stands for the Sync to
            # come, which is not queued again: the queue stays non-empty until its ReadyForQuery, so
            # that the Sync comes through here (and ends c.skip) even when the server's error is
            # back before it.
            new = [_FAIL_PARSE]
            q.append((SYNC, False, _FAIL, None))
            kind = -1
        if new is not None:  # rewritten (or answered here): the bytes so far go first
            if run < s:
                out.append(mv[run:s])
            out.extend(new)
            run = s + total
        if kind >= 0 and not (skipped and t == _S):  # that Sync's entry is the _FAIL one
            q.append((kind, False, None, None))
    if hold >= 0:  # the rest waits for the shape check: see _check
        if run < hold:
            out.append(mv[run:hold])
        out.extend(new or [])
        run = end
        server.held = [raw[hold:end]]
    if run < end:
        out.append(mv[run:end])
    if q and q[-1][0] in _AT_Z and all(not e[1] and e[2] is None and e[3] is None for e in q) \
            and not _query_in_batch(q):
        # Nothing to swallow, add or watch, and every reply is followed by a ReadyForQuery that
        # server.owed counts: the header-only relay will do (pgbench -M prepared, once prepared).
        q.clear()
    if now_to_client:
        c.transport.write(b"".join(now_to_client))
    return out


def _query_in_batch(q: deque[Entry]) -> bool:
    """Whether a Query or FunctionCall is queued inside an extended-protocol batch (after one of its
    messages, no Sync between). When a message of the batch before it fails, PostgreSQL skips it up to
    the Sync like the rest, and it gets no ReadyForQuery: only the queue can tell (to_client). So
    does a chunk that leaves a batch open: what follows it may be such a Query."""
    open_batch = False
    for e in q:
        kind = e[0]
        if kind == SYNC:
            open_batch = False
        elif kind == QUERY:
            if open_batch:
                return True
        elif kind != SYNTH:
            open_batch = True
    return False


def _batch_open(q: deque[Entry]) -> bool:
    """Whether the last request queued is a message of an extended-protocol batch not synced yet. A
    Query there gets its prelude (_prelude) without a Sync of its own: that Sync would end the skip
    after an error earlier in the batch, and the Query would run where PostgreSQL skips it."""
    for i in range(len(q) - 1, -1, -1):
        kind = q[i][0]
        if kind != SYNTH:
            return kind != SYNC and kind != QUERY
    return False


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


def _still_failed(q: deque[Entry]) -> bool:
    """With the server's last ReadyForQuery saying 'E': whether it still is in that failed transaction
    when it reads the next message. Only a Sync or a Query in flight can end it."""
    return not any(e[0] in _AT_Z for e in q)


def _unchecked(server: ServerSession, q: deque[Entry], sst: ServerStatements, stmt: Statement) -> bool:
    """Before a Bind or Describe of the client's statement `stmt` on this server: whether the server's
    copy must be prepared again and its shape checked first. Only a statement whose result shape the
    client knows (it Described it) is checked, and only where the copy is missing, older than the
    client's Parse, or not known to have that shape. Right after such a check, a shape that is not the
    client's fails as PostgreSQL fails a statement whose result type a DDL changed (0A000)."""
    if stmt.shape is None or sst.touch(stmt.name, stmt.since, stmt.shape):
        return False
    if server.skipping:  # after an error the server would skip the check too, and never answer it
        return False
    if server.checked == stmt.name:
        shape = sst.shapes.get(stmt.name)
        if shape is not None and shape != stmt.shape:
            raise CachedPlanChanged("cached plan must not change result type")
        return False
    # In a failed transaction PostgreSQL refuses the Bind or Describe anyway.
    return not (server.tx_status == b"E" and _still_failed(q))


def _check(server: ServerSession, q: deque[Entry], sst: ServerStatements, stmt: Statement) -> list[bytes | memoryview]:
    """The copy prepared again and Described, then a Flush; the client's messages from the Bind or
    Describe on are held in `server.held` until the reply says the shape (`release`)."""
    first: list[bytes | memoryview] = []
    for old in sst.renew(stmt.name):
        first.append(build_close_statement(old))
        q.append((CLOSE, True, None, None))
    first.append(build_parse(stmt.name, stmt.query, stmt.param_types))
    q.append((PARSE, True, None, _forget(sst, stmt.name)))
    first.append(build_target(m.DESCRIBE, "S", stmt.name))
    first.append(_FLUSH)
    q.append((DESCRIBE, True, Described(sst, stmt.name, None, "", None, True), _checked(server, stmt.name)))
    return first


def _checked(server: ServerSession, name: str) -> Callable[[], None]:
    """The check's Parse failed (its error goes to the client): the held messages go on, and the server
    skips them up to their Sync, as it would the client's own."""
    def undo() -> None:
        server.checked = name
        server.release = True
    return undo


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


def _described(server: ServerSession, d: Described, msg: bytes) -> None:
    shape = shape_of(msg)
    d.sst.described(d.name, shape)
    if d.stmts is not None and d.stmt is not None:
        d.stmts.described(d.client_name, d.stmt, shape)
    if d.check:
        server.checked = d.name
        server.release = True


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


def _as_is(c: ClientSession, server: ServerSession, chunk: bytes | memoryview) -> bool:
    """Whether the chunk can go to the server unchanged, with nothing to queue: only the unnamed
    statement, already on this server or parsed here. The usual extended-protocol traffic of drivers
    without named statements (pgbench -M extended, psycopg with parameters) stays this cheap; it
    records the unnamed Parse on the way. Anything else is left to the full walk of to_server.
    Without protocol-level statement tracking (max_prepared_statements = 0) named statements go as
    they are too, unless their text may change session state. tracking.shape (in C where built) reads
    the messages; this decides."""
    flags, start, end = shape(chunk)
    if flags & SHAPE_OTHER:
        return False
    tracked = c.stmts is not None
    effects = c.watch and (c.stmt_fx or c.tx_effects)
    if flags & SHAPE_PARSE_NAMED and (tracked or effects or c.watch and flags & SHAPE_SCREEN_NAMED):
        return False
    if flags & SHAPE_PARSE_UNNAMED and (effects or c.watch and flags & SHAPE_SCREEN_UNNAMED):
        return False
    if flags & SHAPE_BIND and c.stmt_fx:
        return False
    if tracked:
        if flags & (SHAPE_BIND_NAMED | SHAPE_DESCRIBE_NAMED | SHAPE_CLOSE_STATEMENT):
            return False
        if flags & SHAPE_UNNAMED_EARLY and c.unnamed is not None and server.unnamed is not c.unnamed \
                and server.unnamed != c.unnamed:
            return False
    if flags & SHAPE_EXECUTE and c.portal_fx:
        return False
    if start >= 0:
        c.unnamed = server.unnamed = bytes(chunk[start:end])
    return True


def _rebound(stmts: ClientStatements, sst: ServerStatements,
             chunk: bytes | memoryview) -> list[bytes | memoryview] | None:
    """The steady state of named prepared statements (pgbench -M prepared, asyncpg, psycopg once it
    prepares): Binds of statements this server already holds, Describes of portals, Executes, and a
    Sync last. Only each Bind's statement name changes and nothing is queued, so the replies take the
    header-only relay. None for anything else, which the full walk of to_server handles."""
    spans = binds(chunk)  # (in C where built: session/tracking.py)
    if spans is None:
        return None
    raw = chunk if isinstance(chunk, bytes) else bytes(chunk)
    run = 0
    out: list[bytes | memoryview] = []
    bound: list[str] = []
    for pos, pe, ne, end in spans:
        name = raw[pe + 1:ne].decode("utf-8", "surrogateescape")
        stmt = stmts.lookup(name)
        if stmt is None or not sst.touch(stmt.name, stmt.since, stmt.shape):
            return None
        bound.append(name)
        head = raw[pos + 5:pe + 1] + stmt.name.encode() + b"\x00"
        if run < pos:
            out.append(raw[run:pos])
        out.append(_BIND_HDR.pack(_B, 4 + len(head) + end - ne - 1) + head)
        out.append(memoryview(raw)[ne + 1:end])
        run = end
    for name in bound:
        stmts.bind(name)  # counted once the whole chunk is known to take this path
    sst.count_hits(len(bound))  # metrics: prepared-statement cache hits
    n = len(raw)
    if run < n:
        out.append(memoryview(raw)[run:n])
    return out


def _note_extended(c: ClientSession, t: int, raw: bytes, s: int, total: int) -> tuple[Effect, ...] | None:
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


def _watched_query(c: ClientSession, server: ServerSession, q: deque[Entry], whole: memoryview, body: memoryview,
                   synth: Callable[[bytes], None]) -> tuple[int, list[bytes | memoryview] | None]:
    """A Query in transaction mode: its session effects watched (session/tracking.py), the SQL-level
    prepared statements it names brought to this server first, or, when pinning is refused, the
    client's error in its place. Returns (the kind to queue for it, or -1 if queued here; what to
    send instead of it, or None)."""
    done = query_effects(body)
    if not done and not c.tx_effects:
        return QUERY, None
    if c.logged_in_pool().refuse_pins:
        err = pin_refused(c, done)
        if err is not None:
            # The whole query string is refused before any of it runs. The server runs a query that
            # fails, so that its ReadyForQuery (and a transaction block's state) is what PostgreSQL
            # would have given; its own error is swallowed.
            c.pooler_error(err)
            synth(m.error_response("ERROR", err.sqlstate, err.message, detail=err.detail, hint=err.hint))
            q.append((QUERY, False, _FAIL, None))
            return -1, [_FAIL_QUERY]
    pre = _prelude(c, server, q, done, sync=not _batch_open(q))
    q.append((QUERY, False, done, None))  # watched: see session/tracking.py
    return -1, [*pre, whole] if pre else None


def _prelude_for(c: ClientSession, server: ServerSession, q: deque[Entry], raw: bytes, t: int, s: int,
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
    return _prelude(c, server, q, done, sync=False) if done else None


def _prelude(c: ClientSession, server: ServerSession, q: deque[Entry], done: tuple[Effect, ...],
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
    steps += sqlprepared.evict(c.sql, server.sql, server.hub.config.settings.max_prepared_statements or
                               sqlprepared.DEFAULT_CAP)
    if not steps:
        return []
    out: list[bytes | memoryview] = [_CLOSE_HELPER]
    q.extend(_CLOSE_HELPER_ENTRIES)
    for step in steps:
        out += [build_parse(sqlprepared.HELPER, step[0]), _BIND_HELPER, _EXECUTE_HELPER, _CLOSE_HELPER]
        q.append((PARSE, True, None, None))
        q.append((BIND, True, None, None))
        q.append((EXECUTE, True, None, _undo_step(server.sql, step)))
        q.extend(_CLOSE_HELPER_ENTRIES)
    if sync:
        out.append(_SYNC)
        q.append((SYNC, True, None, None))
        server.owed += 1
    return out


def _undo_step(held: dict[str, str], step: sqlprepared.Step) -> Callable[[], None]:
    return lambda: sqlprepared.undo(held, step)


def _refuse_parse(c: ClientSession, raw: bytes, s: int, total: int) -> None:
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


def _unset_unnamed(server: ServerSession) -> Callable[[], None]:
    def undo() -> None:
        server.unnamed = None
    return undo


def _forget(sst: ServerStatements, name: str) -> Callable[[], Any]:
    return lambda: sst.forget(name)


def _undo_close(stmts: ClientStatements, client_name: str, stmt: Statement) -> Callable[[], None]:
    """A Close of a statement pgmux answered itself, in a batch that failed before it."""
    return lambda: stmts.reopen(client_name, stmt)


def _undo_parse(c: ClientSession, client_name: str, sst: ServerStatements | None,
                server_name: str) -> Callable[[], None]:
    """A Parse the server skipped or refused: neither the server nor the client has the statement."""
    def undo() -> None:
        if sst is not None:
            sst.forget(server_name)
        stmts = c.stmts
        if stmts is not None:
            stmt = stmts.lookup(client_name)
            if stmt is not None and stmt.name == server_name:
                stmts.close(client_name)
    return undo


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


def _drop_last_syncs(q: deque[Entry], n: int) -> None:
    for i in range(len(q) - 1, -1, -1):
        if n == 0:
            return
        if q[i][0] == SYNC:
            del q[i]
            n -= 1


# -- server -> client --------------------------------------------------------------------------------
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
            server.owed -= 1
            server.copy_in = False
            while q:
                e = q.popleft()
                if e[0] in _AT_Z:
                    if e[1]:  # the Sync that ended pgmux's own PREPAREs (see _prelude)
                        swallow = True
                        c.q_error = False
                    elif e[2] is not None or c.tx_effects:  # a watched Query, or the end of a transaction
                        query_done(c, server, e[2] if e[2] is not None and e[2] is not _FAIL else (), bytes((z,)))
                    break
                if e[3] is not None:  # unanswered before ReadyForQuery: the server skipped it
                    e[3]()
        elif t == _PSTATUS:
            # After a watched statement that may RESET. PostgreSQL reports changed parameters just
            # before ReadyForQuery: after an Execute, its effects wait in tx_effects by then.
            fx = q[0][2] if q and q[0][2] and q[0][0] in (QUERY, EXECUTE) and q[0][2] is not _FAIL else c.tx_effects
            if fx:
                instead = _reset_status(c, server, fx, data, s, total)
                if instead is not None:
                    swallow = True
            else:
                server._param(data, s, total)
        elif t == _ERR:
            server._error(data, s, total)
            swallow = bool(q) and q[0][2] is _FAIL  # pgmux gave the client its own error already
            if (q and q[0][0] == QUERY and q[0][2] is not None) or c.tx_effects:
                c.q_error = True
            if q and q[0][0] != QUERY:  # (a Query's own error ends at its ReadyForQuery)
                # The failed request, and all the server now skips up to the next Sync: Queries and
                # FunctionCalls too, which get no ReadyForQuery then. Undone last to first.
                undo: list[Callable[[], Any]] = []
                while q and q[0][0] != SYNC:
                    e = q.popleft()
                    if e[0] == QUERY:
                        server.owed -= 1
                    if e[3] is not None:
                        undo.append(e[3])
                while undo:
                    undo.pop()()
                # No Sync in flight: what the client sends next is skipped too. The Syncs of messages
                # held for a shape check (_check) count as owed, but the server has not got them: a
                # check sent behind the failed request, or failing itself, is popped here, and the
                # held messages then go to a server that skips them, their Queries unanswered.
                if server.owed <= 0 or not q and server.held is not None:
                    server.skipping = True
        elif t == _G:
            server.copy_in = True
        elif q:
            e = q[0]
            if e[0] == DESCRIBE and e[2] is not None:  # a statement's shape (see Described)
                if t == _PDESC:
                    swallow = e[1]
                elif t == _ROWDESC or t == _NODATA:
                    _described(server, e[2], bytes(data[s:s + total]))
            if t == _CC and (c.tx_effects or e[2] is not None):
                tag = mv[s + 5:s + total]
                if tag == _ROLLBACK or tag == _COMMIT:  # what a transaction-ending statement did
                    note_end(c, tag == _ROLLBACK)
                elif e[0] == QUERY and e[2] is not None and tag in _SQL_TAGS:
                    c.q_sql += 1  # a PREPARE or DEALLOCATE ran: recorded at the query's end (tracking.py)
            ends = _ENDS.get(e[0])
            if ends is not None and t in ends:
                q.popleft()
                swallow = e[1]
                # A portal suspended by the Execute's row limit has run its effects for the rows it
                # returned: asyncpg's fetchval() executes `SELECT set_config(...)` with a limit of 1.
                if e[0] == EXECUTE and e[2] is not None and e[2] is not _FAIL and t != _EMPTY:
                    executed(c, server, e[2])
        if swallow:
            if run < s:
                parts.append(mv[run:s])
            run = s + total
            if instead:
                parts.append(instead)
                instead = None
        if q and q[0][0] == SYNTH:
            if run < s + total:
                parts.append(mv[run:s + total])
            run = s + total
            while q and q[0][0] == SYNTH:
                msg = q.popleft()[2]
                assert msg is not None
                parts.append(msg)
    if z and z != 73 and server.owed <= 0 and server.pool.mode == "statement" and zpos >= run:
        end = zpos  # withhold ReadyForQuery: BEGIN itself must fail, as in PgBouncer
    if run < end:
        parts.append(mv[run:end])
    return parts, z, zpos
