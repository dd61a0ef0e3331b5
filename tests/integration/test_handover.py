"""Handing idle clients from one pgmux process to another (issue 14 item 5: rolling restarts): two Apps,
A and B, in this process on one uvloop loop (inprocess.run_two_in_process), real PostgreSQL, real
psycopg 3 and asyncpg clients that never reconnect. The clients connect to A; `hand_over(A, B's
socket)` moves them; what they do next must be served by B exactly as A would have served it."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import select
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest
from inprocess import run_in_process, run_two_in_process, write_config

import pgmux
from pgmux.config import load_config
from pgmux.net import fdpass
from pgmux.protocol import messages as m
from pgmux.runtime.app import App
from pgmux.runtime.handover import hand_over, start_adopting
from pgmux.session.handover import MAX_SNAPSHOT, snapshot
from pgmux.session.states import ClientState
from pgmux.testing.certs import make_certs
from pgmux.testing.cluster import HOST, PgCluster, render_userlist

SETTINGS = {"pool_mode": "transaction", "max_prepared_statements": 100, "default_pool_size": 4}


def dsn(app: App, db: str = "testdb") -> str:
    return f"host={HOST} port={app.config.settings.listen_port} dbname={db} user=postgres"


def pool_clients(app: App) -> list[Any]:
    """The clients of `app` logged in to a pool (not consoles, not cancel requests)."""
    return [c for c in app.clients.values() if not c.is_admin and c.pool is not None]


async def until(cond: Callable[[], bool], what: str, limit: float = 20.0) -> None:
    deadline = time.monotonic() + limit
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {limit}s: {what}")
        await asyncio.sleep(0.02)


async def cancel(app: App, pid: int, key: int) -> None:
    """A CancelRequest with the client's own key, sent to `app`'s port."""
    reader, writer = await asyncio.open_connection(HOST, app.config.settings.listen_port)
    writer.write(struct.pack("!iiii", 16, 80877102, pid, key))
    await writer.drain()
    await asyncio.wait_for(reader.read(), 10)  # closed once the cancel is passed on
    writer.close()


def test_psycopg_session_moves_and_goes_on(pg: PgCluster, tmp_path: Path) -> None:
    async def body(a: App, b: App) -> None:
        adopting = await start_adopting(b, str(tmp_path / "b.sock"))
        conn = await psycopg.AsyncConnection.connect(dsn(a), autocommit=True)
        try:
            await conn.execute("SET application_name = 'moved-client'")
            await conn.execute("SET DateStyle = 'SQL, DMY'")
            await conn.execute("SET search_path = pg_catalog, public")
            cur = await conn.execute("SELECT %s::int + 1", [41], prepare=True)
            assert await cur.fetchone() == (42,)
            await conn.execute("PREPARE times_ten(int) AS SELECT $1 * 10")
            pid = conn.info.backend_pid
            [mine] = pool_clients(a)
            key = mine.cancel_key
            assert mine.cancel_pid == pid

            moved, stayed = await hand_over(a, str(tmp_path / "b.sock"))
            assert (moved, stayed) == (1, {})
            assert pool_clients(a) == [] and a.by_cancel == {}
            await until(lambda: adopting.adopted == 1, "B serving the client")  # (B reads the commit after)
            [there] = pool_clients(b)
            assert (there.cancel_pid, there.cancel_key) == (pid, key) and b.by_cancel[pid] is there
            queries_before = there.logged_in_pool().stats.query_count

            # The same connection, never reconnected: its session as it was.
            assert await (await conn.execute("SHOW application_name")).fetchone() == ("moved-client",)
            assert await (await conn.execute("SHOW DateStyle")).fetchone() == ("SQL, DMY",)
            assert await (await conn.execute("SHOW search_path")).fetchone() == ("pg_catalog, public",)
            cur = await conn.execute("SELECT %s::int + 1", [1], prepare=True)  # psycopg's own statement name
            assert await cur.fetchone() == (2,)
            assert await (await conn.execute("EXECUTE times_ten(4)")).fetchone() == (40,)
            assert await (await conn.execute("SELECT count(*) FROM items")).fetchone() == (10,)
            assert there.logged_in_pool().stats.query_count >= queries_before + 5  # B served them
            assert pool_clients(a) == []

            # A cancel with the client's key, at B (in production both share the listening socket).
            sleeper = asyncio.ensure_future(conn.execute("SELECT pg_sleep(30)"))
            await until(lambda: there.state is ClientState.ACTIVE, "the sleep running on B")
            started = time.monotonic()
            await cancel(b, pid, key)
            with pytest.raises(psycopg.errors.QueryCanceled):
                await asyncio.wait_for(sleeper, 20)
            assert time.monotonic() - started < 15
            assert await (await conn.execute("SELECT 1")).fetchone() == (1,)
        finally:
            await conn.close()
        await until(lambda: pool_clients(b) == [], "the client gone from B after close()")
        assert b.by_cancel == {}
        adopting.close()
        await adopting.wait_closed()

    run_two_in_process(pg, tmp_path, SETTINGS, body)


def test_asyncpg_prepared_statements_move(pg: PgCluster, tmp_path: Path) -> None:
    """The extended protocol, binary results: asyncpg's prepared statements (its own names, its cached
    row descriptions) work after the move, and again after a move back."""
    async def body(a: App, b: App) -> None:
        adopt_a = await start_adopting(a, str(tmp_path / "a.sock"))
        adopt_b = await start_adopting(b, str(tmp_path / "b.sock"))
        conn = await asyncpg.connect(host=HOST, port=a.config.settings.listen_port, user="postgres",
                                     database="testdb")
        try:
            stmt = await conn.prepare("SELECT id, name FROM items WHERE id = $1")
            double = await conn.prepare("SELECT $1::bigint * 2")
            assert tuple(await stmt.fetchrow(3)) == (3, "item 3")
            await conn.execute("SET application_name = 'asyncpg-moved'")
            [here] = pool_clients(a)
            assert here.stmts is not None
            held = sorted(name for name, _ in here.stmts.named())
            assert len(held) >= 2  # (and asyncpg's own introspection statements)
            assert await hand_over(a, str(tmp_path / "b.sock")) == (1, {})
            await until(lambda: len(pool_clients(b)) == 1, "B serving the client")
            [there] = pool_clients(b)
            assert there.stmts is not None and sorted(name for name, _ in there.stmts.named()) == held
            assert tuple(await stmt.fetchrow(4)) == (4, "item 4")
            assert await double.fetchval(21) == 42
            assert [tuple(r) for r in await stmt.fetch(5)] == [(5, "item 5")]
            assert await conn.fetchval("SHOW application_name") == "asyncpg-moved"
            assert await hand_over(b, str(tmp_path / "a.sock")) == (1, {})  # and back
            assert await double.fetchval(50) == 100
            assert tuple(await stmt.fetchrow(6)) == (6, "item 6")
            assert len(pool_clients(a)) == 1 and pool_clients(b) == []
        finally:
            await conn.close()
        await until(lambda: pool_clients(a) == [], "the client gone from A")
        for ad in (adopt_a, adopt_b):
            ad.close()
            await ad.wait_closed()

    run_two_in_process(pg, tmp_path, SETTINGS, body)


def test_who_stays_and_why(pg: PgCluster, tmp_path: Path) -> None:
    """A session-mode client, one inside a transaction (moved after its COMMIT, on the next call), a
    pinned one (LISTEN) and a console stay on A, each counted under its reason."""
    primary = pg.primary
    dbs = {"testdb": f"host={primary.host} port={primary.port} dbname=testdb",
           "sessdb": f"host={primary.host} port={primary.port} dbname=testdb pool_mode=session"}

    async def body(a: App, b: App) -> None:
        path = str(tmp_path / "b.sock")
        adopting = await start_adopting(b, path)
        sess = await psycopg.AsyncConnection.connect(dsn(a, "sessdb"), autocommit=True)
        tx = await psycopg.AsyncConnection.connect(dsn(a), autocommit=True)
        pinned = await psycopg.AsyncConnection.connect(dsn(a), autocommit=True)
        console = await psycopg.AsyncConnection.connect(dsn(a, "pgbouncer"), autocommit=True)
        try:
            await sess.execute("SELECT 1")
            await tx.execute("BEGIN")
            await tx.execute("INSERT INTO items VALUES (1000, 'in a transaction')")
            await pinned.execute("LISTEN handover_test")
            await console.execute("SHOW VERSION")
            moved, stayed = await hand_over(a, path)
            assert moved == 0
            assert stayed == {"session pooling": 1, "in a transaction": 1, "pinned (listen)": 1, "console": 1}, stayed
            await tx.execute("COMMIT")
            moved, stayed = await hand_over(a, path)
            assert moved == 1 and sum(stayed.values()) == 3, stayed
            assert await (await tx.execute("DELETE FROM items WHERE id = 1000 RETURNING name")).fetchone() == \
                ("in a transaction",)
            assert len(pool_clients(b)) == 1
            # The ones that stayed still work on A.
            assert await (await sess.execute("SELECT 2")).fetchone() == (2,)
            assert await (await pinned.execute("SELECT 3")).fetchone() == (3,)
            await console.execute("SHOW VERSION")
        finally:
            for conn in (sess, tx, pinned, console):
                await conn.close()
        adopting.close()
        await adopting.wait_closed()

    run_two_in_process(pg, tmp_path, SETTINGS, body, databases=dbs)


def test_refused_client_stays_and_is_served(pg: PgCluster, tmp_path: Path) -> None:
    """B refuses (its max_client_conn is reached): the client stays on A, reading again, and a
    receiver that is not there leaves every client where it was."""
    async def body(a: App, b: App) -> None:
        conn = await psycopg.AsyncConnection.connect(dsn(a), autocommit=True)
        try:
            await conn.execute("SELECT 1")
            moved, stayed = await hand_over(a, str(tmp_path / "nobody.sock"))
            assert moved == 0 and list(stayed) == ["no receiver: FileNotFoundError [Errno 2] No such file or "
                                                   "directory"], stayed
            adopting = await start_adopting(b, str(tmp_path / "b.sock"))
            b.reload(dataclasses.replace(b.config, settings=dataclasses.replace(b.config.settings,
                                                                                 max_client_conn=1)))
            extra = await psycopg.AsyncConnection.connect(dsn(b), autocommit=True)  # B is full now
            moved, stayed = await hand_over(a, str(tmp_path / "b.sock"))
            assert (moved, stayed) == (0, {"refused: no more connections allowed (max_client_conn)": 1})
            assert await (await conn.execute("SELECT 5")).fetchone() == (5,)
            assert len(pool_clients(a)) == 1 and len(pool_clients(b)) == 1 and b.admission.per_db == {"testdb": 1}
            await extra.close()
            adopting.close()
            await adopting.wait_closed()
        finally:
            await conn.close()

    run_two_in_process(pg, tmp_path, SETTINGS, body)


def test_queries_during_back_and_forth_moves(pg: PgCluster, tmp_path: Path) -> None:
    """Two clients (psycopg, asyncpg with its prepared statement) run 200 short queries each while the
    processes hand them back and forth as fast as they can: every query is answered, in order, with
    the session's settings, whatever process reads it."""
    async def body(a: App, b: App) -> None:
        paths = {id(a): str(tmp_path / "a.sock"), id(b): str(tmp_path / "b.sock")}
        adopters = [await start_adopting(a, paths[id(a)]), await start_adopting(b, paths[id(b)])]
        conn = await psycopg.AsyncConnection.connect(dsn(a), autocommit=True)
        done = asyncio.Event()
        moves = 0

        async def mover() -> None:
            nonlocal moves
            deadline = time.monotonic() + 60
            while not done.is_set() and time.monotonic() < deadline:
                for src, dst in ((a, b), (b, a)):
                    n, _ = await hand_over(src, paths[id(dst)])
                    moves += n
                await asyncio.sleep(0)

        other = await asyncpg.connect(host=HOST, port=a.config.settings.listen_port, user="postgres",
                                      database="testdb")

        async def extended() -> None:  # asyncpg: named statements, binary results, Parse/Bind/Execute/Sync
            stmt = await other.prepare("SELECT $1::int * 3, current_setting('DateStyle')")
            await other.execute("SET DateStyle = 'German'")
            for i in range(200):
                assert tuple(await stmt.fetchrow(i)) == (3 * i, "German, DMY")

        async def simple() -> None:
            await conn.execute("SET application_name = 'ping-pong'")
            for i in range(200):
                cur = await conn.execute("SELECT %s::int, current_setting('application_name')", [i],
                                         prepare=i % 2 == 0)
                assert await cur.fetchone() == (i, "ping-pong")

        task = asyncio.ensure_future(mover())
        try:
            await asyncio.gather(simple(), extended())
        finally:
            done.set()
            await asyncio.wait_for(task, 30)
            await conn.close()
            await other.close()
        print("moves", moves)
        assert moves >= 5, moves
        await until(lambda: pool_clients(a) == [] and pool_clients(b) == [], "the client gone")
        for ad in adopters:
            ad.close()
            await ad.wait_closed()

    run_two_in_process(pg, tmp_path, SETTINGS, body)


def test_tls_stays_unix_socket_moves(pg: PgCluster, tmp_path: Path) -> None:
    """A TLS client stays (its TLS state lives in the sender's memory); a client of the Unix socket
    moves, its peer's identity read again by the receiver."""
    certs = make_certs()
    sockets = tmp_path / "sockets"
    sockets.mkdir()
    settings = {**SETTINGS, "unix_socket_dir": str(sockets), "client_tls_sslmode": "allow",
                "client_tls_cert_file": certs.path("server.crt"), "client_tls_key_file": certs.path("server.key")}

    async def body(a: App, b: App) -> None:
        path = str(tmp_path / "b.sock")
        adopting = await start_adopting(b, path)
        port = a.config.settings.listen_port
        tls = await psycopg.AsyncConnection.connect(dsn(a) + " sslmode=require", autocommit=True)
        local = await psycopg.AsyncConnection.connect(f"host={sockets} port={port} dbname=testdb user=postgres",
                                                      autocommit=True)
        try:
            await local.execute("SET application_name = 'over-unix'")
            assert await hand_over(a, path) == (1, {"TLS": 1})
            assert await (await local.execute("SHOW application_name")).fetchone() == ("over-unix",)
            [there] = pool_clients(b)
            assert there.is_unix and there.peer_uid == os.getuid()
            assert await (await tls.execute("SELECT 7")).fetchone() == (7,)
            assert [c.is_unix for c in pool_clients(a)] == [False]
        finally:
            await tls.close()
            await local.close()
            certs.cleanup()
        adopting.close()
        await adopting.wait_closed()
        assert not os.path.exists(path)

    run_two_in_process(pg, tmp_path, settings, body)


def test_many_clients_in_one_call(pg: PgCluster, tmp_path: Path) -> None:
    """30 idle clients move in one call, one after the other on one connection; each goes on."""
    async def body(a: App, b: App) -> None:
        path = str(tmp_path / "b.sock")
        adopting = await start_adopting(b, path)
        conns = [await psycopg.AsyncConnection.connect(dsn(a) + " sslmode=disable", autocommit=True)
                 for _ in range(30)]
        try:
            for i, conn in enumerate(conns):
                await conn.execute(f"SET application_name = 'client-{i}'")
            started = time.monotonic()
            assert await hand_over(a, path) == (30, {})
            took = time.monotonic() - started
            print(f"30 clients handed over in {took * 1000:.1f} ms")
            assert took < 10, took
            await until(lambda: adopting.adopted == 30, "B serving all 30")
            for i, conn in enumerate(conns):
                assert await (await conn.execute("SHOW application_name")).fetchone() == (f"client-{i}",)
            assert pool_clients(a) == [] and len(pool_clients(b)) == 30
            assert b.admission.per_db == {"testdb": 30} and a.admission.per_db == {}
        finally:
            for conn in conns:
                await conn.close()
        await until(lambda: pool_clients(b) == [], "all gone from B")
        assert b.admission.per_db == {} and b.by_cancel == {}
        adopting.close()
        await adopting.wait_closed()

    run_two_in_process(pg, tmp_path, SETTINGS, body)


async def read_until_ready(reader: asyncio.StreamReader) -> list[tuple[bytes, bytes]]:
    """Backend messages up to and including ReadyForQuery."""
    out = []
    while True:
        header = await asyncio.wait_for(reader.readexactly(5), 10)
        body = await asyncio.wait_for(reader.readexactly(struct.unpack("!i", header[1:])[0] - 4), 10)
        out.append((header[:1], body))
        if header[:1] == b"Z":
            return out


def test_bytes_the_sender_never_read_reach_the_receiver(pg: PgCluster, tmp_path: Path) -> None:
    """A query sent while the old process was not reading (its bytes in the kernel's socket buffer) is
    read and answered by the new one: nothing is lost and nothing is answered twice."""
    async def body(a: App, b: App) -> None:
        path = str(tmp_path / "b.sock")
        adopting = await start_adopting(b, path)
        reader, writer = await asyncio.open_connection(HOST, a.config.settings.listen_port)
        writer.write(m.startup_message({"user": "postgres", "database": "testdb"}))
        await read_until_ready(reader)
        [c] = pool_clients(a)
        c.transport.pause_reading()  # A is busy elsewhere: what the client sends waits in the kernel
        writer.write(m.query("SELECT 'sent before the move'"))
        await writer.drain()
        await asyncio.sleep(0.1)
        assert c.state is ClientState.IDLE and c.logged_in_pool().stats.query_count == 0
        assert await hand_over(a, path) == (1, {})
        reply = await read_until_ready(reader)
        assert [t for t, _ in reply] == [b"T", b"D", b"C", b"Z"]
        assert b"sent before the move" in reply[1][1]
        assert pool_clients(a) == [] and len(pool_clients(b)) == 1
        writer.write(m.message(m.TERMINATE))
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 10) == b""  # B closed it, cleanly
        writer.close()
        await until(lambda: pool_clients(b) == [], "the client gone from B")
        adopting.close()
        await adopting.wait_closed()

    run_two_in_process(pg, tmp_path, SETTINGS, body)


async def closed_by_peer(sock: socket.socket) -> None:
    """The other side closed `sock` (a reset when it left bytes we sent unread)."""
    try:
        assert await asyncio.wait_for(asyncio.get_running_loop().sock_recv(sock, 10), 10) == b""
    except ConnectionResetError:
        pass


def test_receiver_survives_bad_senders(pg: PgCluster, tmp_path: Path) -> None:
    """A sender that breaks the framing, or that goes away between the receiver's Y and its commit,
    costs the receiver nothing: what it made is dropped, and the next sender is served."""
    async def body(a: App, b: App) -> None:
        path = str(tmp_path / "b.sock")
        adopting = await start_adopting(b, path)
        conn = await psycopg.AsyncConnection.connect(dsn(a), autocommit=True)
        try:
            await conn.execute("SET application_name = 'kept'")
            [c] = pool_clients(a)
            # Not a hand-over message at all.
            bad = await fdpass.connect(path, 5)
            await fdpass.send_all(bad, b"GET / HTTP/1.0\r\n\r\n")
            await closed_by_peer(bad)
            bad.close()
            # A header above the bound, with a socket attached.
            left, right = socket.socketpair()
            bad = await fdpass.connect(path, 5)
            socket.send_fds(bad, [fdpass.HEADER.pack(fdpass.MAGIC, MAX_SNAPSHOT + 1)], [left.fileno()])
            await closed_by_peer(bad)
            bad.close()
            # A real snapshot and socket, then gone before committing.
            bad = await fdpass.connect(path, 5)
            await fdpass.send_with_fd(bad, c.transport.get_extra_info("socket").fileno(),
                                      snapshot(c, a.now()))
            assert await asyncio.wait_for(fdpass.recv_exact(bad, 1), 10) == b"Y"
            bad.close()
            await until(lambda: b.admission.per_db == {}, "B dropping the uncommitted client")
            assert pool_clients(b) == [] and b.by_cancel == {}
            # The client never noticed, and a proper hand-over still works.
            assert await (await conn.execute("SHOW application_name")).fetchone() == ("kept",)
            assert await hand_over(a, path) == (1, {})
            assert await (await conn.execute("SHOW application_name")).fetchone() == ("kept",)
            assert len(pool_clients(b)) == 1
            left.close()
            right.close()
        finally:
            await conn.close()
        adopting.close()
        await adopting.wait_closed()

    run_two_in_process(pg, tmp_path, SETTINGS, body)


ADOPTER = """
import asyncio, signal, sys
import uvloop
from pgmux.config import load_config
from pgmux.runtime.app import App
from pgmux.runtime.handover import start_adopting

async def main() -> None:
    app = App(load_config(sys.argv[1]), sys.argv[1])
    await app.start()
    adopting = await start_adopting(app, sys.argv[2])
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()
    adopting.close()
    app.shutdown("immediate")
    await app.wait_stopped()

uvloop.run(main())
"""


def test_across_processes_and_the_sender_gone(pg: PgCluster, tmp_path: Path) -> None:
    """The rolling-restart case: B is another process; A stops taking new clients (shutdown "clients"),
    hands its client over, and exits as its last client leaves. The client goes on with B: its
    parameters, both kinds of prepared statements, a cancel with its own key."""
    b_dir = tmp_path / "b"
    b_dir.mkdir()
    b_ini = write_config(pg, b_dir, SETTINGS)
    b_port = load_config(b_ini).settings.listen_port
    path = str(tmp_path / "b.sock")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(pgmux.__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", ADOPTER, b_ini, path], stdout=subprocess.PIPE, text=True,
                            env=env)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready and proc.stdout.readline() == "ready\n"

        async def body(a: App) -> None:
            conn = await psycopg.AsyncConnection.connect(dsn(a), autocommit=True)
            try:
                await conn.execute("SET application_name = 'survivor'")
                await conn.execute("SELECT %s::int", [1], prepare=True)
                await conn.execute("PREPARE plus_one(int) AS SELECT $1 + 1")
                [c] = pool_clients(a)
                pid, key = c.cancel_pid, c.cancel_key
                a.shutdown("clients")
                assert await hand_over(a, path) == (1, {})
                await asyncio.wait_for(a.wait_stopped(), 10)  # A is gone
                assert await (await conn.execute("SHOW application_name")).fetchone() == ("survivor",)
                assert await (await conn.execute("SELECT %s::int", [2], prepare=True)).fetchone() == (2,)
                assert await (await conn.execute("EXECUTE plus_one(41)")).fetchone() == (42,)
                sleeper = asyncio.ensure_future(conn.execute("SELECT pg_sleep(30)"))
                await asyncio.sleep(0.5)
                started = time.monotonic()
                reader, writer = await asyncio.open_connection(HOST, b_port)
                writer.write(struct.pack("!iiii", 16, 80877102, pid, key))
                await writer.drain()
                await asyncio.wait_for(reader.read(), 10)
                writer.close()
                with pytest.raises(psycopg.errors.QueryCanceled):
                    await asyncio.wait_for(sleeper, 20)
                assert time.monotonic() - started < 15
                assert await (await conn.execute("SELECT 'still here'")).fetchone() == ("still here",)
            finally:
                await conn.close()

        a_dir = tmp_path / "a"
        a_dir.mkdir()
        run_in_process(pg, a_dir, SETTINGS, body)
    finally:
        proc.terminate()
        code = proc.wait(15)
        if proc.stdout is not None:
            proc.stdout.close()
        assert code == 0


def test_scram_pass_through_keys_move(pg: PgCluster, tmp_path: Path) -> None:
    """auth_file holds only scramuser's SCRAM verifier: pgmux logs in to PostgreSQL with the keys the
    client proved at its login to A. B never saw that login; the keys travel with the client, and B
    opens its own server connections for it."""
    verifier = pg.primary.psql("SELECT rolpassword FROM pg_authid WHERE rolname = 'scramuser'")
    assert verifier.startswith("SCRAM-SHA-256$")
    userlist = tmp_path / "scram-userlist.txt"
    userlist.write_text(render_userlist({"scramuser": verifier, pg.superuser: ""}))
    settings = {**SETTINGS, "auth_type": "scram-sha-256", "auth_file": str(userlist)}

    async def body(a: App, b: App) -> None:
        path = str(tmp_path / "b.sock")
        adopting = await start_adopting(b, path)
        conn = await psycopg.AsyncConnection.connect(
            f"host={HOST} port={a.config.settings.listen_port} dbname=testdb user=scramuser password=scrampass",
            autocommit=True)
        try:
            assert await (await conn.execute("SELECT current_user")).fetchone() == ("scramuser",)
            assert "scramuser" in a.scram_keys and "scramuser" not in b.scram_keys
            assert await hand_over(a, path) == (1, {})
            assert await (await conn.execute("SELECT current_user")).fetchone() == ("scramuser",)
            assert b.scram_keys["scramuser"] == a.scram_keys["scramuser"]
            assert any(s.pool.user == "scramuser" for s in b.servers.values())  # B's own server login
        finally:
            await conn.close()
        adopting.close()
        await adopting.wait_closed()

    run_two_in_process(pg, tmp_path, settings, body)
