"""A client pgmux closes with an error reads that error, even when it was still sending: pgmux shuts
its side of the socket once the error is out and drops what still comes in (net/linger.py), instead of
closing over unread bytes, which sends a TCP reset that can cost the client the error it was sent."""

from __future__ import annotations

import struct

from test_protocol import Wire

from conftest import PgmuxStarter
from pgmux.protocol import messages as m


def _to_the_end(w: Wire) -> list[tuple[bytes, bytes]]:
    """The messages left, then how the connection ended: ("eof", b"") or ("reset", b"")."""
    out: list[tuple[bytes, bytes]] = []
    try:
        while True:
            out.append(w.read_msg())
    except EOFError:
        out.append((b"eof", b""))
    except ConnectionResetError:
        out.append((b"reset", b""))
    return out


def test_a_client_closed_with_an_error_reads_it_though_it_was_still_sending(pgmux_factory: PgmuxStarter) -> None:
    proc = pgmux_factory()
    for _ in range(5):  # (a reset loses the error only when it overtakes it: try a few times)
        with Wire(proc.host, proc.port) as w:
            w.send(m.startup_message({"user": "postgres", "database": "testdb"}))
            login = w.read_until_ready()
            assert login[-1][0] == b"Z", login
            # An unknown message type (FATAL 08P01 at once), then a megabyte pgmux will not read as messages.
            w.sock.settimeout(5)
            try:
                w.send(b"\x01" + struct.pack("!i", 8) + b"abcd" + b"x" * (1 << 20))
            except OSError:
                pass  # (refused mid-way: the test is what the client can still read)
            got = _to_the_end(w)
        errors = [m.parse_error_fields(body) for t, body in got if t == b"E"]
        assert errors and errors[0].get("C") == "08P01" and errors[0].get("S") == "FATAL", got
        assert got[-1][0] == b"eof", got  # a clean end of file after it, no reset
    assert proc.is_running()
