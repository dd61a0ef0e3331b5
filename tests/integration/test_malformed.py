"""Malformed frontend messages are the client's error, answered as PostgreSQL answers them.

Each case sends one frontend message with a short, truncated or inconsistent body, first straight to
PostgreSQL and then through pgmux (session and transaction pooling, with prepared statements tracked),
and compares the answer: severity, SQLSTATE and message, and whether the session goes on. Through
pgmux the server connection must stay healthy and go back to the pool (one server, never closed),
and another client must run a query fine.
"""

from __future__ import annotations

import struct

import pytest
from helpers import servers, wait_for
from test_protocol import Wire, rows, types

from conftest import PgmuxStarter
from pgmux.protocol import messages as m
from pgmux.testing.cluster import PgCluster


def _raw(t: bytes, body: bytes) -> bytes:
    return t + struct.pack("!i", 4 + len(body)) + body


# (message, whether a Sync follows it): extended-protocol messages are followed by a Sync.
CASES: dict[str, tuple[bytes, bool]] = {
    "Query-empty": (_raw(b"Q", b""), False),
    "Query-unterminated": (_raw(b"Q", b"SELECT 1"), False),
    "Query-SET-unterminated": (_raw(b"Q", b"SET search_path = x"), False),
    "Parse-empty": (_raw(b"P", b""), True),
    "Parse-name-only": (_raw(b"P", b"s1\x00"), True),
    "Parse-unterminated-query": (_raw(b"P", b"\x00SELECT 1"), True),
    "Parse-named-no-count": (_raw(b"P", b"s1\x00SELECT 1\x00"), True),
    "Parse-short-types": (_raw(b"P", b"\x00SELECT 1\x00\x00\x02\x00\x00\x00\x17"), True),
    "Parse-trailing-bytes": (_raw(b"P", b"\x00SELECT 1\x00\x00\x00zz"), True),
    "Bind-empty": (_raw(b"B", b""), True),
    "Bind-portal-only": (_raw(b"B", b"\x00"), True),
    "Bind-unterminated-name": (_raw(b"B", b"\x00s1"), True),
    "Describe-empty": (_raw(b"D", b""), True),
    "Describe-S-only": (_raw(b"D", b"S"), True),
    "Describe-unterminated": (_raw(b"D", b"Sfoo"), True),
    "Describe-trailing-bytes": (_raw(b"D", b"Sx1\x00x"), True),
    "Describe-bad-kind": (_raw(b"D", b"X\x00"), True),
    "Close-empty": (_raw(b"C", b""), True),
    "Close-S-only": (_raw(b"C", b"S"), True),
    "Close-unterminated": (_raw(b"C", b"Sfoo"), True),
    "Close-trailing-bytes": (_raw(b"C", b"Ss1\x00x"), True),
    "Execute-empty": (_raw(b"E", b""), True),
    "Execute-short": (_raw(b"E", b"\x00\x00"), True),
    "FunctionCall-empty": (_raw(b"F", b""), False),
    "Flush-with-body": (_raw(b"H", b"x"), True),
    "Sync-with-body": (_raw(b"S", b"x"), False),
}


def _answer(host: str, port: int, db: str, msg: bytes, then_sync: bool,
            in_block: bool) -> tuple[list[tuple[str, str, str] | str], str]:
    """What a session answers to `msg` (errors as (severity, code, message)), and what a query after
    it gets: its message types, or 'closed'."""
    with Wire(host, port) as w:
        w.login(database=db)
        if in_block:
            w.query("BEGIN")
        w.send(msg + (m.message(m.SYNC) if then_sync else b""))
        got: list[tuple[str, str, str] | str] = []
        for t, body in w.read_until_ready():
            if t == m.ERROR_RESPONSE:
                f = m.parse_error_fields(body)
                got.append((f["S"], f["C"], f["M"]))
            else:
                got.append(t.decode() + (body.decode() if t == m.READY_FOR_QUERY else ""))
        try:
            after = types(w.query("ROLLBACK; SELECT 1" if in_block else "SELECT 1"))
        except (EOFError, ConnectionError):
            after = "closed"
        return got, after


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_malformed_messages_get_postgres_answer_and_server_stays(pgmux_factory: PgmuxStarter, pg: PgCluster,
                                                                  mode: str) -> None:
    mux = pgmux_factory(settings={"pool_mode": mode, "default_pool_size": 1, "max_prepared_statements": 100})
    direct = pg.primary
    with Wire(mux.host, mux.port) as other:
        other.login()
        pid = rows(other.query("SELECT pg_backend_pid()"))[0][0]
        if mode == "session":
            other.close()  # gives its server back: the one server of the pool serves every case
        mismatches = []
        for in_block in (False, True):
            for name, (msg, then_sync) in CASES.items():
                want = _answer(direct.host, direct.port, "testdb", msg, then_sync, in_block)
                got = _answer(mux.host, mux.port, "testdb", msg, then_sync, in_block)
                assert want[0][0][1] == "08P01", (name, want)  # the case is malformed for PostgreSQL
                if got != want:
                    mismatches.append((name, in_block, want, got))
        assert not mismatches, mismatches
        if mode == "transaction":  # the client that ran first still works, on the same server
            assert rows(other.query("SELECT pg_backend_pid()")) == [[pid]]
    with Wire(mux.host, mux.port) as another:
        another.login()
        assert rows(another.query("SELECT pg_backend_pid()")) == [[pid]]
    listed = servers(mux)
    assert [s["remote_pid"] for s in listed] == [int(pid or b"0")], listed
    log = mux.log()
    assert "S-" not in "".join(line for line in log.splitlines() if "closing because" in line), log[-3000:]
    assert "internal error" not in log and "Traceback" not in log, log[-3000:]
    if mode == "transaction":
        assert "client protocol error: malformed Describe message" in log


@pytest.mark.parametrize("name", ["Describe-empty", "Parse-empty", "Bind-empty", "Close-S-only",
                                  "Parse-named-no-count"])
def test_malformed_message_queued_for_a_busy_pool(pgmux_factory: PgmuxStarter, pg: PgCluster, name: str) -> None:
    # The malformed message waits for the pool's only server, held by another client's transaction;
    # it reaches the pipeline when that server is handed over, inside the server's read callback.
    mux = pgmux_factory(settings={"pool_mode": "transaction", "default_pool_size": 1,
                                  "max_prepared_statements": 100})
    msg, then_sync = CASES[name]
    want = _answer(pg.primary.host, pg.primary.port, "testdb", msg, then_sync, False)
    with Wire(mux.host, mux.port) as holder, Wire(mux.host, mux.port) as bad:
        holder.login()
        holder.query("BEGIN")
        pid = rows(holder.query("SELECT pg_backend_pid()"))[0][0]
        bad.login()
        bad.send(msg + (m.message(m.SYNC) if then_sync else b""))
        wait_for(lambda: any(c["state"] == "waiting" for c in mux.admin_dicts("SHOW CLIENTS")), "a waiting client")
        holder.query("COMMIT")
        got = []
        for t, body in bad.read_until_ready():
            if t == m.ERROR_RESPONSE:
                f = m.parse_error_fields(body)
                got.append((f["S"], f["C"], f["M"]))
            else:
                got.append(t.decode() + (body.decode() if t == m.READY_FOR_QUERY else ""))
        assert got == want[0]
        assert rows(bad.query("SELECT pg_backend_pid()")) == [[pid]]
        assert rows(holder.query("SELECT pg_backend_pid()")) == [[pid]]
    log = mux.log()
    assert "Traceback" not in log and "server protocol error" not in log, log[-3000:]
    assert f"client protocol error: malformed {name.split('-')[0]} message" in log


@pytest.mark.parametrize("name", ["Parse-empty", "Parse-name-only", "Bind-empty", "Bind-portal-only", "Describe-empty"])
def test_malformed_message_on_the_admin_console(pgmux_factory: PgmuxStarter, name: str) -> None:
    mux = pgmux_factory()
    msg, then_sync = CASES[name]
    with Wire(mux.host, mux.port) as w:
        w.login(database="pgbouncer")
        w.send(msg + m.message(m.SYNC))
        got = w.read_until_ready()
        errors = [m.parse_error_fields(b) for t, b in got if t == m.ERROR_RESPONSE]
        assert all(e["S"] == "ERROR" and e["C"] == "08P01" for e in errors), errors
        assert got[-1] == (m.READY_FOR_QUERY, b"I")
        assert rows(w.query("SHOW VERSION"))
    assert "Traceback" not in mux.log()
