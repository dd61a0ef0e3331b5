"""Health checks of a read/write-split database with workers = 2 (and 3): one checker for the whole pooler,
its verdicts followed by every worker (issue 14 item 4; runtime/health_monitor.py, runtime/health_share.py).

A module cluster: a primary and one streaming replica. Each test puts back what it stopped or paused; the
failover test runs last and leaves the replica promoted.

Every worker's own view is read on an admin console connected to that worker (the others stopped with
SIGSTOP while it connects, as in test_workers.py): SHOW HOSTS is the worker's own, after a NOTICE naming
its pid, which the helper checks. Reads are placed the same way: a client connected to a given worker, and
`inet_server_port()` says which host served it.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from helpers import guard, wait_for
from test_workers import connect_on, only_on, stop_outside_the_lock, worker_pids

from pgmux.routing.verdicts import stale_after
from pgmux.testing.cluster import HOST, PgCluster, quote_literal

DB = "app"
PERIOD, TIMEOUT = 0.2, 1.0
BOUND = stale_after(PERIOD, TIMEOUT)  # 1.6 s: the longest a follower trusts a verdict
# A verdict change reaches every worker within a period (the next check) + a check + a tick (the read):
# well under BOUND. The waits below allow more, for a loaded 2-core machine.
REACH = 10.0
CHECKER = re.compile(r"\[(\d+)\] LOG health checks of app: worker (\d+) \(pid \d+\) checks the hosts now")


@pytest.fixture(scope="module")
def cluster() -> Iterator[PgCluster]:
    with PgCluster(replicas=1) as c:
        c.primary.psql(f"CREATE DATABASE {DB}")
        c.primary.psql("CREATE TABLE ryw (client int, i int, PRIMARY KEY (client, i)); "
                       "CREATE TABLE marks (id serial PRIMARY KEY, at text)", db=DB)
        c.wait_for_replay()
        yield c


def split_line(c: PgCluster, **extra: str) -> str:
    nodes = c.nodes
    keys = {"pgmux_read_write_split": "1", **extra}
    # A forced user: every worker's checks start with the worker, before any client.
    return (f"host={','.join(n.host for n in nodes)} port={','.join(str(n.port) for n in nodes)} dbname={DB} "
            f"pgmux_roles={','.join('primary' if n.role == 'primary' else 'replica' for n in nodes)} user=postgres "
            + " ".join(f"{k}={v}" for k, v in keys.items()))


def start(factory: Any, c: PgCluster, workers: int = 2, extra: dict[str, str] | None = None, **settings: Any) -> Any:
    merged = {"workers": workers, "pool_mode": "transaction", "default_pool_size": 10,
              "health_check_period": PERIOD, "health_check_timeout": TIMEOUT, "ban_time": 30,
              "failover_wait_timeout": 10, **settings}
    proc = factory(databases={DB: split_line(c, **(extra or {}))}, settings=merged)
    wait_for(lambda: len(worker_pids(proc)) == workers, f"{workers} workers", 30)
    return proc


def console_on(proc: Any, index: int) -> psycopg.Connection[Any]:
    """An admin console on worker `index` (checked: the NOTICE of a worker's own SHOW names its pid)."""
    with only_on(proc, index):
        conn = psycopg.connect(host=proc.host, port=proc.port, dbname="pgbouncer", user="postgres", autocommit=True,
                               connect_timeout=10, cursor_factory=psycopg.ClientCursor)
    pid = worker_pids(proc)[index]
    notes: list[str] = []
    conn.add_notice_handler(lambda d: notes.append(d.message_primary or ""))
    conn.execute("SHOW HOSTS")
    assert any(f"(pid {pid})" in n for n in notes), (index, pid, notes)
    return conn


def view(console: psycopg.Connection[Any], port: int) -> dict[str, Any]:
    """One host's SHOW HOSTS row as the console's worker sees it."""
    cur = console.execute("SHOW HOSTS")
    names = [d.name for d in cur.description or []]
    rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    found = [r for r in rows if r["database"] == DB and int(r["port"]) == port]
    assert len(found) == 1, rows
    return found[0]


def everywhere(consoles: list[psycopg.Connection[Any]], port: int, ok: Any, what: str,
               timeout: float = REACH) -> float:
    """Wait until every worker's view of host `port` satisfies `ok`; the seconds it took."""
    t0 = time.monotonic()
    wait_for(lambda: all(ok(view(c, port)) for c in consoles), what, timeout)
    return time.monotonic() - t0


def served_by(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT inet_server_port()").fetchone()
    assert row is not None
    return int(row[0])


def checkers(proc: Any) -> list[tuple[int, int]]:
    """(pid, worker index) of each worker that became the checker, in order."""
    return [(int(m.group(1)), int(m.group(2))) for m in CHECKER.finditer(proc.log())]


def check_connections(node: Any) -> int:
    return int(node.psql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgmux health check'"))


def check_queries(nodes: list[Any], window: float) -> list[tuple[int, int]]:
    """Per node, (check connections seen, check queries seen) over `window` seconds: pg_stat_activity
    polled every 20 ms, each distinct (pid, query_start) of a 'pgmux health check' backend one query."""
    conns = [psycopg.connect(host=n.host, port=n.port, dbname="postgres", user="postgres", autocommit=True,
                             connect_timeout=10) for n in nodes]
    seen: list[set[tuple[int, Any]]] = [set() for _ in nodes]
    try:
        deadline = time.monotonic() + window
        while time.monotonic() < deadline:
            for conn, found in zip(conns, seen, strict=True):
                found.update(conn.execute("SELECT pid, query_start FROM pg_stat_activity "
                                          "WHERE application_name = 'pgmux health check'").fetchall())
            time.sleep(0.02)
    finally:
        for conn in conns:
            conn.close()
    return [(len({pid for pid, _ in found}), len(found)) for found in seen]


# -- once per host -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("workers", [2, 3])
def test_each_host_is_checked_once_for_the_whole_pooler(cluster: PgCluster, pgmux_factory: Any,
                                                        workers: int) -> None:
    proc = start(pgmux_factory, cluster, workers)
    consoles = [console_on(proc, i) for i in range(workers)]
    try:
        # Every worker knows the roles and the replay positions, from the one worker's checks.
        for node in cluster.nodes:
            everywhere(consoles, node.port, lambda r, n=node: r["role"] == n.role and r["state"] == "up"
                       and r["replay_lsn"] is not None, f"{node.name} known to every worker")
        # One check connection per host (each worker of its own kept one: `workers` of them), ...
        wait_for(lambda: [check_connections(n) for n in cluster.nodes] == [1, 1], "one check connection per host", 5)
        # ... and one process's rate of check queries: one per PERIOD per host, not `workers` of them.
        window = 4.0
        seen = check_queries(cluster.nodes, window)
        one_process = window / PERIOD  # 20
        print(f"workers={workers}: (check connections, check queries) in {window:g}s per host: {seen} "
              f"(one process: 1, <= {one_process:g})")
        assert all(conns == 1 and 5 <= queries <= one_process + 2 for conns, queries in seen), seen
        assert len(checkers(proc)) == 1, checkers(proc)
        assert "checks it itself" not in proc.log()
        assert "health checks of read/write-split databases run in every worker" not in proc.log()
    finally:
        for c in consoles:
            c.close()


# -- verdicts reach every worker --------------------------------------------------------------------------------

def test_a_lagging_replica_is_left_by_every_worker(cluster: PgCluster, pgmux_factory: Any) -> None:
    """Lag is seen only by the checks (no client's traffic tells it), so a worker that is not the checker
    leaves the replica only through the published verdict."""
    replica = cluster.replicas[0]
    proc = start(pgmux_factory, cluster, extra={"pgmux_max_lag_bytes": "100000"})
    consoles = [console_on(proc, i) for i in range(2)]
    clients = [connect_on(proc, i, db=DB) for i in range(2)]
    with guard(proc):
        everywhere(consoles, replica.port, lambda r: r["state"] == "up", "the replica up everywhere")
        assert {served_by(c) for c in clients for _ in range(5)} == {replica.port}  # reads on the replica
        replica.psql("SELECT pg_wal_replay_pause()")
        try:
            cluster.primary.psql("INSERT INTO marks (at) SELECT 'lag' FROM generate_series(1, 20000)", db=DB)
            took = everywhere(consoles, replica.port, lambda r: r["state"] == "lagging",
                              "every worker to see the replica lagging")
            print(f"lagging in every worker after {took:.2f}s")
            for c in clients:
                assert {served_by(c) for _ in range(5)} == {cluster.primary.port}
        finally:
            replica.psql("SELECT pg_wal_replay_resume()")
        everywhere(consoles, replica.port, lambda r: r["state"] == "up", "the replica up again everywhere")
        for c in clients:
            wait_for(lambda c=c: served_by(c) == replica.port, "reads back on the replica", REACH)
    proc.wait_log("[checked by worker")  # a follower adopted it, and said so
    assert len(checkers(proc)) == 1
    for c in [*consoles, *clients]:
        c.close()


def test_a_stopped_replica_is_left_by_every_worker_and_comes_back(cluster: PgCluster, pgmux_factory: Any) -> None:
    replica = cluster.replicas[0]
    proc = start(pgmux_factory, cluster, ban_time=2)
    consoles = [console_on(proc, i) for i in range(2)]
    clients = [connect_on(proc, i, db=DB) for i in range(2)]
    with guard(proc):
        everywhere(consoles, replica.port, lambda r: r["state"] == "up", "the replica up everywhere")
        replica.stop("fast")
        try:
            t0 = time.monotonic()
            everywhere(consoles, replica.port, lambda r: r["state"] in ("banned", "down"),
                       "every worker to leave the stopped replica")
            print(f"stopped replica left by every worker after {time.monotonic() - t0:.2f}s")
            for c in clients:  # (a read that met the replica's shutdown may fail once: its transaction in flight)
                wait_for(lambda c=c: _read_on(c) == cluster.primary.port, "reads on the primary", REACH)
                assert {served_by(c) for _ in range(5)} == {cluster.primary.port}
        finally:
            replica.start()
        everywhere(consoles, replica.port, lambda r: r["state"] == "up", "the replica back everywhere", 30)
        for c in clients:
            wait_for(lambda c=c: served_by(c) == replica.port, "reads back on the replica", REACH)
    for c in [*consoles, *clients]:
        c.close()


def _read_on(conn: psycopg.Connection[Any]) -> int | None:
    try:
        return served_by(conn)
    except psycopg.OperationalError:
        return None


def test_console_ban_and_unban_hold_in_every_worker(cluster: PgCluster, pgmux_factory: Any) -> None:
    replica = cluster.replicas[0]
    proc = start(pgmux_factory, cluster)
    consoles = [console_on(proc, i) for i in range(2)]
    clients = [connect_on(proc, i, db=DB) for i in range(2)]
    target = f"{replica.host}:{replica.port}"
    with guard(proc):
        everywhere(consoles, replica.port, lambda r: r["state"] == "up", "the replica up everywhere")
        proc.admin(f"BAN {DB} {target}")
        everywhere(consoles, replica.port, lambda r: r["state"] == "banned", "banned everywhere", 2)
        # The checker's verdicts (it checks the banned host on) undo it nowhere.
        deadline = time.monotonic() + 3 * BOUND
        while time.monotonic() < deadline:
            assert [view(c, replica.port)["state"] for c in consoles] == ["banned", "banned"]
            for c in clients:
                assert served_by(c) == cluster.primary.port
        proc.admin(f"UNBAN {DB} {target}")
        everywhere(consoles, replica.port, lambda r: r["state"] == "up", "unbanned everywhere", 2)
        deadline = time.monotonic() + 3 * BOUND  # and no old verdict bans it again
        while time.monotonic() < deadline:
            assert [view(c, replica.port)["state"] for c in consoles] == ["up", "up"]
            time.sleep(0.1)
        for c in clients:
            assert served_by(c) == replica.port
    for c in [*consoles, *clients]:
        c.close()


def test_read_your_writes_on_every_worker(cluster: PgCluster, pgmux_factory: Any) -> None:
    """The replay positions travel with the verdicts: a worker that does not check still sends a client's
    reads after its write only where the write is, and to the replica once it has replayed it."""
    replica = cluster.replicas[0]
    proc = start(pgmux_factory, cluster, extra={"pgmux_read_your_writes": "1"})
    consoles = [console_on(proc, i) for i in range(2)]
    clients = [connect_on(proc, i, db=DB) for i in range(2)]
    with guard(proc):
        everywhere(consoles, replica.port, lambda r: r["state"] == "up" and r["replay_lsn"], "positions everywhere")
        replica.psql("SELECT pg_wal_replay_pause()")
        try:
            for k, c in enumerate(clients):
                for i in range(50):
                    c.execute("INSERT INTO ryw (client, i) VALUES (%s, %s)", (k, i))
                    assert c.execute("SELECT count(*) FROM ryw WHERE client = %s AND i = %s",
                                     (k, i)).fetchone() == (1,), (k, i)
                assert served_by(c) == cluster.primary.port  # the replica has not replayed the writes
        finally:
            replica.psql("SELECT pg_wal_replay_resume()")
        for c in clients:  # replayed, a later verdict shows it: reads go back to the replica
            wait_for(lambda c=c: served_by(c) == replica.port, "reads on the replica after replay", REACH)
    for c in [*consoles, *clients]:
        c.close()


# -- the checker goes away -------------------------------------------------------------------------------------

def test_a_killed_checker_is_replaced_and_verdicts_still_reach_every_worker(cluster: PgCluster,
                                                                          pgmux_factory: Any) -> None:
    replica = cluster.replicas[0]
    proc = start(pgmux_factory, cluster, extra={"pgmux_max_lag_bytes": "100000"})
    first = wait_for(lambda: checkers(proc), "a checker", 10)[0]
    victim, index = first
    os.kill(victim, signal.SIGKILL)
    t0 = time.monotonic()
    new = wait_for(lambda: [c for c in checkers(proc) if c[0] != victim], "another worker to take over", 10)[0]
    print(f"checker pid {victim} (worker {index}) killed; pid {new[0]} (worker {new[1]}) took over "
          f"after {time.monotonic() - t0:.2f}s")
    proc.wait_log(f"(after worker {index}, pid {victim})")
    wait_for(lambda: len(worker_pids(proc)) == 2 and victim not in worker_pids(proc).values(), "the restart", 15)
    consoles = [console_on(proc, i) for i in range(2)]  # the restarted worker's too
    with guard(proc):
        everywhere(consoles, replica.port, lambda r: r["state"] == "up" and r["role"] == "replica",
                   "the replica known to both workers")
        wait_for(lambda: [check_connections(n) for n in cluster.nodes] == [1, 1], "one check connection per host",
                 REACH)
        replica.psql("SELECT pg_wal_replay_pause()")
        try:
            cluster.primary.psql("INSERT INTO marks (at) SELECT 'lag2' FROM generate_series(1, 20000)", db=DB)
            everywhere(consoles, replica.port, lambda r: r["state"] == "lagging", "lagging in both workers")
        finally:
            replica.psql("SELECT pg_wal_replay_resume()")
        everywhere(consoles, replica.port, lambda r: r["state"] == "up", "up again in both workers")
    assert len(checkers(proc)) == 2, checkers(proc)  # one takeover, no back and forth
    for c in consoles:
        c.close()


def test_a_stuck_checker_makes_the_others_check_themselves_until_it_is_back(cluster: PgCluster,
                                                                           pgmux_factory: Any) -> None:
    replica = cluster.replicas[0]
    proc = start(pgmux_factory, cluster, extra={"pgmux_max_lag_bytes": "100000"})
    pid, index = wait_for(lambda: checkers(proc), "a checker", 10)[0]
    other = 1 - index
    console = console_on(proc, other)
    with guard(proc):
        everywhere([console], replica.port, lambda r: r["state"] == "up", "the replica up")
        stop_outside_the_lock(pid)  # alive, holding the checker's lock, checking nothing
        try:
            wait_for(lambda: "this worker checks it itself" in proc.log(), "the follower to check itself",
                     2 * BOUND + 5)
            replica.psql("SELECT pg_wal_replay_pause()")
            try:
                cluster.primary.psql("INSERT INTO marks (at) SELECT 'lag3' FROM generate_series(1, 20000)", db=DB)
                everywhere([console], replica.port, lambda r: r["state"] == "lagging", "lag seen by the follower")
            finally:
                replica.psql("SELECT pg_wal_replay_resume()")
            everywhere([console], replica.port, lambda r: r["state"] == "up", "up again")
        finally:
            os.kill(pid, signal.SIGCONT)
        wait_for(lambda: "following the checking worker's verdicts again" in proc.log(), "verdicts followed again",
                 REACH)
        wait_for(lambda: [check_connections(n) for n in cluster.nodes] == [1, 1], "one check connection per host",
                 REACH)
    assert checkers(proc) == [(pid, index)]  # the stopped checker kept its lock: no second checker
    console.close()


def test_a_failure_on_a_followers_traffic_has_the_checker_check_at_once(cluster: PgCluster,
                                                                       pgmux_factory: Any) -> None:
    """A worker that is not the checker sees its server on the replica die: it asks the checker for a
    check now (the kick file), and the checker's verdict comes long before the next period's."""
    replica = cluster.replicas[0]
    period = 30.0  # the first round at start-up, the next one 30 s later: none in this test's window
    proc = start(pgmux_factory, cluster, health_check_period=period)
    pid, index = wait_for(lambda: checkers(proc), "a checker", 10)[0]
    follower = 1 - index
    consoles = [console_on(proc, index), console_on(proc, follower)]
    client = connect_on(proc, follower, db=DB)
    with guard(proc):
        everywhere(consoles, replica.port, lambda r: r["state"] == "up" and r["replay_lsn"], "the first checks")
        assert served_by(client) == replica.port  # the follower now holds a server on the replica
        assert "banned" not in proc.log()
        replica.stop("fast")
        try:
            t0 = time.monotonic()
            # The checker has no server on the replica, so no traffic of its own tells it.
            wait_for(lambda: view(consoles[0], replica.port)["state"] in ("banned", "down"),
                     "the checker to check the replica at once", 5)
            took = time.monotonic() - t0
            print(f"checker's verdict {took:.2f}s after the replica stopped (period {period:g}s)")
            row = view(consoles[0], replica.port)
            assert "health check failed" in row["reason"] or row["state"] == "down", row
            wait_for(lambda: re.search(rf"\[{pid}\] LOG health [^ ]+:{replica.port}: replica/up -> replica/banned",
                                       proc.log()), "the checker's log line (written in batches)", 10)
            everywhere(consoles[1:], replica.port, lambda r: r["state"] == "banned", "the follower banned too", 5)
            wait_for(lambda: _read_on(client) == cluster.primary.port, "the follower's reads on the primary", REACH)
        finally:
            replica.start()
    for c in [*consoles, client]:
        c.close()


# -- failover (last: it promotes the replica) ----------------------------------------------------------------------

def test_every_worker_follows_a_promotion(cluster: PgCluster, pgmux_factory: Any) -> None:
    old, new = cluster.primary, cluster.replicas[0]
    proc = start(pgmux_factory, cluster, failover_wait_timeout=20)
    consoles = [console_on(proc, i) for i in range(2)]
    writers = [connect_on(proc, i, db=DB) for i in range(2)]
    with guard(proc):
        everywhere(consoles, new.port, lambda r: r["state"] == "up", "the replica up everywhere")
        old.stop("fast")
        new.promote()
        promoted = time.monotonic()
        for w in writers:  # each worker's next write waits for a primary, then lands on the promoted one
            for _ in range(3):
                try:
                    w.execute("INSERT INTO marks (at) VALUES ('after')")
                    break
                except psycopg.OperationalError:  # its server on the old primary went with it: once
                    continue
            with w.transaction():
                assert served_by(w) == new.port
        print(f"both workers wrote to the promoted replica {time.monotonic() - promoted:.2f}s after promotion")
        everywhere(consoles, new.port, lambda r: r["role"] == "primary", "the promoted replica primary everywhere")
        # The old primary back in recovery: a replica for every worker.
        cluster.write_owned(f"{old.datadir}/standby.signal", "")
        with open(f"{old.datadir}/postgresql.auto.conf", "a") as f:
            f.write(f"primary_conninfo = {quote_literal(f'host={HOST} port={new.port} user=postgres')}\n")
        old.start()
        old.role = "replica"
        everywhere(consoles, old.port, lambda r: r["role"] == "replica" and r["state"] == "up",
                   "the old primary a replica everywhere", 30)
    for c in [*consoles, *writers]:
        c.close()
