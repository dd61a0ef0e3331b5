"""`pgmux demo`: a throwaway primary (+ replicas) with pgmux in front, and the psql commands to try it.

Everything lives in one temp dir and goes away on Ctrl-C or SIGTERM: pgmux (by PID), the PostgreSQL
servers, the dir. As root, PostgreSQL runs as an unprivileged OS user (see testing/osuser.py), and so
does pgmux: it refuses root, so it is started with `-u` that user and switches to it itself.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from types import FrameType

from pgmux.testing.cluster import (
    HOST,
    ClusterError,
    PgCluster,
    die_with_parent,
    free_port,
    port_accepts,
    render_ini,
    render_userlist,
    server_os_user,
    stop_process,
    wait_listening,
)

DEFAULT_PORT = 6432


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="pgmux demo", description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--port", type=int, default=None,
                   help=f"port pgmux listens on (default {DEFAULT_PORT}, or a free one if that is taken)")
    p.add_argument("--replicas", type=int, default=1, help="streaming replicas to start (default 1)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (data, config, logs) on exit")
    p.add_argument("--timeout", type=float, default=0,
                   help="stop by itself after this many seconds (default 0: run until Ctrl-C)")
    args = p.parse_args(argv)
    if args.replicas < 0:
        p.error("--replicas must be >= 0")
    return args


def _pick_port(requested: int | None) -> int:
    if requested is not None:
        return requested
    return DEFAULT_PORT if not port_accepts(HOST, DEFAULT_PORT, timeout=0.2) else free_port()


def _prepare_app_db(cluster: PgCluster) -> None:
    cluster.primary.psql("CREATE DATABASE app")
    cluster.primary.psql(
        "CREATE TABLE greetings (id serial PRIMARY KEY, msg text NOT NULL, at timestamptz DEFAULT now());"
        "INSERT INTO greetings (msg) VALUES ('hello from the primary'), ('pooled by pgmux');",
        db="app",
    )
    cluster.wait_for_replay()


def _write_config(cluster: PgCluster, port: int) -> str:
    nodes = cluster.nodes
    line = f"host={','.join(n.host for n in nodes)} port={','.join(str(n.port) for n in nodes)} dbname=app"
    if cluster.replicas:
        # Read/write split: reads to the replicas, writes and transactions to the primary.
        line += (" pgmux_roles=" + ",".join(n.role for n in nodes)
                 + " pgmux_read_write_split=1 pgmux_read_your_writes=1")
    databases = {"app": line}
    userlist_path = os.path.join(cluster.base_dir, "userlist.txt")
    settings = {
        "listen_addr": HOST,
        "listen_port": port,
        "unix_socket_dir": cluster.base_dir,
        "auth_type": "trust",
        "auth_file": userlist_path,
        "pool_mode": "transaction",
        "default_pool_size": 20,
        "max_client_conn": 200,
        "admin_users": cluster.superuser,
    }
    with open(userlist_path, "w") as f:
        f.write(render_userlist({cluster.superuser: ""}))
    ini_path = os.path.join(cluster.base_dir, "pgbouncer.ini")
    with open(ini_path, "w") as f:
        f.write(render_ini(databases, settings))
    return ini_path


def _banner(cluster: PgCluster, port: int, ini_path: str, log_path: str) -> str:
    user = cluster.superuser
    psql = f"psql -h {HOST} -p {port} -U {user}"
    lines = [
        "",
        f"pgmux demo is running on {HOST}:{port} (pool_mode=transaction)",
        f"  primary   PostgreSQL on {HOST}:{cluster.primary.port}",
        *[f"  {r.name:<9} PostgreSQL on {HOST}:{r.port} (hot standby)" for r in cluster.replicas],
        "",
        "Connect through the pooler:",
        f"  {psql} app                 # table `greetings`",
    ]
    if cluster.replicas:
        lines += [
            "    read/write split: an autocommit read goes to a replica, a write or a transaction not",
            "    declared READ ONLY to the primary; after a write, your reads wait for a replica to",
            "    replay it (read-your-writes). Try: SELECT pg_is_in_recovery();",
        ]
    lines += [
        f"  postgresql://{user}@{HOST}:{port}/app",
        "",
        "Admin console:",
        f"  {psql} pgbouncer           # then: SHOW HOSTS;  SHOW POOLS;  SHOW SERVERS;  SHOW STATS;",
        "",
        "auth_type=trust: no password is asked of any user listed in userlist.txt (the auth_file).",
        "Fine on 127.0.0.1 for a demo, never anywhere else.",
        f"Config: {ini_path}",
        f"Log:    {log_path}",
        "",
        "Press Ctrl-C to stop and remove everything.",
    ]
    return "\n".join(lines)


def run_demo(argv: list[str]) -> int:
    args = _parse(argv)
    stop_requested: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop_requested.append(signum)

    old_handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    cluster = PgCluster(replicas=args.replicas, keep=args.keep)
    child: subprocess.Popen[bytes] | None = None
    status = 0
    try:
        print(f"starting PostgreSQL (primary + {args.replicas} replica(s))...", file=sys.stderr, flush=True)
        cluster.start()
        _prepare_app_db(cluster)
        port = _pick_port(args.port)
        ini_path = _write_config(cluster, port)
        log_path = os.path.join(cluster.base_dir, "pgmux.log")
        with open(log_path, "ab") as log:
            # Its own session: Ctrl-C reaches us only, and we stop pgmux first, then PostgreSQL.
            # pgmux refuses root: as root it switches to the OS user PostgreSQL runs as (`-u`), which
            # owns the temp dir (the Unix socket goes there, and reloads read the config from it).
            osuser = server_os_user()
            switch = ["-u", osuser.name] if osuser.switch else []
            child = subprocess.Popen(die_with_parent([sys.executable, "-m", "pgmux", *switch, ini_path]), stdout=log,
                                     stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_listening(child, HOST, port, timeout=20)
        except ClusterError as e:
            print(f"pgmux did not start: {e}\n--- {log_path} ---\n{_tail(log_path)}", file=sys.stderr)
            return 1
        print(_banner(cluster, port, ini_path, log_path), flush=True)
        deadline = time.monotonic() + args.timeout if args.timeout > 0 else None
        while not stop_requested and (deadline is None or time.monotonic() < deadline):
            if child.poll() is not None:
                print(f"pgmux exited with code {child.returncode}\n--- {log_path} ---\n{_tail(log_path)}",
                      file=sys.stderr)
                status = 1
                break
            time.sleep(0.2)
        return status
    except ClusterError as e:
        print(f"pgmux demo: {e}", file=sys.stderr)
        return 1
    finally:
        print("stopping...", file=sys.stderr, flush=True)
        if child is not None:
            # SIGINT: running transactions finish, idle sessions (a psql left open) do not hold it up.
            stop_process(child, timeout=10, sig=signal.SIGINT)
        try:
            cluster.stop()
        except ClusterError as e:
            print(f"pgmux demo: {e}", file=sys.stderr)
        if args.keep and cluster.base_dir:
            print(f"kept {cluster.base_dir}", file=sys.stderr)
        for s, h in old_handlers.items():
            signal.signal(s, h)


def _tail(path: str, n: int = 4000) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()[-n:]
    except OSError:
        return ""


if __name__ == "__main__":
    raise SystemExit(run_demo(sys.argv[1:]))
