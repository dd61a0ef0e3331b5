"""PgBouncer 1.25's pool settings through pgmux against a real PostgreSQL: a reload that lowers
default_pool_size or a database's pool_size, server_check_delay = 0, server_fast_close, eviction under
max_db_connections / max_user_connections, server_round_robin and load_balance_hosts.

Servers are counted in pg_stat_activity by an application_name that only this test's pgmux uses.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
from helpers import backend_pid, guard, wait_for
from test_pooling import connect

from pgmux.testing.cluster import PgCluster, free_port


@pytest.fixture
def threads() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=16) as ex:
        yield ex


def marked(pg: PgCluster, extra: str = "", dbs: tuple[str, ...] = ("testdb",)) -> tuple[dict[str, str], str]:
    marker = f"pgmux_{secrets.token_hex(4)}"
    p = pg.primary
    return {db: f"host={p.host} port={p.port} dbname={db} application_name={marker} {extra}".strip()
            for db in dbs}, marker


def in_pg(pg: PgCluster, marker: str, where: str = "") -> int:
    with psycopg.connect(pg.primary.dsn(), autocommit=True) as direct:
        row = direct.execute(f"SELECT count(*) FROM pg_stat_activity WHERE application_name = %s {where}",
                             (marker,)).fetchone()
        return int(row[0]) if row else 0


class Load:
    """`clients` connections through pgmux running short transactions until stopped (at most
    `seconds`); every query must succeed."""

    def __init__(self, proc: Any, threads: ThreadPoolExecutor, clients: int, seconds: float = 40) -> None:
        self.stop = threading.Event()
        self.deadline = time.monotonic() + seconds
        self.jobs = [threads.submit(self._run, proc) for _ in range(clients)]

    def _run(self, proc: Any) -> int:
        done = 0
        with connect(proc) as conn:
            while not self.stop.is_set() and time.monotonic() < self.deadline:
                conn.execute("SELECT pg_sleep(0.05)")
                done += 1
        return done

    def finish(self) -> int:
        self.stop.set()
        return sum(j.result(timeout=60) for j in self.jobs)


@pytest.mark.parametrize("how", ["default_pool_size by SIGHUP", "database pool_size by console RELOAD"])
def test_reload_that_lowers_the_pool_size_applies_under_load(pg: PgCluster, pgmux_factory: Any,
                                                             threads: ThreadPoolExecutor, how: str) -> None:
    by_db = how.startswith("database")
    databases, marker = marked(pg, "pool_size=8" if by_db else "")
    proc = pgmux_factory(databases=databases, settings={"pool_mode": "transaction", "default_pool_size": 8,
                                                        "query_wait_timeout": 30})
    load = Load(proc, threads, clients=12)
    try:
        wait_for(lambda: in_pg(pg, marker) >= 6, "the pool to grow under load", timeout=20)
        if by_db:
            proc.rewrite(databases={"testdb": databases["testdb"].replace("pool_size=8", "pool_size=2")})
            proc.admin("RELOAD")
        else:
            proc.rewrite(settings={"default_pool_size": 2})
            proc.reload()
        lowered = time.monotonic()
        wait_for(lambda: in_pg(pg, marker) <= 2, "the servers to fall to the new pool_size", timeout=10)
        took = time.monotonic() - lowered
        # Under load, and it stays there: released servers are not reused beyond the new size.
        for _ in range(10):
            assert in_pg(pg, marker) <= 2
            time.sleep(0.1)
    finally:
        total = load.finish()
    assert total > 0
    assert took < 5, took


def test_server_check_delay_zero_checks_before_reuse(pg: PgCluster, pgmux_factory: Any) -> None:
    proc = pgmux_factory(settings={"pool_mode": "transaction", "default_pool_size": 1, "server_check_delay": 0})
    with connect(proc) as conn, psycopg.connect(pg.primary.dsn(), autocommit=True) as direct, guard(proc):
        for _ in range(8):
            pid = backend_pid(conn)
            # Terminate the idle server and ask for it at once, before pgmux may have read its goodbye: the
            # check before reuse finds it dead, and the transaction runs on a new server.
            direct.execute("SELECT pg_terminate_backend(%s)", (pid,))
            assert conn.execute("SELECT 1").fetchone() == (1,)
            assert backend_pid(conn) != pid


@pytest.mark.parametrize("how", ["RECONNECT", "RELOAD of a changed database line"])
def test_server_fast_close_ends_sessions(pg: PgCluster, pgmux_factory: Any, how: str) -> None:
    databases, marker = marked(pg)
    proc = pgmux_factory(databases=databases, settings={"pool_mode": "session", "server_fast_close": 1})
    with connect(proc) as idle, connect(proc) as busy, guard(proc):
        idle_pid = backend_pid(idle)
        busy.execute("BEGIN")
        busy.execute("SELECT 1")
        if how == "RECONNECT":
            proc.admin("RECONNECT testdb")
        else:  # a connection parameter changed: the servers made from the old line are stale
            proc.rewrite(databases={"testdb": databases["testdb"] + " connect_query='SELECT 1'"})
            proc.admin("RELOAD")
        # The idle session's server goes at once (its client with it); the transaction is not interrupted.
        wait_for(lambda: in_pg(pg, marker, f"AND pid = {idle_pid}") == 0, "the idle session's server to close",
                 timeout=10)
        with pytest.raises(psycopg.OperationalError, match="database configuration changed"):
            idle.execute("SELECT 1")
        assert busy.execute("SELECT 2").fetchone() == (2,)
        busy.execute("COMMIT")  # the end of its transaction ends the session
        wait_for(lambda: in_pg(pg, marker) == 0, "the busy session's server to close after COMMIT", timeout=10)
        with pytest.raises(psycopg.OperationalError):
            busy.execute("SELECT 3")
    with connect(proc) as fresh:
        assert fresh.execute("SELECT 4").fetchone() == (4,)


def test_without_server_fast_close_sessions_keep_their_servers(pg: PgCluster, pgmux_factory: Any) -> None:
    databases, marker = marked(pg)
    proc = pgmux_factory(databases=databases, settings={"pool_mode": "session"})
    with connect(proc) as idle, guard(proc):
        pid = backend_pid(idle)
        proc.admin("RECONNECT testdb")
        time.sleep(1)
        assert backend_pid(idle) == pid  # closed only when the client leaves


@pytest.mark.parametrize("limit", ["max_db_connections", "max_user_connections"])
def test_idle_servers_of_another_pool_make_room(pg: PgCluster, pgmux_factory: Any, limit: str) -> None:
    # max_db: two users on one database. max_user: one user on two databases.
    databases, marker = marked(pg, dbs=("testdb", "postgres"))
    proc = pgmux_factory(databases=databases, settings={"pool_mode": "transaction", "default_pool_size": 5,
                                                        limit: 2, "query_wait_timeout": 20,
                                                        "server_idle_timeout": 600})
    first = [connect(proc) for _ in range(2)]
    try:
        for c in first:
            c.execute("BEGIN")
            c.execute("SELECT 1")
        for c in first:
            c.execute("COMMIT")  # two idle servers of the first pool fill the limit
        assert in_pg(pg, marker) == 2
        other = {"user": "md5user"} if limit == "max_db_connections" else {"db": "postgres"}
        started = time.monotonic()
        with connect(proc, **other) as second:
            assert second.execute("SELECT 42").fetchone() == (42,)
        assert time.monotonic() - started < 5  # not after query_wait_timeout, nor server_idle_timeout
        assert in_pg(pg, marker) <= 2
        wait_for(lambda: "evicted" in proc.log(), "the eviction in the log")
        # The first pool still works, making room in turn.
        assert first[0].execute("SELECT 1").fetchone() == (1,)
    finally:
        for c in first:
            c.close()


def _warm(proc: Any, n: int) -> list[psycopg.Connection[Any]]:
    conns = [connect(proc) for _ in range(n)]
    for c in conns:
        c.execute("BEGIN")
        c.execute("SELECT 1")
    for c in conns:
        c.execute("COMMIT")
    return conns


@pytest.mark.parametrize("round_robin", [True, False])
def test_server_round_robin(pgmux_factory: Any, round_robin: bool) -> None:
    proc = pgmux_factory(settings={"pool_mode": "transaction", "default_pool_size": 3,
                                   "server_round_robin": int(round_robin)})
    warm = _warm(proc, 3)
    try:
        with connect(proc) as conn:
            pids = [backend_pid(conn) for _ in range(9)]
        if round_robin:  # every server in turn
            assert len(set(pids)) == 3 and pids[:3] == pids[3:6] == pids[6:], pids
        else:  # LIFO: the most recently used one, again and again
            assert len(set(pids)) == 1, pids
    finally:
        for c in warm:
            c.close()


@pytest.mark.parametrize("mode", ["round-robin", "disable"])
def test_load_balance_hosts_over_a_unix_socket_and_tcp(pg: PgCluster, pgmux_factory: Any, mode: str) -> None:
    p = pg.primary
    marker = f"pgmux_{secrets.token_hex(4)}"
    databases = {"testdb": f"host={p.socket_dir},127.0.0.1 port={p.port} dbname=testdb "
                           f"application_name={marker} load_balance_hosts={mode}"}
    proc = pgmux_factory(databases=databases, settings={"pool_mode": "transaction"})
    for c in _warm(proc, 4):
        c.close()
    with psycopg.connect(p.dsn(), autocommit=True) as direct:
        rows = direct.execute("SELECT client_addr IS NULL FROM pg_stat_activity WHERE application_name = %s",
                              (marker,)).fetchall()
    unix = sum(1 for (is_unix,) in rows if is_unix)
    assert len(rows) == 4
    if mode == "round-robin":
        assert unix == 2, rows  # one new connection per host in turn
    else:
        assert unix == 4, rows  # the first host, as long as it works


def test_load_balance_hosts_disable_moves_on_after_a_failure(pg: PgCluster, pgmux_factory: Any) -> None:
    p = pg.primary
    dead = free_port()
    proc = pgmux_factory(
        databases={"testdb": f"host=127.0.0.1,127.0.0.1 port={dead},{p.port} dbname=testdb load_balance_hosts=disable"},
        settings={"pool_mode": "session", "server_login_retry": 0.2})
    with pytest.raises(psycopg.OperationalError, match="cannot connect"):
        connect(proc).close()  # the first host is down: that first connection fails, as in PgBouncer
    time.sleep(0.5)
    conns = []
    try:
        for _ in range(4):  # from then on, every new server connection goes to the second host
            conns.append(connect(proc))
            assert conns[-1].execute("SELECT 1").fetchone() == (1,)
    finally:
        for c in conns:
            c.close()
