"""A prepared statement's shape check that the server skips after an error (found by bench/fuzz.py).

Before the Bind of a statement whose result shape the client knows, on a server whose copy may not
have it, pgmux prepares and Describes the copy first and holds the client's messages from the Bind on
until the reply (session/pipeline.py, _check). When a request sent before the check fails (or the
check's own Parse does, in a transaction the batch aborted), PostgreSQL skips the check and everything
up to the next Sync, and that Sync is among the held messages. pgmux took the Syncs it held (counted
as owed) for a Sync in flight, so it did not mark the server as skipping: a simple Query held before
that Sync, which the server skips without a reply, was still counted as answered by the next
ReadyForQuery. From then on every ReadyForQuery ended the wrong request, the server was never
released, and the client's next check waited for a reply that had been taken for another: a hang.
"""

from __future__ import annotations

import pytest
from helpers import execute, parse, servers, sync, wait_for
from test_protocol import Wire, bind, error_fields

from conftest import PgmuxStarter
from pgmux.protocol import messages as m
from pgmux.testing.cluster import PgCluster


def _describe_statement(name: str) -> bytes:
    return m.message(b"D", b"S" + m.cstr(name))


def _replies(w: Wire, marker: int) -> list[str]:
    """Everything up to the marker query's ReadyForQuery: message types, SQLSTATEs, statuses."""
    want = str(marker).encode()
    out: list[str] = []
    seen = False
    while True:
        t, body = w.read_msg()
        if t == m.ERROR_RESPONSE:
            out.append("E" + error_fields((t, body))["C"])
        elif t == m.READY_FOR_QUERY:
            out.append("Z" + body.decode())
            if seen:
                return out
        elif t == m.DATA_ROW and body[6:] == want:
            out.append("marker")
            seen = True
        elif t != m.NOTICE_RESPONSE:
            out.append(t.decode())


# Each is sent before the Bind that needs the check, in the same write; a Query follows the Bind.
FIRST = {
    # A request before the check fails: the check is skipped with the rest.
    "earlier-request-fails": execute("no_such_portal"),
    # The check's own Parse fails: the transaction block failed earlier in the same write.
    "check-fails-in-failed-transaction": m.query("BEGIN") + m.query("SELECT 1/0"),
}


def _script(host: str, port: int, first: bytes) -> list[list[str]]:
    with Wire(host, port, timeout=20) as a, Wire(host, port, timeout=20) as b:
        a.login()
        b.login()
        # a knows its statement's shape, from the first server.
        a.send(parse("SELECT 1 AS one", "s1") + _describe_statement("s1") + sync() + m.query("SELECT 900001"))
        got = [_replies(a, 900001)]
        b.query("BEGIN")  # holds that server: a's next transaction gets the other one, without the statement
        a.send(first + bind(stmt="s1") + execute() + m.query("SELECT 2") + sync() + m.query("ROLLBACK; SELECT 900002"))
        got.append(_replies(a, 900002))
        a.send(bind(stmt="s1") + execute() + sync() + m.query("SELECT 900003"))
        got.append(_replies(a, 900003))
        b.query("COMMIT")
    return got


@pytest.mark.parametrize("case", sorted(FIRST))
def test_check_skipped_after_an_error(pgmux_factory: PgmuxStarter, pg: PgCluster, case: str) -> None:
    mux = pgmux_factory(settings={"pool_mode": "transaction", "default_pool_size": 2, "max_prepared_statements": 100})
    want = _script(pg.primary.host, pg.primary.port, FIRST[case])
    assert want[1][-4:] == ["T", "marker", "C", "ZI"], want
    try:
        got: object = _script(mux.host, mux.port, FIRST[case])
    except TimeoutError as e:  # a reply that never came
        got = repr(e)
    assert got == want
    wait_for(lambda: [s["state"] for s in servers(mux)] == ["idle", "idle"], "both servers back in the pool",
             timeout=15)
    log = mux.log()
    assert "internal error" not in log and "Traceback" not in log, log[-3000:]
