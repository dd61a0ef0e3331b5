"""Before a Bind or Describe of a client's statement whose result shape the client knows: whether the
server's copy must be prepared again and Described first (`unchecked`), and the messages that do it
(`check`). The client's messages from that Bind or Describe on wait in `server.held` until the reply
says the shape (session/replies.py), then go on through pipeline.release (session/prepared.py says
why: a shape a DDL changed fails as PostgreSQL fails it, 0A000).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from pgmux.errors import CachedPlanChanged
from pgmux.protocol import messages as m
from pgmux.protocol.extended import build_close_statement, build_parse, build_target
from pgmux.session.entries import DESCRIBE, PARSE, SWALLOWED_CLOSE, Described, Entry, forget, still_failed
from pgmux.session.prepared import ServerStatements, Statement

if TYPE_CHECKING:
    from pgmux.session.server import ServerSession

_FLUSH = m.message(m.FLUSH)


def unchecked(server: ServerSession, q: deque[Entry], sst: ServerStatements, stmt: Statement) -> bool:
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
    return not (server.tx_status == b"E" and still_failed(q))


def check(server: ServerSession, q: deque[Entry], sst: ServerStatements, stmt: Statement) -> list[bytes | memoryview]:
    """The copy prepared again and Described, then a Flush; the client's messages from the Bind or
    Describe on are held in `server.held` until the reply says the shape (`release`)."""
    first: list[bytes | memoryview] = []
    for old in sst.renew(stmt.name):
        first.append(build_close_statement(old))
        q.append(SWALLOWED_CLOSE)
    first.append(build_parse(stmt.name, stmt.query, stmt.param_types))
    q.append(Entry(PARSE, True, stmt.name, forget(sst, stmt.name)))
    first.append(build_target(m.DESCRIBE, "S", stmt.name))
    first.append(_FLUSH)
    q.append(Entry(DESCRIBE, True, Described(sst, stmt.name, None, "", None, True), _checked(server, stmt.name)))
    return first


def _checked(server: ServerSession, name: str) -> Callable[[], None]:
    """The check's Parse failed (its error goes to the client): the held messages go on, and the server
    skips them up to their Sync, as it would the client's own."""
    def undo() -> None:
        server.checked = name
        server.release = True
    return undo
