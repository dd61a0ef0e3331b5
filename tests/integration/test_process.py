"""The pgmux process as an operator meets it: the three shutdowns of PgBouncer 1.25 under load (SIGINT
and SHUTDOWN WAIT_FOR_SERVERS, SIGTERM and SHUTDOWN WAIT_FOR_CLIENTS, a second signal), root refused
without -u, the pidfile of a running instance, the logfile reopened on SIGHUP with the time zone in
every line, and systemd's notifications."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from helpers import wait_for

from pgmux.testing.cluster import PgCluster, port_accepts, server_os_user

CONNECT: dict[str, Any] = {"connect_timeout": 5, "autocommit": True, "prepare_threshold": None}
CLIENTS = 6
ROUND_LIMIT = 3000  # bounds on each load loop: iterations...
TIME_LIMIT = 60.0  # ...and seconds


class Load:
    """CLIENTS threads, each looping BEGIN; INSERT (server clock); pg_sleep; COMMIT until stopped, an
    error, ROUND_LIMIT rounds or TIME_LIMIT seconds. Records the client-side outcome of each round."""

    def __init__(self, proc: Any, table: str, sleep: float = 0.02) -> None:
        self.proc, self.table, self.sleep = proc, table, sleep
        self.stop = threading.Event()
        self.committed = [0] * CLIENTS
        self.errors: list[BaseException | None] = [None] * CLIENTS
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(CLIENTS)]

    def _run(self, i: int) -> None:
        deadline = time.monotonic() + TIME_LIMIT
        try:
            with psycopg.connect(self.proc.dsn(), **CONNECT) as conn:
                for _ in range(ROUND_LIMIT):
                    if self.stop.is_set() or time.monotonic() > deadline:
                        return
                    with conn.transaction():
                        conn.execute(f"INSERT INTO {self.table} (client) VALUES (%s)", (i,))
                        conn.execute("SELECT pg_sleep(%s)", (self.sleep,))
                    self.committed[i] += 1
        except psycopg.Error as e:
            self.errors[i] = e

    def start(self) -> Load:
        for t in self.threads:
            t.start()
        wait_for(lambda: all(self.committed), "every load client to commit once", timeout=30)
        return self

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=TIME_LIMIT + 10)
        assert not any(t.is_alive() for t in self.threads)


def _table(pg: PgCluster, name: str) -> None:
    pg.primary.psql(f"DROP TABLE IF EXISTS {name}; CREATE TABLE {name} (id serial PRIMARY KEY, client int, "
                    f"at timestamptz NOT NULL DEFAULT clock_timestamp()); GRANT ALL ON {name} TO PUBLIC", db="testdb")


def _rows(pg: PgCluster, table: str, where: str = "true") -> int:
    return int(pg.primary.psql(f"SELECT count(*) FROM {table} WHERE {where}", db="testdb"))


@pytest.mark.parametrize("how", ["SIGINT", "SHUTDOWN WAIT_FOR_SERVERS"])
def test_wait_for_servers_under_load_exits_after_transactions_in_flight(pg: PgCluster, pgmux_factory: Any,
                                                                        how: str) -> None:
    _table(pg, "sd_servers")
    proc = pgmux_factory(settings={"pool_mode": "transaction", "default_pool_size": 4})
    assert proc.proc is not None
    load = Load(proc, "sd_servers").start()
    with psycopg.connect(proc.dsn(), **CONNECT) as held:
        held.execute("BEGIN")
        held.execute("INSERT INTO sd_servers (client) VALUES (-1)")  # in flight when the shutdown comes
        signalled = time.time()
        if how == "SIGINT":
            proc.signal(signal.SIGINT)
        else:
            assert proc.admin("SHUTDOWN WAIT_FOR_SERVERS") == []
        wait_for(lambda: not port_accepts(proc.host, proc.port), "the listener to close")
        cut = time.time()  # pgmux has taken the signal by now: no transaction may start after this
        # The transaction in flight goes on and commits; the process waits for it.
        held.execute("SELECT pg_sleep(0.5)")
        assert proc.is_running()
        held.execute("COMMIT")
    load.join()
    assert proc.proc.wait(timeout=20) == 0
    took = time.time() - signalled
    assert took < 20, took
    assert _rows(pg, "sd_servers", "client = -1") == 1
    # No transaction started after the shutdown began: each load client had at most one in flight then.
    late = _rows(pg, "sd_servers", f"client >= 0 AND at > to_timestamp({cut})")
    assert late <= CLIENTS, late
    # Every client was told, and every commit it saw is in the table (nothing committed half-way).
    assert all(isinstance(e, psycopg.OperationalError) for e in load.errors), load.errors
    assert _rows(pg, "sd_servers", "client >= 0") == sum(load.committed)
    assert "server connections dropped, exiting" in proc.log()


def test_sigterm_waits_for_clients_and_a_second_signal_exits(pg: PgCluster, pgmux_factory: Any) -> None:
    _table(pg, "sd_clients")
    proc = pgmux_factory(settings={"pool_mode": "transaction", "default_pool_size": 4})
    assert proc.proc is not None
    load = Load(proc, "sd_clients").start()
    try:
        proc.signal(signal.SIGTERM)
        wait_for(lambda: not port_accepts(proc.host, proc.port), "the listener to close")
        before = sum(load.committed)
        # Connected clients go on working (PgBouncer's "super safe shutdown"); new ones cannot come in.
        wait_for(lambda: sum(load.committed) > before + CLIENTS, "the connected clients to keep committing")
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(proc.dsn(), **CONNECT).close()
        assert proc.is_running()
        sent = time.monotonic()
        proc.signal(signal.SIGTERM)  # a second signal: exit now, clients or not
        assert proc.proc.wait(timeout=10) == 0
        assert time.monotonic() - sent < 10
    finally:
        load.join()
    assert "exiting now" in proc.log()
    assert all(isinstance(e, psycopg.OperationalError) for e in load.errors), load.errors


@pytest.mark.parametrize("how", ["SIGTERM", "SHUTDOWN WAIT_FOR_CLIENTS"])
def test_wait_for_clients_exits_when_the_last_client_leaves(pgmux_factory: Any, how: str) -> None:
    proc = pgmux_factory(settings={"pool_mode": "transaction"})
    assert proc.proc is not None
    with psycopg.connect(proc.dsn(), **CONNECT) as conn:
        if how == "SIGTERM":
            proc.signal(signal.SIGTERM)
        else:
            assert proc.admin("SHUTDOWN WAIT_FOR_CLIENTS") == []
        wait_for(lambda: not port_accepts(proc.host, proc.port), "the listener to close")
        for i in range(20):  # transactions go on, on pooled servers
            with conn.transaction():
                assert conn.execute("SELECT %s::int", (i,)).fetchone() == (i,)
        assert proc.is_running()
    assert proc.proc.wait(timeout=10) == 0
    assert "client connections dropped, exiting" in proc.log()


def test_console_stays_reachable_over_the_unix_socket_during_shutdown(pgmux_factory: Any) -> None:
    sock_dir = tempfile.mkdtemp(prefix="pgmux-sd-")
    os.chmod(sock_dir, 0o777)  # the pooler may run as another OS user
    try:
        proc = pgmux_factory(settings={"pool_mode": "transaction", "unix_socket_dir": sock_dir})
        assert proc.proc is not None
        with psycopg.connect(proc.dsn(), **CONNECT):
            proc.signal(signal.SIGTERM)
            wait_for(lambda: not port_accepts(proc.host, proc.port), "the TCP listener to close")
            with psycopg.connect(host=sock_dir, port=proc.port, dbname="pgbouncer", user="postgres",
                                 cursor_factory=psycopg.ClientCursor, **CONNECT) as admin:
                assert admin.execute("SHOW STATE").fetchall()
            with pytest.raises(psycopg.OperationalError, match="shutting down"):
                psycopg.connect(host=sock_dir, port=proc.port, dbname="testdb", user="postgres", **CONNECT).close()
        assert proc.proc.wait(timeout=10) == 0
    finally:
        shutil.rmtree(sock_dir, ignore_errors=True)


# -- start-up: root, -u, the pidfile ---------------------------------------------------------------

def _run_pgmux(args: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pgmux", *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, cwd="/")


def test_root_is_refused_without_u_and_u_switches(pgmux_factory: Any) -> None:
    proc = pgmux_factory()
    if os.geteuid() == 0:
        refused = _run_pgmux([str(proc.ini_path)])
        assert refused.returncode != 0
        assert "should not run as root" in refused.stderr and "-u USER" in refused.stderr, refused.stderr
        # The fixture started this one with -u: it runs as that user.
        user = server_os_user()
        with open(f"/proc/{proc.pid}/status") as f:
            uids = next(line.split()[1:] for line in f if line.startswith("Uid:"))
        assert set(uids) == {str(user.uid)}, uids
        with open(f"/proc/{proc.pid}/status") as f:
            gids = next(line.split()[1:] for line in f if line.startswith("Gid:"))
        assert set(gids) == {str(user.gid)}, gids
    else:
        refused = _run_pgmux(["-u", "root", str(proc.ini_path)])
        assert refused.returncode != 0 and "only root can" in refused.stderr, refused.stderr
    unknown = _run_pgmux(["-u", "no_such_os_user_x", str(proc.ini_path)])
    assert unknown.returncode != 0 and "no such OS user" in unknown.stderr


@pytest.mark.parametrize("daemon", [False, True], ids=["foreground", "daemon"])
def test_pidfile_of_a_running_instance_stops_a_second_one(pgmux_factory: Any, daemon: bool) -> None:
    first = pgmux_factory()
    pidfile = first.workdir / "pgmux.pid"
    logfile = first.workdir / "second.log"
    first.rewrite(settings={"pidfile": str(pidfile), "logfile": str(logfile)})
    pidfile.write_text(f"{first.pid}\n")  # as if `first` had written it: a running process
    flags = ["-u", server_os_user().name] if os.geteuid() == 0 else []
    second = _run_pgmux([*(["-d"] if daemon else []), *flags, str(first.ini_path)])
    assert second.returncode != 0, second
    assert "pidfile" in second.stderr and "running" in second.stderr and str(first.pid) in second.stderr
    assert pidfile.read_text().strip() == str(first.pid)  # left alone
    assert first.is_running()
    # A stale pidfile (its process is gone) is removed and the start goes on (here it fails later, on
    # the port the first instance holds).
    pidfile.write_text("999999999\n")
    third = _run_pgmux([*flags, str(first.ini_path)])
    assert third.returncode != 0 and "pidfile" not in third.stderr
    assert not pidfile.exists()


# -- the log ---------------------------------------------------------------------------------------

# PgBouncer's prefix: time with milliseconds and zone, [pid], level (LOG, WARNING, ERROR...).
LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} [A-Z][A-Za-z0-9+-]* \[\d+\] "
                  r"(LOG|DEBUG|WARNING|ERROR|FATAL) ")


def test_sighup_reopens_the_logfile_and_lines_carry_the_time_zone(pgmux_factory: Any) -> None:
    proc = pgmux_factory()
    logfile = proc.workdir / "rotated.log"
    proc.rewrite(settings={"logfile": str(logfile)})
    proc.reload()
    wait_for(lambda: logfile.exists() and "configuration reloaded" in logfile.read_text(), "the logfile")
    with psycopg.connect(proc.dsn(), **CONNECT) as conn:
        conn.execute("SELECT 1")
    wait_for(lambda: "login attempt" in logfile.read_text(), "a login in the logfile")
    # logrotate's create mode: move the file away, then HUP; pgmux must write to a new file by the name.
    moved = proc.workdir / "rotated.log.1"
    logfile.rename(moved)
    proc.reload()
    wait_for(lambda: logfile.exists(), "a new logfile")
    with psycopg.connect(proc.dsn(), **CONNECT) as conn:
        conn.execute("SELECT 2")
    wait_for(lambda: "login attempt" in logfile.read_text(), "the next login in the new logfile")
    old_size = moved.stat().st_size
    time.sleep(0.5)  # a tick flushes buffered lines: nothing more may land in the moved file
    assert moved.stat().st_size == old_size
    lines = [ln for ln in (moved.read_text() + logfile.read_text()).splitlines() if ln]
    assert lines and all(LINE.match(ln) for ln in lines), [ln for ln in lines if not LINE.match(ln)][:3]
    assert time.strftime("%Z") in lines[0]


# -- systemd ---------------------------------------------------------------------------------------

def test_sd_notify_ready_reloading_stopping(pgmux_factory: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    sock_dir = Path(tempfile.mkdtemp(prefix="pgmux-nt-"))
    os.chmod(sock_dir, 0o777)  # the pooler may run as another OS user
    path = sock_dir / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(str(path))
        os.chmod(path, 0o777)
        sock.settimeout(20)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        proc = pgmux_factory()
        assert proc.proc is not None
        ready = sock.recv(4096).decode()
        assert ready.splitlines()[0] == "READY=1" and f"MAINPID={proc.pid}" in ready
        proc.reload()
        reloading = sock.recv(4096).decode()
        assert reloading.startswith("RELOADING=1\nMONOTONIC_USEC=")
        assert int(reloading.split("MONOTONIC_USEC=")[1]) > 0
        assert sock.recv(4096).decode() == "READY=1"
        proc.signal(signal.SIGINT)
        assert sock.recv(4096).decode() == "STOPPING=1"
        assert proc.proc.wait(timeout=10) == 0
    finally:
        sock.close()
        import shutil

        shutil.rmtree(sock_dir, ignore_errors=True)
