"""Long messages streamed through as they arrive, so that what a connection holds stays bounded:
which part of a read still belongs to such a message, and what follows it (both relays:
client_pass, server_pass), and what a long message gets at its header (client_large, server_large).
Compiled with the sessions (setup.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from pgmux.errors import PgmuxError, ProtocolViolation
from pgmux.protocol.codec import MAX_INSPECTED
from pgmux.session.states import ServerState

if TYPE_CHECKING:
    from pgmux.session.client import ClientSession
    from pgmux.session.server import ServerSession

_Q: Final = ord("Q")
_F: Final = ord("F")
_COPY_DATA: Final = ord("d")
# What PostgreSQL's backend reads after login (postgres.c SocketBackend): messages that may be long,
# and those it refuses beyond 10000 bytes (PQ_SMALL_MESSAGE_LIMIT; pgmux refuses them beyond
# STREAM_FROM, at their header). Others it refuses whatever their length.
_LARGE: Final = frozenset(b"QFPBd")
_PG_LARGE_LIMIT: Final = 0x3FFFFFFE  # PostgreSQL's PQ_LARGE_MESSAGE_LIMIT, for those
_SMALL: Final = frozenset(b"SHECDXcf")
_NAMES: Final = {_Q: "Query", _F: "FunctionCall", ord("P"): "Parse", ord("B"): "Bind"}
_DECODED: Final = frozenset(b"ZSEGRK")  # replies the relays read whole, never streamed
_ROWS: Final = frozenset(b"Dd")  # DataRow, CopyData: streamed even while replies are reordered (pipeline.py)


def cut(data: bytes, left: int) -> tuple[bytes | memoryview, bytes, int]:
    """`left` bytes of a long message still to come, and `data`, the next read: the message's part of
    the read, the bytes after the message, and how many of its bytes are still to come after this read."""
    if left < len(data):
        return memoryview(data)[:left], data[left:], 0
    return data, b"", left - len(data)


def client_large(c: ClientSession) -> None:
    """The message a client's buffer keeps is longer than STREAM_FROM (codec.py). A message pgmux reads
    whole is held, up to MAX_INSPECTED; anything else is forwarded as it arrives (_pass), so
    that what one connection holds stays bounded whatever length a message claims."""
    buf = c.buf
    t = buf.pending[0]
    total = buf.need
    if t in _SMALL:  # as PostgreSQL's backend refuses them (postgres.c)
        raise ProtocolViolation(f"invalid message length {total - 1} for message type {chr(t)!r}")
    if t not in _LARGE:
        raise ProtocolViolation(f"invalid frontend message type {t}")
    if total - 1 > _PG_LARGE_LIMIT:  # PostgreSQL would drop the connection at this header
        raise ProtocolViolation(f"invalid message length {total - 1} for message type {chr(t)!r}")
    server = c.server
    if t != _COPY_DATA and (c.watch or c.stmts is not None or c.route is not None) \
            or c.route is not None and (server is None or c.pending):
        if total > MAX_INSPECTED:
            raise PgmuxError(
                f"message too long: a {_NAMES.get(t, chr(t))} of {total} bytes, and pgmux reads these whole "
                f"to track session state or route them, up to {MAX_INSPECTED} bytes",
                sqlstate="54000", severity="FATAL",
                hint="use session pooling for this client, or send smaller messages")
        return  # held whole (bounded): completed by buf.feed() in data_received
    part = buf.take()
    c.passing = total - len(part)
    syncs = 1 if t == _Q or t == _F else 0
    if syncs:
        c.unsynced = False
        c.copy_syncs = 0
    elif t != _COPY_DATA:
        c.unsynced = True  # a Parse or a Bind
    now = c.request_time = c.hub.now()
    c.logged_in_pool().stats.bytes_received += len(part)
    if server is not None and not c.pending:
        if syncs and not server.owed:
            server.query_start = now
        server.owed += syncs
        server.transport.write(part)
    elif t == _COPY_DATA and not c.pending:
        c.sink = True  # the rest of a failed COPY FROM STDIN: PostgreSQL would drop it too
    else:
        c._push(part)
        c.pending_syncs += syncs
        c._hold()


def client_pass(c: ClientSession, data: bytes) -> bytes:
    """The next bytes of a client's long message (client_large): forwarded (or dropped); returns what
    follows it."""
    part, rest, c.passing = cut(data, c.passing)
    if c.sink:
        if not c.passing:
            c.sink = False
        return rest
    c.logged_in_pool().stats.bytes_received += len(part)
    server = c.server
    if server is not None and not c.held:
        server.transport.write(part)
        if (not c.passing and not server.owed and server.tx_status == b"I" and not server.queue
                and not c.unsynced):
            # Its replies came while the message was still on its way (a COPY that failed early):
            # the server was kept for the rest (App.server_ready); now it can go.
            c.hub.server_ready(c, server)
    else:  # read before the pause took effect: queued behind the start of the message
        c._push(bytes(part))
        c._hold()
    return rest


def server_large(s: ServerSession) -> None:
    """The reply the server's buffer keeps is longer than STREAM_FROM (codec.py). One the relay only
    forwards goes on to the client as it arrives (server_pass); one it must read whole (a ParameterStatus,
    an error, a reply while pgmux swallows or reorders replies) is held up to MAX_INSPECTED."""
    buf = s.buf
    t = buf.pending[0]
    c = s.client
    q = s.queue
    if s.state is ServerState.CLOSED:
        return
    if c is None or s.swallow or t in _DECODED or q and (t not in _ROWS or q[0].swallow):
        if buf.need > MAX_INSPECTED:
            raise ProtocolViolation(f"message too long: {buf.need} bytes of type {chr(t)!r}, above "
                                    f"the {MAX_INSPECTED} bytes pgmux reads whole")
        return
    part = buf.take()
    s.passing = buf.need - len(part)
    if c is not None:
        c.transport.write(part)
        s.pool.stats.bytes_sent += len(part)


def server_pass(s: ServerSession, data: bytes) -> bytes:
    """The next bytes of a long reply (see server_large), to the linked client; returns what follows it."""
    part, rest, s.passing = cut(data, s.passing)
    c = s.client
    if c is not None:
        c.transport.write(part)
        s.pool.stats.bytes_sent += len(part)
    return rest
