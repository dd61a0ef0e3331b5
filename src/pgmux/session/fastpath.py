"""The two cheap ways through session/pipeline.py, taken while the server owes nothing pgmux must
rewrite (its queue is empty): a chunk that goes to the server as it is (`as_is`), and the steady
state of named prepared statements, where only each Bind's statement name changes (`rebound`). The
C scans (protocol/scans.py: shape, binds) read the messages; these decide.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from pgmux.protocol.scans import (
    SHAPE_BIND,
    SHAPE_BIND_NAMED,
    SHAPE_CLOSE_STATEMENT,
    SHAPE_DESCRIBE_NAMED,
    SHAPE_EXECUTE,
    SHAPE_OTHER,
    SHAPE_PARSE_NAMED,
    SHAPE_PARSE_UNNAMED,
    SHAPE_SAME,
    SHAPE_SCREEN_NAMED,
    SHAPE_SCREEN_UNNAMED,
    SHAPE_UNNAMED_EARLY,
    binds,
    shape,
)
from pgmux.session.prepared import ClientStatements, ServerStatements

if TYPE_CHECKING:
    from pgmux.session.client import ClientSession
    from pgmux.session.server import ServerSession

_B = ord("B")
_BIND_HDR = struct.Struct("!Bi")


def as_is(c: ClientSession, server: ServerSession, chunk: bytes | memoryview) -> bool:
    """Whether the chunk can go to the server unchanged, with nothing to queue: only the unnamed
    statement, already on this server or parsed here. The usual extended-protocol traffic of drivers
    without named statements (pgbench -M extended, psycopg with parameters) stays this cheap; it
    records the unnamed Parse on the way. Anything else is left to the full walk of to_server.
    Without protocol-level statement tracking (max_prepared_statements = 0) named statements go as
    they are too, unless their text may change session state. scans.shape (in C where built) reads
    the messages; this decides."""
    flags, start, end = shape(chunk, c.screened)
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
        text = c.screened
        if not flags & SHAPE_SAME or text is None:  # (SHAPE_SAME: the same bytes, kept once)
            text = chunk[start:end] if isinstance(chunk, bytes) else bytes(chunk[start:end])
            if not flags & SHAPE_SCREEN_UNNAMED:
                c.screened = text  # screen() passed it: the next Parse of the same text is not screened
        c.unnamed = server.unnamed = text
    return True


def same_batch(c: ClientSession, server: ServerSession) -> bool:
    """as_is for a read protocol/scans.query found to be one batch of the unnamed statement whose Parse
    is c.screened (its kind 3), without a walk: shape would say PARSE_UNNAMED, SAME, BIND and EXECUTE,
    and nothing else. Records that Parse as the unnamed statement of both, as as_is does."""
    if server.held is not None or server.queue or server.skipping or c.skip or c.unsynced or c.stmt_fx \
            or c.portal_fx or c.watch and c.tx_effects:
        return False  # what to_server (with as_is) would walk or hold
    c.unnamed = server.unnamed = c.screened
    return True


def rebound(stmts: ClientStatements, sst: ServerStatements,
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
