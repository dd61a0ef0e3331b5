#!/usr/bin/env python3
"""pgmux's own work per pgbench-like transaction, in process: no sockets, no PostgreSQL, no kernel.

The real App and sessions (tests/unit/fakes.py's Rig) with transports that only remember the last
write: 5 clients share 2 servers (most clients wait for a server, as at `pgbench -c 50` on a pool of
20) and each sends the pgbench -S transaction of the chosen protocol mode; the fake servers answer.
What it measures is the Python (and pgmux._speedups) work of the relay and the hand-off, which is
what separates pgmux from PgBouncer once the syscalls are equal (see README, Benchmark).

    python3 bench/inprocess.py [--mode simple|extended|prepared|connect] [--count N]
    python3 bench/inprocess.py --instructions     # with valgrind: instructions per transaction,
                                                   # repeatable whatever else the machine does
    python3 bench/inprocess.py --metrics ...       # with the histograms of metrics_listen on

`--mode connect` is pgbench -S -C instead: each transaction is a new client (through the real
ClientProtocol, logging to a file with log_connections and log_disconnections on, as by default) that
logs in with trust, runs one query on the pool's server and leaves. The socket options go to a stub
here, so the cost of the event loop's socket objects is not in it.

Wall-clock figures include the harness and vary with the machine; compare instruction counts.
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "unit"))

from fakes import Rig  # noqa: E402

from pgmux.protocol import messages as m  # noqa: E402
from pgmux.protocol.scans import ANY_LENGTH, message_end  # noqa: E402

SQL = "SELECT abalance FROM pgbench_accounts WHERE aid = $1"
PARSE_COMPLETE = m.message(m.PARSE_COMPLETE)
CLOSE_COMPLETE = m.message(m.CLOSE_COMPLETE)


class LastWrite:
    """A transport that keeps only what was written last (the fake server looks at it). Its `write` is
    a C method (a deque's append), so the count is pgmux's work and not the harness's: a Python
    `write` cost more than a thousand instructions per transaction."""

    def __init__(self) -> None:
        self.kept: deque[bytes | memoryview] = deque([b""], maxlen=1)
        self.write = self.kept.append

    @property
    def last(self) -> bytes | memoryview:
        return self.kept[0]

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


def _answers(written: bytes | memoryview) -> bytes:
    """The replies to the Close and Parse messages pgmux put first (a statement the server lacked, or
    held from before the client's own Parse): CloseComplete and ParseComplete, in order."""
    data = bytes(written)
    out, pos = [], 0
    while pos + 5 <= len(data) and data[pos:pos + 1] in (b"C", b"P"):
        out.append(CLOSE_COMPLETE if data[pos:pos + 1] == b"C" else PARSE_COMPLETE)
        pos = message_end(data, pos, ANY_LENGTH)
    return b"".join(out)


def _bind(i: int, statement: bytes) -> bytes:
    v = str(i).encode()
    return m.message(m.BIND, b"\x00" + statement + b"\x00\x00\x00\x00\x01" + struct.pack("!i", len(v)) + v
                     + b"\x00\x00")


class Workload:
    def __init__(self, mode: str, metrics: bool = False) -> None:
        rig = Rig(Path(tempfile.mkdtemp()), settings="default_pool_size = 2")
        rig.app.registry.set_timings(metrics)  # what metrics_listen turns on (runtime/web.py)
        clients = [rig.login() for _ in range(5)]
        first = m.row_description([("a", 23)]) + m.data_row([1]) + m.command_complete("SELECT 1")
        clients[0].send(m.query("SELECT 1"))
        clients[1].send(m.query("SELECT 1"))
        for s in rig.servers[1:]:
            rig.server_login(s)
        for s in rig.servers:
            s.send(first + m.ready_for_query(b"I"))
            s.take()  # the query, answered
        assert len(rig.servers) == 2
        reply = (m.row_description([("abalance", 23)]) + m.data_row([1]) + m.command_complete("SELECT 1")
                 + m.ready_for_query(b"I"))
        describe_execute_sync = (m.message(m.DESCRIBE, b"P\x00") + m.message(m.EXECUTE, b"\x00\x00\x00\x00\x00")
                                 + m.message(m.SYNC))
        if mode == "prepared":  # pgbench -M prepared: Parse once per client, then Bind/Describe/Execute/Sync
            parse = m.message(m.PARSE, b"P0_1\x00" + SQL.encode() + b"\x00\x00\x00")
            for c in clients:
                c.send(parse + m.message(m.SYNC))
                for s in rig.servers:
                    if s.session.client is not None:
                        s.send(_answers(s.take()) + m.ready_for_query(b"I"))
                c.take()
            self.queries = [_bind(i, b"P0_1") + describe_execute_sync for i in range(5)]
            self.reply = m.message(m.BIND_COMPLETE) + reply
        elif mode == "extended":  # pgbench -M extended: unnamed Parse/Bind/Describe/Execute/Sync
            parse = m.message(m.PARSE, b"\x00" + SQL.encode() + b"\x00\x00\x00")
            self.queries = [parse + _bind(i, b"") + describe_execute_sync for i in range(5)]
            self.reply = PARSE_COMPLETE + m.message(m.BIND_COMPLETE) + reply
        else:
            self.queries = [m.query(f"SELECT abalance FROM pgbench_accounts WHERE aid = {i};") for i in range(5)]
            self.reply = reply
        self.parses = mode == "extended"
        self.clients = [c.session for c in clients]
        self.servers = [s.session for s in rig.servers]
        for session in self.clients + self.servers:
            session.transport = LastWrite()
        # The Rig's clock is a Python __call__: a C callable instead, which stays at the Rig's time (so
        # no server reaches server_lifetime), as cheap as the production clock (time.monotonic).
        still = itertools.repeat(rig.clock()).__next__
        for c in self.clients:
            c.clock = still
        rig.app.now = still

    def run(self, n: int) -> int:
        """Every client sends; the servers answer until none is linked; again, until n transactions."""
        done = 0
        while done < n:
            for c, q in zip(self.clients, self.queries, strict=True):
                c.data_received(q)
            while True:
                busy = [s for s in self.servers if s.client is not None]
                if not busy:
                    break
                for s in busy:
                    # A Parse pgmux put first (a statement this server lacked) gets its ParseComplete.
                    first = s.transport.last[:1]
                    # (-M extended: the client's own Parse comes first, and self.reply answers it)
                    own = first in (b"P", b"C") and not self.parses
                    s.data_received(_answers(s.transport.last) + self.reply if own else self.reply)
                    done += 1
        return done


class LoginTransport(LastWrite):
    """A new client's transport: a TCP peer, a socket that takes its options, no TLS."""

    class Sock:
        def setsockopt(self, *args: Any) -> None:
            pass

    sock = Sock()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return ("127.0.0.1", 40000)
        if name == "socket":
            return self.sock
        return default


class Logins:
    """pgbench -S -C: startup (as libpq sends it for pgbench), trust, one query, Terminate, close."""

    def __init__(self) -> None:
        from pgmux.net.protocols import ClientProtocol
        from pgmux.runtime.main import LogFiles

        tmp = Path(tempfile.mkdtemp())
        rig = Rig(tmp, settings=f"default_pool_size = 2\nlogfile = {tmp / 'pgmux.log'}")
        self.logs = LogFiles(rig.app.config, quiet=True, verbose=0)
        rig.app.now = itertools.repeat(rig.clock()).__next__  # a C clock, as Workload's (new clients take it)
        self.rig, self.protocol = rig, ClientProtocol
        self.startup = m.startup_message({"user": "alice", "database": "app", "application_name": "pgbench"})
        self.query = m.query("SELECT abalance FROM pgbench_accounts WHERE aid = 1;")
        self.reply = (m.row_description([("abalance", 23)]) + m.data_row([1]) + m.command_complete("SELECT 1")
                      + m.ready_for_query(b"I"))
        self.terminate = m.terminate()
        # Opens the pool's server, which then keeps pgbench's application_name, as with real pgbench.
        first = rig.login(application_name="pgbench")
        first.send(self.query)
        server = rig.servers[0]
        server.send(m.command_complete("SET") + m.ready_for_query(b"I") + self.reply)
        first.send(self.terminate)
        assert server.session.client is None and len(rig.servers) == 1

    def run(self, n: int) -> int:
        for i in range(n):
            proto = self.protocol(self.rig.app)
            proto.connection_made(LoginTransport())
            c = proto.session
            c.data_received(self.startup)
            c.data_received(self.query)
            server = c.server
            assert server is not None, c.state
            server.data_received(self.reply)
            c.data_received(self.terminate)
            proto.connection_lost(None)
            if i % 1000 == 999:
                self.logs.tick()  # the janitor's flush
        return n


def instructions(mode: str, metrics: bool = False) -> None:
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (apt-get install valgrind)")

    def count(n: int) -> int:
        out = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
                              __file__, "--mode", mode, "--count", str(n), "--warm", "200",
                              *(["--metrics"] if metrics else [])],
                             capture_output=True, text=True, check=True)
        for line in out.stderr.splitlines():
            if "Collected :" in line:
                return int(line.split(":")[-1])
        raise SystemExit(f"no instruction count in valgrind's output:\n{out.stderr[-2000:]}")

    small, large = count(2000), count(12000)  # the difference leaves out start-up and imports
    # (connect: per login, query and close)
    print(f"{mode}{' with metrics' if metrics else ''}: {(large - small) / 10000:.0f} instructions per transaction")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=("simple", "extended", "prepared", "connect"), default="simple")
    ap.add_argument("--count", type=int, default=100_000, help="transactions to time")
    ap.add_argument("--warm", type=int, default=1000, help="transactions before timing")
    ap.add_argument("--instructions", action="store_true", help="count instructions with valgrind instead")
    ap.add_argument("--metrics", action="store_true", help="pools keep metrics' histograms (metrics_listen on)")
    args = ap.parse_args()
    if args.instructions:
        instructions(args.mode, args.metrics)
        return
    w: Workload | Logins = Logins() if args.mode == "connect" else Workload(args.mode, args.metrics)
    w.run(args.warm)
    t0 = time.perf_counter()
    k = w.run(args.count)
    dt = time.perf_counter() - t0
    extra = " with metrics" if args.metrics else ""
    print(f"{args.mode}{extra}: {dt / k * 1e6:.2f} us per transaction in process (harness included)")


if __name__ == "__main__":
    main()
