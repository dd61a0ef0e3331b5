"""Session state under transaction pooling: a client's SETs follow it to every server and are never seen
by another client, with real PostgreSQL and real drivers. Pool size 1, so every client shares one
server and any leak would show."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import psycopg

from conftest import PgmuxProc, PgmuxStarter
from pgmux.testing.cluster import PgCluster

SETTINGS = ("search_path", "TimeZone", "statement_timeout", "myapp.tag")


def start(pgmux_factory: PgmuxStarter, pg: PgCluster, pool_size: int = 1) -> PgmuxProc:
    p = pg.primary
    return pgmux_factory(databases={"testdb": f"host={p.host} port={p.port} dbname=testdb"},
                         settings={"pool_mode": "transaction", "default_pool_size": pool_size,
                                   "max_client_conn": 100})


def connect(mux: PgmuxProc) -> psycopg.Connection[Any]:
    return psycopg.connect(mux.dsn(), autocommit=True, connect_timeout=10, prepare_threshold=None)


def shown(conn: psycopg.Connection[Any]) -> dict[str, str]:
    row = conn.execute("SELECT current_setting('search_path'), current_setting('TimeZone'), "
                       "current_setting('statement_timeout'), current_setting('myapp.tag', true)").fetchone()
    assert row is not None
    return dict(zip(SETTINGS, row, strict=True))


def test_each_client_sees_its_own_settings_and_no_one_elses(pgmux_factory: PgmuxStarter, pg: PgCluster) -> None:
    mux = start(pgmux_factory, pg)
    with connect(mux) as fresh:
        defaults = shown(fresh)
    conns = [connect(mux) for _ in range(3)]
    try:
        wanted = []
        for k, conn in enumerate(conns):
            conn.execute(f"SET search_path = s{k}, public")
            conn.execute(f"SET TimeZone = 'Etc/GMT+{k + 1}'")
            conn.execute(f"SET statement_timeout = '{k + 1}s'")
            conn.execute(f"SET myapp.tag = 'client{k}'")
            wanted.append({"search_path": f"s{k}, public", "TimeZone": f"Etc/GMT+{k + 1}",
                           "statement_timeout": f"{k + 1}s", "myapp.tag": f"client{k}"})
        for _ in range(3):
            for k, conn in enumerate(conns):
                assert shown(conn) == wanted[k]
                with connect(mux) as other:  # a newcomer between them sees the defaults
                    assert shown(other)["search_path"] == defaults["search_path"]
                    assert shown(other)["TimeZone"] == defaults["TimeZone"]
                    assert shown(other)["statement_timeout"] == defaults["statement_timeout"]
                    assert shown(other)["myapp.tag"] in ("", None)
        conns[0].execute("RESET search_path")
        assert shown(conns[0])["search_path"] == defaults["search_path"]
        assert shown(conns[1]) == wanted[1]
    finally:
        for conn in conns:
            conn.close()


def test_rolled_back_and_local_sets_do_not_stick(pgmux_factory: PgmuxStarter, pg: PgCluster) -> None:
    mux = start(pgmux_factory, pg)
    with connect(mux) as conn, connect(mux) as other:
        base = shown(conn)["statement_timeout"]
        conn.execute("BEGIN")
        conn.execute("SET statement_timeout = '7s'")
        conn.execute("ROLLBACK")
        assert shown(other)["statement_timeout"] == base
        assert shown(conn)["statement_timeout"] == base
        conn.execute("BEGIN")
        conn.execute("SET LOCAL statement_timeout = '8s'")
        conn.execute("COMMIT")
        assert shown(other)["statement_timeout"] == base
        assert shown(conn)["statement_timeout"] == base
        conn.execute("BEGIN")
        conn.execute("SET statement_timeout = '9s'")
        conn.execute("COMMIT")
        assert shown(other)["statement_timeout"] == base
        assert shown(conn)["statement_timeout"] == "9s"


def test_asyncpg_settings_follow_the_client_across_servers(pgmux_factory: PgmuxStarter, pg: PgCluster) -> None:
    mux = start(pgmux_factory, pg, pool_size=2)

    async def worker(k: int) -> None:
        conn = await asyncpg.connect(mux.dsn(), timeout=10)
        try:
            await conn.execute(f"SET search_path = w{k}")
            await conn.execute(f"SET myapp.tag = 'w{k}'")
            for _ in range(15):
                assert await conn.fetchval("SELECT current_setting('search_path')") == f"w{k}"
                assert await conn.fetchval("SELECT current_setting('myapp.tag', true)") == f"w{k}"
        finally:
            await asyncio.wait_for(conn.close(), 10)

    async def main() -> None:
        await asyncio.gather(*(worker(k) for k in range(8)))

    asyncio.run(asyncio.wait_for(main(), 60))


# -- pinning ---------------------------------------------------------------------------------------
def pins(mux: PgmuxProc) -> list[str]:
    return sorted(c["pin"] for c in mux.admin_dicts("SHOW CLIENTS") if c["database"] == "testdb")


def test_listen_in_transaction_mode_gets_its_notifications(pgmux_factory: PgmuxStarter, pg: PgCluster) -> None:
    mux = start(pgmux_factory, pg, pool_size=2)
    with connect(mux) as listener, connect(mux) as sender:
        listener.execute("LISTEN jobs")
        assert pins(mux) == ["", "listen"]
        for i in range(3):
            sender.execute(f"NOTIFY jobs, 'n{i}'")  # runs on the other server
        got = [n.payload for n in listener.notifies(timeout=5, stop_after=3)]
        assert got == ["n0", "n1", "n2"]
        sender.execute("SELECT pg_notify('jobs', 'direct')")
        assert [n.payload for n in listener.notifies(timeout=5, stop_after=1)] == ["direct"]
        listener.execute("UNLISTEN *")
        assert pins(mux) == ["", ""]
    stats = {r["database"]: r for r in mux.admin_dicts("SHOW STATS")}
    assert "testdb" in stats


def test_temp_table_keeps_its_server_and_stays_private(pgmux_factory: PgmuxStarter, pg: PgCluster) -> None:
    mux = start(pgmux_factory, pg, pool_size=2)
    with connect(mux) as a, connect(mux) as b:
        a.execute("CREATE TEMP TABLE scratch (x int)")
        for i in range(5):
            a.execute("INSERT INTO scratch VALUES (%s)", (i,))
            assert b.execute("SELECT to_regclass('scratch') IS NULL").fetchone() == (True,)
        assert a.execute("SELECT sum(x) FROM scratch").fetchone() == (10,)
        assert pins(mux) == ["", "temp table"]
        a.execute("DISCARD TEMP")
        assert pins(mux) == ["", ""]
    # The pinned client left its server clean (DISCARD TEMP): later clients work as usual.
    with connect(mux) as c:
        assert c.execute("SELECT 1").fetchone() == (1,)


def test_pinned_client_leaving_takes_its_server_state_along(pgmux_factory: PgmuxStarter, pg: PgCluster) -> None:
    mux = start(pgmux_factory, pg, pool_size=1)
    with connect(mux) as a:
        a.execute("SELECT pg_advisory_lock(4242)")
        assert pins(mux) == ["advisory lock"]
    with connect(mux) as b:  # the server holding the lock was closed, not handed on
        assert b.execute("SELECT pg_try_advisory_lock(4242)").fetchone() == (True,)
        b.execute("SELECT pg_advisory_unlock_all()")


def test_extended_protocol_set_and_advisory_lock(pgmux_factory: PgmuxStarter, pg: PgCluster) -> None:
    """asyncpg's prepared path (as SQLAlchemy uses it) for a SET, and psycopg's parameters for a lock."""
    mux = start(pgmux_factory, pg, pool_size=2)

    async def main() -> None:
        a = await asyncpg.connect(mux.dsn(), timeout=10)
        b = await asyncpg.connect(mux.dsn(), timeout=10)
        try:
            stmt = await a.prepare("SET search_path = ext_a")
            await stmt.fetch()
            for _ in range(5):
                assert await a.fetchval("SELECT current_setting('search_path')") == "ext_a"
                assert await b.fetchval("SELECT current_setting('search_path')") != "ext_a"
        finally:
            await asyncio.wait_for(a.close(), 10)
            await asyncio.wait_for(b.close(), 10)

    asyncio.run(asyncio.wait_for(main(), 30))
    with connect(mux) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (77,))
        assert pins(mux) == ["advisory lock"]
        conn.execute("SELECT pg_advisory_unlock(%s)", (77,))
        assert pins(mux) == [""]
