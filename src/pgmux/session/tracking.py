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

from pgmux.protocol.scans import screen
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

_PINS = (Listen, Unlisten, CreateTemp, DiscardTemp, DropTemp, AdvisoryLock, AdvisoryUnlock, DeclareHold,
         CloseCursor, Load)
_AT_ONCE = (AdvisoryLock, AdvisoryUnlock, Load)  # not undone by a rollback: pin as soon as they ran
_TX = (TxEnd, Savepoint, ReleaseSavepoint, RollbackToSavepoint)  # what decides which effects count
_SQL_PREPARED = (Prepare, Execute, Deallocate)  # session/sqlprepared.py; not transactional
_KEPT = (SetParam, ResetParam, ResetAll, DiscardAll, SetConfigBound) + _SQL_PREPARED + _PINS + _TX


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
