"""workers = 2 (issue 14): one console over both workers: commands that act on every worker, SHOW summed
and listed across workers. Helpers from test_workers.py (SIGSTOP steers a connection to one worker)."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from helpers import wait_for
from test_workers import CONNECT, connect_on, only_on, start


def _console(proc: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(host=proc.host, port=proc.port, dbname="pgbouncer", user="postgres", autocommit=True,
                           connect_timeout=10, cursor_factory=psycopg.ClientCursor)


def test_console_with_workers(pgmux_factory: Any) -> None:
    proc = start(pgmux_factory)
    notices: list[str] = []
    with _console(proc) as admin:
        admin.add_notice_handler(lambda d: notices.append(d.message_primary))
        admin.execute("SHOW CONFIG")  # not merged: this worker's, after a NOTICE
        assert any("this console is on worker" in n and "this worker's only" in n for n in notices), notices
        admin.execute("SET default_pool_size = 5")  # every worker's
        with pytest.raises(psycopg.Error) as err:  # refused by each: one error
            admin.execute("SET default_pool_size = many")
        assert "SET failed" in str(err.value)
        admin.execute("PAUSE")  # every worker pauses: a new client on either waits
    for i in (0, 1):
        with only_on(proc, i):
            blocked = _try(proc, "SELECT 1", connect_timeout=3)
        assert blocked is not None and "timeout" in blocked.lower(), blocked
    with _console(proc) as admin:
        admin.execute("RESUME")
    for i in (0, 1):
        with only_on(proc, i), psycopg.connect(proc.dsn(), **CONNECT) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        with only_on(proc, i), _console(proc) as console:
            config = {r[0]: r[1] for r in console.execute("SHOW CONFIG").fetchall()}
        assert config["default_pool_size"] == "5", (i, config["default_pool_size"])
    with _console(proc) as admin:
        admin.execute("DISABLE testdb")  # the pools of testdb on both workers
    for i in (0, 1):
        with only_on(proc, i):
            refused = _try(proc, "SELECT 1", connect_timeout=5)
        assert refused is not None and "disabled" in refused, refused
    with _console(proc) as admin:
        admin.execute("ENABLE testdb")
    for i in (0, 1):
        with only_on(proc, i):
            assert _try(proc, "SELECT 1", connect_timeout=5) is None
    # RELOAD through one console reaches every worker: a database added to the file works on both
    proc.rewrite(databases={**proc.databases, "again": proc.databases["testdb"]})
    proc.admin("RELOAD")
    for i in (0, 1):
        with only_on(proc, i):
            conn = wait_for(lambda: _try_connect_db(proc, "again"), f"database again on worker {i}")
        conn.close()
    with _console(proc) as admin:
        admin.execute("SHUTDOWN WAIT_FOR_SERVERS")
    assert proc.proc.wait(30) == 0  # the supervisor and both workers are gone
    assert "supervisor: got SIGINT" in proc.log()


def _try(proc: Any, sql: str, connect_timeout: int) -> str | None:
    """None if `sql` ran, else the error text."""
    try:
        with psycopg.connect(proc.dsn(), autocommit=True, connect_timeout=connect_timeout,
                             options="-c statement_timeout=0") as conn:
            conn.execute(sql)
        return None
    except psycopg.Error as e:
        return str(e) or type(e).__name__


def _try_connect_db(proc: Any, db: str) -> psycopg.Connection[Any] | None:
    try:
        return psycopg.connect(proc.dsn(db=db), **CONNECT)
    except psycopg.OperationalError:
        return None


def test_show_sums_and_lists_every_worker(pgmux_factory: Any) -> None:
    proc = start(pgmux_factory, pool_mode="transaction")
    clients = [connect_on(proc, i) for i in (0, 1, 1)]
    try:
        for c in clients:
            c.execute("SELECT 1")
        pools = [r for r in proc.admin_dicts("SHOW POOLS") if r["database"] == "testdb"]
        assert len(pools) == 1, pools  # one row for the pooler's one pool
        assert pools[0]["cl_active"] == 3
        rows = [r for r in proc.admin_dicts("SHOW CLIENTS") if r["database"] == "testdb"]
        assert sorted(r["worker"] for r in rows) == ["0", "1", "1"]
        servers = proc.admin_dicts("SHOW SERVERS")
        assert servers and {r["worker"] for r in servers} <= {"0", "1"}
        assert list(servers[0])[-1] == "worker"
        stats = [r for r in proc.admin_dicts("SHOW STATS") if r["database"] == "testdb"]
        assert len(stats) == 1 and stats[0]["total_xact_count"] >= 3
        # one row per name, the connection counts of both workers, the shared configuration once
        dbs = [r for r in proc.admin_dicts("SHOW DATABASES") if r["name"] == "testdb"]
        assert len(dbs) == 1 and dbs[0]["current_client_connections"] == 3, dbs
        assert dbs[0]["pool_size"] == 20, dbs  # default_pool_size, not summed
        users = [r for r in proc.admin_dicts("SHOW USERS") if r["name"] == "postgres"]
        assert len(users) == 1 and users[0]["current_client_connections"] >= 3, users
        assert {r["key"]: r["value"] for r in proc.admin_dicts("SHOW STATE")}["active"] == "yes"
        totals = {r["name"]: r["value"] for r in proc.admin_dicts("SHOW TOTALS")}
        assert int(totals["total_xact_count"]) >= 3, totals
        assert len({r["name"] for r in proc.admin_dicts("SHOW MEM")}) == len(proc.admin_dicts("SHOW MEM"))
    finally:
        for c in clients:
            c.close()
