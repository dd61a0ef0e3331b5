"""Passing a client's socket to another pgmux process: the Unix socket, its framing, SCM_RIGHTS.

One message per client: a header (magic, body length) sent with the client's socket as SCM_RIGHTS
ancillary data, then the body (the session's snapshot, session/handover.py). Non-blocking sockets on
the running loop (uvloop has no sock_recvmsg: readiness is awaited with add_reader, then recvmsg). The
policy (what is sent, the answers) is runtime/handover.py's.
"""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import struct
from typing import Final

MAGIC: Final = b"PGMH"
HEADER: Final = struct.Struct("!4sI")


class FramingError(Exception):
    """The other side broke the hand-over framing (wrong magic, oversized, no socket): the connection ends."""


def listen(path: str) -> socket.socket:
    """A listening Unix socket at `path`, mode 0600 (a stale socket file there is replaced)."""
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, 0o600)
        sock.listen(16)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def connect(path: str, timeout: float) -> socket.socket:
    """Connected to the receiver at `path`, which must run as this process's OS user (SO_PEERCRED): a
    socket file in a shared directory (`pgmux -R`'s, in unix_socket_dir) could be another user's."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, path), timeout)
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        uid = struct.unpack("3i", creds)[1]
        if uid != os.getuid():
            raise PermissionError(f"{path} is served by uid {uid}, not by this process's uid {os.getuid()}")
    except BaseException:
        sock.close()
        raise
    return sock


async def _ready(sock: socket.socket, write: bool = False) -> None:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    if write:
        loop.add_writer(fd, ready)
    else:
        loop.add_reader(fd, ready)
    try:
        await fut
    finally:
        if write:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)


async def send_all(sock: socket.socket, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[sock.send(view):]
        except (BlockingIOError, InterruptedError):
            await _ready(sock, write=True)


async def recv_exact(sock: socket.socket, n: int) -> bytes:
    """Exactly `n` bytes; ConnectionError at end of file before them."""
    out = bytearray()
    while len(out) < n:
        try:
            data = sock.recv(n - len(out))
        except (BlockingIOError, InterruptedError):
            await _ready(sock)
            continue
        if not data:
            raise ConnectionError("hand-over connection closed")
        out += data
    return bytes(out)


async def send_with_fd(sock: socket.socket, fd: int, body: bytes) -> None:
    """The header with `fd` attached, then `body`."""
    header = HEADER.pack(MAGIC, len(body))
    while True:
        try:
            sent = socket.send_fds(sock, [header], [fd])
            break
        except (BlockingIOError, InterruptedError):
            await _ready(sock, write=True)
    await send_all(sock, header[sent:] + body)


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


async def recv_with_fd(sock: socket.socket, limit: int, body_wait: float) -> tuple[int, bytes] | None:
    """The next (fd, body), or None at end of file between messages. FramingError (any fd received
    closed) for a wrong magic, a body above `limit` bytes, or not exactly one fd; TimeoutError when
    the body does not follow its header within `body_wait` seconds."""
    header, fds = b"", []
    try:
        while len(header) < HEADER.size:
            try:
                data, got, flags, _ = socket.recv_fds(sock, HEADER.size - len(header), 4)
            except (BlockingIOError, InterruptedError):
                await _ready(sock)
                continue
            fds += got
            if flags & socket.MSG_CTRUNC:
                raise FramingError("ancillary data truncated")
            if not data:
                if header or fds:
                    raise ConnectionError("hand-over connection closed inside a message")
                return None
            header += data
        magic, n = HEADER.unpack(header)
        if magic != MAGIC:
            raise FramingError("not a pgmux hand-over message")
        if n > limit:
            raise FramingError(f"snapshot of {n} bytes, above the bound of {limit}")
        if len(fds) != 1:
            raise FramingError(f"{len(fds)} file descriptors with one message, expected 1")
        body = await asyncio.wait_for(recv_exact(sock, n), body_wait)
    except BaseException:
        _close_all(fds)
        raise
    os.set_inheritable(fds[0], False)
    return fds[0], body


async def send_fds_with(sock: socket.socket, data: bytes, fds: list[int]) -> None:
    """`data` with `fds` attached (pgmux -R: the listening sockets)."""
    while True:
        try:
            sent = socket.send_fds(sock, [data], fds)
            break
        except (BlockingIOError, InterruptedError):
            await _ready(sock, write=True)
    await send_all(sock, data[sent:])


async def recv_fds_with(sock: socket.socket, size: int, maxfds: int) -> tuple[bytes, list[int]]:
    """Exactly `size` bytes and the descriptors that came with them (at most `maxfds`, else FramingError)."""
    data, fds = b"", []
    try:
        while len(data) < size:
            try:
                got, new, flags, _ = socket.recv_fds(sock, size - len(data), maxfds)
            except (BlockingIOError, InterruptedError):
                await _ready(sock)
                continue
            fds += new
            if flags & socket.MSG_CTRUNC or len(fds) > maxfds:
                raise FramingError("too many file descriptors")
            if not got:
                raise ConnectionError("connection closed inside a message")
            data += got
    except BaseException:
        _close_all(fds)
        raise
    for fd in fds:
        os.set_inheritable(fd, False)
    return data, fds
