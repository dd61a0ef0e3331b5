"""The pool advisor (SHOW ADVICE) and pool_size = auto against real PostgreSQL, with pgbench as the load.

Two loads that look alike from the pool's side (clients wait, servers all busy) and differ in the one
thing that matters: in one each transaction just sleeps 5 ms, so more servers would serve more clients
(the pool is too small); in the other each transaction also takes one advisory lock, so they run one
at a time however many servers there are (PostgreSQL is the bottleneck). Each runs first with 2
clients, then with 20 clients on a pool of 10: the advisor sees the hold time stay flat in the first
and grow with concurrency in the second.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import PgmuxProc, PgmuxStarter
from pgmux.testing.cluster import PgCluster

DB = "testdb"
SLEEP = "SELECT pg_sleep(0.005);\n"
LOCKED = "BEGIN;\nSELECT pg_advisory_xact_lock(15);\nSELECT pg_sleep(0.005);\nCOMMIT;\n"


def start_pgbench(mux: PgmuxProc, script: Path, clients: int, seconds: int) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGCONNECT_TIMEOUT"] = "10"
    return subprocess.Popen(["pgbench", "-n", "-h", mux.host, "-p", str(mux.port), "-U", "postgres", "-c",
                             str(clients), "-j", "2", "-T", str(seconds), "-f", str(script), DB],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def finish(proc: subprocess.Popen[str]) -> str:
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-3000:]
    return out


def stop(proc: subprocess.Popen[str]) -> str:
    """pgbench ended early, once the test has seen what it waited for (its -T is the upper bound): no
    client failed until then (pgbench reports a failed client on its output at once)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode in (0, -signal.SIGTERM) and "error" not in out.lower(), (proc.returncode, out[-3000:])
    return out


def advice(mux: PgmuxProc) -> dict[str, dict[str, Any]]:
    return {f"{r['database']}/{r['user']}": r for r in mux.admin_dicts("SHOW ADVICE")}


def watch(mux: PgmuxProc, proc: subprocess.Popen[str], until: Any, limit: float) -> dict[str, Any] | None:
    """Poll SHOW ADVICE while pgbench runs; the first row of the pool that `until` accepts, else the last."""
    deadline = time.monotonic() + limit
    last = None
    while proc.poll() is None and time.monotonic() < deadline:
        row = advice(mux).get(f"{DB}/postgres")
        if row is not None and row["verdict"] != "idle":
            last = row
            if until(row):
                return row
        time.sleep(0.5)
    return last


@pytest.fixture
def mux(pgmux_factory: PgmuxStarter, pg: PgCluster) -> PgmuxProc:
    p = pg.primary
    return pgmux_factory(databases={DB: f"host={p.host} port={p.port} dbname={DB}"},
                         settings={"pool_mode": "transaction", "default_pool_size": 10, "max_client_conn": 200})


def two_phases(mux: PgmuxProc, tmp_path: Path, script: str, verdict: str) -> dict[str, Any] | None:
    path = tmp_path / "load.sql"
    path.write_text(script)
    finish(start_pgbench(mux, path, 2, 6))
    proc = start_pgbench(mux, path, 20, 25)
    try:
        # the figures average over the last 5 s: wait until they are all of the 20 clients' phase
        return watch(mux, proc, lambda r: r["verdict"] == verdict and r["elasticity"] is not None
                     and float(r["clients"]) >= 19 and float(r["busy"]) >= 8, 25)
    finally:
        stop(proc)


def test_too_small_pool_is_told_so(mux: PgmuxProc, tmp_path: Path) -> None:
    row = two_phases(mux, tmp_path, SLEEP, "too small")
    assert row is not None and row["verdict"] == "too small", row
    assert int(row["pool_size"]) == 10 and row["auto"] == "no"
    assert 15 <= int(row["needed"]) <= 20, row  # 20 clients that each want a server nearly all the time
    assert f"too small, needs {row['needed']}" in row["detail"]
    assert float(row["elasticity"]) < 0.5, row  # the hold time stayed flat from 2 to 10 servers busy
    assert float(row["hold_ms"]) < 40, row


def test_saturated_postgres_is_told_apart(mux: PgmuxProc, tmp_path: Path) -> None:
    row = two_phases(mux, tmp_path, LOCKED, "saturated")
    assert row is not None and row["verdict"] == "saturated", row
    assert float(row["elasticity"]) >= 0.6, row  # hold time grew with concurrency: one lock, one at a time
    assert int(row["needed"]) <= 4, row
    assert "PostgreSQL is saturated" in row["detail"]


def test_budget_names_its_source(mux: PgmuxProc, tmp_path: Path, pg: PgCluster) -> None:
    path = tmp_path / "load.sql"
    path.write_text(SLEEP)
    proc = start_pgbench(mux, path, 4, 15)
    try:
        deadline = time.monotonic() + 15
        budget = None
        while proc.poll() is None and time.monotonic() < deadline:
            budget = advice(mux).get(f"*/{pg.primary.host}:{pg.primary.port}")
            if budget is not None and "from server" in budget["detail"]:
                break
            time.sleep(0.5)
    finally:
        stop(proc)
    assert budget is not None and budget["verdict"] == "budget fits", budget
    with_pg = pg.primary.psql("SELECT current_setting('max_connections')::int"
                              " - current_setting('superuser_reserved_connections')::int").strip()
    assert f"max_connections {with_pg} usable, from server" in budget["detail"], budget


def test_pool_size_auto_grows_for_a_latency_bound_load(pgmux_factory: PgmuxStarter, pg: PgCluster,
                                                       tmp_path: Path) -> None:
    p = pg.primary
    mux = pgmux_factory(databases={DB: f"host={p.host} port={p.port} dbname={DB} pool_size=auto"},
                        settings={"pool_mode": "transaction", "max_client_conn": 200})
    path = tmp_path / "load.sql"
    path.write_text(SLEEP)
    proc = start_pgbench(mux, path, 40, 20)
    sizes = []
    try:
        deadline = time.monotonic() + 20
        while proc.poll() is None and time.monotonic() < deadline:
            pools = [r for r in mux.admin_dicts("SHOW POOLS") if r["database"] == DB]
            if pools:
                sizes.append(int(pools[0]["pool_size"]))
                if sizes[-1] >= 30:
                    break
            time.sleep(0.5)
        adv = advice(mux)[f"{DB}/postgres"]
        # a reload (here through SET) keeps the size chosen: it does not start over
        mux.admin("SET server_idle_timeout = 599")
        after = [int(r["pool_size"]) for r in mux.admin_dicts("SHOW POOLS") if r["database"] == DB]
    finally:
        stop(proc)
    assert after and after[0] >= 20, (sizes, after)
    assert sizes and sizes[0] < 30 <= max(sizes), sizes  # started at 8, grew towards the 40 clients
    assert max(sizes) <= 40, sizes  # never beyond what the clients ask for
    assert adv["auto"] == "yes"
    dbs = {r["name"]: r for r in mux.admin_dicts("SHOW DATABASES")}
    assert int(dbs[DB]["pool_size"]) >= 8  # the size in force, not a placeholder


def test_default_pool_size_auto_shows_in_config(pgmux_factory: PgmuxStarter) -> None:
    mux = pgmux_factory(settings={"pool_mode": "transaction", "default_pool_size": "auto"})
    config = {r["key"]: r for r in mux.admin_dicts("SHOW CONFIG")}
    assert config["default_pool_size"]["value"] == "auto"
    mux.admin("SET default_pool_size = 12")
    config = {r["key"]: r for r in mux.admin_dicts("SHOW CONFIG")}
    assert config["default_pool_size"]["value"] == "12"
    mux.admin("SET default_pool_size = auto")
    config = {r["key"]: r for r in mux.admin_dicts("SHOW CONFIG")}
    assert config["default_pool_size"]["value"] == "auto"


def test_pool_size_auto_with_workers_is_one_size_for_the_pooler(pgmux_factory: PgmuxStarter, pg: PgCluster,
                                                                tmp_path: Path) -> None:
    """workers = 2: one controller (the leader worker's, fed both workers' measurements) sizes the pool for
    the pooler, the other worker applies its size, and the servers in PostgreSQL stay within it
    (runtime/autoshare.py)."""
    from test_workers import _server_count, start

    p = pg.primary
    mux = start(pgmux_factory, 2, {DB: f"host={p.host} port={p.port} dbname={DB} pool_size=auto"},
                pool_mode="transaction", max_client_conn=200, verbose=1)
    mux.pg_port = p.port
    path = tmp_path / "load.sql"
    path.write_text(SLEEP)
    proc = start_pgbench(mux, path, 40, 12)
    samples: list[tuple[int, int]] = []  # (pool_size in force, servers in pg_stat_activity)
    try:
        deadline = time.monotonic() + 12
        while proc.poll() is None and time.monotonic() < deadline:
            dbs = {r["name"]: r for r in mux.admin_dicts("SHOW DATABASES")}
            samples.append((int(dbs[DB]["pool_size"]), _server_count(mux)))
            if samples[-1][0] >= 30 and len(samples) >= 6:
                break
            time.sleep(0.5)
    finally:
        stop(proc)
    sizes = [s for s, _ in samples]
    assert sizes and sizes[0] < 30 <= max(sizes) <= 40, samples  # grew towards the 40 clients, not beyond
    assert max(n for _, n in samples) <= 40, samples  # 40 clients in all: never a size per worker on top
    deciders = set(re.findall(r"\[(\d+)\] DEBUG pool testdb/postgres: pool_size = auto", mux.log()))
    assert len(deciders) == 1, deciders  # one controller for the pooler, in one worker
