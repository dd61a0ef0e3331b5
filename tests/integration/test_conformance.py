"""Differential conformance (issue 3, item 5): the same sessions directly against PostgreSQL and through
pgmux in transaction mode, 30 clients on a pool of 3, must see the same messages.

Each session runs in `interleave`'s lockstep (conformance.py): step i of every client, concurrently,
then step i+1, with the clients started in an order that rotates every step, so that each client's
next transaction tends to run on another server. Directly, the same clients run in the same order on
30 connections of their own. Sessions are written twice: as raw protocol messages, where every
backend message is compared byte for byte apart from the normalisations conformance.py states; and
as driver code (psycopg 3 with prepare_threshold=0, asyncpg with its default statement cache), where
results and the errors' class, SQLSTATE and message are compared.

The sessions are in conformance_raw.py and conformance_drivers.py. The tests use a database of their
own, `conformance`, created by the fixture; each client reads and writes only its own rows, so that
what it sees does not depend on how the clients interleave.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from conformance import (
    Difference,
    Msg,
    RawClient,
    Step,
    Transcript,
    bind,
    compare,
    driver_pids,
    interleave,
    pids_in,
    summarise,
)
from conformance_ddl import (
    DDL_DB,
    TEMPLATE,
    TEMPLATE_SQL,
    asyncpg_ddl_script,
    ddl_described_script,
    ddl_prepare_script,
    ddl_shared_script,
    psycopg_ddl_script,
)
from conformance_drivers import Record, compare_records, record_moves, run_asyncpg, run_psycopg
from conformance_raw import DB, ddl_script, q, raw_script, reset_script, sql_prepared_script, startup, x
from helpers import execute, parse, servers, sync

from conftest import PgmuxProc, PgmuxStarter
from pgmux.protocol import messages as m
from pgmux.testing.cluster import PgCluster

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
                                   "max_client_conn": 100,
                                   # pgmux's own queue NOTICE (after 5 s of waiting, on a slow machine) is
                                   # not PostgreSQL's: keep it out of the transcripts compared.
                                   "query_wait_notify": 0})


async def run_raw(host: str, port: int, n: int = N_CLIENTS,
                  script: Callable[[int], list[tuple[str, Step]]] = raw_script, db: str = DB,
                  side: tuple[str, int] | None = None) -> dict[int, Transcript]:
    """Each client's transcript. `side` is PostgreSQL's address, for the exchanges a script sends on the
    client's other connection (conformance_ddl.py), opened when first needed."""
    scripts = {k: script(k) for k in range(n)}
    steps = len(scripts[0])
    transcripts = {k: Transcript() for k in range(n)}
    clients: dict[int, RawClient] = {}
    others: dict[int, RawClient] = {}

    async def login(k: int) -> None:
        client, msgs = await RawClient.connect(host, port, {**startup(k), "database": db})
        clients[k] = client
        transcripts[k].add("login", msgs)

    async def step(k: int, i: int, sent: asyncio.Event) -> None:
        name, exchanges = scripts[k][i]
        for j, ex in enumerate(exchanges):
            label = f"step {i} ({name}) exchange {j}"
            client = clients[k]
            if ex.side:
                assert side is not None, "a script with side exchanges needs PostgreSQL's address"
                if k not in others:
                    others[k], _ = await RawClient.connect(*side, {**startup(k), "database": db})
                client = others[k]
                label += " (direct connection)"
            client.send(ex.send)
            sent.set()
            try:
                async with asyncio.timeout(15):
                    msgs = await client.read_until(ex.until, ex.count)
            except TimeoutError:  # (not an AssertionError: the xfail tests below expect only those)
                raise RuntimeError(f"client {k} {label}: no reply in 15 s") from None
            transcripts[k].add(label, msgs)

    async def main() -> None:
        try:
            await asyncio.gather(*(login(k) for k in range(n)))
            await interleave(n, steps, step)
        finally:
            await asyncio.gather(*(c.close() for c in [*clients.values(), *others.values()]))

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


def test_sql_prepared_statements_match_postgresql(pg: PgCluster, confdb: str, pgmux_factory: PgmuxStarter) -> None:
    """SQL-level PREPARE/EXECUTE/DEALLOCATE while the clients' transactions move between servers, each
    holding other clients' statements under the same names."""
    reset(pg)
    p = pg.primary
    direct = asyncio.run(run_raw(p.host, p.port, script=sql_prepared_script))
    reset(pg)
    mux = start_pgmux(pgmux_factory, pg)
    pooled = asyncio.run(run_raw(mux.host, mux.port, script=sql_prepared_script))
    problems = compare(direct, pooled)
    assert not problems, summarise(problems, 100)
    assert all(len({pid for _, pid in step_pids(t)}) == 1 for t in direct.values())
    per_client = [moves(t) for t in pooled.values()]
    moved, total = sum(a for a, _ in per_client), sum(b for _, b in per_client)
    print(f"pid-tagged exchanges on another server than the client's previous one: {moved} of {total}")
    assert moved >= total // 4, f"only {moved} of {total} pid-tagged exchanges ran on another server"
    assert 1 < len(servers(mux, DB)) <= POOL_SIZE




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




def test_ddl_changing_the_result_type_of_a_described_statement_matches_postgresql(
        pg: PgCluster, confdb: str, pgmux_factory: PgmuxStarter) -> None:
    """The known difference above, for a client that Described its statement: pgmux knows the shape
    the client expects, checks the copy it prepares again, and fails the Bind as PostgreSQL does."""
    reset(pg)
    p = pg.primary
    direct = asyncio.run(run_raw(p.host, p.port, script=ddl_described_script))
    refused = [m.parse_error_fields(msgs[0][1]).get("C") for t in direct.values() for label, msgs in t.entries
               if label.endswith("exchange 2")]
    assert refused == ["0A000"] * N_CLIENTS, refused  # the scenario tests something
    mux = start_pgmux(pgmux_factory, pg)
    pooled = asyncio.run(run_raw(mux.host, mux.port, script=ddl_described_script))
    problems = compare(direct, pooled)
    assert not problems, summarise(problems, 100)
    per_client = [moves(t) for t in pooled.values()]
    moved, total = sum(a for a, _ in per_client), sum(b for _, b in per_client)
    print(f"pid-tagged exchanges on another server than the client's previous one: {moved} of {total}")
    assert moved >= total // 4, f"only {moved} of {total} pid-tagged exchanges ran on another server"


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


@pytest.fixture(scope="module")
def ddl_template(pg: PgCluster) -> Iterator[str]:
    p = pg.primary
    p.psql(f"DROP DATABASE IF EXISTS {DDL_DB} WITH (FORCE)")
    p.psql(f"DROP DATABASE IF EXISTS {TEMPLATE} WITH (FORCE)")
    p.psql(f"CREATE DATABASE {TEMPLATE}")
    p.psql(TEMPLATE_SQL, db=TEMPLATE)
    yield TEMPLATE
    p.psql(f"DROP DATABASE IF EXISTS {DDL_DB} WITH (FORCE)")
    p.psql(f"DROP DATABASE IF EXISTS {TEMPLATE} WITH (FORCE)")


def fresh_ddl_db(pg: PgCluster) -> None:
    """The same objects, with the same OIDs, before each run (see conformance_ddl.py)."""
    pg.primary.psql(f"DROP DATABASE IF EXISTS {DDL_DB} WITH (FORCE)")
    pg.primary.psql(f"CREATE DATABASE {DDL_DB} TEMPLATE {TEMPLATE}")


@pytest.mark.parametrize("script", [ddl_prepare_script, ddl_shared_script], ids=["own", "shared"])
def test_ddl_between_prepares_matches_postgresql(pg: PgCluster, ddl_template: str, pgmux_factory: PgmuxStarter,
                                                 script: Callable[[int], list[tuple[str, Step]]]) -> None:
    """Prepared, closed, the schema changed (a table recreated with another column type, a column added,
    an enum type recreated, functions replaced; through the client, and by another connection directly on
    PostgreSQL), prepared again: the same messages as directly, wherever the statements moved."""
    p = pg.primary
    fresh_ddl_db(pg)
    direct = asyncio.run(run_raw(p.host, p.port, script=script, db=DDL_DB, side=(p.host, p.port)))
    fresh_ddl_db(pg)
    mux = pgmux_factory(databases={DDL_DB: f"host={p.host} port={p.port} dbname={DDL_DB}"},
                        settings={"pool_mode": "transaction", "default_pool_size": POOL_SIZE,
                                  "max_client_conn": 100})
    pooled = asyncio.run(run_raw(mux.host, mux.port, script=script, db=DDL_DB, side=(p.host, p.port)))
    problems = compare(direct, pooled)
    assert not problems, summarise(problems, 100)
    # The scenario tests something: directly, the statements prepared again see the new types.
    described = {b for t in direct.values() for _, msgs in t.entries for typ, b in msgs
                 if typ == m.PARAMETER_DESCRIPTION}
    assert {struct.pack("!hI", 1, oid) for oid in (1082, 1186)} <= described, described
    assert not [d for t in direct.values() for _, msgs in t.entries for typ, d in msgs if typ == m.ERROR_RESPONSE]
    per_client = [moves(t) for t in pooled.values()]
    moved, total = sum(a for a, _ in per_client), sum(b for _, b in per_client)
    print(f"pid-tagged exchanges on another server than the client's previous one: {moved} of {total}")
    assert moved >= total // 4, f"only {moved} of {total} pid-tagged exchanges ran on another server"
    assert 1 < len(servers(mux, DDL_DB)) <= POOL_SIZE


@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
def test_drivers_with_ddl_between_prepares_match_postgresql(pg: PgCluster, ddl_template: str,
                                                            pgmux_factory: PgmuxStarter, driver: str) -> None:
    """psycopg (prepare_threshold=0) and asyncpg with the schema changed between their prepares, through
    the client and by another connection directly on PostgreSQL (conformance_ddl.py)."""
    p = pg.primary
    direct_dsn = f"postgresql://postgres@{p.host}:{p.port}/{DDL_DB}"
    run = run_psycopg if driver == "psycopg" else run_asyncpg
    script = (psycopg_ddl_script if driver == "psycopg" else asyncpg_ddl_script)(direct_dsn)
    fresh_ddl_db(pg)
    direct = asyncio.run(run(direct_dsn, N_CLIENTS, TIMEOUT, script))
    fresh_ddl_db(pg)
    mux = pgmux_factory(databases={DDL_DB: f"host={p.host} port={p.port} dbname={DDL_DB}"},
                        settings={"pool_mode": "transaction", "default_pool_size": POOL_SIZE,
                                  "max_client_conn": 100})
    pooled = asyncio.run(run(f"postgresql://postgres@{mux.host}:{mux.port}/{DDL_DB}", N_CLIENTS, TIMEOUT, script))
    problems = compare_records(direct, pooled)
    assert not problems, summarise(problems, 60)
    errors = [r for rec in direct.values() for r in rec if r[1] == "error"]
    assert not errors, errors[:5]
    moved, total = record_moves(pooled)
    print(f"pid-tagged operations on another server than the client's previous one: {moved} of {total}")
    assert moved >= total // 4, f"only {moved} of {total} pid-tagged operations ran on another server"


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
def check_drivers(pg: PgCluster, pgmux_factory: PgmuxStarter,
                  run: Callable[[str, int, float], Awaitable[dict[int, Record]]],
                  dsn: Callable[[str, int], str]) -> None:
    reset(pg)
    p = pg.primary
    direct = asyncio.run(run(dsn(p.host, p.port), N_CLIENTS, TIMEOUT))
    reset(pg)
    mux = start_pgmux(pgmux_factory, pg)
    pooled = asyncio.run(run(dsn(mux.host, mux.port), N_CLIENTS, TIMEOUT))
    problems = compare_records(direct, pooled)
    assert not problems, summarise(problems, 60)
    assert all(len({p for r in rec for p in driver_pids(r[1:])}) == 1 for rec in direct.values())
    moved, total = record_moves(pooled)
    print(f"pid-tagged operations on another server than the client's previous one: {moved} of {total}")
    assert moved >= total // 4, f"only {moved} of {total} pid-tagged operations ran on another server"


def url(host: str, port: int) -> str:
    return f"postgresql://postgres@{host}:{port}/{DB}"




def test_psycopg_sessions_match_postgresql(pg: PgCluster, confdb: str, pgmux_factory: PgmuxStarter) -> None:
    check_drivers(pg, pgmux_factory, run_psycopg, url)




def test_asyncpg_sessions_match_postgresql(pg: PgCluster, confdb: str, pgmux_factory: PgmuxStarter) -> None:
    check_drivers(pg, pgmux_factory, run_asyncpg, url)


def test_a_ddl_that_changes_a_result_type_does_not_poison_other_clients(pg: PgCluster, confdb: str,
                                                                          pgmux_factory: PgmuxStarter) -> None:
    """Statements are shared by text: one prepared on every server before a committed DDL changed its
    result type would be refused there (0A000) for every client. Directly, clients that prepare it
    after the DDL succeed: through pgmux too, since a client's Parse prepares it anew, and a Bind
    prepares it again on a server whose copy is older than the client's Parse."""
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
    assert after_ddl == [] and again == [], (after_ddl, again)


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
