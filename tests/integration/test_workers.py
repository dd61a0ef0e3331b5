"""workers = 2 (issue 14): one port served by two worker processes under a supervisor, a worker killed
and restarted, cancels that cross workers, max_client_conn and pool_size held for the pooler as a whole.

Which worker accepts a connection is the kernel's choice (one shared listening socket). Where a test
needs a connection on one given worker, it stops the other with SIGSTOP while it connects (a stopped
process accepts nothing, so the running one takes the connection) and continues it afterwards.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from helpers import wait_for
from test_pgbench import bench_db  # noqa: F401 - the fixture: a pgbench database of its own

BENCH = str(Path(__file__).resolve().parents[2] / "bench")
sys.path.insert(0, BENCH)  # only while importing: bench/'s module names (run, memory...) stay off the path
try:
    import cpugroups as cg  # /proc's TCP sockets and their owners
finally:
    sys.path.remove(BENCH)

CONNECT: dict[str, Any] = {"connect_timeout": 10, "autocommit": True}


def worker_pids(proc: Any) -> dict[int, int]:
    """Worker index -> pid of the live worker, from the supervisor's log lines."""
    out: dict[int, int] = {}
    for m in re.finditer(r"worker (\d+) started \(pid (\d+)\)", proc.log()):
        out[int(m.group(1))] = int(m.group(2))
    return {i: pid for i, pid in out.items() if _alive(pid)}


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


def start(pgmux_factory: Any, workers: int = 2, databases: dict[str, str] | None = None, **settings: Any) -> Any:
    started = datetime.now(UTC)
    proc = pgmux_factory(databases=databases, settings={"workers": workers, **settings})
    proc.started_at = started  # _server_count: backends older than the pooler are another test's
    wait_for(lambda: len(worker_pids(proc)) == workers and set(worker_pids(proc).values()) <= listening(proc),
             f"{workers} workers accepting", 30)
    return proc


def listening(proc: Any) -> set[int]:
    """The pids that logged they accept (a worker marks itself ready for the console's peers right after)."""
    return {int(m.group(1)) for m in re.finditer(r"\[(\d+)\] LOG listening on ", proc.log())}


@contextmanager
def only_on(proc: Any, index: int) -> Iterator[None]:
    """Connections made inside land on worker `index`: the others are stopped meanwhile."""
    others = [pid for i, pid in worker_pids(proc).items() if i != index]
    try:
        for pid in others:
            stop_outside_the_lock(pid)
        yield
    finally:
        for pid in others:
            os.kill(pid, signal.SIGCONT)


def stop_outside_the_lock(pid: int) -> None:
    """SIGSTOP a worker, but never while it holds the workers' shared lock (a POSIX lock, in /proc/locks):
    stopped inside, it would block every other worker's next login until continued (a RELOAD has each
    worker take it for every pool at once)."""
    deadline = time.monotonic() + 10
    while True:
        os.kill(pid, signal.SIGSTOP)
        wait_for(lambda: _state(pid) in ("T", "Z", ""), f"worker {pid} stopped", 10)
        if not _holds_posix_lock(pid) or time.monotonic() > deadline:
            return
        os.kill(pid, signal.SIGCONT)
        time.sleep(0.005)


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return ""


def _holds_posix_lock(pid: int) -> bool:
    with open("/proc/locks") as f:  # "1: POSIX  ADVISORY  WRITE 7490 00:1f:123 0 0"; waiters have "->"
        return any(p[1] == "POSIX" and p[4] == str(pid) for p in (line.split() for line in f) if len(p) > 4)


def connect_on(proc: Any, index: int, **kwargs: Any) -> psycopg.Connection[Any]:
    """A client on worker `index`: the others are stopped until that worker has accepted the connection
    (its login may itself need a server another worker holds), then the connection completes. Accepted:
    one more TCP connection to the port among the worker's sockets (/proc), not its log, which is written
    in batches: a login line of the client before, written late, once let the others go too soon."""
    pid = worker_pids(proc)[index]
    before = _accepted(pid, proc.port)
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["conn"] = psycopg.connect(proc.dsn(**kwargs), **CONNECT)
        except BaseException as e:  # noqa: BLE001
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    with only_on(proc, index):
        t.start()
        wait_for(lambda: "error" in box or "conn" in box or _accepted(pid, proc.port) > before,
                 f"a connection accepted by worker {index}", 20)
    t.join(30)
    if "error" in box:
        raise box["error"]
    return box["conn"]


def _accepted(pid: int, port: int) -> int:
    """Established TCP connections to `port` that process `pid` holds."""
    return cg.count_owned(cg.tcp_sockets(), {pid: cg.socket_inodes(pid)},
                          lambda s: s.state == 1 and s.local_port == port)[pid]


def login_pids(proc: Any) -> set[int]:
    return {int(p) for p in re.findall(r"\[(\d+)\] LOG C-\d+ \S+ login attempt", proc.log())}


def test_two_workers_serve_one_port_and_pidfile_is_the_supervisor(pgmux_factory: Any) -> None:
    piddir = Path(tempfile.mkdtemp(prefix="pgmux-pid-"))
    os.chmod(piddir, 0o777)  # the pooler may run as another OS user (-u)
    pidfile = piddir / "pgmux.pid"
    proc = start(pgmux_factory, pidfile=str(pidfile))
    assert int(pidfile.read_text()) == proc.pid
    workers = worker_pids(proc)
    for i in (0, 1):  # each worker serves clients on the one port
        with only_on(proc, i), psycopg.connect(proc.dsn(), **CONNECT) as conn:
            assert conn.execute("SELECT 41 + 1").fetchone() == (42,)
            assert conn.info.backend_pid & 1 == i  # the cancel key names the worker
    wait_for(lambda: set(workers.values()) <= login_pids(proc), "logins logged by both workers")
    # and with no worker stopped, many clients at once are all served
    conns = [psycopg.connect(proc.dsn(), **CONNECT) for _ in range(10)]
    try:
        assert all(c.execute("SELECT 1").fetchone() == (1,) for c in conns)
    finally:
        for c in conns:
            c.close()
    proc.signal(signal.SIGTERM)  # the supervisor stops the whole pooler
    assert proc.proc.wait(30) == 0
    assert not any(_alive(pid) for pid in workers.values())
    assert not pidfile.exists()
    shutil.rmtree(piddir, ignore_errors=True)


def test_killed_worker_is_restarted_and_others_unaffected(pgmux_factory: Any) -> None:
    proc = start(pgmux_factory)
    with only_on(proc, 0):
        survivor = psycopg.connect(proc.dsn(), **CONNECT)
    try:
        victim_pid = worker_pids(proc)[1]
        with only_on(proc, 1):
            doomed = psycopg.connect(proc.dsn(), **CONNECT)
        t0 = time.monotonic()
        os.kill(victim_pid, signal.SIGKILL)
        new = wait_for(lambda: worker_pids(proc).get(1) not in (None, victim_pid) and worker_pids(proc)[1],
                       "worker 1 restarted", 10)
        elapsed = time.monotonic() - t0
        assert elapsed < 5, elapsed  # the first restart is immediate
        proc.wait_log(f"worker 1 (pid {victim_pid}) died (killed by signal SIGKILL); restarting it in 0.0s")
        with pytest.raises(psycopg.OperationalError):
            doomed.execute("SELECT 1")  # its clients went with it; they reconnect
        doomed.close()
        assert survivor.execute("SELECT 7").fetchone() == (7,)  # the other worker's client saw nothing
        with only_on(proc, 1), psycopg.connect(proc.dsn(), **CONNECT) as conn:
            assert conn.execute("SELECT 8").fetchone() == (8,)
            assert conn.info.backend_pid & 1 == 1
        assert _alive(new)
    finally:
        survivor.close()


def test_cancel_lands_on_the_other_worker(pgmux_factory: Any) -> None:
    proc = start(pgmux_factory, pool_mode="transaction")
    with only_on(proc, 0):
        victim = psycopg.connect(proc.dsn(), **CONNECT)
    try:
        assert victim.info.backend_pid & 1 == 0
        result: dict[str, Any] = {}

        def run() -> None:
            t0 = time.monotonic()
            try:
                victim.execute("SELECT pg_sleep(60)")
            except psycopg.Error as e:
                result["sqlstate"] = e.sqlstate
            result["secs"] = time.monotonic() - t0

        runner = threading.Thread(target=run, daemon=True)
        runner.start()
        wait_for(lambda: _sleeping(proc), "the query running on PostgreSQL")
        worker0 = worker_pids(proc)[0]
        os.kill(worker0, signal.SIGSTOP)  # the cancel's connection can only land on worker 1
        try:
            canceller = threading.Thread(target=victim.cancel, daemon=True)
            canceller.start()
            wait_for(lambda: "passing a cancel request on to worker 0" in proc.log(), "worker 1 passing it on", 20)
        finally:
            os.kill(worker0, signal.SIGCONT)
        canceller.join(30)
        runner.join(30)
        assert result.get("sqlstate") == "57014", result  # query_canceled, by PostgreSQL
        assert result["secs"] < 50
        assert victim.execute("SELECT 1").fetchone() == (1,)
    finally:
        victim.close()


def _sleeping(proc: Any) -> bool:
    with psycopg.connect(proc.dsn(db="postgres"), **CONNECT) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60)' "
                           "AND state = 'active'").fetchone()
    return bool(row and row[0] > 0)


def test_max_client_conn_holds_across_workers(pgmux_factory: Any) -> None:
    proc = start(pgmux_factory, max_client_conn=4)
    conns = []
    try:
        for i in (0, 0, 1, 1):  # two clients on each worker: 4 in all
            with only_on(proc, i):
                conns.append(psycopg.connect(proc.dsn(), **CONNECT))
        for i in (0, 1):  # the 5th is refused whichever worker it reaches
            with only_on(proc, i), pytest.raises(psycopg.OperationalError) as err:
                psycopg.connect(proc.dsn(), **CONNECT)
            assert "no more connections allowed (max_client_conn)" in str(err.value)
        conns.pop().close()  # one leaves (from worker 1): a client on worker 0 now gets in
        wait_for(lambda: "closing because: client close request" in proc.log(), "worker 1 saw it leave")
        with only_on(proc, 0):
            conns.append(wait_for(lambda: _try_connect(proc), "a free client slot", 10))
    finally:
        for c in conns:
            c.close()


def _try_connect(proc: Any) -> psycopg.Connection[Any] | None:
    try:
        return psycopg.connect(proc.dsn(), **CONNECT)
    except psycopg.OperationalError:
        return None


# Server connections of the pools; the pool advisor's short probe for max_connections (application_name
# "pgmux pool advisor", once a minute per worker) is no pool's.
SERVERS_SQL = ("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND backend_type = 'client backend' "
               "AND application_name <> 'pgmux pool advisor' AND backend_start >= %s")


class Load:
    """Each client runs `sql` in a thread of its own, `count` times (None: until stopped), for `bound`
    seconds at most; `done` counts each one's runs, `errors` what any raised. As a context manager: started
    on entry, stopped and joined on exit."""

    def __init__(self, clients: list[Any], sql: str, count: int | None = None, bound: float = 60.0) -> None:
        self.clients, self.sql, self.count, self.bound = clients, sql, count, bound
        self.done = [0] * len(clients)
        self.errors: list[BaseException] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(len(clients))]

    def _run(self, n: int) -> None:
        deadline = time.monotonic() + self.bound
        try:
            while not self.stop.is_set() and time.monotonic() < deadline and (
                    self.count is None or self.done[n] < self.count):
                self.clients[n].execute(self.sql)
                self.done[n] += 1
        except BaseException as e:  # noqa: BLE001
            self.errors.append(e)

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(10)


def peak_servers(proc: Any, threads: list[threading.Thread], bound: float) -> int:
    """The most server connections of the pooler's pools seen while any of `threads` runs (sampled every
    50 ms, for `bound` seconds at most)."""
    peak = 0
    deadline = time.monotonic() + bound
    while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
        peak = max(peak, _server_count(proc))
        time.sleep(0.05)
    return peak


def _server_count(proc: Any) -> int:
    with psycopg.connect(proc.dsn(db="postgres").replace(f":{proc.port}/", f":{proc.pg_port}/"), **CONNECT) as c:
        # (only backends started after the pooler: in the whole suite an earlier test's connection to
        # testdb can still be open, waiting for the garbage collector)
        row = c.execute(SERVERS_SQL, ("testdb", proc.started_at)).fetchone()
    return int(row[0]) if row else 0


@pytest.mark.parametrize("workers", [2, 4])
def test_pool_size_holds_across_workers(pgmux_factory: Any, pg: Any, workers: int) -> None:
    proc = start(pgmux_factory, workers, pool_mode="transaction", default_pool_size=3)
    proc.pg_port = pg.primary.port
    clients = []
    for i in tuple(range(workers)) * (8 // workers):  # 8 clients, as many on each worker
        clients.append(connect_on(proc, i))
    with Load(clients, "SELECT pg_sleep(0.05)", count=40) as load:
        peak = peak_servers(proc, load.threads, 90)
    for c in clients:
        c.close()
    assert not load.errors, load.errors
    assert all(n == 40 for n in load.done), load.done  # every client of both workers was served, none starved
    assert 2 <= peak <= 3, peak  # one pool of 3 for the pooler, not 3 per worker


def test_idle_servers_of_one_worker_go_to_the_other(pgmux_factory: Any, pg: Any) -> None:
    proc = start(pgmux_factory, pool_mode="transaction", default_pool_size=2)
    proc.pg_port = pg.primary.port
    with only_on(proc, 0):
        a = [psycopg.connect(proc.dsn(), **CONNECT) for _ in range(2)]
    ready = threading.Barrier(2)

    def hold(c: psycopg.Connection[Any]) -> None:
        ready.wait(10)
        c.execute("SELECT pg_sleep(0.5)")

    threads = [threading.Thread(target=hold, args=(c,)) for c in a]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert _server_count(proc) == 2  # worker 0 now holds the pool's 2 servers, idle
    t0 = time.monotonic()
    b = connect_on(proc, 1)  # its login needs a server: the pool's first on worker 1
    try:
        assert b.execute("SELECT 5").fetchone() == (5,)
        assert time.monotonic() - t0 < 8  # not server_idle_timeout (600 s): worker 0 gave one up
        assert "another worker's clients wait for this pool" in wait_for(proc.log, "log")
        assert _server_count(proc) <= 2
    finally:
        b.close()
        for c in a:
            c.close()


def test_clients_spread_over_the_workers(pgmux_factory: Any) -> None:
    """80 clients connecting one after the other, as pgbench and a web app's pool do: all workers wait on
    one listening socket and the first awake accepts, often the same one again (9/6/14/51 and 37/9/12/22
    were seen). A worker with clearly more than its part stops accepting for 0.1 s (WorkerShare.
    pause_accepting), so each gets close to a quarter (17-23 each in four runs)."""
    proc = start(pgmux_factory, 4, pool_mode="transaction", default_pool_size=8)
    conns = []
    try:
        for _ in range(80):
            c = psycopg.connect(proc.dsn(), **CONNECT)
            c.execute("SELECT 1")
            conns.append(c)
        pids = worker_pids(proc)

        def spread() -> list[int] | None:
            logins = re.findall(r"\[(\d+)\] LOG C-\d+ \S+ login attempt", proc.log())
            per = [logins.count(str(pids[i])) for i in range(4)]
            return per if sum(per) >= 80 else None  # (the log is written in batches)

        per = wait_for(spread, "80 logins in the log", 20)
        assert max(per) <= 28 and min(per) >= 12, per
    finally:
        for c in conns:
            c.close()


def test_asyncpg_timeout_cancels_across_workers(pgmux_factory: Any) -> None:
    """asyncpg's command timeout sends a CancelRequest on a new connection: stopped worker 0 leaves it to
    worker 1, which passes it on."""
    import asyncio

    import asyncpg

    proc = start(pgmux_factory, pool_mode="transaction")

    async def main() -> None:
        with only_on(proc, 0):  # the victim's connection is worker 0's
            conn = await asyncpg.connect(proc.dsn(), statement_cache_size=0)
        try:
            task = asyncio.create_task(conn.execute("SELECT pg_sleep(60)", timeout=60))
            await asyncio.to_thread(wait_for, lambda: _sleeping(proc), "the query running")
            worker0 = worker_pids(proc)[0]
            os.kill(worker0, signal.SIGSTOP)
            try:
                task.cancel()  # asyncpg sends a CancelRequest for a cancelled query
                await asyncio.to_thread(wait_for, lambda: "passing a cancel request on to worker 0" in proc.log(),
                                        "worker 1 passing it on", 20)
            finally:
                os.kill(worker0, signal.SIGCONT)
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await asyncio.wait_for(conn.fetchval("SELECT 3"), 30) == 3
            await asyncio.to_thread(wait_for, lambda: not _sleeping(proc), "the query cancelled on PostgreSQL", 20)
        finally:
            await conn.close()

    asyncio.run(main())


def test_unix_socket_and_psql_with_workers(pgmux_factory: Any) -> None:
    import shutil as sh
    import subprocess

    proc = start(pgmux_factory)
    sockdir = proc.settings["unix_socket_dir"]
    if not sockdir:
        pytest.skip("the test dir is too long for a Unix socket path")
    psql = sh.which("psql") or "/usr/lib/postgresql/15/bin/psql"
    for i in (0, 1):
        with only_on(proc, i):
            out = subprocess.run([psql, "-h", sockdir, "-p", str(proc.port), "-U", "postgres", "-d", "testdb",
                                  "-Atc", "SELECT 6 * 7"], capture_output=True, text=True, timeout=30)
        assert out.stdout.strip() == "42", out.stderr








def test_max_db_connections_and_client_limits_across_workers(pgmux_factory: Any, pg: Any) -> None:
    proc = start(pgmux_factory, pool_mode="session", default_pool_size=10, max_db_connections=2,
                 max_db_client_connections=3, query_wait_timeout=30)
    proc.pg_port = pg.primary.port
    held = [connect_on(proc, 0), connect_on(proc, 1)]  # session mode: each holds a server
    try:
        for c in held:
            c.execute("SELECT 1")
        assert _server_count(proc) == 2
        box: dict[str, Any] = {}

        def third() -> None:
            try:
                conn = psycopg.connect(proc.dsn(), **CONNECT)
                box["row"] = conn.execute("SELECT 9").fetchone()
                conn.close()
            except BaseException as e:  # noqa: BLE001
                box["error"] = e

        t = threading.Thread(target=third, daemon=True)
        t.start()  # the 3rd client is admitted (max_db_client_connections = 3) but waits for a server
        wait_for(lambda: "login attempt" in proc.log() and proc.log().count("login attempt") >= 3, "3rd login")
        time.sleep(1.0)
        assert "row" not in box and _server_count(proc) == 2  # max_db_connections = 2 for the pooler
        for i in (0, 1):  # a 4th client is refused on either worker
            with only_on(proc, i), pytest.raises(psycopg.OperationalError) as err:
                psycopg.connect(proc.dsn(), **CONNECT)
            assert "max_db_client_connections" in str(err.value)
        held.pop().close()  # a server is free: the waiting client gets one
        t.join(30)
        assert box.get("row") == (9,), box
        assert _server_count(proc) <= 2
    finally:
        for c in held:
            c.close()


@pytest.mark.parametrize("reuseport", [1, 0])
def test_so_reuseport_with_workers(pgmux_factory: Any, reuseport: int) -> None:
    """so_reuseport keeps PgBouncer's meaning with workers: another process (of the same OS user, as
    Linux requires) may bind the same port, or not."""
    import subprocess
    import sys

    from pgmux.testing.osuser import server_os_user

    proc = start(pgmux_factory, so_reuseport=reuseport)
    osuser = server_os_user()  # (as root, pgmux runs as this user: the snippet switches to it first)
    switch = f"os.setgid({osuser.gid}); os.setuid({osuser.uid}); " if osuser.switch else ""
    code = (f"import os, socket; {switch}s = socket.socket(); "
            "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1); "
            f"s.bind(({proc.host!r}, {proc.port})); print('bound')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert ("bound" in out.stdout) == bool(reuseport), out.stderr
    with psycopg.connect(proc.dsn(), **CONNECT) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_a_killed_workers_clients_no_longer_count(pgmux_factory: Any) -> None:
    proc = start(pgmux_factory, max_client_conn=2)
    doomed = [connect_on(proc, 1), connect_on(proc, 1)]
    with only_on(proc, 0), pytest.raises(psycopg.OperationalError) as err:
        psycopg.connect(proc.dsn(), **CONNECT)
    assert "max_client_conn" in str(err.value)
    victim = worker_pids(proc)[1]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: worker_pids(proc).get(1) not in (None, victim), "worker 1 restarted", 10)
    with only_on(proc, 0):  # its two clients died with it: their slots are free at once
        conn = wait_for(lambda: _try_connect(proc), "a client slot on worker 0", 5)
    conn.close()
    for c in doomed:
        c.close()


@pytest.mark.parametrize("protocol", ["simple", "prepared"])
def test_pgbench_through_two_workers(pgmux_factory: Any, pg: Any, bench_db: str, protocol: str) -> None:  # noqa: F811
    """pgbench's TPC-B-like from 20 clients over both workers (simple, and -M prepared): no failed
    transaction, balances consistent, and never more than pool_size server connections in PostgreSQL
    (sampled from pg_stat_activity)."""
    from test_pgbench import pgbench, primary_scalar, summary

    p = pg.primary
    mux = start(pgmux_factory, databases={bench_db: f"host={p.host} port={p.port} dbname={bench_db}"},
                pool_mode="transaction", default_pool_size=5, max_client_conn=200)
    stop = threading.Event()
    peak = [0]
    started = mux.started_at

    def sample() -> None:
        with psycopg.connect(p.dsn(db="postgres"), autocommit=True, connect_timeout=10) as conn:
            for _ in range(2000):  # bounded; about 60 s at most
                if stop.is_set():
                    return
                row = conn.execute(SERVERS_SQL, (bench_db, started)).fetchone()
                peak[0] = max(peak[0], int(row[0]) if row else 0)
                time.sleep(0.03)

    sampler = threading.Thread(target=sample, daemon=True)
    before = primary_scalar(pg, "SELECT count(*) FROM pgbench_history")
    sampler.start()
    try:
        out = pgbench(mux, "-M", protocol, "-c", "20", "-j", "4", "-T", "4", "-n", timeout=120)
    finally:
        stop.set()
        sampler.join(30)
    s = summary(out)
    assert s["failed"] == 0 and s["processed"] > 0, s
    history, delta = primary_scalar(pg, "SELECT count(*), coalesce(sum(delta), 0) FROM pgbench_history")
    assert history - before == s["processed"]
    assert primary_scalar(pg, "SELECT (SELECT sum(abalance) FROM pgbench_accounts), (SELECT sum(bbalance) FROM "
                              "pgbench_branches), (SELECT sum(tbalance) FROM pgbench_tellers)") == (delta,) * 3
    assert 0 < peak[0] <= 5, peak[0]  # one pool of 5 for both workers
    served = {int(x) for x in re.findall(r"\[(\d+)\] LOG C-\d+ \S+ login attempt", mux.log())}
    assert len(served & set(worker_pids(mux).values())) == 2  # both workers had clients
