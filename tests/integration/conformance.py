"""A differential harness: the same client sessions run directly against PostgreSQL and through pgmux,
and the two transcripts compared message for message.

A session is a list of steps, one per client and step; a step is a list of exchanges (bytes to send,
then messages to read up to a stop type) that run back to back. `interleave` runs every client's step
i concurrently and waits for all of them before step i+1 (a barrier), so 30 clients really share 3
servers; each step starts its clients in an order rotated by one, so that a client's next transaction
tends to land on another server than its last (the scripts record the backend pid to prove it).

What may differ, and the only things normalised (`normalise`):
- BackendKeyData: pgmux hands out its own pid and key, by design.
- The ParameterStatus messages of the login: PostgreSQL sends them in the order of its GUC table;
  pgmux replays the pool's set from its first server, with the client's own values. The rule: the
  same (name, value) pairs, in any order (they are compared as a sorted list, duplicates kept).
- Values a script tags as backend pids: a text value `pid:<n>` becomes `pid:*`. Through pgmux the
  pid changes with the server; the tag is what lets the tests check that it did.
- The pid of the notifying backend in a NotificationResponse (its first four bytes).
Everything else, bodies included, must be equal.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from helpers import execute, parse

from pgmux.protocol import messages as m

Msg = tuple[bytes, bytes]  # (type byte, body)


# -- frontend messages pgmux does not build itself ----------------------------------------------------
def bind(stmt: str = "", params: Sequence[bytes | None] = (), portal: str = "") -> bytes:
    body = m.cstr(portal) + m.cstr(stmt) + struct.pack("!h", 0) + struct.pack("!h", len(params))
    for p in params:
        body += struct.pack("!i", -1) if p is None else struct.pack("!i", len(p)) + p
    return m.message(m.BIND, body + struct.pack("!h", 0))


def describe(kind: str, name: str = "") -> bytes:
    return m.message(m.DESCRIBE, kind.encode() + m.cstr(name))


def close(kind: str, name: str = "") -> bytes:
    return m.message(m.CLOSE, kind.encode() + m.cstr(name))


def copy_fail(why: str) -> bytes:
    return m.message(m.COPY_FAIL, m.cstr(why))


def run(sql: str, *params: bytes | None, name: str = "", types: Sequence[int] = ()) -> bytes:
    """Parse, Bind, Describe (portal), Execute of one statement, without a Sync."""
    return parse(sql, name, types) + bind(name, params) + describe("P") + execute()


# -- the raw client --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Exchange:
    """Send `send`, then read messages until `count` messages of type `until` have come. A `side`
    exchange goes to the client's other connection, directly on PostgreSQL in both runs."""

    send: bytes
    until: bytes = m.READY_FOR_QUERY
    count: int = 1
    side: bool = False


Step = list[Exchange]


class RawClient:
    """Protocol v3 over an asyncio stream: sends bytes, records every backend message."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, host: str, port: int, params: dict[str, str]) -> tuple[RawClient, list[Msg]]:
        reader, writer = await asyncio.open_connection(host, port)
        client = cls(reader, writer)
        writer.write(m.startup_message(params))
        return client, await client.read_until(m.READY_FOR_QUERY, 1)

    async def read_msg(self) -> Msg:
        hdr = await self.reader.readexactly(5)
        mtype, length = struct.unpack("!ci", hdr)
        if not 4 <= length < 1 << 24:
            raise AssertionError(f"implausible length {length} for message {mtype!r}")
        return mtype, await self.reader.readexactly(length - 4)

    async def read_until(self, until: bytes, count: int, limit: int = 10_000) -> list[Msg]:
        out: list[Msg] = []
        seen = 0
        for _ in range(limit):
            msg = await self.read_msg()
            out.append(msg)
            if msg[0] == until:
                seen += 1
                if seen == count:
                    return out
        raise AssertionError(f"no {until!r} x{count} within {limit} messages")

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def exchange(self, ex: Exchange) -> list[Msg]:
        self.send(ex.send)
        return await self.read_until(ex.until, ex.count)

    async def close(self) -> None:
        try:
            self.writer.write(m.terminate())
            self.writer.close()
            await asyncio.wait_for(self.writer.wait_closed(), 5)
        except (OSError, TimeoutError):
            pass


# -- interleaving ------------------------------------------------------------------------------------
async def interleave(n: int, steps: int, run_step: Callable[[int, int, asyncio.Event], Awaitable[None]]) -> None:
    """Run step i of all `n` clients concurrently, then step i+1 (a barrier between steps).

    At step i, clients start in the order i, i+1, ..., n-1, 0, ..., i-1: client k starts once the
    client before it in that order has sent its first request (it sets the event it is given), so
    the pool sees the requests in that order and hands servers out accordingly."""
    for i in range(steps):
        order = [(i + p) % n for p in range(n)]
        sent = [asyncio.Event() for _ in range(n)]

        async def one(pos: int, k: int, i: int = i, sent: list[asyncio.Event] = sent) -> None:
            if pos:
                await sent[pos - 1].wait()
            try:
                await run_step(k, i, sent[pos])
            finally:
                sent[pos].set()

        await asyncio.gather(*(one(pos, k) for pos, k in enumerate(order)))


# -- transcripts and their comparison -----------------------------------------------------------------
@dataclass
class Transcript:
    """One client's session: the login's messages, then each exchange's, labelled."""

    entries: list[tuple[str, list[Msg]]] = field(default_factory=list)

    def add(self, label: str, msgs: list[Msg]) -> None:
        self.entries.append((label, msgs))


PID_TAG = b"pid:"


def pids_in(msgs: list[Msg]) -> list[int]:
    """The backend pids a script tagged in DataRows (text values `pid:<n>`)."""
    out = []
    for t, body in msgs:
        if t == m.DATA_ROW:
            out.extend(int(v[len(PID_TAG):]) for v in row_values(body) if v is not None and v.startswith(PID_TAG))
    return out


row_values = m.data_row_values


def _data_row(values: list[bytes | None]) -> bytes:
    parts = [struct.pack("!h", len(values))]
    for v in values:
        parts.append(struct.pack("!i", -1) if v is None else struct.pack("!i", len(v)) + v)
    return b"".join(parts)


def normalise(label: str, msgs: list[Msg]) -> list[Msg]:
    """The stated rules, and no more (see the module docstring)."""
    out: list[Msg] = []
    for t, body in msgs:
        if t == m.BACKEND_KEY_DATA:
            body = b"<pid and key>"
        elif t == m.NOTIFICATION_RESPONSE:
            body = b"<pid>" + body[4:]
        elif t == m.DATA_ROW and PID_TAG in body:
            vals = row_values(body)
            body = _data_row([PID_TAG + b"*" if v is not None and v.startswith(PID_TAG) else v for v in vals])
        out.append((t, body))
    if label == "login":
        status = sorted(b for t, b in out if t == m.PARAMETER_STATUS)
        rest = [msg for msg in out if msg[0] != m.PARAMETER_STATUS]
        out = rest[:1] + [(m.PARAMETER_STATUS, b) for b in status] + rest[1:]
    return out


def show(msg: Msg) -> str:
    t, body = msg
    name = _NAMES.get(t, "?")
    if t in (m.ERROR_RESPONSE, m.NOTICE_RESPONSE):
        f = m.parse_error_fields(body)
        return f"{name}({', '.join(f'{k}={v}' for k, v in f.items())})"
    return f"{name}({body!r})"


_NAMES = {
    m.AUTHENTICATION: "Authentication", m.BACKEND_KEY_DATA: "BackendKeyData", m.BIND_COMPLETE: "BindComplete",
    m.CLOSE_COMPLETE: "CloseComplete", m.COMMAND_COMPLETE: "CommandComplete", m.COPY_DATA: "CopyData",
    m.COPY_DONE: "CopyDone", m.COPY_IN_RESPONSE: "CopyInResponse", m.COPY_OUT_RESPONSE: "CopyOutResponse",
    m.DATA_ROW: "DataRow", m.EMPTY_QUERY_RESPONSE: "EmptyQueryResponse", m.ERROR_RESPONSE: "ErrorResponse",
    m.NO_DATA: "NoData", m.NOTICE_RESPONSE: "NoticeResponse",
    m.NOTIFICATION_RESPONSE: "NotificationResponse", m.PARAMETER_DESCRIPTION: "ParameterDescription",
    m.PARAMETER_STATUS: "ParameterStatus", m.PARSE_COMPLETE: "ParseComplete", m.PORTAL_SUSPENDED: "PortalSuspended",
    m.READY_FOR_QUERY: "ReadyForQuery", m.ROW_DESCRIPTION: "RowDescription",
}


@dataclass(frozen=True)
class Difference:
    """The first differing message of one exchange of one client (normalised; None past the end)."""

    client: int
    label: str
    index: int
    direct: Msg | None
    pooled: Msg | None
    counts: tuple[int, int]
    exchange: tuple[list[Msg], list[Msg]] = field(repr=False, compare=False, default=([], []))

    def __str__(self) -> str:
        a, b = self.counts
        return (f"client {self.client} {self.label}: message {self.index} differs (direct {a} messages, pgmux {b}):\n"
                f"    direct: {show(self.direct) if self.direct else '(none)'}\n"
                f"    pgmux:  {show(self.pooled) if self.pooled else '(none)'}")


def compare(direct: dict[int, Transcript], pooled: dict[int, Transcript]) -> list[Difference]:
    """Every difference between the two runs, client by client, exchange by exchange: for each
    differing exchange, the first differing message with both sides shown."""
    if sorted(direct) != sorted(pooled):
        raise AssertionError(f"different clients: {sorted(direct)} vs {sorted(pooled)}")
    out: list[Difference] = []
    for k in sorted(direct):
        a, b = direct[k].entries, pooled[k].entries
        if [lbl for lbl, _ in a] != [lbl for lbl, _ in b]:
            raise AssertionError(f"client {k}: different exchanges: {[lbl for lbl, _ in a]} vs {[lbl for lbl, _ in b]}")
        for (label, ma), (_, mb) in zip(a, b, strict=True):
            na, nb = normalise(label, ma), normalise(label, mb)
            if na == nb:
                continue
            i = next((j for j, (x, y) in enumerate(zip(na, nb, strict=False)) if x != y), min(len(na), len(nb)))
            out.append(Difference(k, label, i, na[i] if i < len(na) else None, nb[i] if i < len(nb) else None,
                                  (len(na), len(nb)), (na, nb)))
    return out


def summarise(problems: Sequence[object], limit: int = 25) -> str:
    """The differences with those that all clients share told once, naming the clients."""
    by_text: dict[str, list[str]] = {}
    for p in problems:
        who, _, rest = str(p).partition(" ")[2].partition(" ")
        by_text.setdefault(rest, []).append(who)
    lines = [f"clients {','.join(who)} {text}" for text, who in by_text.items()]
    more = f"\n... and {len(lines) - limit} more" if len(lines) > limit else ""
    return f"{len(problems)} differences:\n" + "\n".join(lines[:limit]) + more


# -- driver outcomes -----------------------------------------------------------------------------------
def outcome_of_error(e: BaseException) -> tuple[Any, ...]:
    """An exception as the part the application sees: its class, SQLSTATE and primary message."""
    sqlstate = getattr(e, "sqlstate", None)
    diag = getattr(e, "diag", None)
    text = diag.message_primary if diag is not None and diag.message_primary else str(e).splitlines()[0]
    return ("error", type(e).__name__, sqlstate, text)


def plain(value: Any) -> Any:
    """Driver results as plain data: an asyncpg Record becomes a tuple of (column, value) pairs."""
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v) for v in value)
    if hasattr(value, "items") and not isinstance(value, dict):
        return tuple((k, plain(v)) for k, v in value.items())
    return value


def mask_pids(value: Any) -> Any:
    """Driver results with `pid:<n>` texts replaced by `pid:*` (the rule of `normalise`)."""
    if isinstance(value, str) and value.startswith("pid:"):
        return "pid:*"
    if isinstance(value, (list, tuple)):
        return type(value)(mask_pids(v) for v in value)
    if isinstance(value, dict):
        return {k: mask_pids(v) for k, v in value.items()}
    return value


def driver_pids(value: Any) -> list[int]:
    if isinstance(value, str) and value.startswith("pid:"):
        return [int(value[4:])]
    if isinstance(value, (list, tuple)):
        return [p for v in value for p in driver_pids(v)]
    if isinstance(value, dict):
        return [p for v in value.values() for p in driver_pids(v)]
    return []
