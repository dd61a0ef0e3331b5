"""Protocol-level prepared statements through transaction pooling, with real drivers at their defaults.

asyncpg's statement cache and psycopg's prepare_threshold name statements once per connection and bind
them in later transactions, which land on any server: pgmux must prepare them wherever they go
(PgBouncer 1.21+'s max_prepared_statements). Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
from typing import Any

import asyncpg
import psycopg
import pytest

from conftest import PgmuxProc, PgmuxStarter
from pgmux.testing.cluster import PgCluster


def fresh_table(pg: PgCluster, name: str, columns: str) -> None:
    pg.primary.psql(f"DROP TABLE IF EXISTS {name}; CREATE TABLE {name} ({columns}); "
                    f"GRANT ALL ON {name} TO PUBLIC", db="testdb")


def start(pgmux_factory: PgmuxStarter, pg: PgCluster, pool_size: int = 2, **settings: Any) -> PgmuxProc:
    p = pg.primary
    return pgmux_factory(databases={"testdb": f"host={p.host} port={p.port} dbname=testdb"},
                         settings={"pool_mode": "transaction", "default_pool_size": pool_size,
                                   "max_client_conn": 100, **settings})


def test_asyncpg_default_statement_cache_20_clients_pool_2(pgmux_factory: PgmuxStarter, pg: PgCluster) -> None:
    fresh_table(pg, "ps_apg", "id int PRIMARY KEY, n int NOT NULL")
    mux = start(pgmux_factory, pg)

    async def worker(k: int) -> int:
        conn = await asyncpg.connect(mux.dsn(), timeout=10)  # default statement_cache_size
        done = 0
        try:
            rnd = random.Random(k)
            for i in range(25):
                if rnd.random() < 0.5:
                    assert await conn.fetchval("SELECT $1::int * 2", i) == i * 2
                    row = await conn.fetchrow("SELECT count(*) AS c, $1::text AS t FROM ps_apg", f"w{k}")
                    assert row is not None and row["t"] == f"w{k}"
                else:
                    async with conn.transaction():
                        await conn.execute("INSERT INTO ps_apg VALUES ($1, $2)", k * 1000 + i, i)
                        assert await conn.fetchval("SELECT n FROM ps_apg WHERE id = $1", k * 1000 + i) == i
                done += 1
        finally:
            await asyncio.wait_for(conn.close(), 10)
        return done

    async def main() -> list[int]:
        return await asyncio.gather(*(worker(k) for k in range(20)))

    assert asyncio.run(asyncio.wait_for(main(), 120)) == [25] * 20
    servers = [s for s in mux.admin_dicts("SHOW SERVERS") if s["database"] == "testdb"]
    assert 1 <= len(servers) <= 2
    stats = {r["database"]: r for r in mux.admin_dicts("SHOW STATS")}["testdb"]
    assert stats["total_client_parse_count"] >= 20
    assert stats["total_bind_count"] >= 500
    # Each client Parse is prepared anew on its server (a DDL may have come since: session/prepared.py),
    # and a copy older than a client's Parse once more on each other server it binds on.
    assert stats["total_client_parse_count"] <= stats["total_server_parse_count"] \
        <= stats["total_client_parse_count"] * 2


def test_psycopg_prepare_threshold_zero(pgmux_factory: PgmuxStarter, pg: PgCluster) -> None:
    mux = start(pgmux_factory, pg)
    conns = [psycopg.connect(mux.dsn(), prepare_threshold=0, autocommit=True, connect_timeout=10)
             for _ in range(4)]
    try:
        for i in range(20):
            for k, conn in enumerate(conns):
                row = conn.execute("SELECT %s::int + %s::int", (i, k)).fetchone()
                assert row == (i + k,)
                row = conn.execute("SELECT %s::text || 'x'", (f"c{k}",)).fetchone()
                assert row == (f"c{k}x",)
        with conns[0].transaction():
            assert conns[0].execute("SELECT %s::int", (5,)).fetchone() == (5,)
        clients = [c for c in mux.admin_dicts("SHOW CLIENTS") if c["database"] == "testdb"]
        assert sorted(c["prepared_statements"] for c in clients) == [2, 2, 2, 3]
        servers = [s for s in mux.admin_dicts("SHOW SERVERS") if s["database"] == "testdb"]
        assert all(0 < s["prepared_statements"] <= 3 for s in servers)
    finally:
        for conn in conns:
            conn.close()


def test_statement_prepared_on_one_server_runs_on_another(pgmux_factory: PgmuxStarter, pg: PgCluster) -> None:
    """Hold the first server in a transaction: the next one must get the statement injected."""
    mux = start(pgmux_factory, pg)
    with psycopg.connect(mux.dsn(), prepare_threshold=0, autocommit=True, connect_timeout=10) as a, \
            psycopg.connect(mux.dsn(), autocommit=True, connect_timeout=10) as holder:
        pid1 = a.execute("SELECT pg_backend_pid() + %s::int", (0,)).fetchone()
        holder.execute("BEGIN")
        holder.execute("SELECT pg_backend_pid()")
        pid2 = a.execute("SELECT pg_backend_pid() + %s::int", (0,)).fetchone()
        holder.execute("COMMIT")
        assert pid1 is not None and pid2 is not None
        pids = {pid1[0], pid2[0]}
        assert len(pids) == 2, "the same server twice: the test did not exercise a second one"
        named = a.execute("SELECT name FROM pg_prepared_statements").fetchall()
        assert all(n.startswith("pgmux_") for (n,) in named)


def test_max_prepared_statements_zero_forwards_names(pgmux_factory: PgmuxStarter, pg: PgCluster) -> None:
    mux = start(pgmux_factory, pg, pool_size=1, max_prepared_statements=0)
    with psycopg.connect(mux.dsn(), prepare_threshold=0, autocommit=True, connect_timeout=10) as conn:
        conn.execute("SELECT %s::int", (1,))
        names = [n for (n,) in conn.execute("SELECT name FROM pg_prepared_statements").fetchall()]
        assert names and all(n.startswith("_pg3_") for n in names)


def test_pgbench_prepared_in_transaction_mode(pgmux_factory: PgmuxStarter, pg: PgCluster) -> None:
    p = pg.primary
    db = "psbench"
    pg.primary.psql(f"DROP DATABASE IF EXISTS {db}")
    pg.primary.psql(f"CREATE DATABASE {db}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    subprocess.run(["pgbench", "-i", "-q", "-s", "1", "-h", p.host, "-p", str(p.port), "-U", "postgres", db],
                   check=True, capture_output=True, timeout=120, env=env)
    mux = pgmux_factory(databases={db: f"host={p.host} port={p.port} dbname={db}"},
                        settings={"pool_mode": "transaction", "default_pool_size": 3, "max_client_conn": 100})
    env["PGCONNECT_TIMEOUT"] = "10"
    proc = subprocess.run(["pgbench", "-h", mux.host, "-p", str(mux.port), "-U", "postgres", "-S", "-M", "prepared",
                           "-c", "10", "-j", "2", "-T", "3", "-n", db],
                          capture_output=True, text=True, timeout=60, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "aborted" not in out.lower() or "number of failed transactions: 0" in out, out[-3000:]
    assert "number of failed transactions: 0" in out, out[-3000:]
    processed = int(out.split("number of transactions actually processed: ")[1].split()[0].split("/")[0])
    assert processed > 100


@pytest.mark.parametrize("mode", ["transaction"])
def test_asyncpg_unnamed_statements_across_servers(pgmux_factory: PgmuxStarter, pg: PgCluster, mode: str) -> None:
    """statement_cache_size=0: Parse(unnamed)/Describe/Sync, then Bind/Execute/Sync, maybe elsewhere."""
    mux = start(pgmux_factory, pg)

    async def worker(k: int) -> None:
        conn = await asyncpg.connect(mux.dsn(), timeout=10, statement_cache_size=0)
        try:
            for i in range(20):
                assert await conn.fetchval("SELECT $1::int + $2::int", i, k) == i + k
        finally:
            await asyncio.wait_for(conn.close(), 10)

    async def main() -> None:
        await asyncio.gather(*(worker(k) for k in range(10)))

    asyncio.run(asyncio.wait_for(main(), 60))


def test_asyncpg_pool_with_its_reset_query(pgmux_factory: PgmuxStarter, pg: PgCluster) -> None:
    """asyncpg.Pool resets a connection on release (advisory unlock all, CLOSE ALL, UNLISTEN *,
    RESET ALL): through pgmux that must neither pin nor lose the statement cache."""
    mux = start(pgmux_factory, pg)

    async def main() -> None:
        pool = await asyncpg.create_pool(mux.dsn(), min_size=2, max_size=6, timeout=10)
        try:
            async def one(i: int) -> None:
                async with pool.acquire() as conn:
                    assert await conn.fetchval("SELECT $1::int + 1", i) == i + 1
                    await conn.execute("SET search_path = public")

            await asyncio.gather(*(one(i) for i in range(60)))
        finally:
            await asyncio.wait_for(pool.close(), 10)

    asyncio.run(asyncio.wait_for(main(), 60))
    assert [c["pin"] for c in mux.admin_dicts("SHOW CLIENTS") if c["database"] == "testdb"] == []


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
def test_50_clients_pool_5_mixed_workload(pgmux_factory: PgmuxStarter, pg: PgCluster, driver: str) -> None:
    """Issue 3's bar for the drivers themselves: 50 concurrent clients on a pool of 5, reads and
    writes mixed, asyncpg at its default statement cache and psycopg with prepare_threshold=0 (every
    statement prepared), zero errors and every result exact."""
    table = f"ps50_{driver}"
    fresh_table(pg, table, "id int PRIMARY KEY, n int NOT NULL")
    mux = start(pgmux_factory, pg, pool_size=5, max_client_conn=200)
    rounds = 12

    async def asyncpg_client(k: int) -> int:
        conn = await asyncpg.connect(mux.dsn(), timeout=20)
        try:
            for i in range(rounds):
                if (k + i) % 2:
                    async with conn.transaction():
                        await conn.execute(f"INSERT INTO {table} VALUES ($1, $2)", k * 100 + i, i)
                        assert await conn.fetchval(f"SELECT n FROM {table} WHERE id = $1", k * 100 + i) == i
                else:
                    assert await conn.fetchval("SELECT $1::int * 3", k + i) == (k + i) * 3
        finally:
            await asyncio.wait_for(conn.close(), 10)
        return k

    async def psycopg_client(k: int) -> int:
        conn = await psycopg.AsyncConnection.connect(mux.dsn(), prepare_threshold=0, autocommit=True,
                                                     connect_timeout=20)
        try:
            for i in range(rounds):
                if (k + i) % 2:
                    async with conn.transaction():
                        await conn.execute(f"INSERT INTO {table} VALUES (%s, %s)", (k * 100 + i, i))
                        cur = await conn.execute(f"SELECT n FROM {table} WHERE id = %s", (k * 100 + i,))
                        assert await cur.fetchone() == (i,)
                else:
                    cur = await conn.execute("SELECT %s::int * 3", (k + i,))
                    assert await cur.fetchone() == ((k + i) * 3,)
        finally:
            await asyncio.wait_for(conn.close(), 10)
        return k

    client = asyncpg_client if driver == "asyncpg" else psycopg_client

    async def main() -> list[int]:
        return await asyncio.gather(*(client(k) for k in range(50)))

    assert sorted(asyncio.run(asyncio.wait_for(main(), 120))) == list(range(50))
    assert pg.primary.psql(f"SELECT count(*) FROM {table}", db="testdb") == str(50 * rounds // 2)
    servers = [s for s in mux.admin_dicts("SHOW SERVERS") if s["database"] == "testdb"]
    assert 1 <= len(servers) <= 5
    stats = {r["database"]: r for r in mux.admin_dicts("SHOW STATS")}["testdb"]
    assert stats["total_bind_count"] >= 50 * rounds  # named statements, bound on whichever server came
    # A client Parse that reaches a server is prepared anew there, and a copy older than a client's Parse
    # once more on each other server it binds on (session/prepared.py); a Parse of a text some server
    # parsed already, sent while the client holds no server, is answered without one, and the text is
    # prepared where its Bind lands unless that server's copy is newer (session/localparse.py) ...
    assert 0 < stats["total_server_parse_count"] <= stats["total_client_parse_count"] * 5
    # ... while the servers hold each text once, shared across clients.
    assert all(s["prepared_statements"] <= 3 for s in servers), servers


def test_asyncpg_statement_cache_survives_ddl_by_another_connection(pgmux_factory: PgmuxStarter,
                                                                     pg: PgCluster) -> None:
    """Issue 10: asyncpg holds its statements (one text shared by every client) across an ALTER TABLE made
    directly on PostgreSQL. Directly, PostgreSQL refuses each held statement once (0A000, routine
    RevalidateCachedQuery) and asyncpg prepares it again and retries: the application sees no error and
    the new column. Through pgmux, with the statements spread over the pool's servers, the same."""
    fresh_table(pg, "ps_ddl", "id int PRIMARY KEY, n int NOT NULL")
    pg.primary.psql("INSERT INTO ps_ddl SELECT i, i FROM generate_series(0, 19) i", db="testdb")
    mux = start(pgmux_factory, pg, pool_size=3)

    async def main() -> list[list[Any]]:
        conns = await asyncio.gather(*(asyncpg.connect(mux.dsn(), timeout=20) for _ in range(20)))
        try:
            async def rounds(k: int, conn: Any) -> list[Any]:
                return [tuple(await conn.fetchrow("SELECT * FROM ps_ddl WHERE id = $1", k)) for _ in range(5)]

            before = await asyncio.gather(*(rounds(k, c) for k, c in enumerate(conns)))
            direct = await asyncpg.connect(f"postgresql://postgres@{pg.primary.host}:{pg.primary.port}/testdb")
            await direct.execute("ALTER TABLE ps_ddl ADD COLUMN extra text DEFAULT 'new'")
            await direct.close()
            after = await asyncio.gather(*(rounds(k, c) for k, c in enumerate(conns)))
            return [b + a for b, a in zip(before, after, strict=True)]
        finally:
            await asyncio.gather(*(asyncio.wait_for(c.close(), 10) for c in conns))

    results = asyncio.run(asyncio.wait_for(main(), 120))
    assert results == [[(k, k)] * 5 + [(k, k, "new")] * 5 for k in range(20)]
    servers = [s for s in mux.admin_dicts("SHOW SERVERS") if s["database"] == "testdb"]
    assert 1 < len(servers) <= 3
