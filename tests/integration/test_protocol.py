"""The wire protocol through pgmux, spoken byte by byte over a plain socket.

Drivers hide what these tests need to see: the exact sequence of replies, the startup-phase
requests libpq sends before its StartupMessage, and what pgmux does with packets no driver would
send. The `Wire` helper builds messages with pgmux.protocol.messages and reads replies as
(type, body) pairs; every read has a socket timeout, so a missing reply fails instead of hanging.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from typing import Any

import psycopg
import pytest
from helpers import copy_data, copy_done, execute, flush, parse, sync, wait_for

from conftest import PgmuxProc, PgmuxStarter
from pgmux.protocol import messages as m
from pgmux.testing.cluster import PgCluster

Msg = tuple[bytes, bytes]  # (type byte, body)


class Wire:
    """A blocking socket that speaks just enough protocol v3 to drive tests."""

    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = bytearray()  # deleting a prefix of a bytearray is cheap: reads stay linear

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Wire:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError(f"connection closed with {len(self.buf)} bytes of a message pending")
        self.buf += chunk

    def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_msg(self) -> Msg:
        hdr = self.read_exact(5)
        mtype, length = struct.unpack("!ci", hdr)
        assert 4 <= length < 1 << 20, f"implausible length {length} for {mtype!r}"
        return mtype, self.read_exact(length - 4)

    def read_until_ready(self, limit: int = 10_000) -> list[Msg]:
        """Messages up to and including the next ReadyForQuery."""
        out: list[Msg] = []
        for _ in range(limit):
            msg = self.read_msg()
            out.append(msg)
            if msg[0] == m.READY_FOR_QUERY:
                return out
        raise AssertionError(f"no ReadyForQuery within {limit} messages: {types(out)[:40]}")

    def at_eof(self, timeout: float = 5.0) -> bool:
        """True when the peer closed the connection (EOF or RST) with nothing more to read."""
        if self.buf:
            return False
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False

    def login(self, database: str = "testdb", user: str = "postgres", **params: str) -> list[Msg]:
        """StartupMessage with auth_type trust; returns everything up to ReadyForQuery."""
        self.send(m.startup_message({"user": user, "database": database, **params}))
        msgs = self.read_until_ready()
        assert msgs[0] == (m.AUTHENTICATION, struct.pack("!i", m.AUTH_OK)), msgs[:1]
        assert msgs[-1] == (m.READY_FOR_QUERY, b"I")
        return msgs

    def query(self, sql: str) -> list[Msg]:
        self.send(m.query(sql))
        return self.read_until_ready()


def types(msgs: list[Msg]) -> str:
    return "".join(t.decode() for t, _ in msgs)


def error_fields(msg: Msg) -> dict[str, str]:
    assert msg[0] == m.ERROR_RESPONSE, f"expected an ErrorResponse, got {msg!r}"
    return m.parse_error_fields(msg[1])


row_values = m.data_row_values


def rows(msgs: list[Msg]) -> list[list[bytes | None]]:
    return [row_values(body) for t, body in msgs if t == m.DATA_ROW]


# -- extended-protocol builders (pgmux never writes these, so messages.py does not have them) --------
def bind(params: tuple[bytes | None, ...] = (), portal: str = "", stmt: str = "") -> bytes:
    body = m.cstr(portal) + m.cstr(stmt) + struct.pack("!h", 0) + struct.pack("!h", len(params))
    for p in params:
        body += struct.pack("!i", -1) if p is None else struct.pack("!i", len(p)) + p
    return m.message(m.BIND, body + struct.pack("!h", 0))


def function_call(oid: int, args: tuple[bytes, ...]) -> bytes:
    """FunctionCall with all arguments and the result in text format."""
    body = struct.pack("!ih", oid, 1) + struct.pack("!h", 0) + struct.pack("!h", len(args))
    body += b"".join(struct.pack("!i", len(a)) + a for a in args)
    return m.message(m.FUNCTION_CALL, body + struct.pack("!h", 0))


# -- fixtures ------------------------------------------------------------------------------------
@pytest.fixture
def mux(pgmux_factory: PgmuxStarter) -> PgmuxProc:
    return pgmux_factory(settings={"pool_mode": "transaction", "default_pool_size": 3})


@pytest.fixture
def session_mux(pgmux_factory: PgmuxStarter) -> PgmuxProc:
    return pgmux_factory(settings={"pool_mode": "session", "default_pool_size": 3})


# -- startup-phase requests ----------------------------------------------------------------------
def test_ssl_request_is_refused_with_N_and_startup_continues(mux: PgmuxProc) -> None:
    with Wire(mux.host, mux.port) as w:
        w.send(struct.pack("!ii", 8, m.SSL_REQUEST_CODE))
        assert w.read_exact(1) == b"N"
        w.login()
        assert rows(w.query("SELECT 40 + 2")) == [[b"42"]]


def test_gssenc_request_is_refused_with_N_and_startup_continues(mux: PgmuxProc) -> None:
    with Wire(mux.host, mux.port) as w:
        w.send(struct.pack("!ii", 8, m.GSSENC_REQUEST_CODE))
        assert w.read_exact(1) == b"N"
        # libpq may fall back to an SSLRequest on the same socket after a refused GSSENCRequest.
        w.send(struct.pack("!ii", 8, m.SSL_REQUEST_CODE))
        assert w.read_exact(1) == b"N"
        w.login()
        assert rows(w.query("SELECT current_database()")) == [[b"testdb"]]


def test_login_announces_parameters_and_pgmux_backend_key(mux: PgmuxProc) -> None:
    with Wire(mux.host, mux.port) as w:
        msgs = w.login(application_name="wire-test")
        pairs = [b.rstrip(b"\x00").split(b"\x00", 1) for t, b in msgs if t == m.PARAMETER_STATUS]
        params = {k: v for k, v in pairs}
        assert params[b"server_encoding"] == b"UTF8"
        assert params[b"application_name"] == b"wire-test"
        keys = [b for t, b in msgs if t == m.BACKEND_KEY_DATA]
        assert len(keys) == 1 and len(keys[0]) == 8
        pid, _ = struct.unpack("!ii", keys[0])
        # The key pgmux hands out is its own, never a real backend's: a cancel must name the client.
        (backend_pid,) = rows(w.query("SELECT pg_backend_pid()"))[0]
        assert backend_pid is not None and int(backend_pid) != pid


def test_protocol_v2_is_refused_with_08P01_and_closed(mux: PgmuxProc) -> None:
    with Wire(mux.host, mux.port) as w:
        w.send(m.startup_message({"user": "postgres", "database": "testdb"}, protocol=2 << 16))
        err = error_fields(w.read_msg())
        assert err["C"] == "08P01" and err["S"] == "FATAL", err
        assert "protocol" in err["M"]
        assert w.at_eof()


@pytest.mark.parametrize("packet", [
    pytest.param(struct.pack("!i", 3) + b"\0" * 12, id="length-below-minimum"),
    pytest.param(struct.pack("!ii", 20_000, m.PROTOCOL_V3) + b"user\0postgres\0\0", id="length-above-10000"),
    pytest.param(m.startup_message({"user": "postgres", "database": "testdb", "options": "x" * 10_050}),
                 id="real-10k-packet"),
    pytest.param(struct.pack("!ii", 16, m.PROTOCOL_V3) + b"user\0postgres", id="params-not-terminated"),
])
def test_malformed_startup_gets_08P01_and_others_keep_working(mux: PgmuxProc, packet: bytes) -> None:
    with Wire(mux.host, mux.port) as good, Wire(mux.host, mux.port) as bad:
        good.login()
        good.send(m.query("BEGIN; SELECT count(*) FROM items"))  # hold a server across the bad client
        assert rows(good.read_until_ready()) == [[b"10"]]
        bad.send(packet)
        err = error_fields(bad.read_msg())
        assert err["C"] == "08P01" and err["S"] == "FATAL", err
        assert bad.at_eof()
        assert rows(good.query("SELECT count(*) FROM items; COMMIT")) == [[b"10"]]
        assert mux.is_running()
    with Wire(mux.host, mux.port) as later:
        later.login()
        assert rows(later.query("SELECT 1")) == [[b"1"]]


# -- simple query protocol -----------------------------------------------------------------------
def test_empty_query_gets_empty_query_response(mux: PgmuxProc) -> None:
    with Wire(mux.host, mux.port) as w:
        w.login()
        assert types(w.query("")) == "IZ"
        assert types(w.query(";")) == "IZ"
        assert rows(w.query("SELECT 'after'")) == [[b"after"]]


def test_multi_statement_query_returns_each_result(mux: PgmuxProc) -> None:
    with Wire(mux.host, mux.port) as w:
        w.login()
        msgs = w.query("SELECT 1; SELECT 'two', NULL; SELECT generate_series(1, 3)")
        assert types(msgs) == "TDCTDCTDDDCZ"
        assert rows(msgs) == [[b"1"], [b"two", None], [b"1"], [b"2"], [b"3"]]
        # An error in the middle aborts the rest of the string, then the session is usable again.
        msgs = w.query("SELECT 1; SELECT 1/0; SELECT 3")
        assert types(msgs) == "TDCEZ" and error_fields(msgs[3])["C"] == "22012"
        assert msgs[-1] == (m.READY_FOR_QUERY, b"I")
        assert rows(w.query("SELECT 4")) == [[b"4"]]


# -- extended query protocol ---------------------------------------------------------------------
def test_extended_pipeline_error_skips_to_sync(mux: PgmuxProc, pg: PgCluster) -> None:
    pg.primary.psql("DROP TABLE IF EXISTS proto_pipe; CREATE TABLE proto_pipe (v int);"
                    "GRANT ALL ON proto_pipe TO PUBLIC", db="testdb")
    with Wire(mux.host, mux.port) as w:
        w.login()
        # The second statement fails at execution (random() keeps 1/0 from being folded at Bind).
        w.send(parse("SELECT $1::int + 1", param_types=(23,)) + bind((b"41",)) + execute()
               + parse("SELECT 1 / (random() * 0)::int") + bind() + execute()
               + parse("INSERT INTO proto_pipe VALUES (3)") + bind() + execute()
               + sync())
        msgs = w.read_until_ready()
        assert types(msgs) == "12DC12EZ", msgs
        assert rows(msgs) == [[b"42"]]
        assert msgs[3] == (m.COMMAND_COMPLETE, b"SELECT 1\x00")
        assert error_fields(msgs[6])["C"] == "22012"
        assert msgs[-1] == (m.READY_FOR_QUERY, b"I")
        # Nothing of the third statement ran, and the connection goes on.
        assert rows(w.query("SELECT count(*) FROM proto_pipe")) == [[b"0"]]
        w.send(parse("INSERT INTO proto_pipe VALUES ($1)", param_types=(23,)) + bind((b"7",)) + execute()
               + sync())
        assert types(w.read_until_ready()) == "12CZ"
    assert pg.primary.psql("SELECT array_agg(v) FROM proto_pipe", db="testdb") == "{7}"


def test_server_stays_linked_until_sync(mux: PgmuxProc) -> None:
    """In transaction mode a Flush-terminated batch must keep its server: the unnamed statement and
    portal live there until Sync."""
    with Wire(mux.host, mux.port) as w:
        w.login()
        w.send(parse("SELECT pg_backend_pid()") + flush())
        assert w.read_msg() == (m.PARSE_COMPLETE, b"")
        linked = wait_for(lambda: [s for s in mux.admin_dicts("SHOW SERVERS") if s["link"]],
                          what="linked server")
        assert len(linked) == 1 and linked[0]["state"] == "active"
        time.sleep(0.3)  # a janitor tick or two: still linked
        assert [s["link"] for s in mux.admin_dicts("SHOW SERVERS") if s["link"]] == [linked[0]["link"]]
        w.send(bind() + execute() + sync())
        msgs = w.read_until_ready()
        assert types(msgs) == "2DCZ"
        assert int(rows(msgs)[0][0] or b"0") == linked[0]["remote_pid"]
        wait_for(lambda: all(not s["link"] and s["state"] == "idle" for s in mux.admin_dicts("SHOW SERVERS")),
                 what="server back in the pool after Sync")


def test_named_statement_reused_within_a_transaction(mux: PgmuxProc) -> None:
    with Wire(mux.host, mux.port) as w:
        w.login()
        assert types(w.query("BEGIN")) == "CZ"
        w.send(parse("SELECT $1::int * 2", name="dbl") + sync())
        assert types(w.read_until_ready()) == "1Z"
        for i in range(5):
            w.send(bind((str(i).encode(),), stmt="dbl") + execute() + sync())
            msgs = w.read_until_ready()
            assert types(msgs) == "2DCZ" and rows(msgs) == [[str(i * 2).encode()]]
            assert msgs[-1] == (m.READY_FOR_QUERY, b"T")
        assert w.query("COMMIT")[-1] == (m.READY_FOR_QUERY, b"I")


def test_function_call_returns_function_call_response(mux: PgmuxProc) -> None:
    with Wire(mux.host, mux.port) as w:
        w.login()
        (oid,) = rows(w.query("SELECT 'int4abs'::regproc::oid"))[0]
        assert oid is not None
        w.send(function_call(int(oid), (b"-42",)))
        msgs = w.read_until_ready()
        assert types(msgs) == "VZ", msgs
        assert msgs[0][1] == struct.pack("!i", 2) + b"42"
        # A failing call is an ErrorResponse, then ReadyForQuery; the connection goes on.
        w.send(function_call(int(oid), (b"not a number",)))
        msgs = w.read_until_ready()
        assert types(msgs) == "EZ" and error_fields(msgs[0])["C"] == "22P02"
        assert rows(w.query("SELECT 'still here'")) == [[b"still here"]]


# -- leaving -------------------------------------------------------------------------------------
def test_terminate_closes_cleanly_and_returns_server(session_mux: PgmuxProc) -> None:
    mux = session_mux
    with Wire(mux.host, mux.port) as w:
        w.login()
        (pid,) = rows(w.query("SELECT pg_backend_pid()"))[0]
        servers = mux.admin_dicts("SHOW SERVERS")
        assert [(s["state"], bool(s["link"])) for s in servers] == [("active", True)]
        w.send(m.terminate())
        assert w.at_eof(), "pgmux should close the client socket after Terminate"

    def back_in_pool() -> bool:
        s = mux.admin_dicts("SHOW SERVERS")
        return len(s) == 1 and s[0]["state"] == "idle" and not s[0]["link"]

    wait_for(back_in_pool, what="server idle after Terminate (session mode, after the reset query)")
    assert mux.admin_dicts("SHOW SERVERS")[0]["remote_pid"] == int(pid or b"0")
    assert not [c for c in mux.admin_dicts("SHOW CLIENTS") if c["database"] == "testdb"]
    # The same server serves the next client.
    with psycopg.connect(mux.dsn(), connect_timeout=10) as conn:
        assert conn.execute("SELECT pg_backend_pid()").fetchone() == (int(pid or b"0"),)


def test_leaving_inside_a_transaction_discards_the_server(mux: PgmuxProc) -> None:
    with Wire(mux.host, mux.port) as w:
        w.login()
        msgs = w.query("BEGIN; SELECT pg_backend_pid()")
        (pid,) = rows(msgs)[0]
        assert msgs[-1] == (m.READY_FOR_QUERY, b"T")
        w.send(m.terminate())
        assert w.at_eof()
    # A server left in a transaction must not be lent to anyone else as it is.
    with psycopg.connect(mux.dsn(), connect_timeout=10, autocommit=True) as conn:
        cur = conn.execute("SELECT pg_backend_pid(), now() = statement_timestamp()")
        row = cur.fetchone()
        assert row is not None and row[1] is True, "next client landed inside the old transaction"
        assert row[0] != int(pid or b"0")


def test_wrong_cancel_key_cancels_nothing(mux: PgmuxProc) -> None:
    with psycopg.connect(mux.dsn(), connect_timeout=10, autocommit=True) as conn:
        pid = conn.info.backend_pid  # pgmux's key pid for this client
        results: list[Any] = []

        def bogus_cancels() -> None:
            time.sleep(0.3)
            for key in (0, 1, 12345):
                with Wire(mux.host, mux.port) as w:
                    w.send(m.cancel_request(pid, key))
                    results.append(w.at_eof())

        t = threading.Thread(target=bogus_cancels)
        t.start()
        started = time.monotonic()
        assert conn.execute("SELECT 'done' FROM pg_sleep(1.2)").fetchone() == ("done",)
        assert time.monotonic() - started >= 1.1
        t.join(10)
        assert results == [True, True, True]  # a cancel connection is closed without a reply


# -- framing and flow ----------------------------------------------------------------------------
def _dribble(w: Wire, data: bytes) -> None:
    w.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for i in range(len(data)):
        w.send(data[i:i + 1])
        if i % 16 == 0:
            time.sleep(0.001)  # let pgmux see many partial reads, not one coalesced buffer


def test_messages_split_at_every_byte(mux: PgmuxProc) -> None:
    with Wire(mux.host, mux.port) as w:
        w.login(application_name="dribble")
        _dribble(w, m.query("SELECT current_setting('application_name'), 'ä' || repeat('b', 3)")
                 + parse("SELECT $1::int + 1", param_types=(23,)) + bind((b"9",)) + execute() + sync())
        assert rows(w.read_until_ready()) == [[b"dribble", "äbbb".encode()]]
        assert rows(w.read_until_ready()) == [[b"10"]]


def test_startup_packet_split_at_every_byte(mux: PgmuxProc) -> None:
    # PostgreSQL reads the startup packet however TCP splits it; pgmux does too. (PgBouncer 1.18
    # refuses it: "client sent partial pkt in startup phase".)
    with Wire(mux.host, mux.port) as w:
        _dribble(w, m.startup_message({"user": "postgres", "database": "testdb"}) + m.query("SELECT 'ok'"))
        assert w.read_until_ready()[0] == (m.AUTHENTICATION, struct.pack("!i", m.AUTH_OK))
        assert rows(w.read_until_ready()) == [[b"ok"]]


def test_queries_pipelined_behind_startup_keep_their_order(pgmux_factory: PgmuxStarter,
                                                           pg: PgCluster) -> None:
    # The pool's first server logs in slowly (connect_query), so the second query arrives while the
    # client still waits for its welcome: it must not overtake the first.
    p = pg.primary
    mux = pgmux_factory(databases={"testdb": f"host={p.host} port={p.port} dbname=testdb "
                                             "connect_query='SELECT pg_sleep(0.6)'"},
                        settings={"pool_mode": "transaction"})
    with Wire(mux.host, mux.port) as w:
        w.send(m.startup_message({"user": "postgres", "database": "testdb"}) + m.query("SELECT 'first'"))
        time.sleep(0.2)
        w.send(m.query("SELECT 'second'"))
        assert w.read_until_ready()[-1] == (m.READY_FOR_QUERY, b"I")
        assert rows(w.read_until_ready()) == [[b"first"]]
        assert rows(w.read_until_ready()) == [[b"second"]]


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_stalled_reader_does_not_make_pgmux_buffer_the_result(mux: PgmuxProc) -> None:
    n_rows, width = 100_000, 1000  # ~100 MB of DataRows
    with Wire(mux.host, mux.port, timeout=20) as w:
        w.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
        w.login()
        before = _rss_kib(mux.pid)
        w.send(m.query(f"SELECT repeat('x', {width}) FROM generate_series(1, {n_rows})"))
        time.sleep(2.0)  # not reading: the server must be paused, not drained into pgmux's memory
        grown_mib = (_rss_kib(mux.pid) - before) / 1024
        assert grown_mib < 40, f"pgmux grew by {grown_mib:.0f} MiB while the client was not reading"
        # The stream is intact once the client reads again.
        count = 0
        for _ in range(n_rows + 10):
            t, body = w.read_msg()
            if t == m.DATA_ROW:
                count += 1
                assert len(body) == 2 + 4 + width
            elif t == m.READY_FOR_QUERY:
                break
        assert count == n_rows


# -- clients that leave at awkward moments -------------------------------------------------------
def test_client_vanishing_mid_query_does_not_return_busy_server(mux: PgmuxProc) -> None:
    with Wire(mux.host, mux.port) as w:
        w.login()
        (busy_pid,) = rows(w.query("SELECT pg_backend_pid()"))[0]
        w.send(m.query("SELECT pg_sleep(3)"))
        wait_for(lambda: [s for s in mux.admin_dicts("SHOW SERVERS") if s["link"]], what="server linked")
        w.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST, no goodbye
    # The server still runs the sleep: it must be closed, never lent to the next client mid-query.
    wait_for(lambda: int(busy_pid or b"0") not in {s["remote_pid"] for s in mux.admin_dicts("SHOW SERVERS")},
             what="busy server dropped")
    with Wire(mux.host, mux.port) as w2:
        w2.login()
        started = time.monotonic()
        (pid,) = rows(w2.query("SELECT pg_backend_pid()"))[0]
        assert time.monotonic() - started < 1.5 and pid != busy_pid


def test_queued_client_that_leaves_never_runs_its_query(pgmux_factory: PgmuxStarter, pg: PgCluster) -> None:
    # pgmux keeps reading a queued client, so it sees the Terminate and drops the queued query.
    # (PgBouncer 1.18 stops reading a waiting client: it notices only once a server is free, and
    # sends the query first.)
    mux = pgmux_factory(settings={"pool_mode": "transaction", "default_pool_size": 1})
    pg.primary.psql("DROP TABLE IF EXISTS proto_queue; CREATE TABLE proto_queue (v text);"
                    "GRANT ALL ON proto_queue TO PUBLIC", db="testdb")
    with Wire(mux.host, mux.port) as holder, Wire(mux.host, mux.port) as leaver:
        holder.login()
        leaver.login()
        assert holder.query("BEGIN")[-1] == (m.READY_FOR_QUERY, b"T")  # the only server is taken
        leaver.send(m.query("INSERT INTO proto_queue VALUES ('from the client that left')"))

        def queued() -> bool:
            pools = mux.admin_dicts("SHOW POOLS")
            return any(p["cl_waiting"] > 0 for p in pools if p["database"] == "testdb")

        wait_for(queued, what="second client queued")
        leaver.send(m.terminate())
        assert leaver.at_eof()
        wait_for(lambda: not queued(), what="queue emptied by the leaving client")
        done = holder.query("INSERT INTO proto_queue VALUES ('holder'); COMMIT")
        assert done[-1] == (m.READY_FOR_QUERY, b"I")
        time.sleep(0.3)  # give a wrongly kept query the chance to run on the freed server
        assert rows(holder.query("SELECT string_agg(v, ',') FROM proto_queue")) == [[b"holder"]]


# -- COPY through the extended protocol ----------------------------------------------------------
def copy_fail(why: str) -> bytes:
    return m.message(m.COPY_FAIL, m.cstr(why))


@pytest.mark.parametrize("case", ["ok", "bad-row", "copy-fail", "split-writes"])
def test_extended_copy_in_returns_server_to_pool(pgmux_factory: PgmuxStarter, pg: PgCluster, case: str) -> None:
    """libpq's PQexecParams("COPY ... FROM STDIN") sends Sync right after Execute and another after
    CopyDone. The backend ignores the first (it reads it in copy-in mode) and answers only the
    second: two Syncs, one ReadyForQuery. The server must still go back to the pool."""
    mux = pgmux_factory(settings={"pool_mode": "transaction", "default_pool_size": 1,
                                  "query_wait_timeout": 10})
    pg.primary.psql("DROP TABLE IF EXISTS proto_copy; CREATE TABLE proto_copy (v int);"
                    "GRANT ALL ON proto_copy TO PUBLIC", db="testdb")
    with Wire(mux.host, mux.port) as w:
        w.login()
        w.send(parse("COPY proto_copy FROM STDIN") + bind() + execute() + sync())
        got = [w.read_msg() for _ in range(3)]
        assert types(got) == "12G", got
        if case == "ok":
            w.send(copy_data(b"1\n") + copy_data(b"2\n") + copy_done() + sync())
            assert types(w.read_until_ready()) == "CZ"
        elif case == "bad-row":
            w.send(copy_data(b"1\n") + copy_data(b"not a number\n") + copy_done() + sync())
            msgs = w.read_until_ready()
            assert types(msgs) == "EZ" and error_fields(msgs[0])["C"] == "22P02"
        elif case == "copy-fail":
            w.send(copy_data(b"1\n") + copy_fail("client changed its mind") + sync())
            msgs = w.read_until_ready()
            assert types(msgs) == "EZ" and error_fields(msgs[0])["C"] == "57014"
        else:
            w.send(copy_data(b"1\n"))
            time.sleep(0.1)
            w.send(copy_data(b"2\n") + copy_done())
            time.sleep(0.1)
            w.send(sync())
            assert types(w.read_until_ready()) == "CZ"

        def released() -> bool:
            servers = mux.admin_dicts("SHOW SERVERS")
            return len(servers) == 1 and servers[0]["state"] == "idle" and not servers[0]["link"]

        wait_for(released, what="the only server back in the pool after the COPY")
        with Wire(mux.host, mux.port) as other:
            other.login()
            expected = b"2" if case in ("ok", "split-writes") else b"0"
            assert rows(other.query("SELECT count(*) FROM proto_copy")) == [[expected]]
        assert rows(w.query("SELECT 'copier goes on'")) == [[b"copier goes on"]]
