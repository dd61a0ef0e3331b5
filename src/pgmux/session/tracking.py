"""Session state a client's simple queries leave behind, carried to its next server (issue 3).

Under transaction pooling a client's `SET search_path = x` runs on whichever server serves that
transaction; the next transaction may run elsewhere, and the server goes on to other clients. So
pgmux reads what a Query does (statements.effects, behind a cheap byte screen) and, once the server
has confirmed it (its reply had no ErrorResponse, and the transaction it ran in committed), records
the new values in `client.params`: the existing parameter sync then applies them on every server the
client gets. The server notes the unreported parameters it now holds in `server.extra`, so the sync
RESETs them for a client that did not ask for them.

Reported parameters (TimeZone, application_name...) need no parsing: the server's ParameterStatus
says what they are after every change, commit and rollback included (ServerSession._param).

Transactions: effects wait in `client.tx_effects` until their transaction commits (ReadyForQuery
says idle, or a COMMIT in the middle of a query string); ROLLBACK drops them, and so does a COMMIT of
a failed transaction (PostgreSQL tags it ROLLBACK). Savepoints are kept among them as markers:
ROLLBACK TO SAVEPOINT drops what came after its savepoint (everything, when the savepoint predates
every waiting effect), RELEASE keeps it (`run_effects`). A query that fails leaves its effects unknown
(some of its statements may have run): the server's values of what they touch are forgotten, so that
the next parameter sync sets them again (`suspect`).

RESET, RESET ALL and DISCARD ALL go back to the session's defaults, which for the parameters a client
gave at startup are its own values: `apply` records those for the parameter sync, and the relay shows
the client its own value in the ParameterStatus of a reported one (pipeline._reset_status).

SQL-level PREPARE and DEALLOCATE are not transactional: they count as soon as their CommandComplete
comes (`client.q_sql` counts those of the Query in flight), see session/sqlprepared.py.

What pins a client to its server, and pin_mode = refuse (a statement that would pin is not run; the
client gets an error naming the reason and the setting): session/pins.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from pgmux.session import sqlprepared
from pgmux.session.pins import Pins as Pins  # (re-exported: client.py imports it from here)
from pgmux.session.pins import pin as pin
from pgmux.session.pins import pin_refused as pin_refused
from pgmux.session.statements import (
    AdvisoryLock,
    AdvisoryUnlock,
    CloseCursor,
    CreateTemp,
    Deallocate,
    DeclareHold,
    DiscardAll,
    DiscardTemp,
    DropTemp,
    Effect,
    Execute,
    Listen,
    Load,
    Prepare,
    ReleaseSavepoint,
    ResetAll,
    ResetParam,
    RollbackToSavepoint,
    Savepoint,
    SetConfigBound,
    SetParam,
    TxEnd,
    Unlisten,
    effects,
    undone_by_rollback,
)

if TYPE_CHECKING:
    from pgmux.session.client import ClientSession
    from pgmux.session.server import ServerSession

# Lower-case words without which a query cannot change what is tracked here: a test on bytes, run for
# every Query in transaction mode, so it must cost a fraction of a microsecond. Each search costs about
# 50 ns as bytes.find (`in` costs twice that on bytes), so the words that only matter as a statement's
# first word are tested there only, and the rest behind one-byte tests (memchr) where they can be.
_SCREEN = (b"set", b"discard", b"deallocate", b"listen", b"temp", b"advisory", b"hold", b"load", b"close",
           b"u&", b"savepoint", b"rollback", b"release")
_FIRST = (b"set", b"reset", b"discard", b"deallocate", b"listen", b"unlisten", b"load", b"close", b"declare",
          b"/*", b"--", b"do", b"execute", b"explain", b"prepare", b"drop", b"create", b"savepoint",
          b"rollback", b"release")
_PINS = (Listen, Unlisten, CreateTemp, DiscardTemp, DropTemp, AdvisoryLock, AdvisoryUnlock, DeclareHold,
         CloseCursor, Load)
_AT_ONCE = (AdvisoryLock, AdvisoryUnlock, Load)  # not undone by a rollback: pin as soon as they ran
_TX = (TxEnd, Savepoint, ReleaseSavepoint, RollbackToSavepoint)  # what decides which effects count
_SQL_PREPARED = (Prepare, Execute, Deallocate)  # session/sqlprepared.py; not transactional
_KEPT = (SetParam, ResetParam, ResetAll, DiscardAll, SetConfigBound) + _SQL_PREPARED + _PINS + _TX


def screen_py(data: bytes | bytearray | memoryview, start: int, end: int) -> bool:
    """False when the Query body data[start:end] certainly changes no tracked session state.
    pgmux._speedups.screen does the same in C (a fifth of the per-transaction work of pgmux in
    Python); this is its definition, and the fallback where the C module was not built."""
    low = bytes(data[start:end]).lower()
    find = low.find
    if find(b"_") >= 0 and (find(b"advisory") >= 0 or find(b"set_config") >= 0):
        return True
    if find(b"temp") >= 0 or (find(b"&") >= 0 and find(b"u&") >= 0):
        return True
    if low.lstrip().startswith(_FIRST):
        return True
    i = find(b";")
    if i >= 0 and low[i:].strip(b" \t\r\n;\x00"):  # more than one statement: any may start with a word
        return any(find(w) >= 0 for w in _SCREEN)
    return False


def query_py(data: bytes | bytearray | memoryview, limit: int) -> int:
    """The first test of ClientSession._relay on every read: 0 when `data` is not exactly one whole
    Query message of at most `limit` bytes, else 2 when screen() says its text may change tracked
    session state, else 1. pgmux._speedups.query is the same in C."""
    n = len(data)
    if n > 5 and n <= limit and data[0] == 81 and int.from_bytes(data[1:5], "big") == n - 1:
        return 2 if screen(data, 5, n) else 1
    return 0


def steps_py(data: bytes | bytearray | memoryview, limit: int, copy_syncs: int, unsynced: bool, watch: bool,
             copy_in: bool) -> tuple[int, int, int, bool, bool, bool, int, bool, bool]:
    """ClientSession._relay's walk over a read that is not one whole Query: (end, syncs, copy_syncs,
    unsynced, ext, track, ignored, copy_in, terminate) for the complete messages at the start of `data`.
    - syncs counts Query, Sync and FunctionCall, each of which ends in one ReadyForQuery;
    - unsynced says an extended-protocol batch waits for its Sync, ext that the read holds one of its
      messages, track that `watch` is on and a Query's text may change tracked session state;
    - copy_syncs counts the Syncs since the last Execute. libpq (PQexecParams) and others send a Sync
      after an Execute that starts COPY FROM STDIN and another after CopyDone; the backend reads the
      first in copy-in mode and ignores it. So when `copy_in` (the server is in such a COPY) meets a
      CopyDone or CopyFail, those Syncs get no reply (`ignored`) and copy_in ends;
    - a Terminate stops the walk: terminate, and `end` is where it starts.
    Lengths are checked in order as walk() checks them (ValueError(type, length)). pgmux._speedups.steps
    does the same in C."""
    n = len(data)
    pos = syncs = ignored = 0
    ext = track = terminate = False
    while n - pos >= 5:
        t = data[pos]
        length = int.from_bytes(data[pos + 1:pos + 5], "big", signed=True)
        if length < 4 or length > limit or (t == 90 and length != 5):
            raise ValueError(t, length)
        end = pos + 1 + length
        if end > n:
            break
        if t == 81 or t == 83 or t == 70:  # Query, Sync, FunctionCall
            syncs += 1
            unsynced = False
            copy_syncs = copy_syncs + 1 if t == 83 else 0
            if t == 81 and watch and not track and screen(data, pos + 5, end):
                track = True
        elif t in _EXTENDED:
            unsynced = ext = True
            if t == 69:  # Execute
                copy_syncs = 0
        elif t == 99 or t == 102:  # CopyDone, CopyFail
            if copy_syncs and copy_in:
                ignored += copy_syncs
                copy_in = False
            copy_syncs = 0
        elif t == 88:  # Terminate
            terminate = True
            break
        pos = end
    return pos, syncs, copy_syncs, unsynced, ext, track, ignored, copy_in, terminate


_EXTENDED = frozenset(b"PBDECH")  # Parse, Bind, Describe, Execute, Close, Flush


# shape() flags: what session/pipeline.py's _as_is needs to know of a client's complete messages.
SHAPE_PARSE_NAMED = 1  # a Parse of a named statement
SHAPE_SCREEN_NAMED = 2  # ... whose text screen() flags
SHAPE_PARSE_UNNAMED = 4  # a Parse of the unnamed statement
SHAPE_SCREEN_UNNAMED = 8  # ... whose text screen() flags
SHAPE_BIND = 16  # a Bind
SHAPE_BIND_NAMED = 32  # ... naming a portal or a statement
SHAPE_UNNAMED_EARLY = 64  # a Bind or Describe of the unnamed statement before any Parse of it here
SHAPE_DESCRIBE_NAMED = 128  # a Describe of a named statement
SHAPE_CLOSE_STATEMENT = 256  # a Close of a statement
SHAPE_EXECUTE = 512  # an Execute
SHAPE_OTHER = 1024  # a Query, a FunctionCall, or a message too short for its kind


def shape_py(chunk: bytes | bytearray | memoryview) -> tuple[int, int, int]:
    """(flags, start, end) for a client's complete messages: flags ORs the SHAPE_* bits of every
    message, and chunk[start:end] is the last Parse of the unnamed statement (start -1 if none).
    pgmux._speedups.shape does the same in C."""
    n = len(chunk)
    pos = 0
    flags = 0
    ustart = uend = -1
    while n - pos >= 5:
        t = chunk[pos]
        length = int.from_bytes(chunk[pos + 1:pos + 5], "big")
        end = pos + 1 + length
        if length < 4 or end > n:
            flags |= SHAPE_OTHER
            break
        body = length - 4
        if t == 80:  # Parse
            if body < 1:
                flags |= SHAPE_OTHER
            elif chunk[pos + 5] != 0:
                flags |= SHAPE_PARSE_NAMED
                nul = bytes(chunk[pos + 5:end]).find(b"\x00")
                if screen(chunk, pos + 5 + nul + 1 if nul >= 0 else pos + 5, end):
                    flags |= SHAPE_SCREEN_NAMED
            else:
                flags |= SHAPE_PARSE_UNNAMED
                if screen(chunk, pos + 6, end):
                    flags |= SHAPE_SCREEN_UNNAMED
                ustart, uend = pos, end
        elif t == 66:  # Bind
            if body < 2:
                flags |= SHAPE_OTHER
            else:
                flags |= SHAPE_BIND
                if chunk[pos + 5] != 0 or chunk[pos + 6] != 0:
                    flags |= SHAPE_BIND_NAMED
                elif ustart < 0:
                    flags |= SHAPE_UNNAMED_EARLY
        elif t == 68:  # Describe
            if body < 2:
                flags |= SHAPE_OTHER
            elif chunk[pos + 5] == 83:  # a statement
                if chunk[pos + 6] != 0:
                    flags |= SHAPE_DESCRIBE_NAMED
                elif ustart < 0:
                    flags |= SHAPE_UNNAMED_EARLY
        elif t == 67:  # Close
            if body < 1:
                flags |= SHAPE_OTHER
            elif chunk[pos + 5] == 83:
                flags |= SHAPE_CLOSE_STATEMENT
        elif t == 69:  # Execute
            flags |= SHAPE_EXECUTE
        elif t == 81 or t == 70:  # Query, FunctionCall
            flags |= SHAPE_OTHER
        pos = end
    return flags, ustart, uend


def binds_py(chunk: bytes | bytearray | memoryview) -> list[tuple[int, int, int, int]] | None:
    """When the complete messages in `chunk` are only Binds of named statements, Describes of portals,
    Executes and Syncs, and a Sync comes last (the steady state of named prepared statements, see
    session/pipeline.py's _rebound): each Bind's (start, portal_end, name_end, end), where the two
    middle ones are the offsets of the NUL after its portal name and after its statement name. None
    for anything else. pgmux._speedups.binds does the same in C."""
    raw = bytes(chunk)
    n = len(raw)
    pos = last = 0
    out: list[tuple[int, int, int, int]] = []
    while pos < n:
        if n - pos < 5:
            return None
        t = raw[pos]
        length = int.from_bytes(raw[pos + 1:pos + 5], "big")
        end = pos + 1 + length
        if length < 4 or end > n:
            return None
        if t == 66:  # Bind
            pe = raw.find(b"\x00", pos + 5, end)
            ne = raw.find(b"\x00", pe + 1, end) if pe >= 0 else -1
            if ne <= pe + 1:  # malformed, or the unnamed statement
                return None
            out.append((pos, pe, ne, end))
        elif t == 68:  # Describe
            if length < 5 or raw[pos + 5] == 83:  # a statement's description may need it prepared first
                return None
        elif t != 69 and t != 83:  # Execute, Sync
            return None
        last = t
        pos = end
    return out if last == 83 else None


try:
    from pgmux._speedups import binds, query, screen, shape, steps
except ImportError:  # not compiled here (setup.py builds it where a C compiler is present)
    binds = binds_py
    screen = screen_py
    query = query_py
    steps = steps_py
    shape = shape_py


def query_effects(body: bytes | memoryview) -> tuple[Effect, ...]:
    """The tracked effects of a Query body (NUL-terminated text)."""
    raw = bytes(body)
    if not screen(raw, 0, len(raw)):
        return ()
    sql = raw.rstrip(b"\x00").decode("utf-8", "surrogateescape")
    return tuple(e for e in effects(sql) if isinstance(e, _KEPT) and not getattr(e, "local", False))


def query_done(c: ClientSession, server: ServerSession, done: tuple[Effect, ...], status: bytes) -> None:
    """A watched Query (or a Sync while effects wait for their transaction) got its ReadyForQuery."""
    failed, ends, ran = c.q_error, c.q_ends or [], c.q_sql
    c.q_error = False
    c.q_ends = None
    if ran:  # the first `ran` PREPAREs and DEALLOCATEs of the query string ran, whatever came after
        c.q_sql = 0
        for e in done:
            if isinstance(e, (Prepare, Deallocate)) and ran > 0:
                c.sql = sqlprepared.record(c.sql, server.sql, e)
                ran -= 1
    for e in done:
        # Session advisory locks and LOAD outlive a rollback; a lock taken before an error in the
        # same query string is still held, so a failed query pins too (unlocks count only on success).
        if isinstance(e, (AdvisoryLock, Load)) or (isinstance(e, AdvisoryUnlock) and not failed):
            assert not undone_by_rollback(e)
            pin(c, e)
    if failed:
        # Its COMMITs and ROLLBACKs that answered ran (their tags say so), and so did what came before
        # them. The rest stays pending with the failed transaction, as if it had run: a statement
        # after the error did not, but then neither did a savepoint after it, so only a ROLLBACK
        # (or a ROLLBACK TO an older savepoint, which drops it) can follow. Which of them ran is not
        # known, though: the server's values of all they touch are forgotten, for the next parameter
        # sync to set them again.
        cur, rest = _run(c, server, c.tx_effects, done, ends, until_untagged=True)
        suspect(c, server, [e for e in done if not isinstance(e, _TX)])
        if status == b"I":  # the failed statement's transaction is over, rolled back
            suspect(c, server, cur)
            c.tx_effects = None
        else:
            c.tx_effects = cur + [e for e in rest if isinstance(e, Savepoint)] or None
        return
    c.tx_effects = run_effects(c, server, c.tx_effects, done, ends)
    if status == b"I":
        if c.tx_effects and not any(ends):  # (a COMMIT of a failed transaction says ROLLBACK)
            apply(c, server, [e for e in c.tx_effects if not isinstance(e, _TX)])
        c.tx_effects = None


def own_params(c: ClientSession) -> dict[str, str]:
    """A client's parameters, to change them. After its login a client shares the dict of its
    parameters with the clients that logged in with the same values (`params is initial`, see
    ClientSession.send_welcome; issue 11: a few hundred bytes per idle client): its first change
    after login gives it a copy of its own. Every change to `client.params` after login goes through
    here, or it would change those other clients' too."""
    params = c.params
    if params is c.initial:
        params = c.params = dict(params)
    return params


def note_end(c: ClientSession, rolled_back: bool) -> None:
    """The tag of a transaction-ending statement in the watched query in flight: COMMIT (False) or
    ROLLBACK (True), for query_done and executed. (`client.q_ends` is None while there are none.)"""
    if c.q_ends is None:
        c.q_ends = [rolled_back]
    else:
        c.q_ends.append(rolled_back)


def keep(table: dict[bytes, tuple[Effect, ...]] | None, name: bytes,
         done: tuple[Effect, ...] | None) -> dict[bytes, tuple[Effect, ...]] | None:
    """`table` (a client's `stmt_fx` or `portal_fx`) with `name` now holding `done`, or no longer held
    when `done` is empty: made on first use, None once empty (issue 11: no dict per idle client)."""
    if done:
        if table is None:
            return {name: done}
        table[name] = done
        return table
    if table:
        table.pop(name, None)
    return table or None


def run_effects(c: ClientSession, server: ServerSession, pending: list[Effect] | None, done: Sequence[Effect],
                ends: list[bool]) -> list[Effect] | None:
    """The effects of a transaction so far (`pending`, with its savepoints) after statements that
    succeeded did `done`, in order. `ends` are the COMMIT (False) and ROLLBACK (True) tags their
    transaction-ending statements answered, consumed here in order: a COMMIT of a failed transaction
    and ROLLBACK TO SAVEPOINT both say ROLLBACK. None for none (`client.tx_effects` between
    transactions: issue 11, no list per idle client)."""
    return _run(c, server, pending, done, ends)[0] or None


def _run(c: ClientSession, server: ServerSession, pending: list[Effect] | None, done: Sequence[Effect],
         ends: list[bool], until_untagged: bool = False) -> tuple[list[Effect], Sequence[Effect]]:
    """run_effects; with `until_untagged`, stop at the first transaction-ending statement without a
    tag (it did not complete) and return the effects from there on too."""
    cur = list(pending) if pending else []
    for n, e in enumerate(done):
        if until_untagged and not ends and isinstance(e, (TxEnd, RollbackToSavepoint)):
            return cur, done[n:]
        if isinstance(e, TxEnd):
            rolled_back = ends.pop(0) if ends else not e.commit
            if e.commit and not rolled_back and cur:
                apply(c, server, [x for x in cur if not isinstance(x, _TX)])
            cur = []
        elif isinstance(e, RollbackToSavepoint):
            if ends:
                ends.pop(0)
            i = _last_savepoint(cur, e.name)
            del cur[i + 1:]  # (-1: a savepoint older than every effect: all of them are undone)
        elif isinstance(e, ReleaseSavepoint):
            i = _last_savepoint(cur, e.name)
            if i >= 0:  # the savepoint and those after it go; what they kept stays
                cur = cur[:i] + [x for x in cur[i + 1:] if not isinstance(x, Savepoint)]
        elif isinstance(e, _SQL_PREPARED):  # not transactional: recorded when their tags came
            if isinstance(e, Deallocate) and e.name is None:
                forget_statements(c, server)
        elif isinstance(e, DiscardAll):
            forget_statements(c, server)
            cur.append(e)
        else:
            cur.append(e)
    return cur, ()


def _last_savepoint(effects: list[Effect], name: str) -> int:
    for i in range(len(effects) - 1, -1, -1):
        e = effects[i]
        if isinstance(e, Savepoint) and e.name == name:
            return i
    return -1


def suspect(c: ClientSession, server: ServerSession, effects: Sequence[Effect]) -> None:
    """Effects that may or may not have stayed on the server: forget the server's values of what they
    touch (keeping the names in `extra`), so the next parameter sync sets or RESETs them."""
    reported = (c.pool.server_params or {}) if c.pool is not None else {}
    names: list[str] = []
    for e in effects:
        if isinstance(e, (SetParam, ResetParam)):
            names.append(e.name)
        elif isinstance(e, (ResetAll, DiscardAll)):
            names.extend(server.extra)
    names = [n for n in names if n not in reported]
    if names:
        for n in names:
            server.params.pop(n, None)
        server.extra.update(names)
        server.sig = None
        c.sig = None


def executed(c: ClientSession, server: ServerSession, done: tuple[Effect, ...]) -> None:
    """An Execute of a statement with session effects completed (CommandComplete): they count once
    its transaction commits, as a Query's do; locks, LOAD, PREPARE and DEALLOCATE at once, and so does
    DISCARD ALL for prepared statements (not transactional: the server's are gone now)."""
    rest = []
    for e in done:
        if isinstance(e, _AT_ONCE):
            pin(c, e)
            continue
        if isinstance(e, (Prepare, Deallocate)):
            c.sql = sqlprepared.record(c.sql, server.sql, e)
        rest.append(e)
    if rest:
        c.tx_effects = run_effects(c, server, c.tx_effects, rest, c.q_ends if c.q_ends is not None else [])


def forget_statements(c: ClientSession, server: ServerSession) -> None:
    """DEALLOCATE ALL or DISCARD ALL ran: neither the server nor the client has statements any more,
    protocol-level or SQL-level."""
    if server.stmts is not None:
        server.stmts.forget_all()
    if c.stmts is not None:
        c.stmts.clear()
    c.sql = None
    server.sql.clear()


def apply(c: ClientSession, server: ServerSession, done: list[Effect]) -> None:
    reported = c.logged_in_pool().server_params or {}
    for e in done:
        if isinstance(e, _PINS) or isinstance(e, DiscardAll):
            if not isinstance(e, _AT_ONCE):  # those were counted when their query ended
                pin(c, e)
            if not isinstance(e, DiscardAll):
                continue
        if isinstance(e, SetParam):
            if e.name not in reported:
                own_params(c)[e.name] = server.params[e.name] = e.value
                server.extra.add(e.name)
        elif isinstance(e, ResetParam):
            if e.name not in reported:
                default = c.initial.get(e.name)
                if default is None:
                    if e.name in c.params:
                        del own_params(c)[e.name]
                else:
                    own_params(c)[e.name] = default
                server.params.pop(e.name, None)  # the server's own default now
                server.extra.discard(e.name)
        elif isinstance(e, (ResetAll, DiscardAll)):
            params = own_params(c)
            for k in [k for k in params if k not in reported]:
                del params[k]
            params.update((k, v) for k, v in c.initial.items() if k not in reported)
            for k in server.extra:
                server.params.pop(k, None)
            server.extra.clear()
    if c.params is not c.initial and c.params == c.initial:  # back where it started: shared again
        c.params = c.initial
    c.sig = None
    server.sig = None
