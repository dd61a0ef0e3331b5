"""Playbooks for pin_mode = refuse, SHOW STATS' pin counter, and session-state tracking's finer points:
savepoints, set_config with bound parameters, and DROP of the temporary tables that pinned a client."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from fakes import Peer, Rig, error_fields, frames, reply

from pgmux.config import load_config
from pgmux.errors import ConfigError
from pgmux.protocol import messages as m
from pgmux.session.pipeline import _FAIL_PARSE as FAIL_PARSE
from pgmux.session.pipeline import _FAIL_QUERY as FAIL_QUERY
from pgmux.session.states import ServerState

STRICT = "strict = host=127.0.0.1 port=5432 dbname=appdb pgmux_pin_mode=refuse\n"
FAIL_ERR = m.error_response("ERROR", "42601", 'syntax error at or near "pgmux"')
SYNC = m.message(m.SYNC)


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path, databases=STRICT)


def run(client: Peer, server: Peer, sql: str, *answer: bytes, status: bytes = b"I") -> None:
    client.send(m.query(sql))
    assert server.take() == m.query(sql)
    server.send(reply(*answer, status=status))
    assert client.take() == reply(*answer, status=status)


def parse(sql: str, name: str = "") -> bytes:
    return m.message(m.PARSE, m.cstr(name) + m.cstr(sql) + b"\x00\x00")


def bind(values: list[bytes | None], formats: tuple[int, ...] = (), name: str = "") -> bytes:
    body = m.cstr("") + m.cstr(name) + struct.pack(f"!h{len(formats)}h", len(formats), *formats)
    body += struct.pack("!h", len(values))
    for v in values:
        body += struct.pack("!i", -1) if v is None else struct.pack("!i", len(v)) + v
    return m.message(m.BIND, body + b"\x00\x00")


EXECUTE = m.message(m.EXECUTE, b"\x00\x00\x00\x00\x00")


# -- config -----------------------------------------------------------------------------------------
def test_pin_mode_in_both_formats(tmp_path: Path) -> None:
    (tmp_path / "a.ini").write_text("[databases]\nx = host=a pgmux_pin_mode=REFUSE\ny = host=a\n")
    (tmp_path / "b.toml").write_text('[databases.x]\nhost = "a"\npin_mode = "refuse"\n')
    ini, toml = load_config(str(tmp_path / "a.ini")), load_config(str(tmp_path / "b.toml"))
    assert ini.databases["x"] == toml.databases["x"]
    assert (ini.databases["x"].pin_mode, ini.databases["y"].pin_mode) == ("refuse", "pin")
    (tmp_path / "c.ini").write_text("[databases]\nx = host=a pgmux_pin_mode=never\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(tmp_path / "c.ini"))
    assert info.value.key == "databases.x.pgmux_pin_mode" and "must be one of: pin, refuse" in str(info.value)


# -- refuse -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("sql", "what"), [
    ("LISTEN jobs", "LISTEN"),
    ("CREATE TEMP TABLE t (x int)", "a temporary table"),
    ("select 1; select pg_advisory_lock(7)", "a session-level advisory lock"),
    ("DECLARE c CURSOR WITH HOLD FOR select 1", "a cursor WITH HOLD"),
    ("LOAD 'auto_explain'", "LOAD"),
])
def test_refused_query_fails_and_the_server_stays_clean(rig: Rig, sql: str, what: str) -> None:
    a = rig.login(database="strict")
    (s,) = rig.servers
    a.send(m.query(sql))
    assert s.take() == FAIL_QUERY  # the statement never reaches the server
    err = error_fields(a.take())
    assert err["C"] == "0A000" and err["M"].startswith(what) and "pin_mode = refuse" in err["M"]
    assert '"strict"' in err["M"] and "pgmux_pin_mode=pin" in err["H"]
    s.send(FAIL_ERR + m.ready_for_query(b"I"))  # the server's own error is swallowed
    assert a.take() == m.ready_for_query(b"I")
    assert a.session.pinned == "" and s.state is ServerState.IDLE
    run(a, s, "select 1", m.command_complete("SELECT 1"))
    assert s.session.pool.stats.pin_count == 0


def test_refused_inside_a_transaction_fails_the_transaction(rig: Rig) -> None:
    a = rig.login(database="strict")
    (s,) = rig.servers
    run(a, s, "BEGIN", m.command_complete("BEGIN"), status=b"T")
    a.send(m.query("LISTEN jobs"))
    assert s.take() == FAIL_QUERY
    assert error_fields(a.take())["C"] == "0A000"
    s.send(FAIL_ERR + m.ready_for_query(b"E"))  # PostgreSQL's state: the transaction has failed
    assert a.take() == m.ready_for_query(b"E")
    run(a, s, "ROLLBACK", m.command_complete("ROLLBACK"))
    assert s.state is ServerState.IDLE


def test_refused_parse_through_the_extended_protocol(rig: Rig) -> None:
    a = rig.login(database="strict")
    (s,) = rig.servers
    a.send(parse("select pg_advisory_lock($1)") + bind([b"7"]) + EXECUTE + SYNC)
    assert s.take() == FAIL_PARSE + SYNC  # the rest of the batch is skipped, as after any error
    out = a.take()
    assert [t for t, _ in frames(out)] == ["E"] and error_fields(out)["C"] == "0A000"
    s.send(FAIL_ERR + m.ready_for_query(b"I"))
    assert a.take() == m.ready_for_query(b"I")
    assert a.session.pinned == "" and s.state is ServerState.IDLE


def test_pin_mode_pin_still_pins_and_counts(rig: Rig) -> None:
    a = rig.login()  # database app: pin_mode = pin (the default)
    (s,) = rig.servers
    run(a, s, "LISTEN jobs", m.command_complete("LISTEN"))
    assert a.session.pinned == "listen"
    from pgmux.runtime.admin_service import AdminService

    svc = AdminService(rig.app)
    (row,) = [r for r in svc._stats() if r.database == "app"]
    assert row.total_pinned_count == 1


# -- savepoints, bound set_config, DROP of temp tables ----------------------------------------------
def test_rollback_to_savepoint_keeps_what_came_before_it(rig: Rig) -> None:
    a = rig.login()
    (s,) = rig.servers
    run(a, s, "BEGIN", m.command_complete("BEGIN"), status=b"T")
    run(a, s, "SET app.a = 'kept'", m.command_complete("SET"), status=b"T")
    run(a, s, "SAVEPOINT s1", m.command_complete("SAVEPOINT"), status=b"T")
    run(a, s, "SET app.b = 'dropped'", m.command_complete("SET"), status=b"T")
    run(a, s, "SAVEPOINT s2", m.command_complete("SAVEPOINT"), status=b"T")
    run(a, s, "SET app.c = 'dropped too'", m.command_complete("SET"), status=b"T")
    run(a, s, "ROLLBACK TO SAVEPOINT s1", m.command_complete("ROLLBACK"), status=b"T")
    run(a, s, "SET app.d = 'after'", m.command_complete("SET"), status=b"T")
    run(a, s, "SAVEPOINT s3", m.command_complete("SAVEPOINT"), status=b"T")
    run(a, s, "SET app.e = 'released'", m.command_complete("SET"), status=b"T")
    run(a, s, "RELEASE s3", m.command_complete("RELEASE"), status=b"T")
    run(a, s, "COMMIT", m.command_complete("COMMIT"))
    assert {k: v for k, v in a.session.params.items() if k.startswith("app.")} == {
        "app.a": "kept", "app.d": "after", "app.e": "released"}


def test_rollback_to_a_savepoint_older_than_every_set_drops_them(rig: Rig) -> None:
    a = rig.login()
    (s,) = rig.servers
    run(a, s, "BEGIN", m.command_complete("BEGIN"), status=b"T")
    run(a, s, "SAVEPOINT s1", m.command_complete("SAVEPOINT"), status=b"T")
    run(a, s, "SET app.a = 'gone'", m.command_complete("SET"), status=b"T")
    run(a, s, "ROLLBACK TO s1", m.command_complete("ROLLBACK"), status=b"T")
    run(a, s, "COMMIT", m.command_complete("COMMIT"))
    assert "app.a" not in a.session.params


@pytest.mark.parametrize(("values", "formats", "want"), [
    ([b"app.user", b"bob"], (), {"app.user": "bob"}),
    ([b"app.user", b"bob", b"\x00"], (0, 0, 1), {"app.user": "bob"}),  # is_local false, in binary
    ([b"app.user", b"bob", b"t"], (), {}),  # SET LOCAL: stays in its transaction
    ([b"app.user", b"bob", b"\x01"], (0, 0, 1), {}),
])
def test_set_config_with_bound_parameters(rig: Rig, values: list[bytes | None], formats: tuple[int, ...],
                                          want: dict[str, str]) -> None:
    a = rig.login()
    (s,) = rig.servers
    sql = "select set_config($1, $2, false)" if len(values) == 2 else "select set_config($1, $2, $3)"
    msgs = parse(sql) + bind(values, formats) + EXECUTE + SYNC
    a.send(msgs)
    assert s.take() == msgs
    s.send(m.message(m.PARSE_COMPLETE) + m.message(m.BIND_COMPLETE) + m.data_row(["bob"])
           + m.command_complete("SELECT 1") + m.ready_for_query(b"I"))
    a.take()
    assert {k: v for k, v in a.session.params.items() if k.startswith("app.")} == want


def test_dropping_the_last_temp_table_unpins(rig: Rig) -> None:
    a = rig.login()
    (s,) = rig.servers
    run(a, s, "CREATE TEMP TABLE t1 (x int)", m.command_complete("CREATE TABLE"))
    run(a, s, "CREATE TEMP TABLE t2 (x int)", m.command_complete("CREATE TABLE"))
    run(a, s, "DROP TABLE t1", m.command_complete("DROP TABLE"))
    assert a.session.pinned == "temp table"
    run(a, s, "BEGIN", m.command_complete("BEGIN"), status=b"T")
    run(a, s, "DROP TABLE pg_temp.t2", m.command_complete("DROP TABLE"), status=b"T")
    run(a, s, "ROLLBACK", m.command_complete("ROLLBACK"))  # the drop is undone: still pinned
    assert a.session.pinned == "temp table"
    run(a, s, "DROP TABLE public.t2", m.command_complete("DROP TABLE"))  # not the temp one
    assert a.session.pinned == "temp table"
    run(a, s, "DROP TABLE IF EXISTS t2", m.command_complete("DROP TABLE"))
    assert a.session.pinned == "" and s.state is ServerState.IDLE


def test_server_error_back_before_the_clients_sync(rig: Rig) -> None:
    """asyncpg prepares with Parse/Describe/Flush and sends Sync only after it saw the error; the
    server's own error (flushed at once) may come back first. The Sync must still end the skip."""
    a = rig.login(database="strict")
    (s,) = rig.servers
    a.send(parse("select pg_advisory_lock($1)", name="st1") + m.message(m.DESCRIBE, b"S" + m.cstr("st1"))
           + m.message(m.FLUSH))
    assert s.take() == FAIL_PARSE
    assert error_fields(a.take())["C"] == "0A000"
    s.send(FAIL_ERR)
    assert a.take() == b""
    a.send(SYNC)
    assert s.take() == SYNC
    s.send(m.ready_for_query(b"I"))
    assert a.take() == m.ready_for_query(b"I")
    a.send(m.query("SET app.x = '1'"))  # a watched query: it goes through the rewriting path
    assert s.take() == m.query("SET app.x = '1'")  # not dropped by a skip that never ended
    s.send(reply(m.command_complete("SET")))
    assert a.take() == reply(m.command_complete("SET"))


def test_reset_all_brings_back_startup_values_on_the_same_server(rig: Rig) -> None:
    a = rig.login(TimeZone="Asia/Tokyo")
    (s,) = rig.servers
    a.send(m.query("RESET ALL"))
    assert s.take() == m.query("RESET ALL")  # the server has the client's TimeZone since its login (the probe)
    s.send(m.parameter_status("TimeZone", "UTC") + m.command_complete("RESET") + m.ready_for_query(b"I"))
    # As from PostgreSQL: RESET ALL goes back to the client's startup value, which it already had, so no
    # ParameterStatus (the server's own default is not the client's business).
    assert a.take() == m.command_complete("RESET") + m.ready_for_query(b"I")
    assert a.session.params["TimeZone"] == "Asia/Tokyo" and s.state is ServerState.IDLE
    a.send(m.query("SELECT 1"))  # the same server: the parameter sync sets the client's value first
    again = s.take()
    assert b"TimeZone = 'Asia/Tokyo'" in again and again.endswith(m.query("SELECT 1"))
    s.send(m.parameter_status("TimeZone", "Asia/Tokyo") + m.command_complete("SET") + m.ready_for_query(b"I"))
    s.send(reply(m.command_complete("SELECT 1")))
    assert a.take() == reply(m.command_complete("SELECT 1"))
