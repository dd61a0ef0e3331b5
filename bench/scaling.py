#!/usr/bin/env python3
"""Scaling with the pooler's cores as the bottleneck: pgmux with 1, 2, 4 workers against PgBouncer with 1, 2, 4
so_reuseport processes, each pooler process in a cgroup of its own with the same CPU quota (issue 14 item 7).

On a 2-core host the pooler competes with PostgreSQL and pgbench for the cores, so adding pooler processes
shows nothing. With every pooler process capped (by default at a quarter of a core), the emulated pooler
host has N slow cores, and the question is how close N processes come to N times one. The pool total is the
same everywhere: pgmux's workers share default_pool_size; PgBouncer's processes get total/N each (they
cannot share one). Server connections are sampled from pg_stat_activity during every run.

    python3 bench/scaling.py                           # 2 poolers x 3 sizes x 3 rounds x 10 s (~6 min)
    python3 bench/scaling.py --mode extended --quota 0.1 --json /tmp/scaling.json
    python3 bench/scaling.py --duration 2 --rounds 1 --targets pgmux --workers 2    # a smoke run

Needs root (cgroup v1 cpu controller at /sys/fs/cgroup/cpu). See bench/README.md.
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

import psycopg
from cpugroups import (
    PERIOD_US,
    CpuGroups,
    children_of,
    count_owned,
    cpu_seconds,
    quota_us,
    socket_inodes,
    tcp_sockets,
)
from run import DB, POOLER_SETTINGS, Target, find_pgbouncer, fmt, log, run_pgbench, start_pooler, tail
from scaling_report import Config, Run, bars, divide_pool, plan, summarize, table

from pgmux.testing.cluster import (
    HOST,
    ClusterError,
    PgCluster,
    free_port,
    pgmux_user_args,
    stop_process,
    wait_until,
)

KINDS = ("pgmux", "pgbouncer", "pgmux-metrics")
DEFAULT_KINDS = ("pgmux", "pgbouncer")
ADVISOR = "pgmux pool advisor"  # pgmux's probe for max_connections: outside the pools, not counted
START_TIMEOUT = 20.0
DRAIN_TIMEOUT = 30.0
SAMPLE_EVERY = 0.25


class BenchError(RuntimeError):
    pass


@dataclasses.dataclass
class Running:
    config: Config
    port: int
    procs: list[Any]  # the Popen objects we started (pgmux: 1, PgBouncer: N)
    pooled: list[int]  # the pids placed in the cgroups, in group order
    supervisor: int | None = None
    logs: list[str] = dataclasses.field(default_factory=list)


# -- server connections ------------------------------------------------------------------------------------


class ServerCounter:
    """Counts the client backends on the bench database (the poolers' server connections) over one direct
    connection of our own to PostgreSQL."""

    SQL = ("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND datname = %s "
           "AND coalesce(application_name, '') <> %s AND pid <> pg_backend_pid()")

    def __init__(self, host: str, port: int, user: str) -> None:
        self.conn = psycopg.connect(host=host, port=port, user=user, dbname="postgres", autocommit=True,
                                    connect_timeout=10, application_name="pgmux scaling bench",
                                    options="-c statement_timeout=5000")

    def count(self) -> int:
        row = self.conn.execute(self.SQL, (DB, ADVISOR)).fetchone()
        return int(row[0]) if row else 0

    def sessions(self) -> int | None:
        """Sessions ever started on the bench database (pg_stat_database: each server login counts)."""
        row = self.conn.execute("SELECT sessions FROM pg_stat_database WHERE datname = %s", (DB,)).fetchone()
        return int(row[0]) if row and row[0] is not None else None

    def wait_zero(self, timeout: float = DRAIN_TIMEOUT) -> int:
        """Until the previous pooler's server connections are gone; what is left after `timeout`."""
        deadline = time.monotonic() + timeout
        while (n := self.count()) and time.monotonic() < deadline:
            time.sleep(0.2)
        return n

    def close(self) -> None:
        self.conn.close()


class Sampler(threading.Thread):
    """During one timed run: the largest server count seen, and once, halfway, which process holds how many
    client and server sockets."""

    def __init__(self, counter: ServerCounter, running: Running, pg_port: int, duration: float) -> None:
        super().__init__(daemon=True)
        self.counter, self.running, self.pg_port, self.duration = counter, running, pg_port, duration
        self.stop = threading.Event()
        self.max: int | None = None
        self.samples = 0
        self.clients: list[int] = []
        self.servers: list[int] = []
        self.error = ""

    def run(self) -> None:
        started = time.monotonic()
        while not self.stop.wait(SAMPLE_EVERY):
            try:
                n = self.counter.count()
            except psycopg.Error as e:
                self.error = str(e).strip()
                continue
            self.max = n if self.max is None else max(self.max, n)
            self.samples += 1
            if not self.clients and time.monotonic() - started >= self.duration / 2:
                self.snapshot()

    def snapshot(self) -> None:
        owners = {pid: socket_inodes(pid) for pid in self.running.pooled}
        socks = tcp_sockets()
        port, pg = self.running.port, self.pg_port
        clients = count_owned(socks, owners, lambda s: s.state == 1 and s.local_port == port)
        servers = count_owned(socks, owners, lambda s: s.state == 1 and s.remote_port == pg)
        self.clients = [clients[p] for p in self.running.pooled]
        self.servers = [servers[p] for p in self.running.pooled]


# -- starting and stopping the poolers ----------------------------------------------------------------------


def listens(pid: int, port: int) -> bool:
    inodes = socket_inodes(pid)
    return any(s.state == 10 and s.local_port == port and s.inode in inodes for s in tcp_sockets())


def start_pgmux(cfg: Config, cluster: PgCluster, tag: str) -> Running:
    overrides: dict[str, Any] = {"workers": cfg.n, "default_pool_size": cfg.pool_total}
    if cfg.kind == "pgmux-metrics":
        overrides["metrics_listen"] = f"{HOST}:{free_port()}"
    t = start_pooler(tag, [sys.executable, "-m", "pgmux", *pgmux_user_args()], cluster, {}, "off", None,
                     overrides=overrides)
    assert t.proc is not None
    running = Running(cfg, t.port, [t.proc], [t.proc.pid], logs=[t.log_path])
    if t.dead:
        raise BenchError(f"{tag} {t.dead}")
    if cfg.n > 1:
        pid = t.proc.pid
        wait_until(lambda: len(children_of(pid)) == cfg.n, START_TIMEOUT, f"{cfg.n} workers of pgmux {pid}")
        running.supervisor, running.pooled = pid, children_of(pid)
        wait_until(lambda: all(listens(w, t.port) for w in running.pooled), START_TIMEOUT, "the workers' sockets")
    return running


def start_pgbouncer(cfg: Config, cluster: PgCluster, pgbouncer: str, port: int, tag: str) -> Running:
    osuser = cluster.os_user
    assert osuser is not None
    run_as = {**osuser.popen_kwargs(), "env": osuser.env()}
    running = Running(cfg, port, [], [])
    for i, size in enumerate(cfg.pool_sizes()):
        name = f"{tag}-p{i}"
        # so_reuseport: every process binds the port; each its own pool, pidfile, log (stderr), no Unix socket.
        overrides = {"default_pool_size": size, "so_reuseport": 1, "unix_socket_dir": "",
                     "pidfile": os.path.join(cluster.base_dir, f"{name}.pid")}
        t = start_pooler(name, [pgbouncer], cluster, run_as, "off", None, port=port, overrides=overrides,
                         wait=False)
        assert t.proc is not None
        running.procs.append(t.proc)
        running.pooled.append(t.proc.pid)
        running.logs.append(t.log_path)
        wait_until(lambda t=t: up(t), START_TIMEOUT, f"{name} listening on port {port}")
    return running


def up(t: Target) -> bool:
    """`t` (one of several processes on its port) holds a listening socket on it; BenchError if it exited."""
    assert t.proc is not None
    if t.proc.poll() is not None:
        raise BenchError(f"{t.name} exited with code {t.proc.returncode}:\n{tail(t.log_path)}")
    return listens(t.proc.pid, t.port)


def start(cfg: Config, cluster: PgCluster, pgbouncer: str, tag: str) -> Running:
    if cfg.kind.startswith("pgmux"):
        return start_pgmux(cfg, cluster, tag)
    return start_pgbouncer(cfg, cluster, pgbouncer, free_port(), tag)


def stop(running: Running) -> None:
    """By PID: the processes we started, then any pgmux worker that outlived its supervisor."""
    for proc in running.procs:
        stop_process(proc, timeout=10)
    if running.supervisor is None:
        return
    deadline = time.monotonic() + 10
    for pid in running.pooled:
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            time.sleep(0.1)
        if os.path.exists(f"/proc/{pid}"):
            log(f"worker {pid} outlived its supervisor: SIGKILL")
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# -- one run -------------------------------------------------------------------------------------------------


def escaped(running: Running, groups: CpuGroups) -> str:
    """Why the run does not count as measured under the quota ("" if every pooled process stayed alone in its
    group and, for pgmux, the workers are still the ones placed: one the supervisor restarted would be free)."""
    problems = []
    for i, pid in enumerate(running.pooled):
        members = groups.members(i)
        if members != {pid}:
            problems.append(f"group {i} holds {sorted(members)}, not [{pid}]")
    if running.supervisor is not None:
        now = children_of(running.supervisor)
        if sorted(now) != sorted(running.pooled):
            problems.append(f"workers now {now}, placed {running.pooled} (a restarted worker runs without a quota)")
    for proc in running.procs:
        if proc.poll() is not None:
            problems.append(f"pid {proc.pid} exited with code {proc.returncode}")
    return "; ".join(problems)


def measure(running: Running, groups: CpuGroups, args: argparse.Namespace, pgbench: str, user: str,
            counter: ServerCounter, pg_port: int) -> Run:
    for i, pid in enumerate(running.pooled):
        groups.place(i, pid)
    target = Target(running.config.name, running.port)
    pgbench_args = ["-S", "-M", args.mode, "-c", str(args.clients)]
    if args.warmup > 0:  # fills the pools under the quota; not counted
        run_pgbench(pgbench, target, pgbench_args, args.warmup, user)
    before_thr = [groups.throttle(i) for i in range(len(running.pooled))]
    before_logins = counter.sessions()
    before_cpu = [cpu_seconds(pid) for pid in running.pooled]
    before_sup = cpu_seconds(running.supervisor) if running.supervisor else None
    sampler = Sampler(counter, running, pg_port, args.duration)
    started = time.monotonic()
    sampler.start()
    try:
        r = run_pgbench(pgbench, target, pgbench_args, args.duration, user)
    finally:
        sampler.stop.set()
        sampler.join(timeout=30)
    after_logins = counter.sessions()
    wall = time.monotonic() - started
    after_cpu = [cpu_seconds(pid) for pid in running.pooled]
    thr = [groups.throttle(i).minus(b) for i, b in enumerate(before_thr)]
    fractions = [f for f in (t.fraction() for t in thr) if f is not None]
    run = Run(tps=r.tps, txns=r.txns, aborted=r.aborted, errors=r.errors, max_servers=sampler.max,
              samples=sampler.samples, clients=sampler.clients, servers=sampler.servers, note=r.note,
              cpu=[(a - b) / wall if a is not None and b is not None else None for a, b in zip(after_cpu, before_cpu,
                                                                                             strict=True)],
              throttled=statistics.mean(fractions) if fractions else None)
    if before_logins is not None and after_logins is not None:
        run.logins = after_logins - before_logins
    used = [(a - b) for a, b in zip(after_cpu, before_cpu, strict=True) if a is not None and b is not None]
    if r.txns and len(used) == len(running.pooled):
        run.cpu_us_per_txn = sum(used) / r.txns * 1e6
    if running.supervisor and before_sup is not None and (sup := cpu_seconds(running.supervisor)) is not None:
        run.supervisor_cpu = (sup - before_sup) / wall
    escape = escaped(running, groups)
    if escape:
        run.tps = None  # not measured under the quota: does not count
        log(f"{running.config.name}: {escape}")
    run.note = "; ".join(n for n in (r.note, escape, sampler.error and f"sampler: {sampler.error}") if n)
    return run


def run_all(args: argparse.Namespace, configs: list[Config], cluster: PgCluster, pgbench: str, pgbouncer: str,
            groups: CpuGroups, counter: ServerCounter) -> dict[str, list[Run]]:
    results: dict[str, list[Run]] = {c.name: [] for c in configs}
    total, k = len(configs) * args.rounds, 0
    for rnd in range(1, args.rounds + 1):
        for cfg in configs:
            k += 1
            left = counter.wait_zero()
            if left:
                log(f"note: {left} server connections of the previous pooler still open after {DRAIN_TIMEOUT:.0f}s")
            running: Running | None = None
            try:
                running = start(cfg, cluster, pgbouncer, f"scaling-{cfg.name}-r{rnd}")
                run = measure(running, groups, args, pgbench, cluster.superuser, counter, cluster.primary.port)
            except (BenchError, ClusterError) as e:
                run = Run(tps=None, errors=1, note=str(e).splitlines()[0])
                log(f"{cfg.name}: {e}")
                if running:
                    for path in running.logs:
                        log(f"--- {path} ---\n{tail(path)}")
            finally:
                if running is not None:
                    stop(running)
            results[cfg.name].append(run)
            cpu = "/".join(fmt(c, ".2f") for c in run.cpu)
            log(f"[{k}/{total}] round {rnd} {cfg.name}: {fmt(run.tps)} tps, servers max {fmt(run.max_servers, 'd')}, "
                f"logins {fmt(run.logins, 'd')}, "
                f"clients/proc {'/'.join(map(str, run.clients)) or '-'}, cpu/proc {cpu or '-'}, "
                f"throttled {fmt(run.throttled and run.throttled * 100, '.0f')}%, aborted {run.aborted}, "
                f"errors {run.errors}{' ' + run.note if run.note else ''}")
    return results


# -- reporting -------------------------------------------------------------------------------------------------


def pgmux_build() -> str:
    """Whether the pgmux we start (same interpreter and path) runs its per-transaction modules compiled."""
    import pgmux.runtime.app as app

    return "compiled (mypyc)" if app.__file__ and not app.__file__.endswith(".py") else "pure Python (no mypyc build)"


def report(args: argparse.Namespace, configs: list[Config], results: dict[str, list[Run]]) -> list[dict[str, Any]]:
    rows = summarize(configs, results)
    q = quota_us(args.quota)
    print()
    print(f"pgbench -S -M {args.mode} -c {args.clients} -j 2 -T {args.duration}, median of {args.rounds} rounds; "
          f"scale {args.scale}; transaction mode; pool total {args.pool_size}; pgmux {pgmux_build()}")
    print("each pooler process (pgmux worker, PgBouncer process) in its own cgroup: "
          + (f"cfs_quota_us {q} / cfs_period_us {PERIOD_US} = {args.quota:g} core" if q > 0 else "no quota"))
    print(table(rows))
    print("cpu/proc: cores used per pooled process (mean); us/txn: their CPU time per transaction; throttled: "
          "share of cfs periods in which a group ran out of quota (mean); superv cpu: pgmux's supervisor (not in a "
          "group); clients/servers per process: mid-run, median round")
    print("bars (issue 14 item 7):")
    for text, met in bars(rows, args.pool_size):
        print(f"  {text}: {'met' if met else 'NOT met' if met is not None else 'not measured'}")
    return rows


def write_json(path: str, args: argparse.Namespace, results: dict[str, list[Run]], rows: list[dict[str, Any]]) -> None:
    doc = {
        "args": {k: v for k, v in vars(args).items() if k != "json"},
        "cfs_quota_us": quota_us(args.quota), "cfs_period_us": PERIOD_US, "pgmux_build": pgmux_build(),
        "pooler_settings": POOLER_SETTINGS, "summary": rows,
        "bars": [{"bar": text, "met": met} for text, met in bars(rows, args.pool_size)],
        "runs": {name: [dataclasses.asdict(r) for r in runs] for name, runs in results.items()},
    }
    with open(path, "w") as f:
        json.dump(doc, f, indent=2)


# -- main ---------------------------------------------------------------------------------------------------


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--duration", type=int, default=10, help="seconds per timed pgbench run (default 10)")
    p.add_argument("--rounds", type=int, default=3, help="runs per configuration, median taken (default 3)")
    p.add_argument("--warmup", type=int, default=2, help="seconds of the same load before each timed run (default 2)")
    p.add_argument("--quota", type=float, default=0.25,
                   help="CPU per pooler process, in cores (default 0.25: cfs_quota_us 25000 per 100 ms); 0 = none")
    p.add_argument("--workers", type=int_list, default=[1, 2, 4],
                   help="comma list of pgmux workers / PgBouncer processes (default 1,2,4)")
    p.add_argument("--targets", default=",".join(DEFAULT_KINDS),
                   help="comma list of pgmux, pgbouncer, pgmux-metrics (default pgmux,pgbouncer); pgmux-metrics is "
                        "one pgmux process with metrics_listen set (histograms updated per transaction, nothing "
                        "scraping), against pgmux-1: the cost of the metrics on the hot path when the pooler's "
                        "core is the limit")
    p.add_argument("--mode", choices=("simple", "extended"), default="simple", help="pgbench -M (default simple)")
    p.add_argument("--clients", type=int, default=64, help="pgbench -c (default 64)")
    p.add_argument("--pool-size", type=int, default=20,
                   help="pool total: pgmux default_pool_size, divided among PgBouncer's processes (default 20)")
    p.add_argument("--scale", type=int, default=10, help="pgbench -i scale (default 10)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (data, ini files, logs)")
    args = p.parse_args(argv)
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    if bad := [t for t in args.targets if t not in KINDS]:
        p.error(f"unknown targets {bad}; choose from {KINDS}")
    if not args.workers or min(args.workers) < 1:
        p.error("--workers: positive integers")
    try:
        quota_us(args.quota)
        for n in args.workers:
            divide_pool(args.pool_size, n)
    except ValueError as e:
        p.error(str(e))
    if args.duration < 1 or args.rounds < 1 or args.warmup < 0 or args.clients < 1:
        p.error("--duration, --rounds and --clients must be >= 1, --warmup >= 0")
    if args.rounds < 3:
        log(f"note: --rounds {args.rounds}: a median of fewer than 3 runs says little")
    return args


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks: poolers stopped, cgroups removed


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("bench/scaling.py needs root: it writes cgroup v1 files under /sys/fs/cgroup/cpu")
    signal.signal(signal.SIGTERM, _terminate)
    pgbouncer = find_pgbouncer() if "pgbouncer" in args.targets else ""
    configs = plan(args.targets, sorted(set(args.workers)), args.pool_size)
    with CpuGroups(max(args.workers), args.quota) as groups, \
            PgCluster(replicas=0, conf_extra={"max_connections": 300, "shared_buffers": "256MB"},
                      keep=args.keep) as cluster:
        atexit.register(groups.close)
        primary = cluster.primary
        pgbench = cluster.bin("pgbench")
        log(f"PostgreSQL on {HOST}:{primary.port}, dir {cluster.base_dir}; pgbench -i -s {args.scale}; "
            f"cgroups {groups.paths[0]}..")
        primary.psql(f"CREATE DATABASE {DB}")
        init = subprocess.run([pgbench, "-i", "-q", "-s", str(args.scale), "-h", HOST, "-p", str(primary.port),
                               "-U", cluster.superuser, DB], capture_output=True, text=True, timeout=900)
        if init.returncode != 0:
            raise SystemExit(f"pgbench -i failed:\n{init.stderr}")
        counter = ServerCounter(HOST, primary.port, cluster.superuser)
        try:
            results = run_all(args, configs, cluster, pgbench, pgbouncer, groups, counter)
        finally:
            counter.close()
    rows = report(args, configs, results)
    if args.json:
        write_json(args.json, args, results, rows)
        print(f"wrote {args.json}")
    return 0 if all(r["measured_rounds"] == r["rounds"] for r in rows) else 1


if __name__ == "__main__":
    begun = time.monotonic()
    try:
        code = main(sys.argv[1:])
    except KeyboardInterrupt:
        log("interrupted: poolers stopped, cgroups removed")
        code = 130
    log(f"bench took {time.monotonic() - begun:.0f}s")
    raise SystemExit(code)
