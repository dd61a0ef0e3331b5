"""A client pgmux closes with an error reads that error, even when it was still sending: pgmux shuts
its side of the socket once the error is out and drops what still comes in (net/linger.py), instead of
closing over unread bytes, which sends a TCP reset that can cost the client the error it was sent."""

from __future__ import annotations

import socket
import struct
import time

from conftest import PgmuxStarter
from pgmux.protocol import messages as m


def _read_messages(s: socket.socket, until: bytes, deadline: float) -> list[tuple[bytes, bytes]]:
    """Messages until one of type `until` (or end of file, or a reset, which end the list)."""
    buf, out = b"", []
    while time.monotonic() < deadline:
        while len(buf) >= 5 and len(buf) >= 1 + struct.unpack("!i", buf[1:5])[0]:
            n = 1 + struct.unpack("!i", buf[1:5])[0]
            out.append((buf[:1], buf[5:n]))
            buf = buf[n:]
            if out[-1][0] == until:
                return out
        try:
            data = s.recv(65536)
        except ConnectionResetError:
            out.append((b"reset", b""))
            return out
        if not data:
            out.append((b"eof", b""))
            return out
        buf += data
    raise AssertionError(f"nothing ended the read: {out}")


def test_a_client_closed_with_an_error_reads_it_though_it_was_still_sending(pgmux_factory: PgmuxStarter) -> None:
    proc = pgmux_factory()
    for _ in range(5):  # (a reset loses the error only when it overtakes it: try a few times)
        with socket.create_connection((proc.host, proc.port), timeout=10) as s:
            s.sendall(m.startup_message({"user": "postgres", "database": "testdb"}))
            login = _read_messages(s, b"Z", time.monotonic() + 10)
            assert login[-1][0] == b"Z", login
            # An unknown message type (FATAL 08P01 at once), then a megabyte pgmux will not read as messages.
            s.settimeout(5)
            try:
                s.sendall(b"\x01" + struct.pack("!i", 8) + b"abcd" + b"x" * (1 << 20))
            except OSError:
                pass  # (refused mid-way: the test is what the client can still read)
            got = _read_messages(s, b"eof", time.monotonic() + 10)
        errors = [m.parse_error_fields(body) for t, body in got if t == b"E"]
        assert errors and errors[0].get("C") == "08P01" and errors[0].get("S") == "FATAL", got
        assert got[-1][0] == b"eof", got  # a clean end of file after it, no reset
    assert proc.is_running()
