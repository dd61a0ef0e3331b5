"""net/http.py's request handling, fed bytes as a socket would deliver them (no socket, no loop)."""

from __future__ import annotations

from typing import Any

from pgmux.net.http import HttpServer, _Conn


class FakeTransport:
    def __init__(self) -> None:
        self.out = b""
        self.closed = False

    def write(self, data: bytes) -> None:
        self.out += data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True


def _serve(chunks: list[bytes], handler: Any = None) -> bytes:
    seen: list[tuple[str, str]] = []

    def default(method: str, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        seen.append((method, path))
        return 200, {"Content-Type": "text/plain"}, b"hello"

    conn = _Conn(HttpServer(handler or default, max_head=100))
    conn.transport = FakeTransport()
    for chunk in chunks:
        conn.data_received(chunk)
    assert conn.transport.closed == conn.done
    return conn.transport.out


def test_a_request_split_anywhere_gets_one_answer() -> None:
    req = b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\nAccept: text/plain\r\n\r\n"
    for cut in range(1, len(req)):
        out = _serve([req[:cut], req[cut:]])
        assert out.startswith(b"HTTP/1.1 200 OK\r\n") and out.endswith(b"\r\n\r\nhello")
        assert b"Content-Length: 5\r\n" in out and b"Connection: close\r\n" in out


def test_head_has_no_body_and_other_methods_are_refused() -> None:
    assert _serve([b"HEAD / HTTP/1.1\r\n\r\n"]).endswith(b"\r\n\r\n")
    assert _serve([b"POST / HTTP/1.1\r\n\r\n"]).startswith(b"HTTP/1.1 405")
    assert _serve([b"GET / HTTP/1.1\r\nContent-Length: 4\r\n\r\nabcd"]).startswith(b"HTTP/1.1 413")


def test_bad_and_oversized_heads() -> None:
    assert _serve([b"nonsense\r\n\r\n"]).startswith(b"HTTP/1.1 400")
    assert _serve([b"GET / SPDY/3\r\n\r\n"]).startswith(b"HTTP/1.1 400")
    assert _serve([b"GET / HTTP/1.1\r\nno colon\r\n\r\n"]).startswith(b"HTTP/1.1 400")
    assert _serve([b"GET / HTTP/1.1\r\nX: " + b"a" * 200]).startswith(b"HTTP/1.1 431")  # no end in sight
    assert _serve([b"GET / HTTP/1.1\r\n", b"X: " + b"a" * 200 + b"\r\n\r\n"]).startswith(b"HTTP/1.1 431")


def test_a_failing_page_is_a_500_not_an_exception() -> None:
    def broken(method: str, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        raise RuntimeError("bug")

    assert _serve([b"GET / HTTP/1.1\r\n\r\n"], broken).startswith(b"HTTP/1.1 500")


def test_an_awaitable_answer_is_written_when_ready_and_dropped_when_the_peer_left() -> None:
    import asyncio

    async def main() -> None:
        release = asyncio.Event()

        async def later() -> tuple[int, dict[str, str], bytes]:
            await release.wait()
            return 200, {"Content-Type": "text/plain"}, b"merged"

        def handler(method: str, path: str, headers: dict[str, str]) -> Any:
            return later()

        conn = _Conn(HttpServer(handler))
        conn.transport = FakeTransport()
        conn.data_received(b"HEAD /metrics HTTP/1.1\r\n\r\n")
        await asyncio.sleep(0)
        assert conn.transport.out == b"" and not conn.transport.closed  # not yet
        release.set()
        for _ in range(10):
            await asyncio.sleep(0)
        assert conn.transport.out.startswith(b"HTTP/1.1 200") and conn.transport.out.endswith(b"\r\n\r\n")  # HEAD
        assert b"Content-Length: 6\r\n" in conn.transport.out and conn.transport.closed

        gone = _Conn(HttpServer(handler))
        gone.transport = FakeTransport()
        release.clear()
        gone.data_received(b"GET /metrics HTTP/1.1\r\n\r\n")
        task = gone.task
        gone.connection_lost(None)  # the scraper gave up: the pending answer is cancelled, nothing written
        await asyncio.sleep(0)
        assert task is not None and task.cancelled() and gone.transport.out == b""

        def broken(method: str, path: str, headers: dict[str, str]) -> Any:
            async def fail() -> None:
                raise RuntimeError("bug")
            return fail()

        bad = _Conn(HttpServer(broken))
        bad.transport = FakeTransport()
        bad.data_received(b"GET /metrics HTTP/1.1\r\n\r\n")
        for _ in range(10):
            await asyncio.sleep(0)
        assert bad.transport.out.startswith(b"HTTP/1.1 500")

    asyncio.run(main())
