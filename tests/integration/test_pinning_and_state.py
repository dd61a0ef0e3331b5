"""pin_mode = refuse, SHOW STATS' pin counter, and the finer points of session-state tracking
(savepoints, bound set_config, dropping the temp tables that pinned a client, errors pgmux answers
inside a transaction) with real PostgreSQL and real drivers."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import psycopg
import pytest
from helpers import backend_pid, guard

from conftest import PgmuxProc, PgmuxStarter
from pgmux.testing.cluster import PgCluster


def start(pgmux_factory: PgmuxStarter, pg: PgCluster, pool_size: int = 2, mode: str = "pin") -> PgmuxProc:
    p = pg.primary
    return pgmux_factory(databases={"testdb": f"host={p.host} port={p.port} dbname=testdb pgmux_pin_mode={mode}"},
                         settings={"pool_mode": "transaction", "default_pool_size": pool_size,
                                   "max_client_conn": 100})


def connect(mux: PgmuxProc, **kwargs: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(mux.dsn(), autocommit=True, connect_timeout=10, **kwargs)


def pins(mux: PgmuxProc) -> list[str]:
    return sorted(c["pin"] for c in mux.admin_dicts("SHOW CLIENTS") if c["database"] == "testdb")


def stats(mux: PgmuxProc) -> dict[str, Any]:
    (row,) = [r for r in mux.admin_dicts("SHOW STATS") if r["database"] == "testdb"]
    return dict(row)


REFUSED = [
    "LISTEN jobs",
    "CREATE TEMP TABLE scratch (x int)",
    "SELECT pg_advisory_lock(4711)",
    "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
    "LOAD 'auto_explain'",
]


def test_refuse_mode_fails_pinning_statements_and_keeps_servers_clean(pgmux_factory: PgmuxStarter,
                                                                      pg: PgCluster) -> None:
    mux = start(pgmux_factory, pg, pool_size=1, mode="refuse")
    with connect(mux, cursor_factory=psycopg.ClientCursor) as a, connect(mux) as b, guard(mux):
        for sql in REFUSED:
            with pytest.raises(psycopg.errors.FeatureNotSupported) as info:
                a.execute(sql)
            assert "pin_mode = refuse" in str(info.value) and "testdb" in str(info.value)
            assert info.value.diag.message_hint is not None and "pin" in info.value.diag.message_hint
            assert a.execute("SELECT 1").fetchone() == (1,)
            assert pins(mux) == ["", ""]
        # the extended protocol (psycopg's bound parameters): refused at Parse
        with pytest.raises(psycopg.errors.FeatureNotSupported):
            b.execute("SELECT pg_advisory_lock(%s)", (4711,))
        # nothing was taken or left on the one server: no lock, no temp table, nobody listening
        with psycopg.connect(pg.primary.dsn("testdb"), autocommit=True, connect_timeout=10) as direct:
            assert direct.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'").fetchone() == (0,)
            assert direct.execute("SELECT count(*) FROM pg_class WHERE relname = 'scratch'").fetchone() == (0,)
        assert b.execute("SELECT count(*) FROM pg_listening_channels()").fetchone() == (0,)
        # inside a transaction, the transaction fails as PostgreSQL's own errors make it fail
        a.execute("BEGIN")
        with pytest.raises(psycopg.errors.FeatureNotSupported):
            a.execute("LISTEN jobs")
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            a.execute("SELECT 1")
        a.execute("ROLLBACK")
        assert a.execute("SELECT 1").fetchone() == (1,)
        assert stats(mux)["total_pinned_count"] == 0


def test_refuse_mode_with_asyncpg(pgmux_factory: PgmuxStarter, pg: PgCluster) -> None:
    mux = start(pgmux_factory, pg, pool_size=1, mode="refuse")

    async def main() -> None:
        conn = await asyncpg.connect(mux.dsn(), timeout=10)
        try:
            with pytest.raises(asyncpg.exceptions.FeatureNotSupportedError):
                await conn.fetchval("SELECT pg_advisory_lock($1)", 5)
            with pytest.raises(asyncpg.exceptions.FeatureNotSupportedError):
                await conn.execute("LISTEN x")
            async with conn.transaction():
                assert await conn.fetchval("SELECT 2") == 2
        finally:
            await asyncio.wait_for(conn.close(), 10)

    asyncio.run(asyncio.wait_for(main(), 30))


def test_pin_counter_in_show_stats(pgmux_factory: PgmuxStarter, pg: PgCluster) -> None:
    mux = start(pgmux_factory, pg, pool_size=2)
    with connect(mux) as a, connect(mux) as b, guard(mux):
        a.execute("LISTEN jobs")
        b.execute("SELECT pg_advisory_lock(99)")
        assert pins(mux) == ["advisory lock", "listen"]
        b.execute("SELECT pg_advisory_unlock(99)")
        b.execute("SELECT pg_advisory_lock(99)")  # pinned a second time
        b.execute("SELECT pg_advisory_unlock_all()")
    row = stats(mux)
    assert row["total_pinned_count"] == 3
    assert list(row)[-2:] == ["total_pinned_count", "avg_pinned_count"]
    assert list(row)[:12][-1] == "total_bind_count"  # PgBouncer's columns first, in their order
    (totals,) = [r for r in mux.admin_dicts("SHOW STATS_TOTALS") if r["database"] == "testdb"]
    assert totals["pinned_count"] == 3 and list(totals)[-1] == "pinned_count"


def test_savepoints_bound_set_config_and_temp_table_drop(pgmux_factory: PgmuxStarter, pg: PgCluster) -> None:
    mux = start(pgmux_factory, pg, pool_size=2)
    with connect(mux) as a, connect(mux) as holder, guard(mux):
        a.execute("BEGIN")
        a.execute("SET app.kept = 'k'")
        a.execute("SAVEPOINT s1")
        a.execute("SET app.undone = 'u'")
        a.execute("ROLLBACK TO SAVEPOINT s1")
        a.execute("SELECT set_config(%s, %s, false)", ("app.bound", "b"))  # psycopg binds them
        a.execute("COMMIT")
        first = backend_pid(a)
        holder.execute("BEGIN")
        assert backend_pid(holder) == first  # a's next transaction runs on the other server
        row = a.execute("SELECT current_setting('app.kept', true), current_setting('app.undone', true), "
                        "current_setting('app.bound', true), pg_backend_pid()").fetchone()
        assert row is not None and row[:3] == ("k", None, "b") and row[3] != first
        holder.execute("COMMIT")
        a.execute("CREATE TEMP TABLE t1 (x int)")
        a.execute("CREATE TEMP TABLE t2 (x int)")
        a.execute("DROP TABLE t1")
        assert pins(mux) == ["", "temp table"]
        a.execute("DROP TABLE t2")
        assert pins(mux) == ["", ""]
        assert a.execute("SELECT to_regclass('pg_temp.t2') IS NULL").fetchone() == (True,)


def test_reset_all_goes_back_to_the_clients_startup_values(pgmux_factory: PgmuxStarter, pg: PgCluster) -> None:
    """As in PostgreSQL: RESET [ALL] and DISCARD ALL go back to the session's defaults, which include
    what the client asked for at startup, not to the server connection's defaults."""
    mux = start(pgmux_factory, pg, pool_size=2)
    opts = "-c TimeZone=Asia/Tokyo -c statement_timeout=4s -c application_name=tokyo"
    with connect(mux, options=opts) as a, connect(mux) as holder, guard(mux):
        def shown() -> tuple[Any, ...]:
            row = a.execute("SELECT current_setting('TimeZone'), current_setting('statement_timeout'), "
                            "current_setting('application_name')").fetchone()
            assert row is not None
            return tuple(row)

        assert shown() == ("Asia/Tokyo", "4s", "tokyo")
        for reset in ("RESET ALL", "DISCARD ALL", "RESET TimeZone"):
            a.execute("SET TimeZone = 'Europe/Paris'")
            a.execute("SET statement_timeout = '9s'")
            a.execute("SET application_name = 'paris'")
            a.execute(reset)
            want = ("Asia/Tokyo", "9s", "paris") if reset == "RESET TimeZone" else ("Asia/Tokyo", "4s", "tokyo")
            assert shown() == want  # on the same server
            assert a.info.parameter_status("TimeZone") == "Asia/Tokyo"
            holder.execute("BEGIN")
            holder.execute("SELECT 1")
            assert shown() == want  # and on the other one
            holder.execute("COMMIT")
            a.execute("RESET ALL")
        assert holder.execute("SELECT current_setting('TimeZone')").fetchone() != ("Asia/Tokyo",)


def test_pgmux_error_in_a_transaction_fails_it_as_postgresql_would(pgmux_factory: PgmuxStarter,
                                                                   pg: PgCluster) -> None:
    """pgmux answers a Bind of a statement the client deallocated itself; inside a transaction block
    the transaction must then be failed (ReadyForQuery 'E'), on the server too."""
    mux = start(pgmux_factory, pg, pool_size=1)

    async def main() -> None:
        conn = await asyncpg.connect(mux.dsn(), timeout=10)
        try:
            stmt = await conn.prepare("SELECT 41 + 1")
            assert await stmt.fetchval() == 42
            tr = conn.transaction()
            await tr.start()
            await conn.execute("DEALLOCATE ALL")
            with pytest.raises(asyncpg.exceptions.InvalidSQLStatementNameError):
                await stmt.fetchval()
            with pytest.raises(asyncpg.exceptions.InFailedSQLTransactionError):
                await conn.fetchval("SELECT 1")
            await tr.rollback()
            assert await conn.fetchval("SELECT 2") == 2
        finally:
            await asyncio.wait_for(conn.close(), 10)

    asyncio.run(asyncio.wait_for(main(), 30))
