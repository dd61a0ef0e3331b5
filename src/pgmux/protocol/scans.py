"""The byte scans of the forwarding path, in Python: the one header walk, and the pure-Python
definitions of the C scans in pgmux._speedups (src/pgmux/_speedups.c), which run where the C module
was not built. tests/unit/test_speedups.py holds each C scan equal to its definition here.

`message_end` is pgmux's one reading of a message header (type byte, int32 length that counts
itself): every walk over protocol messages in Python calls it, in a loop of the form

    while n - pos >= 5:
        end = message_end(buf, pos, limit)  # ValueError(type, length) for a length out of bounds
        if end > n:
            break  # the message is not whole yet
        ...
        pos = end

(protocol/codec.py's scan, the twins below, routing/router.py, the client's COPY check, the admin
console's rows). The C scans keep their own copy of that loop in C: that is what they are for.

- screen  the session-state screen of a Query's text (session/tracking.py decides from it)
- query   one whole Query? the first test of the client relay on every read
- steps   the client relay's walk over any other read (Syncs, extended batch, COPY, Terminate)
- walk    the server relay's walk over a reply (ReadyForQuery and the messages it must see)
- ready   the server relay's usual reply (one ReadyForQuery, last, nothing else to see), without walk's tuple
- shape, binds  what the extended-protocol fast paths read (session/fastpath.py)
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any, Final, TypeVar

_I32: Final = struct.Struct("!i")
# The longest length an int32 can say: for walks that take every length of at least 4.
ANY_LENGTH: Final = 0x7FFFFFFF


def message_end(buf: bytes | bytearray | memoryview, pos: int, limit: int) -> int:
    """Where the message whose 5-byte header is at buf[pos:pos + 5] ends: pos + 1 + its length, which
    may lie beyond the bytes at hand (the message is not whole yet). Raises ValueError(type, length)
    for a length below 4 or above `limit`. The caller makes sure five bytes are there."""
    (length,) = _I32.unpack_from(buf, pos + 1)
    if length < 4 or length > limit:
        raise ValueError(buf[pos], length)
    return pos + 1 + length


# Lower-case words without which a query cannot change what is tracked here: a test on bytes, run for
# every Query in transaction mode, so it must cost a fraction of a microsecond. Each search costs about
# 50 ns as bytes.find (`in` costs twice that on bytes), so the words that only matter as a statement's
# first word are tested there only, and the rest behind one-byte tests (memchr) where they can be.
_SCREEN = (b"set", b"discard", b"deallocate", b"listen", b"temp", b"advisory", b"hold", b"load", b"close",
           b"u&", b"savepoint", b"rollback", b"release")
_FIRST = (b"set", b"reset", b"discard", b"deallocate", b"listen", b"unlisten", b"load", b"close", b"declare",
          b"/*", b"--", b"do", b"execute", b"explain", b"prepare", b"drop", b"create", b"savepoint",
          b"rollback", b"release")


COPY_MESSAGES: Final = frozenset(b"dcf")  # CopyData, CopyDone, CopyFail


def only_copy(chunk: bytes | bytearray | memoryview) -> bool:
    """Whether the complete messages in `chunk` are all CopyData, CopyDone or CopyFail."""
    pos, n = 0, len(chunk)
    while pos < n:
        if chunk[pos] not in COPY_MESSAGES:
            return False
        pos = message_end(chunk, pos, ANY_LENGTH)
    return True


def noted_table(types: str) -> bytes:
    """The `noted` argument of walk: a 256-byte table marking these message types."""
    return bytes(1 if chr(c) in types else 0 for c in range(256))


def walk_py(buf: bytes | bytearray | memoryview, limit: int,
            noted: bytes) -> tuple[int, int, int, int, list[tuple[int, int, int]] | None]:
    """The server relay's header walk: (end, nz, z, zpos, items) for the complete messages at the start
    of buf. nz counts the ReadyForQuery messages, z and zpos are the last one's status byte and offset.
    When a type marked in `noted` occurs, items lists the noted messages and every ReadyForQuery as
    (type, start, total), in order; else it is None, and the caller has nothing but nz to handle.
    Raises ValueError(type, length) for a length below 4, above limit, or a ReadyForQuery not of 5.
    pgmux._speedups.walk does the same in C; this is its definition and its fallback."""
    n = len(buf)
    pos = nz = z = zpos = 0
    marks: list[tuple[int, int, int]] = []
    seen = False
    while n - pos >= 5:
        t = buf[pos]
        end = message_end(buf, pos, limit)
        if t == 90 and end - pos != 6:
            raise ValueError(t, end - pos - 1)
        if end > n:
            break
        if t == 90:  # 'Z'
            nz += 1
            z = buf[pos + 5]
            zpos = pos
            marks.append((t, pos, end - pos))
        elif noted[t]:
            seen = True
            marks.append((t, pos, end - pos))
        pos = end
    return pos, nz, z, zpos, marks if seen else None


def ready_py(buf: bytes | bytearray | memoryview, limit: int, noted: bytes) -> int:
    """The server relay's usual read: the status byte of its ReadyForQuery when buf is whole messages
    (lengths of at least 4 and at most limit) of which exactly one is a ReadyForQuery, the last, and none
    is of a type marked in `noted`; 0 for any other read (walked then: walk_py raises for a bad length).
    For such a read walk_py returns (len(buf), 1, z, len(buf) - 6, None). pgmux._speedups.ready is the same
    in C."""
    n = len(buf)
    if n < 6 or buf[n - 6] != 90 or _I32.unpack_from(buf, n - 5)[0] != 5:
        return 0
    pos = 0
    while n - pos >= 5:
        t = buf[pos]
        (length,) = _I32.unpack_from(buf, pos + 1)
        if length < 4 or length > limit or length > n - pos - 1:
            return 0
        end = pos + 1 + length
        if t == 90:  # 'Z'
            return buf[pos + 5] if length == 5 and end == n else 0
        if noted[t]:
            return 0
        pos = end
    return 0


def screen_py(data: bytes | bytearray | memoryview, start: int, end: int) -> bool:
    """False when the Query body data[start:end] certainly changes no tracked session state.
    pgmux._speedups.screen does the same in C (a fifth of the per-transaction work of pgmux in
    Python); this is its definition, and the fallback where the C module was not built."""
    low = bytes(data[start:end]).lower()
    find = low.find
    if find(b"_") >= 0 and (find(b"advisory") >= 0 or find(b"set_config") >= 0):
        return True
    if find(b"temp") >= 0 or (find(b"&") >= 0 and find(b"u&") >= 0):
        return True
    if low.lstrip().startswith(_FIRST):
        return True
    i = find(b";")
    if i >= 0 and low[i:].strip(b" \t\r\n;\x00"):  # more than one statement: any may start with a word
        return any(find(w) >= 0 for w in _SCREEN)
    return False


def query_py(data: bytes | bytearray | memoryview, limit: int, screened: bytes | None = None) -> int:
    """The first test of ClientSession.data_received on every read after login, for its two fast
    paths: 1 when `data` is exactly one whole Query message of at most `limit` bytes whose text screen()
    passes, 2 for such a Query whose text may change tracked session state; 3 when it is a batch of the
    unnamed statement whose Parse is `screened` (the client's last unnamed Parse that the screen passed)
    byte for byte: whole messages of at most `limit` bytes, that Parse first, then Binds of the unnamed
    portal and statement, Describes of a portal or of the unnamed statement, Executes (one at least)
    and Parses of the same bytes, and one Sync, last. 0 for any other read (the caller walks it then).
    pgmux._speedups.query is the same in C."""
    n = len(data)
    if n <= 5:
        return 0
    if data[0] == 81:  # Query
        if n > limit:
            return 0
        try:
            whole = message_end(data, 0, limit) == n
        except ValueError:
            return 0
        return (2 if screen(data, 5, n) else 1) if whole else 0
    if screened is None or data[0] != 80:  # Parse
        return 0
    pos = 0
    executed = False
    while n - pos >= 5:
        t = data[pos]
        try:
            end = message_end(data, pos, limit)
        except ValueError:
            return 0
        if end > n:
            return 0
        body = end - pos - 5
        if t == 80:
            if body < 1 or data[pos + 5] != 0 or data[pos:end] != screened:
                return 0
        elif t == 66:  # Bind
            if body < 2 or data[pos + 5] != 0 or data[pos + 6] != 0:
                return 0
        elif t == 68:  # Describe
            if body < 2 or not (data[pos + 5] == 80 or data[pos + 5] == 83 and data[pos + 6] == 0):
                return 0
        elif t == 69:  # Execute
            executed = True
        elif t == 83:  # Sync
            return 3 if end == n and executed else 0
        else:
            return 0
        pos = end
    return 0


def steps_py(data: bytes | bytearray | memoryview, limit: int, copy_syncs: int, unsynced: bool, watch: bool,
             copy_in: bool) -> tuple[int, int, int, bool, bool, bool, int, bool, bool]:
    """ClientSession._relay's walk over a read that is not one whole Query: (end, syncs, copy_syncs,
    unsynced, ext, track, ignored, copy_in, terminate) for the complete messages at the start of `data`.
    - syncs counts Query, Sync and FunctionCall, each of which ends in one ReadyForQuery;
    - unsynced says an extended-protocol batch waits for its Sync, ext that the read holds one of its
      messages, track that `watch` is on and a Query's text may change tracked session state;
    - copy_syncs counts the Syncs since the last Execute. libpq (PQexecParams) and others send a Sync
      after an Execute that starts COPY FROM STDIN and another after CopyDone; the backend reads the
      first in copy-in mode and ignores it. So when `copy_in` (the server is in such a COPY) meets a
      CopyDone or CopyFail, those Syncs get no reply (`ignored`) and copy_in ends;
    - a Terminate stops the walk: terminate, and `end` is where it starts.
    Lengths are checked in order as walk() checks them (ValueError(type, length)). pgmux._speedups.steps
    does the same in C."""
    n = len(data)
    pos = syncs = ignored = 0
    ext = track = terminate = False
    while n - pos >= 5:
        t = data[pos]
        end = message_end(data, pos, limit)
        if t == 90 and end - pos != 6:
            raise ValueError(t, end - pos - 1)
        if end > n:
            break
        if t == 81 or t == 83 or t == 70:  # Query, Sync, FunctionCall
            syncs += 1
            unsynced = False
            copy_syncs = copy_syncs + 1 if t == 83 else 0
            if t == 81 and watch and not track and screen(data, pos + 5, end):
                track = True
        elif t in _EXTENDED:
            unsynced = ext = True
            if t == 69:  # Execute
                copy_syncs = 0
        elif t == 99 or t == 102:  # CopyDone, CopyFail
            if copy_syncs and copy_in:
                ignored += copy_syncs
                copy_in = False
            copy_syncs = 0
        elif t == 88:  # Terminate
            terminate = True
            break
        pos = end
    return pos, syncs, copy_syncs, unsynced, ext, track, ignored, copy_in, terminate


_EXTENDED = frozenset(b"PBDECH")  # Parse, Bind, Describe, Execute, Close, Flush


# shape() flags: what session/fastpath.py's as_is needs to know of a client's complete messages.
SHAPE_PARSE_NAMED: Final = 1  # a Parse of a named statement
SHAPE_SCREEN_NAMED: Final = 2  # ... whose text screen() flags
SHAPE_PARSE_UNNAMED: Final = 4  # a Parse of the unnamed statement
SHAPE_SCREEN_UNNAMED: Final = 8  # ... whose text screen() flags
SHAPE_BIND: Final = 16  # a Bind
SHAPE_BIND_NAMED: Final = 32  # ... naming a portal or a statement
SHAPE_UNNAMED_EARLY: Final = 64  # a Bind or Describe of the unnamed statement before any Parse of it here
SHAPE_DESCRIBE_NAMED: Final = 128  # a Describe of a named statement
SHAPE_CLOSE_STATEMENT: Final = 256  # a Close of a statement
SHAPE_EXECUTE: Final = 512  # an Execute
SHAPE_OTHER: Final = 1024  # a Query, a FunctionCall, or a message too short for its kind
SHAPE_SAME: Final = 2048  # the last unnamed Parse is `screened`, byte for byte (not screened again)


def shape_py(chunk: bytes | bytearray | memoryview, screened: bytes | None = None) -> tuple[int, int, int]:
    """(flags, start, end) for a client's complete messages: flags ORs the SHAPE_* bits of every
    message, and chunk[start:end] is the last Parse of the unnamed statement (start -1 if none). An
    unnamed Parse equal to `screened`, a Parse whose text screen() passed before, is not screened
    again; SHAPE_SAME says the last one was that. pgmux._speedups.shape does the same in C."""
    n = len(chunk)
    pos = 0
    flags = 0
    ustart = uend = -1
    same = False
    while n - pos >= 5:
        t = chunk[pos]
        try:
            end = message_end(chunk, pos, ANY_LENGTH)
        except ValueError:
            end = n + 1
        if end > n:
            flags |= SHAPE_OTHER
            break
        body = end - pos - 5
        if t == 80:  # Parse
            if body < 1:
                flags |= SHAPE_OTHER
            elif chunk[pos + 5] != 0:
                flags |= SHAPE_PARSE_NAMED
                nul = bytes(chunk[pos + 5:end]).find(b"\x00")
                if screen(chunk, pos + 5 + nul + 1 if nul >= 0 else pos + 5, end):
                    flags |= SHAPE_SCREEN_NAMED
            else:
                flags |= SHAPE_PARSE_UNNAMED
                same = screened is not None and chunk[pos:end] == screened
                if not same and screen(chunk, pos + 6, end):
                    flags |= SHAPE_SCREEN_UNNAMED
                ustart, uend = pos, end
        elif t == 66:  # Bind
            if body < 2:
                flags |= SHAPE_OTHER
            else:
                flags |= SHAPE_BIND
                if chunk[pos + 5] != 0 or chunk[pos + 6] != 0:
                    flags |= SHAPE_BIND_NAMED
                elif ustart < 0:
                    flags |= SHAPE_UNNAMED_EARLY
        elif t == 68:  # Describe
            if body < 2:
                flags |= SHAPE_OTHER
            elif chunk[pos + 5] == 83:  # a statement
                if chunk[pos + 6] != 0:
                    flags |= SHAPE_DESCRIBE_NAMED
                elif ustart < 0:
                    flags |= SHAPE_UNNAMED_EARLY
        elif t == 67:  # Close
            if body < 1:
                flags |= SHAPE_OTHER
            elif chunk[pos + 5] == 83:
                flags |= SHAPE_CLOSE_STATEMENT
        elif t == 69:  # Execute
            flags |= SHAPE_EXECUTE
        elif t == 81 or t == 70:  # Query, FunctionCall
            flags |= SHAPE_OTHER
        pos = end
    if same:
        flags |= SHAPE_SAME
    return flags, ustart, uend


def binds_py(chunk: bytes | bytearray | memoryview) -> list[tuple[int, int, int, int]] | None:
    """When the complete messages in `chunk` are only Binds of named statements, Describes of portals,
    Executes and Syncs, and a Sync comes last (the steady state of named prepared statements, see
    session/fastpath.py's rebound): each Bind's (start, portal_end, name_end, end), where the two
    middle ones are the offsets of the NUL after its portal name and after its statement name. None
    for anything else. pgmux._speedups.binds does the same in C."""
    raw = bytes(chunk)
    n = len(raw)
    pos = last = 0
    out: list[tuple[int, int, int, int]] = []
    while pos < n:
        if n - pos < 5:
            return None
        t = raw[pos]
        try:
            end = message_end(raw, pos, ANY_LENGTH)
        except ValueError:
            return None
        if end > n:
            return None
        if t == 66:  # Bind
            pe = raw.find(b"\x00", pos + 5, end)
            ne = raw.find(b"\x00", pe + 1, end) if pe >= 0 else -1
            if ne <= pe + 1:  # malformed, or the unnamed statement
                return None
            out.append((pos, pe, ne, end))
        elif t == 68:  # Describe
            if end - pos < 6 or raw[pos + 5] == 83:  # a statement's description may need it prepared first
                return None
        elif t != 69 and t != 83:  # Execute, Sync
            return None
        last = t
        pos = end
    return out if last == 83 else None


_F = TypeVar("_F", bound=Callable[..., Any])


def _c(name: str, twin: _F) -> _F:
    """The C function `name` of pgmux._speedups where it is built, else its pure-Python twin."""
    try:
        from pgmux import _speedups
    except ImportError:  # not compiled here (setup.py builds it where a C compiler is present)
        return twin
    fn: _F = getattr(_speedups, name)
    return fn


# Final: each a C global of the compiled modules that call it, not a lookup in a module's dict.
binds: Final = _c("binds", binds_py)
screen: Final = _c("screen", screen_py)
query: Final = _c("query", query_py)
steps: Final = _c("steps", steps_py)
shape: Final = _c("shape", shape_py)
walk: Final = _c("walk", walk_py)
ready: Final = _c("ready", ready_py)
