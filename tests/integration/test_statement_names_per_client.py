"""One client's prepared statement names never become another's (found by bench/fuzz.py).

Clients without named statements share one empty dict of names (session/prepared.py, issue 11's
memory per idle client). A Close of a statement that pgmux answers itself, in a batch that fails
before it, is undone (ClientStatements.reopen): PostgreSQL skipped the Close, so the client still has
the statement. When that Close had emptied the client's names, the undo wrote the name into the
shared dict, and from then on every client without statements of its own "had" it: a Describe of a
statement the client never prepared was answered with another client's statement, reference counts
of the shared registry went wrong (KeyError tracebacks, servers closed), and the long fuzz campaign
hung dozens of times. Two clients share one server here (transaction pooling, pool size 1); each
batch is answered as PostgreSQL answers it directly.
"""

from __future__ import annotations

from helpers import execute, parse, sync
from test_protocol import Wire, bind, error_fields

from conftest import PgmuxStarter
from pgmux.protocol import messages as m
from pgmux.testing.cluster import PgCluster

FAIL = execute("no_such_portal")  # ERROR 34000: PostgreSQL skips to the next Sync


def _close_statement(name: str) -> bytes:
    return m.message(m.CLOSE, b"S" + m.cstr(name))


def _describe_statement(name: str) -> bytes:
    return m.message(b"D", b"S" + m.cstr(name))


def _replies(w: Wire) -> list[str]:
    return [t.decode() + (error_fields((t, body))["C"] if t == m.ERROR_RESPONSE else
                          body.decode() if t == m.READY_FOR_QUERY else "")
            for t, body in w.read_until_ready()]


def _two_clients(host: str, port: int) -> list[list[str]]:
    with Wire(host, port, timeout=20) as a, Wire(host, port, timeout=20) as b:
        a.login()
        b.login()
        a.send(parse("SELECT 1", "s1") + sync())
        got = [_replies(a)]
        # The Close comes after a failing message: PostgreSQL skips it, a keeps its statement.
        a.send(FAIL + _close_statement("s1") + sync())
        got.append(_replies(a))
        a.send(bind(stmt="s1") + execute() + sync())
        got.append(_replies(a))
        # b never prepared s1.
        b.send(_describe_statement("s1") + sync())
        got.append(_replies(b))
        b.send(bind(stmt="s1") + execute() + sync())
        got.append(_replies(b))
        b.send(parse("SELECT 2", "s1") + sync())  # b's own s1, not a duplicate of a's
        got.append(_replies(b))
        a.send(_close_statement("s1") + sync())
        got.append(_replies(a))
    with Wire(host, port, timeout=20) as c:  # a newcomer has no statements
        c.login()
        c.send(_describe_statement("s1") + sync())
        got.append(_replies(c))
    return got


def test_undone_close_keeps_the_name_to_its_client(pgmux_factory: PgmuxStarter, pg: PgCluster) -> None:
    mux = pgmux_factory(settings={"pool_mode": "transaction", "default_pool_size": 1, "max_prepared_statements": 100})
    want = _two_clients(pg.primary.host, pg.primary.port)
    assert want == [["1", "ZI"], ["E34000", "ZI"], ["2", "D", "C", "ZI"], ["E26000", "ZI"], ["E26000", "ZI"],
                    ["1", "ZI"], ["3", "ZI"], ["E26000", "ZI"]], want
    assert _two_clients(mux.host, mux.port) == want
    log = mux.log()
    assert "internal error" not in log and "Traceback" not in log, log[-3000:]
