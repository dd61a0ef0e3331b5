"""Closing a client connection after pgmux's last words to it, without losing them.

A socket closed with bytes it has not read (the client's next query, sent as pgmux gave up on it)
goes out as a TCP reset, and a reset makes the client's kernel drop what it had received and not
yet read: the ErrorResponse saying why ("transaction timeout", "query_wait_timeout", a bad
password) is lost and the client reports "connection reset" or "server closed the connection
unexpectedly". So a client closed with an error is closed the way web servers do it (a lingering
close): the write side is shut once what was written has gone (the client reads the error, then end
of file), what still comes in is read and dropped, and the socket is closed when the client closes
its side or after LINGER seconds, whichever comes first. The client is gone from pgmux's books
(pools, max_client_conn) at once; only its socket lingers.
"""

from __future__ import annotations

import asyncio
from typing import Any

LINGER = 0.5  # seconds a closed client's socket may stay open for its peer to read pgmux's last message


def close_after_error(transport: Any) -> None:
    """Close `transport` once its last message is out, reading and dropping what the client still sends
    (the session is CLOSED: its data_received ignores it). Falls back to a plain close where the
    transport cannot half-close (TLS) or no loop runs (unit tests)."""
    try:
        if transport.is_closing() or not transport.can_write_eof():
            transport.close()
            return
        loop = asyncio.get_running_loop()
    except (AttributeError, NotImplementedError, RuntimeError):
        transport.close()
        return
    transport.write_eof()
    try:
        transport.resume_reading()  # (a client held for a full queue was not being read)
    except (AttributeError, RuntimeError):
        pass
    loop.call_later(LINGER, transport.close)
