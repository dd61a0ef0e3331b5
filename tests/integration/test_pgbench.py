"""pgbench through pgmux: initialisation, read-only and TPC-B-like load in transaction mode.

pgbench is what operators point at a pooler first, and its counters are easy to check: every
transaction either succeeds or is counted as failed, and the TPC-B-like script leaves the four
tables in an exactly consistent state only if no transaction was split across servers.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from typing import Any

import psycopg
import pytest

from conftest import PgmuxProc, PgmuxStarter
from pgmux.testing.cluster import PgCluster

DB = "benchdb"
POOL_SIZE = 5
CLIENTS = 20


def pgbench(mux: PgmuxProc, *args: str, timeout: float = 60) -> str:
    """Run pgbench against pgmux; returns stdout + stderr, failing the test on a non-zero exit."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGCONNECT_TIMEOUT"] = "10"
    proc = subprocess.run(["pgbench", "-h", mux.host, "-p", str(mux.port), "-U", "postgres", *args, DB],
                          capture_output=True, text=True, timeout=timeout, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"pgbench {' '.join(args)} exited {proc.returncode}:\n{out[-4000:]}"
    return out


def summary(out: str) -> dict[str, float]:
    """The numbers pgbench prints at the end of a run."""
    def grab(pattern: str) -> float:
        found = re.search(pattern, out, re.MULTILINE)
        assert found, f"{pattern!r} not in pgbench output:\n{out[-3000:]}"
        return float(found.group(1))

    return {
        "processed": grab(r"^number of transactions actually processed: (\d+)"),
        "failed": grab(r"^number of failed transactions: (\d+)"),
        "tps": grab(r"^tps = ([\d.]+)"),
    }


def primary_scalar(pg: PgCluster, sql: str) -> Any:
    with psycopg.connect(pg.primary.dsn(db=DB), autocommit=True, connect_timeout=10) as conn:
        row = conn.execute(sql).fetchone()
        assert row is not None
        return row[0] if len(row) == 1 else row


def server_count(mux: PgmuxProc) -> int:
    return len([s for s in mux.admin_dicts("SHOW SERVERS") if s["database"] == DB])


@pytest.fixture(scope="module")
def bench_db(pg: PgCluster) -> str:
    """A database of its own, initialised directly so each test can run alone."""
    pg.primary.psql(f"DROP DATABASE IF EXISTS {DB}")
    pg.primary.psql(f"CREATE DATABASE {DB}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    subprocess.run(["pgbench", "-i", "-q", "-s", "1", "-h", pg.primary.host, "-p", str(pg.primary.port),
                    "-U", "postgres", DB], check=True, capture_output=True, timeout=120, env=env)
    return DB


@pytest.fixture
def mux(pgmux_factory: PgmuxStarter, pg: PgCluster, bench_db: str) -> PgmuxProc:
    p = pg.primary
    return pgmux_factory(
        databases={bench_db: f"host={p.host} port={p.port} dbname={bench_db}"},
        settings={"pool_mode": "transaction", "default_pool_size": POOL_SIZE, "max_client_conn": 200})


def test_pgbench_initialises_through_pgmux(mux: PgmuxProc, pg: PgCluster) -> None:
    # Drop, CREATE TABLE, a 100 000-row COPY FROM STDIN, VACUUM and ALTER TABLE, all through the pooler.
    out = pgbench(mux, "-i", "-s", "1", timeout=120)
    assert "done in" in out
    assert primary_scalar(pg, "SELECT (SELECT count(*) FROM pgbench_accounts), (SELECT count(*) FROM "
                              "pgbench_branches), (SELECT count(*) FROM pgbench_tellers), "
                              "(SELECT count(*) FROM pgbench_history)") == (100_000, 1, 10, 0)
    assert primary_scalar(pg, "SELECT sum(aid) FROM pgbench_accounts") == 100_000 * 100_001 // 2
    assert primary_scalar(pg, "SELECT count(*) FROM pg_constraint "
                              "WHERE conname = 'pgbench_accounts_pkey'") == 1


@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_pgbench_select_only(mux: PgmuxProc, protocol: str) -> None:
    out = pgbench(mux, "-S", "-M", protocol, "-c", str(CLIENTS), "-j", "4", "-T", "3")
    s = summary(out)
    assert s["failed"] == 0 and s["processed"] > 0 and s["tps"] > 0, s
    assert "aborted" not in out
    pools = [p for p in mux.admin_dicts("SHOW POOLS") if p["database"] == DB]
    assert len(pools) == 1 and pools[0]["cl_waiting"] == 0
    assert 0 < server_count(mux) <= POOL_SIZE
    stats = {r["database"]: r for r in mux.admin_dicts("SHOW STATS")}
    # Every pgbench transaction is one pooled transaction (plus pgbench's own setup queries).
    assert int(stats[DB]["total_xact_count"]) >= s["processed"]


# prepared: pgbench prepares with a blocking PQprepare in its event loop; with 10 clients on 2 threads
# and 5 servers, a thread's prepare must not wait for servers its other clients hold inside their
# transactions (session/localparse.py): before, this deadlocked.
@pytest.mark.parametrize("protocol", ["simple", "extended", "prepared"])
def test_pgbench_tpcb_like_keeps_balances_consistent(mux: PgmuxProc, pg: PgCluster, protocol: str) -> None:
    """BEGIN; 3 UPDATEs, a SELECT and an INSERT; END: a transaction split across servers, or a
    statement lost or doubled, leaves the branch, teller, account and history sums unequal."""
    before = primary_scalar(pg, "SELECT count(*) FROM pgbench_history")
    out = pgbench(mux, "-M", protocol, "-c", "10", "-j", "2", "-T", "3", "-n")
    s = summary(out)
    assert s["failed"] == 0 and s["tps"] > 0, s
    history, delta = primary_scalar(pg, "SELECT count(*), coalesce(sum(delta), 0) FROM pgbench_history")
    assert history - before == s["processed"]
    sums = primary_scalar(pg, "SELECT (SELECT sum(abalance) FROM pgbench_accounts), "
                              "(SELECT sum(bbalance) FROM pgbench_branches), "
                              "(SELECT sum(tbalance) FROM pgbench_tellers)")
    assert sums == (delta, delta, delta)
    assert server_count(mux) <= POOL_SIZE


def test_pgbench_connect_per_transaction(mux: PgmuxProc) -> None:
    out = pgbench(mux, "-S", "-C", "-c", "8", "-j", "2", "-T", "2", "-n")
    s = summary(out)
    assert s["failed"] == 0 and s["processed"] > 20 and s["tps"] > 0, s
    # Hundreds of client connections, a handful of server connections: what a pooler is for.
    opened = mux.wait_log("new connection to server").count("new connection to server")
    assert 0 < opened <= POOL_SIZE, f"{opened} server connections for {s['processed']:.0f} client connections"
    assert server_count(mux) <= POOL_SIZE
    assert not [c for c in mux.admin_dicts("SHOW CLIENTS") if c["database"] == DB]


def test_pgbench_prepared_in_session_mode(pgmux_factory: PgmuxStarter, pg: PgCluster, bench_db: str) -> None:
    # Named prepared statements live on the server: fine in session mode, where a client keeps it.
    p = pg.primary
    mux = pgmux_factory(databases={bench_db: f"host={p.host} port={p.port} dbname={bench_db}"},
                        settings={"pool_mode": "session", "default_pool_size": POOL_SIZE})
    s = summary(pgbench(mux, "-S", "-M", "prepared", "-c", str(POOL_SIZE), "-j", "2", "-T", "2", "-n"))
    assert s["failed"] == 0 and s["processed"] > 0 and s["tps"] > 0, s
    assert server_count(mux) <= POOL_SIZE


def test_pgbench_over_unix_socket(pgmux_factory: PgmuxStarter, pg: PgCluster, bench_db: str) -> None:
    socket_dir = tempfile.mkdtemp(prefix="pgmux-sock-")  # short: socket paths are capped near 107 bytes
    os.chmod(socket_dir, 0o777)  # the pooler may run as another OS user (PGMUX_TEST_POOLER)
    try:
        p = pg.primary
        mux = pgmux_factory(databases={bench_db: f"host={p.host} port={p.port} dbname={bench_db}"},
                            settings={"pool_mode": "transaction", "default_pool_size": POOL_SIZE,
                                      "unix_socket_dir": socket_dir})
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        proc = subprocess.run(["pgbench", "-h", socket_dir, "-p", str(mux.port), "-U", "postgres", "-S",
                               "-c", "4", "-T", "2", "-n", DB], capture_output=True, text=True, timeout=60, env=env)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out[-3000:]
        s = summary(out)
        assert s["failed"] == 0 and s["processed"] > 0, s
        stats = [r for r in mux.admin_dicts("SHOW STATS") if r["database"] == DB]
        assert int(stats[0]["total_xact_count"]) >= s["processed"]
        mux.stop()
    finally:
        shutil.rmtree(socket_dir, ignore_errors=True)


def _epoll_sets(pid: int) -> int:
    """How many epoll sets the process has open: uvloop's, and pgmux._streams' Poller when it is used."""
    fds = f"/proc/{pid}/fd"
    return sum(1 for fd in os.listdir(fds) if os.readlink(os.path.join(fds, fd)) == "anon_inode:[eventpoll]")


@pytest.mark.parametrize("streams", ["1", "0"])
def test_pgbench_on_both_socket_layers(pgmux_factory: PgmuxStarter, pg: PgCluster, bench_db: str,
                                       monkeypatch: pytest.MonkeyPatch, streams: str) -> None:
    """Client and server sockets on pgmux._streams (the default) and on uvloop's transports
    (PGMUX_STREAMS=0, as where the C module is not built): the same consistent TPC-B-like run and
    connection-per-transaction run on both."""
    monkeypatch.setenv("PGMUX_STREAMS", streams)
    p = pg.primary
    mux = pgmux_factory(databases={bench_db: f"host={p.host} port={p.port} dbname={bench_db}"},
                        settings={"pool_mode": "transaction", "default_pool_size": POOL_SIZE})
    with psycopg.connect(mux.dsn(db=bench_db), autocommit=True, connect_timeout=10) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert _epoll_sets(mux.pid) == (2 if streams == "1" else 1)
    before = primary_scalar(pg, "SELECT count(*) FROM pgbench_history")
    s = summary(pgbench(mux, "-M", "extended", "-c", "10", "-j", "2", "-t", "100", "-n"))
    assert s["failed"] == 0 and s["processed"] == 1000, s
    history, delta = primary_scalar(pg, "SELECT count(*), coalesce(sum(delta), 0) FROM pgbench_history")
    assert history - before == 1000
    assert primary_scalar(pg, "SELECT (SELECT sum(abalance) FROM pgbench_accounts), "
                              "(SELECT sum(bbalance) FROM pgbench_branches), "
                              "(SELECT sum(tbalance) FROM pgbench_tellers)") == (delta, delta, delta)
    s = summary(pgbench(mux, "-S", "-C", "-c", "4", "-j", "2", "-t", "50", "-n"))
    assert s["failed"] == 0 and s["processed"] == 200, s
    assert server_count(mux) <= POOL_SIZE
