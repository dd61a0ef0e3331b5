"""A rolling restart (issue 14 item 5): RESTART on the console (or SIGWINCH to the supervisor) replaces
the worker processes one at a time, and clients between transactions in transaction mode move to the new
processes without reconnecting (runtime/rolling.py, runtime/retire.py, runtime/handover.py)."""

from __future__ import annotations

import re
import signal
import subprocess
import threading
import time
from typing import Any

import psycopg
import pytest
from helpers import wait_for
from test_pgbench import bench_db, primary_scalar, summary  # noqa: F401 - bench_db: the fixture
from test_workers import start

CONNECT: dict[str, Any] = {"connect_timeout": 10, "autocommit": True}


def children(proc: Any) -> set[int]:
    """The supervisor's child processes now (its workers, old and new)."""
    try:
        with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
            return {int(x) for x in f.read().split()}
    except OSError:
        return set()


def replaced(proc: Any, before: set[int], workers: int) -> bool:
    now = children(proc)
    return len(now) == workers and not (now & before) and "every worker has been replaced" in proc.log()


def lines(proc: Any, pattern: str) -> str:
    """The log lines that match (a failure's message without the login lines)."""
    return "\n".join(line for line in proc.log().splitlines() if re.search(pattern, line))[-4000:]


def restart(proc: Any) -> None:
    out = subprocess.run(["psql", "-X", "-h", proc.host, "-p", str(proc.port), "-U", "postgres", "-d", "pgbouncer",
                          "-c", "RESTART"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "RESTART" in out.stdout, out.stdout + out.stderr


def test_restart_moves_idle_clients_with_their_session_state(pgmux_factory: Any) -> None:
    """Clients with SET values, protocol-level and SQL prepared statements go on, on the same connection,
    in the new processes; a session-mode client's worker waits for it; a cancel of a moved client works."""
    proc = start(pgmux_factory, workers=2, pool_mode="transaction", max_prepared_statements=100,
                 default_pool_size=4)
    before = children(proc)
    assert len(before) == 2
    conns = []
    for i in range(6):
        conn = psycopg.connect(proc.dsn(), **CONNECT)
        conn.execute(f"SET application_name = 'moved{i}'")
        conn.execute("PREPARE sq(int) AS SELECT $1 * 2")
        conn.execute("SELECT %s::int + 1", (i,), prepare=True)  # a protocol-level prepared statement
        conns.append(conn)
    restart(proc)
    wait_for(lambda: replaced(proc, before, 2), "both workers replaced", 60)
    for i, conn in enumerate(conns):
        assert conn.execute("SHOW application_name").fetchone() == (f"moved{i}",)
        assert conn.execute("EXECUTE sq(21)").fetchone() == (42,)
        assert conn.execute("SELECT %s::int + 1", (i,), prepare=True).fetchone() == (i + 1,)
    # a cancel of a moved client reaches its new worker
    victim = conns[0]
    timer = threading.Timer(1.0, victim.cancel)
    timer.start()
    t0 = time.monotonic()
    with pytest.raises(psycopg.errors.QueryCanceled):
        victim.execute("SELECT pg_sleep(20)")
    timer.join()
    assert time.monotonic() - t0 < 15
    assert victim.execute("SELECT 1").fetchone() == (1,)
    clients = [r for r in proc.admin_dicts("SHOW CLIENTS") if r["database"] == "testdb"]
    assert len(clients) == 6, clients
    assert {int(r["worker"]) for r in clients} == {2, 3}  # the new processes, at the slots' other rows
    for conn in conns:
        conn.close()
    assert re.search(r"worker \d \(pid \d+\): no client left \(\d+ handed over\), exiting", proc.log())


@pytest.mark.parametrize("protocol", ["simple", "prepared"])
def test_rolling_restart_under_pgbench(pgmux_factory: Any, pg: Any, bench_db: str, protocol: str) -> None:  # noqa: F811
    """pgbench -c 50 in transaction mode while every worker is replaced: no failed transaction, no client
    disconnected (pgbench exits 0 only if no client aborted), balances consistent, and afterwards every
    worker is a new process."""
    from test_pgbench import pgbench

    p = pg.primary
    proc = start(pgmux_factory, workers=2, databases={bench_db: f"host={p.host} port={p.port} dbname={bench_db}"},
                 pool_mode="transaction", default_pool_size=8, max_client_conn=200)
    before_pids = children(proc)
    before = primary_scalar(pg, "SELECT count(*) FROM pgbench_history")
    out: list[str] = []
    runner = threading.Thread(target=lambda: out.append(
        pgbench(proc, "-M", protocol, "-c", "50", "-j", "2", "-T", "6", "-n", timeout=120)), daemon=True)
    runner.start()
    time.sleep(2)
    t0 = time.monotonic()
    proc.signal(signal.SIGWINCH)  # the supervisor's rolling restart, as the console's RESTART asks for it
    wait_for(lambda: replaced(proc, before_pids, 2), "both workers replaced", 60)
    print(f"both workers replaced in {time.monotonic() - t0:.1f}s")
    assert runner.is_alive(), "pgbench ended before the restart did: the restart was not under load"
    runner.join(120)
    assert out, "pgbench did not finish (its failure is in the test's output above)"
    s = summary(out[0])
    assert s["failed"] == 0 and s["processed"] > 0, s
    assert "aborted" not in out[0]
    history, delta = primary_scalar(pg, "SELECT count(*), coalesce(sum(delta), 0) FROM pgbench_history")
    assert history - before == s["processed"]
    assert primary_scalar(pg, "SELECT (SELECT sum(abalance) FROM pgbench_accounts), (SELECT sum(bbalance) FROM "
                              "pgbench_branches), (SELECT sum(tbalance) FROM pgbench_tellers)") == (delta,) * 3
    moved = sum(int(n) for n in re.findall(r"no client left \((\d+) handed over\)", proc.log()))
    assert moved >= 50, lines(proc, "supervisor|worker|aborted|pgbench|rror")  # every pgbench client moved


def test_restart_refused_with_one_process(pgmux_factory: Any) -> None:
    proc = pgmux_factory(settings={})
    with pytest.raises(psycopg.errors.FeatureNotSupported, match="workers = 1"):
        proc.admin("RESTART")


def test_new_connections_never_refused_during_a_restart(pgmux_factory: Any) -> None:
    """Connections opened one after the other all through a restart are all served (the port never
    closes: the old process stops accepting only once its replacement accepts), and the processes after
    it are new, each started from the configuration file as it is now."""
    proc = start(pgmux_factory, workers=2, pool_mode="transaction")
    before = children(proc)
    proc.rewrite(settings={"server_lifetime": 1234})  # a worker started now reads it
    proc.signal(signal.SIGWINCH)
    served = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not replaced(proc, before, 2):
        with psycopg.connect(proc.dsn(), **CONNECT) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        served += 1
    assert replaced(proc, before, 2), lines(proc, "supervisor|worker|error|ERROR|WARNING")
    assert served > 0
    rows = {r["key"]: r["value"] for r in proc.admin_dicts("SHOW CONFIG")}
    assert rows["server_lifetime"] == "1234"
    # How the workers were started is said once, and is what they are: new interpreters where pgmux's OS
    # user can start Python (runtime/workerproc.py), else forks of the supervisor.
    execs = "workers are started as new interpreters" in proc.log()
    assert execs != ("workers are forked from the supervisor" in proc.log())
    for pid in children(proc):
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            assert (b"pgmux.runtime.workerstart" in f.read()) == execs


def test_supervisor_survives_sigstop_and_sigcont(pgmux_factory: Any) -> None:
    """A supervisor stopped and continued (a debugger, a job-control stop) serves on: its wait for
    signals returns an empty answer then, which is not a signal to act on."""
    proc = start(pgmux_factory, workers=2)
    before = children(proc)
    for _ in range(3):
        proc.signal(signal.SIGSTOP)
        time.sleep(0.3)
        proc.signal(signal.SIGCONT)
        time.sleep(0.5)
    assert proc.is_running(), lines(proc, "supervisor|Traceback|Error")
    assert children(proc) == before
    with psycopg.connect(proc.dsn(), **CONNECT) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
