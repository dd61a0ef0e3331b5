"""Real clients through pgmux: psql, psycopg 3 and asyncpg, plus cancels and backends that die.

Transaction pooling unless a test says otherwise. Drivers that prepare named statements behind
the caller's back are configured as a PgBouncer user would in transaction mode (psycopg
prepare_threshold=None, asyncpg statement_cache_size=0). Every result is checked against the
primary directly or against what the test wrote; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import functools
import os
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest
from helpers import wait_for
from psycopg import errors as pgerr
from psycopg import pq

from conftest import PgmuxProc, PgmuxStarter
from pgmux.testing.cluster import PgCluster

POOL_SIZE = 3


# -- helpers -------------------------------------------------------------------------------------
def connect(mux: PgmuxProc, db: str = "testdb", **kwargs: Any) -> psycopg.Connection[Any]:
    kwargs.setdefault("prepare_threshold", None)  # no named statements across transactions
    kwargs.setdefault("connect_timeout", 10)
    return psycopg.connect(mux.dsn(db), **kwargs)


def direct(pg: PgCluster, db: str = "testdb") -> psycopg.Connection[Any]:
    return psycopg.connect(pg.primary.dsn(db=db), autocommit=True, connect_timeout=10)


def psql(mux: PgmuxProc, *args: str, db: str = "testdb", check: bool = True, input: str | None = None,
         quiet: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGCONNECT_TIMEOUT"] = "10"
    flags = ["-X", "-At", "-v", "ON_ERROR_STOP=1"] + (["-q"] if quiet else [])
    proc = subprocess.run(["psql", *flags, "-d", mux.dsn(db), *args],
                          input=input, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"psql {args} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def fresh_table(pg: PgCluster, name: str, columns: str = "id int PRIMARY KEY, name text") -> None:
    pg.primary.psql(f"DROP TABLE IF EXISTS {name}; CREATE TABLE {name} ({columns}); "
                    f"GRANT ALL ON {name} TO PUBLIC", db="testdb")


class Background:
    """Run a callable in a thread; `result()` re-raises its exception, with a bounded join."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.value: Any = None
        self.error: BaseException | None = None
        self.elapsed = 0.0
        self._fn = fn
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        started = time.monotonic()
        try:
            self.value = self._fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            self.error = e
        self.elapsed = time.monotonic() - started

    def join(self, timeout: float) -> Background:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"background call still running after {timeout}s"
        return self

    def result(self, timeout: float) -> Any:
        self.join(timeout)
        if self.error is not None:
            raise self.error
        return self.value


def wait_active_query(pg: PgCluster, text: str, timeout: float = 10) -> int:
    """The backend pid running `text` (seen directly on the primary)."""
    with direct(pg) as conn:
        def find() -> int | None:
            row = conn.execute("SELECT pid FROM pg_stat_activity WHERE state = 'active' AND query = %s",
                               (text,)).fetchone()
            return row[0] if row else None
        return int(wait_for(find, f"{text!r} running on the primary", timeout))


def live_backend_pids(pg: PgCluster) -> set[int]:
    with direct(pg) as conn:
        cur = conn.execute("SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend'")
        return {r[0] for r in cur}


def server_count(pool: dict[str, Any]) -> int:
    return sum(int(pool[k]) for k in ("sv_active", "sv_idle", "sv_used", "sv_tested", "sv_login"))


@pytest.fixture
def mux(pgmux_factory: PgmuxStarter) -> PgmuxProc:
    return pgmux_factory(settings={"pool_mode": "transaction", "default_pool_size": POOL_SIZE})


@pytest.fixture
def session_mux(pgmux_factory: PgmuxStarter) -> PgmuxProc:
    return pgmux_factory(settings={"pool_mode": "session", "default_pool_size": POOL_SIZE})


# -- psql ----------------------------------------------------------------------------------------
def test_psql_simple_and_multi_statement_queries(mux: PgmuxProc, pg: PgCluster) -> None:
    fresh_table(pg, "cl_psql")
    assert psql(mux, "-c", "SELECT count(*), min(id), max(name) FROM items").stdout == "10|1|item 9\n"
    # One Query message with several statements: psql 15 prints every result.
    out = psql(mux, "-c", "INSERT INTO cl_psql VALUES (1, 'a'); INSERT INTO cl_psql VALUES (2, 'b'); "
                          "SELECT string_agg(name, ',' ORDER BY id) FROM cl_psql; SELECT 42").stdout
    assert out.split() == ["a,b", "42"]
    # A script over stdin: many round trips on one client connection, one transaction block among them.
    script = ("BEGIN;\nUPDATE cl_psql SET name = 'z' WHERE id = 1;\nSELECT name FROM cl_psql WHERE id = 1;\n"
              "ROLLBACK;\nSELECT name FROM cl_psql WHERE id = 1;\n")
    proc = psql(mux, "-f", "-", input=script)
    assert proc.stdout.split() == ["z", "a"]
    # An error ends psql with status 1 and PostgreSQL's message, through the pooler unchanged.
    bad = psql(mux, "-c", "SELECT 1/0", check=False)
    assert bad.returncode == 1 and "division by zero" in bad.stderr


def test_psql_copy_from_and_to_file(mux: PgmuxProc, pg: PgCluster, tmp_path: Path) -> None:
    fresh_table(pg, "cl_copy")
    src = tmp_path / "in.tsv"
    # Text-format COPY with escapes, NULLs and multi-byte text; enough rows to span many socket reads.
    # Each name is `row N é\\t<TAB>tab` once decoded; every 7th row is NULL.
    names = {i: f"row {i} é" + "\\\\t\\ttab" if i % 7 else "\\N" for i in range(1, 20_001)}
    lines = [f"{i}\t{name}" for i, name in names.items()]
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = psql(mux, "-c", f"\\copy cl_copy FROM '{src}'", quiet=False)
    assert out.stdout.strip() == "COPY 20000"
    with direct(pg) as conn:
        assert conn.execute("SELECT count(*), count(name), max(id) FROM cl_copy").fetchone() \
            == (20000, 17143, 20000)
        assert conn.execute("SELECT name FROM cl_copy WHERE id = 1").fetchone() == ("row 1 é\\t\ttab",)
    dst = tmp_path / "out.tsv"
    out = psql(mux, "-c", f"\\copy (SELECT * FROM cl_copy ORDER BY id) TO '{dst}'", quiet=False)
    assert out.stdout.strip() == "COPY 20000"
    assert dst.read_bytes() == src.read_bytes()


def test_psql_empty_query_and_notice(mux: PgmuxProc) -> None:
    out = psql(mux, "-c", ";")
    assert out.returncode == 0 and out.stdout == ""
    out = psql(mux, "-c", "DO $$ BEGIN RAISE NOTICE 'hello from %', 'plpgsql'; END $$",
               "-c", "SELECT 'after'")
    assert "NOTICE:  hello from plpgsql" in out.stderr
    assert out.stdout == "after\n"


def test_psql_listen_notify_in_session_mode(session_mux: PgmuxProc) -> None:
    out = psql(session_mux, "-c", "LISTEN cl_chan", "-c", "NOTIFY cl_chan, 'ping'", "-c", "SELECT 'done'")
    assert 'Asynchronous notification "cl_chan" with payload "ping" received' in out.stdout
    assert out.stdout.rstrip().endswith("done")


def test_psycopg_listen_notify_between_clients_in_session_mode(session_mux: PgmuxProc) -> None:
    with connect(session_mux, autocommit=True) as listener, connect(session_mux, autocommit=True) as talker:
        listener.execute("LISTEN cl_chan2")
        talker_pid = talker.execute("SELECT pg_backend_pid()").fetchone()
        talker.execute("SELECT pg_notify('cl_chan2', 'payload ' || g) FROM generate_series(1, 3) g")
        got = list(listener.notifies(timeout=5, stop_after=3))
        assert [(n.channel, n.payload) for n in got] == [("cl_chan2", f"payload {i}") for i in (1, 2, 3)]
        assert talker_pid is not None and {n.pid for n in got} == {talker_pid[0]}


# -- psycopg 3 -----------------------------------------------------------------------------------
@pytest.mark.parametrize("pipeline", [False, True])
def test_libpq_extended_copy_in_gives_the_server_back(pgmux_factory: PgmuxStarter, pg: PgCluster,
                                                      pipeline: bool) -> None:
    """PQsendQueryParams("COPY ... FROM STDIN"): libpq sends a Sync after Execute and another after
    CopyDone; the backend answers only the second. With one server in the pool, the next client
    gets it only if pgmux saw the COPY through."""
    mux = pgmux_factory(settings={"pool_mode": "transaction", "default_pool_size": 1,
                                  "query_wait_timeout": 10})
    fresh_table(pg, "cl_xcopy", "v int")
    with connect(mux, autocommit=True) as conn:
        c = conn.pgconn
        if pipeline:
            c.enter_pipeline_mode()
        c.send_query_params(b"COPY cl_xcopy FROM STDIN", None)
        if pipeline:
            c.pipeline_sync()
        res = c.get_result()
        assert res is not None and res.status == pq.ExecStatus.COPY_IN
        c.put_copy_data(b"1\n2\n3\n")
        c.put_copy_end()
        if pipeline:
            c.pipeline_sync()
        res = c.get_result()
        assert res is not None and res.status == pq.ExecStatus.COMMAND_OK and res.command_status == b"COPY 3"
        assert c.get_result() is None
        if pipeline:
            syncs = [c.get_result(), c.get_result()]
            assert [r.status if r else None for r in syncs] == [pq.ExecStatus.PIPELINE_SYNC] * 2
            c.exit_pipeline_mode()
        with connect(mux, autocommit=True) as other:
            assert other.execute("SELECT count(*) FROM cl_xcopy").fetchone() == (3,)
        assert conn.execute("SELECT sum(v) FROM cl_xcopy").fetchone() == (6,)


def test_psycopg_parameters_and_types(mux: PgmuxProc) -> None:
    import datetime
    import decimal

    values = (42, -7.5, "multi\tline\n'quoted' ünïcode", None, b"\x00\xffbytes", datetime.date(2024, 2, 29),
              decimal.Decimal("12345678901234567890.000001"), [1, 2, 3], True)
    with connect(mux) as conn:
        for binary in (False, True):
            cur = conn.cursor(binary=binary)
            row = cur.execute("SELECT %s::int, %s::float8, %s::text, %s::text, %s::bytea, %s::date, "
                              "%s::numeric, %s::int[], %s::bool", values).fetchone()
            assert row == values
        cur = conn.execute("SELECT id, name FROM items WHERE id = ANY(%s) ORDER BY id", ([2, 5, 99],))
        assert cur.fetchall() == [(2, "item 2"), (5, "item 5")]
        assert conn.execute("SELECT %(a)s::int + %(b)s::int", {"a": 1, "b": 2}).fetchone() == (3,)
        for i in range(20):  # many round trips on one client, each its own transaction in tx mode
            assert conn.execute("SELECT %s::int * 2", (i,)).fetchone() == (i * 2,)
            conn.commit()


def test_psycopg_transactions_commit_rollback_savepoint(mux: PgmuxProc, pg: PgCluster) -> None:
    fresh_table(pg, "cl_tx")
    with connect(mux) as conn:
        with conn.transaction():
            conn.execute("INSERT INTO cl_tx VALUES (1, 'kept')")
            pid = conn.execute("SELECT pg_backend_pid()").fetchone()
            with pytest.raises(pgerr.UniqueViolation):
                with conn.transaction():  # savepoint
                    conn.execute("INSERT INTO cl_tx VALUES (2, 'savepoint rolled back')")
                    conn.execute("INSERT INTO cl_tx VALUES (1, 'duplicate')")
            # Same server for the whole transaction, whatever else happens in the pool.
            assert conn.execute("SELECT pg_backend_pid()").fetchone() == pid
        with pytest.raises(ZeroDivisionError):
            with conn.transaction():
                conn.execute("INSERT INTO cl_tx VALUES (3, 'rolled back')")
                raise ZeroDivisionError
        conn.execute("INSERT INTO cl_tx VALUES (4, 'implicit')")
        conn.rollback()
        conn.execute("INSERT INTO cl_tx VALUES (5, 'committed')")
        conn.commit()
        # A failed statement poisons its transaction until rollback, and only that one.
        with pytest.raises(pgerr.UndefinedTable):
            conn.execute("SELECT * FROM cl_no_such_table")
        with pytest.raises(pgerr.InFailedSqlTransaction):
            conn.execute("SELECT 1")
        conn.rollback()
        assert conn.execute("SELECT 1").fetchone() == (1,)
    with direct(pg) as d:
        assert d.execute("SELECT id, name FROM cl_tx ORDER BY id").fetchall() \
            == [(1, "kept"), (5, "committed")]


def test_psycopg_pipeline_many_statements(mux: PgmuxProc, pg: PgCluster) -> None:
    fresh_table(pg, "cl_pipe")
    with connect(mux, autocommit=True) as conn:
        with conn.pipeline():
            cursors = []
            for i in range(300):
                cursors.append(conn.execute("INSERT INTO cl_pipe VALUES (%s, %s) RETURNING id * 10",
                                            (i, f"n{i}")))
            cursors.append(conn.execute("SELECT count(*) FROM cl_pipe"))
            conn.cursor().executemany("INSERT INTO cl_pipe VALUES (%s, %s)",
                                      [(i, "many") for i in range(300, 600)])
        assert [c.fetchone() for c in cursors[:-1]] == [(i * 10,) for i in range(300)]
        assert cursors[-1].fetchone() == (300,)
        cur = conn.execute("SELECT count(*), count(*) FILTER (WHERE name = 'many') FROM cl_pipe")
        assert cur.fetchone() == (600, 300)


def test_psycopg_pipeline_error_skips_to_sync_then_recovers(mux: PgmuxProc, pg: PgCluster) -> None:
    fresh_table(pg, "cl_pipe_err")
    with connect(mux, autocommit=True) as conn:
        with conn.pipeline() as p:
            conn.execute("INSERT INTO cl_pipe_err VALUES (1, 'before error')")
            conn.execute("SELECT 1 / (random() * 0)::int")
            after = conn.execute("INSERT INTO cl_pipe_err VALUES (3, 'after error') RETURNING id")
            with pytest.raises(pgerr.DivisionByZero):
                p.sync()
            assert after.pgresult is None  # skipped by the server up to Sync: no result at all
            # After the Sync the pipeline works again, on whatever server the pool lends.
            ok = [conn.execute("INSERT INTO cl_pipe_err VALUES (%s, 'recovered') RETURNING id", (i,))
                  for i in (4, 5, 6)]
        assert [c.fetchone() for c in ok] == [(4,), (5,), (6,)]
    with direct(pg) as d:
        # The statements before the error were in the same implicit transaction: rolled back.
        assert d.execute("SELECT array_agg(id ORDER BY id) FROM cl_pipe_err").fetchone() == ([4, 5, 6],)


def test_psycopg_copy_from_stdin_and_to_stdout(mux: PgmuxProc, pg: PgCluster) -> None:
    fresh_table(pg, "cl_pcopy", "id int PRIMARY KEY, name text, data bytea")
    rows = [(i, None if i % 11 == 0 else f"name\t{i}\n\\ é", bytes([i % 256]) * (i % 50))
            for i in range(30_000)]
    with connect(mux) as conn:
        cur = conn.cursor()
        with cur.copy("COPY cl_pcopy (id, name, data) FROM STDIN") as copy:
            for r in rows:
                copy.write_row(r)
        assert cur.rowcount == 30_000
        conn.commit()
        with cur.copy("COPY (SELECT id, name, data FROM cl_pcopy ORDER BY id) TO STDOUT") as copy:
            copy.set_types(["int4", "text", "bytea"])
            back = list(copy.rows())
        assert back == rows
        # Binary COPY both ways as well.
        with cur.copy("COPY (SELECT id, name, data FROM cl_pcopy WHERE id < 100 ORDER BY id) TO STDOUT "
                      "(FORMAT BINARY)") as copy:
            copy.set_types(["int4", "text", "bytea"])
            assert list(copy.rows()) == rows[:100]
        # A COPY that fails midway leaves the client (and its server) usable.
        with pytest.raises(pgerr.UniqueViolation):
            with cur.copy("COPY cl_pcopy (id, name) FROM STDIN") as copy:
                copy.write_row((30_001, "new"))
                copy.write_row((5, "duplicate"))
        conn.rollback()
        assert conn.execute("SELECT count(*) FROM cl_pcopy").fetchone() == (30_000,)


def test_psycopg_server_side_cursor_in_transaction(mux: PgmuxProc) -> None:
    with connect(mux) as conn:
        with conn.transaction():
            pid = conn.execute("SELECT pg_backend_pid()").fetchone()
            with conn.cursor(name="cl_big") as cur:
                cur.itersize = 250
                cur.execute("SELECT g, repeat('x', g % 100) FROM generate_series(1, 5000) g")
                total = count = 0
                for g, text in cur:
                    total += g
                    count += 1
                    assert len(text) == g % 100
                assert (count, total) == (5000, 5000 * 5001 // 2)
                cur.scroll(0, mode="absolute")
                assert cur.fetchmany(3) == [(1, "x"), (2, "xx"), (3, "xxx")]
            assert conn.execute("SELECT pg_backend_pid()").fetchone() == pid


def test_psycopg_many_concurrent_clients_on_small_pool(mux: PgmuxProc, pg: PgCluster) -> None:
    fresh_table(pg, "cl_conc", "worker int, seq int, PRIMARY KEY (worker, seq)")
    fresh_table(pg, "cl_counter", "id int PRIMARY KEY, n int NOT NULL")
    pg.primary.psql("INSERT INTO cl_counter VALUES (1, 0)", db="testdb")
    workers, rounds = 30, 15
    stop = threading.Event()
    max_servers = 0
    max_waiting = 0

    def work(w: int) -> int:
        with connect(mux, application_name=f"w{w}") as conn:
            for j in range(rounds):
                with conn.transaction():
                    conn.execute("INSERT INTO cl_conc VALUES (%s, %s)", (w, j))
                    conn.execute("UPDATE cl_counter SET n = n + 1 WHERE id = 1")
                    # Read your own writes inside the transaction: same server throughout.
                    assert conn.execute("SELECT count(*) FROM cl_conc WHERE worker = %s", (w,)).fetchone() \
                        == (j + 1,)
                if j % 5 == 0:
                    with pytest.raises(RuntimeError):
                        with conn.transaction():
                            conn.execute("INSERT INTO cl_conc VALUES (-1, %s)", (w * 100 + j,))
                            raise RuntimeError("roll back")
                assert conn.execute("SELECT %s::int", (w,)).fetchone() == (w,)
                conn.commit()
        return w

    def watch() -> None:
        nonlocal max_servers, max_waiting
        for _ in range(2000):
            if stop.is_set():
                return
            for p in mux.admin_dicts("SHOW POOLS"):
                if p["database"] == "testdb":
                    max_servers = max(max_servers, server_count(p))
                    max_waiting = max(max_waiting, int(p["cl_waiting"]))
            time.sleep(0.02)

    watcher = Background(watch)
    threads = [Background(functools.partial(work, w)) for w in range(workers)]
    try:
        done = sorted(t.result(90) for t in threads)
    finally:
        stop.set()
        watcher.result(10)
    assert done == list(range(workers))
    with direct(pg) as d:
        assert d.execute("SELECT n FROM cl_counter").fetchone() == (workers * rounds,)
        assert d.execute("SELECT count(*), count(DISTINCT worker) FROM cl_conc").fetchone() \
            == (workers * rounds, workers)
    assert 0 < max_servers <= POOL_SIZE
    assert max_waiting > 0, "30 clients on 3 servers never queued: the pool limit is not being exercised"
    pools = [p for p in mux.admin_dicts("SHOW POOLS") if p["database"] == "testdb"]
    assert len(pools) == 1 and server_count(pools[0]) <= POOL_SIZE and pools[0]["cl_waiting"] == 0
    assert len([s for s in mux.admin_dicts("SHOW SERVERS") if s["database"] == "testdb"]) <= POOL_SIZE


def test_psycopg_async_many_connections(mux: PgmuxProc) -> None:
    async def one(i: int) -> int:
        async with await psycopg.AsyncConnection.connect(mux.dsn(), prepare_threshold=None,
                                                         connect_timeout=10) as conn:
            total = 0
            for j in range(10):
                cur = await conn.execute("SELECT %s::int + %s::int", (i, j))
                row = await cur.fetchone()
                assert row is not None
                total += row[0]
                await conn.commit()
            return total

    async def main() -> list[int]:
        return await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(40))), 60)

    assert asyncio.run(main()) == [10 * i + 45 for i in range(40)]


def test_psycopg_notice_reaches_client(mux: PgmuxProc) -> None:
    with connect(mux, autocommit=True) as conn:
        notices: list[tuple[str | None, str | None]] = []
        conn.add_notice_handler(lambda d: notices.append((d.severity, d.message_primary)))
        conn.execute("DO $$ BEGIN RAISE NOTICE 'x'; RAISE WARNING 'careful'; END $$")
        assert notices == [("NOTICE", "x"), ("WARNING", "careful")]


# -- asyncpg -------------------------------------------------------------------------------------
def test_asyncpg_session_mode_statement_cache(session_mux: PgmuxProc) -> None:
    async def main() -> None:
        conn = await asyncpg.connect(session_mux.dsn(), timeout=10)
        try:
            pid = await conn.fetchval("SELECT pg_backend_pid()")
            for i in range(30):  # the statement cache prepares once, then only binds
                assert await conn.fetchval("SELECT $1::int * 3", i) == i * 3
                assert await conn.fetchrow("SELECT name FROM items WHERE id = $1", i % 10 + 1) \
                    == (f"item {i % 10 + 1}",)
            stmt = await conn.prepare("SELECT $1::text || $2::text")
            assert [await stmt.fetchval("a", str(i)) for i in range(5)] == [f"a{i}" for i in range(5)]
            named = await conn.fetchval("SELECT count(*) FROM pg_prepared_statements")
            assert named >= 3
            assert await conn.fetchval("SELECT pg_backend_pid()") == pid
        finally:
            await asyncio.wait_for(conn.close(), 10)
        # The server went back through server_reset_query: the next client inherits no statements.
        conn = await asyncpg.connect(session_mux.dsn(), timeout=10, statement_cache_size=0)
        try:
            assert await conn.fetchval("SELECT pg_backend_pid()") == pid
            assert await conn.fetchval("SELECT count(*) FROM pg_prepared_statements") == 0
        finally:
            await asyncio.wait_for(conn.close(), 10)

    asyncio.run(asyncio.wait_for(main(), 60))


def test_asyncpg_transaction_mode(mux: PgmuxProc, pg: PgCluster) -> None:
    fresh_table(pg, "cl_apg", "id int PRIMARY KEY, name text, score float8")

    async def main() -> None:
        conn = await asyncpg.connect(mux.dsn(), timeout=10, statement_cache_size=0)
        try:
            await conn.executemany("INSERT INTO cl_apg VALUES ($1, $2, $3)",
                                   [(i, f"em{i}", i / 2) for i in range(500)])
            assert await conn.fetchval("SELECT count(*) FROM cl_apg") == 500
            records = [(i, None, -1.0) for i in range(500, 5500)]
            res = await conn.copy_records_to_table("cl_apg", records=records, columns=["id", "name", "score"])
            assert res == "COPY 5000"
            async with conn.transaction():
                await conn.execute("DELETE FROM cl_apg WHERE id < 100")
                with pytest.raises(asyncpg.UniqueViolationError):
                    async with conn.transaction():  # savepoint
                        await conn.execute("INSERT INTO cl_apg VALUES (600, 'dup', 0)")
            with pytest.raises(RuntimeError):
                async with conn.transaction():
                    await conn.execute("DELETE FROM cl_apg")
                    raise RuntimeError("roll back")
            row = await conn.fetchrow("SELECT count(*), count(name), sum(score) FROM cl_apg")
            assert tuple(row) == (5400, 400, sum(i / 2 for i in range(100, 500)) - 5000.0)
            records = await conn.fetch("SELECT id, name FROM cl_apg WHERE id = ANY($1::int[]) ORDER BY id",
                                       [100, 101, 5499])
            assert [tuple(r) for r in records] == [(100, "em100"), (101, "em101"), (5499, None)]
            with pytest.raises(asyncpg.DivisionByZeroError):
                await conn.fetchval("SELECT 1 / $1::int", 0)
            assert await conn.fetchval("SELECT 'still usable'") == "still usable"
        finally:
            await asyncio.wait_for(conn.close(), 10)

        # A driver pool bigger than pgmux's: 12 connections on 3 servers, interleaved.
        pool = await asyncpg.create_pool(mux.dsn(), min_size=12, max_size=12, statement_cache_size=0,
                                         timeout=10)
        try:
            async def task(i: int) -> int:
                async with pool.acquire() as c:
                    async with c.transaction():
                        v = await c.fetchval("SELECT $1::int + count(*)::int FROM items", i)
                        await c.execute("UPDATE cl_apg SET score = score + 1 WHERE id = $1", 1000 + i % 50)
                    return int(v)

            got = await asyncio.gather(*(task(i) for i in range(300)))
            assert got == [i + 10 for i in range(300)]
        finally:
            await asyncio.wait_for(pool.close(), 20)

    asyncio.run(asyncio.wait_for(main(), 90))
    with direct(pg) as d:
        cur = d.execute("SELECT sum(score) FROM cl_apg WHERE id BETWEEN 1000 AND 1049")
        assert cur.fetchone() == (300 - 50.0,)


# -- cancel --------------------------------------------------------------------------------------
def test_cancel_stops_its_own_query_and_no_other(mux: PgmuxProc, pg: PgCluster) -> None:
    with connect(mux, autocommit=True) as victim, connect(mux, autocommit=True) as bystander:
        other = Background(lambda: bystander.execute("SELECT 'bystander ok' FROM pg_sleep(2)").fetchone())
        long = Background(lambda: victim.execute("SELECT pg_sleep(10)").fetchone())
        wait_active_query(pg, "SELECT pg_sleep(10)")
        wait_active_query(pg, "SELECT 'bystander ok' FROM pg_sleep(2)")
        cancelled_at = time.monotonic()
        victim.cancel()
        long.join(5)
        assert isinstance(long.error, pgerr.QueryCanceled), long.error
        assert long.error.sqlstate == "57014"
        assert time.monotonic() - cancelled_at < 3
        assert other.result(10) == ("bystander ok",)
        assert other.elapsed >= 1.9
        # Both clients go on normally.
        assert victim.execute("SELECT 'victim ok'").fetchone() == ("victim ok",)
        assert bystander.execute("SELECT 'bystander again'").fetchone() == ("bystander again",)


def test_cancel_from_idle_client_does_not_reach_its_former_server(pgmux_factory: PgmuxStarter,
                                                                  pg: PgCluster) -> None:
    # One server: the idle client's former server is the one now running someone else's query.
    mux = pgmux_factory(settings={"pool_mode": "transaction", "default_pool_size": 1})
    with connect(mux, autocommit=True) as idle, connect(mux, autocommit=True) as busy:
        idle_pid = idle.execute("SELECT pg_backend_pid()").fetchone()
        sql = "SELECT pg_backend_pid(), 'fine' FROM pg_sleep(1.5)"
        job = Background(lambda: busy.execute(sql).fetchone())
        wait_active_query(pg, sql)
        idle.cancel()
        time.sleep(0.2)
        idle.cancel()
        result = job.result(10)
        assert idle_pid is not None and result == (idle_pid[0], "fine")
        assert job.elapsed >= 1.4
        assert idle.execute("SELECT 'idle ok'").fetchone() == ("idle ok",)


# -- backends that die ---------------------------------------------------------------------------
def test_terminated_backend_fails_its_client_and_pool_recovers(mux: PgmuxProc, pg: PgCluster) -> None:
    with connect(mux, autocommit=True) as victim, connect(mux, autocommit=True) as other:
        assert other.execute("SELECT 1").fetchone() == (1,)
        job = Background(lambda: victim.execute("SELECT pg_sleep(8)").fetchone())
        pid = wait_active_query(pg, "SELECT pg_sleep(8)")
        serving = [s for s in mux.admin_dicts("SHOW SERVERS") if s["link"]]
        assert [s["remote_pid"] for s in serving] == [pid]
        with direct(pg) as d:
            assert d.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)
        job.join(5)
        assert job.elapsed < 5, "client hung after its server died"
        assert isinstance(job.error, psycopg.OperationalError), job.error
        # Other clients are untouched, and new ones get a live server.
        assert other.execute("SELECT 'other ok'").fetchone() == ("other ok",)
    with connect(mux, autocommit=True) as fresh:
        row = fresh.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None and row[0] != pid

    def no_dead_servers() -> bool:
        remote = {s["remote_pid"] for s in mux.admin_dicts("SHOW SERVERS") if s["database"] == "testdb"}
        return pid not in remote and remote <= live_backend_pids(pg)

    wait_for(no_dead_servers, what="SHOW SERVERS to list only live backends")


def test_terminated_idle_in_transaction_backend(mux: PgmuxProc, pg: PgCluster) -> None:
    with connect(mux) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()  # opens a transaction: server stays linked
        assert row is not None
        pid = row[0]
        with direct(pg) as d:
            d.execute("SELECT pg_terminate_backend(%s)", (pid,))
        wait_for(lambda: pid not in live_backend_pids(pg), what="backend gone")
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
        assert time.monotonic() - started < 10
    with connect(mux) as conn2:
        assert conn2.execute("SELECT count(*) FROM items").fetchone() == (10,)
    wait_for(lambda: {s["remote_pid"] for s in mux.admin_dicts("SHOW SERVERS")} <= live_backend_pids(pg),
             what="SHOW SERVERS to list only live backends")


def test_terminated_idle_pooled_server_is_dropped(mux: PgmuxProc, pg: PgCluster) -> None:
    with connect(mux, autocommit=True) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        pid = row[0]
        wait_for(lambda: [s["state"] for s in mux.admin_dicts("SHOW SERVERS")] == ["idle"],
                 what="idle server")
        with direct(pg) as d:
            d.execute("SELECT pg_terminate_backend(%s)", (pid,))
        wait_for(lambda: pid not in {s["remote_pid"] for s in mux.admin_dicts("SHOW SERVERS")},
                 what="pgmux to drop the dead idle server")
        # The client never noticed: its next transaction runs on a new server.
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None and row[0] != pid

