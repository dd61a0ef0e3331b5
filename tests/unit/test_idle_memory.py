"""Memory per idle client (issue 11): an idle logged-in client holds no container of its own.

bench/memory.py measures the bytes (see README, Robustness); what keeps them bounded is structural and
tested here: the per-client lists, dicts and sets are made on first use and dropped once empty, and
what equal clients have in common (their parameters) is one object for all of them.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Any

from fakes import Peer, Rig, reply

from pgmux.protocol import messages as m

RFQ = m.ready_for_query(b"I")
CONTAINERS = (list, dict, set, bytearray, deque)


def attrs(session: Any) -> list[str]:
    cls = type(session)
    return list(getattr(cls, "__slots__", None) or getattr(cls, "__mypyc_attrs__", ()))


def own_containers(c: Any, others: list[Any]) -> list[str]:
    """The attributes of session `c` (and of its prepared-statement map) that hold a container no
    other session in `others` holds too."""
    found = []
    for name in attrs(c):
        v = getattr(c, name, None)
        if isinstance(v, CONTAINERS) and not any(getattr(o, name, None) is v for o in others):
            found.append(name)
    if c.stmts is not None and not any(o.stmts is not None and o.stmts._named is c.stmts._named for o in others):
        found.append("stmts._named")
    return found


def test_idle_logged_in_clients_hold_no_container_of_their_own(tmp_path: Path) -> None:
    rig = Rig(tmp_path)  # transaction pooling: statement and session-state tracking on
    clients = [rig.login().session for _ in range(3)]
    assert attrs(clients[0]), "the session's attribute names are readable"
    for c in clients:
        assert own_containers(c, [o for o in clients if o is not c]) == []
        assert c.params is c.initial and c.params  # shared, and not empty (the pool's reported values)
    assert clients[0].params is clients[1].params  # equal parameters: one dict


def run(client: Peer, server: Peer, sql: str, answer: bytes) -> bytes:
    client.send(m.query(sql))
    sent = server.take()
    assert sent.endswith(m.query(sql)), sent
    n = sent.count(b"Q") - 1  # pgmux's own parameter sync first: its replies are swallowed
    server.send(reply(m.command_complete("SET")) * n + answer)
    return client.take()


def test_containers_made_for_a_transaction_are_dropped_when_it_ends(tmp_path: Path) -> None:
    rig = Rig(tmp_path, settings="default_pool_size = 1")
    a, b = rig.login(), rig.login()
    (s,) = rig.servers
    run(a, s, "BEGIN", reply(m.command_complete("BEGIN"), status=b"T"))
    run(a, s, "SET work_mem = '8MB'", reply(m.command_complete("SET"), status=b"T"))
    assert a.session.tx_effects  # waits for the commit
    run(a, s, "COMMIT", reply(m.command_complete("COMMIT")))
    run(a, s, "PREPARE p AS SELECT 1", reply(m.command_complete("PREPARE")))
    assert a.session.sql
    run(a, s, "DEALLOCATE p", reply(m.command_complete("DEALLOCATE")))
    sa = a.session
    assert sa.tx_effects is None and sa.q_ends is None and sa.sql is None and sa.pending is None
    # Its SET gave it parameters of its own; the other client's, and the shared dict, are untouched.
    assert sa.params["work_mem"] == "8MB" and sa.params is not sa.initial
    assert "work_mem" not in b.session.params and b.session.params is b.session.initial
    assert own_containers(sa, [b.session]) == ["params"]
    run(a, s, "RESET ALL", reply(m.command_complete("RESET")))
    assert sa.params is sa.initial  # back to the shared one
    assert own_containers(sa, [b.session]) == []


def test_a_parameter_status_changes_only_the_linked_clients_copy(tmp_path: Path) -> None:
    rig = Rig(tmp_path, settings="default_pool_size = 1")
    a, b = rig.login(), rig.login()
    (s,) = rig.servers
    shared = dict(b.session.params)
    a.send(m.query("SET application_name = 'x'"))
    s.take()
    s.send(m.command_complete("SET") + m.parameter_status("application_name", "x") + RFQ)
    a.take()
    assert a.session.params["application_name"] == "x"
    assert b.session.params == shared and b.session.params is b.session.initial
