"""A one-shot PostgreSQL client connection of pgmux's own: log in, run a query, read its row.

The health monitor (runtime/health_monitor.py) keeps one per host for its checks. It lives in net/
because net/ is the only package that opens sockets (DESIGN); it speaks just enough of the protocol,
with pgmux's own codec and authenticator, and no driver.
"""

from __future__ import annotations

import asyncio
import os
import struct
from typing import Any

from pgmux.net.tls import upgrade_stream
from pgmux.protocol import messages as m
from pgmux.protocol.auth import ServerAuthenticator

MAX_MESSAGE = 1 << 20  # a check's replies are tiny; anything bigger is not a PostgreSQL we understand
_HDR = struct.Struct("!ci")
_I32 = struct.Struct("!i")


class CheckFailed(Exception):
    """The host answered, but not as a healthy server does (an ErrorResponse, a broken reply)."""


class Probe:
    """One logged-in check connection: just enough of the protocol to log in and run one query."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, host: str | None, port: int, user: str, password: str | None, dbname: str,
                   unix_dir: str, tls: Any = None, application_name: str = "pgmux health check") -> Probe:
        """`tls`: net/tls.Contexts; over TCP, the check connection speaks TLS as pooled servers do."""
        if host is None or host.startswith("/"):
            path = os.path.join(host or unix_dir, f".s.PGSQL.{port}")
            reader, writer = await asyncio.open_unix_connection(path)
        else:
            reader, writer = await asyncio.open_connection(host, port)
        conn = cls(reader, writer)
        try:
            if tls is not None and host is not None and not host.startswith("/"):
                await upgrade_stream(reader, writer, host, tls.server, tls.server_mode)
            await conn._login(user, password, dbname, application_name)
        except BaseException:
            conn.close()
            raise
        return conn

    async def _read(self) -> tuple[bytes, bytes]:
        mtype, length = _HDR.unpack(await self.reader.readexactly(5))
        if length < 4 or length > MAX_MESSAGE:
            raise CheckFailed(f"invalid message length {length}")
        return mtype, await self.reader.readexactly(length - 4)

    async def _login(self, user: str, password: str | None, dbname: str, application_name: str) -> None:
        self.writer.write(m.startup_message({"user": user, "database": dbname,
                                             "application_name": application_name}))
        auth = ServerAuthenticator(user, password)
        while True:
            mtype, body = await self._read()
            if mtype == m.AUTHENTICATION:
                reply = auth.feed(_I32.unpack_from(body)[0], body[4:])
                if reply is not None:
                    self.writer.write(reply)
            elif mtype == m.ERROR_RESPONSE:
                raise CheckFailed(_error_text(body))
            elif mtype == m.READY_FOR_QUERY:
                return
            # ParameterStatus, BackendKeyData, notices, NegotiateProtocolVersion: not needed here.

    async def query_row(self, sql: str) -> list[str | None]:
        self.writer.write(m.query(sql))
        row: list[str | None] | None = None
        error: str | None = None
        while True:
            mtype, body = await self._read()
            if mtype == m.DATA_ROW:
                row = _decode_row(body)
            elif mtype == m.ERROR_RESPONSE:
                error = _error_text(body)
            elif mtype == m.READY_FOR_QUERY:
                break
        if error is not None:
            raise CheckFailed(error)
        if row is None:
            raise CheckFailed("the check query returned no row")
        return row

    async def query_params(self, sql: str, params: list[str]) -> list[list[str | None]]:
        """`sql` with $1.. bound to `params` (text), through the extended protocol: no quoting of
        values into SQL. Returns the rows; raises CheckFailed on an ErrorResponse."""
        enc = [p.encode("utf-8") for p in params]
        bind = (b"\x00\x00" + struct.pack("!hh", 0, len(enc))
                + b"".join(struct.pack("!i", len(p)) + p for p in enc) + struct.pack("!h", 0))
        parse = b"\x00" + sql.encode("utf-8") + b"\x00" + struct.pack("!h", 0)
        self.writer.write(m.message(b"P", parse) + m.message(b"B", bind) + m.message(b"E", b"\x00\x00\x00\x00\x00")
                          + m.message(b"S", b""))
        rows: list[list[str | None]] = []
        error: str | None = None
        while True:
            mtype, body = await self._read()
            if mtype == m.DATA_ROW:
                rows.append(_decode_row(body))
            elif mtype == m.ERROR_RESPONSE:
                error = _error_text(body)
            elif mtype == m.READY_FOR_QUERY:
                break
        if error is not None:
            raise CheckFailed(error)
        return rows

    async def query_reply(self, sql: str) -> bytes:
        """A simple query's whole reply, as the messages came (ReadyForQuery left out); raises CheckFailed
        on an ErrorResponse. The console of a worker process asks the others with it (runtime/worker_admin.py)."""
        self.writer.write(m.query(sql))
        out: list[bytes] = []
        error: str | None = None
        while True:
            mtype, body = await self._read()
            if mtype == m.READY_FOR_QUERY:
                break
            if mtype == m.ERROR_RESPONSE:
                error = _error_text(body)
            out.append(m.message(mtype, body))
        if error is not None:
            raise CheckFailed(error)
        return b"".join(out)

    def close(self) -> None:
        try:
            if not self.writer.is_closing():
                self.writer.write(m.terminate())
            self.writer.close()
        except Exception:  # noqa: BLE001  # closing a broken socket may fail; it is gone either way
            pass


def _error_text(body: bytes) -> str:
    fields = m.parse_error_fields(body)
    return f"{fields.get('C', '?????')} {fields.get('M', 'error')}"


def _decode_row(body: bytes) -> list[str | None]:
    return [None if v is None else v.decode() for v in m.data_row_values(body)]
