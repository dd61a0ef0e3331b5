"""The pgmux process: signals (HUP reload, USR1 pause, USR2 resume, TERM/INT graceful shutdown), daemon
mode with logfile and pidfile, what the log says about each connection, a bad config, --version.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest
from helpers import backend_pid, guard, pool_row, wait_for

from pgmux import VERSION_STRING, __version__
from pgmux.testing.cluster import PgCluster, free_port, port_accepts, render_ini, render_userlist, server_os_user

CONNECT: dict[str, Any] = {"connect_timeout": 5, "autocommit": True, "prepare_threshold": None}


def connect(proc: Any, db: str = "testdb", user: str = "postgres", **kw: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(proc.dsn(db, user), **{**CONNECT, **kw})










@pytest.fixture
def threads() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=4) as ex:
        yield ex


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# -- signals ---------------------------------------------------------------------------------------

def test_sighup_reload_keeps_clients_and_applies_changes(pg: PgCluster, pgmux_factory: Any) -> None:
    proc = pgmux_factory(settings={"pool_mode": "transaction", "default_pool_size": 1})
    p = pg.primary
    conns = [connect(proc) for _ in range(3)]
    try:
        conns[0].execute("BEGIN")  # an open transaction across the reload
        pid0 = backend_pid(conns[0])
        proc.rewrite(databases={**proc.databases, "newdb": f"host={p.host} port={p.port} dbname=testdb"},
                     settings={"default_pool_size": 3})
        proc.reload()
        wait_for(lambda: any(r["name"] == "newdb" for r in proc.admin_dicts("SHOW DATABASES")), "newdb")
        dbs = {r["name"]: r for r in proc.admin_dicts("SHOW DATABASES")}
        assert dbs["testdb"]["pool_size"] == 3
        assert backend_pid(conns[0]) == pid0  # same server, same transaction
        conns[0].execute("COMMIT")
        # The larger pool serves three transactions at once now (pool_size 1 could not).
        for c in conns:
            c.execute("BEGIN")
        assert len({backend_pid(c) for c in conns}) == 3
        for c in conns:
            c.execute("COMMIT")
        with connect(proc, db="newdb") as new:
            assert new.execute("SELECT current_database()").fetchone() == ("testdb",)
        assert proc.is_running()
    finally:
        for c in conns:
            c.close()


def test_sigusr1_pauses_sigusr2_resumes(pgmux_factory: Any, threads: ThreadPoolExecutor) -> None:
    proc = pgmux_factory(settings={"pool_mode": "transaction"})
    with connect(proc) as conn, guard(proc):
        conn.execute("SELECT 1")
        proc.signal(signal.SIGUSR1)
        wait_for(lambda: {r["key"]: r["value"] for r in proc.admin_dicts("SHOW STATE")}["paused"] == "yes",
                 "SHOW STATE to say paused")
        job = threads.submit(lambda: conn.execute("SELECT 7").fetchone())
        wait_for(lambda: pool_row(proc)["cl_waiting"] == 1, "the query to queue")
        assert not job.done()
        proc.signal(signal.SIGUSR2)
        assert job.result(timeout=10) == (7,)
        assert {r["key"]: r["value"] for r in proc.admin_dicts("SHOW STATE")}["paused"] == "no"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_graceful_shutdown_finishes_open_transaction(pgmux_factory: Any, sig: int) -> None:
    proc = pgmux_factory(settings={"pool_mode": "transaction"})
    assert proc.proc is not None
    with connect(proc) as conn, guard(proc):
        conn.execute("BEGIN")
        conn.execute("SELECT 1")
        proc.signal(sig)
        # It stops accepting at once, but waits for the transaction.
        wait_for(lambda: not port_accepts(proc.host, proc.port), "the listener to close")
        time.sleep(0.3)
        assert proc.is_running(), "exited with a transaction still open"
        assert conn.execute("SELECT 2").fetchone() == (2,)
        conn.execute("COMMIT")
        if sig == signal.SIGTERM:
            # SIGTERM waits for the clients to leave (PgBouncer 1.23+): this one may go on working.
            assert conn.execute("SELECT 3").fetchone() == (3,)
            time.sleep(0.3)
            assert proc.is_running(), "SIGTERM exited with a client still connected"
    # SIGINT exits once the server is released; SIGTERM once the client has gone.
    assert proc.proc.wait(timeout=10) == 0
    log = proc.log()
    assert "shutting down" in log


def test_shutdown_without_clients_is_prompt(pgmux_factory: Any) -> None:
    proc = pgmux_factory()
    assert proc.proc is not None
    with connect(proc) as conn:
        conn.execute("SELECT 1")  # an idle session-mode client holds its server...
    proc.signal(signal.SIGTERM)  # ...but has left: nothing to wait for
    assert proc.proc.wait(timeout=10) == 0


# -- daemon mode and the log -----------------------------------------------------------------------

def os_user_dir(tmp_path: Path) -> tuple[Path, list[str]]:
    """A dir pgmux can write in, and the flags to start it with: as root, `-u` the cluster's OS user
    (pgmux refuses root) and a dir that user owns."""
    user = server_os_user()
    if not user.switch:
        return tmp_path, []
    d = Path(tempfile.mkdtemp(prefix="pgmux-lc-"))
    user.chown(str(d))
    return d, ["-u", user.name]


def test_daemon_mode_pidfile_and_log_identities(pg: PgCluster, tmp_path: Path) -> None:
    tmp_path, flags = os_user_dir(tmp_path)
    port = free_port()
    logfile, pidfile = tmp_path / "pgmux.log", tmp_path / "pgmux.pid"
    p = pg.primary
    ini = tmp_path / "pgbouncer.ini"
    (tmp_path / "userlist.txt").write_text(render_userlist({"postgres": ""}))
    ini.write_text(render_ini({"testdb": f"host={p.host} port={p.port} dbname=testdb"}, {
        "listen_addr": "127.0.0.1", "listen_port": port, "unix_socket_dir": "", "auth_type": "trust",
        "auth_file": str(tmp_path / "userlist.txt"), "admin_users": "postgres", "logfile": str(logfile),
        "pidfile": str(pidfile), "pool_mode": "transaction"}))
    launcher = subprocess.run([sys.executable, "-m", "pgmux", "-d", *flags, str(ini)], capture_output=True, text=True,
                              timeout=30, stdin=subprocess.DEVNULL)
    assert launcher.returncode == 0, launcher.stderr
    pid = 0
    try:
        wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), "the pid file")
        pid = int(pidfile.read_text().strip())
        assert alive(pid)  # the launcher exited; the daemon it forked runs on
        wait_for(lambda: port_accepts("127.0.0.1", port), "the daemon to listen")
        with psycopg.connect(f"host=127.0.0.1 port={port} dbname=testdb user=postgres", **CONNECT) as conn:
            conn.execute("SELECT 1")
            client_port = _local_port(conn)
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(f"host=127.0.0.1 port={port} dbname=nosuchdb user=postgres", **CONNECT).close()
        wait_for(lambda: "closing because" in logfile.read_text() and
                 f"@127.0.0.1:{client_port} closing" in logfile.read_text(), "the log of the disconnect")
    finally:
        if pid and alive(pid):
            os.kill(pid, signal.SIGTERM)
            wait_for(lambda: not alive(pid), "the daemon to exit")
    log = logfile.read_text()
    assert re.search(rf"C-\d+ testdb/postgres@127\.0\.0\.1:{client_port} ", log), log
    assert re.search(rf"S-\d+ testdb/postgres@127\.0\.0\.1:{p.port} ", log), log
    assert re.search(r"C-\d+ nosuchdb/postgres@127\.0\.0\.1:\d+ closing because: no such database", log), log
    closes = [line for line in log.splitlines() if "closing" in line]
    assert closes and all(re.search(r"closing because: \S", line) for line in closes), closes
    wait_for(lambda: not pidfile.exists(), "the pid file to be removed")
    if flags:
        shutil.rmtree(tmp_path, ignore_errors=True)


def _local_port(conn: psycopg.Connection[Any]) -> int:
    import socket

    sock = socket.socket(fileno=os.dup(conn.pgconn.socket))
    try:
        return int(sock.getsockname()[1])
    finally:
        sock.close()


# -- command line ----------------------------------------------------------------------------------

def test_unknown_config_key_fails_with_file_line_and_key(tmp_path: Path) -> None:
    ini = tmp_path / "bad.ini"
    ini.write_text("[databases]\ntestdb = host=127.0.0.1 port=5432\n\n[pgbouncer]\nlisten_port = 6432\n"
                   "no_such_setting = 1\n")
    proc = subprocess.run([sys.executable, "-m", "pgmux", str(ini)], capture_output=True, text=True, timeout=30,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode != 0
    assert f"{ini}:6" in proc.stderr and "no_such_setting" in proc.stderr, proc.stderr


def test_version_flag() -> None:
    proc = subprocess.run([sys.executable, "-m", "pgmux", "--version"], capture_output=True, text=True, timeout=30,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0
    # One string for `pgmux -V` and SHOW VERSION: PgBouncer's version first (monitoring parses it), ours after.
    assert proc.stdout.strip() == VERSION_STRING == f"PgBouncer 1.25.0 (pgmux {__version__})"
