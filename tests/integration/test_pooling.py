"""Pooling through pgmux against a real PostgreSQL: how servers are shared (transaction, session and
statement mode), the limits on them (pool_size, reserve, max_db/max_user_connections, min_pool_size,
max_client_conn), their lifetimes (server_idle_timeout, server_lifetime), the client timeouts
(client_idle_timeout, idle_transaction_timeout, query_timeout, query_wait_timeout) with PgBouncer's words,
an unreachable server, connect_query, and the errors a client gets for bad requests.

After each bad input, another client must still be served.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import struct
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import asyncpg
import psycopg
import pytest
from helpers import backend_pid, guard, pool_row, servers, wait_for

from pgmux.testing.cluster import PgCluster, free_port

CONNECT: dict[str, Any] = {"connect_timeout": 5, "autocommit": True, "prepare_threshold": None}


def connect(proc: Any, db: str = "testdb", user: str = "postgres", password: str | None = None,
            **kw: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(proc.dsn(db, user, password), **{**CONNECT, **kw})










def login_error(dsn: str) -> tuple[str | None, str]:
    """(SQLSTATE, message) of a refused login. asyncpg keeps the SQLSTATE of a failed connection
    attempt; psycopg does not."""
    async def attempt() -> tuple[str | None, str]:
        try:
            conn = await asyncpg.connect(dsn, timeout=5, ssl=False)
        except asyncpg.PostgresError as e:
            return e.sqlstate, str(e)
        await conn.close()
        raise AssertionError(f"login to {dsn} succeeded")

    return asyncio.run(attempt())




@pytest.fixture
def threads() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=8) as ex:
        yield ex


class RawClient:
    """A bare protocol-3 client (trust auth only), to read exactly what the pooler sends: the
    ErrorResponse a timeout produces arrives while psycopg would not be listening."""

    def __init__(self, proc: Any, db: str = "testdb", user: str = "postgres") -> None:
        self.sock = socket.create_connection((proc.host, proc.port), timeout=10)
        body = struct.pack("!i", 196608) + b"".join(s.encode() + b"\0" for s in ("user", user, "database", db))
        body += b"\0"
        self.sock.sendall(struct.pack("!i", len(body) + 4) + body)
        msgs = self.until_ready()
        assert not [m for m in msgs if m[0] == b"E"], msgs

    def close(self) -> None:
        self.sock.close()

    def recv(self) -> tuple[bytes, bytes] | None:
        head = self._exact(5)
        if head is None:
            return None
        (length,) = struct.unpack("!i", head[1:])
        body = self._exact(length - 4)
        return (head[:1], body or b"")

    def _exact(self, n: int) -> bytes | None:
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                return None
            out += chunk
        return out

    def until_ready(self) -> list[tuple[bytes, bytes]]:
        msgs: list[tuple[bytes, bytes]] = []
        while True:
            msg = self.recv()
            assert msg is not None, f"connection closed after {msgs}"
            msgs.append(msg)
            if msg[0] == b"Z":
                return msgs

    def query(self, sql: str) -> None:
        body = sql.encode() + b"\0"
        self.sock.sendall(b"Q" + struct.pack("!i", len(body) + 4) + body)

    def next_error(self, timeout: float = 10) -> tuple[dict[str, str], bool]:
        """Read until an ErrorResponse; returns its fields and whether the connection then closed."""
        self.sock.settimeout(timeout)
        while True:
            msg = self.recv()
            assert msg is not None, "closed without an ErrorResponse"
            if msg[0] == b"E":
                fields = {f[:1].decode(): f[1:].decode() for f in msg[1].split(b"\0") if f}
                closed = self.recv() is None
                return fields, closed


# -- how servers are shared ------------------------------------------------------------------------

def test_transaction_mode_shares_one_server(pgmux_factory: Any) -> None:
    proc = pgmux_factory(settings={"pool_mode": "transaction"})
    conns = [connect(proc) for _ in range(5)]
    try:
        pids = {backend_pid(c) for c in conns for _ in range(2)}
        assert len(pids) == 1, "sequential transactions should all reuse one server"
        assert len(servers(proc)) == 1
        row = pool_row(proc)
        assert (row["cl_active"], row["sv_idle"], row["sv_active"], row["pool_mode"]) == (5, 1, 0, "transaction")
        conns[0].execute("BEGIN")
        assert backend_pid(conns[1]) != backend_pid(conns[0])  # a held server is not shared
        conns[0].execute("COMMIT")
    finally:
        for c in conns:
            c.close()


def test_session_mode_resets_server_between_clients(pgmux_factory: Any) -> None:
    proc = pgmux_factory(settings={"pool_mode": "session", "default_pool_size": 1})
    with connect(proc) as first:
        first.execute("SET statement_timeout = '123s'")
        first.execute("PREPARE leftover AS SELECT 1")
        pid = backend_pid(first)
        assert first.execute("SHOW statement_timeout").fetchone() == ("123s",)
    with connect(proc) as second:
        assert backend_pid(second) == pid, "pool_size=1: the same server serves the next client"
        assert second.execute("SHOW statement_timeout").fetchone() == ("0",)
        with pytest.raises(psycopg.errors.InvalidSqlStatementName):
            second.execute("EXECUTE leftover")
        assert second.execute("SELECT 1").fetchone() == (1,)


def test_statement_mode_refuses_transactions(pgmux_factory: Any) -> None:
    proc = pgmux_factory(settings={"pool_mode": "statement"})
    with connect(proc) as other, connect(proc) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        with pytest.raises(psycopg.Error, match="transaction blocks not allowed in statement pooling mode"):
            conn.execute("BEGIN")
        assert other.execute("SELECT 2").fetchone() == (2,)
        with connect(proc) as again:
            assert again.execute("SELECT 3").fetchone() == (3,)


# -- limits ----------------------------------------------------------------------------------------

def _marked(pg: PgCluster, dbs: tuple[str, ...]) -> tuple[dict[str, str], str]:
    marker = f"pgmux_{secrets.token_hex(4)}"
    p = pg.primary
    return {db: f"host={p.host} port={p.port} dbname={db} application_name={marker}" for db in dbs}, marker


def _load(proc: Any, pg: PgCluster, marker: str, dbs: list[str], threads: ThreadPoolExecutor,
          queries: int = 3) -> tuple[int, int]:
    """Each db in `dbs` gets one client running `queries` short sleeps, all at once. Returns the most
    servers SHOW SERVERS and pg_stat_activity saw at any moment."""
    stop = threading.Event()
    seen = [0, 0]

    def sample() -> None:
        with psycopg.connect(pg.primary.dsn(), autocommit=True) as direct:
            while not stop.is_set():
                seen[0] = max(seen[0], len([r for r in proc.admin_dicts("SHOW SERVERS")]))
                row = direct.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                                     (marker,)).fetchone()
                seen[1] = max(seen[1], int(row[0]) if row else 0)
                time.sleep(0.03)

    def work(db: str) -> int:
        with connect(proc, db=db) as conn:
            for _ in range(queries):
                conn.execute("SELECT pg_sleep(0.2)")
        return queries

    sampler = threads.submit(sample)
    try:
        jobs = [threads.submit(work, db) for db in dbs]
        assert sum(j.result(timeout=30) for j in jobs) == queries * len(dbs)
    finally:
        stop.set()
        sampler.result(timeout=10)
    return seen[0], seen[1]


def test_max_db_connections_caps_servers(pg: PgCluster, pgmux_factory: Any, threads: ThreadPoolExecutor) -> None:
    databases, marker = _marked(pg, ("testdb",))
    proc = pgmux_factory(databases=databases, settings={"pool_mode": "transaction", "default_pool_size": 10,
                                                        "max_db_connections": 2})
    shown, in_pg = _load(proc, pg, marker, ["testdb"] * 6, threads)
    assert shown == 2 and in_pg == 2, (shown, in_pg)


def test_max_user_connections_caps_servers_across_databases(pg: PgCluster, pgmux_factory: Any,
                                                            threads: ThreadPoolExecutor) -> None:
    databases, marker = _marked(pg, ("testdb", "postgres"))
    proc = pgmux_factory(databases=databases, settings={"pool_mode": "transaction", "default_pool_size": 10,
                                                        "max_user_connections": 2})
    shown, in_pg = _load(proc, pg, marker, ["testdb", "postgres"] * 3, threads)
    assert 1 <= shown <= 2 and 1 <= in_pg <= 2, (shown, in_pg)


def test_min_pool_size_opens_servers_ahead(pgmux_factory: Any) -> None:
    proc = pgmux_factory(settings={"pool_mode": "transaction", "min_pool_size": 3})
    with connect(proc) as conn:
        conn.execute("SELECT 1")
        # Servers appear in SHOW SERVERS while still logging in: wait for all three to be ready.
        def ready() -> list[dict[str, Any]] | None:
            rows = servers(proc)
            return rows if len(rows) == 3 and all(r["state"] in ("idle", "used") for r in rows) else None

        wait_for(ready, "3 logged-in idle servers")
        assert len(servers(proc)) == 3  # and no more than min_pool_size for one client


def test_reserve_pool_after_reserve_pool_timeout(pgmux_factory: Any, threads: ThreadPoolExecutor) -> None:
    proc = pgmux_factory(settings={"pool_mode": "transaction", "default_pool_size": 1, "reserve_pool_size": 1,
                                   "reserve_pool_timeout": 1})
    with connect(proc) as holder, connect(proc) as waiter, guard(proc):
        holder.execute("BEGIN")
        holder.execute("SELECT 1")
        started = time.monotonic()
        job = threads.submit(lambda: waiter.execute("SELECT 42").fetchone())
        wait_for(lambda: pool_row(proc)["cl_waiting"] == 1, "the second client to queue")
        assert job.result(timeout=10) == (42,)
        assert time.monotonic() - started >= 0.8, "the reserve opened before reserve_pool_timeout"
        assert len(servers(proc)) == 2
        holder.execute("COMMIT")


def test_max_client_conn(pgmux_factory: Any) -> None:
    proc = pgmux_factory(settings={"max_client_conn": 3})
    conns = [connect(proc) for _ in range(3)]
    try:
        sqlstate, message = login_error(proc.dsn())
        assert sqlstate == "53300" and "max_client_conn" in message
        assert all(c.execute("SELECT 1").fetchone() == (1,) for c in conns)
        conns.pop().close()

        def admitted() -> bool:
            try:
                conns.append(connect(proc))
                return True
            except psycopg.OperationalError:
                return False

        wait_for(admitted, "a free client slot")
    finally:
        for c in conns:
            c.close()


def test_unknown_database(pgmux_factory: Any) -> None:
    proc = pgmux_factory()
    with connect(proc) as other:
        sqlstate, message = login_error(proc.dsn("no_such_db"))
        assert sqlstate == "3D000" and "no_such_db" in message
        assert other.execute("SELECT 1").fetchone() == (1,)


# -- server lifetimes ------------------------------------------------------------------------------

def test_server_idle_timeout_closes_idle_servers(pgmux_factory: Any) -> None:
    proc = pgmux_factory(settings={"pool_mode": "transaction", "server_idle_timeout": 1})
    with connect(proc) as conn:
        pid = backend_pid(conn)
        assert len(servers(proc)) == 1
        wait_for(lambda: not servers(proc), "the idle server to close")
        wait_for(lambda: "closing because: server idle timeout" in proc.log(), "the close in the log")
        assert backend_pid(conn) != pid  # a new server serves the client


def test_server_lifetime_closes_old_servers_once_released(pgmux_factory: Any) -> None:
    proc = pgmux_factory(settings={"pool_mode": "transaction", "server_lifetime": 1, "server_idle_timeout": 0})
    with connect(proc) as conn:
        conn.execute("BEGIN")
        pid = backend_pid(conn)
        conn.execute("SELECT pg_sleep(1.5)")  # older than server_lifetime, but in use: kept
        assert backend_pid(conn) == pid
        conn.execute("COMMIT")
        wait_for(lambda: not servers(proc), "the old server to close")
        assert backend_pid(conn) != pid


# -- client timeouts -------------------------------------------------------------------------------

def test_client_idle_timeout(pgmux_factory: Any) -> None:
    proc = pgmux_factory(settings={"pool_mode": "transaction", "client_idle_timeout": 1})
    raw = RawClient(proc)
    try:
        raw.query("SELECT 1")
        raw.until_ready()
        started = time.monotonic()
        fields, closed = raw.next_error()
        assert (fields["S"], fields["C"], fields["M"]) == ("FATAL", "08P01", "client_idle_timeout") and closed
        assert time.monotonic() - started >= 0.5
    finally:
        raw.close()
    # Any idle client would go the same way; a busy one is served.
    with connect(proc) as again:
        assert again.execute("SELECT 1").fetchone() == (1,)
    wait_for(lambda: "closing because: client_idle_timeout" in proc.log(), "the close in the log")


def test_idle_transaction_timeout(pgmux_factory: Any) -> None:
    proc = pgmux_factory(settings={"pool_mode": "transaction", "idle_transaction_timeout": 1})
    with connect(proc) as other:
        raw = RawClient(proc)
        try:
            raw.query("BEGIN")
            raw.until_ready()
            fields, closed = raw.next_error()
            assert (fields["S"], fields["C"], fields["M"]) == ("FATAL", "08P01", "idle transaction timeout") and closed
        finally:
            raw.close()
        assert other.execute("SELECT 1").fetchone() == (1,)  # idle, but not in a transaction
        wait_for(lambda: "closing because: idle transaction timeout" in proc.log(), "the close in the log")


def test_query_timeout(pgmux_factory: Any) -> None:
    proc = pgmux_factory(settings={"pool_mode": "transaction", "query_timeout": 1})
    with connect(proc) as other:
        raw = RawClient(proc)
        try:
            started = time.monotonic()
            raw.query("SELECT pg_sleep(10)")
            fields, closed = raw.next_error()
            assert (fields["S"], fields["C"], fields["M"]) == ("FATAL", "08P01", "query timeout") and closed
            assert time.monotonic() - started < 6
        finally:
            raw.close()
        assert other.execute("SELECT 1").fetchone() == (1,)


def test_query_wait_timeout(pgmux_factory: Any, threads: ThreadPoolExecutor) -> None:
    proc = pgmux_factory(settings={"pool_mode": "transaction", "default_pool_size": 1, "query_wait_timeout": 1})
    with connect(proc) as holder, connect(proc) as waiter, guard(proc):
        holder.execute("BEGIN")
        holder.execute("SELECT 1")
        started = time.monotonic()
        job: Future[Any] = threads.submit(waiter.execute, "SELECT 1")
        with pytest.raises(psycopg.Error, match="query_wait_timeout") as info:
            job.result(timeout=10)
        assert info.value.sqlstate == "08P01" and info.value.diag.severity == "FATAL"
        assert 0.8 <= time.monotonic() - started < 6
        assert holder.execute("SELECT 2").fetchone() == (2,)
        holder.execute("COMMIT")
        assert holder.execute("SELECT 3").fetchone() == (3,)


# -- servers that cannot be reached, connect_query -------------------------------------------------

def test_dead_server_fails_fast_naming_it(pg: PgCluster, pgmux_factory: Any) -> None:
    dead = free_port()
    p = pg.primary
    proc = pgmux_factory(databases={"dead": f"host=127.0.0.1 port={dead} dbname=testdb",
                                    "testdb": f"host={p.host} port={p.port} dbname=testdb"},
                         settings={"server_connect_timeout": 1, "server_login_retry": 1})
    with connect(proc) as other:
        for _ in range(2):  # the second one comes within server_login_retry
            started = time.monotonic()
            with pytest.raises(psycopg.OperationalError, match=f"127.0.0.1:{dead}"):
                connect(proc, db="dead").close()
            assert time.monotonic() - started < 5
        assert other.execute("SELECT 1").fetchone() == (1,)


def test_connect_query_runs_on_each_new_server(pg: PgCluster, pgmux_factory: Any) -> None:
    table = f"cq_{secrets.token_hex(4)}"
    pg.primary.psql(f"CREATE TABLE {table} (pid int); GRANT ALL ON {table} TO PUBLIC", db="testdb")
    p = pg.primary
    query = f"INSERT INTO {table} VALUES (pg_backend_pid())"
    proc = pgmux_factory(databases={"testdb": f"host={p.host} port={p.port} dbname=testdb "
                                              f"connect_query='{query}'"},
                         settings={"pool_mode": "transaction"})
    conns = [connect(proc) for _ in range(3)]
    try:
        for c in conns:
            c.execute("BEGIN")
        pids = {backend_pid(c) for c in conns}
        for c in conns:
            c.execute("COMMIT")
        for c in conns:  # reused servers do not run it again
            c.execute("SELECT 1")
        logged = p.psql(f"SELECT pid FROM {table} ORDER BY pid", db="testdb").split()
        assert sorted(int(x) for x in logged) == sorted(pids) and len(pids) == 3
    finally:
        for c in conns:
            c.close()
