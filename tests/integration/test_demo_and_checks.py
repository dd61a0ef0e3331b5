"""`pgmux demo` end to end, and server_check_query on servers idle past server_check_delay."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from typing import Any

import psycopg

from pgmux.testing.cluster import PgCluster, free_port


def test_demo_starts_primary_replica_and_pooler_then_removes_everything() -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pgmux", "demo", "--port", str(port), "--timeout", "120"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 90
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Press Ctrl-C" in line:
                break
        out = "".join(lines)
        assert "Press Ctrl-C" in out, out
        assert f"psql -h 127.0.0.1 -p {port} -U postgres app" in out
        config_dir = os.path.dirname(re.search(r"Config:\s+(\S+)", out).group(1))  # type: ignore[union-attr]
        dsn = f"host=127.0.0.1 port={port} user=postgres connect_timeout=5"
        with psycopg.connect(f"{dsn} dbname=app", autocommit=True) as conn:
            # The split: an autocommit read on the replica, a write and a transaction on the primary.
            assert conn.execute("select pg_is_in_recovery()").fetchone() == (True,)
            assert conn.execute("select count(*) from greetings").fetchone()[0] >= 1  # type: ignore[index]
            conn.execute("insert into greetings (msg) values ('from the demo test')")
            with conn.transaction():
                assert conn.execute("select pg_is_in_recovery()").fetchone() == (False,)
        with psycopg.connect(f"{dsn} dbname=pgbouncer", autocommit=True,
                             cursor_factory=psycopg.ClientCursor) as conn:
            hosts = {(r[3], r[5]) for r in conn.execute("SHOW HOSTS").fetchall() if r[0] == "app"}
            assert hosts == {("primary", "up"), ("replica", "up")}, hosts
            cur = conn.execute("SHOW POOLS")
            role = [d.name for d in cur.description or []].index("role")
            pools = {(r[0], r[role]) for r in cur.fetchall()}
            assert {("app", "primary"), ("app", "replica")} <= pools, pools
        assert os.path.isdir(config_dir)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        assert not os.path.exists(config_dir), "demo left its temporary directory behind"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_idle_servers_are_checked_after_server_check_delay(pg: PgCluster, pgmux_factory: Any) -> None:
    pg.primary.psql("create table if not exists check_log (id serial primary key, at timestamptz default now())",
                    db="testdb")
    pg.primary.psql("truncate check_log", db="testdb")
    proc = pgmux_factory(settings={"server_check_delay": 1,
                                   "server_check_query": "insert into check_log default values",
                                   "pool_mode": "transaction"})
    with psycopg.connect(proc.dsn(), autocommit=True, connect_timeout=5) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            n = int(pg.primary.psql("select count(*) from check_log", db="testdb"))
            if n >= 2:
                break
            time.sleep(0.2)
        assert n >= 2, "server_check_query never ran on the idle server"
        # The checked server is still good for queries.
        assert conn.execute("select 2").fetchone() == (2,)
    states = {r["state"] for r in proc.admin_dicts("SHOW SERVERS") if r["database"] == "testdb"}
    assert states <= {"idle", "tested", "active"}
