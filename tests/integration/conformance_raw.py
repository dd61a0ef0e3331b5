"""The raw-protocol sessions of the conformance tests (test_conformance.py): each client's steps, as
the frontend messages it sends and where its reading stops. Each client k reads and writes only its
own rows, so what it sees does not depend on how the clients interleave.
"""

from __future__ import annotations

import struct

from conformance import (
    Exchange,
    Step,
    bind,
    close,
    copy_fail,
    describe,
    run,
)
from helpers import copy_data, copy_done, execute, flush, parse, sync

from pgmux.protocol import messages as m

DB = "conformance"


def q(sql: str) -> Exchange:
    return Exchange(m.query(sql))


def x(data: bytes, until: bytes = m.READY_FOR_QUERY, count: int = 1) -> Exchange:
    return Exchange(data, until, count)


def i4(v: int) -> bytes:
    return str(v).encode()


GET = ("SELECT id, val, 'pid:' || pg_backend_pid() AS backend_pid FROM conf_items WHERE owner = $1 AND id > $2 "
       "ORDER BY id")
UPD = "UPDATE conf_items SET val = val || $3 WHERE owner = $1 AND id = $2"


def raw_script(k: int) -> list[tuple[str, Step]]:
    """Client k's session: (name, step) pairs. Every step ends with the client idle, except inside a
    step, so a server is held only within one."""
    mine = f"SELECT {k} AS me, $1::text AS arg, 'pid:' || pg_backend_pid() AS backend_pid"
    return [
        ("prepare named statements", [x(
            parse(GET, "s_get", (23, 23)) + parse(mine, "s_mine") + describe("S", "s_get") + describe("S", "s_mine")
            + bind("s_get", (i4(k), b"0")) + execute() + bind("s_mine", (b"first",)) + execute() + sync())]),
        ("re-use them, maybe on another server", [x(
            bind("s_get", (i4(k), b"2")) + execute() + bind("s_mine", (b"second",)) + execute() + sync())]),
        ("describe, then bind, on another server", [
            x(describe("S", "s_mine") + sync()),
            x(bind("s_mine", (b"third",)) + describe("P") + execute() + sync()),
        ]),
        ("pipeline: many requests, one Sync", [x(
            parse(UPD, "s_upd") + bind("s_upd", (i4(k), b"1", b"+a")) + execute()
            + bind("s_upd", (i4(k), b"2", b"+b")) + execute()
            + bind("s_get", (i4(k), b"0"), portal="p1") + execute("p1", 2) + execute("p1", 2) + execute("p1", 0)
            + run("SELECT $1::int + 1", i4(k)) + close("P", "p1") + bind("s_mine", (b"fourth",)) + execute()
            + sync())]),
        ("pipeline: several Syncs in one write", [x(
            (bind("s_mine", (b"fifth",)) + execute() + sync()) + run("SELECT 'unnamed', $1::int", i4(k)) + sync()
            + bind("s_get", (i4(k), b"4")) + execute() + sync(), count=3)]),
        ("error inside a pipeline skips to Sync", [
            x(bind("s_get", (i4(k), b"3")) + execute() + parse("SELECT 10 / $1::int") + bind("", (b"0",))
              + execute() + bind("s_mine", (b"skipped",)) + execute() + parse("SELECT 'skipped'", "s_skipped")
              + bind("s_upd", (i4(k), b"3", b"+skipped")) + execute() + sync()),
            x(bind("s_mine", (b"after the error",)) + execute() + sync()),
            x(parse("SELEC 1", "s_syntax") + bind("s_mine", (b"skipped too",)) + execute() + sync()),
        ]),
        ("an error before a Flush, then the rest of the batch", [
            x(parse("SELEC 'flushed'", "s_flushed") + flush(), until=m.ERROR_RESPONSE),
            x(bind("s_mine", (b"skipped after the flush",)) + execute() + parse("SELECT 1", "s_after") + sync()),
            x(bind("s_flushed") + execute() + sync()),
            x(bind("s_after") + execute() + sync()),
        ]),
        ("statements a failed pipeline skipped do not exist", [
            x(bind("s_skipped") + execute() + sync()),
            x(bind("s_syntax") + execute() + sync()),
            x(describe("S", "s_skipped") + sync()),
            x(parse("SELECT 'now it exists'", "s_skipped") + bind("s_skipped") + execute() + sync()),
            x(bind("s_get", (i4(k), b"2")) + execute() + sync()),
        ]),
        ("unnamed statement parsed, described and synced", [
            x(parse(f"SELECT $1::int * {k + 1} AS product, 'pid:' || pg_backend_pid() AS backend_pid")
              + describe("S") + sync()),
        ]),
        ("unnamed statement bound after its Sync, maybe on another server", [
            x(bind("", (b"3",)) + execute() + sync()),
            x(bind("", (b"4",)) + describe("P") + execute() + sync()),
        ]),
        ("parse, describe and flush, then sync", [
            x(parse(f"SELECT $1::text || '{k}' AS flushed") + describe("S") + flush(),
              until=m.ROW_DESCRIPTION),
            x(bind("", (b"f",)) + execute() + sync()),
        ]),
        ("COPY FROM STDIN (simple query)", [
            x(m.query("COPY conf_copy (owner, n, t) FROM STDIN"), until=m.COPY_IN_RESPONSE),
            x(copy_data(f"{k}\t1\tone\n".encode()) + copy_data(f"{k}\t2\ttwo\n{k}\t3\t\\N\n".encode()) + copy_done()),
            x(m.query("COPY conf_copy (owner, n, t) FROM STDIN") + copy_data(f"{k}\t4\tfour\n".encode())
              + copy_done()),
        ]),
        ("COPY FROM STDIN (extended, as libpq sends it)", [
            x(parse("COPY conf_copy (owner, n, t) FROM STDIN") + bind() + describe("P") + execute() + sync(),
              until=m.COPY_IN_RESPONSE),
            x(copy_data(f"{k}\t5\tfive\n".encode()) + copy_done() + sync()),
        ]),
        ("COPY FROM STDIN failures", [
            x(m.query("COPY conf_copy (owner, n, t) FROM STDIN"), until=m.COPY_IN_RESPONSE),
            x(copy_data(f"{k}\t6\tsix\n".encode()) + copy_fail("client gave up")),
            x(m.query("COPY conf_copy (owner, n, t) FROM STDIN"), until=m.COPY_IN_RESPONSE),
            x(copy_data(f"{k}\tnot a number\tbad\n".encode()) + copy_done()),
        ]),
        ("COPY TO STDOUT", [
            q(f"COPY (SELECT owner, n, t FROM conf_copy WHERE owner = {k} ORDER BY n) TO STDOUT"),
            x(run(f"COPY (SELECT n, t FROM conf_copy WHERE owner = {k} ORDER BY n) TO STDOUT WITH (FORMAT csv)")
              + sync()),
        ]),
        ("SET session parameters", [
            q(f"SET search_path = s{k}, public"),
            q(f"SET TimeZone = 'Etc/GMT-{k % 12}'"),
            q(f"SET myapp.tag = 'c{k}'"),
            q(f"SELECT set_config('statement_timeout', '{k + 1}s', false)"),
            q(f"SET application_name = 'app{k}'"),
            q("SET DateStyle = 'German'" if k % 2 else "SET IntervalStyle = 'iso_8601'"),
        ]),
        ("SHOW them, maybe on another server", [
            q("SHOW search_path"),
            q("SHOW TimeZone; SHOW myapp.tag; SHOW statement_timeout; SHOW application_name"),
            q("SELECT '2024-01-02 03:04:05+00'::timestamptz::text, interval '1 day 2 hours', "
              "current_setting('DateStyle')"),
            x(run("SELECT current_setting('search_path'), current_setting('myapp.tag')") + sync()),
        ]),
        ("a reported parameter not in the welcome list", [
            q("SET default_transaction_read_only = on" if k % 2 else "SHOW default_transaction_read_only"),
        ]),
        ("...seen by its client only", [
            q("SHOW default_transaction_read_only"),
            q(f"UPDATE conf_items SET val = val WHERE owner = {k} AND id = 1"),
            q("SET default_transaction_read_only = off" if k % 2 else "SELECT 1"),
        ]),
        ("SET SESSION AUTHORIZATION, SET ROLE, session characteristics", [
            q("SET SESSION AUTHORIZATION md5user" if k % 2 else "SELECT current_user"),
            q("SET ROLE scramuser" if k % 3 == 0 else "SELECT 1"),
            q("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE" if k % 5 == 0 else "SELECT 2"),
        ]),
        ("...seen by their client only", [
            q("SELECT current_user, session_user; SHOW default_transaction_isolation"),
            q("RESET SESSION AUTHORIZATION" if k % 2 else "SELECT 1"),
            q("RESET ROLE; RESET default_transaction_isolation"),
        ]),
        ("SET LOCAL and a rolled back SET stay in their transaction", [
            q("BEGIN"),
            q(f"SET LOCAL search_path = local{k}"),
            q("SET LOCAL TimeZone = 'UTC'"),
            q("SHOW search_path; SHOW TimeZone"),
            q("COMMIT"),
            q("SHOW search_path; SHOW TimeZone"),
            q(f"BEGIN; SET myapp.tag = 'rolled back {k}'; SET TimeZone = 'UTC'"),
            q("ROLLBACK"),
        ]),
        ("...and are gone in the next transaction", [
            q("SHOW search_path; SHOW TimeZone; SHOW myapp.tag"),
        ]),
        ("RESET and RESET ALL", [
            q("RESET search_path"),
            q("RESET TimeZone"),
        ]),
        ("after RESET", [
            q("SHOW search_path; SHOW TimeZone; SHOW myapp.tag"),
            q("RESET ALL"),
        ]),
        ("after RESET ALL: the startup values", [
            q("SHOW search_path; SHOW TimeZone; SHOW myapp.tag; SHOW application_name; SHOW DateStyle; "
              "SHOW statement_timeout; SHOW IntervalStyle"),
            x(run(f"SET application_name = 'ext{k}'", name="s_set") + sync()),
            x(run("RESET ALL", name="s_reset") + sync()),
            q("SHOW application_name; SHOW myapp.tag"),
        ]),
        ("transaction blocks with errors", [
            q("BEGIN"),
            q(f"UPDATE conf_items SET val = 'in tx' WHERE owner = {k} AND id = 4"),
            q("SELECT 1 / 0"),
            q("SELECT 1"),
            x(run("SELECT 2") + sync()),
            q("ROLLBACK"),
            q(f"BEGIN; UPDATE conf_items SET val = 'kept' WHERE owner = {k} AND id = 5; SAVEPOINT a"),
            q("SELECT no_such_column FROM conf_items"),
            q("ROLLBACK TO SAVEPOINT a"),
            q(f"SELECT val FROM conf_items WHERE owner = {k} ORDER BY id"),
            q("COMMIT"),
            q("BEGIN"),
            x(bind("s_get", (i4(k), b"0")) + execute() + parse("SELECT 1 / $1::int") + bind("", (b"0",))
              + execute() + sync()),
            x(bind("s_get", (i4(k), b"0")) + execute() + sync()),
            q("COMMIT"),
            q(f"SELECT val FROM conf_items WHERE owner = {k} ORDER BY id"),
        ]),
        ("prepared statements and transaction blocks", [
            q("BEGIN"),
            x(parse(f"SELECT 'in a transaction {k}'", "s_tx") + bind("s_tx") + execute() + sync()),
            q("ROLLBACK"),
            x(bind("s_tx") + execute() + sync()),  # statements are not transactional
            q("BEGIN"),
            q("SELECT 1 / 0"),
            x(parse(GET, "s_get2", (23, 23)) + sync()),  # another client has it on this server
            x(parse(f"SELECT 'aborted {k}'", "s_aborted") + sync()),
            x(parse("SELECT 'a duplicate name'", "s_get") + sync()),
            x(parse("ROLLBACK", "s_rollback") + sync()),
            x(bind("s_get", (i4(k), b"0")) + execute() + sync()),
            x(describe("S", "s_get") + sync()),
            x(close("S", "s_tx") + sync()),
            q("ROLLBACK"),
            x(bind("s_get2", (i4(k), b"0")) + execute() + sync()),
            x(bind("s_aborted") + execute() + sync()),
            x(bind("s_tx") + execute() + sync()),
            x(bind("s_rollback") + execute() + sync()),
        ]),
        ("SET around savepoints", [
            q(f"BEGIN; SET search_path = kept{k}; SAVEPOINT a; SET search_path = undone{k}"),
            q("ROLLBACK TO SAVEPOINT a"),
            q(f"SAVEPOINT b; SET myapp.tag = 'released {k}'; RELEASE SAVEPOINT b"),
            q("COMMIT"),
        ]),
        ("after the savepoints, maybe on another server", [
            q("SHOW search_path; SHOW myapp.tag"),
        ]),
        ("a SET committed before an error in the same query string", [
            q(f"BEGIN; SET search_path = committed{k}; COMMIT; SELECT 1 / 0"),
        ]),
        ("after it, maybe on another server", [
            q("SHOW search_path"),
        ]),
        ("large messages, and a function call", [
            x(run("SELECT length($1::text), md5($1::text), repeat('y', 200000)", b"x" * 300_000) + sync()),
            q("SELECT repeat('z', 100000) FROM generate_series(1, 3)"),
            x(m.message(b"F", struct.pack("!ihhhi", 177, 1, 0, 2, 1) + b"2" + struct.pack("!i", 1) + b"3"
                        + struct.pack("!h", 0))),
        ]),
        ("COPY inside a multi-statement query", [
            x(m.query(f"SELECT 1; COPY conf_copy (owner, n, t) FROM STDIN; SELECT count(*) FROM conf_copy "
                      f"WHERE owner = {k}") + copy_data(f"{k}\t7\tseven\n".encode()) + copy_done()),
            q(f"SELECT 1; COPY (SELECT n FROM conf_copy WHERE owner = {k} ORDER BY n) TO STDOUT; SELECT 2"),
        ]),
        ("state that pins the client to its server, and its end", [
            q(f"LISTEN conf_ch_{k}"),
            q(f"NOTIFY conf_ch_{k}, 'hello {k}'"),
            q("UNLISTEN *"),
            q(f"CREATE TEMP TABLE conf_tmp_{k} (a int)"),
            q(f"INSERT INTO conf_tmp_{k} VALUES ({k})"),
            q(f"SELECT a + 0 AS a FROM conf_tmp_{k}"),
            q("DISCARD TEMP"),
            q(f"SELECT pg_advisory_lock({1000 + k})"),
            q(f"SELECT pg_advisory_unlock({1000 + k})"),
        ]),
        ("after the pins, maybe on another server", [
            q(f"SELECT a FROM pg_temp.conf_tmp_{k}"),
            q(f"NOTIFY conf_ch_{k}, 'nobody listens'"),
        ]),
        ("empty queries", [
            q(""),
            q(";"),
            q("-- only a comment"),
            x(parse("") + bind() + describe("P") + execute() + sync()),
        ]),
        ("notices", [
            q(f"DO $$BEGIN RAISE NOTICE 'hello from %', {k}; END$$"),
            q("DO $$BEGIN RAISE NOTICE 'one'; RAISE WARNING 'two'; RAISE INFO 'three'; END$$; SELECT 'after'"),
            q(f"DROP TABLE IF EXISTS conf_missing_{k}"),
            x(run("DO $$BEGIN RAISE NOTICE 'extended'; END$$") + sync()),
        ]),
        ("several statements in one Query", [
            q(f"SELECT {k}; SELECT 'two'; UPDATE conf_items SET val = 'm' WHERE owner = {k} AND id = 5; "
              f"SELECT val FROM conf_items WHERE owner = {k} AND id = 5"),
            q("SELECT 1; SELECT 1 / 0; SELECT 3"),
            q("BEGIN; SELECT 1; COMMIT; SELECT 2"),
            q("SELECT 1; BEGIN; SELECT 2"),
            q("COMMIT; SELECT 'committed'"),
            q(f"SET search_path = multi{k}; SHOW search_path"),
        ]),
        ("a multi-statement SET is kept", [
            q("SHOW search_path"),
        ]),
        ("close and duplicate names", [
            x(close("S", "s_mine") + sync()),
            x(bind("s_mine", (b"closed",)) + execute() + sync()),
            x(parse(f"SELECT 'again {k}' AS again", "s_mine") + bind("s_mine") + execute() + sync()),
            x(parse("SELECT 'dup'", "s_get") + sync()),
            x(close("S", "no_such_statement") + sync()),
            x(bind("s_get", (i4(k), b"3")) + execute() + sync()),
        ]),
        ("named statements after the server changed, once more", [
            x(bind("s_mine") + execute() + bind("s_get", (i4(k), b"1")) + execute() + sync()),
        ]),
        ("DEALLOCATE ALL", [
            q("DEALLOCATE ALL"),
            x(bind("s_get", (i4(k), b"1")) + execute() + sync()),
            x(parse(GET, "s_get", (23, 23)) + bind("s_get", (i4(k), b"4")) + execute() + sync()),
            x(run("DEALLOCATE ALL", name="s_deallocate") + sync()),
            x(bind("s_get", (i4(k), b"1")) + execute() + sync()),
            x(bind("s_deallocate") + execute() + sync()),
            x(parse(GET, "s_get", (23, 23)) + bind("s_get", (i4(k), b"3")) + execute() + sync()),
        ]),
        ("statements after DEALLOCATE ALL, maybe on another server", [
            x(bind("s_get", (i4(k), b"2")) + execute() + sync()),
        ]),
        ("DISCARD ALL", [
            q("DISCARD ALL"),
            q("SHOW search_path; SHOW application_name; SHOW myapp.tag"),
            x(bind("s_get", (i4(k), b"1")) + execute() + sync()),
        ]),
    ]


def startup(k: int) -> dict[str, str]:
    return {"user": "postgres", "database": DB, "application_name": f"conf{k}",
            "options": f"-c myapp.tag=start{k}"}


def ddl_script(k: int) -> list[tuple[str, Step]]:
    """A statement prepared before a DDL that changes its result type, inside a transaction that is
    rolled back. Directly: the Bind in the transaction fails (0A000), the one after works."""
    return [
        ("prepare", [x(parse(f"SELECT * FROM conf_own_{k}", "s_star") + bind("s_star") + execute() + sync())]),
        ("a DDL that changes the result type, rolled back", [
            q("BEGIN"),
            q(f"ALTER TABLE conf_own_{k} ADD COLUMN extra int"),
            x(bind("s_star") + execute() + sync()),
            q("ROLLBACK"),
            x(bind("s_star") + execute() + sync()),
        ]),
    ]


def reset_script(k: int) -> list[tuple[str, Step]]:
    return [
        ("change a reported parameter", [q(f"SET application_name = 'changed{k}'")]),
        ("RESET ALL and SHOW in one query string", [q("RESET ALL; SHOW application_name")]),
        ("after it", [q("SHOW application_name")]),
    ]


def sql_prepared_script(k: int) -> list[tuple[str, Step]]:
    """SQL-level PREPARE / EXECUTE / DEALLOCATE (session/sqlprepared.py). Every client prepares `p` with a
    text of its own, so the servers it moves to hold other clients' `p` and must be brought to its own;
    `shared` has the same text for all."""
    mine = f"SELECT $1 + {k} AS v, 'pid:' || pg_backend_pid() AS backend_pid"
    return [
        ("prepare", [q(f"PREPARE p (int) AS {mine}"), q("PREPARE shared AS SELECT 42 AS answer")]),
        ("execute, maybe on another server", [q("EXECUTE p(1)")]),
        ("two in one query string", [q("EXECUTE p(2); EXECUTE shared")]),
        ("through the extended protocol", [x(parse("EXECUTE p(3)") + bind() + execute() + sync())]),
        ("explain it", [q("EXPLAIN (COSTS OFF) EXECUTE p(4)")]),
        ("a PREPARE in a rolled-back transaction stays", [
            q("BEGIN"), q(f"PREPARE t AS SELECT {k} AS t, 'pid:' || pg_backend_pid() AS backend_pid"),
            q("ROLLBACK"), q("EXECUTE t")]),
        ("a PREPARE after an error in its query string never ran", [
            q("SELECT 1/0; PREPARE z AS SELECT 1"), q("EXECUTE z")]),
        ("a PREPARE that fails", [q("PREPARE bad AS SELECT no_such_column"), q("EXECUTE bad")]),
        ("a name already taken", [q("PREPARE shared AS SELECT 43")]),
        ("DEALLOCATE one", [q("DEALLOCATE p"), q("EXECUTE p(5)"), q("EXECUTE shared")]),
        ("the same name, another text", [q(f"PREPARE p AS SELECT {k} * 10 AS v"), q("EXECUTE p")]),
        ("DEALLOCATE ALL", [q("DEALLOCATE ALL"), q("EXECUTE shared"), q("EXECUTE t")]),
        ("prepare again afterwards", [q(f"PREPARE p AS {mine.replace('$1', '1')}"), q("EXECUTE p")]),
    ]
