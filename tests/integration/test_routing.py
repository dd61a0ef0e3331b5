"""Read/write split, health, failover and read-your-writes against real streaming replication.

One module-scoped cluster: a primary and two replicas made with `pg_basebackup -R`. Tests that stop,
pause or ban something put it back before they end; the failover test, which promotes a replica,
runs last in the module and leaves the old primary following the new one.

Reads and writes are counted on the servers themselves: `pg_stat_user_tables` counters of the table
the workload touches, on each host. PostgreSQL flushes a backend's counters when it is idle for a
second or when it exits, so the tests stop pgmux (its server connections end) before reading them.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import asyncpg
import psycopg
import pytest
from helpers import guard, wait_for

from conftest import PgmuxProc, PgmuxStarter
from pgmux.testing.cluster import HOST, PgCluster, PgNode, quote_literal

DB = "app"
PERIOD = 0.2  # health_check_period: fast, so the tests wait little


@pytest.fixture(scope="module")
def cluster() -> Iterator[PgCluster]:
    with PgCluster(replicas=2) as c:
        c.primary.psql(f"CREATE DATABASE {DB}")
        c.primary.psql("CREATE TABLE ryw (client int, i int, PRIMARY KEY (client, i)); "
                       "CREATE TABLE marks (id serial PRIMARY KEY, at text)", db=DB)
        subprocess.run(["pgbench", "-i", "-q", "-s", "1", "-h", c.primary.host, "-p", str(c.primary.port),
                        "-U", "postgres", DB], check=True, capture_output=True, timeout=120)
        c.wait_for_replay()
        yield c


def split_line(c: PgCluster, db: str = DB, **extra: str) -> str:
    nodes = c.nodes
    keys = {"pgmux_read_write_split": "1", **extra}
    return (f"host={','.join(n.host for n in nodes)} port={','.join(str(n.port) for n in nodes)} dbname={db} "
            f"pgmux_roles={','.join('primary' if n.role == 'primary' else 'replica' for n in nodes)} "
            + " ".join(f"{k}={v}" for k, v in keys.items()))


def start(factory: PgmuxStarter, c: PgCluster, databases: dict[str, str] | None = None,
          **settings: Any) -> PgmuxProc:
    merged = {"pool_mode": "transaction", "default_pool_size": 10, "health_check_period": PERIOD,
              "health_check_timeout": 1, "ban_time": 30, "failover_wait_timeout": 10, **settings}
    return factory(databases=databases or {DB: split_line(c)}, settings=merged)


def scalar(node: PgNode, sql: str) -> int:
    return int(node.psql(sql, db=DB) or 0)


def accounts_scans(node: PgNode) -> int:
    return scalar(node, "SELECT coalesce(idx_scan, 0) + coalesce(seq_scan, 0) FROM pg_stat_user_tables "
                        "WHERE relname = 'pgbench_accounts'")


def settle(c: PgCluster) -> None:
    """Wait until pgmux's server connections have ended everywhere: a backend flushes its statistics
    as it exits (an idle one may hold them back for up to 10 s)."""
    sql = ("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
           "AND pid <> pg_backend_pid() AND backend_type = 'client backend'")
    for node in c.nodes:
        if node.is_running():
            wait_for(lambda n=node: scalar(n, sql) == 0, f"pgmux's connections to {node.name} to end", 10)
    time.sleep(0.2)


def hosts(mux: PgmuxProc) -> dict[int, dict[str, Any]]:
    return {r["port"]: r for r in mux.admin_dicts("SHOW HOSTS") if r["database"] == DB}


def pgbench(mux: PgmuxProc, *args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["pgbench", "-h", mux.host, "-p", str(mux.port), "-U", "postgres", *args, DB],
                          capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"pgbench {args} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr[-3000:]}"
    return proc


def wait_usable(mux: PgmuxProc, n: int, timeout: float = 10) -> None:
    wait_for(lambda: len([h for h in hosts(mux).values() if h["state"] == "up"]) == n, f"{n} hosts up", timeout)


def connect(mux: PgmuxProc, **kwargs: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(mux.dsn(DB), autocommit=True, connect_timeout=10, **kwargs)


def where(conn: psycopg.Connection[Any]) -> tuple[int, bool]:
    """(server port, in recovery) of the server that ran this statement."""
    row = conn.execute("SELECT inet_server_port(), pg_is_in_recovery()").fetchone()
    assert row is not None
    return int(row[0]), bool(row[1])


# -- routing ---------------------------------------------------------------------------------------

def test_pgbench_select_only_reads_replicas_and_writes_primary(cluster: PgCluster,
                                                               pgmux_factory: PgmuxStarter) -> None:
    def scans() -> list[int]:
        return [accounts_scans(n) for n in cluster.nodes]

    def updates() -> int:
        return scalar(cluster.primary, "SELECT n_tup_upd FROM pg_stat_user_tables WHERE relname = 'pgbench_accounts'")

    # Round robin: least_outstanding (the default) follows the replicas' momentary speed, which on a
    # shared test machine drifts; round robin's split is exact, so it shows the routing alone.
    mux = start(pgmux_factory, cluster, databases={DB: split_line(cluster, pgmux_balance="round_robin")})
    with connect(mux):  # the first login makes the split and starts its checks
        pass
    wait_usable(mux, 3)
    before = scans()
    pgbench(mux, "-S", "-M", "extended", "-c", "8", "-j", "2", "-t", "600")
    pgbench(mux, "-S", "-M", "simple", "-c", "8", "-j", "2", "-t", "600")
    shown = hosts(mux)
    mux.stop()  # its server connections end, so each backend flushes its counters
    settle(cluster)
    p, r1, r2 = (a - b for a, b in zip(scans(), before, strict=True))
    assert p + r1 + r2 >= 9600, (p, r1, r2)  # 2 x 8 x 600 SELECTs, each one index scan
    assert (r1 + r2) / (p + r1 + r2) >= 0.9, (p, r1, r2)
    assert abs(r1 - r2) <= 0.1 * min(r1, r2), (r1, r2)
    primary, rep1, rep2 = (shown[n.port] for n in cluster.nodes)
    assert (primary["role"], rep1["role"], rep2["role"]) == ("primary", "replica", "replica")
    assert rep1["reads"] + rep2["reads"] >= 9600

    # The default policy, TPC-B-like transactions (BEGIN; UPDATE accounts; SELECT accounts; ...; END),
    # then SELECT-only again: every write on the primary, every lone SELECT on a replica.
    mux = start(pgmux_factory, cluster)
    before, upd = scans(), updates()
    pgbench(mux, "-c", "4", "-j", "2", "-t", "100")
    pgbench(mux, "-S", "-c", "4", "-j", "2", "-t", "250")
    shown = hosts(mux)
    mux.stop()
    settle(cluster)
    p, r1, r2 = (a - b for a, b in zip(scans(), before, strict=True))
    assert p == 800, (p, r1, r2)  # an UPDATE and a SELECT of accounts per TPC-B transaction
    assert r1 + r2 == 1000 and min(r1, r2) > 0, (r1, r2)
    assert updates() - upd == 400
    assert shown[cluster.primary.port]["writes"] >= 400
    assert all(shown[n.port]["writes"] == 0 for n in cluster.replicas)


def test_statement_kinds_hint_session_setting_and_read_only_transactions(cluster: PgCluster,
                                                                          pgmux_factory: PgmuxStarter) -> None:
    mux = start(pgmux_factory, cluster)
    with connect(mux) as conn, guard(mux):
        wait_usable(mux, 3)
        primary = cluster.primary.port
        assert where(conn)[1] is True  # an autocommit read: a replica
        assert conn.execute("/* pgmux:primary */ SELECT inet_server_port()").fetchone() == (primary,)
        assert conn.execute("SELECT inet_server_port() FROM (SELECT nextval('marks_id_seq')) s"
                            ).fetchone() == (primary,)
        assert conn.execute("WITH w AS (INSERT INTO marks (at) VALUES ('cte') RETURNING id) "
                            "SELECT inet_server_port() FROM w").fetchone() == (primary,)
        assert conn.execute("SELECT inet_server_port() FROM marks FOR UPDATE LIMIT 1").fetchone() == (primary,)
        # A transaction not declared read only goes to the primary, whatever it starts with.
        with conn.transaction():
            assert where(conn) == (primary, False)
            conn.execute("INSERT INTO marks (at) VALUES ('tx')")
        # BEGIN READ ONLY may go to a replica.
        conn.execute("BEGIN READ ONLY")
        assert where(conn)[1] is True
        conn.execute("COMMIT")
        # The session setting forces the primary, until it is reset.
        conn.execute("SET pgmux.route = 'primary'")
        assert where(conn) == (primary, False)
        assert where(conn) == (primary, False)
        conn.execute("RESET pgmux.route")
        assert where(conn)[1] is True
    # The same prepared statement on several hosts: psycopg prepares after 2 runs, asyncpg always.
    with connect(mux, prepare_threshold=0) as conn, guard(mux):
        seen = {conn.execute("SELECT inet_server_port() WHERE %s::int > 0", (i + 1,)).fetchone()[0]  # type: ignore[index]
                for i in range(20)}
        assert seen == {n.port for n in cluster.replicas}
        for _ in range(3):
            with conn.transaction():
                assert conn.execute("SELECT inet_server_port() WHERE %s::int > 0", (1,)).fetchone() == (primary,)


def test_asyncpg_prepared_statements_run_on_every_host(cluster: PgCluster, pgmux_factory: PgmuxStarter) -> None:
    """asyncpg names every statement once per connection; pgmux prepares it on each host it lands on."""
    mux = start(pgmux_factory, cluster)

    async def main() -> None:
        conn = await asyncpg.connect(mux.dsn(DB), timeout=10)
        try:
            wait_usable(mux, 3)
            ports = {await conn.fetchval("SELECT inet_server_port() WHERE $1::int > 0", i + 1) for i in range(20)}
            assert ports == {n.port for n in cluster.replicas}
            for _ in range(3):
                async with conn.transaction():
                    assert await conn.fetchval("SELECT inet_server_port() WHERE $1::int > 0", 1) == \
                        cluster.primary.port
            assert await conn.fetchval("INSERT INTO marks (at) VALUES ($1) RETURNING inet_server_port()",
                                       "asyncpg") == cluster.primary.port
        finally:
            await conn.close()

    with guard(mux):
        asyncio.run(asyncio.wait_for(main(), 30))


def test_a_write_pipelined_behind_a_read_is_routed_on_its_own(cluster: PgCluster, pgmux_factory: PgmuxStarter) -> None:
    """libpq pipeline mode: a read (a replica, still busy) then a write sent before the read's reply.
    The write waits for the replica to finish and then goes to the primary; sent to the replica it
    would fail with 25006 (read-only transaction)."""
    from psycopg import pq

    mux = start(pgmux_factory, cluster)
    with connect(mux) as conn, guard(mux):
        wait_usable(mux, 3)
        pg = conn.pgconn
        pg.enter_pipeline_mode()
        pg.send_query_params(b"SELECT inet_server_port(), pg_is_in_recovery() FROM pg_sleep(0.3)", None)
        pg.pipeline_sync()
        while pg.flush():
            pass
        time.sleep(0.1)  # the read is on its replica now
        pg.send_query_params(b"INSERT INTO marks (at) VALUES ('pipelined') RETURNING inet_server_port()", None)
        pg.send_query_params(b"SELECT inet_server_port(), pg_is_in_recovery()", None)
        pg.pipeline_sync()
        while pg.flush():
            pass
        rows: list[tuple[Any, ...]] = []
        deadline = time.monotonic() + 10
        syncs = 0
        while syncs < 2 and time.monotonic() < deadline:
            res = pg.get_result()
            if res is None:
                continue
            if res.status == pq.ExecStatus.PIPELINE_SYNC:
                syncs += 1
            else:
                assert res.status == pq.ExecStatus.TUPLES_OK, res.error_message
                rows.append(tuple(res.get_value(0, i) for i in range(res.nfields)))
        pg.exit_pipeline_mode()
        replica_port, in_recovery = int(rows[0][0]), rows[0][1]
        assert in_recovery == b"t" and replica_port in {n.port for n in cluster.replicas}
        assert rows[1] == (str(cluster.primary.port).encode(),)  # the write: on the primary
        assert rows[2] == (str(cluster.primary.port).encode(), b"f")  # routed with it, behind it
        assert syncs == 2


# -- health ----------------------------------------------------------------------------------------

def test_stopping_a_replica_costs_only_its_transactions_in_flight(cluster: PgCluster,
                                                                  pgmux_factory: PgmuxStarter) -> None:
    mux = start(pgmux_factory, cluster)
    victim = cluster.replicas[1]
    with connect(mux):
        pass
    wait_usable(mux, 3)
    result: dict[str, subprocess.CompletedProcess[str]] = {}

    def run() -> None:
        result["run"] = pgbench(mux, "-S", "-c", "10", "-j", "2", "-T", "5", "-P", "1", check=False)

    bench = threading.Thread(target=run)
    bench.start()
    try:
        time.sleep(1.5)
        victim.stop("fast")
        wait_for(lambda: hosts(mux)[victim.port]["state"] == "banned", "the stopped replica to be banned", 5)
        row = hosts(mux)[victim.port]
        bench.join(30)
    finally:
        bench.join(30)
        victim.start()
    out = result["run"]
    aborted = len(re.findall(r"client \d+ aborted", out.stderr))
    processed = int(re.search(r"number of transactions actually processed: (\d+)", out.stdout).group(1))  # type: ignore[union-attr]
    # Only clients whose transaction was on the replica when it went away were lost; the others ran on.
    assert aborted <= 3, out.stderr[-3000:]
    assert processed > 1000, out.stdout
    progress = [float(x) for x in re.findall(r"progress: [\d.]+ s, ([\d.]+) tps", out.stderr)]
    assert len(progress) >= 4 and all(tps > 0 for tps in progress[2:]), out.stderr[-3000:]
    assert row["state"] == "banned" and row["banned_until"] is not None, row
    assert any(w in row["reason"] for w in ("banned", "failed", "shutting down")), row
    # UNBAN brings it back as soon as a check sees it up; BAN takes it out again.
    mux.admin(f"UNBAN {DB} {victim.host}:{victim.port}")
    wait_for(lambda: hosts(mux)[victim.port]["state"] == "up", "the replica to be up again", 10)
    mux.admin(f"BAN {DB} {victim.host}:{victim.port}")
    assert hosts(mux)[victim.port]["state"] == "banned"
    with connect(mux) as conn:
        assert {where(conn)[0] for _ in range(10)} == {cluster.replicas[0].port}
    mux.admin(f"UNBAN {DB} {victim.host}:{victim.port}")
    with pytest.raises(psycopg.Error, match="no host"):
        mux.admin(f"BAN {DB} {victim.host}:1")


def test_lagging_replica_gets_no_reads_and_all_replicas_down_reads_go_to_primary(
        cluster: PgCluster, pgmux_factory: PgmuxStarter) -> None:
    r1, r2 = cluster.replicas
    # With a forced user the checks start with pgmux, before any client.
    line = split_line(cluster, pgmux_max_lag_bytes="200000") + " user=postgres"
    mux = start(pgmux_factory, cluster, databases={DB: line})
    wait_usable(mux, 3)
    with connect(mux) as conn, guard(mux):
        r1.psql("SELECT pg_wal_replay_pause()")
        try:
            # WAL the paused replica receives but does not replay: over the 1-byte limit.
            cluster.primary.psql("INSERT INTO marks (at) SELECT 'lag' FROM generate_series(1, 20000)", db=DB)
            wait_for(lambda: hosts(mux)[r1.port]["state"] == "lagging", "the paused replica to lag", 10)
            assert {where(conn)[0] for _ in range(10)} == {r2.port}, hosts(mux)
        finally:
            r1.psql("SELECT pg_wal_replay_resume()")
        wait_for(lambda: hosts(mux)[r1.port]["state"] == "up", "the replica to catch up", 10)
        for r in (r1, r2):
            mux.admin(f"BAN {DB} {r.host}:{r.port}")
        try:
            assert {where(conn) for _ in range(5)} == {(cluster.primary.port, False)}
        finally:
            for r in (r1, r2):
                mux.admin(f"UNBAN {DB} {r.host}:{r.port}")


# -- read-your-writes --------------------------------------------------------------------------------

def _insert_then_select(mux: PgmuxProc, db: str, clients: int, per_client: int) -> int:
    """Each client inserts a row and at once reads it back, `per_client` times; returns stale reads."""
    stale = [0] * clients
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            with psycopg.connect(mux.dsn(db), autocommit=True, connect_timeout=10) as conn:
                client = k + 1000 * len(db)  # distinct per database
                for i in range(per_client):
                    conn.execute("INSERT INTO ryw (client, i) VALUES (%s, %s)", (client, i))
                    row = conn.execute("SELECT count(*) FROM ryw WHERE client = %s AND i = %s", (client, i)).fetchone()
                    if row != (1,):
                        stale[k] += 1
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "insert-then-select clients did not finish in 60 s"
    assert not errors, errors[:3]
    return sum(stale)


def test_read_your_writes_while_replicas_lag(cluster: PgCluster, pgmux_factory: PgmuxStarter) -> None:
    mux = start(pgmux_factory, cluster, databases={
        "app": split_line(cluster, pgmux_read_your_writes="1"),
        "app_norw": split_line(cluster)})
    cluster.primary.psql("TRUNCATE ryw", db=DB)
    cluster.wait_for_replay()
    for db in ("app", "app_norw"):
        with psycopg.connect(mux.dsn(db), autocommit=True):
            pass
    wait_usable(mux, 3)
    for r in cluster.replicas:
        r.psql("SELECT pg_wal_replay_pause()")
    try:
        with guard(mux):
            assert _insert_then_select(mux, "app", 10, 1000) == 0
            # The same without the option: reads go to the paused replicas and miss the new rows.
            assert _insert_then_select(mux, "app_norw", 4, 50) > 0
    finally:
        for r in cluster.replicas:
            r.psql("SELECT pg_wal_replay_resume()")
    cluster.wait_for_replay()
    assert cluster.replicas[0].psql("SELECT count(*) FROM ryw", db=DB) == str(10_000 + 200)
    # Replicas that replay again serve the client's reads again once a check shows its write there.
    with connect(mux) as conn, guard(mux):
        conn.execute("INSERT INTO marks (at) VALUES ('ryw')")
        wait_for(lambda: where(conn)[1], "reads back on a replica after the write was replayed", 5)


# -- failover (last: it changes the cluster) -------------------------------------------------------

def test_failover_follows_a_promoted_replica_and_the_old_primary_comes_back_as_a_replica(
        cluster: PgCluster, pgmux_factory: PgmuxStarter) -> None:
    old, new = cluster.primary, cluster.replicas[0]
    mux = start(pgmux_factory, cluster, failover_wait_timeout=15)
    with connect(mux) as conn, guard(mux):
        wait_usable(mux, 3)
        conn.execute("INSERT INTO marks (at) VALUES ('before')")
        old.stop("fast")
        new.promote()
        promoted = time.monotonic()
        # The next write waits for a primary instead of failing, then lands on the promoted one.
        with connect(mux) as writer:
            writer.execute("INSERT INTO marks (at) VALUES ('after')")
            took = time.monotonic() - promoted
            assert where(writer) != (old.port, False)
            with writer.transaction():
                assert where(writer) == (new.port, False)
        assert took < 5, took
        assert hosts(mux)[new.port]["role"] == "primary"
        # The old primary comes back in recovery, following the new one: it becomes a replica.
        cluster.write_owned(f"{old.datadir}/standby.signal", "")
        with open(f"{old.datadir}/postgresql.auto.conf", "a") as f:
            f.write(f"primary_conninfo = {quote_literal(f'host={HOST} port={new.port} user=postgres')}\n")
        old.start()
        old.role = "replica"
        wait_for(lambda: hosts(mux)[old.port]["role"] == "replica" and hosts(mux)[old.port]["state"] == "up",
                 "the old primary to be seen as a replica", 15)
        assert hosts(mux)[old.port]["reason"].startswith("demoted")


def test_no_primary_fails_writes_after_failover_wait_timeout(cluster: PgCluster,
                                                             pgmux_factory: PgmuxStarter) -> None:
    primary = next(n for n in cluster.nodes if n.role == "primary")
    mux = start(pgmux_factory, cluster, databases={DB: split_line(cluster)}, failover_wait_timeout=1)
    with connect(mux) as conn, guard(mux):
        wait_usable(mux, 3)
        primary.stop("fast")
        try:
            started = time.monotonic()
            with pytest.raises(psycopg.OperationalError) as info:
                conn.execute("INSERT INTO marks (at) VALUES ('nowhere')")
            assert time.monotonic() - started >= 0.9  # it waited for a primary first
            assert info.value.sqlstate == "57P03", info.value
            assert "failover_wait_timeout" in str(info.value)
            with connect(mux) as reader:  # reads still go to the replicas meanwhile
                assert where(reader)[1] is True
        finally:
            primary.start()
