"""A small HTTP/1.1 listener on pgmux's own event loop, for /metrics and the status page (runtime/web.py).

It serves GET and HEAD only, one request per connection (`Connection: close`), and is bounded so that a
scraper or a browser, or anyone else who reaches the port, cannot cost the pooler more than a little:

- at most `max_conns` connections at once; one more is answered 503 once its request head is read (or
  after a second), and closed; those wait in a set of their own, also bounded (past it: cut at once);
- a request head of at most `max_head` bytes (431 past it), no body (a request that announces one gets 413);
- `timeout` seconds for the whole exchange, from accept to the last byte written: a slow or silent peer is
  cut off, and a peer that does not read the response does not hold it longer than that.

The handler is a plain function called on the loop: (method, path, headers) -> (status, headers, body). It
builds its answer from in-memory state and must not block; or it returns an awaitable of that answer
(with worker processes, a scrape asks the other workers: runtime/webshare.py), awaited within the
exchange's `timeout` and cancelled when the peer goes away.

It listens on a host and port (`start`), on sockets bound already (`start_sockets`: a worker's copies of
the one the supervisor bound) or on a Unix socket path (`start_unix`: a worker's private one).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("pgmux")

Reply = tuple[int, dict[str, str], bytes]
Handler = Callable[[str, str, dict[str, str]], Reply | Awaitable[Reply]]

REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 413: "Content Too Large",
           431: "Request Header Fields Too Large", 500: "Internal Server Error", 503: "Service Unavailable"}


def response(status: int, headers: dict[str, str], body: bytes, head_only: bool = False) -> bytes:
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}", f"Content-Length: {len(body)}",
             "Connection: close", "Cache-Control: no-store"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if head_only else body)


def _plain(status: int, text: str) -> bytes:
    return response(status, {"Content-Type": "text/plain; charset=utf-8"}, text.encode() + b"\n")


class HttpServer:
    def __init__(self, handler: Handler, *, max_conns: int = 32, max_head: int = 8192,
                 timeout: float = 10.0) -> None:
        self.handler = handler
        self.max_conns = max_conns
        self.max_head = max_head
        self.timeout = timeout
        self.conns: set[_Conn] = set()
        self.refused: set[_Conn] = set()  # over max_conns: answered 503 when their request arrives
        self.servers: list[asyncio.AbstractServer] = []

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self.servers.append(await loop.create_server(lambda: _Conn(self), None if host in ("*", "") else host,
                                                     port, reuse_address=True))

    async def start_sockets(self, socks: list[socket.socket]) -> None:
        """Accept on listening sockets bound already; they become the listener's (closed with it)."""
        loop = asyncio.get_running_loop()
        try:
            for sock in socks:
                self.servers.append(await loop.create_server(lambda: _Conn(self), sock=sock))
        except BaseException:
            self.close()
            for sock in socks:
                sock.close()
            raise

    async def start_unix(self, path: str) -> None:
        """Listen on a Unix socket at `path` (mode 0600; a leftover file there is replaced)."""
        if os.path.exists(path):
            os.unlink(path)
        loop = asyncio.get_running_loop()
        self.servers.append(await loop.create_unix_server(lambda: _Conn(self), path))
        os.chmod(path, 0o600)

    def close(self) -> None:
        for srv in self.servers:
            srv.close()
        self.servers = []
        for c in list(self.conns) + list(self.refused):
            c.abort()


class _Conn(asyncio.Protocol):
    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.buf = b""
        self.transport: Any = None
        self.timer: asyncio.TimerHandle | None = None
        self.done = False
        self.refuse = False
        self.task: asyncio.Future[bytes] | None = None
        self.pending: asyncio.Future[Reply] | None = None  # the handler's awaitable answer
        self.lost = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        srv = self.server
        loop = asyncio.get_running_loop()
        if len(srv.conns) >= srv.max_conns:
            if len(srv.refused) >= srv.max_conns:
                transport.abort()
                return
            # Answered once the request is read: closing a socket with unread input sends a reset, and
            # the client would see that instead of the 503.
            self.refuse = True
            srv.refused.add(self)
            self.timer = loop.call_later(1.0, self._refuse)
            return
        srv.conns.add(self)
        self.timer = loop.call_later(srv.timeout, self.abort)

    def _refuse(self) -> None:
        if not self.done:
            self._finish(_plain(503, "too many connections to the metrics listener"))

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.server.conns.discard(self)
        self.server.refused.discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        for task in (self.task, self.pending):
            if task is not None:
                task.cancel()
        self.task = self.pending = None

    def data_received(self, data: bytes) -> None:
        if self.done:
            return
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if self.refuse:
            if end >= 0 or len(self.buf) > self.server.max_head:
                self._refuse()
            return
        if end < 0:
            if len(self.buf) > self.server.max_head:
                self._finish(_plain(431, "request head too large"))
            return
        if end > self.server.max_head:
            self._finish(_plain(431, "request head too large"))
            return
        out = self._answer(self.buf[:end])
        if isinstance(out, bytes):
            self._finish(out)
            return
        self.done = True  # answered when the handler's awaitable is
        self.buf = b""
        self.task = asyncio.ensure_future(out)
        self.task.add_done_callback(self._answered)

    def _answered(self, task: asyncio.Future[bytes]) -> None:
        if task is not self.task or task.cancelled():
            return
        self.task = self.pending = None
        self._finish(task.result())

    def _answer(self, head: bytes) -> bytes | Awaitable[bytes]:
        try:
            lines = head.decode("latin-1").split("\r\n")
            method, target, version = lines[0].split(" ")
            if not version.startswith("HTTP/1."):
                raise ValueError(version)
            headers = {}
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if not sep:
                    raise ValueError(line)
                headers[name.strip().lower()] = value.strip()
        except ValueError:
            return _plain(400, "bad request")
        if method not in ("GET", "HEAD"):
            return response(405, {"Allow": "GET, HEAD", "Content-Type": "text/plain"}, b"GET or HEAD only\n")
        if headers.get("content-length", "0") != "0" or "transfer-encoding" in headers:
            return _plain(413, "no request body expected")
        try:
            out = self.server.handler(method, target.split("?", 1)[0], headers)
        except Exception as e:  # noqa: BLE001 - a bug in a page must not reach the loop or the pooler
            log.error("metrics listener: %s %s failed", method, target, exc_info=e)
            return _plain(500, "internal error (see the pgmux log)")
        if inspect.isawaitable(out):
            self.pending = asyncio.ensure_future(out)  # started now: cancelled, it is never left unawaited
            return _later(method, target, self.pending)
        status, out_headers, body = out
        return response(status, out_headers, body, head_only=method == "HEAD")

    def _finish(self, out: bytes) -> None:
        self.done = True
        self.buf = b""
        if self.lost:
            return
        self.transport.write(out)
        self.transport.close()  # after the buffer is written; the timer aborts a peer that does not read


async def _later(method: str, target: str, pending: asyncio.Future[Reply]) -> bytes:
    try:
        status, headers, body = await pending
    except Exception as e:  # noqa: BLE001 - as above
        log.error("metrics listener: %s %s failed", method, target, exc_info=e)
        return _plain(500, "internal error (see the pgmux log)")
    return response(status, headers, body, head_only=method == "HEAD")


def bind(host: str, port: int, backlog: int = 128) -> list[socket.socket]:
    """Listening sockets for host:port (`*` or empty: every address), as `HttpServer.start` makes them, but
    synchronously, for worker processes to inherit (runtime/web.bind_metrics)."""
    infos = socket.getaddrinfo(None if host in ("*", "") else host, port, socket.AF_UNSPEC, socket.SOCK_STREAM,
                               0, socket.AI_PASSIVE)
    socks: list[socket.socket] = []
    try:
        for family, kind, proto, _, addr in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(addr)
            sock.listen(backlog)
            sock.setblocking(False)
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks
