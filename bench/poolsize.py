#!/usr/bin/env python3
"""Pool-size sweep: pgbench through pgmux at fixed pool sizes and with pool_size = auto, in one run.

Three workloads whose best pool sizes differ: read-only `-S` (CPU-bound), TPC-B-like at scale 1 (every
transaction updates the one branch row: contention), and a transaction that waits (`SELECT
pg_sleep(0.01)`: latency-bound, where a large pool wins). Each at 100 and 200 clients, against pool
sizes 2 to 200 and `auto`. One pgmux serves every cell: each cell has a database alias of its own
(`bench_p20`, `bench_auto_tpcb_c100`...) with its own pool_size, so every auto cell starts cold,
knowing nothing of the workload. Every cell gets the same warm-up (not counted) before its timed run.

The bar (issue 15): auto reaches at least 95% of the best fixed size's TPS in each workload. The size
auto chose is read from SHOW POOLS during the timed run (median, and the range seen).

    python3 bench/poolsize.py                       # the full sweep: about 15 min at the defaults
    python3 bench/poolsize.py --duration 3 --warmup 2 --workloads sleep --clients 100 --sizes 10 100
    python3 bench/poolsize.py --workers 2           # the same with two worker processes
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import psycopg

from pgmux.testing.cluster import (
    HOST,
    PgCluster,
    die_with_parent,
    free_port,
    pgmux_user_args,
    render_ini,
    render_userlist,
    stop_process,
    wait_listening,
)

DB = "bench"
SIZES = [2, 5, 10, 20, 50, 100, 200]
CLIENTS = [100, 200]
WORKLOADS: dict[str, list[str]] = {
    "select": ["-S"],
    "tpcb": [],
    "sleep": ["-f", "{sleep}"],
}
AUTO_CAP = 200  # max_db_connections of the auto aliases: auto's upper bound (without it: 100)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=int, default=10, help="seconds of each timed pgbench run (default 10)")
    p.add_argument("--warmup", type=int, default=5, help="seconds of load before each timed run (default 5)")
    p.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    p.add_argument("--clients", nargs="+", type=int, default=CLIENTS)
    p.add_argument("--sizes", nargs="+", type=int, default=SIZES)
    p.add_argument("--no-auto", action="store_true", help="fixed sizes only")
    p.add_argument("--confirm", type=int, default=3,
                   help="paired rounds of the best fixed size against a fresh auto pool after each sweep, "
                        "their order alternating; the bar is judged on the median of the rounds' ratios "
                        "(default 3, 0 = none)")
    p.add_argument("--auto-warmup", type=int, default=20,
                   help="seconds of load before the timed run of a confirming auto pool: the time it has to "
                        "learn the workload (default 20; the sweep's own auto cell gets --warmup)")
    p.add_argument("--scale", type=int, default=1, help="pgbench scale (1: one branch row, contention)")
    p.add_argument("--workers", type=int, default=1,
                   help="pgmux worker processes (default 1; with more, one auto controller sizes each pool for all)")
    p.add_argument("--log", help="copy pgmux's log (run with -v: each auto size change) to this file")
    args = p.parse_args(argv)
    if args.duration < 1 or args.warmup < 0 or args.auto_warmup < 0 or args.confirm < 0:
        p.error("--duration must be >= 1, and --warmup, --auto-warmup and --confirm >= 0")
    if max(args.clients) > 500 or max(args.sizes) > 400:
        p.error("at most 500 clients and pool size 400")
    return args


def aliases(args: argparse.Namespace, primary: Any) -> dict[str, str]:
    base = f"host={primary.host} port={primary.port} dbname={DB}"
    out = {f"{DB}_p{n}": f"{base} pool_size={n}" for n in args.sizes}
    if not args.no_auto:
        for w in args.workloads:
            for c in args.clients:
                out[f"{DB}_auto_{w}_c{c}"] = f"{base} pool_size=auto max_db_connections={AUTO_CAP}"
                for r in range(args.confirm):  # a fresh, cold auto pool for each confirming round
                    out[f"{DB}_auto_{w}_c{c}_r{r}"] = f"{base} pool_size=auto max_db_connections={AUTO_CAP}"
    return out


def start_pgmux(cluster: PgCluster, databases: dict[str, str], verbose: bool,
                workers: int = 1) -> tuple[subprocess.Popen[bytes], int, str]:
    port = free_port()
    userlist = os.path.join(cluster.base_dir, "userlist.txt")
    ini = os.path.join(cluster.base_dir, "poolsize.ini")
    cluster.write_owned(userlist, render_userlist({cluster.superuser: ""}), mode=0o644)
    settings = {"listen_addr": HOST, "listen_port": port, "unix_socket_dir": cluster.base_dir, "auth_type": "trust",
                "auth_file": userlist, "admin_users": cluster.superuser, "pool_mode": "transaction",
                "max_client_conn": 1000, "server_idle_timeout": 3, "server_tls_sslmode": "disable",
                "workers": workers}
    cluster.write_owned(ini, render_ini(databases, settings), mode=0o644)
    log_path = os.path.join(cluster.base_dir, "pgmux.log")
    with open(log_path, "ab") as out:
        flags = ["-v"] if verbose else []
        proc = subprocess.Popen(die_with_parent([sys.executable, "-m", "pgmux", *flags, *pgmux_user_args(), ini]),
                                stdout=out, stderr=out, stdin=subprocess.DEVNULL, cwd=cluster.base_dir,
                                start_new_session=True)
    wait_listening(proc, HOST, port, timeout=20)
    return proc, port, log_path


def pgbench(binary: str, port: int, user: str, db: str, workload: list[str], clients: int,
            seconds: int) -> float | None:
    cmd = [binary, "-n", "-j", "2", "-c", str(clients), "-T", str(seconds), *workload, "-h", HOST, "-p", str(port),
           "-U", user, db]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGSSLMODE"] = "disable"
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120, env=env,
                          stdin=subprocess.DEVNULL)
    for line in proc.stdout.splitlines():
        if line.startswith("tps = "):
            return float(line.split()[2])
    log(f"pgbench failed ({proc.returncode}): {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    return None


class SizeWatch(threading.Thread):
    """Reads the auto pool's size from SHOW POOLS once a second while the timed run lasts."""

    def __init__(self, port: int, user: str, db: str) -> None:
        super().__init__(daemon=True)
        self.port, self.user, self.db = port, user, db
        self.sizes: list[int] = []
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            with psycopg.connect(host=HOST, port=self.port, dbname="pgbouncer", user=self.user, autocommit=True,
                                 cursor_factory=psycopg.ClientCursor, connect_timeout=10) as conn:
                while not self.stop.wait(1.0):
                    cur = conn.execute("SHOW POOLS")
                    cols = [d.name for d in cur.description or []]
                    for row in cur.fetchall():
                        r = dict(zip(cols, row, strict=True))
                        if r["database"] == self.db:
                            self.sizes.append(int(r["pool_size"]))
        except psycopg.Error as e:
            log(f"SHOW POOLS failed: {e}")


def run_cell(ctx: dict[str, Any], workload: str, clients: int, db: str, args: argparse.Namespace,
             auto: bool, warmup: int | None = None) -> tuple[float | None, list[int]]:
    wl = [a.replace("{sleep}", ctx["sleep"]) for a in WORKLOADS[workload]]
    warmup = args.warmup if warmup is None else warmup
    if warmup:
        pgbench(ctx["pgbench"], ctx["port"], ctx["user"], db, wl, clients, warmup)
    watch = SizeWatch(ctx["port"], ctx["user"], db) if auto else None
    if watch is not None:
        watch.start()
    tps = pgbench(ctx["pgbench"], ctx["port"], ctx["user"], db, wl, clients, args.duration)
    if watch is not None:
        watch.stop.set()
        watch.join(5)
    time.sleep(1)  # let the servers of this cell go idle (server_idle_timeout closes them)
    return tps, watch.sizes if watch is not None else []


def best_size(args: argparse.Namespace, cell: dict[str, Any]) -> int | None:
    ok = {n: cell[f"p{n}"] for n in args.sizes if cell.get(f"p{n}") is not None}
    return max(ok, key=lambda n: ok[n]) if ok else None


def confirm(ctx: dict[str, Any], w: str, c: int, best: int, args: argparse.Namespace,
            cell: dict[str, Any]) -> None:
    """Paired rounds, best fixed size against a cold auto pool given --auto-warmup to learn, the order
    alternating so that drift hits both alike: the machine's noise between two single runs is larger than
    the 5% the bar allows."""
    pairs: list[tuple[float, float]] = []
    sizes: list[int] = []
    for r in range(args.confirm):
        got: dict[str, float | None] = {}
        for kind in (("fixed", "auto") if r % 2 == 0 else ("auto", "fixed")):
            if kind == "fixed":
                got["fixed"], _ = run_cell(ctx, w, c, f"{DB}_p{best}", args, False)
            else:
                got["auto"], seen = run_cell(ctx, w, c, f"{DB}_auto_{w}_c{c}_r{r}", args, True, args.auto_warmup)
                sizes += seen
        fixed, auto = got["fixed"], got["auto"]
        log(f"{w} c{c} confirm round {r + 1}: p{best} {fixed} tps, auto {auto} tps")
        if fixed and auto:
            pairs.append((fixed, auto))
    cell["confirm"] = pairs
    cell["confirm_sizes"] = sizes


def report(args: argparse.Namespace, results: dict[tuple[str, int], dict[str, Any]]) -> str:
    head = ["workload", "clients", *[f"p{n}" for n in args.sizes], "best", "auto", "auto/best", "auto size"]
    if args.confirm:
        head += ["rounds best/auto", "auto/best (median)", "auto size"]
    rows = [head]
    for (w, c), cell in results.items():
        fixed = {n: cell.get(f"p{n}") for n in args.sizes}
        best = best_size(args, cell)
        auto, sizes = cell.get("auto"), cell.get("auto_sizes") or []
        ratio = auto / fixed[best] if auto is not None and best is not None and fixed[best] else None
        verdict = "" if ratio is None else (" ok" if ratio >= 0.95 else " BELOW 95%")
        row = [w, str(c), *[f"{v:.0f}" if v is not None else "-" for v in fixed.values()],
               f"p{best}" if best is not None else "-", f"{auto:.0f}" if auto is not None else "-",
               f"{ratio:.2f}{verdict}" if ratio is not None else "-", _sizes(sizes)]
        if args.confirm:
            pairs = cell.get("confirm") or []
            med = statistics.median(a / f for f, a in pairs) if pairs else None
            row += [" ".join(f"{f:.0f}/{a:.0f}" for f, a in pairs) or "-",
                    f"{med:.2f}{' ok' if med >= 0.95 else ' BELOW 95%'}" if med is not None else "-",
                    _sizes(cell.get("confirm_sizes") or [])]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(v.rjust(widths[i]) for i, v in enumerate(r)) for r in rows)


def _sizes(sizes: list[int]) -> str:
    return f"{statistics.median(sizes):.0f} ({min(sizes)}-{max(sizes)})" if sizes else "-"


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    conf = {"max_connections": max(args.sizes) + (0 if args.no_auto else AUTO_CAP) + 60, "shared_buffers": "256MB"}
    with PgCluster(replicas=0, conf_extra=conf) as cluster, tempfile.TemporaryDirectory() as tmp:
        primary, user = cluster.primary, cluster.superuser
        binary = cluster.bin("pgbench")
        primary.psql(f"CREATE DATABASE {DB}")
        init = subprocess.run([binary, "-i", "-q", "-s", str(args.scale), "-h", HOST, "-p", str(primary.port),
                               "-U", user, DB], capture_output=True, text=True, timeout=900)
        if init.returncode != 0:
            raise SystemExit(f"pgbench -i failed:\n{init.stderr}")
        sleep = os.path.join(tmp, "sleep.sql")
        with open(sleep, "w") as f:
            f.write("SELECT pg_sleep(0.01);\n")
        os.chmod(tmp, 0o755)
        os.chmod(sleep, 0o644)
        proc, port, log_path = start_pgmux(cluster, aliases(args, primary), bool(args.log), args.workers)
        ctx = {"pgbench": binary, "port": port, "user": user, "sleep": sleep}
        results: dict[tuple[str, int], dict[str, Any]] = {}
        try:
            for w in args.workloads:
                for c in args.clients:
                    cell = results[(w, c)] = {}
                    for n in args.sizes:
                        cell[f"p{n}"], _ = run_cell(ctx, w, c, f"{DB}_p{n}", args, False)
                        log(f"{w} c{c} pool_size={n}: {cell[f'p{n}']} tps")
                    if not args.no_auto:
                        cell["auto"], cell["auto_sizes"] = run_cell(ctx, w, c, f"{DB}_auto_{w}_c{c}", args, True)
                        log(f"{w} c{c} pool_size=auto: {cell['auto']} tps, sizes {cell['auto_sizes']}")
                        best = best_size(args, cell)
                        if args.confirm and best is not None:
                            confirm(ctx, w, c, best, args, cell)
        finally:
            stop_process(proc, timeout=10)
            if args.log:
                shutil.copyfile(log_path, args.log)
        if proc.returncode not in (0, None, -15):
            log(f"pgmux exited {proc.returncode}")
    print(f"\npgbench -j 2 -T {args.duration} (after {args.warmup} s of warm-up), scale {args.scale}, TPS; "
          f"pgmux transaction mode, {args.workers} worker process(es); auto bounded by "
          f"max_db_connections={AUTO_CAP}; {os.cpu_count()} CPUs")
    if args.confirm:
        print(f"confirming rounds: the sweep's best fixed size and a cold auto pool (after {args.auto_warmup} s "
              f"of warm-up, its learning) in {args.confirm} paired rounds, order alternating")
    print(report(args, results))
    return 0


if __name__ == "__main__":
    started = time.monotonic()
    code = main(sys.argv[1:])
    log(f"sweep took {time.monotonic() - started:.0f}s")
    raise SystemExit(code)
