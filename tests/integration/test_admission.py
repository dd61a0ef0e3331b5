"""Hostile input at login and the limits on who may connect (issue 11; settings of issue 10).

- Failed logins leave nothing behind: no pool, no memory, no janitor work (PgBouncer-compatible pools
  are made only for authenticated clients, and freed once idle).
- max_db_client_connections / max_user_client_connections count authenticated clients only.
- The admin console answers past max_client_conn.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import subprocess
import time
from typing import Any

import asyncpg
import psycopg
from helpers import wait_for
from psycopg.rows import dict_row

from conftest import DEFAULT_USERLIST
from pgmux.protocol import messages as m
from pgmux.testing.cluster import PgCluster, find_bindir


def _recv_message(sock: socket.socket) -> tuple[str, bytes]:
    head = b""
    while len(head) < 5:
        chunk = sock.recv(5 - len(head))
        if not chunk:
            raise ConnectionError("closed")
        head += chunk
    length = struct.unpack("!i", head[1:5])[0] - 4
    body = b""
    while len(body) < length:
        chunk = sock.recv(length - len(body))
        if not chunk:
            raise ConnectionError("closed")
        body += chunk
    return chr(head[0]), body


def failed_login(port: int, user: str, password: bool) -> str:
    """A login of an unknown user: StartupMessage, then a wrong md5 answer (or a hang-up instead).
    Returns the SQLSTATE of the error, or "" after a hang-up."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(m.startup_message({"user": user, "database": "testdb"}))
        kind, body = _recv_message(sock)
        assert kind == "R" and struct.unpack("!i", body[:4])[0] == 5, (kind, body)  # AuthenticationMD5Password
        if not password:
            return ""
        sock.sendall(m.password_message(b"md5" + b"0" * 32 + b"\x00"))
        kind, body = _recv_message(sock)
        assert kind == "E", (kind, body)
        return m.parse_error_fields(body)["C"]


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def idle_cpu(pid: int, seconds: float = 3.0) -> float:
    before = cpu_seconds(pid)
    time.sleep(seconds)
    return cpu_seconds(pid) - before


CONSOLE_PW = "console pw"
# postgres (the admin) with a password: the console logins below work whatever auth_type. (pgmux runs as
# another OS user than the tests when they run as root, so the Unix socket's no-password rule is no help.)
USERLIST = {**DEFAULT_USERLIST, "postgres": CONSOLE_PW}


def console(proc: Any, sql: str) -> list[dict[str, Any]]:
    """A console command, as admin_user postgres."""
    with psycopg.connect(host=proc.host, port=proc.port, dbname="pgbouncer", user="postgres", password=CONSOLE_PW,
                         autocommit=True, cursor_factory=psycopg.ClientCursor, row_factory=dict_row) as conn:
        cur = conn.execute(sql)
        return cur.fetchall() if cur.description else []


def pool_count(proc: Any) -> int:
    return len(console(proc, "SHOW POOLS"))


def flood(port: int, n: int, tag: str) -> None:
    for i in range(n):
        code = failed_login(port, f"{tag}{i}", password=i % 2 == 0)
        assert code in ("", "28P01"), code


FLOOD = int(os.environ.get("PGMUX_TEST_FLOOD", "2000"))


def test_failed_logins_leave_nothing_behind(pgmux_factory: Any) -> None:
    # md5: an unknown user still gets a (doomed) challenge, as from PostgreSQL: no password needed to try.
    proc = pgmux_factory(settings={"auth_type": "md5"}, userlist=USERLIST)
    with psycopg.connect(proc.dsn(user="md5user", password="md5pass")) as conn:
        conn.execute("SELECT 1")
        flood(proc.port, 300, "warmup")  # let the allocator settle before measuring
        pools = pool_count(proc)
        rss = rss_kb(proc.pid)
        cpu = idle_cpu(proc.pid)
        started = time.monotonic()
        flood(proc.port, FLOOD, "stranger")
        took = time.monotonic() - started
        assert conn.execute("SELECT 1").fetchone() == (1,)
        grown = rss_kb(proc.pid) - rss
        cpu_after = idle_cpu(proc.pid)
        print(f"{FLOOD} failed logins in {took:.1f}s: pools {pools} -> {pool_count(proc)}, RSS +{grown} kB, "
              f"idle CPU over 3s {cpu:.3f}s -> {cpu_after:.3f}s")
        assert pool_count(proc) == pools
        assert grown < 2048, f"RSS grew by {grown} kB"
        assert cpu_after <= cpu + 0.05, (cpu, cpu_after)
        assert not [c for c in console(proc, "SHOW CLIENTS") if c["user"].startswith("stranger")]
        assert not [u for u in console(proc, "SHOW USERS") if u["name"].startswith("stranger")]


def test_unauthenticated_console_logins_leave_nothing_behind(pgmux_factory: Any) -> None:
    proc = pgmux_factory(settings={"auth_type": "md5", "admin_users": "postgres,boss"}, userlist=USERLIST)
    pools = pool_count(proc)
    for i in range(50):
        with socket.create_connection(("127.0.0.1", proc.port), timeout=20) as sock:
            sock.sendall(m.startup_message({"user": "boss" if i % 2 else f"x{i}", "database": "pgbouncer"}))
            kind, _ = _recv_message(sock)
            assert kind in ("R", "E")
    assert pool_count(proc) == pools


# -- pools that empty out are freed ----------------------------------------------------------------

def test_idle_pools_are_freed(pg: PgCluster, pgmux_factory: Any) -> None:
    p = pg.primary
    proc = pgmux_factory(databases={"testdb": f"host={p.host} port={p.port} dbname=testdb",
                                    "*": f"host={p.host} port={p.port}"},
                         settings={"pool_mode": "transaction", "server_idle_timeout": 1,
                                   "autodb_idle_timeout": 2, "pool_idle_timeout": 0})
    with psycopg.connect(proc.dsn("postgres")) as conn, psycopg.connect(proc.dsn("testdb")) as fixed:
        conn.execute("SELECT 1")
        fixed.execute("SELECT 1")
        assert {r["database"] for r in proc.admin_dicts("SHOW POOLS")} >= {"postgres", "testdb"}
        time.sleep(3.5)
        # In use (a client is connected): kept, though its server went after server_idle_timeout.
        assert "postgres" in {r["database"] for r in proc.admin_dicts("SHOW POOLS")}
    # Unused: the "*" database's pool goes after autodb_idle_timeout; testdb's stays (pool_idle_timeout=0).
    wait_for(lambda: "postgres" not in {r["database"] for r in proc.admin_dicts("SHOW POOLS")},
             "the auto-database pool to be freed", timeout=20)
    assert "testdb" in {r["database"] for r in proc.admin_dicts("SHOW POOLS")}
    with psycopg.connect(proc.dsn("postgres")) as conn:  # and comes back when wanted
        assert conn.execute("SELECT 2").fetchone() == (2,)
    proc.rewrite(settings={"pool_idle_timeout": 1})
    proc.reload()
    wait_for(lambda: not [r for r in proc.admin_dicts("SHOW POOLS") if r["database"] != "pgbouncer"],
             "every pool to be freed under pool_idle_timeout", timeout=20)


# -- client limits per database and per user ---------------------------------------------------------

def _login_error(dsn: str) -> tuple[str | None, str]:
    """(SQLSTATE, message) of a refused login (asyncpg keeps the SQLSTATE of a failed connect; psycopg not)."""
    async def attempt() -> tuple[str | None, str]:
        try:
            conn = await asyncpg.connect(dsn, timeout=10, ssl=False)
        except asyncpg.PostgresError as e:
            return e.sqlstate, str(e).split("\n")[0]  # the message, without DETAIL
        await conn.close()
        raise AssertionError(f"login to {dsn} succeeded")

    return asyncio.run(attempt())


def test_max_db_client_connections(pg: PgCluster, pgmux_factory: Any) -> None:
    p = pg.primary
    proc = pgmux_factory(databases={"testdb": f"host={p.host} port={p.port} dbname=testdb "
                                              "max_db_client_connections=2",
                                    "postgres": f"host={p.host} port={p.port} dbname=postgres"},
                         settings={"pool_mode": "transaction"})
    a = psycopg.connect(proc.dsn())
    b = psycopg.connect(proc.dsn(user="md5user", password="md5pass"))
    try:
        assert _login_error(proc.dsn(user="scramuser", password="scrampass")) == (
            "53300", "client connections exceeded (max_db_client_connections)")
        with psycopg.connect(proc.dsn("postgres")) as other:  # another database is not limited
            assert other.execute("SELECT 1").fetchone() == (1,)
        b.close()
        with psycopg.connect(proc.dsn(user="scramuser", password="scrampass")) as c:
            assert c.execute("SELECT 1").fetchone() == (1,)
    finally:
        a.close()
        b.close()


def test_max_user_client_connections_counts_authenticated_clients_only(pgmux_factory: Any) -> None:
    proc = pgmux_factory(settings={"pool_mode": "transaction", "auth_type": "md5",
                                   "max_user_client_connections": 5},
                         users={"md5user": "max_user_client_connections=1"})
    # Strangers who cannot log in as md5user do not use up its one slot.
    half_open = []
    for _ in range(3):
        sock = socket.create_connection(("127.0.0.1", proc.port), timeout=20)
        sock.sendall(m.startup_message({"user": "md5user", "database": "testdb"}))
        assert _recv_message(sock)[0] == "R"
        half_open.append(sock)
    try:
        for _ in range(3):
            assert _login_error(proc.dsn(user="md5user", password="wrong"))[0] == "28P01"
        with psycopg.connect(proc.dsn(user="md5user", password="md5pass")) as first:
            assert first.execute("SELECT 1").fetchone() == (1,)
            assert _login_error(proc.dsn(user="md5user", password="md5pass")) == (
                "53300", "client connections exceeded (max_user_client_connections)")
            # The global default (5) applies to the other users.
            others = [psycopg.connect(proc.dsn(user="scramuser", password="scrampass")) for _ in range(5)]
            try:
                assert _login_error(proc.dsn(user="scramuser", password="scrampass"))[0] == "53300"
            finally:
                for c in others:
                    c.close()
        # The slot is free again once the client left.
        wait_for(lambda: _connects(proc.dsn(user="md5user", password="md5pass")), "md5user's slot to free up")
    finally:
        for sock in half_open:
            sock.close()


def _connects(dsn: str) -> bool:
    try:
        psycopg.connect(dsn, connect_timeout=10).close()
        return True
    except psycopg.OperationalError:
        return False


# -- the console past max_client_conn ------------------------------------------------------------------

def test_console_answers_when_max_client_conn_is_reached(pgmux_factory: Any) -> None:
    proc = pgmux_factory(settings={"max_client_conn": 3, "stats_users": "md5user"})
    conns = [psycopg.connect(proc.dsn()) for _ in range(3)]
    try:
        assert _login_error(proc.dsn()) == ("53300", "no more connections allowed (max_client_conn)")
        # admin_users (postgres here) over TCP, with psql, as an operator would.
        psql = os.path.join(find_bindir(), "psql")
        out = subprocess.run([psql, "-X", "-A", "-t", "-c", "SHOW POOLS", proc.dsn("pgbouncer")],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert "testdb" in out.stdout
        (row,) = [r for r in proc.admin_dicts("SHOW POOLS") if r["database"] == "testdb"]  # psycopg too
        assert row["cl_active"] == 3, row
        with psycopg.connect(proc.dsn("pgbouncer", user="md5user"), autocommit=True,
                             cursor_factory=psycopg.ClientCursor) as stats:  # stats_users too
            assert stats.execute("SHOW VERSION").fetchall()
        # A console login by a name that is neither admin nor stats user does not get past the limit.
        assert _login_error(proc.dsn("pgbouncer", user="scramuser"))[0] == "53300"
        # pgmux's own OS user over the Unix socket, whatever the user name.
        sockdir = proc.settings.get("unix_socket_dir")
        if sockdir and os.getuid() == proc_uid(proc.pid):
            with psycopg.connect(host=sockdir, port=proc.port, dbname="pgbouncer", user="nobody_in_particular",
                                 autocommit=True, cursor_factory=psycopg.ClientCursor) as own:
                assert own.execute("SHOW POOLS").fetchall()
    finally:
        for c in conns:
            c.close()


def proc_uid(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Uid:"):
                return int(line.split()[1])
    raise AssertionError("no Uid")
