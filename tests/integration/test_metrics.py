"""metrics_listen: /metrics scraped under real load (pgbench through pgmux to PostgreSQL), checked against
the admin console's SHOW POOLS/STATS/DATABASES/LISTS/CONFIG, which the PgBouncer exporter reads; pgmux's
histograms checked against SHOW STATS' totals; OpenMetrics on request; the listener's bounds; a reload
that moves it."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import psycopg
import pytest
from helpers import guard, wait_for
from metrics_helpers import get, metrics_settings, raw, scrape, value

from conftest import PgmuxProc, PgmuxStarter
from pgmux.testing.cluster import HOST, free_port

CLIENTS = 10


def _stats(mux: PgmuxProc, db: str = "testdb") -> dict[str, Any]:
    return next(r for r in mux.admin_dicts("SHOW STATS") if r["database"] == db)


def _pgbench(mux: PgmuxProc, tmp_path: Path, seconds: int, clients: int = CLIENTS) -> subprocess.Popen[str]:
    script = tmp_path / "tx.sql"
    script.write_text("BEGIN;\nSELECT count(*) FROM items;\nSELECT pg_sleep(0.002);\nCOMMIT;\n")
    return subprocess.Popen(["pgbench", "-n", "-h", mux.host, "-p", str(mux.port), "-U", "postgres", "-c",
                             str(clients), "-j", "2", "-T", str(seconds), "-f", str(script), "testdb"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_exporter_series_and_histograms_match_show_under_load(pgmux_factory: PgmuxStarter, tmp_path: Path) -> None:
    mux = pgmux_factory(settings=metrics_settings(default_pool_size=3))
    bench = _pgbench(mux, tmp_path, seconds=8)
    with guard(mux):
        try:
            wait_for(lambda: sum(r["cl_active"] + r["cl_waiting"] for r in mux.admin_dicts("SHOW POOLS")
                                 if r["database"] == "testdb") == CLIENTS, "pgbench's clients", 20)
            seen_waiting = False
            for _ in range(8):  # scrapes under load, each bracketed by two SHOW STATS
                before = _stats(mux)
                s = scrape(mux)
                after = _stats(mux)
                for col, name in (("total_xact_count", "pgbouncer_stats_sql_transactions_pooled_total"),
                                  ("total_query_count", "pgbouncer_stats_queries_pooled_total")):
                    assert before[col] <= value(s, name, database="testdb") <= after[col], (col, before, after)
                xacts = value(s, "pgmux_transaction_seconds_count", database="testdb", user="postgres")
                assert before["total_xact_count"] <= xacts <= after["total_xact_count"]
                queries = value(s, "pgmux_query_seconds_count", database="testdb", user="postgres")
                assert before["total_query_count"] <= queries <= after["total_query_count"]
                active = value(s, "pgbouncer_pools_client_active_connections", database="testdb", user="postgres")
                waiting = value(s, "pgbouncer_pools_client_waiting_connections", database="testdb", user="postgres")
                assert active + waiting == CLIENTS
                assert value(s, "pgbouncer_pools_server_active_connections", database="testdb", user="postgres") <= 3
                seen_waiting |= waiting > 0
                time.sleep(0.3)
            assert seen_waiting, "10 clients on a pool of 3 never waited"
        finally:
            out, _ = bench.communicate(timeout=60)
        assert bench.returncode == 0, out[-3000:]
        wait_for(lambda: all(r["sv_active"] == 0 for r in mux.admin_dicts("SHOW POOLS")), "pgbench to finish", 20)
        _check_quiet(mux)


def _check_quiet(mux: PgmuxProc) -> None:
    """After the load: every exporter series equals its SHOW column, and the histograms SHOW STATS'."""
    with psycopg.connect(host=mux.host, port=mux.port, dbname="pgbouncer", user="postgres", autocommit=True,
                         cursor_factory=psycopg.ClientCursor, row_factory=psycopg.rows.dict_row) as admin:
        def show(what: str) -> list[dict[str, Any]]:
            return admin.execute(f"SHOW {what}").fetchall()

        pools, databases, lists, config = show("POOLS"), show("DATABASES"), show("LISTS"), show("CONFIG")
        stats = [r for r in show("STATS") if r["database"] != "pgbouncer"]  # the console counts its own SHOWs
        s = scrape(mux)
        assert show("POOLS") == pools and show("LISTS") == lists  # nothing moved meanwhile
    for r in pools:
        key = {"database": r["database"], "user": r["user"]}
        for col, name in (("cl_active", "client_active_connections"), ("cl_waiting", "client_waiting_connections"),
                          ("sv_active", "server_active_connections"), ("sv_idle", "server_idle_connections"),
                          ("sv_used", "server_used_connections"), ("sv_tested", "server_testing_connections"),
                          ("sv_login", "server_login_connections"), ("maxwait", "client_maxwait_seconds"),
                          ("cl_active_cancel_req", "client_active_cancel_connections"),
                          ("sv_being_canceled", "server_being_canceled_connections")):
            assert value(s, f"pgbouncer_pools_{name}", **key) == r[col], (name, r)
    for r in stats:
        db = r["database"]
        for col, name, factor in (("total_query_count", "queries_pooled_total", 1),
                                  ("total_xact_count", "sql_transactions_pooled_total", 1),
                                  ("total_received", "received_bytes_total", 1), ("total_sent", "sent_bytes_total", 1),
                                  ("total_query_time", "queries_duration_seconds_total", 1e-6),
                                  ("total_xact_time", "server_in_transaction_seconds_total", 1e-6),
                                  ("total_wait_time", "client_wait_seconds_total", 1e-6)):
            assert value(s, f"pgbouncer_stats_{name}", database=db) == pytest.approx(int(r[col]) * factor), name
    for r in databases:
        labels = {"name": r["name"], "host": r["host"] or "", "port": str(r["port"]), "database": r["database"],
                  "force_user": r["force_user"] or "", "pool_mode": r["pool_mode"] or ""}
        assert value(s, "pgbouncer_databases_pool_size", **labels) == r["pool_size"]
        assert value(s, "pgbouncer_databases_current_connections", **labels) == r["current_connections"]
        assert value(s, "pgbouncer_databases_reserve_pool", **labels) == r["reserve_pool_size"]
    names = {"dns_names": "cached_dns_names", "dns_zones": "cached_dns_zones", "dns_queries": "in_flight_dns_queries"}
    for r in lists:
        if r["list"] not in ("peers", "peer_pools", "dns_pending"):
            assert value(s, f"pgbouncer_{names.get(r['list'], r['list'])}") == r["items"], r
    conf = {r["key"]: r["value"] for r in config}
    assert value(s, "pgbouncer_config_max_client_connections") == int(conf["max_client_conn"])
    # pgmux's histograms hold every transaction of the pool (it was made with metrics on): same counts and sums
    st = next(r for r in stats if r["database"] == "testdb")
    key = {"database": "testdb", "user": "postgres"}
    assert value(s, "pgmux_transaction_seconds_count", **key) == int(st["total_xact_count"]) > CLIENTS * 10
    assert value(s, "pgmux_query_seconds_count", **key) == int(st["total_query_count"])
    assert value(s, "pgmux_client_wait_seconds_count", **key) == int(st["total_server_assignment_count"])
    for hist, col in (("transaction", "total_xact_time"), ("query", "total_query_time"),
                      ("client_wait", "total_wait_time")):
        name = f"pgmux_{hist}_seconds"
        assert abs(value(s, f"{name}_sum", **key) * 1e6 - int(st[col])) <= 1, hist
        # buckets are cumulative and end at the count
        assert value(s, f"{name}_bucket", le="+Inf", **key) == value(s, f"{name}_count", **key)
    # each transaction sleeps 2 ms on the server: none is in the buckets below 1 ms
    assert value(s, "pgmux_transaction_seconds_bucket", le="0.001", **key) == 0
    assert value(s, "pgmux_transaction_seconds_bucket", le="60", **key) == int(st["total_xact_count"])
    assert value(s, "pgmux_client_login_seconds_count") >= CLIENTS


# The series prometheus-community/pgbouncer_exporter publishes from SHOW POOLS/STATS/DATABASES/LISTS/CONFIG/
# SERVERS/VERSION, with their label names: the promise of compatibility (written out, not imported).
EXPORTER_SERIES = {
    **{f"pgbouncer_pools_{n}": ("database", "user") for n in (
        "client_active_connections", "client_active_cancel_connections", "client_waiting_connections",
        "client_waiting_cancel_connections", "server_active_connections", "server_active_cancel_connections",
        "server_being_canceled_connections", "server_idle_connections", "server_used_connections",
        "server_testing_connections", "server_login_connections", "client_maxwait_seconds",
        "client_maxwait_fractional")},
    **{f"pgbouncer_stats_{n}": ("database",) for n in (
        "queries_pooled_total", "queries_duration_seconds_total", "received_bytes_total", "sent_bytes_total",
        "client_wait_seconds_total", "sql_transactions_pooled_total", "server_in_transaction_seconds_total")},
    **{f"pgbouncer_databases_{n}": ("database", "force_user", "host", "name", "pool_mode", "port") for n in (
        "pool_size", "reserve_pool", "max_connections", "current_connections", "paused", "disabled")},
    **{f"pgbouncer_{n}": () for n in (
        "databases", "users", "pools", "free_clients", "used_clients", "login_clients", "free_servers",
        "used_servers", "cached_dns_names", "cached_dns_zones", "in_flight_dns_queries",
        "config_max_client_connections", "config_max_user_connections", "up")},
    "pgbouncer_version_info": ("version",),
    "pgbouncer_server_connections": ("addr", "close_needed", "database", "state", "user"),
}


def test_exporter_compatibility_every_promised_series_is_there(pgmux_factory: PgmuxStarter) -> None:
    mux = pgmux_factory(settings=metrics_settings())
    with psycopg.connect(mux.dsn(), autocommit=True) as conn:
        conn.execute("SELECT 1")
        server = next(r for r in mux.admin_dicts("SHOW SERVERS") if r["database"] == "testdb")
        s = scrape(mux)
    have = {}
    for name, labels in s:
        have.setdefault(name, set()).add(tuple(k for k, _ in labels))
    missing = [n for n in EXPORTER_SERIES if n not in have]
    assert missing == []
    wrong = {n: have[n] for n, labels in EXPORTER_SERIES.items() if have[n] != {labels}}
    assert wrong == {}
    assert value(s, "pgbouncer_up") == 1
    assert value(s, "pgbouncer_server_connections", user="postgres", database="testdb", state="idle",
                 addr=f"{server['addr']}_{server['port']}", close_needed="false") == 1


def test_openmetrics_when_asked_and_text_otherwise(pgmux_factory: PgmuxStarter) -> None:
    mux = pgmux_factory(settings=metrics_settings())
    status, ctype, text = get(mux)
    assert status == 200 and ctype.startswith("text/plain; version=0.0.4")
    assert "# TYPE pgbouncer_stats_queries_pooled_total counter" in text and "# EOF" not in text
    status, ctype, om = get(mux, accept="application/openmetrics-text; version=1.0.0; charset=utf-8")
    assert status == 200 and ctype.startswith("application/openmetrics-text")
    assert om.rstrip().endswith("# EOF") and "# TYPE pgbouncer_stats_queries_pooled counter" in om
    assert "# TYPE pgmux_transaction_seconds histogram" in om


def test_listener_is_bounded(pgmux_factory: PgmuxStarter) -> None:
    mux = pgmux_factory(settings=metrics_settings())
    assert raw(mux, b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc").startswith(b"HTTP/1.1 405")
    assert raw(mux, b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n").startswith(b"HTTP/1.1 431")
    assert raw(mux, b"GET /nothing HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 404")
    assert raw(mux, b"garbage\r\n\r\n").startswith(b"HTTP/1.1 400")
    # 32 connections that say nothing: the 33rd is refused at once, and the pooler still serves queries
    host, port = mux.settings["metrics_listen"].rsplit(":", 1)
    idle = [socket.create_connection((host, int(port)), timeout=10) for _ in range(32)]
    try:
        wait_for(lambda: raw(mux, b"GET /metrics HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 503"), "a 503", 8)
        with psycopg.connect(mux.dsn(), autocommit=True) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        # a peer that says nothing is cut off after the listener's 10 s
        idle[0].settimeout(30)
        try:
            assert idle[0].recv(100) == b""
        except ConnectionResetError:
            pass
    finally:
        for s in idle:
            s.close()
    wait_for(lambda: raw(mux, b"GET /metrics HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 200"), "200 again", 10)


def test_reload_moves_the_listener_and_empty_turns_it_off(pgmux_factory: PgmuxStarter) -> None:
    mux = pgmux_factory(settings=metrics_settings())
    old = mux.settings["metrics_listen"]
    new = f"{HOST}:{free_port()}"
    mux.rewrite(settings={"metrics_listen": new})
    mux.reload()
    wait_for(lambda: _answers(new), "the new address to serve", 30)
    wait_for(lambda: not _answers(old), "the old address to close", 30)
    mux.rewrite(settings={"metrics_listen": ""})
    mux.reload()
    wait_for(lambda: not _answers(new), "the listener to close", 30)
    # (log lines reach the file at the janitor's next tick, 0.2 s: runtime/main.py TickFlushedHandler)
    wait_for(lambda: "metrics listener closed" in mux.log(), "the log line saying so", 10)


def _answers(address: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as r:
            return r.status == 200
    except OSError:
        return False


def test_a_port_in_use_stops_start_up(pgmux_factory: PgmuxStarter) -> None:
    with socket.socket() as busy:
        busy.bind((HOST, 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(pytest.fail.Exception, match="cannot listen on metrics_listen"):
            pgmux_factory(settings=metrics_settings(metrics_listen=f"{HOST}:{port}"))


def test_pgmux_series_pins_prepared_statements_closes_and_logins(pgmux_factory: PgmuxStarter) -> None:
    mux = pgmux_factory(settings=metrics_settings(default_pool_size=2))
    with psycopg.connect(mux.dsn(), autocommit=True) as pinned, psycopg.connect(mux.dsn(), autocommit=True) as conn:
        pinned.execute("LISTEN ch")
        for _ in range(8):  # psycopg prepares from the 2nd run on: hits after the first Parse
            conn.execute("SELECT %s::int + 1", (1,), prepare=True)
        s = scrape(mux)
        assert value(s, "pgmux_pinned_clients_now", database="testdb", user="postgres", reason="listen") == 1
        assert value(s, "pgmux_pinned_clients_total", database="testdb") == 1
        st = _stats(mux)
        misses = value(s, "pgmux_prepared_statement_misses_total", database="testdb")
        assert misses == int(st["total_server_parse_count"]) >= 1
        assert value(s, "pgmux_prepared_statement_hits_total", database="testdb") >= 5
    # the pinned client left: its server was closed with the reason, counted
    closed = ("pgmux_server_connections_closed_total",
              (("database", "testdb"), ("reason", "client left session state on the server (listen)")))
    wait_for(lambda: closed in scrape(mux), "the close to be counted", 10)
    s = scrape(mux)
    assert s[closed] == 1
    assert value(s, "pgmux_server_connections_opened_total", database="testdb") >= 2
    assert value(s, "pgmux_client_login_seconds_count") >= 2
    assert value(s, "pgmux_client_login_seconds_bucket", le="+Inf") == value(s, "pgmux_client_login_seconds_count")


def test_split_database_host_series(pgmux_factory: PgmuxStarter, pg: Any) -> None:
    nodes = pg.nodes
    line = (f"host={','.join(n.host for n in nodes)} port={','.join(str(n.port) for n in nodes)} dbname=testdb "
            f"pgmux_roles={','.join('primary' if n.role == 'primary' else 'replica' for n in nodes)} "
            "pgmux_read_write_split=1")
    mux = pgmux_factory(databases={"split": line}, settings=metrics_settings(health_check_period=0.2))
    with psycopg.connect(mux.dsn("split"), autocommit=True) as conn:
        wait_for(lambda: len([r for r in mux.admin_dicts("SHOW HOSTS") if r["state"] == "up"]) == len(nodes),
                 "hosts up", 20)
        for _ in range(5):
            conn.execute("SELECT count(*) FROM items").fetchone()
        conn.execute("BEGIN")
        conn.execute("UPDATE items SET name = name WHERE id = 1")
        conn.execute("COMMIT")
        hosts = {f"{r['host']}:{r['port']}": r for r in mux.admin_dicts("SHOW HOSTS")}
        s = scrape(mux)
    for key, r in hosts.items():
        assert value(s, "pgmux_host_reads_routed_total", database="split", host=key) == r["reads"]
        assert value(s, "pgmux_host_writes_routed_total", database="split", host=key) == r["writes"]
        assert value(s, "pgmux_host_up", database="split", host=key) == 1
        assert value(s, "pgmux_host_info", database="split", host=key, role=r["role"], state="up") == 1
        if r["role"] == "replica":
            assert value(s, "pgmux_host_replica_lag_bytes", database="split", host=key) == r["lag_bytes"]
    assert sum(r["reads"] for r in hosts.values()) >= 5 and sum(r["writes"] for r in hosts.values()) >= 1
    replica = next(k for k, r in hosts.items() if r["role"] == "replica")
    mux.admin(f"BAN split {replica}")
    s = scrape(mux)
    assert value(s, "pgmux_host_bans_total", database="split", host=replica, reason="banned by admin") == 1
    assert value(s, "pgmux_host_banned", database="split", host=replica) == 1
    assert value(s, "pgmux_host_up", database="split", host=replica) == 0


def test_metrics_off_by_default(pgmux_factory: PgmuxStarter) -> None:
    mux = pgmux_factory(settings={"pool_mode": "transaction"})
    assert "metrics" not in mux.log()
    rows = {r["key"]: r for r in mux.admin_dicts("SHOW CONFIG")}
    assert rows["metrics_listen"]["value"] in (None, "") and rows["metrics_listen"]["changeable"] == "yes"

