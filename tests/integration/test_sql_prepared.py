"""SQL-level PREPARE / EXECUTE / DEALLOCATE under transaction pooling, with real PostgreSQL and real
clients (psql, psycopg in both protocols, asyncpg): a client's statements follow it to every server,
under its own name, and never reach another client, even one that uses the same name."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest
from helpers import backend_pid, guard

from conftest import PgmuxProc, PgmuxStarter
from pgmux.testing.cluster import PgCluster


def start(pgmux_factory: PgmuxStarter, pg: PgCluster, pool_size: int = 2) -> PgmuxProc:
    p = pg.primary
    return pgmux_factory(databases={"testdb": f"host={p.host} port={p.port} dbname=testdb"},
                         settings={"pool_mode": "transaction", "default_pool_size": pool_size,
                                   "max_client_conn": 100})


def simple(mux: PgmuxProc) -> psycopg.Connection[Any]:
    """psycopg speaking the simple query protocol, as psql does."""
    return psycopg.connect(mux.dsn(), autocommit=True, connect_timeout=10, cursor_factory=psycopg.ClientCursor)


def one(conn: psycopg.Connection[Any], sql: str) -> Any:
    row = conn.execute(sql).fetchone()
    assert row is not None
    return row[0]


def test_statement_follows_its_client_and_names_never_collide(pgmux_factory: PgmuxStarter, pg: PgCluster) -> None:
    """Two clients prepare different statements under one name; a third holds a server in a
    transaction so that each EXECUTE lands on the server the other client used last."""
    mux = start(pgmux_factory, pg, pool_size=2)
    with simple(mux) as a, simple(mux) as b, simple(mux) as holder, guard(mux):
        a.execute("PREPARE p (text) AS SELECT 'a:' || $1, pg_backend_pid()")
        b.execute("PREPARE p (text) AS SELECT 'b:' || $1, pg_backend_pid()")
        pids: dict[str, set[int]] = {"a": set(), "b": set()}
        for i in range(6):
            for name, conn in (("a", a), ("b", b)):
                holder.execute("BEGIN")  # takes the most recently used idle server
                assert one(holder, "SELECT 1") == 1
                text, pid = conn.execute(f"EXECUTE p('{i}')").fetchone() or (None, 0)
                assert text == f"{name}:{i}"
                pids[name].add(pid)
                holder.execute("COMMIT")
                text, pid = conn.execute(f"EXECUTE p('again{i}')").fetchone() or (None, 0)
                assert text == f"{name}:again{i}"
                pids[name].add(pid)
        assert len(pids["a"]) == 2 and len(pids["b"]) == 2  # both ran on both servers
        with simple(mux) as c:  # a client that prepared nothing sees nobody's statement
            with pytest.raises(psycopg.errors.InvalidSqlStatementName):
                c.execute("EXECUTE p('x')")
            c.execute("PREPARE p AS SELECT 'c'")  # and its own PREPARE of that name does not collide
            assert one(c, "EXECUTE p") == "c"
            assert one(c, "EXPLAIN EXECUTE p").startswith("Result")
        assert one(a, "EXECUTE p('z')") == "a:z"
        a.execute("CREATE TEMP TABLE copy_of_p AS EXECUTE p('t')")
        assert one(a, "SELECT * FROM copy_of_p") == "a:t"


def test_deallocate_and_discard_forget_everywhere(pgmux_factory: PgmuxStarter, pg: PgCluster) -> None:
    mux = start(pgmux_factory, pg, pool_size=2)
    with simple(mux) as a, simple(mux) as holder, guard(mux):
        a.execute("PREPARE d1 AS SELECT 1")
        a.execute("PREPARE d2 AS SELECT 2")
        first = backend_pid(a)
        holder.execute("BEGIN")
        assert one(holder, "SELECT pg_backend_pid()") == first  # the server a used, now held
        assert one(a, "EXECUTE d1") == 1  # on the other server: prepared there for it
        assert backend_pid(a) != first
        a.execute("DEALLOCATE d1")  # runs on the second server
        holder.execute("COMMIT")
        for _ in range(2):  # whichever server: the first still holds d1, and must not run it
            holder.execute("BEGIN")
            one(holder, "SELECT 1")
            with pytest.raises(psycopg.errors.InvalidSqlStatementName):
                a.execute("EXECUTE d1")
            holder.execute("COMMIT")
        assert one(a, "EXECUTE d2") == 2
        a.execute("DEALLOCATE ALL")
        with pytest.raises(psycopg.errors.InvalidSqlStatementName):
            a.execute("EXECUTE d2")
        a.execute("PREPARE d3 AS SELECT 3")
        a.execute("DISCARD ALL")
        with pytest.raises(psycopg.errors.InvalidSqlStatementName):
            a.execute("EXECUTE d3")
        with pytest.raises(psycopg.errors.InvalidSqlStatementName):
            a.execute("DEALLOCATE d3")


def test_failed_prepare_leaves_nothing_and_rollback_keeps_prepare(pgmux_factory: PgmuxStarter,
                                                                  pg: PgCluster) -> None:
    """As in PostgreSQL: a PREPARE that fails (bad SQL, or in a failed transaction) leaves nothing; one
    that succeeded stays even if its transaction rolls back (PREPARE is not transactional)."""
    mux = start(pgmux_factory, pg, pool_size=2)
    with simple(mux) as a, simple(mux) as other, simple(mux) as holder, guard(mux):
        other.execute("PREPARE bad AS SELECT 'not yours'")  # a statement of that name on some server
        with pytest.raises(psycopg.errors.SyntaxError):
            a.execute("PREPARE bad AS SELEC 1")
        with pytest.raises(psycopg.errors.UndefinedTable):
            a.execute("PREPARE bad AS SELECT * FROM no_such_table")
        a.execute("BEGIN")
        with pytest.raises(psycopg.errors.DivisionByZero):
            a.execute("SELECT 1/0")
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            a.execute("PREPARE bad AS SELECT 1")
        a.execute("ROLLBACK")
        for _ in range(3):
            holder.execute("BEGIN")
            one(holder, "SELECT 1")
            with pytest.raises(psycopg.errors.InvalidSqlStatementName):
                a.execute("EXECUTE bad")
            holder.execute("COMMIT")
        a.execute("BEGIN")
        a.execute("PREPARE kept AS SELECT 'kept'")
        a.execute("ROLLBACK")
        holder.execute("BEGIN")
        one(holder, "SELECT 1")
        assert one(a, "EXECUTE kept") == "kept"
        holder.execute("COMMIT")
        assert one(other, "EXECUTE bad") == "not yours"


def test_prepare_and_execute_in_one_query_string(pgmux_factory: PgmuxStarter, pg: PgCluster) -> None:
    mux = start(pgmux_factory, pg, pool_size=1)
    with simple(mux) as a, simple(mux) as b, guard(mux):
        b.execute("PREPARE m AS SELECT 'b'")
        cur = a.execute("PREPARE m AS SELECT 'a'; EXECUTE m")
        assert cur.nextset() and cur.fetchone() == ("a",)
        with pytest.raises(psycopg.errors.DivisionByZero):  # a PREPARE after the error never ran
            a.execute("SELECT 1/0; PREPARE later AS SELECT 1")
        with pytest.raises(psycopg.errors.InvalidSqlStatementName):
            a.execute("EXECUTE later")
        assert one(b, "EXECUTE m") == "b"
        assert one(a, "EXECUTE m") == "a"
        a.execute("CREATE TEMP TABLE IF NOT EXISTS unused (x int)")  # pinned from here: still fine
        assert one(a, "EXECUTE m") == "a"


def test_psql_clients_many_on_few_servers(pgmux_factory: PgmuxStarter, pg: PgCluster, tmp_path: Path) -> None:
    mux = start(pgmux_factory, pg, pool_size=2)
    script = "".join(f"EXECUTE q({i});\nSELECT 1 FROM pg_sleep(0.002);\n" for i in range(15))
    procs = []
    for k in range(8):
        path = tmp_path / f"client{k}.sql"
        path.write_text(f"PREPARE q (int) AS SELECT 'client{k}:' || $1;\n{script}DEALLOCATE q;\n")
        procs.append(subprocess.Popen(["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-f", str(path),
                                       mux.dsn()], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE))
    try:
        for k, proc in enumerate(procs):
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err.decode()
            lines = [line for line in out.decode().split("\n") if line and line != "1"]
            assert lines == [f"client{k}:{i}" for i in range(15)]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()


def test_drivers_execute_text_across_servers(pgmux_factory: PgmuxStarter, pg: PgCluster) -> None:
    """asyncpg (simple `execute`, and `fetchval`, which prepares `EXECUTE ...` as a named protocol-level
    statement and binds it later, perhaps elsewhere) and psycopg with bound parameters: 20 clients on
    3 servers, each with its own statement under one shared name."""
    mux = start(pgmux_factory, pg, pool_size=3)

    async def worker(k: int) -> None:
        conn = await asyncpg.connect(mux.dsn(), timeout=10)
        try:
            await conn.execute(f"PREPARE w (int) AS SELECT $1 * 1000 + {k}")
            for i in range(15):
                assert await conn.fetchval(f"EXECUTE w({i})") == i * 1000 + k
                await conn.execute(f"EXECUTE w({i})")
                assert await conn.fetchval("SELECT $1::int", i) == i
        finally:
            await asyncio.wait_for(conn.close(), 10)

    async def main() -> None:
        await asyncio.gather(*(worker(k) for k in range(20)))

    asyncio.run(asyncio.wait_for(main(), 90))
    conns = [psycopg.connect(mux.dsn(), autocommit=True, connect_timeout=10) for _ in range(6)]
    try:
        for k, conn in enumerate(conns):
            conn.execute(f"PREPARE w (int) AS SELECT $1 + {k * 100}")
        for i in range(10):
            for k, conn in enumerate(conns):
                row = conn.execute(f"EXECUTE w({i})", binary=True).fetchone()  # binary: the extended protocol
                assert row == (i + k * 100,)
                # the same text again and again: psycopg prepares it (a named Parse) after 5 runs
                assert conn.execute("EXECUTE w(7)", binary=True).fetchone() == (7 + k * 100,)
    finally:
        for conn in conns:
            conn.close()


def test_without_protocol_level_tracking(pgmux_factory: PgmuxStarter, pg: PgCluster) -> None:
    """max_prepared_statements = 0 turns protocol-level tracking off; SQL-level statements still
    follow their clients (psycopg sends `EXECUTE ...` text through unnamed Parse/Bind/Execute)."""
    p = pg.primary
    mux = pgmux_factory(databases={"testdb": f"host={p.host} port={p.port} dbname=testdb"},
                        settings={"pool_mode": "transaction", "default_pool_size": 2, "max_prepared_statements": 0})
    # prepare_threshold=None: psycopg's own named statements need protocol-level tracking
    conns = [psycopg.connect(mux.dsn(), autocommit=True, connect_timeout=10, prepare_threshold=None)
             for _ in range(5)]
    try:
        with guard(mux):
            for k, conn in enumerate(conns):
                conn.execute(f"PREPARE z AS SELECT {k}, pg_backend_pid()")
            pids: set[int] = set()
            for _ in range(6):
                for k, conn in enumerate(conns):
                    row = conn.execute("EXECUTE z", binary=True).fetchone()  # binary: Parse/Bind/Execute
                    assert row is not None and row[0] == k
                    pids.add(row[1])
                conns[0].execute("BEGIN")  # hold one server for a round: the others share the second
                conns[0].execute("SELECT 1")
                for k, conn in enumerate(conns[1:], 1):
                    row = conn.execute("EXECUTE z", binary=True).fetchone()
                    assert row is not None and row[0] == k
                    pids.add(row[1])
                conns[0].execute("COMMIT")
            assert len(pids) == 2
    finally:
        for conn in conns:
            conn.close()


def test_execute_inside_a_transaction_on_a_server_that_lacks_it(pgmux_factory: PgmuxStarter,
                                                                pg: PgCluster) -> None:
    mux = start(pgmux_factory, pg, pool_size=2)
    with simple(mux) as a, simple(mux) as holder, guard(mux):
        a.execute("CREATE TABLE IF NOT EXISTS sqlprep_tx (x int)")
        a.execute("PREPARE ins (int) AS INSERT INTO sqlprep_tx VALUES ($1)")
        first = backend_pid(a)
        holder.execute("BEGIN")
        assert backend_pid(holder) == first
        a.execute("BEGIN")
        assert backend_pid(a) != first  # the other server, which has never seen `ins`
        a.execute("EXECUTE ins(1)")
        a.execute("EXECUTE ins(2)")
        a.execute("ROLLBACK")  # the inserts go, the statement stays (PREPARE is not transactional)
        a.execute("BEGIN")
        a.execute("EXECUTE ins(3)")
        a.execute("COMMIT")
        holder.execute("COMMIT")
        assert a.execute("SELECT array_agg(x) FROM sqlprep_tx").fetchone() == ([3],)
        a.execute("DROP TABLE sqlprep_tx")
