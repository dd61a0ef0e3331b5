"""Client and server connections on pgmux._streams (C) instead of uvloop's transports.

One Poller per event loop: an epoll set of all pgmux's client and pooled-server sockets, watched by
the loop as one reader (loop.add_reader on the epoll fd). Each ready socket of a batch is read or
written by the C code, which calls the protocol (net/protocols.py) as uvloop does; see the header of
src/pgmux/_streams.c for why and for the transport methods a Stream has.

Here: the Poller of the running loop (`poller`), listening sockets served through it (`Listener`,
what `net/listen.serve_sockets` returns in place of an asyncio Server), connections opened to
PostgreSQL (`connect`, through `open_connection`) and clients handed over by another process
(`adopt`). Where the C module is not built, or with PGMUX_STREAMS=0 in the environment (`AVAILABLE`
false), `open_connection` and `adopt` take uvloop's transports and net/listen its servers. The
console's private Unix socket of a worker, the health checks, cancels, hand-over's own channel and the
HTTP endpoint stay on asyncio: they are not per-transaction paths.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable
from typing import Any

try:
    from pgmux import _streams
except ImportError:  # an optional Extension (setup.py): uvloop's transports then
    _streams = None  # type: ignore[assignment]

AVAILABLE = _streams is not None and os.environ.get("PGMUX_STREAMS", "1") != "0"

_current: Any = None  # the Poller of the last loop asked for


class SockView:
    """What get_extra_info("socket") gives for a Stream: the socket calls pgmux makes on a connection
    (socket options, SO_PEERCRED, the fd for hand-over), on the Stream's fd, which stays the Stream's."""

    __slots__ = ("_fd", "family", "type", "proto")

    def __init__(self, fd: int) -> None:
        self._fd = fd
        s = socket.socket(fileno=fd)
        try:
            self.family, self.type, self.proto = s.family, s.type, s.proto
        finally:
            s.detach()

    def _call(self, name: str, *args: Any) -> Any:
        s = socket.socket(self.family, self.type, self.proto, fileno=self._fd)
        try:
            return getattr(s, name)(*args)
        finally:
            s.detach()

    def fileno(self) -> int:
        return self._fd

    def setsockopt(self, *args: Any) -> None:
        self._call("setsockopt", *args)

    def getsockopt(self, *args: Any) -> Any:
        return self._call("getsockopt", *args)

    def getsockname(self) -> Any:
        return self._call("getsockname")

    def getpeername(self) -> Any:
        return self._call("getpeername")


def _extra(stream: Any, name: str, default: Any) -> Any:
    """get_extra_info for what the C code does not answer itself (it answers the peer's and the
    socket's TCP address)."""
    fd = stream.fileno()
    if fd < 0:
        return default
    try:
        if name == "socket":
            return SockView(fd)
        if name in ("peername", "sockname"):  # a Unix socket's
            return getattr(SockView(fd), "get" + name)()
    except OSError:
        return default
    return default


def poller(loop: asyncio.AbstractEventLoop | None = None) -> Any:
    """The running loop's Poller, made and watched on first use (a forked worker's loop is a new one,
    so it never shares its parent's epoll set)."""
    global _current
    loop = loop or asyncio.get_running_loop()
    p = _current
    if p is None or p.loop is not loop:
        p = _streams.Poller(loop, _extra)
        loop.add_reader(p.fileno(), p.poll)
        _current = p
    return p


class Listener:
    """A listening socket whose connections the Poller accepts: what net/listen keeps in app.listeners
    (close, sockets, is_serving, wait_closed, as an asyncio Server). The socket is the Listener's."""

    def __init__(self, sock: socket.socket, factory: Callable[[], asyncio.Protocol]) -> None:
        sock.setblocking(False)
        self.sock = sock
        tcp = sock.family in (socket.AF_INET, socket.AF_INET6)
        self.acceptor: Any = _streams.Acceptor(poller(), sock.fileno(), factory, tcp)

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return () if self.acceptor is None else (self.sock,)

    def close(self) -> None:
        if self.acceptor is not None:
            self.acceptor.close()
            self.acceptor = None
            self.sock.close()

    def is_serving(self) -> bool:
        return self.acceptor is not None

    async def wait_closed(self) -> None:
        return None


async def connect(factory: Callable[[], Any], host: str | None, port: int | None,
                  unix_path: str | None = None) -> tuple[Any, Any]:
    """loop.create_connection / create_unix_connection on a Stream: each address of `host` in turn, the
    first that accepts. Returns (stream, protocol) after protocol.connection_made(stream)."""
    loop = asyncio.get_running_loop()
    if unix_path:
        addrs: list[tuple[Any, ...]] = [(socket.AF_UNIX, socket.SOCK_STREAM, 0, "", unix_path)]
    else:
        addrs = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        if not addrs:
            raise OSError(f"getaddrinfo({host!r}) returned no address")
    errors: list[OSError] = []
    for family, kind, proto, _, addr in addrs:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            if family != socket.AF_UNIX:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await loop.sock_connect(sock, addr)
        except OSError as e:
            sock.close()
            errors.append(e)
            continue
        except BaseException:
            sock.close()
            raise
        return _attach(sock, factory)
    if len(errors) == 1:
        raise errors[0]
    raise OSError(f"Multiple exceptions: {', '.join(str(e) for e in errors)}")


async def open_connection(factory: Callable[[], Any], host: str | None, port: int | None,
                          unix_path: str | None = None) -> tuple[Any, Any]:
    """A connection to PostgreSQL: a Stream where pgmux._streams is built, else uvloop's transport."""
    if AVAILABLE:
        return await connect(factory, host, port, unix_path)
    loop = asyncio.get_running_loop()
    if unix_path:
        return await loop.create_unix_connection(factory, unix_path)
    assert host is not None and port is not None  # a target without a Unix socket path has a TCP host
    return await loop.create_connection(factory, host, port)


async def adopt(factory: Callable[[], Any], sock: socket.socket) -> tuple[Any, Any]:
    """loop.connect_accepted_socket on a Stream (a client handed over by another process): the socket
    becomes the Stream's, and the protocol is told at once."""
    if not AVAILABLE:
        return await asyncio.get_running_loop().connect_accepted_socket(factory, sock)
    sock.setblocking(False)
    return _attach(sock, factory)


def _attach(sock: socket.socket, factory: Callable[[], Any]) -> tuple[Any, Any]:
    """A connected non-blocking socket becomes a Stream of the running loop's Poller; its protocol is
    made and told at once."""
    protocol = factory()
    stream = poller().stream(sock.fileno(), protocol)
    sock.detach()  # the Stream's now
    protocol.connection_made(stream)
    return stream, protocol
