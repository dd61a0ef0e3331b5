"""The per-transaction routing rule and the host pick of a split database (routing/router.py)."""

from __future__ import annotations

import random
import struct

import pytest

from pgmux.config import HostConfig
from pgmux.protocol import messages as m
from pgmux.routing.classify import Classifier
from pgmux.routing.health import HostState
from pgmux.routing.router import Router, transaction_kind

C = Classifier()


def q(sql: str) -> bytes:
    return m.query(sql)


def parse(sql: str, name: str = "") -> bytes:
    return m.message(m.PARSE, m.cstr(name) + m.cstr(sql) + b"\x00\x00")


def bind(name: str = "") -> bytes:
    return m.message(m.BIND, m.cstr("") + m.cstr(name) + b"\x00\x00\x00\x00\x00\x00")


EXEC_SYNC = m.message(m.EXECUTE, b"\x00\x00\x00\x00\x00") + m.message(m.SYNC)


def kind(data: bytes, known: dict[str, str] | None = None) -> str:
    return transaction_kind(C, data, (known or {}).get)[0]


@pytest.mark.parametrize(("data", "expected"), [
    (q("SELECT * FROM t"), "read"),
    (q("SHOW work_mem"), "read"),
    (q("SET work_mem = '8MB'"), "read"),
    (q(""), "read"),
    (q("INSERT INTO t VALUES (1)"), "write"),
    (q("SELECT nextval('s')"), "write"),
    (q("SELECT * FROM t FOR UPDATE"), "write"),
    (q("WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x"), "write"),
    (q("/* pgmux:primary */ SELECT 1"), "write"),
    (q("CREATE TABLE x (a int)"), "write"),
    # A transaction whose statements are not all visible yet goes to the primary...
    (q("BEGIN"), "write"),
    (q("BEGIN") + q("SELECT 1"), "write"),
    (q("START TRANSACTION ISOLATION LEVEL REPEATABLE READ"), "write"),
    # ...unless it is declared read only, or opened and closed in what was sent.
    (q("BEGIN READ ONLY"), "read"),
    (q("START TRANSACTION READ ONLY"), "read"),
    (q("BEGIN") + q("SET TRANSACTION READ ONLY"), "read"),
    (q("BEGIN; SELECT 1; COMMIT"), "read"),
    (q("BEGIN; SELECT 1; COMMIT") + q("SELECT 2"), "read"),
    (q("BEGIN; INSERT INTO t VALUES (1); COMMIT"), "write"),
    (q("BEGIN READ ONLY") + q("COMMIT") + q("BEGIN"), "write"),
    # Extended protocol: the Parse text, or the statement a Bind names.
    (parse("SELECT $1::int") + bind() + EXEC_SYNC, "read"),
    (parse("UPDATE t SET a = $1") + bind() + EXEC_SYNC, "write"),
    (parse("SELECT 1", "s1") + bind("s1") + EXEC_SYNC, "read"),
    (bind("unknown") + EXEC_SYNC, "write"),
    (m.message(b"F", struct.pack("!i", 1234) + b"\x00\x00\x00\x00\x00\x00"), "write"),
])
def test_transaction_kind(data: bytes, expected: str) -> None:
    assert kind(data) == expected


def test_bind_of_a_known_prepared_statement_is_classified_by_its_text() -> None:
    known = {"s_read": "SELECT 1", "s_write": "DELETE FROM t", "": "SELECT 2"}
    assert kind(bind("s_read") + EXEC_SYNC, known) == "read"
    assert kind(bind("s_write") + EXEC_SYNC, known) == "write"
    assert kind(bind("") + EXEC_SYNC, known) == "read"
    assert kind(bind("s_read") + EXEC_SYNC + bind("s_write") + EXEC_SYNC, known) == "write"


def make(policy: str = "round_robin", weights: tuple[float, ...] = (1, 1, 1), **kw: object) -> Router:
    states = [HostState(HostConfig("h", 5432 + i, role, w), role)  # type: ignore[arg-type]
              for i, (role, w) in enumerate(zip(("primary", "replica", "replica"), weights, strict=True))]
    for s in states:
        s.record_check(0.0, True, in_recovery=s.role == "replica", lag_bytes=0, lag_seconds=0.0)
    return Router("app", states, policy, rng=random.Random(7), **kw)  # type: ignore[arg-type]


def ports(router: Router, kind: str, n: int, **kw: object) -> list[int | None]:
    out = []
    for _ in range(n):
        h = router.pick(kind, 1.0, **kw)  # type: ignore[arg-type]
        out.append(h.host.port if h is not None else None)
    return out


def test_writes_go_to_the_primary_and_reads_rotate_over_the_replicas() -> None:
    r = make()
    assert ports(r, "write", 3) == [5432] * 3
    assert ports(r, "read", 4) == [5433, 5434, 5433, 5434]
    p, r1, r2 = r.hosts
    assert (r.writes[p], r.reads[r1], r.reads[r2], r.reads[p]) == (3, 2, 2, 0)
    r.pick("read", 1.0, count=False)
    assert r.reads[r1] + r.reads[r2] == 4


def test_weights_and_least_outstanding() -> None:
    r = make(weights=(1, 2, 1))
    assert sorted(ports(r, "read", 6)) == [5433] * 4 + [5434] * 2
    r = make("least_outstanding")
    _, r1, r2 = r.hosts
    assert ports(r, "read", 3, outstanding={r1: 3, r2: 1}) == [5434] * 3


def test_unusable_replicas_leave_reads_to_the_primary_and_no_primary_means_wait() -> None:
    r = make()
    p, r1, r2 = r.hosts
    r1.ban(1.0, 30.0, "connect failed")
    assert set(ports(r, "read", 4)) == {5434}
    r2.record_check(1.0, True, in_recovery=True, lag_bytes=10**9)
    r2.max_lag_bytes = 1000
    r2.record_check(1.0, True, in_recovery=True, lag_bytes=10**9)
    assert ports(r, "read", 2) == [5432, 5432]  # every replica down or behind: the primary reads
    p.record_check(1.0, False, detail="connection refused")
    assert ports(r, "write", 1) == [None] and ports(r, "read", 1) == [None]


def test_a_promoted_replica_takes_the_writes() -> None:
    r = make()
    p, r1, _ = r.hosts
    p.record_check(2.0, False)
    r1.record_check(3.0, True, in_recovery=False)
    assert ports(r, "write", 2) == [5433, 5433]
    p.record_check(4.0, True, in_recovery=True)  # the old primary is back, in recovery: a replica
    assert set(ports(r, "read", 4)) == {5432, 5434}


def test_read_your_writes_keeps_reads_off_replicas_that_have_not_replayed_far_enough() -> None:
    r = make(read_your_writes=True)
    _, r1, r2 = r.hosts
    assert ports(r, "read", 2, min_lsn=100, lsns={r1: 99, r2: 100}) == [5434, 5434]
    assert ports(r, "read", 2, min_lsn=101, lsns={r1: 99, r2: 100}) == [5432, 5432]
    assert ports(r, "read", 1, min_lsn=101, lsns={}) == [5432]
    assert set(ports(r, "read", 4, min_lsn=0, lsns={})) == {5433, 5434}


def test_find_names_a_host_as_show_hosts_prints_it() -> None:
    r = make()
    assert r.find("h", 5433) is r.hosts[1] and r.find("h", 1) is None
