"""Framing of protocol v3 byte streams, sans-IO.

On the forwarding path pgmux reads only the 5-byte headers: `scan` walks a buffer and reports where each
complete message starts and how long it is, without copying bodies. Callers forward byte ranges and
decode a body only for the few message types that drive pooling (Z, E, S, K, and a handful of
client messages). Lengths are checked against a cap before anything is buffered, so a peer cannot make
pgmux allocate what it claims.
"""

from __future__ import annotations

import struct
import sys

from pgmux.errors import ProtocolViolation
from pgmux.protocol import messages as m
from pgmux.protocol.scans import message_end, noted_table, walk, walk_py

# The server relay's walk (in C where built) and its table of noted types, where session/server.py
# has always taken them; defined in protocol/scans.py.
__all__ = ["Buffer", "StartupParseResult", "cstring_at", "noted_table", "read_startup", "scan", "walk", "walk_py"]

_I32 = struct.Struct("!i")

# PostgreSQL's own limit for a startup packet (MAX_STARTUP_PACKET_LENGTH).
MAX_STARTUP_PACKET = 10000
# Bounded memory per connection. A message longer than STREAM_FROM that pgmux only forwards (CopyData,
# DataRow, and in session pooling every message) is not held whole: its bytes go on as they arrive
# (passing.client_large, passing.server_large). A message pgmux must read whole (a Query, Parse, Bind
# or FunctionCall when it tracks session state or routes, and the replies it decodes) is held up to
# MAX_INSPECTED bytes; a longer one is refused as soon as its header says so.
STREAM_FROM = 1 << 16
MAX_INSPECTED = 4 << 20


def scan(buf: bytes | bytearray | memoryview, pos: int, max_len: int) -> tuple[list[tuple[int, int, int]], int]:
    """Find the complete messages in buf[pos:].

    Returns ([(type byte, start offset, total length incl. the type byte)], offset of the first
    incomplete byte). Raises ProtocolViolation for a length below 4 or above max_len.
    """
    out: list[tuple[int, int, int]] = []
    n = len(buf)
    try:
        while n - pos >= 5:
            end = message_end(buf, pos, max_len)
            if end > n:
                break
            out.append((buf[pos], pos, end - pos))
            pos = end
    except ValueError as e:
        mtype, length = e.args
        raise ProtocolViolation(f"invalid message length {length} for message type {chr(mtype)!r}") from None
    return out, pos


class Buffer:
    """Bytes received but not yet consumed: at most one partial message.

    `feed` returns a buffer to scan; the caller says with `keep(buf, pos)` where the unconsumed tail
    starts. When nothing is pending, the incoming chunk is scanned in place without a copy. A partial
    message grows in a bytearray and is handed back only once it is complete (b"" until then), so a
    large message costs linear time, not a re-scan and a copy per chunk.
    """

    __slots__ = ("pending", "need")

    def __init__(self) -> None:
        # b"" (one shared object) until a partial message arrives: a bytearray costs 56 bytes for every
        # idle connection (issue 11). keep() makes it a bytearray, which then grows in place.
        self.pending: bytes | bytearray = b""
        self.need = 0  # the whole length of the partial message (5 while its header is not whole)

    def feed(self, data: bytes) -> bytes:
        if not self.pending:
            return data
        self.pending += data
        if len(self.pending) < self.need:
            return b""
        out = bytes(self.pending)
        self.pending = b""
        return out

    def keep(self, data: bytes, pos: int) -> bool:
        """Keep data[pos:], the start of a message. True when it is longer than STREAM_FROM: the caller
        then streams it (take()) or holds it, up to MAX_INSPECTED."""
        if pos < len(data):
            self.pending = bytearray(data[pos:])
            if len(self.pending) >= 5:
                self.need = 1 + _I32.unpack_from(self.pending, 1)[0]
                return self.need > STREAM_FROM
            self.need = 5
        return False

    def take(self) -> bytes:
        """What is kept, handed over (for streaming), and the buffer empty again."""
        out = bytes(self.pending)
        self.pending = b""
        return out

    def __len__(self) -> int:
        return len(self.pending)


class StartupParseResult:
    __slots__ = ("code", "params", "key_pid", "key_secret", "major", "minor")

    def __init__(self, code: int, params: dict[str, str] | None = None, key_pid: int = 0,
                 key_secret: int = 0) -> None:
        self.code = code
        self.params = params or {}
        self.key_pid = key_pid
        self.key_secret = key_secret
        self.major = code >> 16
        self.minor = code & 0xFFFF


def read_startup(buf: bytes) -> tuple[StartupParseResult | None, int]:
    """Parse one untyped startup-phase packet (StartupMessage, SSLRequest, GSSENCRequest, CancelRequest).

    Returns (result, bytes consumed) or (None, 0) when more bytes are needed.
    """
    if len(buf) < 4:
        return None, 0
    (length,) = _I32.unpack_from(buf, 0)
    if length < 8 or length > MAX_STARTUP_PACKET:
        raise ProtocolViolation(f"invalid startup packet length {length}")
    if len(buf) < length:
        return None, 0
    (code,) = _I32.unpack_from(buf, 4)
    if code in (m.SSL_REQUEST_CODE, m.GSSENC_REQUEST_CODE):
        if length != 8:
            raise ProtocolViolation("invalid length of SSL/GSS encryption request")
        return StartupParseResult(code), length
    if code == m.CANCEL_REQUEST_CODE:
        if length != 16:
            raise ProtocolViolation("invalid length of cancel request")
        pid, secret = struct.unpack_from("!ii", buf, 8)
        return StartupParseResult(code, key_pid=pid, key_secret=secret), length
    res = StartupParseResult(code)
    if res.major == 3:
        res.params = _parse_params(bytes(buf[8:length]))
    return res, length


def _parse_params(body: bytes) -> dict[str, str]:
    if not body.endswith(b"\x00"):
        raise ProtocolViolation("invalid startup packet layout: expected terminator as last byte")
    if body == b"\x00":
        return {}
    if not body.endswith(b"\x00\x00"):
        raise ProtocolViolation("invalid startup packet layout: expected terminator as last byte")
    parts = body[:-2].split(b"\x00")
    if len(parts) % 2:
        raise ProtocolViolation("invalid startup packet layout: missing value for a parameter")
    out: dict[str, str] = {}
    for i in range(0, len(parts), 2):
        try:
            # Interned: every client of a pool sends the same names and mostly the same values.
            k, v = sys.intern(parts[i].decode()), sys.intern(parts[i + 1].decode())
        except UnicodeDecodeError as e:
            raise ProtocolViolation("invalid byte sequence in startup packet") from e
        if not k:
            raise ProtocolViolation("invalid startup packet layout: empty parameter name")
        out[k] = v
    return out


def cstring_at(buf: bytes | memoryview, pos: int) -> tuple[str, int]:
    """Read a NUL-terminated string at pos; returns (text, position after the NUL)."""
    b = bytes(buf) if isinstance(buf, memoryview) else buf
    end = b.index(b"\x00", pos)
    return b[pos:end].decode(errors="replace"), end + 1
