"""pgmux._streams (C) and net/streams.py: client and server sockets read and written by pgmux itself.

A Stream must behave as the uvloop transport it replaces, to the protocols of net/protocols.py:
every byte in order both ways whatever the socket takes at once, eof_received then close, flow control
at the write buffer's marks, pause/resume of reading, connection_lost exactly once and after the
callback that closed it, an exception from a protocol reported to the loop with the protocol named and
that connection aborted, and a socket error closing the stream with it. Socket pairs and loopback
TCP on 127.0.0.1 only. (Where pgmux._streams was not built these tests fail, as test_speedups' do:
a machine that should have it notices.)
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import uvloop
from hypothesis import given, settings
from hypothesis import strategies as st

from pgmux.net import streams


def run(fn: Callable[[], Awaitable[Any]]) -> Any:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(fn())


class Recorder(asyncio.Protocol):
    def __init__(self, keep_open: bool = False) -> None:
        self.transport: Any = None
        self.data = bytearray()
        self.events: list[str] = []
        self.lost: list[Exception | None] = []
        self.keep_open = keep_open
        self.got = asyncio.Event()
        self.gone = asyncio.Event()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.events.append("made")

    def data_received(self, data: bytes) -> None:
        assert type(data) is bytes
        self.data += data
        self.got.set()

    def eof_received(self) -> bool:
        self.events.append("eof")
        return self.keep_open

    def pause_writing(self) -> None:
        self.events.append("pause")

    def resume_writing(self) -> None:
        self.events.append("resume")

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append("lost")
        self.lost.append(exc)
        self.gone.set()


def pair(protocol: asyncio.Protocol) -> tuple[Any, socket.socket]:
    """A Stream on one end of a socket pair (its protocol told), and the other end, blocking."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    stream = streams.poller().stream(ours.detach(), protocol)
    protocol.connection_made(stream)
    return stream, theirs


async def rest(peer: socket.socket) -> bytearray:
    """What the peer reads until the end of the stream, without blocking the loop."""
    peer.setblocking(False)
    got = bytearray()
    while True:
        try:
            data = peer.recv(1 << 20)
        except BlockingIOError:
            await asyncio.sleep(0.001)
            continue
        if not data:
            return got
        got += data


async def until(pred: Callable[[], bool], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not pred():
        assert loop.time() < end, "timed out"
        await asyncio.sleep(0.001)


def test_relay_both_ways_eof_then_lost_once() -> None:
    async def main() -> None:
        p = Recorder()
        stream, peer = pair(p)
        peer.sendall(b"hello")
        await until(lambda: bytes(p.data) == b"hello")
        stream.write(b"world")
        stream.write(bytearray(b"!"))
        stream.write(memoryview(b"?"))
        stream.writelines([b"a", b"b"])
        assert peer.recv(100) == b"world!?ab"
        peer.shutdown(socket.SHUT_WR)
        await p.gone.wait()
        await asyncio.sleep(0.01)
        assert p.events == ["made", "eof", "lost"] and p.lost == [None]
        assert stream.is_closing() and stream.fileno() == -1
        stream.write(b"after")  # dropped, as a closed asyncio transport drops it
        assert peer.recv(10) == b""
        peer.close()
    run(main)


def test_eof_received_true_keeps_writing_open() -> None:
    async def main() -> None:
        p = Recorder(keep_open=True)
        stream, peer = pair(p)
        peer.shutdown(socket.SHUT_WR)
        await until(lambda: "eof" in p.events)
        assert not stream.is_closing()
        stream.write(b"still")
        assert peer.recv(10) == b"still"
        stream.close()
        await p.gone.wait()
        assert peer.recv(10) == b""
        peer.close()
    run(main)


def test_pause_and_resume_reading() -> None:
    async def main() -> None:
        p = Recorder()
        stream, peer = pair(p)
        stream.pause_reading()
        assert not stream.is_reading()
        peer.sendall(b"x" * 1000)
        await asyncio.sleep(0.05)
        assert not p.data
        stream.resume_reading()
        await until(lambda: len(p.data) == 1000)
        stream.abort()
        peer.close()
        await p.gone.wait()
    run(main)


def test_write_buffer_flow_control_and_close_flushes() -> None:
    async def main() -> None:
        p = Recorder()
        stream, peer = pair(p)
        stream.set_write_buffer_limits(high=64 * 1024)
        assert stream.get_write_buffer_limits() == (16 * 1024, 64 * 1024)
        chunk = os.urandom(32 * 1024)
        sent = bytearray()
        while "pause" not in p.events:  # the peer reads nothing: the buffer fills past the mark
            stream.write(chunk)
            sent += chunk
            assert len(sent) < 64 * 1024 * 1024
        assert stream.get_write_buffer_size() > 64 * 1024
        stream.close()  # flushes what is buffered, then closes
        assert not p.lost
        got = await rest(peer)
        assert got == sent
        await p.gone.wait()
        assert p.events == ["made", "pause", "resume", "lost"] and p.lost == [None]
        peer.close()
    run(main)


def test_abort_drops_the_buffer() -> None:
    async def main() -> None:
        p = Recorder()
        stream, peer = pair(p)
        while stream.get_write_buffer_size() == 0:
            stream.write(b"y" * 65536)
        stream.abort()
        await p.gone.wait()
        assert p.lost == [None] and stream.get_write_buffer_size() == 0
        peer.close()
    run(main)


def test_protocol_exception_is_reported_and_aborts() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        seen: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _, ctx: seen.append(ctx))

        class Boom(Recorder):
            def data_received(self, data: bytes) -> None:
                raise ValueError("boom")

        p = Boom()
        stream, peer = pair(p)
        peer.sendall(b"x")
        await p.gone.wait()
        assert len(seen) == 1 and isinstance(seen[0]["exception"], ValueError)
        assert seen[0]["protocol"] is p and seen[0]["transport"] is stream
        assert isinstance(p.lost[0], ValueError)
        assert peer.recv(10) == b""
        peer.close()
    run(main)


def test_peer_reset_closes_with_the_error() -> None:
    async def main() -> None:
        p = Recorder()
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        stream, _ = await streams.connect(lambda: p, "127.0.0.1", srv.getsockname()[1])
        peer, _ = srv.accept()
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        peer.close()  # RST
        await p.gone.wait()
        assert isinstance(p.lost[0], ConnectionResetError) and p.events == ["made", "lost"], (p.events, p.lost)
        srv.close()
    run(main)


def test_connect_refused_and_names() -> None:
    async def main() -> None:
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()  # nobody listens there now
        with pytest.raises(ConnectionRefusedError):
            await streams.connect(Recorder, "127.0.0.1", port)
        assert streams.poller().open == 0
    run(main)


def test_acceptor_listener_and_extra_info(tmp_path: Any) -> None:
    async def main() -> None:
        made: list[Recorder] = []

        def factory() -> Recorder:
            made.append(Recorder())
            return made[-1]

        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen()
        listener = streams.Listener(lsock, factory)
        port = lsock.getsockname()[1]
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(5)]
        await until(lambda: len(made) == 5)
        for p, c in zip(made, clients, strict=False):  # (accept order is connect order here)
            t = p.transport
            assert t.get_extra_info("peername") == c.getsockname()
            assert t.get_extra_info("sockname") == ("127.0.0.1", port)
            view = t.get_extra_info("socket")
            assert view.family == socket.AF_INET and view.fileno() == t.fileno()
            assert view.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
            view.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            assert view.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            assert t.get_extra_info("ssl_object") is None and t.get_extra_info("nope", 7) == 7
            assert t.get_extra_info("nope", default=8) == 8
            with pytest.raises(TypeError):
                t.get_extra_info()
            with pytest.raises(TypeError):
                t.get_extra_info(b"peername")
            c.close()
        await until(lambda: all(p.gone.is_set() for p in made))
        listener.close()
        assert listener.sockets == () and not listener.is_serving()
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1)

        path = str(tmp_path / "s")
        usock = socket.socket(socket.AF_UNIX)
        usock.bind(path)
        usock.listen()
        ulistener = streams.Listener(usock, factory)
        uc = socket.socket(socket.AF_UNIX)
        uc.connect(path)
        await until(lambda: len(made) == 6)
        t = made[-1].transport
        assert t.get_extra_info("sockname") == path and t.get_extra_info("peername") == ""
        assert t.get_extra_info("socket").family == socket.AF_UNIX
        stream, p = await streams.connect(Recorder, None, None, path)
        stream.write(b"over unix")
        await until(lambda: bytes(made[-1].data) == b"over unix")
        stream.close()
        uc.close()
        ulistener.close()
        await p.gone.wait()
    run(main)


def test_write_eof_and_set_protocol() -> None:
    async def main() -> None:
        p, q = Recorder(), Recorder()
        stream, peer = pair(p)
        peer.sendall(b"1")
        await until(lambda: bytes(p.data) == b"1")
        stream.set_protocol(q)
        assert stream.get_protocol() is q
        peer.sendall(b"2")
        await until(lambda: bytes(q.data) == b"2")
        assert bytes(p.data) == b"1"
        assert stream.can_write_eof()
        stream.write(b"last")
        stream.write_eof()
        with pytest.raises(RuntimeError):
            stream.write(b"more")
        assert peer.recv(10) == b"last" and peer.recv(10) == b""
        peer.close()
        await q.gone.wait()
        assert p.lost == [] and q.lost == [None]
    run(main)


def test_a_callback_closing_another_stream_of_its_batch() -> None:
    """Both sockets ready in one epoll batch; the first read closes the other stream: the batch must
    neither read it nor touch it after its close."""
    async def main() -> None:
        order: list[str] = []

        class Tagged(Recorder):
            def __init__(self, tag: str) -> None:
                super().__init__()
                self.tag = tag

            def data_received(self, data: bytes) -> None:
                super().data_received(data)
                order.append(self.tag)

        class Closer(Recorder):
            def data_received(self, data: bytes) -> None:
                super().data_received(data)
                order.append("abort")
                sa.abort()
                sb.abort()

        a, b = Tagged("a"), Tagged("b")
        c = Closer()
        sa, pa = pair(a)
        sb, pb = pair(b)
        sc, pc = pair(c)
        for s in (pc, pa, pb):  # c's socket ready first: its read comes first in the batch
            s.sendall(b"z")
        await until(lambda: a.gone.is_set() and b.gone.is_set())
        assert order == ["abort"] and not a.data and not b.data, order  # nothing read after the abort
        sc.abort()
        await c.gone.wait()
        for s in (pa, pb, pc):
            s.close()
        assert streams.poller().open == 0
    run(main)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=200_000), min_size=1, max_size=12), st.integers(0, 2**32))
def test_any_writes_arrive_whole_and_in_order(sizes: list[int], seed: int) -> None:
    rnd = random.Random(seed)

    async def main() -> None:
        p = Recorder()
        stream, peer = pair(p)
        peer.setblocking(False)
        sent = bytearray()
        got = bytearray()
        for n in sizes:
            data = rnd.randbytes(n)
            stream.write(data)
            sent += data
            while rnd.random() < 0.5:  # the peer reads some, sometimes
                try:
                    got += peer.recv(rnd.randint(1, 100_000))
                except BlockingIOError:
                    break
            await asyncio.sleep(0)
        stream.close()
        got += await rest(peer)
        assert got == sent
        await p.gone.wait()
        peer.close()
    run(main)


def test_a_copy_of_a_shared_listening_socket_leaves_it_non_blocking() -> None:
    """Workers share one listening socket (one open file, one O_NONBLOCK). socket.dup() gives the copy
    the original object's timeout, which for an object made over an inherited fd is blocking: it made
    the shared socket blocking, and a worker's accept loop then sat in accept(). net/listen.copy does
    not touch the mode."""
    from pgmux.net.listen import copy

    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen()
    lsock.setblocking(False)
    inherited = socket.socket(fileno=os.dup(lsock.fileno()))  # as a worker makes it (timeout None)
    try:
        c = copy(inherited)
        assert not os.get_blocking(lsock.fileno()) and not os.get_blocking(c.fileno())
        c.close()
        d = inherited.dup()  # the hazard copy() avoids
        assert os.get_blocking(lsock.fileno())
        d.close()
    finally:
        inherited.close()
        lsock.close()


def test_an_accepted_connection_is_read_in_the_same_turn() -> None:
    """What a client sent before its accept (with tcp_defer_accept, its startup packet) is read right
    after connection_made, not one event-loop turn later: before anything call_soon'd at the accept."""
    async def main() -> None:
        loop = asyncio.get_running_loop()
        made: list[Recorder] = []

        class Marking(Recorder):
            def connection_made(self, transport: Any) -> None:
                super().connection_made(transport)
                loop.call_soon(self.events.append, "next turn")

            def data_received(self, data: bytes) -> None:
                super().data_received(data)
                self.events.append("data")

        def factory() -> Recorder:
            made.append(Marking())
            return made[-1]

        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen()
        client = socket.create_connection(lsock.getsockname())
        client.sendall(b"startup")
        await asyncio.sleep(0.05)  # (in the kernel's accept queue with its data)
        listener = streams.Listener(lsock, factory)
        await until(lambda: bool(made) and "next turn" in made[0].events)
        assert made[0].events[:3] == ["made", "data", "next turn"], made[0].events
        client.close()
        await made[0].gone.wait()
        listener.close()
    run(main)
