"""Settings whose effect is in pgmux's log or on the wire: log_stats with stats_period, log_pooler_errors,
login_notify_message, application_name_add_host and scram_iterations, against real PostgreSQL."""

from __future__ import annotations

import re

import psycopg
import pytest
from conftest import PgmuxStarter
from helpers import wait_for

STATS = re.compile(r"INFO stats: (\d+) xacts/s, (\d+) queries/s, (\d+) client parses/s, (\d+) server parses/s, "
                   r"(\d+) binds/s, in (\d+) B/s, out (\d+) B/s, xact (\d+) us, query (\d+) us, wait (\d+) us$",
                   re.M)
DB_STATS = re.compile(r"INFO stats for database testdb: (\d+) xacts/s, (\d+) queries/s, ", re.M)


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
