"""The admin console's SET (applied at once, refused with a reason, gone at the next RELOAD) and the SHOW
results beyond the per-pool ones: TOTALS, SOCKETS, ACTIVE_SOCKETS, MEM, LISTS, DNS_HOSTS, DNS_ZONES,
STATS' login counts and its admin-database row, and VERSION."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
from helpers import guard, pool_row, wait_for
from psycopg.rows import dict_row

from pgmux import VERSION_STRING

CONNECT: dict[str, Any] = {"connect_timeout": 5, "autocommit": True, "prepare_threshold": None}


def connect(proc: Any, db: str = "testdb") -> psycopg.Connection[Any]:
    return psycopg.connect(proc.dsn(db), **CONNECT)


def console(proc: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(proc.dsn("pgbouncer"), cursor_factory=psycopg.ClientCursor, row_factory=dict_row,
                           **CONNECT)


def config(proc: Any) -> dict[str, dict[str, Any]]:
    return {r["key"]: r for r in proc.admin_dicts("SHOW CONFIG")}


def test_set_applies_at_once_and_lasts_until_reload(pgmux_factory: Any) -> None:
    proc = pgmux_factory(settings={"pool_mode": "transaction", "default_pool_size": 5})
    with console(proc) as admin:
        cur = admin.execute("SET default_pool_size = 2")
        assert cur.statusmessage == "SET default_pool_size=2"  # PgBouncer's tag
    assert config(proc)["default_pool_size"]["value"] == "2"
    a, b, c = connect(proc), connect(proc), connect(proc)
    with a, b, c, ThreadPoolExecutor(1) as ex, guard(proc):
        for conn in (a, b):
            conn.execute("BEGIN")
            conn.execute("SELECT 1")
        job = ex.submit(lambda: c.execute("SELECT 3").fetchone())
        # Two servers is the pool now: the third transaction waits for one.
        wait_for(lambda: pool_row(proc)["cl_waiting"] == 1, "the third client to wait for a server")
        assert pool_row(proc)["sv_active"] == 2
        a.execute("COMMIT")
        assert job.result(timeout=10) == (3,)
        b.execute("COMMIT")
    proc.admin("RELOAD")  # the file says 5: SET's value is gone, as in PgBouncer
    assert config(proc)["default_pool_size"]["value"] == "5"


@pytest.mark.parametrize(("sql", "sqlstate", "words"), [
    ("SET listen_port = 7777", "55P02", "restart"),
    ("SET no_such_setting = 1", "42704", "unknown setting"),
    ("SET default_pool_size = 'lots'", "22023", "expected an integer"),
])
def test_set_refuses_with_the_reason(pgmux_factory: Any, sql: str, sqlstate: str, words: str) -> None:
    proc = pgmux_factory()
    with console(proc) as admin:
        with pytest.raises(psycopg.Error) as exc:
            admin.execute(sql)
        assert exc.value.sqlstate == sqlstate
        assert words in str(exc.value) and "SET failed" in str(exc.value)
        assert admin.execute("SHOW VERSION").fetchone()  # the session goes on
    rows = config(proc)
    assert rows["listen_port"]["changeable"] == "no" and rows["default_pool_size"]["changeable"] == "yes"
    assert rows["listen_port"]["value"] == str(proc.port)


def test_set_of_a_session_parameter_is_still_ignored(pgmux_factory: Any) -> None:
    proc = pgmux_factory()
    with console(proc) as admin:
        notices: list[str] = []
        admin.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        assert admin.execute("SET client_encoding = 'UTF8'").statusmessage == "SET"
        assert notices == ["SET ignored"]


def test_show_version_is_the_version_string(pgmux_factory: Any) -> None:
    proc = pgmux_factory()
    assert proc.admin("SHOW VERSION") == [(VERSION_STRING,)]


def test_stats_and_totals_count_logins_and_the_console(pgmux_factory: Any) -> None:
    proc = pgmux_factory(settings={"pool_mode": "transaction"})
    for _ in range(3):
        with connect(proc) as conn:
            conn.execute("SELECT 1")
    stats = {r["database"]: r for r in proc.admin_dicts("SHOW STATS")}
    assert int(stats["testdb"]["total_client_login_count"]) == 3
    assert "avg_client_login_count" in stats["testdb"]
    # The admin database has its row: this console login and earlier console queries are in it.
    assert int(stats["pgbouncer"]["total_client_login_count"]) >= 1
    assert int(stats["pgbouncer"]["total_query_count"]) >= 1
    totals = {r["client_login_count"] for r in proc.admin_dicts("SHOW STATS_TOTALS") if r["database"] == "testdb"}
    assert totals == {3}
    assert "avg_client_login_count" in proc.admin_dicts("SHOW STATS_AVERAGES")[0]
    rows = dict(proc.admin("SHOW TOTALS"))
    assert list(rows)[:3] == ["total_server_assignment_count", "total_xact_count", "total_query_count"]
    assert int(rows["total_xact_count"]) >= 3 and int(rows["total_client_login_count"]) >= 4
    assert "avg_client_bytes" in rows and "total_ps_bind_count" in rows


def test_sockets_mem_lists_and_dns(pgmux_factory: Any) -> None:
    proc = pgmux_factory(settings={"pool_mode": "session"})
    with connect(proc) as conn:
        conn.execute("SELECT 1")
        sockets = proc.admin_dicts("SHOW SOCKETS")
        kinds = {r["type"] for r in sockets}
        assert kinds == {"C", "S"}, sockets
        for col in ("recv_pos", "pkt_pos", "pkt_remain", "send_pos", "send_remain", "pkt_avail", "send_avail",
                    "local_addr", "local_port", "ptr", "link", "remote_pid", "tls"):
            assert col in sockets[0]
        server = next(r for r in sockets if r["type"] == "S")
        client = next(r for r in sockets if r["type"] == "C" and r["database"] == "testdb")
        assert client["link"] == server["ptr"] and server["link"] == client["ptr"]
        assert client["local_addr"] == "127.0.0.1" and client["local_port"] == proc.port
        active = proc.admin_dicts("SHOW ACTIVE_SOCKETS")
        assert all(r["recv_pos"] or r["send_remain"] for r in active)
        mem = {r["name"]: r for r in proc.admin_dicts("SHOW MEM")}
        assert mem["client_cache"]["used"] >= 2 and mem["client_cache"]["size"] > 0  # us and the console
        assert mem["server_cache"]["used"] == 1 and mem["pool_cache"]["used"] == 1
        assert mem["client_cache"]["memtotal"] == mem["client_cache"]["size"] * mem["client_cache"]["used"]
        lists = dict(proc.admin("SHOW LISTS"))
        assert lists["databases"] == 3  # testdb, postgres and the admin database
        assert lists["users"] == len(proc.userlist)
        assert lists["pools"] == 2 and lists["used_servers"] == 1 and lists["used_clients"] >= 2
    with console(proc) as admin:
        for what, cols in (("DNS_HOSTS", ["hostname", "ttl", "addrs"]), ("DNS_ZONES", ["zonename", "serial", "count"])):
            cur = admin.execute(f"SHOW {what}")
            assert [d.name for d in cur.description or []] == cols and cur.fetchall() == []


def test_set_logfile_and_log_connections_take_effect(pgmux_factory: Any) -> None:
    proc = pgmux_factory()
    logfile = proc.workdir / "set.log"
    proc.admin(f"SET logfile = '{logfile}'")
    with connect(proc) as conn:
        conn.execute("SELECT 1")
    wait_for(lambda: logfile.exists() and "login attempt" in logfile.read_text(), "the login in the new logfile")
    proc.admin("SET log_connections = 0")
    assert config(proc)["log_connections"]["value"] == "0"
    before = logfile.read_text().count("login attempt")
    with connect(proc) as conn:
        conn.execute("SELECT 2")
    proc.admin("SHOW VERSION")  # a console login: would be logged too
    wait_for(lambda: "SHOW VERSION" in logfile.read_text(), "the console command in the log")
    assert logfile.read_text().count("login attempt") == before
