"""Replication connections through pgmux (issue 10, item 3), as PgBouncer 1.23+ serves them: each gets
a server connection of its own, with the client's `replication=...`, relayed uninterpreted, closed with
the client, never pooled, within max_db_connections / max_user_connections / max_client_conn.

pg_basebackup, pg_receivewal and pg_recvlogical run directly and through pgmux against a primary of
their own (wal_level=logical, for test_decoding), and must produce the same. The streaming tools run
until stopped: each is stopped by PID after a bounded wait for what it should have written.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conformance import Msg, RawClient

from conftest import PgmuxProc, PgmuxStarter
from pgmux.protocol import messages as m
from pgmux.testing.cluster import HOST, PgCluster, stop_process

TIMEOUT = 60.0


@pytest.fixture(scope="module")
def logical() -> Iterator[PgCluster]:
    """A primary of our own: logical decoding needs wal_level=logical, and slots are left behind."""
    with PgCluster(replicas=0, conf_extra={"wal_level": "logical", "max_replication_slots": 10,
                                           "max_wal_senders": 10},
                   hba_extra=[f"host replication repluser {HOST}/32 scram-sha-256"]) as cluster:
        cluster.primary.psql("CREATE ROLE repluser LOGIN REPLICATION PASSWORD 'replpass'")
        cluster.primary.psql("CREATE DATABASE repldb")
        cluster.primary.psql("CREATE TABLE t (id int PRIMARY KEY, v text)", db="repldb")
        yield cluster


def start_pgmux(pgmux_factory: PgmuxStarter, cluster: PgCluster, settings: dict[str, Any] | None = None,
                extra: str = "") -> PgmuxProc:
    p = cluster.primary
    line = f"host={p.host} port={p.port}"
    return pgmux_factory(databases={"repldb": f"{line} dbname=repldb {extra}".strip(),
                                    "replication": f"{line} dbname=postgres {extra}".strip()},
                         settings={"pool_mode": "transaction", "default_pool_size": 1, **(settings or {})})


def conninfo(host: str, port: int, db: str = "repldb", **kw: str) -> str:
    return " ".join(f"{k}={v}" for k, v in {"host": host, "port": str(port), "user": "postgres", "dbname": db,
                                              "connect_timeout": "15", **kw}.items())


def run(cmd: list[str], timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                          env={**os.environ, "PGCONNECT_TIMEOUT": "15"})


def wait_for(what: str, cond: Callable[[], Any], timeout: float = TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def sql(cluster: PgCluster, text: str, db: str = "repldb") -> list[tuple[Any, ...]]:
    p = cluster.primary
    with psycopg.connect(host=p.host, port=p.port, user="postgres", dbname=db, autocommit=True,
                         connect_timeout=15) as conn:
        cur = conn.execute(text)
        return cur.fetchall() if cur.description else []


def wal_senders(cluster: PgCluster) -> list[tuple[Any, ...]]:
    return sql(cluster, "SELECT application_name, state FROM pg_stat_replication ORDER BY 1")


def show(mux: PgmuxProc, what: str) -> list[dict[str, Any]]:
    return mux.admin_dicts(f"SHOW {what}")


# -- the startup parameter ----------------------------------------------------------------------------

async def raw_login(host: str, port: int, params: dict[str, str]) -> list[Msg]:
    reader, writer = await asyncio.open_connection(host, port)
    client = RawClient(reader, writer)
    writer.write(m.startup_message({"user": "postgres", **params}))
    msgs: list[Msg] = []
    try:
        async with asyncio.timeout(20):
            while not msgs or msgs[-1][0] not in (m.READY_FOR_QUERY, m.ERROR_RESPONSE):
                msgs.append(await client.read_msg())
        if msgs[-1][0] == m.READY_FOR_QUERY:
            msgs += await _query(client, "IDENTIFY_SYSTEM")
    finally:
        await client.close()
    return msgs


async def _query(client: RawClient, text: str) -> list[Msg]:
    client.send(m.query(text))
    async with asyncio.timeout(20):
        return await client.read_until(m.READY_FOR_QUERY, 1)


def outline(msgs: list[Msg]) -> list[Any]:
    out: list[Any] = []
    for t, body in msgs:
        if t == m.ERROR_RESPONSE:
            f = m.parse_error_fields(body)
            out.append(("E", f.get("S"), f.get("C"), f.get("M"), f.get("H")))
        elif t == m.PARAMETER_STATUS:
            out.append(("S", body))
        elif t == m.DATA_ROW:
            values = m.data_row_values(body)
            out.append(("D", values[0], values[1]))  # systemid, timeline (xlogpos moves)
        elif t != m.BACKEND_KEY_DATA:
            out.append((t, body))
    status = sorted(x for x in out if x[0] == "S")
    return status + [x for x in out if x[0] != "S"]


@pytest.mark.parametrize("params", [
    {"replication": "true", "database": "replication"},
    {"replication": "on", "database": "replication", "application_name": "walrus"},
    {"replication": "database", "database": "repldb"},
    {"replication": "yes", "database": "replication", "options": "-c wal_sender_timeout=5s"},
    {"replication": "maybe", "database": "replication"},
    {"replication": "false", "database": "repldb"},
])
def test_the_login_and_identify_system_match_postgresql(logical: PgCluster, pgmux_factory: PgmuxStarter,
                                                        params: dict[str, str]) -> None:
    p = logical.primary
    direct = outline(asyncio.run(raw_login(p.host, p.port, params)))
    mux = start_pgmux(pgmux_factory, logical)
    pooled = outline(asyncio.run(raw_login(mux.host, mux.port, params)))
    assert pooled == direct
    if params["replication"] in ("true", "on", "database", "yes"):
        assert any(x[0] == "D" for x in direct)  # IDENTIFY_SYSTEM answered: a walsender
    if params["replication"] == "maybe":
        assert direct[-1][:3] == ("E", "FATAL", "22023")


# -- the tools ----------------------------------------------------------------------------------------

def test_pg_basebackup_through_pgmux_makes_the_same_backup(logical: PgCluster, pgmux_factory: PgmuxStarter,
                                                            tmp_path: Path) -> None:
    p = logical.primary
    mux = start_pgmux(pgmux_factory, logical)
    sql(logical, "INSERT INTO t SELECT i, 'before backup' FROM generate_series(1, 500) i ON CONFLICT DO NOTHING")
    out: dict[str, Path] = {}
    for name, (host, port) in {"direct": (p.host, p.port), "pgmux": (mux.host, mux.port)}.items():
        target = out[name] = tmp_path / name
        # -X stream: a second replication connection streams the WAL while the first sends the files.
        res = run(["pg_basebackup", "-d", conninfo(host, port, "postgres"), "-D", str(target), "-X", "stream",
                   "-c", "fast", "--no-sync", "-v"], timeout=120)
        assert res.returncode == 0, res.stderr
    for name, target in out.items():
        assert (target / "backup_label").exists() and (target / "PG_VERSION").read_text() == \
            (Path(out["direct"]) / "PG_VERSION").read_text()
        verified = run([logical.bin("pg_verifybackup"), "-n", str(target)])
        assert verified.returncode == 0, (name, verified.stdout, verified.stderr)

    def files(root: Path) -> set[str]:
        return {str(f.relative_to(root)) for f in root.rglob("*") if f.is_file()
                and not str(f.relative_to(root)).startswith(("pg_wal", "pg_stat_tmp", "pg_replslot"))}

    assert files(out["pgmux"]) == files(out["direct"])
    # pgmux's side: both connections were replication ones, and neither is left once the tool is done.
    log = mux.wait_log("new replication connection to server", 2)
    assert log.count("new replication connection to server") == 2, log[-3000:]
    wait_for("the replication servers to close", lambda: not [s for s in show(mux, "SERVERS")
                                                                if s["replication"] != "none"])
    wait_for("no walsender left", lambda: not wal_senders(logical))


def _start(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, "PGCONNECT_TIMEOUT": "15"})


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # both tools finish cleanly on SIGINT
    stop_process(proc, 15)


def test_pg_receivewal_through_pgmux_writes_the_same_segment(logical: PgCluster, pgmux_factory: PgmuxStarter,
                                                              tmp_path: Path) -> None:
    p = logical.primary
    mux = start_pgmux(pgmux_factory, logical)
    dirs = {"direct": tmp_path / "direct", "pgmux": tmp_path / "pgmux"}
    procs = {}
    for name, (host, port) in {"direct": (p.host, p.port), "pgmux": (mux.host, mux.port)}.items():
        dirs[name].mkdir()
        procs[name] = _start(["pg_receivewal", "-d", conninfo(host, port, "postgres", application_name=name),
                              "-D", str(dirs[name]), "--no-loop", "--no-sync", "-v"], tmp_path / f"{name}.log")
    try:
        wait_for("both receivers streaming", lambda: [r[0] for r in wal_senders(logical)] == ["direct", "pgmux"]
                 and all(r[1] == "streaming" for r in wal_senders(logical)))
        # Through pgmux: a replication client and its own server, apart from the pool.
        clients = [c for c in show(mux, "CLIENTS") if c["replication"] != "none"]
        servers = [s for s in show(mux, "SERVERS") if s["replication"] != "none"]
        assert [(c["replication"], c["state"], c["database"]) for c in clients] == [
            ("physical", "active", "replication")]
        assert [(s["replication"], s["state"]) for s in servers] == [("physical", "active")]
        assert servers[0]["link"] == clients[0]["ptr"] and clients[0]["link"] == servers[0]["ptr"]
        pools = {r["database"]: r for r in show(mux, "POOLS")}
        assert (pools["replication"]["cl_active"], pools["replication"]["sv_active"]) == (1, 1)
        # ... while the pool of one serves ordinary clients as before, its server idle in between.
        for _ in range(3):
            with psycopg.connect(mux.dsn("repldb"), autocommit=True, connect_timeout=15) as conn:
                conn.execute("INSERT INTO t SELECT i, 'wal' FROM generate_series(1000, 3000) i ON CONFLICT DO NOTHING")
        pooled = [s for s in show(mux, "SERVERS") if s["replication"] == "none"]
        assert [s["state"] for s in pooled] == ["idle"]
        # The segment a fresh WAL record lands in: pg_current_wal_lsn() alone, when it sits exactly on a
        # segment boundary (nothing written since an earlier test's switch), names the segment before.
        segment = sql(logical, "SELECT pg_walfile_name(pg_logical_emit_message(false, 'pgmux-test', 'x'))")[0][0]
        sql(logical, "SELECT pg_switch_wal()")
        sql(logical, "INSERT INTO t VALUES (99999, 'after switch') ON CONFLICT DO NOTHING")
        try:
            wait_for(f"{segment} complete in both", lambda: all((d / segment).exists() for d in dirs.values()),
                     2 * TIMEOUT)
        except AssertionError as e:
            seen = {name: sorted(f.name for f in d.iterdir()) for name, d in dirs.items()}
            logs = {name: (tmp_path / f"{name}.log").read_text(errors="replace")[-2000:] for name in dirs}
            raise AssertionError(f"{e}; files {seen}; senders {wal_senders(logical)}; logs {logs}") from None
    finally:
        for proc in procs.values():
            _stop(proc)
    assert (dirs["pgmux"] / segment).read_bytes() == (dirs["direct"] / segment).read_bytes()
    assert len((dirs["pgmux"] / segment).read_bytes()) == 16 << 20
    wait_for("the client and its server gone from pgmux", lambda: not [s for s in show(mux, "SERVERS")
                                                                     if s["replication"] != "none"]
             and not [c for c in show(mux, "CLIENTS") if c["replication"] != "none"])
    assert [s["state"] for s in show(mux, "SERVERS")] == ["idle"]  # the pool's server: never handed out or back
    wait_for("no walsender left", lambda: not wal_senders(logical))


def test_pg_recvlogical_through_pgmux_decodes_the_same_changes(logical: PgCluster, pgmux_factory: PgmuxStarter,
                                                                 tmp_path: Path) -> None:
    p = logical.primary
    mux = start_pgmux(pgmux_factory, logical)
    where = {"direct": (p.host, p.port), "pgmux": (mux.host, mux.port)}
    procs = {}
    files = {name: tmp_path / f"{name}.out" for name in where}
    try:
        for name, (host, port) in where.items():  # the slots: CREATE_REPLICATION_SLOT, through pgmux too
            res = run(["pg_recvlogical", "-d", conninfo(host, port), "--slot", f"slot_{name}", "--create-slot",
                       "-P", "test_decoding"])
            assert res.returncode == 0, res.stderr
        for name, (host, port) in where.items():
            procs[name] = _start(["pg_recvlogical", "-d", conninfo(host, port, application_name=name),
                                  "--slot", f"slot_{name}", "--start", "-f", str(files[name]), "--no-loop",
                                  "-F", "0", "-s", "1"], tmp_path / f"{name}.log")
        wait_for("both decoders streaming", lambda: [r[0] for r in wal_senders(logical)] == ["direct", "pgmux"])
        assert [(c["replication"], c["state"]) for c in show(mux, "CLIENTS") if c["replication"] != "none"] == [
            ("logical", "active")]
        sql(logical, "INSERT INTO t VALUES (-1, 'one'), (-2, 'two'); UPDATE t SET v = 'three' WHERE id = -2;"
                     "DELETE FROM t WHERE id = -1")
        wait_for("the changes decoded in both", lambda: all(
            f.exists() and f.read_text().count("COMMIT") >= 1 for f in files.values()))
    finally:
        for proc in procs.values():
            _stop(proc)
        for name in where:
            sql(logical, f"SELECT pg_drop_replication_slot('slot_{name}') FROM pg_replication_slots "
                         f"WHERE slot_name = 'slot_{name}'")
    text = files["pgmux"].read_text()
    assert "table public.t: INSERT: id[integer]:-1 v[text]:'one'" in text
    assert "table public.t: UPDATE: id[integer]:-2 v[text]:'three'" in text
    assert text == files["direct"].read_text()


def test_suspend_holds_a_replication_stream_and_resume_lets_it_go_on(logical: PgCluster,
                                                                      pgmux_factory: PgmuxStarter,
                                                                      tmp_path: Path) -> None:
    """SUSPEND reads nothing from a replication stream's server either: a change made meanwhile reaches the
    client only after RESUME, on the same connection."""
    mux = start_pgmux(pgmux_factory, logical)
    out = tmp_path / "suspended.out"
    res = run(["pg_recvlogical", "-d", conninfo(mux.host, mux.port), "--slot", "slot_suspend", "--create-slot",
               "-P", "test_decoding"])
    assert res.returncode == 0, res.stderr
    proc = _start(["pg_recvlogical", "-d", conninfo(mux.host, mux.port, application_name="suspended"), "--slot",
                   "slot_suspend", "--start", "-f", str(out), "--no-loop", "-F", "0", "-s", "1"],
                  tmp_path / "suspended.log")
    try:
        wait_for("the decoder streaming", lambda: [r[0] for r in wal_senders(logical)] == ["suspended"])
        sql(logical, "INSERT INTO t VALUES (-10, 'before')")
        wait_for("the first change decoded", lambda: out.exists() and "'before'" in out.read_text())
        with psycopg.connect(mux.dsn("pgbouncer"), autocommit=True, cursor_factory=psycopg.ClientCursor,
                             connect_timeout=15) as console:  # opened first: a new one waits while suspended
            console.execute("SUSPEND")
            sql(logical, "INSERT INTO t VALUES (-11, 'while suspended')")
            time.sleep(2)
            assert "'while suspended'" not in out.read_text()
            assert proc.poll() is None
            console.execute("RESUME")
        wait_for("the change made while suspended decoded", lambda: "'while suspended'" in out.read_text())
        assert proc.poll() is None, "the stream ended"
    finally:
        _stop(proc)
        sql(logical, "DELETE FROM t WHERE id IN (-10, -11)")
        sql(logical, "SELECT pg_drop_replication_slot('slot_suspend') FROM pg_replication_slots "
                     "WHERE slot_name = 'slot_suspend'")


# -- limits -------------------------------------------------------------------------------------------

def identify(mux: PgmuxProc, timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    return run(["psql", "-X", "-At", "-d", conninfo(mux.host, mux.port, "replication", replication="true"),
                "-c", "IDENTIFY_SYSTEM"], timeout=timeout)


def test_replication_connections_count_towards_max_db_connections(logical: PgCluster, pgmux_factory: PgmuxStarter,
                                                                  tmp_path: Path) -> None:
    mux = start_pgmux(pgmux_factory, logical, {"query_wait_timeout": 3}, extra="max_db_connections=1")
    (tmp_path / "wal").mkdir()
    first = _start(["pg_receivewal", "-d", conninfo(mux.host, mux.port, "postgres", application_name="first"),
                    "-D", str(tmp_path / "wal"), "--no-loop", "--no-sync"], tmp_path / "first.log")
    try:
        wait_for("the first receiver streaming", lambda: [r[0] for r in wal_senders(logical)] == ["first"])
        # A second replication client finds no room: it waits (SHOW CLIENTS says so), then gives up.
        second = subprocess.Popen(["psql", "-X", "-At", "-d", conninfo(mux.host, mux.port, "replication",
                                                                      replication="true"), "-c", "IDENTIFY_SYSTEM"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for("the second client waiting", lambda: [c["state"] for c in show(mux, "CLIENTS")
                                                      if c["replication"] == "physical"].count("waiting") == 1)
        _, err = second.communicate(timeout=TIMEOUT)
        assert second.returncode != 0 and "query_wait_timeout" in err, err
        # Once the first leaves, there is room again.
        third = subprocess.Popen(["psql", "-X", "-At", "-d", conninfo(mux.host, mux.port, "replication",
                                                                     replication="true"), "-c", "IDENTIFY_SYSTEM"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for("the third client waiting", lambda: [c["state"] for c in show(mux, "CLIENTS")
                                                     if c["replication"] == "physical"].count("waiting") == 1)
        _stop(first)
        out, err = third.communicate(timeout=TIMEOUT)
        assert third.returncode == 0, err
        assert out.split("|")[0] == sql(logical, "SELECT system_identifier::text FROM pg_control_system()")[0][0]
    finally:
        _stop(first)


def test_an_idle_pooled_server_is_evicted_to_make_room(logical: PgCluster, pgmux_factory: PgmuxStarter) -> None:
    mux = start_pgmux(pgmux_factory, logical, {"max_user_connections": 1})
    with psycopg.connect(mux.dsn("repldb"), autocommit=True, connect_timeout=15) as conn:
        conn.execute("SELECT 1")
        assert [s["state"] for s in show(mux, "SERVERS")] == ["idle"]
        res = identify(mux)
        assert res.returncode == 0, res.stderr
        wait_for("the eviction logged", lambda: "evicted for a replication connection" in mux.log())
        conn.execute("SELECT 1")  # a new pooled server, once the replication one is gone
    assert [s["replication"] for s in show(mux, "SERVERS")] == ["none"]


def test_a_refused_replication_login_reaches_the_client(logical: PgCluster, pgmux_factory: PgmuxStarter) -> None:
    """The server's own FATAL (here: no such database for a logical replication connection) goes to the
    client, and no server is left behind."""
    mux = pgmux_factory(databases={"ghost": f"host={HOST} port={logical.primary.port} dbname=nosuchdb"})
    res = run(["psql", "-X", "-At", "-d", conninfo(mux.host, mux.port, "ghost", replication="database"),
               "-c", "IDENTIFY_SYSTEM"])
    assert res.returncode != 0 and 'database "nosuchdb" does not exist' in res.stderr, res.stderr
    assert show(mux, "SERVERS") == []


@pytest.mark.parametrize("secret", ["plain", "verifier"])
def test_a_replication_login_with_scram_on_both_sides(logical: PgCluster, pgmux_factory: PgmuxStarter,
                                                       secret: str) -> None:
    """pgmux logs in to the server for a replication client as for a pooled one: with the password from
    auth_file, or with the keys of the client's own SCRAM login when auth_file holds the verifier."""
    stored = "replpass" if secret == "plain" else \
        sql(logical, "SELECT rolpassword FROM pg_authid WHERE rolname = 'repluser'", db="postgres")[0][0]
    p = logical.primary
    mux = pgmux_factory(databases={"replication": f"host={p.host} port={p.port} dbname=postgres"},
                        settings={"auth_type": "scram-sha-256"}, userlist={"repluser": stored})

    def identify_as(password: str) -> subprocess.CompletedProcess[str]:
        return run(["psql", "-X", "-At", "-d", conninfo(mux.host, mux.port, "replication", user="repluser",
                                                       password=password, replication="true"),
                    "-c", "IDENTIFY_SYSTEM"])

    res = identify_as("replpass")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split("|")[0] == sql(logical, "SELECT system_identifier::text FROM pg_control_system()")[0][0]
    res = identify_as("wrong")
    assert res.returncode != 0 and 'password authentication failed for user "repluser"' in res.stderr, res.stderr
