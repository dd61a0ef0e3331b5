"""Admission and healing, as session playbooks over the real App (tests/unit/fakes.py): nothing is made
for a client before it authenticates, client limits, the console past max_client_conn, idle pools
freed, and the retries of a server that is down."""

from __future__ import annotations

import os
import struct
from pathlib import Path

from fakes import FakeTransport, Peer, Rig, error_fields, frames, select_one_reply

from pgmux.errors import PgmuxError
from pgmux.pooling import backoff
from pgmux.protocol import messages as m
from pgmux.protocol.auth import md5_response
from pgmux.session.states import ClientState

Q1 = m.query("select 1")


def md5_login(rig: Rig, user: str, password: str, database: str = "app") -> Peer:
    client = rig.connect(user, database)
    (kind, body), = frames(client.take())
    assert kind == "R" and struct.unpack("!i", body[:4])[0] == 5  # AuthenticationMD5Password
    client.send(m.password_message(md5_response(user, password, body[4:8]) + b"\x00"))
    return client


def nothing_held(rig: Rig) -> bool:
    app = rig.app
    return (not app.registry.pools and not app.registry.max_db and not app.registry.max_user
            and not app.by_cancel and not app.admission.held and not app.admission.per_user
            and not app.scram_keys and not app.routing.splits)


# -- nothing before authentication -------------------------------------------------------------------

def test_failed_logins_make_no_pool(tmp_path: Path) -> None:
    rig = Rig(tmp_path, settings="auth_type = md5")
    for i in range(20):
        client = md5_login(rig, f"stranger{i}", "guess")
        assert error_fields(client.take())["C"] == "28P01"
        assert client.transport.closed
    half = rig.connect("stranger", "app")  # a challenge sent, no answer yet
    assert frames(half.take())[0][0] == "R"
    assert nothing_held(rig) and not rig.servers
    # A wrong password for a real user makes nothing either.
    assert error_fields(md5_login(rig, "alice", "wrong").take())["C"] == "28P01"
    assert nothing_held(rig)
    # The right one does: the pool, the count, the cancel key.
    client = md5_login(rig, "alice", "secret")
    assert list(rig.app.registry.pools) == [("app", "alice")]
    assert rig.app.by_cancel[client.session.cancel_pid] is client.session
    assert rig.app.admission.per_user == {"alice": 1}
    client.session.connection_lost(None)
    half.session.connection_lost(None)
    assert not rig.app.by_cancel and not rig.app.admission.held


def test_console_logins_make_nothing(tmp_path: Path) -> None:
    rig = Rig(tmp_path, settings="auth_type = md5\nadmin_users = alice")
    for user in ("mallory", "alice"):
        client = rig.connect(user, "pgbouncer")
        client.take()
        client.session.connection_lost(None)
    assert nothing_held(rig)


def test_unknown_database_refused_before_authentication(tmp_path: Path) -> None:
    rig = Rig(tmp_path, settings="auth_type = md5")
    assert error_fields(rig.connect("alice", "nosuch").take())["C"] == "3D000"
    assert nothing_held(rig)


# -- client limits ---------------------------------------------------------------------------------

def test_max_user_client_connections(tmp_path: Path) -> None:
    rig = Rig(tmp_path, settings="max_user_client_connections = 1")
    first = rig.login("alice")
    refused = rig.connect("alice")
    fields = error_fields(refused.take())
    assert (fields["S"], fields["C"], fields["M"]) == (
        "FATAL", "53300", "client connections exceeded (max_user_client_connections)")
    assert refused.transport.closed
    rig.login("bob")  # per user
    first.session.connection_lost(None)
    rig.login("alice")  # the slot is free again
    assert rig.app.admission.per_user == {"alice": 1, "bob": 1}


def test_max_db_client_connections_per_database_line(tmp_path: Path) -> None:
    rig = Rig(tmp_path, databases="small = host=127.0.0.1 dbname=appdb max_db_client_connections=1\n")
    rig.login("alice", "small")
    fields = error_fields(rig.connect("bob", "small").take())
    assert (fields["C"], fields["M"]) == ("53300", "client connections exceeded (max_db_client_connections)")
    rig.login("bob", "app")  # another database: no limit
    assert rig.app.admission.per_db == {"small": 1, "app": 1}


def test_max_db_client_connections_global_and_per_line(tmp_path: Path) -> None:
    """The global value holds where a database line sets none or 0 (0 there is "not set"), a line's value
    above 0 replaces it (Config.max_db_client_connections_for, which admit() reads without the call)."""
    rig = Rig(tmp_path, settings="max_db_client_connections = 1",
              databases="zero = host=127.0.0.1 dbname=appdb max_db_client_connections=0\n"
                        "two = host=127.0.0.1 dbname=appdb max_db_client_connections=2\n")
    for db in ("app", "zero"):
        rig.login("alice", db)
        assert error_fields(rig.connect("bob", db).take())["C"] == "53300", db
    rig.login("alice", "two")
    rig.login("bob", "two")
    assert error_fields(rig.connect("alice", "two").take())["C"] == "53300"
    assert rig.app.admission.per_db == {"app": 1, "zero": 1, "two": 2}
    assert rig.app.config.max_db_client_connections_for(rig.app.config.databases["zero"]) == 1


def test_per_user_limit_from_users_section(tmp_path: Path) -> None:
    rig = Rig(tmp_path, settings="max_user_client_connections = 5\n[users]\nbob = max_user_client_connections=1")
    rig.login("bob")
    assert error_fields(rig.connect("bob").take())["C"] == "53300"
    for _ in range(5):
        rig.login("alice")
    assert error_fields(rig.connect("alice").take())["C"] == "53300"


# -- the console past max_client_conn ---------------------------------------------------------------

def test_console_gets_past_max_client_conn(tmp_path: Path) -> None:
    rig = Rig(tmp_path, settings="max_client_conn = 1\nadmin_users = alice\nstats_users = bob")
    rig.login("alice")
    assert error_fields(rig.connect("bob").take())["M"] == "no more connections allowed (max_client_conn)"
    for user in ("alice", "bob"):
        console = rig.connect(user, "pgbouncer")
        assert frames(console.take())[-1][0] == "Z", user  # trust: welcomed
        assert console.session.is_admin
    assert error_fields(rig.connect("carol", "pgbouncer").take())["C"] == "53300"
    # pgmux's own OS user over the Unix socket, whatever its name.
    peer = rig.app.new_client()
    transport = FakeTransport()
    peer.connection_made(transport, "", 0, True, os.getuid())
    peer.data_received(m.startup_message({"user": "carol", "database": "pgbouncer"}))
    assert frames(transport.take())[-1][0] == "Z"


def test_console_reserve_is_bounded(tmp_path: Path) -> None:
    rig = Rig(tmp_path, settings="max_client_conn = 1\nadmin_users = alice\nauth_type = md5")
    pending = []
    for _ in range(20):
        c = rig.connect("alice", "pgbouncer")  # challenged, never answering
        pending.append(c.take())
    refused = [p for p in pending if frames(p)[0][0] == "E"]
    assert len(refused) == 20 - 10  # CONSOLE_RESERVE console connections at most, past the limit
    assert not rig.app.registry.pools


# -- idle pools are freed ----------------------------------------------------------------------------

def run_janitor(rig: Rig, seconds: float, step: float = 0.5) -> None:
    end = rig.clock.t + seconds
    while rig.clock.t < end:
        rig.clock.advance(step)
        rig.app.tick(rig.clock.t)


def test_pool_idle_timeout_frees_empty_pools(tmp_path: Path) -> None:
    rig = Rig(tmp_path, settings="pool_idle_timeout = 10\nserver_idle_timeout = 5")
    client = rig.login("alice")
    run_janitor(rig, 20)
    assert ("app", "alice") in rig.app.registry.pools  # a client holds it
    client.session.connection_lost(None)
    run_janitor(rig, 4)
    assert ("app", "alice") in rig.app.registry.pools  # its server is still idle in it
    run_janitor(rig, 15)
    assert not rig.app.registry.pools and not rig.app.registry.max_user and not rig.app.registry.empty_since
    rig.login("alice")  # made again when wanted
    assert ("app", "alice") in rig.app.registry.pools


def test_disabled_or_paused_pools_stay(tmp_path: Path) -> None:
    rig = Rig(tmp_path, settings="pool_idle_timeout = 1\nserver_idle_timeout = 1")
    rig.login("alice").session.connection_lost(None)
    rig.login("bob").session.connection_lost(None)
    rig.app.registry.pools[("app", "alice")].disabled = True
    rig.app.registry.pools[("app", "bob")].paused = True
    run_janitor(rig, 10)
    assert set(rig.app.registry.pools) == {("app", "alice"), ("app", "bob")}


def test_autodb_idle_timeout_frees_pools_of_the_fallback_database(tmp_path: Path) -> None:
    rig = Rig(tmp_path, databases="* = host=127.0.0.1\n",
              settings="autodb_idle_timeout = 30\nserver_idle_timeout = 1")
    rig.login("alice", "other").session.connection_lost(None)
    rig.login("alice", "app").session.connection_lost(None)
    run_janitor(rig, 40)
    assert set(rig.app.registry.pools) == {("app", "alice")}  # pool_idle_timeout = 0 keeps app's


def test_no_sweep_without_timeouts(tmp_path: Path) -> None:
    rig = Rig(tmp_path)  # pool_idle_timeout 0, no "*": nothing to free, nothing looked at
    rig.login("alice").session.connection_lost(None)
    run_janitor(rig, 5)
    assert not rig.app.registry.empty_since and ("app", "alice") in rig.app.registry.pools


# -- a server that is down ---------------------------------------------------------------------------

def refuse(rig: Rig, server: Peer) -> None:
    rig.app.login_failed(server.session, PgmuxError("pgmux cannot connect to server 127.0.0.1:5432: "
                                                     "Connection refused", sqlstate="57P03", severity="FATAL"),
                          True)


def test_down_server_is_retried_soon_and_its_queue_waits(tmp_path: Path) -> None:
    rig = Rig(tmp_path, settings="query_wait_notify = 3\nquery_wait_timeout = 60")
    client = rig.login()
    (first,) = rig.servers
    first.session.connection_lost(None)  # PostgreSQL went away
    client.send(Q1)
    assert client.state is ClientState.WAITING
    pool = client.session.pool
    gaps = []
    for _ in range(5):
        attempt = rig.servers[-1]
        assert attempt is not first
        refuse(rig, attempt)
        assert client.state is ClientState.WAITING and not client.transport.closed
        failed_at, count = rig.clock.t, len(rig.servers)
        while len(rig.servers) == count:
            rig.clock.advance(0.2)
            rig.app.tick(rig.clock.t)
        gaps.append(round(rig.clock.t - failed_at, 1))
    assert gaps == [0.6, 1.0, 2.0, 2.0, 2.0]  # 0.5, 1, 2, 2... s (the janitor's 0.2 s steps)
    notices = [body for kind, body in frames(client.take()) if kind == "N"]
    assert len(notices) == 1  # once per wait, after query_wait_notify
    text = m.parse_error_fields(notices[0])["M"]
    assert "No server connection available" in text and "Connection refused" in text
    rig.server_login(rig.servers[-1])  # back: the waiting query goes at once
    assert pool.login_failures == 0 and pool.last_login_failure is None
    assert rig.servers[-1].take() == Q1
    rig.servers[-1].send(select_one_reply())
    assert client.take() == select_one_reply()


def test_query_wait_timeout_says_why(tmp_path: Path) -> None:
    rig = Rig(tmp_path, settings="query_wait_timeout = 4")
    client = rig.login()
    rig.servers[0].session.connection_lost(None)
    client.send(Q1)
    refuse(rig, rig.servers[-1])
    run_janitor(rig, 3, 0.2)
    assert not client.transport.closed
    run_janitor(rig, 2, 0.2)
    fields = error_fields(client.take())
    assert (fields["C"], fields["M"]) == ("08P01", "query_wait_timeout")
    assert "Connection refused" in fields["D"]
    assert client.transport.closed


def test_rejected_server_login_fails_the_queue_now(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    client = rig.login()
    rig.servers[0].session.connection_lost(None)
    client.send(Q1)
    server = rig.servers[-1]
    server.take()
    server.send(m.error_response("FATAL", "28P01", 'password authentication failed for user "alice"'))
    assert error_fields(client.take())["C"] == "28P01" and client.transport.closed
    assert client.session.pool.retry_delay == 15.0


def test_server_starting_up_backs_off_to_server_login_retry(tmp_path: Path) -> None:
    rig = Rig(tmp_path, settings="server_login_retry = 5")
    client = rig.login()
    rig.servers[0].session.connection_lost(None)
    client.send(Q1)
    delays = []
    for _ in range(6):
        server = rig.servers[-1]
        server.take()
        server.send(m.error_response("FATAL", "57P03", "the database system is starting up"))
        delays.append(client.session.pool.retry_delay)
        count = len(rig.servers)
        while len(rig.servers) == count:
            rig.clock.advance(0.1)
            rig.app.tick(rig.clock.t)
    assert delays == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert client.state is ClientState.WAITING


# -- the policy alone ----------------------------------------------------------------------------------

def test_backoff_policy() -> None:
    assert backoff.kind_of("57P03", refused=True) == backoff.REFUSED
    assert backoff.kind_of("57P03") == backoff.kind_of("08006") == backoff.TRANSIENT
    assert backoff.kind_of("28P01") == backoff.kind_of("3D000") == backoff.REJECTED
    assert [backoff.retry_delay(backoff.REFUSED, n, 15.0) for n in range(1, 6)] == [0.5, 1.0, 2.0, 2.0, 2.0]
    assert [backoff.retry_delay(backoff.TRANSIENT, n, 15.0) for n in range(1, 7)] == [0.5, 1, 2, 4, 8, 15]
    assert backoff.retry_delay(backoff.REJECTED, 1, 15.0) == 15.0
    assert backoff.retry_delay(backoff.REFUSED, 3, 1.0) == 1.0  # never more often than... less than asked
    assert backoff.retry_delay(backoff.TRANSIENT, 1000, 15.0) == 15.0
    assert backoff.retry_delay(backoff.REJECTED, 1, 0.0) == 0.0


def test_pools_of_a_removed_database_are_freed_once_empty(tmp_path: Path) -> None:
    rig = Rig(tmp_path, databases="old = host=127.0.0.1 dbname=appdb\n", settings="server_idle_timeout = 1")
    client = rig.login("alice", "old")
    path = Path(rig.app.config_path)
    path.write_text(path.read_text().replace("old = host=127.0.0.1 dbname=appdb\n", ""))
    rig.app.reload()
    run_janitor(rig, 5)
    assert ("old", "alice") in rig.app.registry.pools  # its client is still there
    client.session.connection_lost(None)
    run_janitor(rig, 5)
    assert ("old", "alice") not in rig.app.registry.pools


def test_a_server_that_starts_answering_is_asked_again_soon(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    client = rig.login()
    rig.servers[0].session.connection_lost(None)
    client.send(Q1)
    pool = client.session.pool
    for _ in range(6):  # refused for a while: every 2 s by now
        refuse(rig, rig.servers[-1])
        count = len(rig.servers)
        while len(rig.servers) == count:
            rig.clock.advance(0.1)
            rig.app.tick(rig.clock.t)
    assert pool.retry_delay == 2.0
    server = rig.servers[-1]
    server.take()
    server.send(m.error_response("FATAL", "57P03", "the database system is starting up"))
    assert pool.retry_delay == 0.5  # not 15 s: the count starts over for the new kind of failure


def test_query_wait_notify_in_a_full_pool(tmp_path: Path) -> None:
    rig = Rig(tmp_path, settings="default_pool_size = 1\nquery_wait_notify = 2")
    holder = rig.login("alice")
    holder.send(m.query("begin"))
    rig.servers[0].take()
    rig.servers[0].send(m.command_complete("BEGIN") + m.ready_for_query(b"T"))
    holder.take()
    waiter = rig.login("alice")
    waiter.send(Q1)
    assert waiter.state is ClientState.WAITING
    run_janitor(rig, 1.8, 0.2)
    assert waiter.take() == b""
    run_janitor(rig, 3, 0.2)
    notices = [m.parse_error_fields(body) for kind, body in frames(waiter.take()) if kind == "N"]
    assert [(n["S"], n["M"]) for n in notices] == [
        ("NOTICE", "No server connection available in postgres backend, client being queued")]  # PgBouncer's


def test_query_wait_notify_zero_is_silent(tmp_path: Path) -> None:
    rig = Rig(tmp_path, settings="query_wait_notify = 0")
    client = rig.login()
    rig.servers[0].session.connection_lost(None)
    client.send(Q1)
    refuse(rig, rig.servers[-1])
    run_janitor(rig, 10, 0.5)
    assert not [kind for kind, _ in frames(client.take()) if kind == "N"]
    assert client.state is ClientState.WAITING


def test_auth_type_any_needs_a_forced_user(tmp_path: Path) -> None:
    rig = Rig(tmp_path, settings="auth_type = any",
              databases="forced = host=127.0.0.1 dbname=appdb user=alice\n")
    fields = error_fields(rig.connect("whoever", "app").take())
    assert fields["C"] == "28000" and "needs a forced user" in fields["M"]
    assert nothing_held(rig)
    for i in range(5):  # any name gets in, all into the forced user's one pool
        rig.login(f"name{i}", "forced")
    assert list(rig.app.registry.pools) == [("forced", "alice")]


def test_what_logins_read_of_the_settings_follows_a_reload(tmp_path: Path) -> None:
    """Logins read their settings from native copies (runtime/core.py HotSettings), made again by every
    reload: a database added, max_client_conn and max_db_client_connections changed, apply to the
    next login."""
    rig = Rig(tmp_path, settings="max_client_conn = 100")
    assert error_fields(rig.connect("alice", "extra").take())["C"] == "3D000"
    path = Path(rig.app.config_path)
    text = path.read_text()
    path.write_text(text.replace("[pgbouncer]\n", "extra = host=127.0.0.1 dbname=appdb\n[pgbouncer]\n")
                    .replace("max_client_conn = 100", "max_client_conn = 100\nmax_db_client_connections = 1"))
    rig.app.reload()
    first = rig.login("alice", "extra")
    assert first.state is ClientState.IDLE
    assert error_fields(rig.connect("bob", "extra").take())["C"] == "53300"  # one per database now
    path.write_text(path.read_text().replace("max_client_conn = 100", "max_client_conn = 1"))
    rig.app.reload()
    refused = error_fields(rig.connect("bob", "app").take())
    assert (refused["C"], refused["M"]) == ("53300", "no more connections allowed (max_client_conn)")
