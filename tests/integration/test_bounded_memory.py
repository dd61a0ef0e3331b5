"""Bounded memory per connection, measured on a running pgmux (VmRSS in /proc/<pid>/status).

A logged-in client that claims a message of about 1 GiB and streams data into it must not make pgmux
buffer it: in session pooling pgmux forwards it as it arrives (PostgreSQL's own limit for a message is
1 GiB - 2 bytes, so the claim stays just under it), and while PostgreSQL does not read, the server
socket's buffer pauses the client. In transaction pooling pgmux reads each Query whole, so a claim
above MAX_INSPECTED is refused at its header. PGMUX_TEST_STREAM_MB sets how much is sent (default 100).
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time

import pytest
from test_protocol import Wire, error_fields, rows

from conftest import PgmuxStarter
from pgmux.protocol import messages as m
from pgmux.protocol.codec import MAX_INSPECTED

PG_MAX_MESSAGE = 0x3FFFFFFE  # PostgreSQL's PQ_LARGE_MESSAGE_LIMIT + 4: the longest Query it accepts
LIMIT_MIB = 10  # the growth this test allows; the README states the per-connection bound
STREAM_MB = int(os.environ.get("PGMUX_TEST_STREAM_MB", "100"))


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


class PeakRss:
    """The highest VmRSS of `pid` while the block runs, sampled every 5 ms by a thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.base = self.peak = rss_kib(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_kib(self.pid))
            time.sleep(0.005)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.peak = max(self.peak, rss_kib(self.pid))

    @property
    def grown_mib(self) -> float:
        return (self.peak - self.base) / 1024


def _stream(sock: socket.socket, total: int, done: list[object]) -> None:
    """Send `total` bytes of the body, in 256 KiB writes; note the exception if one ends it."""
    chunk = b"x" * (256 * 1024)
    try:
        sent = 0
        while sent < total:
            sock.sendall(chunk)
            sent += len(chunk)
        done.append(sent)
    except OSError as e:
        done.append(e)


def test_claimed_gib_streams_in_session_mode_with_bounded_rss(pgmux_factory: PgmuxStarter) -> None:
    mux = pgmux_factory(settings={"pool_mode": "session", "default_pool_size": 2})
    with Wire(mux.host, mux.port, timeout=60) as w:
        w.login()
        assert rows(w.query("SELECT 1")) == [[b"1"]]  # the session's server, linked
        base = rss_kib(mux.pid)
        # PostgreSQL sleeps first and reads nothing meanwhile: pgmux must pause the client, not buffer.
        w.send(m.query("SELECT pg_sleep(3)") + b"Q" + struct.pack("!i", PG_MAX_MESSAGE))
        done: list[object] = []
        sender = threading.Thread(target=_stream, args=(w.sock, STREAM_MB << 20, done), daemon=True)
        started = time.monotonic()
        sender.start()
        peak = base
        while sender.is_alive() and time.monotonic() - started < 300:
            peak = max(peak, rss_kib(mux.pid))
            time.sleep(0.05)
        elapsed = time.monotonic() - started
        assert not sender.is_alive(), "the stream did not finish within 300 s"
        assert done == [STREAM_MB << 20], done
        peak = max(peak, rss_kib(mux.pid))
        grown_mib = (peak - base) / 1024
        print(f"streamed {STREAM_MB} MB in {elapsed:.1f} s; pgmux VmRSS {base} KiB -> peak {peak} KiB "
              f"(+{grown_mib:.1f} MiB)")
        assert grown_mib < LIMIT_MIB, f"pgmux grew by {grown_mib:.1f} MiB for {STREAM_MB} MB streamed"
        assert rows([msg for msg in w.read_until_ready()]) == [[b""]]  # pg_sleep's row (void)
    # The client left mid-message: its server is closed, and others are served.
    with Wire(mux.host, mux.port) as other:
        other.login()
        assert rows(other.query("SELECT 2")) == [[b"2"]]


@pytest.mark.parametrize(("claim", "code"), [(PG_MAX_MESSAGE, "54000"), (1 << 30, "08P01")])
def test_claimed_gib_query_refused_at_once_in_transaction_mode(pgmux_factory: PgmuxStarter, claim: int,
                                                               code: str) -> None:
    # 54000: above what pgmux reads whole; 08P01: above what PostgreSQL accepts at all (it would drop
    # the connection), whatever the pooling mode.
    mux = pgmux_factory(settings={"pool_mode": "transaction", "default_pool_size": 2})
    with Wire(mux.host, mux.port, timeout=30) as w:
        w.login()
        base = rss_kib(mux.pid)
        w.send(b"Q" + struct.pack("!i", claim) + b"SELECT ")  # refused at the header: no body needed
        err = error_fields(w.read_msg())
        assert err["S"] == "FATAL" and err["C"] == code, err
        if code == "54000":
            assert str(MAX_INSPECTED) in err["M"], err
        assert w.at_eof()
        assert (rss_kib(mux.pid) - base) / 1024 < LIMIT_MIB
    with Wire(mux.host, mux.port) as other:
        other.login()
        assert rows(other.query("SELECT 3")) == [[b"3"]]


def test_query_up_to_the_bound_is_held_whole_and_runs(pgmux_factory: PgmuxStarter) -> None:
    # Transaction pooling reads each Query whole: one just under MAX_INSPECTED still runs, and holding
    # it costs pgmux about twice its length (the bytes held, and the whole message once complete).
    mux = pgmux_factory(settings={"pool_mode": "transaction", "default_pool_size": 2})
    with Wire(mux.host, mux.port, timeout=60) as w:
        w.login()
        pad = MAX_INSPECTED - 200
        sql = f"SELECT length('{'y' * pad}')"
        assert len(m.query(sql)) <= MAX_INSPECTED
        with PeakRss(mux.pid) as rss:
            for _ in range(3):
                assert rows(w.query(sql)) == [[str(pad).encode()]]
        print(f"a Query of {len(m.query(sql))} bytes held whole: pgmux VmRSS peak +{rss.grown_mib:.1f} MiB")
        assert rss.grown_mib < 3 * MAX_INSPECTED / (1 << 20) + 2, rss.grown_mib


def test_long_data_row_streams_to_a_client_that_stalls(pgmux_factory: PgmuxStarter) -> None:
    # A 100 MB DataRow from PostgreSQL: pgmux forwards it as it comes, and while the client does not
    # read, its full socket buffer stops pgmux reading the server.
    mux = pgmux_factory(settings={"pool_mode": "transaction", "default_pool_size": 2})
    size = 100 << 20
    with Wire(mux.host, mux.port, timeout=60) as w:
        w.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
        w.login()
        with PeakRss(mux.pid) as rss:
            w.send(m.query(f"SELECT repeat('x', {size})"))
            time.sleep(3.0)  # not reading
        print(f"a {size >> 20} MB DataRow, client stalled: pgmux VmRSS peak +{rss.grown_mib:.1f} MiB")
        assert rss.grown_mib < LIMIT_MIB, rss.grown_mib
        t, _ = w.read_msg()
        assert t == m.ROW_DESCRIPTION
        t, length = struct.unpack("!ci", w.read_exact(5))
        assert t == m.DATA_ROW and length == 4 + 2 + 4 + size
        got = 0
        while got < length - 4:
            got += len(w.read_exact(min(1 << 20, length - 4 - got)))
        assert [t for t, _ in w.read_until_ready()] == [m.COMMAND_COMPLETE, m.READY_FOR_QUERY]
        assert rows(w.query("SELECT 4")) == [[b"4"]]
