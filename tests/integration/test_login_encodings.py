"""A server left in another client_encoding by its last client still takes the next client's startup
parameters: what pgmux sends to set them is ASCII whatever they hold (non-ASCII characters as Unicode
escapes), so PostgreSQL reads it alike in every client encoding. PostgreSQL converts a whole query string
from the session's client_encoding when it arrives; UTF-8 bytes read as EUC_JP were refused before."""

from __future__ import annotations

import asyncio

import pytest
from test_parameter_status import login, status_set

from conftest import PgmuxStarter
from pgmux.protocol import messages as m
from pgmux.testing.cluster import PgCluster

NON_ASCII = {"application_name": "café ☕ x"}


@pytest.mark.parametrize("mode", ["transaction", "session", "statement"])
def test_non_ascii_startup_values_after_a_client_in_another_encoding(pg: PgCluster, pgmux_factory: PgmuxStarter,
                                                                   mode: str) -> None:
    p = pg.primary
    want = asyncio.run(login(p.host, p.port, NON_ASCII))
    assert want[-1][0] == m.READY_FOR_QUERY, want
    proc = pgmux_factory(settings={"pool_mode": mode, "default_pool_size": 1})
    for encoding in ("EUC_JP", "LATIN1", "SJIS"):
        # One server: the client before leaves it in its encoding (transaction mode keeps it set; the
        # next client's parameters are applied over it).
        first = asyncio.run(login(proc.host, proc.port, {"client_encoding": encoding}))
        assert first[-1][0] == m.READY_FOR_QUERY, first
        got = asyncio.run(login(proc.host, proc.port, NON_ASCII))
        assert got[-1][0] == m.READY_FOR_QUERY, (encoding, got)
        assert status_set(got) == status_set(want), encoding
