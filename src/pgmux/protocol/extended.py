"""The extended-query messages whose statement names pgmux rewrites: Parse, Bind, Describe, Close.

Bodies are passed without the 5-byte header. Only the leading names (and, for Parse, the query and
parameter types) are decoded; everything after the name stays exactly as the client sent it, so a
rewritten message differs from the original only in the name and the length word. Bind bodies can be
large (parameter values), so `rename_bind_parts` hands back the untouched tail as a memoryview that
the caller writes with `writelines`, without copying it.

Names and query text are decoded as UTF-8 with `surrogateescape`: any bytes, whatever the client
encoding, decode and encode back to the same bytes, so a round trip is byte-exact.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from pgmux.errors import ProtocolViolation
from pgmux.protocol.messages import BIND, CLOSE, DESCRIBE, PARSE, message

Body = bytes | bytearray | memoryview

_I16 = struct.Struct("!h")
_HDR = struct.Struct("!ci")
_ENC, _ERRORS = "utf-8", "surrogateescape"


@dataclass(frozen=True, slots=True)
class ParseMessage:
    name: str
    query: str
    param_types: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Target:
    """What a Describe or Close names: kind "S" (a prepared statement) or "P" (a portal), and the name."""

    kind: str
    name: str


def _decode(raw: Body) -> str:
    return bytes(raw).decode(_ENC, _ERRORS)


def _encode(text: str) -> bytes:
    return text.encode(_ENC, _ERRORS) + b"\x00"


def _nul(body: Body, start: int, what: str) -> int:
    """Index of the NUL ending the string at `start`. A memoryview has no find(), so search windows
    that grow geometrically: names are short, and a large Bind tail is never copied whole."""
    if not isinstance(body, memoryview):
        end = body.find(b"\x00", start)
    else:
        end, window = -1, 256
        while end < 0:
            chunk = bytes(body[start:start + window])
            end = chunk.find(b"\x00")
            if end >= 0:
                end += start
            elif start + window >= len(body):
                break
            window *= 4
    if end < 0:
        raise ProtocolViolation(f"malformed {what} message: unterminated string")
    return end


def read_parse(body: Body) -> ParseMessage:
    name_end = _nul(body, 0, "Parse")
    query_end = _nul(body, name_end + 1, "Parse")
    pos = query_end + 1
    if len(body) < pos + 2:
        raise ProtocolViolation("malformed Parse message: missing parameter count")
    (count,) = _I16.unpack_from(body, pos)
    pos += 2
    if count < 0 or len(body) != pos + 4 * count:
        raise ProtocolViolation("malformed Parse message: parameter types do not match their count")
    types = struct.unpack_from(f"!{count}I", body, pos)
    return ParseMessage(_decode(body[:name_end]), _decode(body[name_end + 1:query_end]), types)


def build_parse(name: str, query: str, param_types: Sequence[int] = ()) -> bytes:
    """A Parse pgmux sends itself, to prepare a statement on a server that lacks it."""
    types = struct.pack(f"!h{len(param_types)}I", len(param_types), *param_types)
    return message(PARSE, _encode(name) + _encode(query) + types)


def rename_parse(body: Body, name: str) -> bytes:
    return message(PARSE, _encode(name) + bytes(body[_nul(body, 0, "Parse") + 1:]))


def read_bind(body: Body) -> tuple[str, str]:
    """(portal, statement name) of a Bind; the parameters after them are not read."""
    portal_end = _nul(body, 0, "Bind")
    name_end = _nul(body, portal_end + 1, "Bind")
    return _decode(body[:portal_end]), _decode(body[portal_end + 1:name_end])


def rename_bind_parts(body: Body, name: str) -> tuple[bytes, memoryview]:
    """The Bind with another statement name, as (header + portal + new name, untouched tail)."""
    portal_end = _nul(body, 0, "Bind")
    tail_start = _nul(body, portal_end + 1, "Bind") + 1
    head = bytes(body[:portal_end + 1]) + _encode(name)
    tail = memoryview(body)[tail_start:]
    return _HDR.pack(BIND, 4 + len(head) + len(tail)) + head, tail


def rename_bind(body: Body, name: str) -> bytes:
    head, tail = rename_bind_parts(body, name)
    return head + tail


def read_target(body: Body, what: str = "Describe/Close") -> Target:
    if len(body) < 2 or body[0] not in b"SP":
        raise ProtocolViolation(f"malformed {what} message: expected 'S' or 'P'")
    end = _nul(body, 1, what)
    if end != len(body) - 1:
        raise ProtocolViolation(f"malformed {what} message: trailing bytes")
    return Target(chr(body[0]), _decode(body[1:end]))


def build_target(mtype: bytes, kind: str, name: str) -> bytes:
    """A Describe (`mtype` DESCRIBE) or Close (`mtype` CLOSE) of a statement ("S") or portal ("P")."""
    if mtype not in (DESCRIBE, CLOSE) or kind not in ("S", "P"):
        raise ValueError(f"not a Describe/Close target: {mtype!r} {kind!r}")
    return message(mtype, kind.encode() + _encode(name))


def rename_target(mtype: bytes, body: Body, name: str) -> bytes:
    return build_target(mtype, read_target(body).kind, name)


def build_close_statement(name: str) -> bytes:
    """Close('S', name): how pgmux evicts a statement from a server's cache."""
    return build_target(CLOSE, "S", name)
