"""Fuzzing the codec (issue 11): arbitrary and mutated bytes through the header walks, the read buffer,
the startup parser and the message decoders. Each either answers within its contract or raises the
protocol error type (ProtocolViolation, or ValueError(type, length) for the C walks), and the C walks
say exactly what their Python definitions say."""

from __future__ import annotations

import struct

import pytest
from fuzzing import FUZZ, VALID_BACKEND, VALID_FRONTEND, backend, chunked, frontend
from hypothesis import given
from hypothesis import strategies as st

from pgmux import _speedups
from pgmux.errors import ProtocolViolation
from pgmux.protocol import messages as m
from pgmux.protocol.codec import MAX_STARTUP_PACKET, Buffer, read_startup, scan
from pgmux.protocol.scans import binds_py, noted_table, query_py, ready_py, shape_py, steps_py, walk_py

streams = st.one_of(
    st.lists(st.one_of(frontend(nonempty_targets=False), backend()), max_size=8).map(b"".join),
    st.binary(max_size=120),
    st.lists(st.one_of(VALID_FRONTEND, VALID_BACKEND), max_size=6).map(b"".join).flatmap(
        lambda b: st.integers(0, len(b)).map(lambda n: b[:n])),  # cut anywhere
)
LIMIT = 1 << 16


def outcome(fn: object, *args: object) -> object:
    try:
        return fn(*args)  # type: ignore[operator]
    except ValueError as e:
        return ("ValueError", e.args)


@FUZZ
@given(data=streams)
def test_scan_frames_or_refuses(data: bytes) -> None:
    try:
        msgs, pos = scan(data, 0, LIMIT)
    except ProtocolViolation:
        return
    at = 0
    for t, start, total in msgs:
        assert start == at and 5 <= total <= LIMIT + 1 and t == data[start]
        at += total
    assert pos == at <= len(data)
    assert len(data) - pos < 5 or struct.unpack_from("!i", data, pos + 1)[0] + 1 > len(data) - pos


@FUZZ
@given(data=streams, limit=st.sampled_from([4, 5, 64, LIMIT]))
def test_c_walks_match_their_definitions(data: bytes, limit: int) -> None:
    noted = noted_table("SEG")
    walked = outcome(walk_py, data, limit, noted)
    assert outcome(_speedups.walk, data, limit, noted) == walked
    z = _speedups.ready(data, limit, noted)
    assert z == ready_py(data, limit, noted)
    # ready tells exactly the reads walk sees as whole, one ReadyForQuery last, nothing noted
    usual = isinstance(walked, tuple) and len(walked) == 5 and walked[0] == len(data) and walked[1] == 1 \
        and walked[3] == len(data) - 6 and walked[4] is None and walked[2] != 0
    assert z == (walked[2] if usual else 0)  # type: ignore[index]
    for flags in [(0, False, False, False), (2, True, True, True)]:
        assert outcome(_speedups.steps, data, limit, *flags) == outcome(steps_py, data, limit, *flags)
    assert _speedups.query(data, limit) == query_py(data, limit)
    for known in (data[:16], data[:len(data) // 2]):  # as the client's last unnamed Parse (kind 3)
        assert _speedups.query(data, limit, known) == query_py(data, limit, known)


@FUZZ
@given(msgs=st.lists(frontend(nonempty_targets=False), max_size=6))
def test_c_shapes_match_their_definitions(msgs: list[bytes]) -> None:
    """shape() and binds() get complete messages (steps() walked them first); bodies may be anything."""
    chunk = b"".join(msgs)
    assert outcome(_speedups.shape, chunk) == outcome(shape_py, chunk)
    assert outcome(_speedups.binds, chunk) == outcome(binds_py, chunk)


@FUZZ
@given(data=st.data(), stream=streams)
def test_buffer_holds_at_most_one_partial_message(data: st.DataObject, stream: bytes) -> None:
    """Fed in arbitrary reads, Buffer hands back exactly the stream's whole messages, in order, and keeps
    no more than the one message not complete yet."""
    buf, got = Buffer(), []
    try:
        whole, _ = scan(stream, 0, LIMIT)
    except ProtocolViolation:
        return
    for chunk in data.draw(chunked(stream)):
        out = buf.feed(chunk)
        if not out:
            continue
        msgs, pos = scan(out, 0, LIMIT)
        got += [bytes(out[s:s + n]) for _, s, n in msgs]
        buf.keep(out, pos)
        if len(buf) >= 5:
            assert len(buf) < 1 + struct.unpack_from("!i", buf.pending, 1)[0]
        else:
            assert len(buf) < 5
    assert got == [stream[s:s + n] for _, s, n in whole]


@FUZZ
@given(data=st.one_of(
    st.binary(max_size=64),
    st.builds(lambda n, code, rest: struct.pack("!ii", n, code) + rest, st.integers(-2**31, 2**31 - 1),
              st.sampled_from([m.PROTOCOL_V3, m.SSL_REQUEST_CODE, m.GSSENC_REQUEST_CODE, m.CANCEL_REQUEST_CODE,
                               2 << 16, (3 << 16) | 5]), st.binary(max_size=40)),
    st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=4).map(
        lambda p: m.startup_message(p)).flatmap(lambda b: st.integers(0, len(b)).map(lambda n: b[:n] + b"\0"))))
def test_read_startup(data: bytes) -> None:
    try:
        res, used = read_startup(data)
    except ProtocolViolation:
        return
    if res is None:
        assert used == 0 and (len(data) < 4 or len(data) < struct.unpack_from("!i", data)[0])
    else:
        assert 8 <= used <= MAX_STARTUP_PACKET and used <= len(data)
        assert all(isinstance(k, str) and k and isinstance(v, str) for k, v in res.params.items())


@FUZZ
@given(body=st.binary(max_size=60))
def test_error_fields_decode_or_refuse(body: bytes) -> None:
    i, complete = 0, True  # every field up to the terminating NUL has its own NUL
    while i < len(body) and body[i] != 0:
        end = body.find(b"\0", i + 1)
        if end < 0:
            complete = False
            break
        i = end + 1
    try:
        fields = m.parse_error_fields(body)
    except ProtocolViolation:
        assert not complete
        return
    assert complete and all(len(k) == 1 for k in fields)


@pytest.mark.parametrize("text", ["ok", "caf\udce9", "\udcff\udcfe"])
def test_texts_a_client_sent_go_back_as_its_bytes(text: str) -> None:
    """Found by fuzzing: a statement name or query text that is not UTF-8 (decoded with surrogateescape)
    made every message pgmux built from it raise UnicodeEncodeError."""
    raw = text.encode("utf-8", "surrogateescape")
    assert m.cstr(text) == raw + b"\0"
    fields = m.parse_error_fields(m.error_response("ERROR", "26000", text)[5:])
    assert fields["M"].encode("utf-8", "surrogateescape") in (raw, fields["M"].encode())
