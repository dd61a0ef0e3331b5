"""PgBouncer 1.25's timeouts through pgmux against a real PostgreSQL: transaction_timeout (global and
per user), the per-user query_timeout and idle_transaction_timeout, the per-database and per-user
query_wait_timeout (user over database over global), and cancel_wait_timeout.

PgBouncer 1.25 takes query_wait_timeout on a [databases] line, and query_timeout, query_wait_timeout,
idle_transaction_timeout, transaction_timeout and client_idle_timeout on a [users] line (doc/config.md);
a timeout that ends a transaction closes its server connection, then the client gets FATAL 08P01 with
PgBouncer's words and is disconnected.
"""

from __future__ import annotations

import secrets
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
from helpers import backend_pid, guard, pool_row, wait_for
from test_pooling import connect

from pgmux.testing.cluster import PgCluster, free_port


@pytest.fixture
def threads() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=4) as ex:
        yield ex


def backend_alive(pg: PgCluster, pid: int) -> bool:
    with psycopg.connect(pg.primary.dsn(), autocommit=True) as direct:
        row = direct.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
        return bool(row and row[0])


def ended_by(conn: psycopg.Connection[Any], why: str, within: float) -> float:
    """Keep `conn`'s open transaction busy with short queries until the pooler ends it; return how
    long that took. Fails if it is not ended with `why` within `within` seconds."""
    started = time.monotonic()
    with pytest.raises(psycopg.OperationalError, match=why):
        while time.monotonic() - started < within:
            conn.execute("SELECT pg_sleep(0.2)")
    return time.monotonic() - started


def test_transaction_timeout_ends_a_busy_transaction(pg: PgCluster, pgmux_factory: Any) -> None:
    proc = pgmux_factory(settings={"pool_mode": "transaction", "transaction_timeout": 2,
                                   "idle_transaction_timeout": 0})
    with connect(proc) as other, connect(proc) as conn, guard(proc):
        conn.execute("BEGIN")
        pid = backend_pid(conn)
        took = ended_by(conn, "transaction timeout", within=15)
        assert 1.5 < took < 12, took  # never idle in its transaction for long, still ended
        assert conn.closed
        # Its server was closed inside the transaction, not handed to anyone.
        wait_for(lambda: not backend_alive(pg, pid), "the server of the ended transaction to go")
        assert other.execute("SELECT 1").fetchone() == (1,)
        wait_for(lambda: "closing because: transaction timeout" in proc.log(), "the close in the log")


def test_transaction_timeout_per_user(pgmux_factory: Any) -> None:
    proc = pgmux_factory(settings={"pool_mode": "transaction"},
                         users={"md5user": "transaction_timeout=1"})
    with connect(proc) as free, connect(proc, user="md5user") as limited, guard(proc):
        free.execute("BEGIN")
        limited.execute("BEGIN")
        ended_by(limited, "transaction timeout", within=12)
        for _ in range(10):  # 2 s: postgres has no [users] entry and no global timeout
            free.execute("SELECT pg_sleep(0.2)")
        free.execute("COMMIT")


def test_idle_transaction_timeout_per_user(pgmux_factory: Any) -> None:
    proc = pgmux_factory(settings={"pool_mode": "transaction"},
                         users={"md5user": "idle_transaction_timeout=1"})
    with connect(proc) as free, connect(proc, user="md5user") as limited, guard(proc):
        free.execute("BEGIN")
        limited.execute("BEGIN")
        time.sleep(2.5)
        with pytest.raises(psycopg.OperationalError, match="idle transaction timeout"):
            limited.execute("SELECT 1")
        assert free.execute("SELECT 1").fetchone() == (1,)  # idle in transaction as long, untouched
        free.execute("COMMIT")


def test_query_timeout_per_user(pgmux_factory: Any) -> None:
    proc = pgmux_factory(settings={"pool_mode": "transaction", "query_timeout": 0},
                         users={"md5user": "query_timeout=1"})
    with connect(proc) as free, connect(proc, user="md5user") as limited, guard(proc):
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError, match="query timeout"):
            limited.execute("SELECT pg_sleep(20)")
        assert time.monotonic() - started < 10
        assert free.execute("SELECT pg_sleep(2), 1").fetchone() == ("", 1)


def test_query_wait_timeout_per_database_and_user(pgmux_factory: Any, pg: PgCluster,
                                                  threads: ThreadPoolExecutor) -> None:
    p = pg.primary
    proc = pgmux_factory(
        databases={"testdb": f"host={p.host} port={p.port} dbname=testdb user=postgres query_wait_timeout=1"},
        settings={"pool_mode": "transaction", "default_pool_size": 1, "query_wait_timeout": 120},
        users={"md5user": "query_wait_timeout=0"})
    with connect(proc) as holder, connect(proc) as waiter, connect(proc, user="md5user") as patient, guard(proc):
        holder.execute("BEGIN")
        holder.execute("SELECT 1")  # the one server (forced user: one pool for all three) is taken
        started = time.monotonic()
        job = threads.submit(lambda: waiter.execute("SELECT 2").fetchone())
        slow = threads.submit(lambda: patient.execute("SELECT 3").fetchone())
        with pytest.raises(psycopg.OperationalError, match="query_wait_timeout"):
            job.result(timeout=20)
        assert time.monotonic() - started < 10  # the database's 1 s, not the global 120 s
        time.sleep(1.5)
        assert not slow.done()  # md5user's 0 turns it off for that user
        holder.execute("COMMIT")
        assert slow.result(timeout=10) == (3,)


class StallingProxy:
    """A TCP proxy in front of PostgreSQL that forwards its first connection and accepts, but never
    answers, every later one: a server that cannot take a cancel request."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", free_port()))
        self.port = self.listener.getsockname()[1]
        self.stalled: list[socket.socket] = []
        self.forwarded: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        self.listener.settimeout(0.2)
        first = True
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if first:
                first = False
                upstream = socket.create_connection(self.target)
                self.forwarded += [conn, upstream]
                for a, b in ((conn, upstream), (upstream, conn)):
                    threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()
            else:
                self.stalled.append(conn)

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self.listener.close()
        self._thread.join(timeout=5)
        for s in self.stalled + self.forwarded:
            s.close()


def test_cancel_that_is_delivered_ends_its_connection_and_the_query(pgmux_factory: Any,
                                                                   threads: ThreadPoolExecutor) -> None:
    proc = pgmux_factory(settings={"pool_mode": "transaction", "cancel_wait_timeout": 1})
    with connect(proc) as conn, guard(proc):
        job = threads.submit(lambda: conn.execute("SELECT pg_sleep(20)"))
        wait_for(lambda: pool_row(proc)["sv_active"] == 1, "the query to run")
        time.sleep(0.3)
        started = time.monotonic()
        conn.cancel()
        with pytest.raises(psycopg.errors.QueryCanceled):
            job.result(timeout=15)
        assert time.monotonic() - started < 5
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_cancel_wait_timeout_bounds_a_cancel_that_cannot_be_sent(pg: PgCluster, pgmux_factory: Any,
                                                                 threads: ThreadPoolExecutor) -> None:
    proxy = StallingProxy(pg.primary.host, pg.primary.port)
    try:
        proc = pgmux_factory(databases={"testdb": f"host=127.0.0.1 port={proxy.port} dbname=testdb"},
                             settings={"pool_mode": "session", "cancel_wait_timeout": 1,
                                       "server_connect_timeout": 60})
        with connect(proc) as conn, guard(proc):
            marker = secrets.token_hex(4)
            job = threads.submit(lambda: conn.execute(f"SELECT pg_sleep(3), '{marker}'").fetchone())
            wait_for(lambda: pool_row(proc)["sv_active"] == 1, "the query to run")
            time.sleep(0.3)
            sent = time.monotonic()
            conn.cancel()  # libpq waits for pgmux to end the cancel's connection: after 1 s, given up
            waited = time.monotonic() - sent
            assert 0.8 < waited < 6, waited
            wait_for(lambda: "not sent within cancel_wait_timeout (1s)" in proc.log(),
                     "the cancel to be given up after cancel_wait_timeout", timeout=8)
            assert job.result(timeout=20) == ("", marker)  # never cancelled: it could not be delivered
            assert proxy.stalled  # the cancel's own connection reached the (stalled) server side
    finally:
        proxy.close()
