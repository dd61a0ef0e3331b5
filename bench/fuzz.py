"""A long fuzz campaign against a live pgmux (issue 11): hostile startup packets and post-login messages.

    python3 bench/fuzz.py                       # 10^6 cases (default), at most --seconds
    python3 bench/fuzz.py --cases 20000 --conns 8 --seed 3

The script starts its own throwaway PostgreSQL and a pgmux in front of it (two databases on the same
PostgreSQL database: `fz_tx` in transaction pooling, `fz_sess` in session pooling), then runs --conns
workers at once. Each worker logs in and sends batches of messages (valid, mutated, unknown types,
COPY messages out of place, FunctionCalls...), pipelined behind one another, each batch closed by a
Sync and a marker query `ROLLBACK; SELECT <n>` whose row must come back. From time to time a batch ends
in a terminal case instead (a length below 4 or above max_packet_size: pgmux must answer with an error
and close; a message cut short: the worker goes away), and some connections send a startup packet
(valid ones with odd parameters, lying lengths, flipped bytes, SSL/GSS/cancel requests, random bytes).
A case is one message or packet sent.

It reports:
- crashes: pgmux exited;
- hangs: a marker that did not come back, or an error-and-close that did not come, within --timeout;
  a probe client that did not get `SELECT 1` answered within --timeout (one probe a second);
- wrong replies: a marker row that did not match;
- tracebacks and `internal error` lines in pgmux's log, grouped by their last line;
- RSS and open fds of the pgmux process, after the warm-up and at the end.
Batches that hung are written to --out (hex) to be replayed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import fuzzgen  # noqa: E402

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

MAX_PACKET = 1 << 20
DATABASES = ["fz_tx", "fz_sess"]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Stats:
    def __init__(self) -> None:
        self.cases = 0
        self.batches = 0
        self.logins = 0
        self.startups = 0
        self.hangs: list[str] = []
        self.wrong: list[str] = []
        self.closed_by_error = 0
        self.probe_ok = 0


class Conn:
    """A raw protocol v3 connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.r, self.w = reader, writer

    @classmethod
    async def open(cls, port: int) -> Conn:
        reader, writer = await asyncio.open_connection(HOST, port)
        return cls(reader, writer)

    async def msg(self) -> tuple[bytes, bytes]:
        hdr = await self.r.readexactly(5)
        (n,) = struct.unpack("!i", hdr[1:])
        return hdr[:1], await self.r.readexactly(n - 4)

    async def login(self, db: str, user: str, timeout: float) -> bool:
        self.w.write(m.startup_message({"user": user, "database": db}))
        async with asyncio.timeout(timeout):
            while True:
                t, _ = await self.msg()
                if t == b"Z":
                    return True
                if t == b"E":
                    return False

    def abort(self) -> None:
        """Close with a RST: no TIME_WAIT left behind by a hundred thousand short connections."""
        sock = self.w.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        self.w.transport.abort()


async def until_marker(c: Conn, marker: int) -> str:
    """Read up to the marker's ReadyForQuery. 'ok', 'closed' (an error then EOF) or 'wrong: ...'."""
    want = str(marker).encode()
    got = None
    while True:
        try:
            t, body = await c.msg()
        except (asyncio.IncompleteReadError, ConnectionError):
            return "closed"
        if t == b"G":  # COPY FROM STDIN after all (a mutated query): end it
            c.w.write(fuzzgen.frame(b"f", b"fuzz\x00"))
        elif t == b"D" and body[:2] == b"\x00\x01" and body[6:] == want:
            got = body
        elif t == b"C" and body == b"SELECT 1\x00" and got is not None:
            return "ok-pending"
        elif t == b"Z" and got is not None:
            return "ok"


async def batches(c: Conn, r: random.Random, st: Stats, args: argparse.Namespace, db: str) -> None:
    for _ in range(r.randint(1, 40)):
        if st.cases >= args.cases:
            return
        n = r.randint(1, 30)
        msgs = [fuzzgen.post_login(r) for _ in range(n)]
        if r.random() < 0.02:  # a terminal case ends the connection
            data, must_close = fuzzgen.terminal(r, MAX_PACKET)
            c.w.write(b"".join(msgs) + data)
            st.cases += n + 1
            if must_close:
                await expect_close(c, st, args, data, db)
            return
        marker = r.randrange(10**9)
        batch = b"".join(msgs) + fuzzgen.frame(b"S", b"") + fuzzgen.frame(
            b"Q", f"ROLLBACK; SELECT {marker}\x00".encode())
        c.w.write(batch)
        st.cases += n
        st.batches += 1
        try:
            async with asyncio.timeout(args.timeout):
                res = await until_marker(c, marker)
                if res == "ok-pending":
                    res = await until_marker_z(c)
        except TimeoutError:
            note_hang(st, args, f"{db}: no marker within {args.timeout}s", batch)
            return
        if res == "closed":
            st.closed_by_error += 1
            return
        if res != "ok":
            st.wrong.append(f"{db}: {res}")
            return


async def until_marker_z(c: Conn) -> str:
    while True:
        try:
            t, _ = await c.msg()
        except (asyncio.IncompleteReadError, ConnectionError):
            return "closed"
        if t == b"Z":
            return "ok"


async def expect_close(c: Conn, st: Stats, args: argparse.Namespace, data: bytes, db: str) -> None:
    """A bad length: pgmux must answer with an error (messages before it may be answered first) and
    close. Replies to the earlier messages may come before it."""
    try:
        async with asyncio.timeout(args.timeout):
            while True:
                try:
                    await c.msg()
                except (asyncio.IncompleteReadError, ConnectionError):
                    st.closed_by_error += 1
                    return
    except TimeoutError:
        note_hang(st, args, f"{db}: no close after a bad length", data[-200:])


def note_hang(st: Stats, args: argparse.Namespace, what: str, data: bytes) -> None:
    st.hangs.append(what)
    with open(args.out, "a") as f:
        f.write(f"{what}\n{data.hex()}\n")


async def startup_case(r: random.Random, st: Stats, args: argparse.Namespace, user: str) -> None:
    pkt, complete = fuzzgen.startup(r, DATABASES, user)
    c = await Conn.open(args.port)
    st.cases += 1
    st.startups += 1
    try:
        c.w.write(pkt)
        if not complete:
            return
        try:
            async with asyncio.timeout(args.timeout):
                while True:
                    chunk = await c.r.read(65536)
                    if not chunk or b"Z\x00\x00\x00\x05" in chunk or chunk == b"N":
                        return
        except TimeoutError:
            note_hang(st, args, "startup: no reply and no close", pkt)
        except ConnectionError:
            return
    finally:
        c.abort()


async def worker(wid: int, st: Stats, args: argparse.Namespace, user: str, deadline: float) -> None:
    r = random.Random(args.seed * 1000 + wid)
    while st.cases < args.cases and time.monotonic() < deadline and args.alive:
        try:
            if r.random() < 0.1:
                await startup_case(r, st, args, user)
                continue
            db = r.choice(DATABASES)
            c = await Conn.open(args.port)
            try:
                if not await c.login(db, user, args.timeout):
                    st.wrong.append(f"{db}: login refused")
                    continue
                st.logins += 1
                await batches(c, r, st, args, db)
            finally:
                c.abort()
        except TimeoutError:
            st.hangs.append("login: no ReadyForQuery")
        except (ConnectionError, asyncio.IncompleteReadError, OSError) as e:
            st.wrong.append(f"connection: {e!r}")


async def probe(st: Stats, args: argparse.Namespace, user: str, deadline: float) -> None:
    while st.cases < args.cases and time.monotonic() < deadline and args.alive:
        t0 = time.monotonic()
        try:
            async with asyncio.timeout(args.timeout):
                c = await Conn.open(args.port)
                try:
                    if not await c.login("fz_tx", user, args.timeout):
                        raise OSError("probe login refused")
                    c.w.write(fuzzgen.frame(b"Q", b"SELECT 1\x00"))
                    while True:
                        t, body = await c.msg()
                        if t == b"Z":
                            break
                    st.probe_ok += 1
                finally:
                    c.abort()
        except (TimeoutError, OSError, asyncio.IncompleteReadError) as e:
            st.hangs.append(f"probe: SELECT 1 not answered ({e!r})")
        await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - t0)))


def proc_figures(pid: int) -> tuple[int, int]:
    """(RSS in kB, open fds) of a process."""
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


async def watch(proc: subprocess.Popen[bytes], st: Stats, args: argparse.Namespace, deadline: float) -> None:
    last = 0
    while args.alive and st.cases < args.cases and time.monotonic() < deadline:
        if proc.poll() is not None:
            args.alive = False
            log(f"CRASH: pgmux exited with code {proc.returncode}")
            return
        if st.cases - last >= 50000:
            last = st.cases
            rss, fds = proc_figures(proc.pid)
            log(f"{st.cases} cases, {st.batches} batches, {st.logins} logins, {st.startups} startups, "
                f"{len(st.hangs)} hangs, rss {rss // 1024} MB, {fds} fds")
        await asyncio.sleep(0.5)


async def campaign(proc: subprocess.Popen[bytes], args: argparse.Namespace, user: str) -> tuple[Stats, tuple[int, int]]:
    st = Stats()
    deadline = time.monotonic() + args.seconds
    # Warm-up: the pools fill, so that RSS growth is growth, not start-up.
    warm = argparse.Namespace(**{**vars(args), "cases": max(1000, min(args.cases // 10, 20000))})
    await asyncio.gather(*(worker(i + 10**6, st, warm, user, deadline) for i in range(args.conns)))
    await asyncio.sleep(1)
    base = proc_figures(proc.pid)
    st.cases = 0
    await asyncio.gather(watch(proc, st, args, deadline), probe(st, args, user, deadline),
                         *(worker(i, st, args, user, deadline) for i in range(args.conns)))
    return st, base


def tracebacks(log_path: str) -> Counter[str]:
    """Exceptions in pgmux's log: the last line of each traceback, plus `internal error` lines."""
    found: Counter[str] = Counter()
    text = Path(log_path).read_text(errors="replace")
    for block in re.findall(r"Traceback \(most recent call last\):\n((?:[ \t].*\n)+)(.*)", text):
        where = [ln.strip() for ln in block[0].splitlines() if ln.strip().startswith("File ")]
        kind = re.sub(r"'[^']*'|\"[^\"]*\"|\d+", "_", block[1].strip())[:100]  # the kind, not the instance
        found[f"{kind}  at {where[-1] if where else '?'}"] += 1
    return found


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=1_000_000)
    ap.add_argument("--seconds", type=float, default=3600)
    ap.add_argument("--conns", type=int, default=16)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=15.0, help="bound for a reply (hang detection)")
    tmp = tempfile.gettempdir()
    ap.add_argument("--out", default=f"{tmp}/pgmux-fuzz-hangs.txt", help="batches that hung, in hex")
    ap.add_argument("--log", default=f"{tmp}/pgmux-fuzz.log", help="where pgmux's log is copied at the end")
    args = ap.parse_args(argv)
    args.alive = True
    with PgCluster(replicas=0, conf_extra={"max_connections": 200}) as cluster:
        user, primary = cluster.superuser, cluster.primary
        primary.psql("CREATE DATABASE fz")
        primary.psql("CREATE TABLE fz (x int); GRANT ALL ON fz TO PUBLIC", db="fz")
        args.port = free_port()
        base = cluster.base_dir
        conn = f"host={primary.host} port={primary.port} dbname=fz"
        settings = {"listen_addr": HOST, "listen_port": args.port, "unix_socket_dir": "", "auth_type": "trust",
                    "auth_file": f"{base}/userlist.txt", "max_client_conn": 1000, "default_pool_size": 20,
                    "max_packet_size": MAX_PACKET, "log_connections": 0, "log_disconnections": 0,
                    "admin_users": user}
        databases = {"fz_tx": f"{conn} pool_mode=transaction", "fz_sess": f"{conn} pool_mode=session"}
        cluster.write_owned(f"{base}/userlist.txt", render_userlist({user: ""}), mode=0o644)
        cluster.write_owned(f"{base}/fuzz.ini", render_ini(databases, settings), mode=0o644)
        log_path = f"{base}/pgmux.log"
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(die_with_parent(
                [sys.executable, "-m", "pgmux", *pgmux_user_args(), f"{base}/fuzz.ini"]),
                                    stdout=out, stderr=out, stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_listening(proc, HOST, args.port, 20)
            started = time.monotonic()
            log(f"pgmux pid {proc.pid} on {HOST}:{args.port}, PostgreSQL {primary.port}; {args.cases} cases, "
                f"{args.conns} connections, seed {args.seed}")
            st, (rss0, fd0) = asyncio.run(campaign(proc, args, user))
            took = time.monotonic() - started
            crashed = proc.poll() is not None
            rss1, fd1 = (0, 0) if crashed else proc_figures(proc.pid)
        finally:
            code = stop_process(proc, 10)
        shutil.copyfile(log_path, args.log)
        tb = tracebacks(args.log)
        print(f"\ncases {st.cases} ({st.batches} batches of post-login messages over {st.logins} logins, "
              f"{st.startups} startup packets) in {took:.0f}s, seed {args.seed}")
        print(f"crashes {int(crashed)}  hangs {len(st.hangs)}  wrong replies {len(st.wrong)}  "
              f"closed by an error {st.closed_by_error}  probes answered {st.probe_ok}")
        print(f"tracebacks in pgmux's log ({args.log}): {sum(tb.values())}")
        for line, n in tb.most_common():
            print(f"  {n:6d}  {line}")
        print(f"pgmux RSS {rss0 // 1024} MB after warm-up -> {rss1 // 1024} MB at the end "
              f"({(rss1 - rss0) / 1024:+.1f} MB); fds {fd0} -> {fd1}; exit code after SIGTERM {code}")
        for what, n in Counter(st.hangs + st.wrong).most_common(10):
            print(f"  {n:6d}  {what}")
        return 1 if crashed or st.hangs or st.wrong else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
