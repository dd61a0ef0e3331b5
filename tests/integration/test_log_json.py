"""log_format = json in a real pgmux: in daemon mode (-d, logfile), every line of the logfile is one JSON
object, and the lines about a client and its server carry their identities as fields."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from helpers import wait_for
from test_lifecycle import alive, os_user_dir

from pgmux.testing.cluster import PgCluster, free_port, port_accepts, render_ini, render_userlist


def test_daemon_mode_writes_json_lines_with_identities(pg: PgCluster, tmp_path: Path) -> None:
    tmp_path, flags = os_user_dir(tmp_path)
    port = free_port()
    logfile, pidfile = tmp_path / "pgmux.log", tmp_path / "pgmux.pid"
    p = pg.primary
    ini = tmp_path / "pgbouncer.ini"
    (tmp_path / "userlist.txt").write_text(render_userlist({"postgres": ""}))
    ini.write_text(render_ini({"testdb": f"host={p.host} port={p.port} dbname=testdb"}, {
        "listen_addr": "127.0.0.1", "listen_port": port, "unix_socket_dir": "", "auth_type": "trust",
        "auth_file": str(tmp_path / "userlist.txt"), "admin_users": "postgres", "logfile": str(logfile),
        "pidfile": str(pidfile), "pool_mode": "transaction", "log_format": "json"}))
    launcher = subprocess.run([sys.executable, "-m", "pgmux", "-d", *flags, str(ini)], capture_output=True,
                              text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert launcher.returncode == 0, launcher.stderr
    pid = 0
    try:
        wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), "the pid file")
        pid = int(pidfile.read_text().strip())
        wait_for(lambda: port_accepts("127.0.0.1", port), "the daemon to listen")
        with psycopg.connect(f"host=127.0.0.1 port={port} dbname=testdb user=postgres", autocommit=True,
                             connect_timeout=5) as conn:
            conn.execute("SELECT 1")
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(f"host=127.0.0.1 port={port} dbname=nosuchdb user=postgres", connect_timeout=5).close()
        wait_for(lambda: "no such database" in logfile.read_text(), "the refusal in the log")
    finally:
        if pid and alive(pid):
            os.kill(pid, signal.SIGTERM)
            wait_for(lambda: not alive(pid), "the daemon to exit")
    lines = [json.loads(line) for line in logfile.read_text().splitlines()]  # every line is JSON
    assert lines and all({"ts", "pid", "level", "msg"} <= set(d) for d in lines)
    assert all(d["pid"] == pid for d in lines)
    client = [d for d in lines if d.get("kind") == "client" and d.get("database") == "testdb"]
    assert any(d["msg"].startswith("login attempt") and d["user"] == "postgres" and
               d["addr"].startswith("127.0.0.1:") for d in client), client
    server = [d for d in lines if d.get("kind") == "server"]
    assert any(d["msg"].startswith("new connection to server") and d["addr"] == f"{p.host}:{p.port}"
               for d in server), server
    refused = [d for d in lines if d.get("database") == "nosuchdb"]
    assert any(d["msg"].startswith("closing because: no such database") for d in refused), refused
    assert any(d["msg"] == "pgmux stopped" and "conn" not in d for d in lines)
    if flags:
        shutil.rmtree(tmp_path, ignore_errors=True)
