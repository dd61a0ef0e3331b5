"""Settings whose effect is in pgmux's log or on the wire: log_stats with stats_period, log_pooler_errors,
login_notify_message, application_name_add_host and scram_iterations, against real PostgreSQL."""

from __future__ import annotations

import re
import socket
import struct
import subprocess
import time

import psycopg
import pytest
import scramp
from helpers import wait_for
from test_protocol import Wire, rows

from conftest import PgmuxStarter
from pgmux.protocol import messages as m

STATS = re.compile(r"LOG stats: (\d+) xacts/s, (\d+) queries/s, (\d+) client parses/s, (\d+) server parses/s, "
                   r"(\d+) binds/s, in (\d+) B/s, out (\d+) B/s, xact (\d+) us, query (\d+) us, wait (\d+) us$",
                   re.M)
DB_STATS = re.compile(r"LOG stats for database testdb: (\d+) xacts/s, (\d+) queries/s, ", re.M)


def test_log_stats_every_stats_period(pgmux_factory: PgmuxStarter) -> None:
    proc = pgmux_factory(settings={"stats_period": 1, "log_stats": 1, "pool_mode": "transaction"})
    with psycopg.connect(proc.dsn(), autocommit=True) as conn:
        def busy_line() -> bool:
            for _ in range(50):  # a few queries in every period, until a line counts them
                conn.execute("SELECT 1")
            return any(int(m.group(2)) > 0 for m in STATS.finditer(proc.log()))

        wait_for(busy_line, "a stats line with queries/s > 0", timeout=30)
    log = proc.log()
    assert DB_STATS.search(log), log[-2000:]
    # SHOW STATS takes its averages every stats_period too.
    rows = [r for r in proc.admin_dicts("SHOW STATS") if r["database"] == "testdb"]
    assert rows and rows[0]["total_query_count"] > 0
    with psycopg.connect(proc.dsn(), autocommit=True) as conn:
        def averaged() -> bool:
            conn.execute("SELECT 1")
            return any(r["avg_query_count"] > 0 for r in proc.admin_dicts("SHOW STATS") if r["database"] == "testdb")

        wait_for(averaged, "SHOW STATS avg_query_count > 0", timeout=30)


def test_log_stats_off(pgmux_factory: PgmuxStarter) -> None:
    proc = pgmux_factory(settings={"stats_period": 1, "log_stats": 0})
    with psycopg.connect(proc.dsn(), autocommit=True) as conn:
        def averaged() -> bool:  # stats_period still drives SHOW STATS: a period with traffic has passed
            conn.execute("SELECT 1")
            return any(r["avg_query_count"] > 0 for r in proc.admin_dicts("SHOW STATS") if r["database"] == "testdb")

        wait_for(averaged, "SHOW STATS avg_query_count > 0", timeout=30)
    assert not STATS.search(proc.log()) and "stats for database" not in proc.log()


@pytest.mark.parametrize("on", [True, False])
def test_log_pooler_errors(pgmux_factory: PgmuxStarter, on: bool) -> None:
    proc = pgmux_factory(settings={"log_pooler_errors": int(on), "auth_type": "md5"})
    with pytest.raises(psycopg.OperationalError, match="no such database: nosuchdb"):
        psycopg.connect(proc.dsn(db="nosuchdb", user="md5user", password="md5pass"), connect_timeout=10)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(proc.dsn(user="md5user", password="wrong"), connect_timeout=10)
    with psycopg.connect(proc.dsn(user="md5user", password="md5pass")) as conn:  # pgmux still serves
        assert conn.execute("SELECT 1").fetchone() == (1,)
    expected = [r"WARNING C-\d+ nosuchdb/md5user@127\.0\.0\.1:\d+ pooler error: no such database: nosuchdb$",
                r"WARNING C-\d+ testdb/md5user@127\.0\.0\.1:\d+ pooler error: password authentication failed"]
    if on:
        for pattern in expected:
            wait_for(lambda p=pattern: re.search(p, proc.log(), re.M), f"log line {pattern}")
    else:
        proc.stop()  # flushes the log
        assert "pooler error" not in proc.log()


def test_login_notify_message(pgmux_factory: PgmuxStarter) -> None:
    text = "You are connected to pgmux, not to PostgreSQL directly"
    proc = pgmux_factory(settings={"login_notify_message": text})
    with Wire(proc.host, proc.port) as w:
        msgs = w.login()
        notices = [m.parse_error_fields(body) for t, body in msgs if t == m.NOTICE_RESPONSE]
        assert [(n["S"], n["C"], n["M"]) for n in notices] == [("NOTICE", "00000", text)]
        assert msgs[-2][0] == m.NOTICE_RESPONSE  # right after login, before the first ReadyForQuery
        assert rows(w.query("SELECT 1")) == [[b"1"]]
    # libpq hands it to the notice processor during connect: psql prints it.
    out = subprocess.run(["psql", proc.dsn(), "-Atc", "SELECT 42"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.strip() == "42"
    assert f"NOTICE:  {text}" in out.stderr


def test_no_login_notify_message_by_default(pgmux_factory: PgmuxStarter) -> None:
    proc = pgmux_factory()
    with Wire(proc.host, proc.port) as w:
        assert all(t != m.NOTICE_RESPONSE for t, _ in w.login())


@pytest.mark.parametrize("pool_mode", ["session", "transaction"])
def test_application_name_add_host(pgmux_factory: PgmuxStarter, pool_mode: str) -> None:
    proc = pgmux_factory(settings={"application_name_add_host": 1, "pool_mode": pool_mode})
    with psycopg.connect(proc.dsn(), application_name="billing") as conn:
        with socket.fromfd(conn.pgconn.socket, socket.AF_INET, socket.SOCK_STREAM) as dup:  # closes the dup only
            local_port = dup.getsockname()[1]
        expected = f"billing - 127.0.0.1:{local_port}"
        assert conn.info.parameter_status("application_name") == expected
        row = conn.execute("SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()").fetchone()
        assert row == (expected,)
    with psycopg.connect(proc.dsn()) as conn:  # no name given: PgBouncer's "app"
        assert conn.execute("SHOW application_name").fetchone()[0].startswith("app - 127.0.0.1:")


def test_application_name_untouched_by_default(pgmux_factory: PgmuxStarter) -> None:
    proc = pgmux_factory()
    with psycopg.connect(proc.dsn(), application_name="billing") as conn:
        assert conn.execute("SHOW application_name").fetchone() == ("billing",)


@pytest.mark.parametrize("iterations", [4096, 10000])
def test_scram_iterations(pgmux_factory: PgmuxStarter, iterations: int) -> None:
    """A plain-text secret in auth_file: pgmux makes the SCRAM verifier, with scram_iterations rounds."""
    proc = pgmux_factory(settings={"auth_type": "scram-sha-256", "scram_iterations": iterations},
                         userlist={"postgres": "", "scramuser": "scrampass"})
    client = scramp.ScramClient(["SCRAM-SHA-256"], "scramuser", "scrampass")
    with Wire(proc.host, proc.port) as w:
        w.send(m.startup_message({"user": "scramuser", "database": "testdb"}))
        t, body = w.read_msg()
        assert (t, struct.unpack("!i", body[:4])[0]) == (m.AUTHENTICATION, m.AUTH_SASL)
        first = client.get_client_first().encode()
        w.send(m.message(b"p", m.cstr("SCRAM-SHA-256") + struct.pack("!i", len(first)) + first))
        t, body = w.read_msg()
        server_first = body[4:].decode()
        assert dict(kv.split("=", 1) for kv in server_first.split(","))["i"] == str(iterations)
        client.set_server_first(server_first)
        w.send(m.message(b"p", client.get_client_final().encode()))
        t, body = w.read_msg()
        client.set_server_final(body[4:].decode())  # raises unless the server proved the same password
        assert w.read_until_ready()[-1] == (m.READY_FOR_QUERY, b"I")
    with psycopg.connect(proc.dsn(user="scramuser", password="scrampass")) as conn:  # libpq agrees
        assert conn.execute("SELECT current_user").fetchone() == ("scramuser",)


@pytest.mark.parametrize("notify", [1, 0])
def test_query_wait_notify(pgmux_factory: PgmuxStarter, notify: int) -> None:
    """A client queued for a server longer than query_wait_notify gets PgBouncer's NOTICE, once."""
    proc = pgmux_factory(settings={"query_wait_notify": notify, "pool_mode": "transaction",
                                   "default_pool_size": 1})
    with psycopg.connect(proc.dsn(), autocommit=True) as holder, \
            psycopg.connect(proc.dsn(), autocommit=True) as waiter:
        notices: list[str] = []
        waiter.add_notice_handler(lambda diag: notices.append(f"{diag.severity} {diag.message_primary}"))
        holder.execute("BEGIN")
        holder.execute("SELECT 1")  # holds the only server until COMMIT
        waiter.pgconn.send_query(b"SELECT 2")  # queued behind it
        wait_for(lambda: any(r["cl_waiting"] for r in proc.admin_dicts("SHOW POOLS") if r["database"] == "testdb"),
                 "the second client queued")

        def told() -> bool:
            waiter.pgconn.consume_input()
            waiter.pgconn.is_busy()  # libpq parses what arrived: a NOTICE goes to the handler
            return bool(notices)

        if notify:
            wait_for(told, "the queued client's NOTICE", timeout=15)
            assert any(r["cl_waiting"] for r in proc.admin_dicts("SHOW POOLS") if r["database"] == "testdb")
        else:
            time.sleep(2.5)  # longer than a notify of 1 s would have taken: nothing may come
            assert not told()
        holder.execute("COMMIT")
        result = waiter.pgconn.get_result()
        assert result is not None and result.get_value(0, 0) == b"2"
        while waiter.pgconn.get_result() is not None:
            pass
        waiter.execute("SELECT 3")  # notices are handed over as the connection reads
    queued = "NOTICE No server connection available in postgres backend, client being queued"
    assert notices == ([queued] if notify else [])
