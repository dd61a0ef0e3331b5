"""The entries of `server.queue`: what a server still owes for each request it was sent (see
session/pipeline.py), and the small helpers both directions of the pipeline use on that queue.

`Entry` is a native class under mypyc (typed attributes, no dict): making, queueing and reading one
costs what a tuple did (measured: about 0.9-1.2 us per entry either way on a loaded 2-core machine,
within noise), and its fields have names instead of e[1], e[2], e[3].
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from pgmux.session.client import ClientSession
    from pgmux.session.prepared import ClientStatements, ServerStatements, Statement
    from pgmux.session.server import ServerSession

# What ends the reply to one request. QUERY (Query, FunctionCall, or a placeholder) and SYNC end at
# ReadyForQuery; SYNTH is a reply pgmux writes itself; REFUSED (a Flush with a body) gets only an error.
PARSE, BIND, DESCRIBE, EXECUTE, CLOSE, SYNC, QUERY, SYNTH, REFUSED = range(9)
ENDS: Final[dict[int, frozenset[int]]] = {
    PARSE: frozenset(b"1"), BIND: frozenset(b"2"), DESCRIBE: frozenset(b"Tn"), EXECUTE: frozenset(b"CIs"),
    CLOSE: frozenset(b"3"),
}
AT_Z: Final = (SYNC, QUERY)

Undo = Callable[[], Any] | None


class Entry:
    """One request the server has not answered yet.

    - kind: PARSE ... SYNTH, which says what ends its reply (ENDS, AT_Z);
    - swallow: its reply is pgmux's own business, not the client's;
    - payload: for SYNTH the reply pgmux writes; for a watched QUERY or EXECUTE the session effects
      to record once it succeeds (session/tracking.py); for DESCRIBE a `Described`; for a PARSE of a
      named statement its server-side name (its ParseComplete marks it parsed); FAIL for the
      request that stands in for an error pgmux gave the client itself;
    - undo: what to take back when the server skips the request (an error before it)."""

    __slots__ = ("kind", "swallow", "payload", "undo")

    def __init__(self, kind: int, swallow: bool = False, payload: Any = None, undo: Undo = None) -> None:
        self.kind = kind
        self.swallow = swallow
        self.payload = payload
        self.undo = undo

    def plain(self) -> bool:
        """Nothing to swallow, add, watch or undo: the header-only relay would answer it the same."""
        return not self.swallow and self.payload is None and self.undo is None

    def __repr__(self) -> str:
        return f"Entry({self.kind}, {self.swallow}, {self.payload!r}, {self.undo!r})"


# Shared, never modified: one per ReadyForQuery owed when the queue starts, and pgmux's own Closes.
PLACEHOLDER: Final = Entry(QUERY)
SWALLOWED_CLOSE: Final = Entry(CLOSE, True)

# When pgmux answers an error itself, the server must fail too: inside a transaction block PostgreSQL
# would abort the transaction (ReadyForQuery 'E', later statements refused until ROLLBACK) and skip the
# rest of the batch. A Parse that cannot succeed does exactly that; its own ErrorResponse is swallowed
# (entries whose payload is FAIL), and the server's log says why.
FAIL: Final[Any] = ("fail",)


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


def still_failed(q: deque[Entry]) -> bool:
    """With the server's last ReadyForQuery saying 'E': whether it still is in that failed transaction
    when it reads the next message. Only a Sync or a Query in flight can end it."""
    return not any(e.kind in AT_Z for e in q)


def drop_last_syncs(q: deque[Entry], n: int) -> None:
    """Syncs a backend in copy-in mode reads and ignores: no ReadyForQuery will come for them."""
    for i in range(len(q) - 1, -1, -1):
        if n == 0:
            return
        if q[i].kind == SYNC:
            del q[i]
            n -= 1


def query_in_batch(q: deque[Entry]) -> bool:
    """Whether a Query or FunctionCall is queued inside an extended-protocol batch (after one of its
    messages, no Sync between). When a message of the batch before it fails, PostgreSQL skips it up to
    the Sync like the rest, and it gets no ReadyForQuery: only the queue can tell (replies._error). So
    does a chunk that leaves a batch open: what follows it may be such a Query."""
    open_batch = False
    for e in q:
        kind = e.kind
        if kind == SYNC:
            open_batch = False
        elif kind == QUERY:
            if open_batch:
                return True
        elif kind != SYNTH:
            open_batch = True
    return False


def batch_open(q: deque[Entry]) -> bool:
    """Whether the last request queued is a message of an extended-protocol batch not synced yet. A
    Query there gets its prelude (watch.prelude) without a Sync of its own: that Sync would end the
    skip after an error earlier in the batch, and the Query would run where PostgreSQL skips it."""
    for i in range(len(q) - 1, -1, -1):
        kind = q[i].kind
        if kind != SYNTH:
            return kind != SYNC and kind != QUERY
    return False


# Undo: what a request the server skipped takes back.
def unset_unnamed(server: ServerSession) -> Callable[[], None]:
    def undo() -> None:
        server.unnamed = None
    return undo


def forget(sst: ServerStatements, name: str) -> Callable[[], Any]:
    return lambda: sst.forget(name)


def undo_close(stmts: ClientStatements, client_name: str, stmt: Statement) -> Callable[[], None]:
    """A Close of a statement pgmux answered itself, in a batch that failed before it."""
    return lambda: stmts.reopen(client_name, stmt)


def undo_parse(c: ClientSession, client_name: str, sst: ServerStatements | None,
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
