"""Memory per idle client (issue 11): RSS of a live pgmux with 10,000 idle logged-in clients, and after.

    python3 bench/memory.py                    # 10,000 clients, three storms
    python3 bench/memory.py --clients 2000 --storms 1

Starts its own throwaway PostgreSQL and pgmux (transaction pooling unless --pool-mode, auth trust, max_client_conn above
--clients), then per storm: opens --clients connections from this process (asyncio, raw protocol: a
StartupMessage, then reading up to ReadyForQuery, so the client side stays cheap), holds them idle,
reads pgmux's RSS, closes them all and reads the RSS again once pgmux has seen them go. Prints
RSS per idle client and the RSS after each storm against the baseline (one client logged in and out,
so that the pool and its server exist before the baseline is taken).

    python3 bench/memory.py --breakdown 2000   # where an idle client's bytes go

runs pgmux under tracemalloc (this file's `--child` mode wraps it) and prints, per idle logged-in
client, the allocations made by the logins that are still alive (by source line, biggest first), and
sys.getsizeof of what each ClientSession holds (objects shared between clients counted once).

    python3 bench/memory.py --arenas 10000     # what keeps memory resident after a storm

runs pgmux without tracemalloc and prints, after N clients came and left, CPython's small-object arenas
against the baseline and the few objects that keep each sparse arena alive (a 1 MiB arena goes back to
the OS only once all its objects are freed: see runtime/memtrim.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from pgmux.protocol import messages as m  # noqa: E402
from pgmux.testing.cluster import (  # noqa: E402
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


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class Idle(asyncio.Protocol):
    """A client that logs in and then only waits."""

    def __init__(self, ready: asyncio.Future[None]) -> None:
        self.ready = ready
        self.tail = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(m.startup_message({"user": USER, "database": "mem"}))

    def data_received(self, data: bytes) -> None:
        self.tail = (self.tail + data)[-6:]
        if self.tail[:5] == b"Z\0\0\0\5" and not self.ready.done():
            self.ready.set_result(None)
        elif b"E\0\0" in data and not self.ready.done():
            self.ready.set_exception(RuntimeError(f"login refused: {data!r}"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("closed during login"))

    def abort(self) -> None:
        if self.transport is not None:
            sock = self.transport.get_extra_info("socket")
            if sock is not None:  # RST: no TIME_WAIT left behind by 30,000 connections
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.transport.abort()


USER = "postgres"


async def login(port: int, n: int) -> list[Idle]:
    """n clients logged in and idle."""
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(200)
    held: list[Idle] = []

    async def one() -> None:
        async with gate:
            ready: asyncio.Future[None] = loop.create_future()
            proto = Idle(ready)
            await loop.create_connection(lambda: proto, HOST, port)
            held.append(proto)
            await asyncio.wait_for(ready, 60)

    await asyncio.gather(*(one() for _ in range(n)))
    return held


async def storm(port: int, n: int, pid: int, clients_gone: Callable[[], bool]) -> tuple[int, int]:
    """n idle clients: (RSS with all of them logged in, RSS after they left), in kB."""
    held = await login(port, n)
    await asyncio.sleep(2)
    full = rss_kb(pid)
    for p in held:
        p.abort()
    held.clear()
    deadline = time.monotonic() + 60
    while not clients_gone() and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    await asyncio.sleep(2)
    return full, rss_kb(pid)


def admin_clients(cluster: PgCluster, port: int) -> int:
    """Logged-in clients pgmux counts (SHOW POOLS cl_active + cl_waiting of database mem)."""
    out = subprocess.run([cluster.bin("psql"), "-X", "-A", "-t", "-h", HOST, "-p", str(port), "-U", USER,
                          "-d", "pgbouncer", "-c", "SHOW POOLS"], capture_output=True, text=True, timeout=30)
    total = 0
    for line in out.stdout.splitlines():
        cols = line.split("|")
        if cols and cols[0] == "mem":
            total += int(cols[2]) + int(cols[3])
    return total


def probe(ctl: Path, cmd: str) -> str:
    """One command to bench/memprobe.py inside pgmux, and its answer."""
    (ctl / "cmd.tmp").write_text(cmd)
    os.rename(ctl / "cmd.tmp", ctl / "cmd")
    deadline = time.monotonic() + 300
    while not (ctl / "out").exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"memprobe did not answer {cmd!r}")
        time.sleep(0.1)
    out = (ctl / "out").read_text()
    (ctl / "out").unlink()
    return out


async def breakdown(port: int, n: int, ctl: Path, clients_gone: Callable[[], bool]) -> None:
    probe(ctl, "snap")
    held = await login(port, n)
    await asyncio.sleep(2)
    print(probe(ctl, f"diff {n}"))
    print(probe(ctl, "sizes"), flush=True)
    for p in held:
        p.abort()
    deadline = time.monotonic() + 60
    while not clients_gone() and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    await asyncio.sleep(3)  # the janitor's trim
    print(f"after the {n} clients left (what a storm leaves behind):")
    print(probe(ctl, f"diff {n}"), flush=True)


async def arenas(port: int, n: int, ctl: Path, clients_gone: Callable[[], bool]) -> None:
    probe(ctl, "arenasnap")
    held = await login(port, n)
    await asyncio.sleep(2)
    for p in held:
        p.abort()
    deadline = time.monotonic() + 60
    while not clients_gone() and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    await asyncio.sleep(3)  # the janitor's trim and its second pass
    print(f"after {n} clients came and left:")
    print(probe(ctl, "arenas"), flush=True)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=10000)
    ap.add_argument("--storms", type=int, default=3)
    ap.add_argument("--env", action="append", default=[], help="NAME=VALUE for pgmux's environment")
    ap.add_argument("--pool-mode", default="transaction", choices=("session", "transaction", "statement"))
    ap.add_argument("--breakdown", type=int, metavar="N", help="where the bytes of N idle clients go")
    ap.add_argument("--arenas", type=int, metavar="N", help="the small-object arenas N clients leave, what keeps them")
    ap.add_argument("--pure", action="store_true", help="--breakdown with pgmux's .py modules, not compiled ones")
    args = ap.parse_args(argv)
    if args.breakdown or args.arenas:
        args.clients = args.breakdown or args.arenas
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, args.clients + 1000)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))  # pgmux inherits it
    if want < args.clients + 100:
        raise SystemExit(f"ulimit -n: {hard} is too low for {args.clients} clients")
    global USER
    with PgCluster(replicas=0) as cluster:
        USER = cluster.superuser
        primary = cluster.primary
        primary.psql("CREATE DATABASE mem")
        port = free_port()
        base = cluster.base_dir
        settings = {"listen_addr": HOST, "listen_port": port, "unix_socket_dir": "", "auth_type": "trust",
                    "auth_file": f"{base}/userlist.txt", "max_client_conn": args.clients + 100,
                    "pool_mode": args.pool_mode, "default_pool_size": 2, "log_connections": 0,
                    "log_disconnections": 0, "admin_users": USER, "listen_backlog": 1024}
        cluster.write_owned(f"{base}/userlist.txt", render_userlist({USER: ""}), mode=0o644)
        cluster.write_owned(f"{base}/mem.ini", render_ini(
            {"mem": f"host={primary.host} port={primary.port} dbname=mem"}, settings), mode=0o644)
        env = dict(os.environ)
        env.update(kv.split("=", 1) for kv in args.env)
        ctl = Path(f"{base}/memprobe")
        cmd = [sys.executable, "-m", "pgmux"]
        if args.breakdown or args.arenas:
            cluster.mkdir_owned(str(ctl))
            cmd = [sys.executable, str(Path(__file__).parent / "memprobe.py"), str(ctl)]
            cmd += ["--no-trace"] * bool(args.arenas) + ["--pure"] * args.pure
        with open(f"{base}/pgmux.log", "ab") as out:
            proc = subprocess.Popen(die_with_parent(
                [*cmd, *pgmux_user_args(), f"{base}/mem.ini"]), stdout=out,
                                    stderr=out, stdin=subprocess.DEVNULL, start_new_session=True, env=env)
        try:
            wait_listening(proc, HOST, port, 20)
            gone = lambda: admin_clients(cluster, port) == 0  # noqa: E731
            asyncio.run(storm(port, 1, proc.pid, gone))  # the pool, its server and the first login exist
            time.sleep(1)
            if args.breakdown:
                asyncio.run(breakdown(port, args.breakdown, ctl, gone))
                return 0
            if args.arenas:
                asyncio.run(arenas(port, args.arenas, ctl, gone))
                return 0
            baseline = rss_kb(proc.pid)
            print(f"pgmux pid {proc.pid}; baseline RSS {baseline / 1024:.1f} MB; {args.clients} idle clients per storm "
                  f"({args.pool_mode} pooling)")
            for i in range(args.storms):
                t0 = time.monotonic()
                full, after = asyncio.run(storm(port, args.clients, proc.pid, gone))
                print(f"storm {i + 1}: {full / 1024:.1f} MB with {args.clients} clients = "
                      f"{(full - baseline) * 1024 / args.clients:,.0f} bytes per idle client; "
                      f"after: {after / 1024:.1f} MB ({(after - baseline) * 100 / baseline:+.0f}% of baseline) "
                      f"[{time.monotonic() - t0:.0f}s]", flush=True)
        finally:
            stop_process(proc, 10)
        log = Path(f"{base}/pgmux.log").read_text(errors="replace")
        if "Traceback" in log:
            print(log[-3000:])
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
