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

Transactions: effects wait in `client.tx_effects` until ReadyForQuery says idle; a CommandComplete
tagged ROLLBACK (ROLLBACK, ABORT, COMMIT of a failed transaction) drops them. While effects wait, the
statements that end savepoints are parsed too: a SAVEPOINT leaves a mark among them, ROLLBACK TO
drops what came after its mark (everything, when the savepoint predates every waiting effect, which
is why a SAVEPOINT needs no mark while none waits), RELEASE drops the mark and keeps the effects.

SQL-level PREPARE and DEALLOCATE are not transactional: they count as soon as their CommandComplete
comes (`client.q_sql` counts those of the Query in flight), see session/sqlprepared.py.

pin_mode = refuse (per database): a statement that would pin is not run; the client gets an error
naming the reason and the setting (`pin_refused`), and its server stays clean.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pgmux.errors import PgmuxError
from pgmux.session import sqlprepared
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
    SetConfigArgs,
    SetParam,
    TxEnd,
    Unlisten,
    effects,
    pin_reason,
    set_config_effect,
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
           b"u&")
_FIRST = (b"set", b"reset", b"discard", b"deallocate", b"listen", b"unlisten", b"load", b"close", b"declare",
          b"/*", b"--", b"do", b"execute", b"explain", b"prepare", b"drop", b"create")
_PINS = (Listen, Unlisten, CreateTemp, DiscardTemp, DropTemp, AdvisoryLock, AdvisoryUnlock, DeclareHold,
         CloseCursor, Load)
_AT_ONCE = (AdvisoryLock, AdvisoryUnlock, Load)  # not undone by a rollback: pin as soon as they ran
_SAVEPOINTS = (Savepoint, ReleaseSavepoint, RollbackToSavepoint)
_SQL_PREPARED = (Prepare, Execute, Deallocate)  # session/sqlprepared.py; not transactional
_KEPT = (SetParam, ResetParam, ResetAll, DiscardAll, SetConfigArgs, TxEnd) + _SQL_PREPARED + _PINS + _SAVEPOINTS
_NOT_WAITING = _SQL_PREPARED + (TxEnd, SetConfigArgs)  # never among the effects waiting for a commit
_PINNING = (Listen, CreateTemp, AdvisoryLock, DeclareHold, Load)
_TX_WORDS = (b"savepoint", b"release", b"rollback")


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


try:
    from pgmux._speedups import screen
except ImportError:  # not compiled here (setup.py builds it where a C compiler is present)
    screen = screen_py


def query_effects(body: bytes | memoryview, in_tx: bool = True) -> tuple[Effect, ...]:
    """The tracked effects of a Query body (NUL-terminated text). `in_tx`: effects wait for their
    transaction, so statements that end savepoints count too."""
    raw = bytes(body)
    if not screen(raw, 0, len(raw)) and not (in_tx and raw.lstrip()[:9].lower().startswith(_TX_WORDS)):
        return ()
    sql = raw.rstrip(b"\x00").decode("utf-8", "surrogateescape")
    return tuple(e for e in effects(sql) if isinstance(e, _KEPT) and not getattr(e, "local", False))


def query_done(c: ClientSession, server: ServerSession, done: tuple[Effect, ...],
               status: bytes) -> dict[str, str] | None:
    """A watched Query (or a Sync while effects wait for their transaction) got its ReadyForQuery.
    Returns what `apply` says a reset must bring back, if anything."""
    failed, rolled_back, ran = c.q_error, c.q_rollback, c.q_sql
    c.q_error = c.q_rollback = False
    if ran:  # the first `ran` PREPAREs and DEALLOCATEs of the query string ran, whatever came after
        c.q_sql = 0
        for e in done:
            if isinstance(e, (Prepare, Deallocate)) and ran > 0:
                sqlprepared.record(c.sql, server.sql, e)
                ran -= 1
    for e in done:
        # Session advisory locks and LOAD outlive a rollback; a lock taken before an error in the
        # same query string is still held, so a failed query pins too (unlocks count only on success).
        if isinstance(e, (AdvisoryLock, Load)) or (isinstance(e, AdvisoryUnlock) and not failed):
            assert not undone_by_rollback(e)
            pin(c, e)
    if failed or rolled_back:
        if rolled_back or status == b"I":
            c.tx_effects = []
        return None
    for e in done:
        if isinstance(e, (DiscardAll, Deallocate)) and (isinstance(e, DiscardAll) or e.name is None):
            # Not transactional: the server's statements are gone now, and so are the client's.
            if server.stmts is not None:
                server.stmts.forget_all()
            if c.stmts is not None:
                c.stmts.clear()
            c.sql.clear()
            server.sql.clear()
    if done:
        _wait(c, done)
    if status == b"I" and c.tx_effects:
        restore = apply(c, server, c.tx_effects)
        c.tx_effects = []
        return restore
    return None


def executed(c: ClientSession, server: ServerSession, done: tuple[Effect, ...]) -> None:
    """An Execute of a statement with session effects completed (CommandComplete): they count once
    its transaction commits, as a Query's do; locks, LOAD, PREPARE and DEALLOCATE at once."""
    for e in done:
        if isinstance(e, _AT_ONCE):
            pin(c, e)
        elif isinstance(e, (Prepare, Deallocate)):
            sqlprepared.record(c.sql, server.sql, e)
        else:
            _wait(c, (e,))


def _wait(c: ClientSession, done: tuple[Effect, ...]) -> None:
    """Effects that ran in the client's transaction join those waiting for it to commit, savepoints
    kept as marks (see the module's note)."""
    fx = list(c.tx_effects)
    for e in done:
        if isinstance(e, _SAVEPOINTS):
            mark = _last_mark(fx, e.name)
            if isinstance(e, Savepoint):
                if fx:  # a savepoint older than every waiting effect needs no mark
                    fx.append(e)
            elif isinstance(e, RollbackToSavepoint):
                fx = fx[:mark + 1] if mark >= 0 else []
            elif mark >= 0:  # RELEASE: this savepoint and the ones after it go, their effects stay
                fx = fx[:mark] + [x for x in fx[mark + 1:] if not isinstance(x, Savepoint)]
        elif not isinstance(e, _NOT_WAITING):
            fx.append(e)
    c.tx_effects = fx


def _last_mark(fx: list[Effect], name: str) -> int:
    for i in range(len(fx) - 1, -1, -1):
        e = fx[i]
        if isinstance(e, Savepoint) and e.name == name:
            return i
    return -1


def to_savepoint(payload: object) -> bool:
    """Whether a ROLLBACK tag belongs to ROLLBACK TO SAVEPOINT (the statement's effects say so), which
    ends no transaction."""
    return (isinstance(payload, tuple) and any(isinstance(e, RollbackToSavepoint) for e in payload)
            and not any(isinstance(e, TxEnd) for e in payload))


def bound_effects(done: tuple[Effect, ...], params: list[tuple[bytes | None, int]]) -> tuple[Effect, ...]:
    """A statement's effects for one Bind: `set_config($1, $2, false)` becomes the SET it does with
    these parameter values ((value or None for NULL, format code) per parameter)."""
    out: list[Effect] = []
    for e in done:
        if not isinstance(e, SetConfigArgs):
            out.append(e)
            continue
        values: list[object] = []
        for kind, ref in e.args:
            if kind == "const":
                values.append(ref)
                continue
            i = int(ref) - 1  # type: ignore[call-overload]
            if not 0 <= i < len(params):
                values = []
                break
            raw, fmt = params[i]
            if raw is None:
                values.append(None)
            elif fmt == 1 and len(raw) == 1 and raw[0] in (0, 1) and len(values) == 2:
                values.append(bool(raw[0]))  # a binary boolean is_local
            else:
                values.append(raw.decode("utf-8", "surrogateescape"))
        if len(values) == 3:
            eff = set_config_effect(*values)
            if isinstance(eff, (SetParam, ResetParam)) and not eff.local:
                out.append(eff)
    return tuple(out)


_REFUSED_WHAT = {"listen": "LISTEN", "temp table": "a temporary table", "advisory lock": "a session-level "
                 "advisory lock", "with hold cursor": "a cursor WITH HOLD", "load": "LOAD"}


def pin_refused(c: ClientSession, done: tuple[Effect, ...]) -> PgmuxError | None:
    """pin_mode = refuse: the error for a statement that would pin its client, else None."""
    for e in done:
        if isinstance(e, _PINNING):
            why = pin_reason(e) or "session state"
            return PgmuxError(
                f"{_REFUSED_WHAT.get(why, why)} would pin this client to one server connection, and "
                f"database \"{c.database}\" refuses that in {c.pool.mode} pooling (pgmux pin_mode = refuse)",
                sqlstate="0A000",
                hint="use session pooling for this client, or set pin_mode = pin for the database "
                     "(pgmux_pin_mode=pin on its pgbouncer.ini line)")
    return None


def apply(c: ClientSession, server: ServerSession, done: list[Effect]) -> dict[str, str]:
    """Record committed effects. Returns the values a reset must bring back on this server: RESET
    goes back to the session's default, which for the parameters a client gave at startup is its
    own value; the server's RESET went back to the server's default (and its ParameterStatus said so)."""
    reported = c.pool.server_params or {}
    restore: dict[str, str] = {}
    for e in done:
        if isinstance(e, _PINS) or isinstance(e, DiscardAll):
            if not isinstance(e, _AT_ONCE):  # those were counted when their query ended
                pin(c, e)
            if not isinstance(e, DiscardAll):
                continue
        if isinstance(e, SetParam):
            restore.pop(e.name, None)
            if e.name not in reported:
                c.params[e.name] = server.params[e.name] = e.value
                server.extra.add(e.name)
        elif isinstance(e, ResetParam):
            restore.pop(e.name, None)
            if e.name in c.initial:
                restore[e.name] = c.initial[e.name]
                if e.name in reported:
                    c.params[e.name] = c.initial[e.name]
            if e.name not in reported:
                default = c.initial.get(e.name)
                if default is None:
                    c.params.pop(e.name, None)
                else:
                    c.params[e.name] = default
                server.params.pop(e.name, None)  # the server's own default now
                server.extra.discard(e.name)
        elif isinstance(e, (ResetAll, DiscardAll)):
            for k in [k for k in c.params if k not in reported]:
                del c.params[k]
            c.params.update(c.initial)
            restore = dict(c.initial)
            for k in server.extra:
                server.params.pop(k, None)
            server.extra.clear()
    c.sig = None
    server.sig = None
    return {k: v for k, v in restore.items() if server.params.get(k) != v}


class Pins:
    """What keeps a client on its server: state that lives in that server's session and nowhere else."""

    __slots__ = ("listen", "temp", "cursors", "locks", "load")

    def __init__(self) -> None:
        self.listen: set[str] = set()
        self.temp: set[str] = set()
        self.cursors: set[str] = set()
        self.locks = 0
        self.load = False

    def reason(self) -> str:
        """The words SHOW CLIENTS prints in `pin` ("" when nothing pins)."""
        parts = [word for word, on in (("listen", self.listen), ("temp table", self.temp),
                                       ("advisory lock", self.locks > 0), ("with hold cursor", self.cursors),
                                       ("load", self.load)) if on]
        return ", ".join(parts)


def pin(c: ClientSession, e: Effect) -> None:
    """Record what a successful statement did to the state that pins; update `client.pinned`."""
    p = c.pins
    if p is None:
        p = c.pins = Pins()
    if isinstance(e, Listen):
        p.listen.add(e.channel)
    elif isinstance(e, Unlisten):
        if e.channel is None:
            p.listen.clear()
        else:
            p.listen.discard(e.channel)
    elif isinstance(e, CreateTemp):
        p.temp.add(e.name)
    elif isinstance(e, DiscardTemp):
        p.temp.clear()
    elif isinstance(e, DropTemp):
        p.temp.difference_update(e.names)
    elif isinstance(e, AdvisoryLock):
        p.locks += 1
    elif isinstance(e, AdvisoryUnlock):
        p.locks = 0 if e.all else max(p.locks - 1, 0)
    elif isinstance(e, DeclareHold):
        p.cursors.add(e.cursor)
    elif isinstance(e, CloseCursor):
        if e.name is None:
            p.cursors.clear()
        else:
            p.cursors.discard(e.name)
    elif isinstance(e, Load):
        p.load = True
    elif isinstance(e, DiscardAll):  # UNLISTEN *, DISCARD TEMP, CLOSE ALL, pg_advisory_unlock_all
        p.listen.clear()
        p.temp.clear()
        p.cursors.clear()
        p.locks = 0
    was = c.pinned
    c.pinned = p.reason()
    if c.pinned and not was and c.pool is not None:
        c.pool.stats.pin_count += 1
