"""The one header walk in Python (protocol/scans.py message_end) and the walks built on it agree on
where messages end and which lengths are refused. (The C scans against their Python definitions:
test_speedups.py.)"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgmux.errors import ProtocolViolation
from pgmux.protocol import messages as m
from pgmux.protocol.codec import scan
from pgmux.protocol.scans import ANY_LENGTH, binds_py, message_end, noted_table, shape_py, steps_py, walk_py
from pgmux.routing.classify import Classifier
from pgmux.routing.router import transaction_kind


def test_message_end_reads_one_header() -> None:
    q = m.query("select 1")
    assert message_end(q, 0, 1000) == len(q)
    assert message_end(q + q, len(q), 1000) == 2 * len(q)
    assert message_end(q[:7], 0, 1000) == len(q)  # not whole yet: the end lies beyond the bytes at hand
    with pytest.raises(ValueError) as e:
        message_end(b"Q" + struct.pack("!i", 3), 0, 1000)
    assert e.value.args == (ord("Q"), 3)
    with pytest.raises(ValueError) as e:
        message_end(q, 0, len(q) - 2)  # longer than the limit
    assert e.value.args == (ord("Q"), len(q) - 1)
    with pytest.raises(ValueError):
        message_end(b"D" + struct.pack("!i", -1), 0, ANY_LENGTH)


def _header(t: int, length: int, body: int) -> bytes:
    return bytes((t,)) + struct.pack("!i", length) + b"\x00" * body


# Messages whose lengths are mostly right, sometimes too short, too long, or cut off.
PART = st.builds(_header, st.sampled_from(b"QPBDESCdcHf"), st.integers(-2, 40), st.integers(0, 40))


@settings(max_examples=400, deadline=None)
@given(st.lists(PART, max_size=6))
def test_every_walk_stops_and_refuses_where_message_end_says(parts: list[bytes]) -> None:
    data = b"".join(parts)
    n = len(data)
    # The reference: message_end in its loop.
    pos, error = 0, None
    try:
        while n - pos >= 5:
            end = message_end(data, pos, 30)
            if end > n:
                break
            pos = end
    except ValueError as e:
        error = e.args
    if error is None:
        assert scan(data, 0, 30)[1] == pos
        assert walk_py(data, 30, noted_table(""))[0] == pos
        assert steps_py(data, 30, 0, False, False, False)[0] == pos
    else:
        with pytest.raises(ProtocolViolation):
            scan(data, 0, 30)
        with pytest.raises(ValueError) as e:
            walk_py(data, 30, noted_table(""))
        assert e.value.args == error
        with pytest.raises(ValueError) as e:
            steps_py(data, 30, 0, False, False, False)
        assert e.value.args == error
    stop = _complete(data)
    if n - stop >= 5:  # a header there, its message bad or not whole: the fast paths' walks say so
        assert shape_py(data)[0] & 1024  # SHAPE_OTHER
    if stop < n:
        assert binds_py(data) is None
    classifier = Classifier()
    assert transaction_kind(classifier, data, lambda name: None) == \
        transaction_kind(classifier, data[:stop], lambda name: None)


def _complete(data: bytes) -> int:
    """Where the complete messages at the start of data end, any length of at least 4 taken."""
    pos, n = 0, len(data)
    while n - pos >= 5:
        try:
            end = message_end(data, pos, ANY_LENGTH)
        except ValueError:
            break
        if end > n:
            break
        pos = end
    return pos
