"""The admin console through a real connection: who may use it, what SHOW returns (PgBouncer 1.25's
column names, which pgbouncer_exporter and dashboards read), and the commands that act on pools:
PAUSE/RESUME, DISABLE/ENABLE, KILL, RECONNECT, WAIT_CLOSE, RELOAD and SHUTDOWN.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
from helpers import backend_pid, guard, pool_row, servers, wait_for
from psycopg.rows import dict_row

from pgmux.testing.cluster import PgCluster

CONNECT: dict[str, Any] = {"connect_timeout": 5, "autocommit": True, "prepare_threshold": None}


def connect(proc: Any, db: str = "testdb", user: str = "postgres", password: str | None = None,
            **kw: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(proc.dsn(db, user, password), **{**CONNECT, **kw})


def console(proc: Any, user: str = "postgres", password: str | None = None, **kw: Any) -> psycopg.Connection[Any]:
    """A console connection that stays open (the fixture's admin() opens one per command)."""
    return psycopg.connect(proc.dsn("pgbouncer", user, password), cursor_factory=psycopg.ClientCursor,
                           **{**CONNECT, **kw})








def version(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute("SHOW VERSION").fetchone()
    assert row is not None
    return str(row[0])




@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=4) as ex:
        yield ex




def not_done_soon(fut: Future[Any], wait: float = 0.5) -> bool:
    """True if `fut` is still running after `wait`: used to show that something blocks."""
    time.sleep(wait)
    return not fut.done()


# -- who may use the console -----------------------------------------------------------------------

def test_admin_users_stats_users_and_strangers(pgmux_factory: Any) -> None:
    proc = pgmux_factory(settings={"auth_type": "md5", "admin_users": "postgres", "stats_users": "md5user"},
                         userlist={"postgres": "pgpass", "md5user": "md5pass", "passuser": "passpass"})
    with console(proc, "md5user", "md5pass") as stats, connect(proc, user="passuser", password="passpass") as app:
        rows = stats.execute("SHOW POOLS").fetchall()
        assert rows and stats.execute("SHOW STATS").fetchall()
        for command in ("PAUSE", "RESUME", "RELOAD", "DISABLE testdb", "KILL testdb", "SHUTDOWN"):
            with pytest.raises(psycopg.Error) as info:
                stats.execute(command)
            assert info.value.sqlstate == "08P01" and "admin access needed" in str(info.value), command
        # Refused commands leave the console session and the pooler as they were.
        assert version(stats).startswith("PgBouncer")
        assert app.execute("SELECT current_user").fetchone() == ("passuser",)
        with console(proc, "postgres", "pgpass") as admin:
            assert admin.execute("SHOW STATE").fetchall()
            with pytest.raises(psycopg.OperationalError, match="not allowed"):
                console(proc, "passuser", "passpass").close()
            with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
                console(proc, "postgres", "wrong").close()
            assert admin.execute("SHOW VERSION").fetchone()
        assert app.execute("SELECT 1").fetchone() == (1,)


def test_unix_socket_same_os_user_needs_no_password(pgmux_factory: Any) -> None:
    # A short dir: the fixture's default may be too long for a socket path. Open to all: the pooler may
    # run as another OS user (as root the fixture starts it with -u, see conftest.py).
    sock_dir = tempfile.mkdtemp(prefix="pgmux-sock-")
    os.chmod(sock_dir, 0o777)
    try:
        proc = pgmux_factory(settings={"auth_type": "md5", "unix_socket_dir": sock_dir},
                             userlist={"postgres": "pgpass"})
        # "pgbouncer" is the name PgBouncer requires for this; pgmux takes it too. The client must run as
        # the pooler's OS user: as that user, psql over the socket.
        out = _psql_as(proc.owner, ["-h", sock_dir, "-p", str(proc.port), "-U", "pgbouncer", "-d", "pgbouncer",
                                    "-c", "SHOW VERSION", "-c", "PAUSE", "-c", "RESUME"])  # full admin rights
        assert out.startswith("PgBouncer"), out
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(proc.dsn("pgbouncer", "pgbouncer", "guess"), **CONNECT).close()
        if proc.owner is not None:  # another OS user over the same socket is not let in without a password
            with pytest.raises(psycopg.OperationalError):
                psycopg.connect(host=sock_dir, port=proc.port, dbname="pgbouncer", user="pgbouncer",
                                **CONNECT).close()
    finally:
        shutil.rmtree(sock_dir, ignore_errors=True)


def _psql_as(owner: tuple[int, int] | None, args: list[str]) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    kwargs: dict[str, Any] = {} if owner is None else {"user": owner[0], "group": owner[1], "extra_groups": []}
    proc = subprocess.run(["psql", "-X", "-A", "-t", "-w", *args], capture_output=True, text=True, timeout=30,
                          env=env, stdin=subprocess.DEVNULL, cwd="/", **kwargs)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


# -- SHOW ------------------------------------------------------------------------------------------

SOCKET_COLUMNS = ["type", "user", "database", "replication", "state", "addr", "port", "local_addr",
                  "local_port", "connect_time", "request_time", "wait", "wait_us", "close_needed", "ptr",
                  "link", "remote_pid", "tls", "application_name", "prepared_statements", "id"]
POOLS_COLUMNS = ["database", "user", "cl_active", "cl_waiting", "cl_active_cancel_req",
                 "cl_waiting_cancel_req", "sv_active", "sv_active_cancel", "sv_being_canceled", "sv_idle",
                 "sv_used", "sv_tested", "sv_login", "maxwait", "maxwait_us", "pool_mode", "load_balance_hosts"]
KEY_COLUMNS = {
    "VERSION": ["version"],
    "DATABASES": ["name", "host", "port", "database", "force_user", "pool_size", "min_pool_size",
                  "reserve_pool_size", "server_lifetime", "pool_mode", "max_connections",
                  "current_connections", "paused", "disabled"],
    "USERS": ["name", "pool_size", "reserve_pool_size", "pool_mode", "max_user_connections",
              "current_connections"],
    "STATS": ["database", "total_xact_count", "total_query_count", "total_received", "total_sent",
              "total_xact_time", "total_query_time", "total_wait_time", "avg_xact_count", "avg_query_count",
              "avg_recv", "avg_sent", "avg_xact_time", "avg_query_time", "avg_wait_time"],
    "CONFIG": ["key", "value", "default", "changeable"],
    "LISTS": ["list", "items"],
}


def test_show_commands_use_pgbouncer_columns(pg: PgCluster, pgmux_factory: Any) -> None:
    proc = pgmux_factory(settings={"pool_mode": "session", "default_pool_size": 7})
    with connect(proc, application_name="show-test") as client, console(proc) as admin:
        pid = backend_pid(client)
        for _ in range(3):
            client.execute("SELECT 1")

        def show(what: str) -> tuple[list[str], list[dict[str, Any]]]:
            cur = admin.cursor(row_factory=dict_row)
            cur.execute(f"SHOW {what}")
            assert cur.description is not None, what
            return [c.name for c in cur.description], cur.fetchall()

        cols, rows = show("POOLS")
        assert cols == POOLS_COLUMNS + ["host", "role", "pool_size"]  # pgmux's own columns, after all of PgBouncer's
        (p,) = [r for r in rows if r["database"] == "testdb"]
        assert (p["user"], p["cl_active"], p["sv_active"], p["pool_mode"]) == ("postgres", 1, 1, "session")

        cols, rows = show("CLIENTS")
        assert cols == SOCKET_COLUMNS + ["pin"]  # pgmux's own column, after all of PgBouncer's
        mine = [r for r in rows if r["database"] == "testdb"]
        assert len(mine) == 1
        assert mine[0]["type"] == "C" and mine[0]["user"] == "postgres" and mine[0]["addr"] == "127.0.0.1"
        assert mine[0]["application_name"] == "show-test" and mine[0]["link"]
        assert mine[0]["local_port"] == proc.port

        cols, rows = show("SERVERS")
        assert cols == SOCKET_COLUMNS + ["role"]  # pgmux's own column, after all of PgBouncer's
        (srv,) = [r for r in rows if r["database"] == "testdb"]
        assert srv["type"] == "S" and srv["state"] == "active" and srv["remote_pid"] == pid
        assert srv["port"] == pg.primary.port and srv["link"] == mine[0]["ptr"]

        for what, wanted in KEY_COLUMNS.items():
            cols, rows = show(what)
            missing = [c for c in wanted if c not in cols]
            assert not missing, f"SHOW {what} lacks {missing}; has {cols}"
            assert rows, what

        _, rows = show("VERSION")
        assert rows[0]["version"].startswith("PgBouncer 1.25")
        _, rows = show("DATABASES")
        db = next(r for r in rows if r["name"] == "testdb")
        assert (db["host"], db["port"], db["database"], db["pool_size"]) == ("127.0.0.1", pg.primary.port,
                                                                              "testdb", 7)
        assert db["current_connections"] == 1 and db["paused"] == 0 and db["disabled"] == 0
        _, rows = show("USERS")
        assert any(r["name"] == "postgres" for r in rows)
        _, rows = show("STATS")
        st = next(r for r in rows if r["database"] == "testdb")
        assert int(st["total_query_count"]) >= 4 and int(st["total_xact_count"]) >= 4
        assert int(st["total_received"]) > 0 and int(st["total_sent"]) > 0
        _, rows = show("CONFIG")
        conf = {r["key"]: r for r in rows}
        assert conf["listen_port"]["value"] == str(proc.port) and conf["listen_port"]["changeable"] == "no"
        assert conf["default_pool_size"]["value"] == "7" and conf["default_pool_size"]["default"] == "20"
        assert conf["pool_mode"]["changeable"] == "yes"
        _, rows = show("LISTS")
        lists = {r["list"]: int(r["items"]) for r in rows}
        assert {"databases", "users", "pools", "free_clients", "used_clients", "login_clients",
                "free_servers", "used_servers"} <= set(lists)
        assert lists["databases"] >= 2 and lists["pools"] >= 1 and lists["used_servers"] >= 1

        notices: list[str] = []
        admin.add_notice_handler(lambda d: notices.append(f"{d.message_primary}\n{d.message_detail}"))
        admin.execute("SHOW HELP")
        assert notices and "Console usage" in notices[0] and "SHOW" in notices[0] and "PAUSE" in notices[0]
        with pytest.raises(psycopg.Error) as info:
            admin.execute("SHOW NONSENSE")
        assert info.value.sqlstate == "08P01"
        assert admin.execute("SHOW VERSION").fetchone()
        assert client.execute("SELECT 1").fetchone() == (1,)


# -- commands --------------------------------------------------------------------------------------

def test_pause_waits_for_transactions_then_queues_until_resume(pgmux_factory: Any,
                                                               pool: ThreadPoolExecutor) -> None:
    proc = pgmux_factory(settings={"pool_mode": "transaction"})
    with connect(proc) as a, connect(proc) as b, console(proc) as admin, guard(proc):
        b.execute("SELECT 1")
        a.execute("BEGIN")
        a.execute("SELECT 1")
        pause = pool.submit(admin.execute, "PAUSE")
        assert not_done_soon(pause), "PAUSE returned while a transaction was open"
        a.execute("SELECT 2")  # the open transaction goes on
        a.execute("COMMIT")
        pause.result(timeout=10)
        assert servers(proc) == [], "PAUSE leaves no server connections"
        assert {r["key"]: r["value"] for r in proc.admin_dicts("SHOW STATE")}["paused"] == "yes"
        queued = pool.submit(lambda: b.execute("SELECT 42").fetchone())
        wait_for(lambda: pool_row(proc)["cl_waiting"] == 1, "the query to queue")
        assert not queued.done()
        proc.admin("RESUME")
        assert queued.result(timeout=10) == (42,)
        assert a.execute("SELECT 3").fetchone() == (3,)


def test_disable_refuses_new_connections_enable_allows(pgmux_factory: Any) -> None:
    proc = pgmux_factory()
    with connect(proc) as old:
        proc.admin("DISABLE testdb")
        assert next(r for r in proc.admin_dicts("SHOW DATABASES") if r["name"] == "testdb")["disabled"] == 1
        with pytest.raises(psycopg.OperationalError, match='database "testdb" is disabled'):  # PgBouncer's words
            connect(proc).close()
        assert old.execute("SELECT 1").fetchone() == (1,)  # connected clients are not touched
        with connect(proc, db="postgres") as other:  # nor other databases
            assert other.execute("SELECT 1").fetchone() == (1,)
        proc.admin("ENABLE testdb")
        with connect(proc) as new:
            assert new.execute("SELECT 2").fetchone() == (2,)


def test_kill_drops_clients_and_servers_of_one_database(pgmux_factory: Any) -> None:
    proc = pgmux_factory()
    with connect(proc) as victim, connect(proc, db="postgres") as other:
        victim.execute("SELECT 1")
        proc.admin("KILL testdb")
        with pytest.raises(psycopg.OperationalError):
            victim.execute("SELECT 1")
        assert servers(proc) == []
        assert other.execute("SELECT 1").fetchone() == (1,)
        assert next(r for r in proc.admin_dicts("SHOW DATABASES") if r["name"] == "testdb")["paused"] == 1
        proc.admin("RESUME testdb")
        with connect(proc) as new:
            assert new.execute("SELECT 2").fetchone() == (2,)


def test_reconnect_and_wait_close(pgmux_factory: Any, pool: ThreadPoolExecutor) -> None:
    proc = pgmux_factory(settings={"pool_mode": "transaction"})
    with connect(proc) as a, connect(proc) as b, console(proc) as admin, guard(proc):
        a.execute("BEGIN")
        busy_pid = backend_pid(a)
        b.execute("BEGIN")
        idle_pid = backend_pid(b)
        b.execute("COMMIT")  # its server goes back to the pool, idle
        assert busy_pid != idle_pid
        admin.execute("RECONNECT testdb")
        # The idle server goes at once; the busy one is marked and kept until its transaction ends.
        rows = wait_for(lambda: (lambda r: r if len(r) == 1 else None)(servers(proc)), "the idle server to go")
        assert rows[0]["remote_pid"] == busy_pid and rows[0]["close_needed"] == 1
        wait_close = pool.submit(admin.execute, "WAIT_CLOSE testdb")
        assert not_done_soon(wait_close), "WAIT_CLOSE returned while an old server was still in use"
        assert backend_pid(a) == busy_pid  # the transaction keeps its server
        a.execute("COMMIT")
        wait_close.result(timeout=10)
        assert backend_pid(a) not in (busy_pid, idle_pid)
        assert backend_pid(b) not in (busy_pid, idle_pid)


def test_reload_command_applies_new_settings(pgmux_factory: Any) -> None:
    proc = pgmux_factory(settings={"default_pool_size": 4})
    with connect(proc) as client:
        client.execute("SELECT 1")
        proc.rewrite(settings={"default_pool_size": 9})
        proc.admin("RELOAD")
        assert next(r for r in proc.admin_dicts("SHOW DATABASES") if r["name"] == "testdb")["pool_size"] == 9
        conf = {r["key"]: r["value"] for r in proc.admin_dicts("SHOW CONFIG")}
        assert conf["default_pool_size"] == "9"
        assert client.execute("SELECT 2").fetchone() == (2,)


def test_shutdown_command_stops_the_pooler(pgmux_factory: Any) -> None:
    proc = pgmux_factory()
    with connect(proc) as client:
        client.execute("SELECT 1")
    try:
        proc.admin("SHUTDOWN")
    except psycopg.OperationalError:
        pass  # PgBouncer closes the console connection as it exits; an OK is fine too
    assert proc.proc is not None
    assert proc.proc.wait(timeout=10) == 0
    with pytest.raises(psycopg.OperationalError):
        connect(proc).close()


def test_console_survives_bad_commands(pgmux_factory: Any) -> None:
    proc = pgmux_factory()
    with console(proc) as admin:
        for bad in ("SHOW", "PAUSE nosuchdb", "DISABLE", "FROBNICATE", "SHOW POOLS;;"):
            with pytest.raises(psycopg.Error) as info:
                admin.execute(bad)
            assert info.value.sqlstate == "08P01", bad
        assert admin.execute("SHOW VERSION").fetchone()
