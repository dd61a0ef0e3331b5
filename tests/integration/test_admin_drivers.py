"""The admin console through drivers that speak the extended protocol (asyncpg always does,
psycopg does with server-side binding), as exporters and scripts use it."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import psycopg


def test_asyncpg_reads_show_pools_and_runs_commands(pgmux_factory: Any) -> None:
    proc = pgmux_factory()

    async def main() -> None:
        conn = await asyncpg.connect(proc.dsn("pgbouncer"), statement_cache_size=0)
        try:
            rows = await conn.fetch("SHOW POOLS")
            assert "pgbouncer" in {r["database"] for r in rows}
            assert list(rows[0].keys())[:3] == ["database", "user", "cl_active"]
            version = await conn.fetchval("SHOW VERSION")
            assert version.startswith("PgBouncer ")
            await conn.execute("RELOAD")
            try:
                await conn.fetch("SHOW NO_SUCH_THING")
            except asyncpg.PostgresError as e:
                assert e.sqlstate == "08P01"
            else:
                raise AssertionError("an unknown SHOW must fail")
            # After the error the connection still answers.
            assert await conn.fetch("SHOW DATABASES")
            # numeric columns, decoded by asyncpg from the binary format it asks for
            other = await asyncpg.connect(proc.dsn("testdb"))
            await other.fetchval("select 1")
            await other.close()
            stats = {r["database"]: r for r in await conn.fetch("SHOW STATS")}
            assert stats["testdb"]["total_xact_count"] >= 1
            assert stats["testdb"]["total_received"] > 0
        finally:
            await conn.close()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_psycopg_server_side_binding_reads_show_clients(pgmux_factory: Any) -> None:
    proc = pgmux_factory()
    with psycopg.connect(proc.dsn("pgbouncer"), autocommit=True, connect_timeout=5) as conn:
        cur = conn.execute("SHOW CLIENTS")
        names = [d.name for d in cur.description or []]
        assert names[:5] == ["type", "user", "database", "replication", "state"]
        assert any(r[2] == "pgbouncer" for r in cur.fetchall())
