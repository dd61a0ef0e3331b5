"""`pgmux -R` (PgBouncer's online restart, runtime/reboot.py): a new process takes the listening sockets
over from the running one, whose clients move to it between transactions, on their own connections."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import psycopg
import pytest
from helpers import wait_for

from pgmux.testing.cluster import free_port, server_os_user
from pgmux.testing.procs import die_with_parent

CONNECT: dict[str, Any] = {"connect_timeout": 10, "autocommit": True}


def start_reboot(first: Any, *extra: str) -> tuple[subprocess.Popen[bytes], Path]:
    """`pgmux -R` on `first`'s configuration, logging to a file of its own."""
    flags = ["-u", server_os_user().name] if os.geteuid() == 0 else []
    log = first.workdir / "second.log"
    with open(log, "ab") as f:
        proc = subprocess.Popen(die_with_parent([sys.executable, "-m", "pgmux", *flags, *extra, "-R",
                                                 str(first.ini_path)]), stdout=f, stderr=f,
                                stdin=subprocess.DEVNULL, cwd=first.workdir)
    return proc, log


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGQUIT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_reboot_takes_over_the_port_and_the_clients(pgmux_factory: Any) -> None:
    """Clients with SET values and prepared statements, one of them running queries all along, go on on
    their own connections in the new process; the old one exits; new connections never fail; the pidfile
    names the new process."""
    first = pgmux_factory(settings={"pool_mode": "transaction", "max_prepared_statements": 100})
    pidfile = first.workdir / "pgmux.pid"
    metrics = f"127.0.0.1:{free_port()}"
    first.rewrite(settings={"pidfile": str(pidfile), "metrics_listen": metrics})
    first.stop()
    first.launch()
    wait_for(lambda: pidfile.exists() and pidfile.read_text().strip() == str(first.pid), "the first pidfile")
    conns = []
    for i in range(5):
        conn = psycopg.connect(first.dsn(), **CONNECT)
        conn.execute(f"SET application_name = 'kept{i}'")
        conn.execute("PREPARE sq(int) AS SELECT $1 * 3")
        conns.append(conn)
    busy = psycopg.connect(first.dsn(), **CONNECT)
    answered: list[int] = []
    errors: list[BaseException] = []
    stop_busy = threading.Event()

    def run() -> None:
        try:
            for n in range(100000):  # bounded by stop_busy and the test's time
                if stop_busy.is_set():
                    return
                assert busy.execute("SELECT %s::int", (n,)).fetchone() == (n,)
                answered.append(n)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            errors.append(e)

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    second, log = start_reboot(first)
    try:
        new_ok = 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and first.is_running():
            with psycopg.connect(first.dsn(), **CONNECT) as conn:  # never refused meanwhile
                assert conn.execute("SELECT 1").fetchone() == (1,)
            new_ok += 1
        assert not first.is_running(), log.read_text(errors="replace")[-3000:]
        assert second.poll() is None, log.read_text(errors="replace")[-3000:]
        stop_busy.set()
        runner.join(30)
        assert not errors, errors
        assert len(answered) > 10
        for i, conn in enumerate(conns):
            assert conn.execute("SHOW application_name").fetchone() == (f"kept{i}",)
            assert conn.execute("EXECUTE sq(14)").fetchone() == (42,)
        assert pidfile.read_text().strip() == str(second.pid)
        # metrics_listen went along: the new process answers there (the old one is gone)
        with urllib.request.urlopen(f"http://{metrics}/metrics", timeout=10) as r:
            assert b"pgbouncer_pools_client_active_connections" in r.read()
        # the Unix socket too: its file is the new process's (the old one neither removed it nor its listener)
        with psycopg.connect(host=str(first.workdir), port=first.port, dbname="testdb", user="postgres",
                             **CONNECT) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        # (its log lines are flushed at the janitor's next tick: the whole takeover can take 15 ms)
        wait_for(lambda: "-R: took over the listening sockets" in log.read_text(errors="replace"),
                 "the new process's log line", 10)
        moved = re.search(r"no client left \((\d+) handed over\), exiting", first.log())
        assert moved and int(moved.group(1)) >= 6, first.log()[-3000:]  # the 6 kept ones at least
        clients = [r for r in first.admin_dicts("SHOW CLIENTS") if r["database"] == "testdb"]
        assert len(clients) >= 6
        assert new_ok > 0
    finally:
        stop_busy.set()
        for conn in [*conns, busy]:
            conn.close()
        stop(second)


def test_reboot_without_a_running_pgmux_starts_normally(pgmux_factory: Any) -> None:
    first = pgmux_factory()
    first.stop()
    second, log = start_reboot(first)
    try:
        wait_for(lambda: "listening on" in log.read_text(errors="replace"), "the -R process listening", 30)
        assert "no pgmux listens at" in log.read_text(errors="replace")
        with psycopg.connect(first.dsn(), **CONNECT) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        stop(second)


def test_reboot_refused_with_workers_and_takeover_refused_over_tcp(pgmux_factory: Any) -> None:
    first = pgmux_factory()
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="Unix socket"):
        first.admin("TAKEOVER")  # over TCP: only pgmux -R, over the Unix socket as pgmux's own user
    first.rewrite(settings={"workers": 2})
    flags = ["-u", server_os_user().name] if os.geteuid() == 0 else []
    done = subprocess.run([sys.executable, "-m", "pgmux", *flags, "-R", str(first.ini_path)], capture_output=True,
                          text=True, timeout=30, stdin=subprocess.DEVNULL, cwd="/")
    assert done.returncode != 0 and "RESTART" in done.stderr, done.stderr
    assert first.is_running()
