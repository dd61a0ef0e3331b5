"""What a client pipelines while pgmux checks a prepared statement on its server is held, and bounded.

Before the Bind of a statement whose result shape the client knows, on a server whose copy may not
have that shape, pgmux prepares and Describes the copy first and holds the client's messages until
the reply (session/pipeline.py, _check). A query ahead of the check can run for long; what the client
sends meanwhile is held up to MAX_INSPECTED (4 MiB), and beyond it the client gets FATAL 54000
instead of pgmux's memory growing without bound.
"""

from __future__ import annotations

from helpers import execute, parse, sync, wait_for
from test_protocol import Wire, bind, rows, types

from conftest import PgmuxStarter
from pgmux.protocol import messages as m
from pgmux.protocol.codec import MAX_INSPECTED
from pgmux.testing.cluster import PgCluster


def _describe_statement(name: str) -> bytes:
    return m.message(b"D", b"S" + m.cstr(name))


def test_messages_held_for_a_statement_check_are_bounded(pgmux_factory: PgmuxStarter, pg: PgCluster) -> None:
    mux = pgmux_factory(settings={"pool_mode": "transaction", "default_pool_size": 2,
                                  "max_prepared_statements": 100})
    with Wire(mux.host, mux.port, timeout=30) as a, Wire(mux.host, mux.port, timeout=30) as b:
        a.login()
        b.login()
        # The client knows its statement's shape, from the first server.
        a.send(parse("SELECT 1 AS one", "s1") + _describe_statement("s1") + sync())
        assert types(a.read_until_ready()) == "1tTZ"
        b.query("BEGIN")  # holds that server: a's next transaction gets another, without the statement
        # A long query first, then the Bind that needs the check: the check waits behind the query.
        a.send(m.query("SELECT pg_sleep(3)") + bind(stmt="s1") + execute() + sync())
        pad = "x" * (60 << 10)
        filler = m.query(f"SELECT '{pad}'")
        sent = 0
        error = None
        try:
            while sent < MAX_INSPECTED + (1 << 20):
                a.send(filler)
                sent += len(filler)
        except (BrokenPipeError, ConnectionResetError):
            pass  # pgmux closed the connection while we were still sending
        msgs = []
        try:
            while True:
                t, body = a.read_msg()
                msgs.append(t)
                if t == m.ERROR_RESPONSE:
                    error = m.parse_error_fields(body)
                    break
        except (EOFError, ConnectionResetError):
            pass
        assert error is not None, msgs
        assert (error["S"], error["C"]) == ("FATAL", "54000"), error
        assert "prepared statement" in error["M"] and str(MAX_INSPECTED) in error["M"], error
        assert a.at_eof(10)
        # The other client's transaction goes on, and a new client is served.
        assert rows(b.query("SELECT 2")) == [[b"2"]]
        b.query("COMMIT")
    with Wire(mux.host, mux.port, timeout=30) as c:
        c.login()
        assert rows(c.query("SELECT 3")) == [[b"3"]]
    log = wait_for(lambda: (lambda t: t if "too much pipelined" in t else "")(mux.log()), "the error logged")
    assert "internal error" not in log and "Traceback" not in log, log[-3000:]
