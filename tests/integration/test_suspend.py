"""SUSPEND and RESUME (issue 14, item 5), as PgBouncer 1.18 behaves when driven the same way: after SUSPEND
no client is served (an idle client's query, a query inside an open transaction and a new connection all
wait), the console that suspended goes on, PAUSE and a second SUSPEND are refused with PgBouncer's words,
and RESUME lets everything that waited complete, with no connection lost. pgmux also lets another console
that was already connected RESUME, and SIGUSR2 resumes. A connection whose socket buffer cannot be written
out within suspend_timeout is dropped; the others are not."""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
from helpers import backend_pid, guard, wait_for
from test_protocol import Wire

from pgmux.protocol import messages as m

CONNECT: dict[str, Any] = {"connect_timeout": 20, "autocommit": True, "prepare_threshold": None}


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=6) as ex:
        yield ex


def _console(proc: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(proc.dsn("pgbouncer"), cursor_factory=psycopg.ClientCursor, **CONNECT)


def _still_waiting(*futs: Future[Any], wait: float = 1.0) -> bool:
    time.sleep(wait)
    return not any(f.done() for f in futs)


def _state(admin: psycopg.Connection[Any]) -> dict[str, str]:
    return {r[0]: r[1] for r in admin.execute("SHOW STATE").fetchall()}


def _dropped(sock: socket.socket, reply: int) -> str:
    """Read what is left: "dropped" when the connection ends (EOF or RST) before the whole reply came."""
    got, deadline = 0, time.monotonic() + 30
    sock.settimeout(5)
    while got < reply and time.monotonic() < deadline:
        try:
            chunk = sock.recv(1 << 20)
        except ConnectionResetError:
            return "dropped"
        except TimeoutError:
            return f"nothing more for 5 s after {got} bytes"
        if not chunk:
            return "dropped"
        got += len(chunk)
    return f"{got} bytes came"


def _show_version(proc: Any) -> tuple[Any, ...] | None:
    with _console(proc) as admin:
        return admin.execute("SHOW VERSION").fetchone()


def _new_client(proc: Any) -> tuple[Any, ...] | None:
    with psycopg.connect(proc.dsn(), **CONNECT) as conn:
        return conn.execute("SELECT 'new'").fetchone()


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_suspend_holds_everything_and_resume_loses_nothing(pgmux_factory: Any, pool: ThreadPoolExecutor,
                                                           mode: str) -> None:
    proc = pgmux_factory(settings={"pool_mode": mode})
    with psycopg.connect(proc.dsn(), **CONNECT) as idle, psycopg.connect(proc.dsn(), **CONNECT) as in_tx, \
            _console(proc) as admin, _console(proc) as other_console, guard(proc):
        idle_pid = backend_pid(idle) if mode == "session" else None
        in_tx.execute("BEGIN")
        in_tx_pid = backend_pid(in_tx)
        t0 = time.monotonic()
        admin.execute("SUSPEND")
        assert time.monotonic() - t0 < 5, "SUSPEND waited with nothing to write out"
        assert _state(admin) == {"active": "no", "paused": "no", "suspended": "yes"}
        for refused in ("PAUSE", "SUSPEND"):
            with pytest.raises(psycopg.Error, match="already suspended/paused"):
                admin.execute(refused)
        waiting = [pool.submit(lambda: idle.execute("SELECT 'idle'").fetchone()),
                   pool.submit(lambda: in_tx.execute("SELECT 'in tx'").fetchone()),
                   pool.submit(_new_client, proc)]
        assert _still_waiting(*waiting), [f.result() for f in waiting if f.done()]
        assert other_console.execute("SHOW VERSION").fetchone() is not None  # consoles go on
        other_console.execute("RESUME")  # not the console that suspended
        assert [f.result(timeout=20) for f in waiting] == [("idle",), ("in tx",), ("new",)]
        assert backend_pid(in_tx) == in_tx_pid, "the open transaction kept its server"
        in_tx.execute("COMMIT")
        if idle_pid is not None:
            assert backend_pid(idle) == idle_pid
        assert _state(admin) == {"active": "yes", "paused": "no", "suspended": "no"}
    wait_for(lambda: "suspended: no connection is read" in proc.log() and "resumed" in proc.log(),
             "SUSPEND and RESUME in the log (written every janitor tick)")


def test_sigusr2_resumes_and_a_new_console_waits(pgmux_factory: Any, pool: ThreadPoolExecutor) -> None:
    proc = pgmux_factory(settings={"pool_mode": "transaction"})
    with psycopg.connect(proc.dsn(), **CONNECT) as conn, guard(proc):
        conn.execute("SELECT 1")
        with _console(proc) as admin:
            admin.execute("SUSPEND")
        late_console = pool.submit(_show_version, proc)
        query = pool.submit(lambda: conn.execute("SELECT 2").fetchone())
        assert _still_waiting(late_console, query), "a new connection was accepted while suspended"
        proc.signal(signal.SIGUSR2)
        assert query.result(timeout=20) == (2,)
        assert late_console.result(timeout=20) is not None


def test_suspend_timeout_drops_a_connection_that_does_not_read(pgmux_factory: Any) -> None:
    """A client that stopped reading while its reply streams keeps bytes in pgmux's socket buffer: SUSPEND
    waits suspend_timeout for it, then drops it and answers. The other client keeps its connection."""
    proc = pgmux_factory(settings={"pool_mode": "transaction", "suspend_timeout": 1})
    with psycopg.connect(proc.dsn(), **CONNECT) as bystander, Wire(proc.host, proc.port, timeout=30) as stuck, \
            _console(proc) as admin:
        bystander.execute("SELECT 1")
        stuck.login()
        stuck.send(m.query("SELECT repeat('x', 1000) FROM generate_series(1, 50000)"))  # 50 MB, never read
        wait_for(lambda: any(r[4] == "active" for r in admin.execute("SHOW CLIENTS").fetchall()
                             if r[1] == "postgres" and r[2] == "testdb"), "the stuck client's query to run")
        time.sleep(0.5)  # its reply fills the socket buffers
        t0 = time.monotonic()
        admin.execute("SUSPEND")
        took = time.monotonic() - t0
        assert 0.9 < took < 8, took
        admin.execute("RESUME")
        assert bystander.execute("SELECT 2").fetchone() == (2,)
        assert _dropped(stuck.sock, 50 * 1000 * 1000) == "dropped"
    wait_for(lambda: "suspend_timeout" in proc.log(), "the drop to be logged")


def test_suspend_and_resume_act_on_every_worker(pgmux_factory: Any, pool: ThreadPoolExecutor) -> None:
    """workers = 2: one console's SUSPEND suspends both workers (a client of each waits, and a new one),
    answered once both have; RESUME through a console lets all of them go on."""
    from test_workers import connect_on, start

    proc = start(pgmux_factory, pool_mode="transaction")
    clients = [connect_on(proc, i) for i in (0, 1)]
    try:
        for i, conn in enumerate(clients):
            assert conn.execute("SELECT %s::int", (i,)).fetchone() == (i,)
        with _console(proc) as admin:
            admin.execute("SUSPEND")
            with pytest.raises(psycopg.Error, match="already suspended/paused"):
                admin.execute("SUSPEND")  # every worker refuses: one error
        waiting = [pool.submit(lambda c=conn: c.execute("SELECT 'after'").fetchone()) for conn in clients]
        waiting.append(pool.submit(_new_client, proc))
        assert _still_waiting(*waiting), [f.result() for f in waiting if f.done()]
        proc.signal(signal.SIGUSR2)  # the supervisor passes it to every worker
        assert [f.result(timeout=20) for f in waiting] == [("after",), ("after",), ("new",)]
        with _console(proc) as admin, _console(proc) as other:  # SUSPEND again, RESUME from another console
            admin.execute("SUSPEND")
            late = pool.submit(_new_client, proc)
            assert _still_waiting(late)
            other.execute("RESUME")
            assert late.result(timeout=20) == ("new",)
    finally:
        for conn in clients:
            conn.close()


def test_a_command_that_waits_keeps_the_extended_protocol_in_order(pgmux_factory: Any,
                                                                    pool: ThreadPoolExecutor) -> None:
    """PAUSE and SUSPEND answered later, sent with the extended protocol (psycopg, binary=True): the
    answer comes before its Sync's ReadyForQuery, so the command returns when it is done and the console
    goes on. Before, ReadyForQuery came at once and the late answer confused the next command."""
    proc = pgmux_factory(settings={"pool_mode": "transaction"})
    with psycopg.connect(proc.dsn(), **CONNECT) as busy, \
            psycopg.connect(proc.dsn("pgbouncer"), **CONNECT) as console:
        busy.execute("BEGIN")
        busy.execute("SELECT 1")
        pause = pool.submit(console.execute, "PAUSE", binary=True)  # binary: psycopg's extended protocol
        assert _still_waiting(pause), "PAUSE returned while a transaction was open"
        busy.execute("COMMIT")
        pause.result(timeout=10)
        assert dict(console.execute("SHOW STATE", binary=True).fetchall())["paused"] == "yes"
        console.execute("RESUME", binary=True)
        assert busy.execute("SELECT 2").fetchone() == (2,)
        with Wire(proc.host, proc.port, timeout=30) as stuck:  # a client that does not read: SUSPEND waits
            stuck.login()
            stuck.send(m.query("SELECT repeat('x', 1000) FROM generate_series(1, 50000)"))
            time.sleep(1)
            t0 = time.monotonic()
            console.execute("SET suspend_timeout = 1")
            console.execute("SUSPEND", binary=True)
            assert time.monotonic() - t0 > 0.9
            assert dict(console.execute("SHOW STATE", binary=True).fetchall())["suspended"] == "yes"
            console.execute("RESUME", binary=True)
        assert busy.execute("SELECT 3").fetchone() == (3,)
