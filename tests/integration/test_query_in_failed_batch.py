"""A simple Query or FunctionCall sent inside an extended-protocol batch that fails (found by bench/fuzz.py).

After an error in an extended-protocol message PostgreSQL skips every message up to the next Sync,
simple Queries and FunctionCalls included: they get no reply at all, not even a ReadyForQuery. pgmux
counted one ReadyForQuery for each, so the server stayed "not ready" for good (pinned to the client in
transaction pooling, closed when the client left), and with the replies queued for rewritten
messages (session/pipeline.py) every later reply was matched with the wrong request: a prepared
statement forgotten while the server had it, pgmux's own answers given late, a skipped SET recorded
as done, and in the long fuzz campaign a marker query that never got its answer.

Each script here is a series of batches, each followed by a marker query, sent straight to
PostgreSQL and then through pgmux; the replies (message types, SQLSTATEs, rows) must be the same,
and the server goes back to the pool once the client leaves.
"""

from __future__ import annotations

import struct

import pytest
from helpers import execute, flush, parse, servers, sync, wait_for
from test_protocol import Wire, bind

from conftest import PgmuxStarter
from pgmux.protocol import messages as m
from pgmux.testing.cluster import PgCluster


def _close_statement(name: str) -> bytes:
    return m.message(m.CLOSE, b"S" + m.cstr(name))


def _function_call(oid: int) -> bytes:  # no arguments, text result
    return m.message(b"F", struct.pack("!ihhh", oid, 0, 0, 0))


FAIL = execute("no_such_portal")  # ERROR 34000: PostgreSQL now skips to the next Sync
NOW = 1299  # now()

SCRIPTS: dict[str, list[bytes]] = {
    # The Query's ReadyForQuery never comes: then a named statement is prepared and used again.
    "query-then-statement": [
        FAIL + m.query("SELECT 1") + sync(),
        parse("SELECT 41 + 1", "s1") + bind(stmt="s1") + execute() + sync(),
        bind(stmt="s1") + execute() + sync(),
        bind(stmt="s1") + execute() + sync(),
    ],
    # pgmux answers a Close of a statement itself: PostgreSQL would have skipped it.
    "query-and-local-close": [
        parse("SELECT 7", "s2") + sync(),
        FAIL + m.query("SELECT 2") + _close_statement("s2") + _function_call(NOW) + sync(),
        bind(stmt="s2") + execute() + sync(),
        FAIL + _function_call(NOW) + m.query("SELECT 3") + parse("SELECT 8", "s2") + sync(),
        bind(stmt="s2") + execute() + sync(),
        FAIL + _close_statement("s2") + parse("SELECT 9", "s2") + m.query("SELECT 4") + sync(),
        bind(stmt="s2") + execute() + sync(),
    ],
    # A SET that PostgreSQL skipped has not happened: the session keeps its application_name.
    "skipped-set": [
        FAIL + m.query("SET application_name = 'skipped'") + sync(),
        m.query("SHOW application_name"),
        parse("SELECT 1", "s3") + FAIL + m.query("SET application_name = 'skipped'; SELECT 1") + sync(),
        m.query("SHOW application_name"),
    ],
    # An error pgmux gives itself (a statement name the client already uses): it drops the rest up to
    # the Sync, as PostgreSQL skips it, Query included.
    "pooler-error-then-query": [
        parse("SELECT 11", "s5") + sync(),
        parse("SELECT 12", "s5") + m.query("SELECT 13") + _function_call(NOW) + sync(),
        bind(stmt="s5") + execute() + sync(),
    ],
    # A Flush with a body: PostgreSQL refuses it (08P01), and that fails the batch too.
    "flush-with-body": [
        m.message(b"H", b"x") + m.query("SELECT 1") + sync(),
        parse("SELECT 61", "s6") + bind(stmt="s6") + execute() + sync(),
        bind(stmt="s6") + execute() + sync(),
        bind(stmt="s6") + execute() + sync(),
    ],
    # A Query that runs before the failing message is answered, one after it is not.
    "query-before-and-after": [
        parse("SELECT 5", "s4") + m.query("SELECT 4") + bind(stmt="s4") + FAIL + m.query("SELECT 6") + sync(),
        bind(stmt="s4") + execute() + sync(),
    ],
}


def _replies(w: Wire, marker: int) -> list[str]:
    """Everything up to the marker query's ReadyForQuery: message types, SQLSTATEs and values."""
    want = str(marker).encode()
    out: list[str] = []
    while True:
        t, body = w.read_msg()
        if t == m.ERROR_RESPONSE:
            out.append("E" + m.parse_error_fields(body)["C"])
        elif t == m.DATA_ROW:
            value = body[6:]
            if value == want:
                out.append("marker")
                t, body = w.read_msg()  # its CommandComplete, then its ReadyForQuery
                out.append(t.decode())
                t, body = w.read_msg()
                out.append(t.decode() + body.decode())
                return out
            out.append("D" + value.decode(errors="replace") if not value.startswith(b"20") else "D(now)")
        elif t == m.READY_FOR_QUERY:
            out.append("Z" + body.decode())
        elif t != m.NOTICE_RESPONSE:
            out.append(t.decode())


def _run(host: str, port: int, db: str, script: list[bytes]) -> list[list[str]]:
    with Wire(host, port, timeout=20) as w:
        w.login(database=db)
        got = []
        for i, batch in enumerate(script):
            marker = 900000 + i
            w.send(batch + m.query(f"SELECT {marker}"))
            got.append(_replies(w, marker))
        return got


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_query_skipped_in_failed_batch_answered_as_postgres_does(pgmux_factory: PgmuxStarter, pg: PgCluster,
                                                                 mode: str) -> None:
    mux = pgmux_factory(settings={"pool_mode": mode, "default_pool_size": 1, "max_prepared_statements": 100})
    direct = pg.primary
    mismatches = []
    for name, script in SCRIPTS.items():
        want = _run(direct.host, direct.port, "testdb", script)
        try:
            got: object = _run(mux.host, mux.port, "testdb", script)
        except (TimeoutError, EOFError, ConnectionError) as e:  # a reply that never came
            got = repr(e)
        if got != want:
            mismatches.append((name, want, got))
        if mode == "session":  # no reply queue there: a skipped Query still counts as owed, and the
            continue  # server is closed when the client leaves (never pooled while it skips)
        # The client is gone: its server goes back to the pool, not closed as "not ready".
        try:
            wait_for(lambda: [s["state"] for s in servers(mux)] == ["idle"], "the server idle", timeout=15)
        except AssertionError:
            mismatches.append((name, "server not back in the pool", servers(mux)))
    assert not mismatches, "\n".join(map(str, mismatches))
    log = mux.log()
    closed = [line for line in log.splitlines() if "closing because" in line and " S-" in line]
    assert mode == "session" or not closed, closed
    assert "internal error" not in log and "Traceback" not in log, log[-3000:]


def _error_first(w: Wire, then_leave: bool) -> list[str]:
    """An extended-protocol batch fails (its error read first), then a Query and a FunctionCall come,
    which the server skips as it waits for the Sync."""
    w.send(parse("SELECT 1") + FAIL + flush())
    got = []
    while not got or got[-1][0] != "E":
        t, body = w.read_msg()
        got.append(t.decode() + (m.parse_error_fields(body)["C"] if t == m.ERROR_RESPONSE else ""))
    w.send(m.query("SELECT 2"))
    w.send(_function_call(NOW))
    if then_leave:
        return got
    w.send(sync() + m.query("SELECT 900100"))
    return got + _replies(w, 900100)


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_query_after_the_error_of_its_batch(pgmux_factory: PgmuxStarter, pg: PgCluster, mode: str) -> None:
    mux = pgmux_factory(settings={"pool_mode": mode, "default_pool_size": 1, "max_prepared_statements": 100})
    direct = pg.primary
    results = []
    for host, port in ((direct.host, direct.port), (mux.host, mux.port)):
        with Wire(host, port, timeout=20) as w:
            w.login()
            got = _error_first(w, then_leave=False)
            w.send(m.query("SELECT 900101"))
            results.append(got + _replies(w, 900101))
    assert results[0] == ["1", "E34000", "ZI", "T", "marker", "C", "ZI", "T", "marker", "C", "ZI"], results
    assert results[1] == results[0]
    if mode == "transaction":
        wait_for(lambda: [s["state"] for s in servers(mux)] == ["idle"], "the server back in the pool", timeout=15)
    # A client that leaves while the server skips to a Sync: that server must not serve anyone else.
    with Wire(mux.host, mux.port, timeout=20) as w:
        w.login()
        assert _error_first(w, then_leave=True) == ["1", "E34000"]
    with Wire(mux.host, mux.port, timeout=20) as w:
        w.login()
        w.send(m.query("SELECT 900102"))
        assert _replies(w, 900102) == ["T", "marker", "C", "ZI"]
    log = wait_for(lambda: (lambda text: text if "client disconnect while server was not ready" in text else "")(
        mux.log()), "the skipping server closed, not pooled", timeout=15)
    assert "internal error" not in log and "Traceback" not in log, log[-3000:]


def test_sql_prepared_statement_brought_inside_a_failed_batch(pgmux_factory: PgmuxStarter, pg: PgCluster) -> None:
    # Another client leaves its SQL-level `p1` on the only server; this client has none, so before its
    # `EXECUTE p1` pgmux deallocates the server's copy first (session/sqlprepared.py). Inside a batch
    # that failed, PostgreSQL skips that Query: pgmux's own steps must not end the skip with a Sync.
    mux = pgmux_factory(settings={"pool_mode": "transaction", "default_pool_size": 1, "max_prepared_statements": 100})
    direct = pg.primary
    script = [
        m.message(b"H", b"x") + m.query("EXECUTE p1") + sync(),
        FAIL + m.query("SELECT 1; EXECUTE p1") + sync(),
        m.query("EXECUTE p1"),
    ]
    with Wire(mux.host, mux.port, timeout=20) as other:
        other.login()
        other.query("PREPARE p1 AS SELECT 1")
        got = _run(mux.host, mux.port, "testdb", script)
    want = _run(direct.host, direct.port, "testdb", script)
    assert want[-1][0] == "E26000", want  # (this session has no p1)
    assert got == want
    wait_for(lambda: [s["state"] for s in servers(mux)] == ["idle"], "the server back in the pool", timeout=15)
