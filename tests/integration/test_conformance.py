"""Differential conformance (issue 3, item 5): the same sessions directly against PostgreSQL and through
pgmux in transaction mode, 30 clients on a pool of 3, must see the same messages.

Each session runs in `interleave`'s lockstep (conformance.py): step i of every client, concurrently,
then step i+1, with the clients started in an order that rotates every step, so that each client's
next transaction tends to run on another server. Directly, the same clients run in the same order on
30 connections of their own. Sessions are written twice: as raw protocol messages, where every
backend message is compared byte for byte apart from the normalisations conformance.py states; and
as driver code (psycopg 3 with prepare_threshold=0, asyncpg with its default statement cache), where
results and the errors' class, SQLSTATE and message are compared.

The tests use a database of their own, `conformance`, recreated by the fixture; each client reads
and writes only its own rows, so that what it sees does not depend on how the clients interleave.
"""

from __future__ import annotations

import asyncio
import io
import struct
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import asyncpg
import psycopg
import pytest
from conformance import (
    Difference,
    Exchange,
    Msg,
    RawClient,
    Step,
    Transcript,
    bind,
    close,
    compare,
    copy_data,
    copy_done,
    copy_fail,
    describe,
    driver_pids,
    execute,
    flush,
    interleave,
    mask_pids,
    outcome_of_error,
    parse,
    pids_in,
    plain,
    run,
    summarise,
    sync,
)
from conftest import PgmuxProc, PgmuxStarter
from helpers import servers

from pgmux.protocol import messages as m
from pgmux.runtime.cluster import PgCluster

DB = "conformance"
N_CLIENTS = 30
POOL_SIZE = 3
TIMEOUT = 60.0  # for one whole run; a run takes a few seconds

SETUP = """
CREATE TABLE conf_items (owner int, id int, val text NOT NULL, PRIMARY KEY (owner, id));
CREATE TABLE conf_copy (owner int NOT NULL, n int NOT NULL, t text);
DO $$BEGIN FOR i IN 0..29 LOOP
  EXECUTE format('CREATE TABLE conf_own_%s (id int, t text); INSERT INTO conf_own_%s VALUES (1, ''one'')', i, i);
END LOOP; END$$;
"""
RESET = f"""
TRUNCATE conf_items, conf_copy;
INSERT INTO conf_items SELECT o, i, 'v' || i FROM generate_series(0, {N_CLIENTS - 1}) o, generate_series(1, 5) i;
"""


@pytest.fixture(scope="module")
def confdb(pg: PgCluster) -> Iterator[str]:
    pg.primary.psql(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
    pg.primary.psql(f"CREATE DATABASE {DB}")
    pg.primary.psql(SETUP, db=DB)
    yield DB
    pg.primary.psql(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")


def reset(pg: PgCluster) -> None:
    """The same data before each run. Tables are kept, not recreated: their OIDs show in RowDescription."""
    pg.primary.psql(RESET, db=DB)


def start_pgmux(pgmux_factory: PgmuxStarter, pg: PgCluster) -> PgmuxProc:
    p = pg.primary
    return pgmux_factory(databases={DB: f"host={p.host} port={p.port} dbname={DB}"},
                         settings={"pool_mode": "transaction", "default_pool_size": POOL_SIZE,
                                   "max_client_conn": 100})


# -- the raw sessions ----------------------------------------------------------------------------------
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


async def run_raw(host: str, port: int, n: int = N_CLIENTS,
                  script: Callable[[int], list[tuple[str, Step]]] = raw_script) -> dict[int, Transcript]:
    scripts = {k: script(k) for k in range(n)}
    steps = len(scripts[0])
    transcripts = {k: Transcript() for k in range(n)}
    clients: dict[int, RawClient] = {}

    async def login(k: int) -> None:
        client, msgs = await RawClient.connect(host, port, startup(k))
        clients[k] = client
        transcripts[k].add("login", msgs)

    async def step(k: int, i: int, sent: asyncio.Event) -> None:
        name, exchanges = scripts[k][i]
        client = clients[k]
        for j, ex in enumerate(exchanges):
            label = f"step {i} ({name}) exchange {j}"
            client.send(ex.send)
            sent.set()
            try:
                async with asyncio.timeout(15):
                    msgs = await client.read_until(ex.until, ex.count)
            except TimeoutError:
                raise AssertionError(f"client {k} {label}: no reply in 15 s") from None
            transcripts[k].add(label, msgs)

    async def main() -> None:
        try:
            await asyncio.gather(*(login(k) for k in range(n)))
            await interleave(n, steps, step)
        finally:
            await asyncio.gather(*(c.close() for c in clients.values()))

    await asyncio.wait_for(main(), TIMEOUT)
    return transcripts


def step_pids(t: Transcript) -> list[tuple[str, int]]:
    """(exchange label, backend pid) for each exchange with pid-tagged results; an exchange runs on one
    server, so its results carry one pid."""
    out = []
    for label, msgs in t.entries:
        pids = set(pids_in(msgs))
        assert len(pids) <= 1, f"{label}: results from several backends {pids}"
        if pids:
            out.append((label, pids.pop()))
    return out


def moves(t: Transcript) -> tuple[int, int]:
    """(pid-tagged exchanges that ran on another server than the client's previous one, such exchanges)."""
    pids = [pid for _, pid in step_pids(t)]
    return sum(a != b for a, b in zip(pids, pids[1:], strict=False)), len(pids) - 1


def known_difference(d: Difference) -> bool:
    """The one difference pgmux cannot remove: a Parse that reuses a client's statement name is refused
    by pgmux itself (the server has the statement under pgmux's name), with PostgreSQL's SQLSTATE and
    words but without the fields that locate PostgreSQL's source (F file, L line, R routine), which
    pgmux cannot know for every server version. Everything else in the exchange must be equal."""
    a, b = d.exchange
    if len(a) != len(b) or d.direct is None or d.pooled is None or d.direct[0] != m.ERROR_RESPONSE:
        return False
    if [msg for msg in a if msg is not d.direct] != [msg for msg in b if msg is not d.pooled]:
        return False
    fields = m.parse_error_fields(d.direct[1])
    stripped = m.message(m.ERROR_RESPONSE, b"".join(
        k.encode() + m.cstr(v) for k, v in fields.items() if k not in "FLR") + b"\x00")[5:]
    return fields.get("C") == "42P05" and d.pooled == (m.ERROR_RESPONSE, stripped)


def test_raw_protocol_sessions_match_postgresql(pg: PgCluster, confdb: str, pgmux_factory: PgmuxStarter) -> None:
    reset(pg)
    p = pg.primary
    direct = asyncio.run(run_raw(p.host, p.port))
    reset(pg)
    mux = start_pgmux(pgmux_factory, pg)
    pooled = asyncio.run(run_raw(mux.host, mux.port))
    diffs = compare(direct, pooled)
    problems = [d for d in diffs if not known_difference(d)]
    assert not problems, summarise(problems, 100)
    # The known difference still happens, once per client: the day pgmux removes it, so must this test.
    assert len(diffs) == N_CLIENTS
    assert {d.label.split(" ", 2)[2] for d in diffs} == {"(close and duplicate names) exchange 3"}
    # Directly each client has one backend; through pgmux the clients must really have moved around.
    assert all(len({pid for _, pid in step_pids(t)}) == 1 for t in direct.values())
    # Which server a client gets depends on timing; random choice among 3 would move 2 in 3 exchanges.
    per_client = [moves(t) for t in pooled.values()]
    moved, total = sum(a for a, _ in per_client), sum(b for _, b in per_client)
    print(f"pid-tagged exchanges on another server than the client's previous one: {moved} of {total}")
    assert moved >= total // 4, f"only {moved} of {total} pid-tagged exchanges ran on another server"
    assert sum(a > 0 for a, _ in per_client) >= N_CLIENTS * 3 // 4, f"clients that stayed put: {per_client}"
    # ... on the pool's few servers, where statements were prepared again (and again).
    assert 1 < len(servers(mux, DB)) <= POOL_SIZE
    stats = {r["database"]: r for r in mux.admin_dicts("SHOW STATS")}[DB]
    assert stats["total_server_parse_count"] > stats["total_client_parse_count"] // N_CLIENTS


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


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "known difference: a statement pgmux prepares again on another server, after a DDL changed its "
    "result type in the same transaction, returns the new row shape instead of failing with 0A000 "
    "(and a statement prepared inside the rolled-back transaction then fails with 0A000 after it)"))
def test_ddl_changing_a_result_type_matches_postgresql(pg: PgCluster, confdb: str,
                                                         pgmux_factory: PgmuxStarter) -> None:
    reset(pg)
    p = pg.primary
    direct = asyncio.run(run_raw(p.host, p.port, script=ddl_script))
    # (Errors other than AssertionError: the harness itself must not fail where the xfail expects it.)
    if not all(m.parse_error_fields(msgs[0][1]).get("C") == "0A000"
               for t in direct.values() for label, msgs in t.entries if label.endswith("exchange 2")):
        raise RuntimeError("PostgreSQL did not refuse the changed result type: the scenario tests nothing")
    mux = start_pgmux(pgmux_factory, pg)
    pooled = asyncio.run(run_raw(mux.host, mux.port, script=ddl_script))
    diffs = compare(direct, pooled)
    unexpected = [d for d in diffs if not d.label.endswith(("exchange 2", "exchange 4"))]
    if unexpected:
        raise RuntimeError(summarise(unexpected))
    assert not diffs, summarise(diffs)


def reset_script(k: int) -> list[tuple[str, Step]]:
    return [
        ("change a reported parameter", [q(f"SET application_name = 'changed{k}'")]),
        ("RESET ALL and SHOW in one query string", [q("RESET ALL; SHOW application_name")]),
        ("after it", [q("SHOW application_name")]),
    ]


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "known difference: RESET brings a parameter back to the pooled server's default, not to the "
    "client's startup value; pgmux shows the client its own value in the ParameterStatus and sets it "
    "again from the next transaction on, but a SHOW in the same query string sees the server's"))
def test_reset_and_show_in_one_query_string_match_postgresql(pg: PgCluster, confdb: str,
                                                             pgmux_factory: PgmuxStarter) -> None:
    p = pg.primary
    direct = asyncio.run(run_raw(p.host, p.port, script=reset_script))
    mux = start_pgmux(pgmux_factory, pg)
    pooled = asyncio.run(run_raw(mux.host, mux.port, script=reset_script))
    diffs = compare(direct, pooled)
    unexpected = [d for d in diffs if "(RESET ALL and SHOW in one query string)" not in d.label]
    if unexpected:
        raise RuntimeError(summarise(unexpected))
    assert not diffs, summarise(diffs)


def test_comparator_fails_on_an_altered_transcript(pg: PgCluster, confdb: str) -> None:
    """The comparison can fail: one changed byte, a message too many or too few, a login parameter with
    another value, or a ParameterStatus moved out of the login all show as differences."""
    reset(pg)
    p = pg.primary
    base = asyncio.run(run_raw(p.host, p.port, n=2))
    assert compare(base, base) == []

    def altered(k: int, entry: int, edit: Any) -> dict[int, Transcript]:
        copy = {c: Transcript([(label, list(msgs)) for label, msgs in t.entries]) for c, t in base.items()}
        label, msgs = copy[k].entries[entry]
        copy[k].entries[entry] = (label, edit(msgs))
        return copy

    def flip(msgs: list[Msg]) -> list[Msg]:
        i = next(i for i, (_, body) in enumerate(msgs) if body)
        t, body = msgs[i]
        return msgs[:i] + [(t, body[:-1] + bytes([body[-1] ^ 1]))] + msgs[i + 1:]

    def other_timezone(msgs: list[Msg]) -> list[Msg]:
        return [(t, b"TimeZone\x00Asia/Tokyo\x00" if b.startswith(b"TimeZone\x00") else b) for t, b in msgs]

    status = (m.PARAMETER_STATUS, m.parameter_status("TimeZone", "UTC")[5:])
    for entry, edit in ((5, flip), (5, lambda ms: ms[:-1]), (5, lambda ms: ms + ms[-1:]), (5, lambda ms: ms[1:]),
                        (0, other_timezone), (0, lambda ms: ms[:1] + ms[2:]), (5, lambda ms: [status] + ms)):
        problems = compare(base, altered(1, entry, edit))
        assert len(problems) == 1 and problems[0].client == 1 and not known_difference(problems[0]), problems
    notification = (m.NOTIFICATION_RESPONSE, struct.pack("!i", 4242) + b"ch\x00hello\x00")
    other_payload = (m.NOTIFICATION_RESPONSE, struct.pack("!i", 4242) + b"ch\x00bye\x00")
    problems = compare(altered(1, 5, lambda ms: [notification] + ms), altered(1, 5, lambda ms: [other_payload] + ms))
    assert len(problems) == 1 and problems[0].client == 1, problems
    # ... while what the rules normalise does not: the login's ParameterStatus order, backend keys, and
    # the pid of a notifying backend.
    other_pid = (m.NOTIFICATION_RESPONSE, struct.pack("!i", 99) + b"ch\x00hello\x00")
    assert compare(altered(1, 5, lambda ms: [notification] + ms), altered(1, 5, lambda ms: [other_pid] + ms)) == []
    assert compare(base, altered(0, 0, lambda ms: ms[:1] + ms[1:-2][::-1] + ms[-2:])) == []
    assert compare(base, altered(0, 0, lambda ms: [(t, b"\x00" * len(b)) if t == m.BACKEND_KEY_DATA else (t, b)
                                                   for t, b in ms])) == []


# -- driver sessions -------------------------------------------------------------------------------------
Record = list[tuple[Any, ...]]
DriverStep = tuple[str, Callable[[Any, int, Callable[..., Awaitable[None]]], Awaitable[None]]]


async def run_driver(connect: Callable[[int], Awaitable[Any]], close_conn: Callable[[Any], Awaitable[None]],
                     script: list[DriverStep], notices: Callable[[Any], list[tuple[Any, ...]]],
                     n: int = N_CLIENTS) -> dict[int, Record]:
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

    await asyncio.wait_for(main(), TIMEOUT)
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


def check_drivers(pg: PgCluster, pgmux_factory: PgmuxStarter, run: Callable[[str], Awaitable[dict[int, Record]]],
                  dsn: Callable[[str, int], str]) -> None:
    reset(pg)
    p = pg.primary
    direct = asyncio.run(run(dsn(p.host, p.port)))
    reset(pg)
    mux = start_pgmux(pgmux_factory, pg)
    pooled = asyncio.run(run(dsn(mux.host, mux.port)))
    problems = compare_records(direct, pooled)
    assert not problems, summarise(problems, 60)
    assert all(len({p for r in rec for p in driver_pids(r[1:])}) == 1 for rec in direct.values())
    moved, total = record_moves(pooled)
    print(f"pid-tagged operations on another server than the client's previous one: {moved} of {total}")
    assert moved >= total // 4, f"only {moved} of {total} pid-tagged operations ran on another server"


def url(host: str, port: int) -> str:
    return f"postgresql://postgres@{host}:{port}/{DB}"


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


async def run_psycopg(dsn: str) -> dict[int, Record]:
    script = psycopg_script()

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

    return await run_driver(connect, close_conn, script, notices)


def test_psycopg_sessions_match_postgresql(pg: PgCluster, confdb: str, pgmux_factory: PgmuxStarter) -> None:
    check_drivers(pg, pgmux_factory, run_psycopg, url)


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


async def run_asyncpg(dsn: str) -> dict[int, Record]:
    script = asyncpg_script()
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

    return await run_driver(connect, close_conn, script, notices)


def test_asyncpg_sessions_match_postgresql(pg: PgCluster, confdb: str, pgmux_factory: PgmuxStarter) -> None:
    check_drivers(pg, pgmux_factory, run_asyncpg, url)


def test_a_ddl_that_changes_a_result_type_does_not_poison_other_clients(pg: PgCluster, confdb: str,
                                                                          pgmux_factory: PgmuxStarter) -> None:
    """Statements are shared by text: one prepared on every server before a committed DDL changed its
    result type is refused there (0A000) for every client, those that prepare it after the DDL too.
    Directly, those would all succeed; through pgmux each stale server may refuse it once, then goes."""
    pg.primary.psql("DROP TABLE IF EXISTS conf_ddl; CREATE TABLE conf_ddl (id int); INSERT INTO conf_ddl VALUES (1)",
                    db=DB)
    mux = start_pgmux(pgmux_factory, pg)
    star = parse("SELECT * FROM conf_ddl", "s") + bind("s") + execute() + sync()

    async def clients(n: int) -> list[RawClient]:
        return [c for c, _ in await asyncio.gather(*(RawClient.connect(mux.host, mux.port, startup(k))
                                                     for k in range(n)))]

    def sqlstates(replies: list[list[Msg]]) -> list[str]:
        return [m.parse_error_fields(b).get("C", "") for msgs in replies for t, b in msgs if t == m.ERROR_RESPONSE]

    async def main() -> tuple[list[str], list[str]]:
        first = await clients(POOL_SIZE)  # the statement on every server, in transactions held at once
        await asyncio.gather(*(c.exchange(q("BEGIN")) for c in first))
        assert sqlstates(await asyncio.gather(*(c.exchange(x(star)) for c in first))) == []
        await asyncio.gather(*(c.exchange(q("COMMIT")) for c in first))
        pg.primary.psql("ALTER TABLE conf_ddl ADD COLUMN extra int", db=DB)
        later = await clients(N_CLIENTS)
        after_ddl = sqlstates(await asyncio.gather(*(c.exchange(x(star)) for c in later)))
        again = sqlstates(await asyncio.gather(*(c.exchange(x(bind("s") + execute() + sync())) for c in later)))
        await asyncio.gather(*(c.close() for c in first + later))
        return after_ddl, again

    after_ddl, again = asyncio.run(asyncio.wait_for(main(), TIMEOUT))
    assert set(after_ddl) <= {"0A000"} and len(after_ddl) <= POOL_SIZE, after_ddl
    assert again == []


def test_driver_comparator_fails_on_an_altered_record() -> None:
    """compare_records sees a changed value, error, notice or a missing operation; a pid does not count."""
    rec: Record = [("step 0 (x) select", "ok", [(1, "a", "pid:11")], ()),
                   ("step 1 (x) fail", "error", "DivisionByZero", "22012", "division by zero", ()),
                   ("step 2 (x) notice", "ok", "DO", (("NOTICE", "00000", "hi"),))]
    assert compare_records({0: rec}, {0: rec}) == []
    assert compare_records({0: rec}, {0: [("step 0 (x) select", "ok", [(1, "a", "pid:12")], ())] + rec[1:]}) == []
    for other in ([("step 0 (x) select", "ok", [(1, "b", "pid:11")], ())] + rec[1:],
                  rec[:1] + [("step 1 (x) fail", "error", "DivisionByZero", "22012", "division by 0", ())] + rec[2:],
                  rec[:2] + [("step 2 (x) notice", "ok", "DO", ())],
                  rec[:2]):
        assert len(compare_records({0: rec}, {0: other})) == 1, other
