"""The hub with a read/write-split database: per-host pools, routing per transaction, bans on failed
connects, failover waits and read-your-writes, played with fake servers (health checks off)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fakes import Peer, Rig, error_fields, frames, reply

from pgmux.protocol import messages as m
from pgmux.runtime.admin_service import AdminService
from pgmux.session.states import ClientState, ServerState

HOSTS = "host=10.0.0.1,10.0.0.2,10.0.0.3 port=5432,5433,5434 dbname=appdb pgmux_roles=primary,replica,replica"
SETTINGS = "health_check_period = 0\nfailover_wait_timeout = 3\nban_time = 60\n"
INSERT_OK = reply(m.command_complete("INSERT 0 1"))
SELECT_OK = reply(m.row_description([("x", m.OID_INT4)]), m.data_row([1]), m.command_complete("SELECT 1"))


def rig_with(tmp_path: Path, extra: str = "", settings: str = "") -> Rig:
    rig = Rig(tmp_path, settings=SETTINGS + settings,
              databases=f"split = {HOSTS} pgmux_read_write_split=1 pgmux_balance=round_robin {extra}\n")
    rig.app.admin = AdminService(rig.app)  # App.start() makes it, with the listeners
    return rig


def port_of(server: Peer) -> int:
    return int(server.session.target.port)


def run(rig: Rig, client: Peer, sql: str, answer: bytes) -> Peer:
    """Send one query; log in a new server if one was opened; answer it; return the server used."""
    before = len(rig.servers)
    client.send(m.query(sql))
    for s in rig.servers[before:]:
        rig.server_login(s)
    server = client.session.server
    assert server is not None, "the client got no server"
    peer = next(p for p in rig.servers if p.session is server)
    assert peer.take().endswith(m.query(sql))  # after the client's parameters, if they differ
    peer.send(answer)
    return peer


def test_reads_go_to_replicas_writes_to_the_primary_each_host_with_its_own_pool(tmp_path: Path) -> None:
    rig = rig_with(tmp_path)
    client = rig.login(database="split")
    assert port_of(rig.servers[0]) in (5433, 5434)  # the login asks a host that takes reads
    read_ports = {port_of(run(rig, client, "SELECT 1", SELECT_OK)) for _ in range(4)}
    assert read_ports == {5433, 5434}
    assert port_of(run(rig, client, "INSERT INTO t VALUES (1)", INSERT_OK)) == 5432
    assert port_of(run(rig, client, "BEGIN", reply(m.command_complete("BEGIN"), status=b"T"))) == 5432
    assert client.session.server is not None  # inside the transaction: the server stays
    pools = [p for p in rig.app.registry if p.database == "split"]
    assert sorted(p.host.port for p in pools) == [5432, 5433, 5434]
    assert all(len(p.servers) == 1 for p in pools)
    sp = rig.app.routing.splits["split"]
    assert sum(sp.router.reads.values()) == 4 and sum(sp.router.writes.values()) == 2


def test_session_mode_keeps_the_primary(tmp_path: Path) -> None:
    rig = rig_with(tmp_path, "pool_mode=session")
    client = rig.login(database="split")
    assert port_of(run(rig, client, "SELECT 1", SELECT_OK)) == 5432


def test_session_setting_forces_the_primary(tmp_path: Path) -> None:
    rig = rig_with(tmp_path)
    client = rig.login(database="split", options="-c pgmux.route=primary")
    assert port_of(run(rig, client, "SELECT 1", SELECT_OK)) == 5432


def test_read_your_writes_reads_the_commit_position_then_reads_stay_on_the_primary(tmp_path: Path) -> None:
    rig = rig_with(tmp_path, "pgmux_read_your_writes=1")
    client = rig.login(database="split")
    primary = run(rig, client, "INSERT INTO t VALUES (1)", INSERT_OK)
    # The client has its reply; the server is still busy with pgmux's own query.
    assert frames(client.take()) == frames(INSERT_OK)
    assert primary.take() == m.query("SELECT pg_current_wal_insert_lsn()")
    assert primary.session.state is ServerState.ACTIVE and client.session.server is primary.session
    primary.send(reply(m.row_description([("lsn", 3220)]), m.data_row([b"0/3000060"]),
                       m.command_complete("SELECT 1")))
    assert client.take() == b""  # swallowed
    assert client.session.ryw_lsn == 0x3000060
    assert primary.session.state is ServerState.IDLE and client.session.server is None
    # No replica is known to have replayed that far (no checks run here): the read goes to the primary.
    assert port_of(run(rig, client, "SELECT 1", SELECT_OK)) == 5432
    assert client.session.server is None  # a read: no position to learn


def test_a_query_sent_during_the_position_query_runs_after_it_on_the_same_server(tmp_path: Path) -> None:
    rig = rig_with(tmp_path, "pgmux_read_your_writes=1")
    client = rig.login(database="split")
    primary = run(rig, client, "INSERT INTO t VALUES (1)", INSERT_OK)
    client.take()
    primary.take()
    client.send(m.query("SELECT 2"))
    assert primary.take() == m.query("SELECT 2")
    primary.send(reply(m.data_row([b"0/10"]), m.command_complete("SELECT 1")) + SELECT_OK)
    assert frames(client.take()) == frames(SELECT_OK)
    assert client.session.ryw_lsn == 0x10
    # The client went on on this server: its position is read again at the end.
    assert primary.take() == m.query("SELECT pg_current_wal_insert_lsn()")


def test_a_failed_connect_bans_the_replica_and_the_client_goes_to_another(tmp_path: Path) -> None:
    rig = rig_with(tmp_path)
    client = rig.login(database="split")
    first = port_of(rig.servers[0])
    other = 5434 if first == 5433 else 5433
    before = len(rig.servers)
    client.send(m.query("SELECT 1"))  # round robin: the other replica, which has no server yet
    (down,) = rig.servers[before:]
    assert port_of(down) == other
    down.take()
    down.send(m.error_response("FATAL", "57P03", "the database system is shutting down"))
    sp = rig.app.routing.splits["split"]
    state = next(h for h in sp.router.hosts if h.host.port == other)
    assert state.banned(rig.clock()) and "shutting down" in state.ban_reason
    assert client.session.state is not ClientState.CLOSED
    server = client.session.server
    assert server is not None and server.target.port == first  # rerouted to the idle one
    assert next(p for p in rig.servers if p.session is server).take() == m.query("SELECT 1")


def test_without_a_primary_a_write_waits_then_fails_with_57P03(tmp_path: Path) -> None:
    rig = rig_with(tmp_path)
    client = rig.login(database="split")
    before = len(rig.servers)
    client.send(m.query("INSERT INTO t VALUES (1)"))
    (primary,) = rig.servers[before:]
    primary.take()
    primary.send(m.error_response("FATAL", "57P03", "the database system is shutting down"))
    assert client.session.state is ClientState.WAITING and client.take() == b""
    rig.clock.advance(2.0)
    rig.app.tick(rig.clock())
    assert client.session.state is ClientState.WAITING
    rig.clock.advance(1.5)
    rig.app.tick(rig.clock())
    err = error_fields(client.take())
    assert err["C"] == "57P03" and "failover_wait_timeout" in err["M"]
    assert client.session.state is ClientState.CLOSED


def test_a_wrong_password_is_not_a_host_failure(tmp_path: Path) -> None:
    rig = rig_with(tmp_path)
    client = rig.connect(database="split")
    (server,) = rig.servers
    server.take()
    server.send(m.error_response("FATAL", "28P01", 'password authentication failed for user "alice"'))
    assert error_fields(client.take())["C"] == "28P01"
    assert not any(h.banned(rig.clock()) for h in rig.app.routing.splits["split"].router.hosts)


@pytest.mark.parametrize("sql", ["SHOW HOSTS", "SHOW POOLS", "SHOW SERVERS"])
def test_admin_shows_hosts_with_roles(tmp_path: Path, sql: str) -> None:
    rig = rig_with(tmp_path, settings="admin_users = alice\n")
    client = rig.login(database="split")
    run(rig, client, "SELECT 1", SELECT_OK)
    admin = rig.login(database="pgbouncer")
    admin.send(m.query(sql))
    out = frames(admin.take())
    assert out[0][0] == "T" and b"role\x00" in out[0][1]
    text = b"".join(body for t, body in out if t == "D")
    assert b"replica" in text and b"10.0.0." in text


def test_ban_and_unban_from_the_console(tmp_path: Path) -> None:
    rig = rig_with(tmp_path, settings="admin_users = alice\n")
    rig.login(database="split")
    admin = rig.login(database="pgbouncer")
    admin.send(m.query("BAN split 10.0.0.2:5433"))
    assert [t for t, _ in frames(admin.take())] == ["C", "Z"]
    state = rig.app.routing.splits["split"].router.find("10.0.0.2", 5433)
    assert state is not None and state.banned(rig.clock())
    admin.send(m.query("UNBAN split 10.0.0.2:5433"))
    admin.take()
    assert not state.banned(rig.clock())
    admin.send(m.query("BAN split 10.0.0.9:5433"))
    assert "no host" in error_fields(admin.take())["M"]
    admin.send(m.query("BAN app 10.0.0.2:5433"))
    assert "split" in error_fields(admin.take())["M"]


def test_a_class_08_error_from_a_server_bans_its_replica(tmp_path: Path) -> None:
    rig = rig_with(tmp_path)
    client = rig.login(database="split")
    server = run(rig, client, "SELECT 1", m.error_response("FATAL", "08006", "connection failure"))
    state = server.session.pool.hstate
    assert state.role == "replica" and state.banned(rig.clock())
    assert error_fields(client.take())["C"] == "08006"


def test_a_protocol_violation_is_the_clients_doing_not_the_hosts(tmp_path: Path) -> None:
    rig = rig_with(tmp_path)
    client = rig.login(database="split")
    server = run(rig, client, "SELECT 1", m.error_response("FATAL", "08P01", "invalid message format"))
    assert not server.session.pool.hstate.banned(rig.clock())


def test_a_waiting_write_goes_to_the_primary_once_it_is_usable_again(tmp_path: Path) -> None:
    rig = rig_with(tmp_path)
    client = rig.login(database="split")
    before = len(rig.servers)
    client.send(m.query("INSERT INTO t VALUES (1)"))
    (down,) = rig.servers[before:]
    down.take()
    down.send(m.error_response("FATAL", "57P03", "the database system is starting up"))
    assert client.session.state is ClientState.WAITING
    assert rig.app.routing.ban("split", "10.0.0.1", 5432, on=False) is None  # as a good check would
    rig.app.tick(rig.clock())
    (up,) = rig.servers[before + 1:]
    assert port_of(up) == 5432
    rig.server_login(up)
    assert up.take() == m.query("INSERT INTO t VALUES (1)")
    up.send(INSERT_OK)
    assert frames(client.take()) == frames(INSERT_OK)


def test_a_write_pipelined_behind_a_read_waits_for_the_replica_then_goes_to_the_primary(tmp_path: Path) -> None:
    rig = rig_with(tmp_path)
    client = rig.login(database="split")
    run(rig, client, "INSERT INTO t VALUES (0)", INSERT_OK)  # the primary's pool has a logged-in server
    client.take()
    before = len(rig.servers)
    client.send(m.query("SELECT 1"))
    for s in rig.servers[before:]:
        rig.server_login(s)
    replica = next(p for p in rig.servers if p.session is client.session.server)
    assert port_of(replica) in (5433, 5434) and replica.take().endswith(m.query("SELECT 1"))
    client.send(m.query("INSERT INTO t VALUES (1)") + m.query("SELECT 2"))  # pipelined: the replica still owes
    assert replica.take() == b""  # held back, not sent to the replica
    replica.send(SELECT_OK)
    assert frames(client.take()) == frames(SELECT_OK)
    primary = next(p for p in rig.servers if p.session is client.session.server)
    assert port_of(primary) == 5432
    assert primary.take().endswith(m.query("INSERT INTO t VALUES (1)") + m.query("SELECT 2"))
    primary.send(INSERT_OK + SELECT_OK)
    assert frames(client.take()) == frames(INSERT_OK + SELECT_OK)
    assert client.session.server is None and replica.state is ServerState.IDLE


def test_inside_a_read_only_transaction_a_pipelined_write_stays_on_the_replica(tmp_path: Path) -> None:
    rig = rig_with(tmp_path)
    client = rig.login(database="split")
    before = len(rig.servers)
    client.send(m.query("BEGIN READ ONLY"))
    for s in rig.servers[before:]:
        rig.server_login(s)
    replica = next(p for p in rig.servers if p.session is client.session.server)
    assert port_of(replica) in (5433, 5434) and replica.take().endswith(m.query("BEGIN READ ONLY"))
    client.send(m.query("INSERT INTO t VALUES (1)"))  # held while BEGIN is answered...
    assert replica.take() == b""
    replica.send(reply(m.command_complete("BEGIN"), status=b"T"))
    assert replica.take() == m.query("INSERT INTO t VALUES (1)")  # ...then it is the transaction's
    refused = reply(m.error_response("ERROR", "25006", "cannot execute INSERT in a read-only transaction"),
                    status=b"E")
    replica.send(refused)
    assert frames(client.take()) == frames(reply(m.command_complete("BEGIN"), status=b"T") + refused)
    assert client.session.server is replica.session
