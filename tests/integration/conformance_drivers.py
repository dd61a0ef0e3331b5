"""The driver sessions of the conformance tests (test_conformance.py): psycopg 3 with every statement
prepared (prepare_threshold=0) and asyncpg at its default statement cache. Each operation's outcome is
recorded as the application sees it: ("ok", result as plain data) or ("error", class, SQLSTATE,
message), with the notices it brought.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import psycopg
from conformance import driver_pids, interleave, mask_pids, outcome_of_error, plain

Record = list[tuple[Any, ...]]
DriverStep = tuple[str, Callable[[Any, int, Callable[..., Awaitable[None]]], Awaitable[None]]]


async def run_driver(connect: Callable[[int], Awaitable[Any]], close_conn: Callable[[Any], Awaitable[None]],
                     script: list[DriverStep], notices: Callable[[Any], list[tuple[Any, ...]]],
                     n: int, timeout: float) -> dict[int, Record]:
    """Each client's outcomes, one per operation: ("ok", result) or ("error", class, SQLSTATE, message),
    followed by the notices the operation brought."""
    records: dict[int, Record] = {k: [] for k in range(n)}
    conns: dict[int, Any] = {}

    async def open_one(k: int) -> None:
        conns[k] = await connect(k)

    async def step(k: int, i: int, sent: asyncio.Event) -> None:
        name, fn = script[i]
        conn = conns[k]

        async def op(label: str, call: Callable[[], Awaitable[Any]]) -> None:
            try:
                async with asyncio.timeout(15):
                    result: tuple[Any, ...] = ("ok", plain(await call()))
            except TimeoutError:
                raise AssertionError(f"client {k} step {i} ({name}) {label}: no answer in 15 s") from None
            except Exception as e:  # noqa: BLE001 - what the application sees is the outcome compared
                result = outcome_of_error(e)
            records[k].append((f"step {i} ({name}) {label}", *result, tuple(notices(conn))))

        sent.set()  # the driver writes before its first await: the next client starts after it
        await fn(conn, k, op)

    async def main() -> None:
        try:
            await asyncio.gather(*(open_one(k) for k in range(n)))
            await interleave(n, len(script), step)
        finally:
            await asyncio.gather(*(close_conn(c) for c in conns.values()), return_exceptions=True)

    await asyncio.wait_for(main(), timeout)
    return records


def compare_records(direct: dict[int, Record], pooled: dict[int, Record]) -> list[str]:
    out = []
    for k in sorted(direct):
        a, b = direct[k], pooled[k]
        if len(a) != len(b):
            out.append(f"client {k}: {len(a)} operations directly, {len(b)} through pgmux")
        for ra, rb in zip(a, b, strict=False):
            if mask_pids(ra) != mask_pids(rb):
                out.append(f"client {k} {ra[0]}:\n    direct: {ra[1:]}\n    pgmux:  {rb[1:]}")
    return out


def record_moves(records: dict[int, Record]) -> tuple[int, int]:
    moved = total = 0
    for rec in records.values():
        pids = [p for r in rec for p in set(driver_pids(r[1:]))]
        total += len(pids) - 1
        moved += sum(a != b for a, b in zip(pids, pids[1:], strict=False))
    return moved, total


# psycopg 3, every statement prepared (prepare_threshold=0), autocommit as most applications run it.
async def pg_rows(conn: Any, sql: str, params: Any = None) -> Any:
    cur = await conn.execute(sql, params)
    return await cur.fetchall() if cur.description else cur.statusmessage


def psycopg_script() -> list[DriverStep]:
    sel = "SELECT id, val, 'pid:' || pg_backend_pid() FROM conf_items WHERE owner = %s AND id > %s ORDER BY id"

    async def first(conn: Any, k: int, op: Any) -> None:
        await op("select", lambda: pg_rows(conn, sel, (k, 0)))
        await op("typed", lambda: pg_rows(conn, "SELECT %s::int * 2, %s::text, %s::numeric", (k, f"t{k}", 1.5)))

    async def again(conn: Any, k: int, op: Any) -> None:
        await op("select again", lambda: pg_rows(conn, sel, (k, 2)))
        await op("typed again", lambda: pg_rows(conn, "SELECT %s::int * 2, %s::text, %s::numeric", (k, "u", 2)))

    async def many(conn: Any, k: int, op: Any) -> None:
        async def go() -> Any:
            async with conn.cursor() as cur:
                await cur.executemany("UPDATE conf_items SET val = val || %s WHERE owner = %s AND id = %s",
                                      [(f"+{i}", k, i) for i in range(1, 5)])
            return await pg_rows(conn, sel, (k, 0))
        await op("executemany (a pipeline)", go)

    async def pipeline_error(conn: Any, k: int, op: Any) -> None:
        async def go() -> Any:
            async with conn.pipeline():
                c1 = await conn.execute(sel, (k, 3))
                await conn.execute("SELECT 10 / %s::int", (0,))
                await conn.execute("UPDATE conf_items SET val = 'skipped' WHERE owner = %s", (k,))
            return await c1.fetchall()
        await op("pipeline with an error", go)
        await op("after it", lambda: pg_rows(conn, sel, (k, 0)))

    async def transaction(conn: Any, k: int, op: Any) -> None:
        async def failed() -> Any:
            async with conn.transaction():
                await conn.execute("UPDATE conf_items SET val = 'rolled back' WHERE owner = %s", (k,))
                await conn.execute("SELECT 1 / %s::int", (0,))
        await op("failed transaction", failed)

        async def savepoint() -> Any:
            async with conn.transaction():
                await conn.execute("UPDATE conf_items SET val = 'kept' WHERE owner = %s AND id = 1", (k,))
                try:
                    async with conn.transaction():
                        await conn.execute("SELECT no_such_column FROM conf_items")
                except psycopg.errors.UndefinedColumn as e:
                    caught = outcome_of_error(e)
                return caught, await pg_rows(conn, sel, (k, 0))
        await op("savepoint rolled back", savepoint)

    async def copy(conn: Any, k: int, op: Any) -> None:
        async def copy_in() -> Any:
            async with conn.cursor() as cur:
                async with cur.copy("COPY conf_copy (owner, n, t) FROM STDIN") as cp:
                    for i in range(3):
                        await cp.write_row((k, i, f"row {i}" if i else None))
                return cur.rowcount
        await op("copy in", copy_in)

        async def copy_out() -> Any:
            async with conn.cursor() as cur:
                async with cur.copy("COPY (SELECT n, t FROM conf_copy WHERE owner = %s ORDER BY n) TO STDOUT",
                                    (k,)) as cp:
                    return [row async for row in cp.rows()]
        await op("copy out", copy_out)

        async def copy_bad() -> Any:
            async with conn.cursor() as cur:
                async with cur.copy("COPY conf_copy (owner, n, t) FROM STDIN") as cp:
                    await cp.write(f"{k}\tnot a number\tx\n")
        await op("copy in, bad data", copy_bad)

    async def set_params(conn: Any, k: int, op: Any) -> None:
        await op("set search_path", lambda: pg_rows(conn, f"SET search_path = s{k}, public"))
        await op("set TimeZone", lambda: pg_rows(conn, f"SET TimeZone = 'Etc/GMT-{k % 12}'"))
        await op("set_config", lambda: pg_rows(conn, "SELECT set_config('myapp.tag', %s, false)", (f"d{k}",)))

        async def rolled_back() -> Any:
            async with conn.transaction():
                await conn.execute("SET search_path = rolled_back")
                raise psycopg.Rollback()
        await op("SET in a rolled back transaction", rolled_back)

        async def savepoints() -> Any:
            async with conn.transaction():
                await conn.execute(f"SET myapp.other = 'outer{k}'")
                async with conn.transaction():  # a savepoint, rolled back
                    await conn.execute("SET myapp.other = 'inner'")
                    raise psycopg.Rollback()
                async with conn.transaction():  # a savepoint, released
                    await conn.execute(f"SET myapp.third = 'released{k}'")
        await op("SET around savepoints", savepoints)

    async def show(conn: Any, k: int, op: Any) -> None:
        await op("show", lambda: pg_rows(conn, "SELECT current_setting('search_path'), "
                                               "current_setting('myapp.tag'), '2024-01-02 03:04:05+00'::timestamptz, "
                                               "current_setting('myapp.other'), current_setting('myapp.third')"))
        await op("TimeZone reported", lambda: asyncio.sleep(0, conn.info.parameter_status("TimeZone")))
        await op("reset all", lambda: pg_rows(conn, "RESET ALL"))

    async def after_reset(conn: Any, k: int, op: Any) -> None:
        await op("show after reset", lambda: pg_rows(conn, "SELECT current_setting('search_path'), "
                                                         "current_setting('myapp.tag', true), "
                                                         "current_setting('application_name')"))

    async def misc(conn: Any, k: int, op: Any) -> None:
        await op("notice", lambda: pg_rows(conn, f"DO $$BEGIN RAISE NOTICE 'hi %', {k}; END$$"))
        await op("two statements", lambda: pg_rows(conn, "SELECT 1; SELECT 2"))
        await op("empty", lambda: pg_rows(conn, ""))
        await op("syntax error", lambda: pg_rows(conn, "SELEC 1"))
        await op("division by zero", lambda: pg_rows(conn, "SELECT 1 / %s::int", (0,)))
        await op("select after errors", lambda: pg_rows(conn, sel, (k, 4)))

    async def deallocate(conn: Any, k: int, op: Any) -> None:
        await op("deallocate all", lambda: pg_rows(conn, "DEALLOCATE ALL"))
        await op("select after deallocate", lambda: pg_rows(conn, sel, (k, 1)))
        await op("discard all", lambda: pg_rows(conn, "DISCARD ALL"))
        await op("select after discard", lambda: pg_rows(conn, sel, (k, 2)))

    return [("first queries", first), ("the same, maybe on another server", again), ("executemany", many),
            ("pipeline", pipeline_error), ("transactions", transaction), ("COPY", copy), ("SET", set_params),
            ("SHOW", show), ("after RESET ALL", after_reset), ("misc", misc), ("deallocate", deallocate),
            ("once more", again)]


async def run_psycopg(dsn: str, n: int, timeout: float, script: list[DriverStep] | None = None) -> dict[int, Record]:
    script = psycopg_script() if script is None else script

    box: dict[int, list[tuple[Any, ...]]] = {}

    async def connect(k: int) -> Any:
        conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True, prepare_threshold=0,
                                                     application_name=f"psycopg{k}", connect_timeout=10)
        notices = box[id(conn)] = []
        conn.add_notice_handler(lambda d: notices.append((d.severity, d.sqlstate, d.message_primary)))
        return conn

    def notices(conn: Any) -> list[tuple[Any, ...]]:
        out = list(box[id(conn)])
        box[id(conn)].clear()
        return out

    async def close_conn(conn: Any) -> None:
        await conn.close()

    return await run_driver(connect, close_conn, script, notices, n, timeout)


# asyncpg at its default statement cache: every query a named statement, prepared once per connection.
def asyncpg_script() -> list[DriverStep]:
    sel = "SELECT id, val, 'pid:' || pg_backend_pid() FROM conf_items WHERE owner = $1 AND id > $2 ORDER BY id"
    shout = "SELECT $1::text || '!' AS shout, 'pid:' || pg_backend_pid() AS backend_pid"

    def rows(records: Any) -> Any:
        return [tuple(r) for r in records]

    async def prepared(conn: Any, arg: str) -> Any:
        # prepare() leaves its Parse/Describe unsynced (asyncpg sends Flush, not Sync): the server stays
        # in the implicit transaction, and with the client, until the next request. Use it at once.
        stmt = await conn.prepare(shout)
        return rows(await stmt.fetch(arg)), [a.name for a in stmt.get_attributes()], stmt.get_parameters()[0].name

    async def first(conn: Any, k: int, op: Any) -> None:
        await op("fetch", lambda: conn.fetch(sel, k, 0))
        await op("fetchval", lambda: conn.fetchval("SELECT $1::int * 2", k))
        await op("prepared statement object", lambda: prepared(conn, f"c{k}"))

    async def again(conn: Any, k: int, op: Any) -> None:
        await op("fetch again", lambda: conn.fetch(sel, k, 2))
        await op("fetchval again", lambda: conn.fetchval("SELECT $1::int * 2", k + 1))
        await op("prepared statement object again", lambda: prepared(conn, f"d{k}"))

    async def many(conn: Any, k: int, op: Any) -> None:
        await op("executemany", lambda: conn.executemany(
            "UPDATE conf_items SET val = val || $1 WHERE owner = $2 AND id = $3", [(f"+{i}", k, i) for i in (1, 2, 3)]))
        await op("executemany with an error", lambda: conn.executemany(
            "UPDATE conf_items SET val = val || $1 WHERE owner = $2 AND id = 10 / $3", [("x", k, 1), ("y", k, 0)]))
        await op("after", lambda: conn.fetch(sel, k, 0))

    async def transaction(conn: Any, k: int, op: Any) -> None:
        async def failed() -> Any:
            async with conn.transaction():
                await conn.execute("UPDATE conf_items SET val = 'rolled back' WHERE owner = $1", k)
                await conn.fetchval("SELECT 1 / $1::int", 0)
        await op("failed transaction", failed)

        async def nested() -> Any:
            async with conn.transaction():
                await conn.execute("UPDATE conf_items SET val = 'kept' WHERE owner = $1 AND id = 1", k)
                try:
                    async with conn.transaction():
                        await conn.execute("SELECT no_such_column FROM conf_items")
                except asyncpg.PostgresError as e:
                    caught = outcome_of_error(e)
                return caught, rows(await conn.fetch(sel, k, 0))
        await op("savepoint rolled back", nested)

    async def copy(conn: Any, k: int, op: Any) -> None:
        await op("copy records in", lambda: conn.copy_records_to_table(
            "conf_copy", records=[(k, i, f"r{i}" if i else None) for i in range(3)], columns=["owner", "n", "t"]))

        async def copy_out() -> Any:
            buf = io.BytesIO()
            status = await conn.copy_from_query("SELECT n, t FROM conf_copy WHERE owner = $1 ORDER BY n", k,
                                                output=buf)
            return status, buf.getvalue()
        await op("copy out", copy_out)
        await op("copy in, bad data", lambda: conn.copy_to_table(
            "conf_copy", source=io.BytesIO(f"{k}\tnot a number\tx\n".encode()), columns=["owner", "n", "t"]))

    async def set_params(conn: Any, k: int, op: Any) -> None:
        await op("set search_path", lambda: conn.execute(f"SET search_path = a{k}, public"))
        await op("set TimeZone", lambda: conn.execute(f"SET TimeZone = 'Etc/GMT+{k % 12}'"))
        await op("set_config", lambda: conn.fetchval("SELECT set_config('myapp.tag', $1, false)", f"a{k}"))
        await op("set_config local", lambda: conn.fetchval("SELECT set_config('myapp.other', $1, true)", "local"))

        async def savepoints() -> Any:
            async with conn.transaction():
                await conn.execute(f"SET myapp.outside = 'outside{k}'")
                try:
                    async with conn.transaction():  # a savepoint, rolled back
                        await conn.execute("SET myapp.outside = 'inside'")
                        raise LookupError("roll back to the savepoint")
                except LookupError:
                    pass
        await op("SET around savepoints", savepoints)

    async def show(conn: Any, k: int, op: Any) -> None:
        await op("show", lambda: conn.fetchrow(
            "SELECT current_setting('search_path'), current_setting('myapp.tag'), "
            "current_setting('myapp.other', true), '2024-01-02 03:04:05+00'::timestamptz::text, "
            "current_setting('myapp.outside')"))
        await op("TimeZone reported", lambda: asyncio.sleep(0, conn.get_settings().TimeZone))
        await op("reset", lambda: conn.execute("RESET search_path; RESET myapp.tag"))
        await op("show after reset", lambda: conn.fetchrow(
            "SELECT current_setting('search_path'), current_setting('myapp.tag', true)"))

    async def misc(conn: Any, k: int, op: Any) -> None:
        await op("notice", lambda: conn.execute(f"DO $$BEGIN RAISE NOTICE 'hi %', {k}; END$$"))
        await op("two statements", lambda: conn.execute("SELECT 1; SELECT 2"))
        await op("empty", lambda: conn.execute(""))
        await op("syntax error", lambda: conn.fetch("SELEC 1"))
        await op("division by zero", lambda: conn.fetchval("SELECT 1 / $1::int", 0))
        await op("fetch after errors", lambda: conn.fetch(sel, k, 4))

    async def cursor(conn: Any, k: int, op: Any) -> None:
        async def fetch_in_chunks() -> Any:
            async with conn.transaction():
                cur = await conn.cursor(sel, k, 0)
                return rows(await cur.fetch(2)), rows(await cur.fetch(10))
        await op("cursor", fetch_in_chunks)

    return [("first queries", first), ("the same, maybe on another server", again), ("executemany", many),
            ("transactions", transaction), ("COPY", copy), ("SET", set_params), ("SHOW", show), ("misc", misc),
            ("cursor", cursor), ("once more", again)]


async def run_asyncpg(dsn: str, n: int, timeout: float, script: list[DriverStep] | None = None) -> dict[int, Record]:
    script = asyncpg_script() if script is None else script
    box: dict[int, list[tuple[Any, ...]]] = {}

    async def connect(k: int) -> Any:
        conn = await asyncpg.connect(dsn, timeout=10, server_settings={"application_name": f"asyncpg{k}"})
        box[id(conn)] = []
        conn.add_log_listener(lambda c, msg: box[id(c)].append((msg.severity, msg.sqlstate, msg.message)))
        return conn

    def notices(conn: Any) -> list[tuple[Any, ...]]:
        out, box[id(conn)] = box[id(conn)], []
        return out

    async def close_conn(conn: Any) -> None:
        await asyncio.wait_for(conn.close(), 10)

    return await run_driver(connect, close_conn, script, notices, n, timeout)
