"""Conformance sessions with DDL between prepares (issue 10): a statement prepared, closed, the schema
changed, the same text prepared again must mean what it means now, as on a fresh connection, wherever
the client's transactions run. Raw protocol messages here; the driver sessions are at the end.

Each run gets a database of its own, `conformance_ddl`, cloned from the template `conformance_ddl_tpl`
(TEMPLATE copies the catalog with its OIDs), so that the objects both runs start from have the same
OIDs, which show in RowDescription. Objects a script creates get new OIDs in every run: the scripts
never show those in a message PostgreSQL sends on success (an enum parameter is neither described nor
returned as such), only in the errors pgmux must not cause.

The DDL is made three ways: by the client itself (through pgmux in the pooled run), by another
connection directly on PostgreSQL (`side`: the same in both runs, never through pgmux), and, for a
text all clients share, by one client's direct connection while the others wait.
"""

from __future__ import annotations

from typing import Any

from conformance import Exchange, Step, bind, close, describe
from conformance_raw import q, x
from helpers import execute, parse, sync

DDL_DB = "conformance_ddl"
TEMPLATE = "conformance_ddl_tpl"
N_TEMPLATE_CLIENTS = 30

TEMPLATE_SQL = f"""
CREATE TABLE ddl_shared (v date);
DO $$BEGIN FOR k IN 0..{N_TEMPLATE_CLIENTS - 1} LOOP
  EXECUTE format('CREATE TABLE ddl_rec_%s (v date)', k);
  EXECUTE format('CREATE TABLE ddl_add_%s (id int, t text); INSERT INTO ddl_add_%s VALUES (%s, ''row'')', k, k, k);
  EXECUTE format('CREATE TYPE ddl_e_%s AS ENUM (''a'', ''b'')', k);
  EXECUTE format('CREATE FUNCTION ddl_f_%s(int) RETURNS int LANGUAGE sql AS ''SELECT $1 + 1''', k);
  EXECUTE format('CREATE FUNCTION ddl_g_%s(int) RETURNS int LANGUAGE sql AS ''SELECT $1 + 2''', k);
END LOOP; END$$;
"""


def side(sql: str) -> Exchange:
    """A simple query on the client's other connection, directly on PostgreSQL."""
    return Exchange(q(sql).send, side=True)


def _statements(k: int) -> dict[str, str]:
    return {
        "s_rec": f"INSERT INTO ddl_rec_{k} VALUES ($1)",  # a parameter whose type comes from a column
        "s_add": f"SELECT * FROM ddl_add_{k} ORDER BY id",  # a result shape that follows the table's
        "s_enum": f"SELECT $1::ddl_e_{k}::text AS e",  # a parameter of an enum type
        # functions replaced (a body, a return type)
        "s_fn": f"SELECT ddl_f_{k}($1::int) AS f, 'pid:' || pg_backend_pid() AS backend_pid",
        "s_fn2": f"SELECT ddl_g_{k}($1::int) AS g",
    }


def _use(k: int, names: dict[str, str], rec: bytes, enum: bytes) -> bytes:
    """Every statement described and run once, in one batch."""
    s = names
    return (describe("S", s["s_rec"]) + bind(s["s_rec"], (rec,)) + execute()
            + describe("S", s["s_add"]) + bind(s["s_add"]) + describe("P") + execute()
            + bind(s["s_enum"], (enum,)) + execute()
            + describe("S", s["s_fn"]) + bind(s["s_fn"], (str(k).encode(),)) + execute()
            + describe("S", s["s_fn2"]) + bind(s["s_fn2"], (str(k).encode(),)) + execute())


def _prepare(k: int, names: dict[str, str]) -> bytes:
    texts = _statements(k)
    return b"".join(parse(texts[key], name) for key, name in names.items())


def _close(names: dict[str, str]) -> bytes:
    return b"".join(close("S", name) for name in names.values()) + sync()


def ddl_prepare_script(k: int) -> list[tuple[str, Step]]:
    same = {key: key for key in _statements(k)}
    fresh = {key: f"{key}_v2" for key in _statements(k)}
    third = {key: f"{key}_v3" for key in _statements(k)}
    return [
        ("prepare before any DDL", [x(_prepare(k, same) + _use(k, same, b"2024-01-02", b"a") + sync())]),
        ("use them, maybe on another server", [x(_use(k, same, b"2024-01-03", b"b") + sync())]),
        ("close them", [x(_close(same))]),
        ("DDL through the client", [
            q(f"DROP TABLE ddl_rec_{k}; CREATE TABLE ddl_rec_{k} (v interval)"),
            q(f"ALTER TABLE ddl_add_{k} ADD COLUMN extra text DEFAULT 'x{k}'"),
            q(f"DROP TYPE ddl_e_{k}; CREATE TYPE ddl_e_{k} AS ENUM ('b', 'c')"),
            q(f"CREATE OR REPLACE FUNCTION ddl_f_{k}(int) RETURNS int LANGUAGE sql AS 'SELECT $1 * 100'"),
            q(f"DROP FUNCTION ddl_g_{k}(int); "
              f"CREATE FUNCTION ddl_g_{k}(int) RETURNS text LANGUAGE sql AS 'SELECT ''g'' || $1'"),
        ]),
        ("the same names and texts prepared again", [
            x(_prepare(k, same) + _use(k, same, b"1 day", b"c") + sync())]),
        ("fresh names for the same texts", [x(_prepare(k, fresh) + _use(k, fresh, b"2 days", b"c") + sync())]),
        ("both, maybe on another server", [
            x(_use(k, same, b"3 days", b"b") + sync()),
            x(_use(k, fresh, b"4 days", b"b") + sync()),
        ]),
        ("and again", [x(_use(k, same, b"5 days", b"c") + _use(k, fresh, b"6 days", b"c") + sync())]),
        ("close them all", [x(_close(same)), x(_close(fresh))]),
        ("DDL by another connection, directly on PostgreSQL", [
            side(f"DROP TABLE ddl_rec_{k}; CREATE TABLE ddl_rec_{k} (v numeric)"),
            side(f"ALTER TABLE ddl_add_{k} ADD COLUMN more int DEFAULT {k}"),
            side(f"DROP TYPE ddl_e_{k}; CREATE TYPE ddl_e_{k} AS ENUM ('c', 'd')"),
            side(f"DROP FUNCTION ddl_f_{k}(int); "
                 f"CREATE FUNCTION ddl_f_{k}(int) RETURNS numeric LANGUAGE sql AS 'SELECT $1 / 4.0'"),
            side(f"CREATE OR REPLACE FUNCTION ddl_g_{k}(int) RETURNS text LANGUAGE sql AS 'SELECT ''h'' || $1'"),
        ]),
        ("prepared again after it", [x(_prepare(k, same) + _use(k, same, b"1.5", b"d") + sync())]),
        ("under other names, maybe on another server", [
            x(_prepare(k, third) + _use(k, third, b"2.5", b"d") + sync())]),
        ("all of them, maybe on another server", [
            x(_use(k, same, b"3.5", b"c") + _use(k, third, b"4.5", b"c") + sync())]),
    ]


SHARED = "INSERT INTO ddl_shared VALUES ($1)"
PID = parse("SELECT 'pid:' || pg_backend_pid() AS backend_pid") + bind() + execute()


def ddl_shared_script(k: int) -> list[tuple[str, Step]]:
    """One text every client prepares, so that all share one server-side statement through pgmux; one
    client's direct connection recreates the table while the others wait."""
    use = PID + describe("S", "s_shared") + bind("s_shared", (b"2024-01-01" if k % 2 else b"2024-02-02",)) + execute()
    later = PID + describe("S", "s_shared") + bind("s_shared", (b"1 day",)) + execute()
    return [
        ("prepare the shared text", [x(parse(SHARED, "s_shared") + use + sync())]),
        ("use it, maybe on another server", [x(use + sync())]),
        ("close it", [x(close("S", "s_shared") + sync())]),
        ("one client recreates the table directly", [
            side("DROP TABLE ddl_shared; CREATE TABLE ddl_shared (v interval)")] if k == 0 else []),
        ("prepare the same text again", [x(parse(SHARED, "s_shared") + later + sync())]),
        ("and use it, maybe on another server", [x(later + sync())]),
    ]



# -- driver sessions ---------------------------------------------------------------------------------
# Each client k uses its own objects. DDL through the client is followed by what the driver does itself
# (psycopg clears its prepared statements after DROP and ALTER, with DEALLOCATE ALL); psycopg's small
# statement cache prepares every statement anew at each use anyway. asyncpg keeps its statements: the
# application calls reload_schema_state() after DDL, which drops its statement and type caches.
def _through_client(k: int) -> list[str]:
    return [f"DROP TABLE ddl_rec_{k}", f"CREATE TABLE ddl_rec_{k} (v interval)",
            f"ALTER TABLE ddl_add_{k} ADD COLUMN extra text DEFAULT 'x{k}'",
            f"DROP TYPE ddl_e_{k}", f"CREATE TYPE ddl_e_{k} AS ENUM ('b', 'c')",
            f"CREATE OR REPLACE FUNCTION ddl_f_{k}(int) RETURNS int LANGUAGE sql AS 'SELECT $1 * 100'",
            f"DROP FUNCTION ddl_g_{k}(int)",
            f"CREATE FUNCTION ddl_g_{k}(int) RETURNS text LANGUAGE sql AS 'SELECT ''g'' || $1'"]


def _by_another(k: int) -> list[str]:
    return [f"DROP TABLE ddl_rec_{k}", f"CREATE TABLE ddl_rec_{k} (v numeric)",
            f"ALTER TABLE ddl_add_{k} ADD COLUMN more int DEFAULT {k}",
            f"DROP TYPE ddl_e_{k}", f"CREATE TYPE ddl_e_{k} AS ENUM ('c', 'd')",
            f"DROP FUNCTION ddl_f_{k}(int)",
            f"CREATE FUNCTION ddl_f_{k}(int) RETURNS numeric LANGUAGE sql AS 'SELECT $1 / 4.0'",
            f"CREATE OR REPLACE FUNCTION ddl_g_{k}(int) RETURNS text LANGUAGE sql AS 'SELECT ''h'' || $1'"]


def psycopg_ddl_script(direct_dsn: str) -> list[Any]:
    import psycopg  # noqa: PLC0415 - only the driver tests need it
    from conformance_drivers import pg_rows  # noqa: PLC0415

    async def use(conn: Any, k: int, op: Any, rec: Any, enum: str) -> None:
        # Six statements in turn through a cache of three: psycopg Closes the oldest and prepares each
        # again (Close, Parse under a new name) at every use: statements never live across DDL here.
        conn.prepared_max = 3
        await op("insert", lambda: pg_rows(conn, f"INSERT INTO ddl_rec_{k} VALUES (%s)", (rec,)))
        await op("read back", lambda: pg_rows(conn, f"SELECT v::text, pg_typeof(v)::text FROM ddl_rec_{k} "
                                                    "ORDER BY 1"))
        await op("star", lambda: pg_rows(conn, f"SELECT * FROM ddl_add_{k} ORDER BY id"))
        await op("enum", lambda: pg_rows(conn, f"SELECT %s::ddl_e_{k}::text AS e", (enum,)))
        await op("function", lambda: pg_rows(conn, f"SELECT ddl_f_{k}(%s) AS f, 'pid:' || pg_backend_pid()", (k,)))
        await op("function 2", lambda: pg_rows(conn, f"SELECT ddl_g_{k}(%s) AS g", (k,)))

    def step(rec: str, enum: str) -> Any:
        return lambda conn, k, op: use(conn, k, op, rec, enum)

    async def ddl_here(conn: Any, k: int, op: Any) -> None:
        for i, sql in enumerate(_through_client(k)):
            await op(f"ddl {i}", lambda sql=sql: pg_rows(conn, sql))

    async def ddl_elsewhere(conn: Any, k: int, op: Any) -> None:
        async def run(sql: str) -> Any:
            async with await psycopg.AsyncConnection.connect(direct_dsn, autocommit=True) as other:
                return (await other.execute(sql)).statusmessage
        for i, sql in enumerate(_by_another(k)):
            await op(f"ddl {i} by another connection", lambda sql=sql: run(sql))

    return [("before any DDL", step("2024-01-02", "a")), ("again, maybe on another server", step("2024-01-03", "b")),
            ("DDL through the client", ddl_here), ("after it", step("1 day", "c")),
            ("again, maybe on another server", step("2 days", "b")),
            ("DDL by another connection", ddl_elsewhere), ("after that", step("1.5", "d")),
            ("again, maybe on another server", step("2.5", "c"))]


def asyncpg_ddl_script(direct_dsn: str) -> list[Any]:
    import datetime  # noqa: PLC0415
    from decimal import Decimal  # noqa: PLC0415

    import asyncpg  # noqa: PLC0415 - only the driver tests need it

    async def use(conn: Any, k: int, op: Any, rec: Any, enum: str) -> None:
        await op("insert", lambda: conn.execute(f"INSERT INTO ddl_rec_{k} VALUES ($1)", rec))
        await op("read back", lambda: conn.fetch(f"SELECT v::text, pg_typeof(v)::text FROM ddl_rec_{k} ORDER BY 1"))
        await op("star", lambda: conn.fetch(f"SELECT * FROM ddl_add_{k} ORDER BY id"))
        await op("enum", lambda: conn.fetchval(f"SELECT $1::ddl_e_{k}::text AS e", enum))
        await op("function", lambda: conn.fetchrow(f"SELECT ddl_f_{k}($1) AS f, 'pid:' || pg_backend_pid()", k))

        async def prepared() -> Any:  # a statement object: a Parse of its own every time
            stmt = await conn.prepare(f"SELECT ddl_g_{k}($1) AS g")
            return await stmt.fetchval(k), [t.name for t in stmt.get_attributes()], stmt.get_parameters()[0].name
        await op("prepared statement object", prepared)

    def step(rec: Any, enum: str) -> Any:
        return lambda conn, k, op: use(conn, k, op, rec, enum)

    async def ddl_here(conn: Any, k: int, op: Any) -> None:
        for i, sql in enumerate(_through_client(k)):
            await op(f"ddl {i}", lambda sql=sql: conn.execute(sql))
        # A statement asyncpg holds across the ALTER: PostgreSQL refuses it (0A000), asyncpg prepares it again.
        await op("star, held across the ALTER", lambda: conn.fetch(f"SELECT * FROM ddl_add_{k} ORDER BY id"))
        await op("reload schema state", conn.reload_schema_state)

    async def ddl_elsewhere(conn: Any, k: int, op: Any) -> None:
        async def run(sql: str) -> Any:
            other = await asyncpg.connect(direct_dsn, timeout=10)
            try:
                return await other.execute(sql)
            finally:
                await other.close()
        for i, sql in enumerate(_by_another(k)):
            await op(f"ddl {i} by another connection", lambda sql=sql: run(sql))
        await op("reload schema state", conn.reload_schema_state)

    day = datetime.timedelta(days=1)
    return [("before any DDL", step(datetime.date(2024, 1, 2), "a")),
            ("again, maybe on another server", step(datetime.date(2024, 1, 3), "b")),
            ("DDL through the client", ddl_here), ("after it", step(day, "c")),
            ("again, maybe on another server", step(2 * day, "b")),
            ("DDL by another connection", ddl_elsewhere), ("after that", step(Decimal("1.5"), "d")),
            ("again, maybe on another server", step(Decimal("2.5"), "c"))]


def ddl_described_script(k: int) -> list[tuple[str, Step]]:
    """conformance_raw.ddl_script, with the statement Described at its Parse, as asyncpg does: a DDL in a
    transaction changes its result type, and the transaction is rolled back. Directly: the Bind in the
    transaction fails (0A000), the one after works."""
    return [
        ("prepare and describe", [x(parse(f"SELECT *, 'pid:' || pg_backend_pid() AS backend_pid FROM conf_own_{k}",
                                          "s_star") + describe("S", "s_star")
                                    + bind("s_star") + execute() + sync())]),
        ("a DDL that changes the result type, rolled back", [
            q("BEGIN"),
            q(f"ALTER TABLE conf_own_{k} ADD COLUMN extra int"),
            x(bind("s_star") + execute() + sync()),
            q("ROLLBACK"),
            x(bind("s_star") + execute() + sync()),
        ]),
        ("once more, maybe on another server", [x(bind("s_star") + execute() + sync())]),
    ]
