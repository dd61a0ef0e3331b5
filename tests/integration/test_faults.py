"""Fault injection (issue 11): backends killed, PostgreSQL restarted, a server that stalls, clients that
vanish. Each test checks that clients get an error of class 08 or 57 (or the documented query_timeout
error) within a bound, never a hang; that no server goes back to the pool dirty (a following client on
a pool of 1 finds no open transaction and no leftover SET); that the pool heals; and that no
acknowledged commit is lost (synchronous_commit on).

These tests break their PostgreSQL: they run on a cluster of their own (`own_pg`), not the shared `pg`.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import struct
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest
from helpers import wait_for

from conftest import PgmuxProc, _pooler_command
from pgmux.protocol import messages as m
from pgmux.testing.cluster import HOST, SUPERUSER, PgCluster, free_port

BOUND = 30.0  # no client may wait longer than this for an answer or an error


@pytest.fixture(scope="module")
def own_pg() -> Iterator[PgCluster]:
    with PgCluster(replicas=0, conf_extra={"synchronous_commit": "on"}) as cluster:
        cluster.primary.psql("CREATE DATABASE faults")
        cluster.primary.psql("CREATE TABLE acked (id int PRIMARY KEY); GRANT ALL ON acked TO PUBLIC", db="faults")
        yield cluster


@pytest.fixture
def start(own_pg: PgCluster, tmp_path: Path) -> Iterator[Any]:
    procs: list[PgmuxProc] = []
    # As the shared fixture starts pgmux: as root, with -u and a dir that OS user owns.
    command, popen_kwargs, workdir, owner = _pooler_command(tmp_path)

    def run(**settings: Any) -> PgmuxProc:
        p = own_pg.primary
        merged = {"listen_addr": HOST, "listen_port": free_port(), "unix_socket_dir": "", "auth_type": "trust",
                  "auth_file": str(workdir / f"userlist-{len(procs)}.txt"), "admin_users": own_pg.superuser,
                  "pool_mode": "transaction", "default_pool_size": 1, "query_wait_timeout": 20,
                  "server_login_retry": 1, **settings}
        proc = PgmuxProc(workdir, f"-{len(procs)}", {"faults": f"host={p.host} port={p.port} dbname=faults"},
                         merged, {own_pg.superuser: ""}, {}, command, popen_kwargs, owner)
        procs.append(proc)
        proc.launch()
        return proc

    yield run
    for proc in procs:
        proc.stop()
    if workdir != tmp_path:
        shutil.rmtree(workdir, ignore_errors=True)


def connect(proc: PgmuxProc, **kw: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(proc.dsn("faults", user=SUPERUSER), autocommit=True, connect_timeout=10, **kw)


def bounded(fn: Any, *args: Any, timeout: float = BOUND) -> Any:
    """Run fn(*args) in a thread; a hang fails the test instead of blocking it."""
    with ThreadPoolExecutor(1) as ex:
        fut = ex.submit(fn, *args)
        return fut.result(timeout=timeout)


def error_class(fn: Any, *args: Any) -> str:
    """The SQLSTATE of the error fn(*args) raises (within BOUND), '' for a closed connection without one."""
    try:
        bounded(fn, *args)
    except psycopg.Error as e:
        return e.sqlstate or ""
    raise AssertionError("no error")


def the_next_client_finds_a_clean_server(proc: PgmuxProc, default_work_mem: str) -> None:
    """On a pool of 1 every client gets the same server: it must be out of any transaction, with no
    SET left from before, and it must work (the pool healed)."""
    def check() -> tuple[Any, ...]:
        with connect(proc) as c:
            row = c.execute("SELECT now() = statement_timestamp(), current_setting('work_mem'), "
                            "pg_current_xact_id_if_assigned() IS NULL").fetchone()
            assert row is not None
            return tuple(row)
    row = wait_for(lambda: _try(check), "a working server from the pool", timeout=BOUND)
    assert row == (True, default_work_mem, True)


def _try(fn: Any) -> Any:
    try:
        return bounded(fn)
    except psycopg.OperationalError:
        return None


def committed(own_pg: PgCluster) -> set[int]:
    out = own_pg.primary.psql("SELECT id FROM acked", db="faults")
    return {int(x) for x in out.split()}


# -- a backend killed mid-transaction ------------------------------------------------------------------

def test_backend_killed_mid_transaction(own_pg: PgCluster, start: Any) -> None:
    proc = start()
    default = own_pg.primary.psql("SHOW work_mem")
    with connect(proc) as c:
        c.execute("INSERT INTO acked VALUES (1001)")  # acknowledged
        c.execute("SET work_mem = '7MB'")
        c.execute("BEGIN")
        c.execute("INSERT INTO acked VALUES (1002)")  # never committed
        pid = c.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
        os.kill(pid, signal.SIGKILL)  # the postmaster restarts every backend (crash recovery)
        state = error_class(c.execute, "SELECT 1")
    assert state[:2] in ("08", "57"), state
    the_next_client_finds_a_clean_server(proc, default)
    ids = committed(own_pg)
    assert 1001 in ids and 1002 not in ids


# -- PostgreSQL restarts under load ------------------------------------------------------------------------

class Load:
    """Writers through pgmux: each INSERT is acknowledged (autocommit) or fails with an error."""

    def __init__(self, proc: PgmuxProc, base: int, n: int = 6) -> None:
        self.proc, self.base, self.n = proc, base, n
        self.acked: set[int] = set()
        self.errors: list[str] = []
        self.hangs: list[str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(i,)) for i in range(n)]

    def run(self, w: int) -> None:
        seq = 0
        conn: psycopg.Connection[Any] | None = None
        while not self.stop.is_set() and seq < 100000:
            seq += 1
            rid = self.base + w * 100000 + seq
            t0 = time.monotonic()
            try:
                if conn is None:
                    conn = connect(self.proc)
                conn.execute("INSERT INTO acked VALUES (%s)", (rid,))
                self.acked.add(rid)
            except psycopg.Error as e:
                # (libpq gives no SQLSTATE for an error at login: its message says what pgmux answered)
                self.errors.append(e.sqlstate or ("login: " if conn is None else "no SQLSTATE: ") + str(e))
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.05)
            if time.monotonic() - t0 > BOUND:
                self.hangs.append(f"writer {w}: {time.monotonic() - t0:.0f}s")
        if conn is not None:
            conn.close()

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(BOUND + 15)
        assert not any(t.is_alive() for t in self.threads), "a writer hung"


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_postgresql_restart_under_load(own_pg: PgCluster, start: Any, mode: str) -> None:
    proc = start(default_pool_size=4)
    default = own_pg.primary.psql("SHOW work_mem")
    base = {"fast": 10**7, "immediate": 2 * 10**7}[mode]
    with Load(proc, base) as load:
        wait_for(lambda: len(load.acked) > 50, "writes before the restart", timeout=BOUND)
        own_pg.primary.stop(mode)
        time.sleep(1)
        own_pg.primary.start()
        seen = len(load.acked)
        wait_for(lambda: len(load.acked) > seen + 50, "writes after the restart", timeout=BOUND)
    assert load.hangs == []
    # The restart reached pgmux (its servers were closed under it); clients in a transaction then got an
    # error, and those between transactions may have waited it out (pgmux retries the server soon).
    assert re.search(r"S-\d+ \S+ closing because", proc.log()), "the restart went unnoticed: nothing was tested"
    # A login while PostgreSQL restarts may be refused, with an error (FATAL), never a dropped socket.
    assert all(e[:2] in ("08", "57") or (e.startswith("login: ") and "FATAL:" in e) for e in load.errors), load.errors
    lost = {i for i in load.acked if i >= base} - committed(own_pg)
    assert lost == set(), f"{len(lost)} acknowledged commits lost"
    the_next_client_finds_a_clean_server(start(), default)


# -- a server that says FATAL right after its reply ------------------------------------------------------

SLOW = {"plain": "SELECT 7 FROM pg_sleep(0.5)",
        "watched": "SELECT 7 FROM pg_sleep(0.5), set_config('work_mem', '5MB', false)"}  # (a SET by another name)


@pytest.mark.parametrize("mode,query", [("transaction", "plain"), ("transaction", "watched"), ("session", "plain")])
def test_fatal_after_the_reply_in_the_same_read(own_pg: PgCluster, start: Any, mode: str, query: str) -> None:
    """A server that finishes a reply and is then terminated (fast shutdown, pg_terminate_backend) sends
    ReadyForQuery and FATAL 57P01 back to back; pgmux can read both at once. Made certain here: pgmux is
    stopped (SIGSTOP) while its server answers and is then terminated. In transaction mode the client's
    transaction was over: it gets its reply, no error, no notice, and its next query runs on another
    server. In session mode its server is gone: the next query fails, as it would on PostgreSQL. A query
    that changes session state is watched: its reply takes the relay that reads replies (session/replies.py)."""
    proc = start(pool_mode=mode)
    assert proc.proc is not None
    notices: list[str] = []
    with connect(proc) as c:
        c.add_notice_handler(lambda d: notices.append(f"{d.severity}: {d.message_primary}"))
        pid = c.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
        with ThreadPoolExecutor(1) as ex:
            reply = ex.submit(lambda: c.execute(SLOW[query]).fetchone()[0])
            time.sleep(0.2)  # the query is on the server
            os.kill(proc.proc.pid, signal.SIGSTOP)
            try:
                def state() -> str:
                    return own_pg.primary.psql(f"SELECT state FROM pg_stat_activity WHERE pid = {pid}", db="faults")
                wait_for(lambda: state() == "idle", "the reply sent", timeout=BOUND)
                own_pg.primary.psql(f"SELECT pg_terminate_backend({pid})", db="faults")
                wait_for(lambda: state() == "", "the server gone", timeout=BOUND)
            finally:
                os.kill(proc.proc.pid, signal.SIGCONT)
            assert reply.result(timeout=BOUND) == 7
        if mode == "transaction":
            assert c.execute("SELECT 1").fetchone() == (1,)
            assert notices == []
        else:
            assert error_class(c.execute, "SELECT 1")[:2] in ("08", "57", "")
    if mode == "transaction":  # (the log is written in batches)
        wait_for(lambda: re.search(r"S-\d+ \S+ closing because: server close needed", proc.log()),
                 "the server closed for its FATAL", timeout=BOUND)


# -- a server that stalls mid-reply --------------------------------------------------------------------------

def test_stalled_server_gets_query_timeout(own_pg: PgCluster, start: Any) -> None:
    proc = start(query_timeout=2)
    default = own_pg.primary.psql("SHOW work_mem")
    with connect(proc) as c:
        pid = c.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
        os.kill(pid, signal.SIGSTOP)  # the server stops answering, its socket stays open
        try:
            t0 = time.monotonic()
            with pytest.raises(psycopg.OperationalError) as info:
                bounded(c.execute, "SELECT 1")
            took = time.monotonic() - t0
        finally:
            os.kill(pid, signal.SIGCONT)
    assert info.value.sqlstate == "08P01" and "query timeout" in str(info.value), info.value
    assert took < 2 + 10
    the_next_client_finds_a_clean_server(proc, default)
    # pgmux closed the stalled connection: resumed, the backend reads the EOF and exits.
    wait_for(lambda: own_pg.primary.psql(f"SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}") == "0",
             "the stalled backend to go away", timeout=BOUND)


def test_server_stalling_mid_reply_gets_query_timeout(own_pg: PgCluster, start: Any) -> None:
    """Some 50 kB of rows arrive (PostgreSQL flushes every 8 kB), then the server stops sending."""
    proc = start(query_timeout=2)
    default = own_pg.primary.psql("SHOW work_mem")
    sql = ("SELECT g, repeat('x', 1000) FROM generate_series(1, 100) g, "
           "LATERAL (SELECT pg_sleep(CASE WHEN g = 50 THEN 8 ELSE 0 END)) s")
    with connect(proc) as c:
        t0 = time.monotonic()
        with pytest.raises(psycopg.OperationalError) as info:
            bounded(c.execute, sql)
        took = time.monotonic() - t0
    assert info.value.sqlstate == "08P01" and "query timeout" in str(info.value), info.value
    assert took < 7, f"{took:.1f}s: the stall (8 s) ended before pgmux's query_timeout (2 s) did"
    the_next_client_finds_a_clean_server(proc, default)
    # The stalled backend was closed by pgmux, not kept: PostgreSQL notices at its next write and ends it.
    wait_for(lambda: own_pg.primary.psql("SELECT count(*) FROM pg_stat_activity WHERE query LIKE "
                                         "'%generate_series(1, 100)%' AND pid <> pg_backend_pid()") == "0",
             "the stalled backend to go away", timeout=BOUND)


# -- clients that vanish --------------------------------------------------------------------------------------

def raw_login(proc: PgmuxProc, user: str) -> socket.socket:
    s = socket.create_connection((proc.host, proc.port), timeout=BOUND)
    s.sendall(m.startup_message({"user": user, "database": "faults"}))
    until_ready(s)
    return s


def until_ready(s: socket.socket) -> bytes:
    data = b""
    while not data.endswith((b"Z\0\0\0\5I", b"Z\0\0\0\5T", b"Z\0\0\0\5E")):
        chunk = s.recv(65536)
        assert chunk, f"connection closed: {data!r}"
        data += chunk
        if b"G\0\0\0" in data:  # CopyInResponse: the server waits for our rows
            return data
    return data


def vanish(s: socket.socket) -> None:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST, no goodbye
    s.close()


@pytest.mark.parametrize("where", ["transaction", "copy"])
def test_client_vanishes(own_pg: PgCluster, start: Any, where: str) -> None:
    proc = start()
    default = own_pg.primary.psql("SHOW work_mem")
    a = {"transaction": 3000, "copy": 4000}[where]  # ids of this case
    s = raw_login(proc, own_pg.superuser)
    s.sendall(m.query("SET work_mem = '7MB'"))
    until_ready(s)
    s.sendall(m.query(f"BEGIN; INSERT INTO acked VALUES ({a + 1})"))
    until_ready(s)
    if where == "copy":
        s.sendall(m.query("COPY acked FROM STDIN"))
        until_ready(s)
        s.sendall(m.message(m.COPY_DATA, f"{a + 2}\n{a + 3}\n".encode()))
    vanish(s)
    the_next_client_finds_a_clean_server(proc, default)
    ids = committed(own_pg)
    assert not ids & {a + 1, a + 2, a + 3}
    # No lock left either: the row the vanished client inserted can be inserted now.
    with connect(proc) as c:
        bounded(c.execute, f"INSERT INTO acked VALUES ({a + 1})")
    assert a + 1 in committed(own_pg)
