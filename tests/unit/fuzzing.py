"""Hypothesis strategies for hostile protocol input, and a fake PostgreSQL that answers what pgmux forwards.

Frontend and backend messages come valid, mutated (body bytes flipped, cut, grown, emptied, another type
byte) or arbitrary; a stream of them is cut into reads at arbitrary points. FakePg answers every message
as PostgreSQL would in count and kind (an error, when told to, then skipping to Sync), so that the
servers of a Rig keep cycling through the pool while the fuzz goes on.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from fakes import Peer, select_one_reply
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from pgmux.protocol import messages as m
from pgmux.protocol.codec import scan
from pgmux.session.states import ServerState

# A bounded example count per test: the whole fuzz suite stays well under a minute on 2 cores.
FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])


def frame(t: bytes, body: bytes) -> bytes:
    return t + struct.pack("!i", len(body) + 4) + body


# -- frontend ----------------------------------------------------------------------------------------

SQL = ["select 1", "SELECT $1", "BEGIN", "COMMIT", "ROLLBACK", "SET search_path = x", "SET LOCAL a.b = 1",
       "RESET ALL", "DISCARD ALL", "PREPARE p AS SELECT 1", "EXECUTE p", "DEALLOCATE ALL", "LISTEN x",
       "UNLISTEN *", "SAVEPOINT a", "ROLLBACK TO a", "CREATE TEMP TABLE t (x int)", "", "SELEC 1; SET x = 1",
       "select set_config('a.b', 'c', false)", "DECLARE c CURSOR WITH HOLD FOR SELECT 1", "CLOSE c",
       "SELECT pg_advisory_lock(1)", "SELECT 'é'", "SET a.b = '\udcff'"]
NAMES = st.sampled_from([b"", b"s1", b"s2", b"pgmux_1", b"p"])
texts = st.sampled_from(SQL).map(lambda s: s.encode("utf-8", "surrogateescape"))
i16 = st.integers(-2, 3)


@st.composite
def parse_msg(draw: Any) -> bytes:
    types = draw(st.lists(st.sampled_from([0, 23, 25, -1]), max_size=3))
    return frame(b"P", draw(NAMES) + b"\0" + draw(texts) + b"\0" + struct.pack("!h", len(types))
                 + b"".join(struct.pack("!i", t) for t in types))


@st.composite
def bind_msg(draw: Any) -> bytes:
    fmts = draw(st.lists(st.integers(0, 1), max_size=2))
    params = draw(st.lists(st.one_of(st.none(), st.binary(max_size=8)), max_size=3))
    body = draw(st.sampled_from([b"", b"c"])) + b"\0" + draw(NAMES) + b"\0"
    body += struct.pack("!h", len(fmts)) + b"".join(struct.pack("!h", f) for f in fmts)
    body += struct.pack("!h", len(params)) + b"".join(
        struct.pack("!i", -1) if p is None else struct.pack("!i", len(p)) + p for p in params)
    return frame(b"B", body + struct.pack("!h", 0))


@st.composite
def target_msg(draw: Any) -> bytes:
    return frame(draw(st.sampled_from([b"D", b"C"])), draw(st.sampled_from([b"S", b"P"])) + draw(NAMES) + b"\0")


VALID_FRONTEND = st.one_of(
    parse_msg(), bind_msg(), target_msg(),
    st.builds(lambda p, n: frame(b"E", p + b"\0" + struct.pack("!i", n)), st.sampled_from([b"", b"c"]),
              st.integers(0, 2)),
    texts.map(lambda t: frame(b"Q", t + b"\0")),
    st.just(frame(b"S", b"")), st.just(frame(b"H", b"")),
    st.just(frame(b"F", struct.pack("!ihhh", 1299, 0, 0, 0))),
    st.sampled_from([frame(b"d", b"1\n"), frame(b"c", b""), frame(b"f", b"no\0")]),
)


@st.composite
def mutated(draw: Any, valid: st.SearchStrategy[bytes], types: bytes) -> bytes:
    """A valid message changed: its length always says its body (framing stays intact)."""
    msg = draw(valid)
    t, body = msg[:1], bytearray(msg[5:])
    how = draw(st.integers(0, 4))
    if how == 0 and body:
        for i in draw(st.lists(st.integers(0, len(body) - 1), min_size=1, max_size=4)):
            body[i] = draw(st.integers(0, 255))
    elif how == 1:
        body = body[:draw(st.integers(0, len(body)))]
    elif how == 2:
        body += draw(st.binary(min_size=1, max_size=20))
    elif how == 3:
        t = bytes((draw(st.sampled_from(types)),))
    else:
        body = bytearray(draw(st.binary(max_size=30)))
    return frame(t, bytes(body))


def frontend(nonempty_targets: bool = True) -> st.SearchStrategy[bytes]:
    """Valid and mutated frontend messages (no Terminate: it ends the session, see the tests).
    nonempty_targets leaves out the known crash (a Parse, Bind, Describe or Close with a body too short
    for its first fields), which has tests of its own."""
    anything = st.one_of(VALID_FRONTEND, VALID_FRONTEND, mutated(VALID_FRONTEND, b"PBDECHSFQdcf"))
    if nonempty_targets:
        anything = anything.filter(lambda b: not known_short_body(b))
    return anything


def known_short_body(msg: bytes) -> bool:
    """A Parse/Bind/Describe/Close too short to hold its first fields: the bug `bounded` fixes."""
    t, body = msg[:1], msg[5:]
    if t in (b"D", b"C"):
        return len(body) < 2
    if t in (b"P", b"B"):
        return b"\0" not in body
    return False


@st.composite
def chunked(draw: Any, data: bytes) -> list[bytes]:
    """`data` cut into reads at arbitrary points."""
    cuts = sorted(set(draw(st.lists(st.integers(0, len(data)), max_size=6))))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


# -- backend -----------------------------------------------------------------------------------------

VALID_BACKEND = st.one_of(
    st.sampled_from([m.command_complete("SELECT 1"), m.data_row([1]), m.row_description([("x", 23)]),
                     frame(b"1", b""), frame(b"2", b""), frame(b"3", b""), frame(b"n", b""), frame(b"s", b""),
                     frame(b"I", b""), frame(b"t", b"\0\0"), frame(b"G", b"\0\0\0"), frame(b"H", b"\0\0\0"),
                     frame(b"c", b""), frame(b"d", b"x"), frame(b"V", b"\xff\xff\xff\xff"),
                     m.notice_response("hi"), m.error_response("ERROR", "42000", "no"),
                     m.error_response("FATAL", "57P01", "bye"), m.error_response("ERROR", "08P01", "proto"),
                     frame(b"A", b"\0\0\0\1x\0y\0")]),
    st.sampled_from(b"ITE").map(lambda z: m.ready_for_query(bytes((z,)))),
    st.tuples(st.sampled_from(["TimeZone", "client_encoding", "application_name", "x"]),
              st.sampled_from(["UTC", "UTF8", "", "\udcff"])).map(lambda kv: m.parameter_status(*kv)),
)
LOGIN_BACKEND = st.one_of(
    st.sampled_from([m.auth_ok(), m.backend_key_data(1, 2), m.ready_for_query(b"I"), frame(b"v", b"\0\0\0\0"),
                     m.auth_request(3), m.auth_request(5, b"salt"), m.auth_request(10, b"SCRAM-SHA-256\0\0"),
                     m.auth_request(11, b"r=x"), m.auth_request(12, b"v=x"), m.auth_request(99)]),
    VALID_BACKEND,
)


def backend(valid: st.SearchStrategy[bytes] = VALID_BACKEND) -> st.SearchStrategy[bytes]:
    return st.one_of(valid, valid, mutated(valid, b"ZSEKRNCDTGHdcAv12"),
                     st.binary(min_size=5, max_size=40))


# -- a fake PostgreSQL ---------------------------------------------------------------------------------

class FakePg:
    """Answers what pgmux wrote to a server: one reply per message, in order, as PostgreSQL does (an
    ErrorResponse when `fail` says so, then nothing up to the Sync). A Terminate or an unknown
    message type gets FATAL and the connection closes. Answers `select 1` with select_one_reply()."""

    def __init__(self, fail: Callable[[], bool]) -> None:
        self.fail = fail
        self.status: dict[int, bytes] = {}

    def answer(self, server: Peer) -> bool:
        """Reply to what `server` was sent since the last call. Returns whether anything was sent."""
        data = server.take()
        if not data or server.transport.closed:
            return False
        msgs, pos = scan(data, 0, 1 << 30)
        assert pos == len(data), f"pgmux sent a server a partial message: {data[pos:]!r}"
        key = id(server)
        status = self.status.get(key, b"I")
        skip, out = False, []
        for t, s, n in msgs:
            body = data[s + 5:s + n]
            c = chr(t)
            if c == "S":
                skip = False
                out.append(m.ready_for_query(status))
                continue
            if skip or c in "dcfH":
                continue
            if c not in "QPBDECF":
                out.append(m.error_response("FATAL", "08P01", f"invalid frontend message type {t}"))
                server.send(b"".join(out))
                server.session.connection_lost(None)
                return True
            if self.fail() and body != b"select 1\0":  # the tests' own query always runs
                out.append(m.error_response("ERROR", "42601", "syntax error"))
                if status == b"T":
                    status = b"E"
                if c in "QF":
                    out.append(m.ready_for_query(status))
                else:
                    skip = True
                continue
            if c == "Q":
                sql = body.rstrip(b"\0").strip().lower()
                if sql == b"select 1":
                    out.append(select_one_reply()[:-6])
                elif sql.startswith(b"begin"):
                    status = b"T"
                    out.append(m.command_complete("BEGIN"))
                elif sql.startswith((b"commit", b"rollback")) and not sql.startswith(b"rollback to"):
                    status = b"I"
                    out.append(m.command_complete("COMMIT"))
                elif not sql:
                    out.append(m.empty_query_response())
                else:
                    out.append(m.command_complete("SET"))
                out.append(m.ready_for_query(status))
            elif c == "F":
                out.append(frame(b"V", b"\xff\xff\xff\xff") + m.ready_for_query(status))
            else:
                out.append({"P": frame(b"1", b""), "B": frame(b"2", b""), "D": frame(b"n", b""),
                            "E": m.command_complete("SELECT 0"), "C": frame(b"3", b"")}[c])
        self.status[key] = status
        if out:
            server.send(b"".join(out))
        return True


def pump(rig: Any, pg: FakePg, rounds: int = 30) -> None:
    """Let the fake PostgreSQL answer (and log in the servers pgmux opens) until nobody has anything
    more to say (bounded)."""
    for _ in range(rounds):
        busy = False
        for s in list(rig.servers):
            if s.transport.closed:
                continue
            if s.state is ServerState.LOGIN:
                if s.transport.chunks:
                    rig.server_login(s)
                    busy = True
            elif pg.answer(s):
                busy = True
        if not busy:
            return
    raise AssertionError("pgmux and the fake server kept talking")


class Errors(logging.Handler):
    """Collects what pgmux logs as an internal error (a traceback that reached App.log_exception)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def tracebacks(self) -> list[str]:
        return [f"{r.getMessage()}: {r.exc_info[1]!r}" for r in self.records if r.exc_info]


@contextmanager
def internal_errors() -> Iterator[Errors]:
    handler = Errors()
    logger = logging.getLogger("pgmux")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
