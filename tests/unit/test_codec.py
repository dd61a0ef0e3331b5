"""Framing, as tables fed whole, one byte at a time and in random splits: sockets split anywhere."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgmux.errors import ProtocolViolation
from pgmux.protocol import messages as m
from pgmux.protocol.codec import MAX_STARTUP_PACKET, Buffer, cstring_at, read_startup, scan

# Every message type PostgreSQL names, both directions, with a body of the usual shape.
TABLE: list[tuple[bytes, bytes]] = [
    (m.AUTHENTICATION, struct.pack("!i", m.AUTH_OK)),
    (m.AUTHENTICATION, struct.pack("!i", m.AUTH_MD5) + b"salt"),
    (m.PARAMETER_STATUS, b"TimeZone\x00UTC\x00"),
    (m.BACKEND_KEY_DATA, struct.pack("!ii", 1, 2)),
    (m.READY_FOR_QUERY, b"I"),
    (m.ROW_DESCRIPTION, m.row_description([("a", m.OID_INT4), ("b", m.OID_TEXT)])[5:]),
    (m.DATA_ROW, m.data_row([1, None, "x" * 300])[5:]),
    (m.COMMAND_COMPLETE, b"SELECT 1\x00"),
    (m.EMPTY_QUERY_RESPONSE, b""),
    (m.ERROR_RESPONSE, m.error_response("ERROR", "42P01", "nope")[5:]),
    (m.NOTICE_RESPONSE, m.notice_response("hello")[5:]),
    (m.NOTIFICATION_RESPONSE, struct.pack("!i", 7) + b"chan\x00payload\x00"),
    (m.PARSE_COMPLETE, b""), (m.BIND_COMPLETE, b""), (m.CLOSE_COMPLETE, b""), (m.NO_DATA, b""),
    (m.PARAMETER_DESCRIPTION, struct.pack("!hi", 1, 23)),
    (m.PORTAL_SUSPENDED, b""),
    (m.COPY_IN_RESPONSE, b"\x00\x00\x00"), (m.COPY_OUT_RESPONSE, b"\x00\x00\x00"),
    (m.COPY_BOTH_RESPONSE, b"\x00\x00\x00"), (m.COPY_DATA, b"1\t2\n" * 50), (m.COPY_DONE, b""),
    (m.FUNCTION_CALL_RESPONSE, struct.pack("!i", -1)),
    (m.NEGOTIATE_PROTOCOL_VERSION, struct.pack("!ii", m.PROTOCOL_V3, 0)),
    (m.QUERY, b"select 1\x00"),
    (m.PARSE, b"s1\x00select $1\x00\x00\x00"),
    (m.BIND, b"\x00s1\x00\x00\x00\x00\x01\x00\x00\x00\x011\x00\x00"),
    (m.DESCRIBE, b"S\x00"), (m.EXECUTE, b"\x00\x00\x00\x00\x00"), (m.SYNC, b""), (m.FLUSH, b""),
    (m.CLOSE, b"Ss1\x00"), (m.FUNCTION_CALL, b"\x00\x00\x00\x01" + b"\x00" * 8),
    (m.COPY_FAIL, b"boom\x00"), (m.PASSWORD, b"md5abc\x00"), (m.TERMINATE, b""),
    (b"\x00", b"NUL type byte and \x00 NULs \x00 in the body"),
]
STREAM = b"".join(m.message(t, body) for t, body in TABLE)


def expected(table: list[tuple[bytes, bytes]]) -> list[tuple[int, int, int, bytes]]:
    out, pos = [], 0
    for t, body in table:
        raw = m.message(t, body)
        out.append((t[0], pos, len(raw), raw))
        pos += len(raw)
    return out


def feed(chunks: list[bytes], max_len: int = 1 << 20) -> tuple[list[tuple[int, int, int, bytes]], int]:
    """Consume chunks the way the sessions do. Returns ([(type, absolute offset, length, bytes)],
    bytes left pending)."""
    buf = Buffer()
    seen = b""
    consumed = 0  # absolute offset of the first byte not yet reported in a message
    out = []
    for chunk in chunks:
        seen += chunk
        data = buf.feed(chunk)  # starts at `consumed`, or is empty while a partial message grows
        msgs, pos = scan(data, 0, max_len)
        buf.keep(data, pos)
        out.extend((t, consumed + s, n, bytes(data[s:s + n])) for t, s, n in msgs)
        consumed += pos
        assert len(buf) == len(seen) - consumed
        if len(buf) >= 5:  # never more than one partial message held back
            (length,) = struct.unpack_from("!i", seen, consumed + 1)
            assert len(buf) < length + 1
    return out, len(buf)


def test_scan_whole_buffer_exact_offsets() -> None:
    msgs, pos = scan(STREAM, 0, 1 << 20)
    assert pos == len(STREAM)
    assert [(t, s, n) for t, s, n, _ in expected(TABLE)] == msgs


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_scan_accepts_any_buffer_and_a_start_offset(kind: type) -> None:
    first = m.message(*TABLE[0])
    msgs, pos = scan(kind(STREAM), len(first), 1 << 20)
    assert pos == len(STREAM)
    assert msgs == [(t, s, n) for t, s, n, _ in expected(TABLE)[1:]]


def test_one_byte_at_a_time() -> None:
    out, left = feed([STREAM[i:i + 1] for i in range(len(STREAM))])
    assert out == expected(TABLE)
    assert left == 0


@pytest.mark.parametrize("size", [2, 3, 4, 5, 6, 7, 64, 1000])
def test_fixed_size_chunks(size: int) -> None:
    out, left = feed([STREAM[i:i + size] for i in range(0, len(STREAM), size)])
    assert out == expected(TABLE)
    assert left == 0


@pytest.mark.parametrize(("mtype", "body"), TABLE)
def test_each_message_split_at_every_point(mtype: bytes, body: bytes) -> None:
    raw = m.message(mtype, body)
    for cut in range(len(raw) + 1):
        out, left = feed([raw[:cut], raw[cut:]])
        assert out == [(mtype[0], 0, len(raw), raw)]
        assert left == 0


def test_partial_message_is_not_reported() -> None:
    raw = m.query("select 1")
    for cut in range(len(raw)):
        assert scan(raw[:cut], 0, 1 << 20) == ([], 0)
    out, left = feed([raw + raw[:7]])
    assert [o[3] for o in out] == [raw]
    assert left == 7


def test_buffer_holds_a_partial_message_until_it_is_whole() -> None:
    big = m.message(m.DATA_ROW, b"x" * 100_000)
    buf = Buffer()
    handed: list[bytes] = []
    for i in range(0, len(big), 1000):
        data = buf.feed(big[i:i + 1000])
        msgs, pos = scan(data, 0, 1 << 20)
        buf.keep(data, pos)
        handed += [bytes(data[s:s + n]) for _, s, n in msgs]
    assert handed == [big] and len(buf) == 0


def test_buffer_scans_in_place_when_nothing_is_pending() -> None:
    buf = Buffer()
    chunk = m.query("x") + m.query("y")
    assert buf.feed(chunk) is chunk
    buf.keep(chunk, len(chunk))
    assert len(buf) == 0


@given(table=st.lists(st.tuples(st.binary(min_size=1, max_size=1), st.binary(max_size=300)), max_size=20),
       cuts=st.lists(st.integers(min_value=0, max_value=6000), max_size=30))
def test_random_messages_random_splits(table: list[tuple[bytes, bytes]], cuts: list[int]) -> None:
    stream = b"".join(m.message(t, body) for t, body in table)
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    chunks = [stream[a:b] for a, b in zip(points, points[1:], strict=False)]
    out, left = feed(chunks)
    assert out == expected(table)
    assert left == 0


# -- lengths ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("length", [-1, -(1 << 31), 0, 1, 2, 3])
def test_length_below_four_is_a_violation(length: int) -> None:
    header = b"Q" + struct.pack("!i", length)
    for prefix in (b"", m.message(m.SYNC)):
        with pytest.raises(ProtocolViolation) as exc:
            scan(prefix + header + b"\x00" * 8, 0, 1 << 20)
        assert exc.value.sqlstate == "08P01"


@pytest.mark.parametrize(("length", "cap", "ok"), [
    (4, 4, True), (100, 100, True), (101, 100, False), ((1 << 31) - 1, 1 << 20, False),
])
def test_length_cap(length: int, cap: int, ok: bool) -> None:
    header = b"d" + struct.pack("!i", length)
    if ok:
        data = header + b"x" * (length - 4)
        assert scan(data, 0, cap) == ([(ord("d"), 0, length + 1)], length + 1)
    else:
        # Refused from the header alone: nothing of the claimed body is waited for or buffered.
        with pytest.raises(ProtocolViolation, match=f"invalid message length {length}"):
            scan(header, 0, cap)


def test_oversized_header_fails_on_its_fifth_byte() -> None:
    header = b"D" + struct.pack("!i", 1 << 30)
    buf = Buffer()
    for i in range(4):
        data = buf.feed(header[i:i + 1])
        msgs, pos = scan(data, 0, 1 << 20)
        assert msgs == []
        buf.keep(data, pos)
    with pytest.raises(ProtocolViolation):
        scan(buf.feed(header[4:5]), 0, 1 << 20)


def test_a_bad_header_after_good_messages_still_raises() -> None:
    with pytest.raises(ProtocolViolation):
        scan(m.query("ok") + b"Q\x00\x00\x00\x02", 0, 1 << 20)


# -- startup packets --------------------------------------------------------------------------------

def startup(body: bytes, code: int = m.PROTOCOL_V3) -> bytes:
    return struct.pack("!ii", len(body) + 8, code) + body


def read_bytewise(packet: bytes) -> tuple[object, int]:
    """Feed a startup packet one byte at a time; no result until the last byte."""
    for i in range(len(packet)):
        res, used = read_startup(packet[:i])
        assert (res, used) == (None, 0)
    return read_startup(packet)


@pytest.mark.parametrize(("packet", "code", "params"), [
    (m.startup_message({"user": "alice", "database": "db", "application_name": "psql"}), m.PROTOCOL_V3,
     {"user": "alice", "database": "db", "application_name": "psql"}),
    (m.startup_message({}), m.PROTOCOL_V3, {}),
    (startup(b"\x00"), m.PROTOCOL_V3, {}),
    (startup(b"user\x00alice\x00options\x00\x00\x00"), m.PROTOCOL_V3, {"user": "alice", "options": ""}),
    (startup(b"user\x00\x00\x00"), m.PROTOCOL_V3, {"user": ""}),
    (m.startup_message({"user": "\u00e9l\u00e8ve"}), m.PROTOCOL_V3, {"user": "\u00e9l\u00e8ve"}),
    (m.startup_message({"user": "a", "_pq_.x": "1"}, protocol=(3 << 16) | 2), (3 << 16) | 2,
     {"user": "a", "_pq_.x": "1"}),
])
def test_startup_message(packet: bytes, code: int, params: dict[str, str]) -> None:
    res, used = read_bytewise(packet)
    assert res is not None
    assert used == len(packet)
    assert (res.code, res.major, res.minor, res.params) == (code, code >> 16, code & 0xFFFF, params)


@pytest.mark.parametrize("code", [m.SSL_REQUEST_CODE, m.GSSENC_REQUEST_CODE])
def test_encryption_requests(code: int) -> None:
    packet = struct.pack("!ii", 8, code)
    res, used = read_bytewise(packet)
    assert res is not None and used == 8
    assert (res.code, res.params) == (code, {})


@pytest.mark.parametrize(("pid", "key"), [(1234, 5678), (1, -1), ((1 << 31) - 1, -(1 << 31))])
def test_cancel_request(pid: int, key: int) -> None:
    res, used = read_bytewise(m.cancel_request(pid, key))
    assert res is not None and used == 16
    assert (res.code, res.key_pid, res.key_secret) == (m.CANCEL_REQUEST_CODE, pid, key)


def test_protocol_2_is_reported_not_parsed() -> None:
    # Protocol 2 startup packets have a fixed layout; the session refuses them, the codec only frames.
    packet = startup(b"alice".ljust(64, b"\x00") + b"db".ljust(64, b"\x00"), code=2 << 16)
    res, used = read_bytewise(packet)
    assert res is not None and used == len(packet)
    assert (res.major, res.minor, res.params) == (2, 0, {})


def test_only_one_packet_is_consumed() -> None:
    ssl = struct.pack("!ii", 8, m.SSL_REQUEST_CODE)
    start = m.startup_message({"user": "alice"})
    res, used = read_startup(ssl + start)
    assert res is not None and res.code == m.SSL_REQUEST_CODE and used == 8
    res, used = read_startup((ssl + start)[used:])
    assert res is not None and res.params == {"user": "alice"} and used == len(start)


def test_startup_at_the_size_limit() -> None:
    value = "v" * (MAX_STARTUP_PACKET - len(m.startup_message({"k": ""})))
    packet = m.startup_message({"k": value})
    assert len(packet) == MAX_STARTUP_PACKET
    res, used = read_startup(packet)
    assert res is not None and res.params == {"k": value}


@pytest.mark.parametrize(("packet", "match"), [
    # Oversized: refused from the length word alone, before the rest arrives.
    (struct.pack("!i", MAX_STARTUP_PACKET + 1), "invalid startup packet length"),
    (struct.pack("!i", 1 << 30), "invalid startup packet length"),
    (struct.pack("!i", 7), "invalid startup packet length"),
    (struct.pack("!i", 4), "invalid startup packet length"),
    (struct.pack("!i", 0), "invalid startup packet length"),
    (struct.pack("!i", -1), "invalid startup packet length"),
    (startup(b""), "terminator"),
    (startup(b"user\x00alice\x00"), "terminator"),
    (startup(b"user\x00alice"), "terminator"),
    (startup(b"user\x00alice\x00database\x00\x00"), "missing value"),
    (startup(b"\x00\x00"), "missing value"),
    (startup(b"user\x00alice\x00\x00\x00"), "missing value"),
    (startup(b"\x00alice\x00\x00"), "empty parameter name"),
    (startup(b"user\x00\xff\xfe\x00\x00"), "invalid byte sequence"),
    (struct.pack("!iii", 12, m.SSL_REQUEST_CODE, 0), "SSL/GSS"),
    (struct.pack("!iii", 12, m.GSSENC_REQUEST_CODE, 0), "SSL/GSS"),
    (struct.pack("!iii", 12, m.CANCEL_REQUEST_CODE, 1), "cancel request"),
    (struct.pack("!iiiii", 20, m.CANCEL_REQUEST_CODE, 1, 2, 3), "cancel request"),
])
def test_bad_startup_packets(packet: bytes, match: str) -> None:
    with pytest.raises(ProtocolViolation, match=match) as exc:
        read_startup(packet)
    assert (exc.value.sqlstate, exc.value.severity) == ("08P01", "FATAL")


def test_partial_length_word_waits() -> None:
    for n in range(4):
        assert read_startup(b"\x00" * n) == (None, 0)


_name = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), min_size=1,
                max_size=20)
_value = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=40)


@given(params=st.dictionaries(_name, _value, max_size=8), cuts=st.lists(st.integers(0, 2000), max_size=10))
def test_startup_roundtrip_random_splits(params: dict[str, str], cuts: list[int]) -> None:
    packet = m.startup_message(params) + m.query("pipelined")
    points = sorted({c % (len(packet) + 1) for c in cuts} | {len(packet)})
    got = b""
    res = None
    for p in points:  # the client session's loop: append, try, keep the rest
        got = packet[:p]
        res, used = read_startup(got)
        if res is not None:
            break
    assert res is not None and res.params == params
    assert got[used:] == m.query("pipelined")[:len(got) - used]


# -- helpers used on the relay path -----------------------------------------------------------------

def test_cstring_at() -> None:
    data = b"abc\x00\x00d\xc3\xa9\x00"
    assert cstring_at(data, 0) == ("abc", 4)
    assert cstring_at(data, 4) == ("", 5)
    assert cstring_at(memoryview(data), 5) == ("d\u00e9", 9)
    with pytest.raises(ValueError):
        cstring_at(b"no terminator", 0)


def test_error_fields_roundtrip() -> None:
    raw = m.error_response("FATAL", "53300", "too many", detail="d", hint="h")
    ((t, _, n),), _ = scan(raw, 0, 1 << 20)
    assert (chr(t), n) == ("E", len(raw))
    assert m.parse_error_fields(raw[5:]) == {"S": "FATAL", "V": "FATAL", "C": "53300", "M": "too many",
                                             "D": "d", "H": "h"}


def test_builders_frame_correctly() -> None:
    assert m.ready_for_query(b"T") == b"Z\x00\x00\x00\x05T"
    assert m.terminate() == b"X\x00\x00\x00\x04"
    assert m.cancel_request(1, 2) == struct.pack("!iiii", 16, 80877102, 1, 2)
    assert m.startup_message({"user": "a"}) == b"\x00\x00\x00\x10\x00\x03\x00\x00user\x00a\x00\x00"
    assert m.query("select 1") == b"Q\x00\x00\x00\rselect 1\x00"


def test_data_row_values_round_trip() -> None:
    body = m.data_row([1, None, "é", b""])[5:]
    assert m.data_row_values(body) == [b"1", None, "é".encode(), b""]
    assert m.data_row_values(memoryview(body)) == [b"1", None, "é".encode(), b""]
    assert m.data_row_values(m.data_row([])[5:]) == []
