"""A client's Parse + Sync answered without a server, when pgmux already knows the statement.

In transaction pooling a client between transactions has no server, and a Parse normally waits for
one like anything else. But a Parse of a named statement whose text and parameter types some server
has parsed already (session/prepared.py `Registry.known_good`) needs nothing from a server now:
pgmux records the client's name, answers ParseComplete and ReadyForQuery('I') itself (no server is
held, so no transaction is open), and the statement is prepared on whichever server the client's
first Bind or Describe of it lands on (pipeline.py `ensure`, as for any statement that server lacks).

Why it matters: pgbench -M prepared prepares with a blocking PQprepare inside its event loop. With
fewer threads than clients and a pool smaller than the clients, a thread blocked in a prepare would
wait for a server that its own other clients hold inside their transactions: a deadlock. PgBouncer
forwards such a Parse to a server too.

Only the plain case is answered here: Parses of named statements the client does not have yet, whose
text the byte screen says changes no tracked session state, then one Sync ending the read. Anything
else (a new text, a duplicate name, the unnamed statement, session effects, other messages) waits for
a server as before, and PostgreSQL answers it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pgmux.errors import ProtocolViolation
from pgmux.protocol import messages as m
from pgmux.protocol.extended import read_parse
from pgmux.protocol.scans import ANY_LENGTH, message_end, screen
from pgmux.session.prepared import ClientStatements

if TYPE_CHECKING:
    from pgmux.session.client import ClientSession

_P, _S = ord("P"), ord("S")
_PARSE_COMPLETE = m.message(m.PARSE_COMPLETE)
_READY_IDLE = m.ready_for_query(b"I")


def answer(c: ClientSession, chunk: bytes | memoryview) -> bytes | None:
    """The replies to `chunk` (complete messages, ending in its one Sync) when pgmux can give them
    without a server, the client's statements recorded; None to send it to a server as usual."""
    stmts = c.stmts
    if stmts is None or c.pool is None or c.pool.mode == "session":
        return None
    registry = stmts.registry
    raw = bytes(chunk)
    n = len(raw)
    pos = 0
    found: list[tuple[str, str, tuple[int, ...]]] = []
    while pos < n:
        t = raw[pos]
        end = message_end(raw, pos, ANY_LENGTH)
        if t == _S:
            return _record(stmts, found) if end == n and found else None
        if t != _P:
            return None
        body = memoryview(raw)[pos + 5:end]
        try:
            p = read_parse(body)
        except ProtocolViolation:
            return None  # PostgreSQL says what is wrong with it
        if not p.name or stmts.lookup(p.name) is not None or any(f[0] == p.name for f in found):
            return None
        # The text (after the name): one the screen flags may change session state, tracked on the usual path.
        if screen(raw, raw.index(b"\x00", pos + 5, end) + 1, end):
            return None
        stmt = registry.find(p.query, tuple(p.param_types))
        if stmt is None or not registry.known_good(stmt.name):
            return None
        found.append((p.name, p.query, tuple(p.param_types)))
        pos = end
    return None


def _record(stmts: ClientStatements, found: list[tuple[str, str, tuple[int, ...]]]) -> bytes:
    for name, query, types in found:
        stmts.parse(name, query, types)
    return _PARSE_COMPLETE * len(found) + _READY_IDLE
