"""A Parse + Sync of a statement pgmux already knows is answered without a server (session/localparse.py).

Transaction pooling, one server: client a holds it inside a transaction. Client b's Parse of a text
some server has parsed before is answered at once (ParseComplete, ReadyForQuery 'I'), and its Bind then
waits for the server like any transaction. A text never parsed, a duplicate name and a syntax error
still go to PostgreSQL, which answers them as it does directly.
"""

from __future__ import annotations

from helpers import execute, parse, sync
from test_protocol import Wire, bind, error_fields

from conftest import PgmuxStarter
from pgmux.protocol import messages as m

SQL = "SELECT $1::int + 1"


def _replies(w: Wire) -> list[str]:
    return [t.decode() + (error_fields((t, body))["C"] if t == m.ERROR_RESPONSE else
                          body.decode() if t == m.READY_FOR_QUERY else "")
            for t, body in w.read_until_ready()]


def test_a_known_statement_is_prepared_while_every_server_is_busy(pgmux_factory: PgmuxStarter) -> None:
    mux = pgmux_factory(settings={"pool_mode": "transaction", "default_pool_size": 1, "max_prepared_statements": 100})
    with Wire(mux.host, mux.port, timeout=20) as a, Wire(mux.host, mux.port, timeout=20) as b:
        a.login()
        b.login()
        a.send(parse(SQL, "s1", [23]) + sync())
        assert _replies(a) == ["1", "ZI"]  # parsed by PostgreSQL: now known
        a.send(m.query("BEGIN"))
        assert _replies(a) == ["C", "ZT"]  # a holds the only server
        # b's read times out (20 s) if this waits for the server a holds.
        b.send(parse(SQL, "mine", [23]) + sync())
        assert _replies(b) == ["1", "ZI"]
        b.send(bind(stmt="mine", params=(b"41",)) + execute() + sync())  # waits for a's COMMIT
        a.send(m.query("COMMIT"))
        assert _replies(a) == ["C", "ZI"]
        got = b.read_until_ready()
        assert [t for t, _ in got] == [m.BIND_COMPLETE, m.DATA_ROW, m.COMMAND_COMPLETE, m.READY_FOR_QUERY], got
        assert b"42" in got[1][1]
        # Not answered here: a duplicate name, a syntax error, a text no server parsed yet.
        b.send(parse(SQL, "mine", [23]) + sync())
        assert _replies(b) == ["E42P05", "ZI"]
        b.send(parse("SELEC 1", "bad") + sync())
        assert _replies(b) == ["E42601", "ZI"]
        b.send(parse("SELECT 2", "other") + sync())
        assert _replies(b) == ["1", "ZI"]
    assert "internal error" not in mux.log()
