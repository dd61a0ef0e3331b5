"""SQLAlchemy (asyncpg and psycopg dialects, their defaults: prepared statements and all) through
transaction pooling: pool 5, 50 concurrent clients, a mixed read/write workload, zero errors."""

from __future__ import annotations

import asyncio
import random

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from conftest import PgmuxStarter
from pgmux.testing.cluster import PgCluster

CLIENTS = 50
ROUNDS = 20


@pytest.mark.parametrize("dialect", ["postgresql+asyncpg", "postgresql+psycopg"])
def test_sqlalchemy_50_clients_pool_5(pgmux_factory: PgmuxStarter, pg: PgCluster, dialect: str) -> None:
    table = "sa_" + dialect.split("+")[1]
    pg.primary.psql(f"DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (client int, n int, note text); "
                    f"GRANT ALL ON {table} TO PUBLIC", db="testdb")
    p = pg.primary
    mux = pgmux_factory(databases={"testdb": f"host={p.host} port={p.port} dbname=testdb"},
                        settings={"pool_mode": "transaction", "default_pool_size": 5, "max_client_conn": 200})
    url = f"{dialect}://postgres@127.0.0.1:{mux.port}/testdb"

    async def client(engine, i: int) -> int:  # type: ignore[no-untyped-def]
        rng = random.Random(i)
        seen = 0
        async with engine.connect() as conn:
            for n in range(ROUNDS):
                if rng.random() < 0.5:
                    await conn.execute(text(f"INSERT INTO {table} VALUES (:c, :n, :note)"),
                                       {"c": i, "n": n, "note": f"client {i} row {n}"})
                    await conn.commit()
                else:
                    row = (await conn.execute(text(f"SELECT count(*) FROM {table} WHERE client = :c"),
                                              {"c": i})).scalar_one()
                    await conn.commit()
                    assert row >= seen
                    seen = row
        return i

    async def main() -> None:
        # One engine connection per client: SQLAlchemy's own pool sized to the 50 clients, so that
        # pgmux's 5 servers are what is shared.
        engine = create_async_engine(url, pool_size=CLIENTS, max_overflow=0)
        try:
            done = await asyncio.wait_for(asyncio.gather(*(client(engine, i) for i in range(CLIENTS))), 120)
            assert sorted(done) == list(range(CLIENTS))
        finally:
            await engine.dispose()

    asyncio.run(main())
    servers = [r for r in mux.admin_dicts("SHOW SERVERS") if r["database"] == "testdb"]
    assert len(servers) <= 5
    inserted = int(pg.primary.psql(f"SELECT count(*) FROM {table}", db="testdb"))
    assert inserted == sum(_writes(i) for i in range(CLIENTS))


def _writes(i: int) -> int:
    """How many INSERTs client i made: the same seeded choices as in the test."""
    rng = random.Random(i)
    return sum(1 for _ in range(ROUNDS) if rng.random() < 0.5)
