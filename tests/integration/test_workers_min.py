"""min_pool_size with workers > 1 (issue 14 item 2): the pooler keeps the minimum of each pool in total,
not once per worker, never above the pool's limit, without server login churn at rest, and after a
worker's death (runtime/minshare.py, runtime/minpools.py). Real PostgreSQL, real pgmux processes; the
servers are counted in pg_stat_activity."""

from __future__ import annotations

import os
import re
import signal
import time
from typing import Any

import psycopg
import pytest
from helpers import wait_for
from test_rolling_restart import children, replaced
from test_workers import CONNECT, Load, _server_count, cg, connect_on, peak_servers, start, worker_pids


def _logins(proc: Any) -> int:
    return len(re.findall(r"new connection to server", proc.log()))


def _samples(proc: Any, seconds: float) -> list[int]:
    out = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        out.append(_server_count(proc))
        time.sleep(0.1)
    return out


def _held_by(proc: Any) -> dict[int, int]:
    """Worker index -> its TCP connections to PostgreSQL."""
    pids = worker_pids(proc)
    owned = cg.count_owned(cg.tcp_sockets(), {pid: cg.socket_inodes(pid) for pid in pids.values()},
                           lambda s: s.state == 1 and s.remote_port == proc.pg_port)
    return {i: owned[pid] for i, pid in pids.items()}


def _first_login(proc: Any) -> None:
    with psycopg.connect(proc.dsn(), **CONNECT) as c:
        assert c.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.parametrize(("workers", "per_database"), [(2, False), (3, False), (3, True)])
def test_the_minimum_holds_in_total_at_rest(pgmux_factory: Any, pg: Any, workers: int, per_database: bool) -> None:
    p = pg.primary
    if per_database:
        dbs = {db: f"host={p.host} port={p.port} dbname={db}" for db in ("testdb", "postgres")}
        dbs["testdb"] += " min_pool_size=4"
        proc = start(pgmux_factory, workers, dbs, pool_mode="transaction", default_pool_size=10)
    else:
        proc = start(pgmux_factory, workers, pool_mode="transaction", default_pool_size=10, min_pool_size=4)
    proc.pg_port = p.port
    assert "refused" not in proc.log()
    _first_login(proc)  # the pool comes into being (as in one process: at a client's login)
    wait_for(lambda: _server_count(proc) == 4, "4 servers in pg_stat_activity", 20)
    seen = _samples(proc, 2.0)
    assert set(seen) == {4}, seen  # never 8 or 12
    logins = _logins(proc)
    assert logins >= 4
    seen = _samples(proc, 5.0)  # at rest: no server login churn
    assert set(seen) == {4}, seen
    assert _logins(proc) == logins, proc.log()[-3000:]


@pytest.mark.parametrize("both", [True, False])
def test_the_minimum_survives_a_killed_worker(pgmux_factory: Any, pg: Any, both: bool) -> None:
    """The worker holding the minimum's servers is killed: the other (with the pool from a client of its
    own, or adopting it from runtime/minpools.py) brings the total back, never above pool_size."""
    proc = start(pgmux_factory, 2, pool_mode="transaction", default_pool_size=6, min_pool_size=4)
    proc.pg_port = pg.primary.port
    clients = [connect_on(proc, 0)]
    if both:
        clients.append(connect_on(proc, 1))
    try:
        for c in clients:
            assert c.execute("SELECT 1").fetchone() == (1,)
        # (worker 1's first client needs a server of its own for its login's parameters: a fifth, as
        # demand, within pool_size; it stays idle, so the pooler holds 5 until server_idle_timeout)
        wait_for(lambda: _server_count(proc) == (5 if both else 4), "the minimum's servers", 20)
        seen = _samples(proc, 1.5)  # (the pool's record for runtime/minpools.py is written meanwhile)
        assert len(set(seen)) == 1, seen
        held = _held_by(proc)
        victim = max(held, key=lambda i: held[i])
        assert held[victim] >= 1, held
        pid = worker_pids(proc)[victim]
        os.kill(pid, signal.SIGKILL)
        t0 = time.monotonic()
        peak = 0
        while time.monotonic() - t0 < 20:
            n = _server_count(proc)
            peak = max(peak, n)
            if n == 4 and worker_pids(proc).get(victim) not in (None, pid):
                break
            time.sleep(0.05)
        assert _server_count(proc) == 4, proc.log()[-3000:]
        assert time.monotonic() - t0 < 10
        assert peak <= 6, peak
        seen = _samples(proc, 2.0)
        assert set(seen) == {4}, seen
        if not both:  # worker 1 never had a client of the pool: it adopted it
            assert "worker 1 adopts the pool testdb/postgres" in wait_for(proc.log, "log")
    finally:
        for c in clients:
            c.close()


def test_load_beyond_the_minimum_keeps_the_limit(pgmux_factory: Any, pg: Any) -> None:
    """8 clients over 2 workers need more than the minimum (2): at most pool_size (4) servers in total,
    and once idle past server_idle_timeout the pooler goes back to exactly the minimum."""
    proc = start(pgmux_factory, 2, pool_mode="transaction", default_pool_size=4, min_pool_size=2,
                 server_idle_timeout=1)
    proc.pg_port = pg.primary.port
    clients = [connect_on(proc, i % 2) for i in range(8)]
    try:
        with Load(clients, "SELECT pg_sleep(0.05)", count=30) as load:
            peak = peak_servers(proc, load.threads, 90)
        assert not load.errors, load.errors
        assert all(n == 30 for n in load.done), load.done
        assert 3 <= peak <= 4, peak  # more than the minimum was needed; the pool limit held pooler-wide
    finally:
        for c in clients:
            c.close()
    wait_for(lambda: _server_count(proc) == 2, "back to the minimum (2) after server_idle_timeout", 20)
    seen = _samples(proc, 3.0)
    assert min(seen) >= 2 and max(seen) <= 2, seen


def test_the_minimum_and_the_rebalance_agree(pgmux_factory: Any, pg: Any) -> None:
    """pool_size = min_pool_size = 4, clients on both workers taking turns: servers move to the worker
    whose clients wait (the rebalance), the pooler never holds more than 4, and once the clients rest
    nobody gives servers away and opens them again (no server login in 5 s)."""
    proc = start(pgmux_factory, 2, pool_mode="transaction", default_pool_size=4, min_pool_size=4)
    proc.pg_port = pg.primary.port
    clients = [connect_on(proc, i % 2) for i in range(6)]
    try:
        with Load(clients, "SELECT pg_sleep(0.02)", count=10) as load:
            peak = peak_servers(proc, load.threads, 60)
        assert not load.errors, load.errors
        assert peak <= 4, peak
        wait_for(lambda: _server_count(proc) == 4, "the minimum", 20)
        seen = _samples(proc, 2.0)  # settled (a server handed over a moment ago reopens meanwhile)
        logins = _logins(proc)
        seen += _samples(proc, 5.0)
        assert set(seen[-40:]) == {4}, seen
        assert _logins(proc) == logins, proc.log()[-3000:]
    finally:
        for c in clients:
            c.close()


def test_the_minimum_after_a_rolling_restart(pgmux_factory: Any, pg: Any) -> None:
    """SIGWINCH replaces both workers (no client left to hand over): the new processes bring the minimum
    back (adopting the pool: runtime/minpools.py), never above pool_size, and rest there."""
    proc = start(pgmux_factory, 2, pool_mode="transaction", default_pool_size=6, min_pool_size=4)
    proc.pg_port = pg.primary.port
    _first_login(proc)
    wait_for(lambda: _server_count(proc) == 4, "4 servers", 20)
    _samples(proc, 1.5)  # (the pool's record written meanwhile)
    before = children(proc)
    proc.signal(signal.SIGWINCH)
    peak = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not replaced(proc, before, 2):
        peak = max(peak, _server_count(proc))
        time.sleep(0.05)
    assert replaced(proc, before, 2), proc.log()[-3000:]
    wait_for(lambda: _server_count(proc) == 4, "the minimum back in the new workers", 20)
    seen = _samples(proc, 3.0)
    assert set(seen) == {4} and peak <= 6, (seen, peak)
    proc.wait_log("adopts the pool testdb/postgres")


def test_a_lowered_pool_size_shrinks_the_pooler(pgmux_factory: Any, pg: Any) -> None:
    """pool_size lowered while both workers hold their share of the old one (SET, as RELOAD or pool_size =
    auto would): each worker gives up what it holds beyond its share of the new limit, so the pooler comes
    down to it under load, not only as servers age out (each worker alone was within the new limit)."""
    proc = start(pgmux_factory, 2, pool_mode="transaction", default_pool_size=8)
    proc.pg_port = pg.primary.port
    clients = [connect_on(proc, i % 2) for i in range(12)]
    try:
        with Load(clients, "SELECT pg_sleep(0.02)") as load:
            wait_for(lambda: _server_count(proc) == 8, "the pool full: 8 servers over both workers", 20)
            with psycopg.connect(proc.dsn(db="pgbouncer"), **CONNECT) as admin:
                admin.execute("SET default_pool_size = 3")
            wait_for(lambda: _server_count(proc) <= 3, "down to the new pool_size (3) under load", 10)
            seen = _samples(proc, 2.0)
            assert max(seen) <= 3, seen
        assert not load.errors, load.errors
    finally:
        for c in clients:
            c.close()
