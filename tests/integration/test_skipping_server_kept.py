"""A server that skips to the next Sync stays with its client (found by bench/fuzz.py).

When an extended-protocol message fails, PostgreSQL ignores everything the client sends up to its next
Sync. A client can end a read there with a simple Query answered before the failure (or skipped after
it): the last ReadyForQuery then leaves nothing owed, and in transaction pooling pgmux gave the server
back to the pool while it still skipped. The next client's simple Query went to a server that ignored
it: no reply, ever (and once a Sync had ended the skip unseen, pgmux counted later Queries as skipped
that were answered, giving servers back mid-transaction). The skip is the client's session state, as
an unsynced batch is: the server stays with that client until its Sync.
"""

from __future__ import annotations

from helpers import parse, servers, sync, wait_for
from test_protocol import Wire, error_fields, rows

from conftest import PgmuxStarter
from pgmux.protocol import messages as m
from pgmux.testing.cluster import PgCluster

FAILING = m.query("SELECT 1") + parse("SELEC 1") + m.query("SELECT 2")  # no Sync: SELECT 2 is skipped


def _replies(w: Wire) -> list[str]:
    out: list[str] = []
    for t, body in w.read_until_ready():
        out.append(t.decode() + (error_fields((t, body))["C"] if t == m.ERROR_RESPONSE else
                                 body.decode() if t == m.READY_FOR_QUERY else ""))
    return out


def _client_a(w: Wire) -> list[list[str]]:
    got = [_replies(w)]  # SELECT 1, then the Parse's error (no ReadyForQuery: it waits for the Sync)
    t, body = w.read_msg()
    got.append([t.decode() + error_fields((t, body))["C"]])
    return got


def test_skipping_server_stays_with_its_client(pgmux_factory: PgmuxStarter, pg: PgCluster) -> None:
    mux = pgmux_factory(settings={"pool_mode": "transaction", "default_pool_size": 2, "max_prepared_statements": 100})
    results = []
    for host, port in ((pg.primary.host, pg.primary.port), (mux.host, mux.port)):
        with Wire(host, port, timeout=20) as a, Wire(host, port, timeout=20) as b:
            a.login()
            b.login()
            b.query("BEGIN")  # both servers opened, b's then given back: a's is the one taken next
            a.query("SELECT 0")
            b.query("COMMIT")
            a.send(FAILING)
            got = _client_a(a)
            b.send(m.query("SELECT 3"))  # on a server of its own, answered
            got.append([str(rows(b.read_until_ready()))])
            a.send(sync() + m.query("SELECT 4"))  # the Sync ends a's skip
            got.append(_replies(a))
            got.append([str(rows(a.read_until_ready()))])
            results.append(got)
    want = [["T", "D", "C", "ZI"], ["E42601"], ["[[b'3']]"], ["ZI"], ["[[b'4']]"]]
    assert results[0] == want, results[0]
    assert results[1] == want
    wait_for(lambda: [s["state"] for s in servers(mux)] == ["idle", "idle"], "both servers back in the pool",
             timeout=15)
    # A client that leaves while its server skips: that server is closed, never pooled.
    with Wire(mux.host, mux.port, timeout=20) as a:
        a.login()
        a.send(FAILING)
        _client_a(a)
    with Wire(mux.host, mux.port, timeout=20) as c:
        c.login()
        assert rows(c.query("SELECT 5")) == [[b"5"]]
    log = wait_for(lambda: (lambda t: t if "client disconnect while server was not ready" in t else "")(mux.log()),
                   "the skipping server closed", timeout=15)
    assert "internal error" not in log and "Traceback" not in log, log[-3000:]
