#!/usr/bin/env python3
"""pgbench against PostgreSQL directly, through PgBouncer and through pgmux, in one run.

Both poolers read the same generated pgbouncer.ini (only listen_port differs) and take turns with
direct PostgreSQL in every round of every scenario, so drift on the machine hits all three alike.
The number that matters is the ratio pgmux/PgBouncer, not the absolute TPS. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from pgmux.testing.certs import Certs, make_certs
from pgmux.testing.cluster import (
    HOST,
    ClusterError,
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
TARGETS = ("direct", "pgbouncer", "pgmux")
# Not in the default run: pgmux with metrics_listen set and /metrics scraped every SCRAPE_EVERY seconds while
# pgbench runs (the cost of metrics: `--targets pgmux,pgmux-metrics`, compare the two).
EXTRA_TARGETS = ("pgmux-metrics",)
SCRAPE_EVERY = 1.0

# name -> pgbench arguments (besides -j/-T/-h/-p/-U). Add scenarios here, e.g. "-M prepared" once
# the poolers under test support it in transaction mode.
SCENARIOS: dict[str, list[str]] = {
    "select-simple-c50": ["-S", "-M", "simple", "-c", "50"],
    "select-simple-c200": ["-S", "-M", "simple", "-c", "200"],
    "select-extended-c50": ["-S", "-M", "extended", "-c", "50"],
    "select-extended-c200": ["-S", "-M", "extended", "-c", "200"],
    "select-connect-c20": ["-S", "-C", "-c", "20"],
    # Named prepared statements across server connections (transaction mode): PgBouncer 1.18 aborts
    # its clients here ("prepared statement does not exist"); pgmux tracks them.
    "select-prepared-c50": ["-S", "-M", "prepared", "-c", "50"],
    # The TLS bar (run with --tls client or --tls both): -S at 20 clients, and -C, where handshakes dominate.
    "select-simple-c20": ["-S", "-M", "simple", "-c", "20"],
}

POOLER_SETTINGS: dict[str, Any] = {
    "listen_addr": HOST,
    "auth_type": "trust",
    "pool_mode": "transaction",
    "default_pool_size": 20,
    "max_client_conn": 1000,
}


@dataclass
class Target:
    name: str
    port: int
    proc: subprocess.Popen[bytes] | None = None  # None for direct PostgreSQL
    log_path: str = ""
    dead: str = ""  # why this target stopped taking part, if it did
    metrics: str = ""  # HOST:PORT of its metrics listener, scraped during runs
    scrape_every: float = SCRAPE_EVERY
    scrapes: int = 0


@dataclass
class RunResult:
    tps: float | None
    txns: int = 0
    aborted: int = 0
    errors: int = 0
    cpu_us_per_txn: float | None = None
    note: str = ""


@dataclass
class Cell:
    runs: list[RunResult] = field(default_factory=list)

    def median_tps(self) -> float | None:
        values = [r.tps for r in self.runs if r.tps is not None]
        return statistics.median(values) if values else None

    def median_cpu(self) -> float | None:
        values = [r.cpu_us_per_txn for r in self.runs if r.cpu_us_per_txn is not None]
        return statistics.median(values) if values else None

    def aborted(self) -> int:
        return sum(r.aborted for r in self.runs)

    def errors(self) -> int:
        return sum(r.errors for r in self.runs)


# -- setup -----------------------------------------------------------------------------------------------


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def find_pgbouncer() -> str:
    found = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin:/usr/local/sbin")
    if found:
        return found
    if os.geteuid() != 0:
        raise SystemExit("pgbouncer not found, and only root may install it: apt-get install -y pgbouncer")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for attempt in range(2):
        log("pgbouncer not found: apt-get install -y pgbouncer")
        proc = subprocess.run(["apt-get", "install", "-y", "pgbouncer"], env=env, capture_output=True,
                              text=True, timeout=900)
        if proc.returncode == 0:
            break
        if attempt == 0:
            # A fresh machine may have no package lists yet.
            subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=600)
    found = shutil.which("pgbouncer", path="/usr/sbin:/usr/bin:/usr/local/sbin")
    if not found:
        raise SystemExit(f"could not install pgbouncer:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return found


def pooler_ini(cluster: PgCluster, port: int, userlist_path: str, tls: str, certs: Certs | None,
               extra: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None) -> str:
    """The ini both poolers read: `extra` under the common settings, `overrides` over them (None drops a key)."""
    settings: dict[str, Any] = {
        **(extra or {}),
        **POOLER_SETTINGS,
        "listen_port": port,
        "unix_socket_dir": cluster.base_dir,
        "auth_file": userlist_path,
        "admin_users": cluster.superuser,
        # Stated for both poolers, so that neither negotiates TLS with PostgreSQL unless asked to.
        "server_tls_sslmode": "require" if tls == "both" else "disable",
    }
    if certs is not None:
        settings.update(client_tls_sslmode="require", client_tls_cert_file=certs.path("server.crt"),
                        client_tls_key_file=certs.path("server.key"))
    settings.update(overrides or {})
    primary = cluster.primary
    return render_ini({DB: f"host={primary.host} port={primary.port} dbname={DB}"}, settings)


def start_pooler(name: str, cmd: list[str], cluster: PgCluster, popen_kwargs: dict[str, Any], tls: str,
                 certs: Certs | None, port: int | None = None, overrides: dict[str, Any] | None = None,
                 wait: bool = True) -> Target:
    """Start one pooler process from its own `<name>.ini`; `wait`: until it accepts on `port` (a fresh one
    by default). bench/scaling.py starts several on one port (so_reuseport) and waits its own way."""
    port = port if port is not None else free_port()
    userlist = os.path.join(cluster.base_dir, "userlist.txt")
    ini = os.path.join(cluster.base_dir, f"{name}.ini")
    metrics = f"{HOST}:{free_port()}" if name == "pgmux-metrics" else ""
    cluster.write_owned(userlist, render_userlist({cluster.superuser: ""}), mode=0o644)
    cluster.write_owned(ini, pooler_ini(cluster, port, userlist, tls, certs,
                                        {"metrics_listen": metrics} if metrics else None, overrides), mode=0o644)
    target = Target(name, port, log_path=os.path.join(cluster.base_dir, f"{name}.log"), metrics=metrics)
    with open(target.log_path, "ab") as out:
        target.proc = subprocess.Popen(die_with_parent([*cmd, ini]), stdout=out, stderr=out, stdin=subprocess.DEVNULL,
                                       cwd=cluster.base_dir, start_new_session=True, **popen_kwargs)
    if not wait:
        return target
    try:
        wait_listening(target.proc, HOST, port, timeout=20)
    except ClusterError as e:
        stop_process(target.proc)
        target.dead = f"did not start: {e}"
        log(f"{name} {target.dead}\n--- {target.log_path} ---\n{tail(target.log_path)}")
    return target


def tail(path: str, n: int = 3000) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()[-n:]
    except OSError:
        return ""


# -- measuring -----------------------------------------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        # The command name may hold spaces and parentheses: split after the last ')'.
        return f.read().rsplit(")", 1)[1].split()


def cpu_seconds(root_pid: int) -> float:
    """utime+stime of `root_pid`, of its reaped children, and of its living descendants (worker
    processes, if the pooler has them)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                children.setdefault(int(_stat_fields(int(entry))[1]), []).append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    ticks = 0
    stack, first = [root_pid], True
    while stack:
        pid = stack.pop()
        try:
            f = _stat_fields(pid)
        except OSError:
            continue
        # Fields 14-17 of proc(5): utime stime cutime cstime (indices 11-14 after the name).
        ticks += int(f[11]) + int(f[12]) + (int(f[13]) + int(f[14]) if first else 0)
        first = False
        stack.extend(children.get(pid, []))
    return ticks / CLK_TCK


def parse_pgbench(stdout: str, stderr: str) -> RunResult:
    tps = re.search(r"^tps = ([\d.]+)", stdout, re.M)
    txns = re.search(r"number of transactions actually processed: (\d+)", stdout)
    failed = re.search(r"number of failed transactions: (\d+)", stdout)
    error_lines = [ln for ln in stderr.splitlines() if "error" in ln.lower()]
    aborted = sum(1 for ln in error_lines if re.search(r"client \d+ .*aborted", ln))
    return RunResult(
        tps=float(tps.group(1)) if tps else None,
        txns=int(txns.group(1)) if txns else 0,
        aborted=aborted,
        errors=(int(failed.group(1)) if failed else 0) + len(error_lines) - aborted,
        note="" if tps else (stderr.strip().splitlines() or ["no tps in pgbench output"])[-1],
    )


def run_pgbench(pgbench: str, target: Target, args: list[str], duration: int, user: str,
                tls: str = "off") -> RunResult:
    cmd = [pgbench, "-n", "-j", "2", "-T", str(duration), *args, "-h", HOST, "-p", str(target.port),
           "-U", user, DB]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    # Direct PostgreSQL speaks TLS only when it has it (--tls both); the poolers whenever --tls is on.
    env["PGSSLMODE"] = "require" if tls == "both" or (tls == "client" and target.proc) else "disable"
    cpu_before = cpu_seconds(target.proc.pid) if target.proc else 0.0
    stop = threading.Event()
    scraper = threading.Thread(target=scrape_until, args=(target, stop), daemon=True)
    if target.metrics and target.scrape_every > 0:
        scraper.start()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 120, env=env,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return RunResult(tps=None, errors=1, note=f"pgbench timed out after {duration + 120}s")
    finally:
        stop.set()
        if scraper.is_alive():
            scraper.join()
    result = parse_pgbench(proc.stdout, proc.stderr)
    if target.proc and result.txns:
        result.cpu_us_per_txn = (cpu_seconds(target.proc.pid) - cpu_before) / result.txns * 1e6
    if target.proc and target.proc.poll() is not None:
        target.dead = f"exited with code {target.proc.returncode}"
        log(f"{target.name} {target.dead}\n--- {target.log_path} ---\n{tail(target.log_path)}")
    return result


def scrape_until(target: Target, stop: threading.Event) -> None:
    """GET /metrics every SCRAPE_EVERY seconds until `stop`, as a (busy) Prometheus would."""
    while not stop.wait(target.scrape_every):
        try:
            with urllib.request.urlopen(f"http://{target.metrics}/metrics", timeout=10) as r:
                r.read()
            target.scrapes += 1
        except OSError as e:
            log(f"{target.name}: scrape failed: {e}")


# -- reporting -----------------------------------------------------------------------------------------


def fmt(value: float | None, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def table(results: dict[str, dict[str, Cell]], targets: list[str]) -> str:
    poolers = [t for t in targets if t != "direct"]
    head = ["scenario", *[f"{t} tps" for t in targets]]
    if "pgmux" in targets and "pgbouncer" in targets:
        head.append("pgmux/pgbouncer")
    if "pgmux" in targets and "pgmux-metrics" in targets:
        head.append("metrics/pgmux")
    head += [f"{t} abort/err" for t in targets] + [f"{t} cpu us/txn" for t in poolers]
    rows = [head]
    for scenario, cells in results.items():
        row = [scenario, *[fmt(cells[t].median_tps()) for t in targets]]
        if "pgmux" in targets and "pgbouncer" in targets:
            m, b = cells["pgmux"].median_tps(), cells["pgbouncer"].median_tps()
            row.append(fmt(m / b if m and b else None, ".2f"))
        if "pgmux" in targets and "pgmux-metrics" in targets:
            m, b = cells["pgmux-metrics"].median_tps(), cells["pgmux"].median_tps()
            row.append(fmt(m / b if m and b else None, ".3f"))
        row += [f"{cells[t].aborted()}/{cells[t].errors()}" for t in targets]
        row += [fmt(cells[t].median_cpu(), ".1f") for t in poolers]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]

    def line(r: list[str]) -> str:
        cells = zip(r, widths, strict=True)
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(cells))

    lines = [line(r) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# -- main ----------------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--duration", type=int, default=10, help="seconds per pgbench run (default 10)")
    p.add_argument("--rounds", type=int, default=3, help="runs per scenario and target, median taken (min 3)")
    p.add_argument("--targets", default=",".join(TARGETS), help=f"comma list of {', '.join(TARGETS)}")
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma list of {', '.join(SCENARIOS)}")
    p.add_argument("--scale", type=int, default=10, help="pgbench -i scale (default 10)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (data, ini, logs)")
    p.add_argument("--scrape-every", type=float, default=SCRAPE_EVERY,
                   help="pgmux-metrics: seconds between GETs of /metrics during runs, 0 = none "
                        f"(default {SCRAPE_EVERY:g})")
    p.add_argument("--tls", choices=("off", "client", "both"), default="off",
                   help="client: pgbench speaks TLS to the poolers; both: and the poolers (and direct "
                        "pgbench) to a PostgreSQL with ssl = on (default off)")
    args = p.parse_args(argv)
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if args.rounds < 3:
        p.error("--rounds must be at least 3 (a median of fewer runs says little)")
    if bad := [t for t in args.targets if t not in TARGETS + EXTRA_TARGETS]:
        p.error(f"unknown targets {bad}; choose from {TARGETS + EXTRA_TARGETS}")
    if bad := [s for s in args.scenarios if s not in SCENARIOS]:
        p.error(f"unknown scenarios {bad}; choose from {list(SCENARIOS)}")
    if args.duration < 1:
        p.error("--duration must be >= 1")
    return args


def start_targets(names: list[str], cluster: PgCluster, pgbouncer: str, tls: str,
                  certs: Certs | None) -> list[Target]:
    targets: list[Target] = []
    for name in names:
        if name == "direct":
            targets.append(Target("direct", cluster.primary.port))
        elif name == "pgbouncer":
            # PgBouncer refuses to run as root: it runs as the cluster's OS user.
            osuser = cluster.os_user
            assert osuser is not None
            run_as = {**osuser.popen_kwargs(), "env": osuser.env()}
            targets.append(start_pooler(name, [pgbouncer], cluster, run_as, tls, certs))
        else:
            # pgmux refuses root too: as root it switches itself (-u) to the cluster's OS user.
            targets.append(start_pooler(name, [sys.executable, "-m", "pgmux", *pgmux_user_args()], cluster, {}, tls,
                                        certs))
    return targets


def run_rounds(args: argparse.Namespace, targets: list[Target], pgbench: str,
               user: str) -> dict[str, dict[str, Cell]]:
    # Warm up: fill the pools and the page cache; not counted.
    for t in targets:
        if not t.dead:
            run_pgbench(pgbench, t, ["-S", "-c", "20"], 2, user, args.tls)
    results = {s: {t.name: Cell() for t in targets} for s in args.scenarios}
    total, n = len(args.scenarios) * args.rounds * len(targets), 0
    for scenario in args.scenarios:
        for rnd in range(1, args.rounds + 1):
            for t in targets:
                n += 1
                if t.dead:
                    continue
                r = run_pgbench(pgbench, t, SCENARIOS[scenario], args.duration, user, args.tls)
                results[scenario][t.name].runs.append(r)
                cpu = f", {r.cpu_us_per_txn:.1f} us/txn" if r.cpu_us_per_txn is not None else ""
                log(f"[{n}/{total}] {scenario} round {rnd} {t.name}: {fmt(r.tps)} tps{cpu}, "
                    f"aborted {r.aborted}, errors {r.errors}{' ' + r.note if r.note else ''}")
    return results


def write_json(path: str, args: argparse.Namespace, results: dict[str, dict[str, Cell]]) -> None:
    doc = {
        "duration": args.duration, "rounds": args.rounds, "scale": args.scale,
        "pooler_settings": POOLER_SETTINGS, "scenarios": {s: SCENARIOS[s] for s in args.scenarios},
        "results": {
            s: {name: {"median_tps": c.median_tps(), "median_cpu_us_per_txn": c.median_cpu(),
                       "aborted": c.aborted(), "errors": c.errors(), "runs": [vars(r) for r in c.runs]}
                for name, c in cells.items()}
            for s, cells in results.items()
        },
    }
    with open(path, "w") as f:
        json.dump(doc, f, indent=2)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    pgbouncer = find_pgbouncer() if "pgbouncer" in args.targets else ""
    conf: dict[str, Any] = {"max_connections": 300, "shared_buffers": "256MB"}
    certs = make_certs() if args.tls != "off" else None
    if certs is not None and args.tls == "both":
        conf.update(ssl="on", ssl_cert_file=certs.path("server.crt"), ssl_key_file=certs.server_key_for_postgres())
    with PgCluster(replicas=0, conf_extra=conf, keep=args.keep) as cluster:
        primary, user = cluster.primary, cluster.superuser
        pgbench = cluster.bin("pgbench")
        log(f"PostgreSQL on {HOST}:{primary.port}, dir {cluster.base_dir}; pgbench -i -s {args.scale}")
        primary.psql(f"CREATE DATABASE {DB}")
        init = subprocess.run([pgbench, "-i", "-q", "-s", str(args.scale), "-h", HOST,
                               "-p", str(primary.port), "-U", user, DB],
                              capture_output=True, text=True, timeout=900)
        if init.returncode != 0:
            raise SystemExit(f"pgbench -i failed:\n{init.stderr}")
        targets: list[Target] = []
        try:
            targets = start_targets(args.targets, cluster, pgbouncer, args.tls, certs)
            for t in targets:
                t.scrape_every = args.scrape_every
            results = run_rounds(args, targets, pgbench, user)
        finally:
            for t in targets:
                if t.proc is not None:
                    stop_process(t.proc, timeout=10)
            if certs is not None:
                certs.cleanup()
    print()
    print(f"pgbench -j 2 -T {args.duration}, {args.rounds} rounds, median TPS; scale {args.scale}; "
          f"poolers: transaction mode, default_pool_size={POOLER_SETTINGS['default_pool_size']}; tls {args.tls}")
    print(table(results, [t.name for t in targets]))
    for t in targets:
        if t.dead:
            print(f"note: {t.name} {t.dead}")
        if t.metrics:
            print(f"note: {t.name}: /metrics scraped {t.scrapes} times, every {t.scrape_every:g} s during its runs")
    if args.json:
        write_json(args.json, args, results)
        print(f"wrote {args.json}")
    return 1 if any(t.dead for t in targets) else 0


if __name__ == "__main__":
    started = time.monotonic()
    code = main(sys.argv[1:])
    log(f"bench took {time.monotonic() - started:.0f}s")
    raise SystemExit(code)
