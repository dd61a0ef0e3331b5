"""Playbooks for SET tracking under transaction pooling (session/tracking.py).

A client's SET reaches its later servers through the parameter sync, only once the server confirmed
it, and never reaches another client: the server's unreported parameters are RESET for the next one.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fakes import SERVER_PARAMS, Peer, Rig, frames, reply

from pgmux.protocol import messages as m

RFQ = m.ready_for_query(b"I")


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path)


def run(client: Peer, server: Peer, sql: str, answer: bytes, expect_sent: bytes | None = None) -> bytes:
    client.send(m.query(sql))
    sent = server.take()
    assert sent.endswith(m.query(sql)), sent
    if expect_sent is not None:
        assert sent == expect_sent
    syncs = len(frames(sent)) - 1  # pgmux's own parameter sync went first: its replies are swallowed
    server.send(reply(m.command_complete("SET")) * syncs + answer)
    return client.take()


def test_set_is_recorded_after_success_and_reset_for_the_next_client(rig: Rig) -> None:
    a = rig.login()
    (s,) = rig.servers
    assert run(a, s, "SET search_path = s_a", reply(m.command_complete("SET"))) == reply(m.command_complete("SET"))
    assert a.session.params["search_path"] == "s_a"
    assert "search_path" in s.session.extra
    b = rig.login()
    b.send(m.query("show search_path"))
    assert s.take() == m.query("RESET search_path") + m.query("show search_path")
    s.send(reply(m.command_complete("RESET")) + reply(m.command_complete("SHOW")))
    assert b.take() == reply(m.command_complete("SHOW"))
    a.send(m.query("select 1"))  # A's setting comes back with it
    assert s.take() == m.query("SET search_path = 's_a'") + m.query("select 1")


def test_failed_set_is_not_recorded(rig: Rig) -> None:
    a = rig.login()
    (s,) = rig.servers
    err = m.error_response("ERROR", "22023", "invalid value")
    run(a, s, "SET statement_timeout = 'x'", err + RFQ)
    assert "statement_timeout" not in a.session.params


def test_set_in_a_rolled_back_transaction_is_dropped(rig: Rig) -> None:
    a = rig.login()
    (s,) = rig.servers
    run(a, s, "BEGIN", reply(m.command_complete("BEGIN"), status=b"T"))
    run(a, s, "SET work_mem = '8MB'", reply(m.command_complete("SET"), status=b"T"))
    assert "work_mem" not in a.session.params  # not before the commit
    run(a, s, "ROLLBACK", reply(m.command_complete("ROLLBACK")))
    assert "work_mem" not in a.session.params and a.session.tx_effects is None


def test_set_in_a_committed_transaction_is_kept(rig: Rig) -> None:
    a = rig.login()
    (s,) = rig.servers
    run(a, s, "BEGIN", reply(m.command_complete("BEGIN"), status=b"T"))
    run(a, s, "SET work_mem = '8MB'", reply(m.command_complete("SET"), status=b"T"))
    run(a, s, "COMMIT", reply(m.command_complete("COMMIT")))
    assert a.session.params["work_mem"] == "8MB"


def test_commit_of_a_failed_transaction_drops_its_sets(rig: Rig) -> None:
    a = rig.login()
    (s,) = rig.servers
    run(a, s, "BEGIN; SET work_mem = '8MB'", reply(m.command_complete("BEGIN"), m.command_complete("SET"),
                                                  status=b"T"))
    run(a, s, "select 1/0", reply(m.error_response("ERROR", "22012", "division by zero"), status=b"E"))
    run(a, s, "COMMIT", reply(m.command_complete("ROLLBACK")))
    assert "work_mem" not in a.session.params


def test_set_local_is_never_recorded(rig: Rig) -> None:
    a = rig.login()
    (s,) = rig.servers
    run(a, s, "BEGIN; SET LOCAL work_mem = '8MB'; COMMIT",
        reply(m.command_complete("BEGIN"), m.command_complete("SET"), m.command_complete("COMMIT")))
    run(a, s, "select set_config('myapp.x', 'v', true)", reply(m.command_complete("SELECT 1")))
    assert "work_mem" not in a.session.params and "myapp.x" not in a.session.params


def test_set_config_session_level_is_recorded(rig: Rig) -> None:
    a = rig.login()
    (s,) = rig.servers
    run(a, s, "select set_config('myapp.x', 'v', false)", reply(m.command_complete("SELECT 1")))
    assert a.session.params["myapp.x"] == "v"


def test_reset_goes_back_to_the_login_value(rig: Rig) -> None:
    a = rig.login(options="-c statement_timeout=5s")
    (s,) = rig.servers
    a.send(m.query("select 1"))
    assert s.take() == m.query("SET statement_timeout = '5s'") + m.query("select 1")
    s.send(reply(m.command_complete("SET")) + reply(m.command_complete("SELECT 1")))
    a.take()
    run(a, s, "SET statement_timeout = '9s'", reply(m.command_complete("SET")))
    assert a.session.params["statement_timeout"] == "9s"
    run(a, s, "RESET statement_timeout", reply(m.command_complete("RESET")))
    assert a.session.params["statement_timeout"] == "5s"
    run(a, s, "SET search_path = x", reply(m.command_complete("SET")))
    run(a, s, "RESET ALL", reply(m.command_complete("RESET")))
    assert "search_path" not in a.session.params and a.session.params["statement_timeout"] == "5s"


def test_reported_parameter_follows_parameter_status(rig: Rig) -> None:
    a = rig.login()
    (s,) = rig.servers
    run(a, s, "SET TimeZone = 'Europe/Paris'",
        reply(m.command_complete("SET"), m.parameter_status("TimeZone", "Europe/Paris")))
    assert a.session.params["TimeZone"] == "Europe/Paris"
    b = rig.login()
    b.send(m.query("select 1"))
    assert s.take() == m.query("SET TimeZone = 'UTC'") + m.query("select 1")


def test_reset_of_a_reported_parameter_shows_the_clients_startup_value(rig: Rig) -> None:
    """RESET goes back to the session default: directly the client's startup value, on a pooled server
    that server's own. The client sees its own in the ParameterStatus (or none if it had it already),
    and gets it back on the server by the parameter sync."""
    a = rig.login(application_name="app_a")
    (s,) = rig.servers
    a.send(m.query("select 1"))
    assert s.take() == m.query("SET application_name = 'app_a'") + m.query("select 1")
    s.send(reply(m.command_complete("SET"), m.parameter_status("application_name", "app_a")) + reply())
    assert a.take() == reply()
    changed = m.parameter_status("application_name", "other")
    run(a, s, "SET application_name = other", reply(m.command_complete("SET"), changed))
    out = run(a, s, "RESET ALL", reply(m.command_complete("RESET"), m.parameter_status("application_name", "")))
    assert out == reply(m.command_complete("RESET"), m.parameter_status("application_name", "app_a"))
    assert a.session.params["application_name"] == "app_a"
    a.send(m.query("select 2"))  # its value comes back on the server
    assert s.take() == m.query("SET application_name = 'app_a'") + m.query("select 2")
    s.send(reply(m.command_complete("SET"), m.parameter_status("application_name", "app_a")) + reply())
    assert a.take() == reply()
    # A RESET of what the client already has: PostgreSQL reports nothing, so the client sees nothing.
    out = run(a, s, "RESET application_name",
              reply(m.command_complete("RESET"), m.parameter_status("application_name", "")))
    assert out == reply(m.command_complete("RESET"))
    # Other reports during the statement pass as they are.
    out = run(a, s, "SET application_name = x; RESET TimeZone",
              reply(m.command_complete("SET"), m.parameter_status("application_name", "x")))
    assert out == reply(m.command_complete("SET"), m.parameter_status("application_name", "x"))


def test_reset_all_through_the_extended_protocol_shows_the_startup_value(rig: Rig) -> None:
    """PostgreSQL reports the changed parameters just before ReadyForQuery, after the Execute's
    CommandComplete."""
    a = rig.login(application_name="app_a")
    (s,) = rig.servers
    changed = reply(m.command_complete("SET"), m.parameter_status("application_name", "other"))
    assert run(a, s, "SET application_name = other", changed) == changed
    a.send(_ext("RESET ALL", b"r"))
    s.take()
    done = m.message(m.PARSE_COMPLETE) + m.message(m.BIND_COMPLETE) + m.command_complete("RESET")
    s.send(done + m.parameter_status("application_name", "") + RFQ)
    assert a.take() == done + m.parameter_status("application_name", "app_a") + RFQ
    assert a.session.params["application_name"] == "app_a"


def test_plain_queries_stay_on_the_header_only_path(rig: Rig) -> None:
    a = rig.login()
    (s,) = rig.servers
    a.send(m.query("select * from t where x = 1"))
    assert not s.session.queue
    s.take()
    s.send(reply(m.command_complete("SELECT 0")))
    a.send(m.query("update t set x = 2"))  # passes the byte screen, but the parser says: no effects
    assert not s.session.queue


def test_discard_all_forgets_prepared_statements(rig: Rig) -> None:
    a = rig.login()
    (s,) = rig.servers
    a.send(m.message(m.PARSE, b"s1\x00select 1\x00\x00\x00") + m.message(m.SYNC))
    s.take()
    s.send(m.message(m.PARSE_COMPLETE) + RFQ)
    a.take()
    assert s.session.stmts.prepared_statements == 1
    run(a, s, "DISCARD ALL", reply(m.command_complete("DISCARD ALL")))
    assert s.session.stmts.prepared_statements == 0 and a.session.stmts.prepared_statements == 0


def test_list_setting_is_synced_as_a_list(rig: Rig) -> None:
    a = rig.login()
    (s,) = rig.servers
    run(a, s, "SET search_path = a, b", reply(m.command_complete("SET")))
    assert a.session.params["search_path"] == "a, b"
    b = rig.login()
    run(b, s, "select 1", reply(m.command_complete("SELECT 1")), m.query("RESET search_path") + m.query("select 1"))
    a.send(m.query("select 1"))
    assert s.take() == m.query("SELECT pg_catalog.set_config('search_path', 'a, b', false)") + m.query("select 1")


# -- the same through the extended protocol (SQLAlchemy on asyncpg prepares even a SET) ------------
def _ext(sql: str, name: bytes = b"") -> bytes:
    return (m.message(m.PARSE, name + b"\x00" + sql.encode() + b"\x00\x00\x00")
            + m.message(m.BIND, b"\x00" + name + b"\x00\x00\x00\x00\x00\x00\x00")
            + m.message(m.EXECUTE, b"\x00\x00\x00\x00\x00") + m.message(m.SYNC))


EXT_OK = (m.message(m.PARSE_COMPLETE) + m.message(m.BIND_COMPLETE) + m.command_complete("SET") + RFQ)


def test_set_through_the_extended_protocol_is_recorded(rig: Rig) -> None:
    a = rig.login()
    (s,) = rig.servers
    a.send(_ext("SET search_path = x"))
    assert s.take() == _ext("SET search_path = x")
    s.send(EXT_OK)
    assert a.take() == EXT_OK
    assert a.session.params["search_path"] == "x" and "search_path" in s.session.extra


def test_extended_set_followed_by_an_error_in_the_same_batch_is_dropped(rig: Rig) -> None:
    a = rig.login()
    (s,) = rig.servers
    batch = _ext("SET work_mem = '9MB'")[:-5] + _ext("select 1/0")
    a.send(batch)
    s.take()
    err = m.error_response("ERROR", "22012", "division by zero")
    s.send(m.message(m.PARSE_COMPLETE) + m.message(m.BIND_COMPLETE) + m.command_complete("SET")
           + m.message(m.PARSE_COMPLETE) + m.message(m.BIND_COMPLETE) + err + RFQ)
    a.take()
    assert "work_mem" not in a.session.params and a.session.tx_effects is None


def test_set_config_with_parameters_is_recorded_with_the_bound_values(rig: Rig) -> None:
    """psycopg and asyncpg send `set_config('app.tag', $1, false)` with the value in the Bind."""
    a = rig.login()
    (s,) = rig.servers
    parse = m.message(m.PARSE, b"sc\x00select set_config('app.tag', $1, false)\x00\x00\x00")

    def bind(value: bytes, fmt: bytes = b"\x00\x00") -> bytes:
        return m.message(m.BIND, b"\x00sc\x00" + fmt + b"\x00\x01" + len(value).to_bytes(4, "big") + value
                         + b"\x00\x00")

    run_sc = m.message(m.EXECUTE, b"\x00\x00\x00\x00\x00") + m.message(m.SYNC)
    a.send(parse + bind(b"v1") + run_sc)
    s.take()
    s.send(m.message(m.PARSE_COMPLETE) + m.message(m.BIND_COMPLETE) + m.data_row(["v1"])
           + m.command_complete("SELECT 1") + RFQ)
    a.take()
    assert a.session.params["app.tag"] == "v1" and "app.tag" in s.session.extra
    a.send(bind(b"v2", fmt=b"\x00\x01\x00\x01") + run_sc)  # binary format: the same bytes for text
    s.take()
    s.send(m.message(m.BIND_COMPLETE) + m.data_row(["v2"]) + m.command_complete("SELECT 1") + RFQ)
    a.take()
    assert a.session.params["app.tag"] == "v2"
    # asyncpg's fetchval() executes with a row limit of 1: the portal is suspended, and has run.
    a.send(bind(b"v3", fmt=b"\x00\x01\x00\x01") + m.message(m.EXECUTE, b"\x00\x00\x00\x00\x01")
           + m.message(m.SYNC))
    s.take()
    s.send(m.message(m.BIND_COMPLETE) + m.data_row(["v3"]) + m.message(m.PORTAL_SUSPENDED) + RFQ)
    a.take()
    assert a.session.params["app.tag"] == "v3"
    b = rig.login()
    b.send(m.query("select 1"))  # another client does not get it
    assert s.take() == m.query("RESET app.tag") + m.query("select 1")


def test_named_advisory_lock_statement_pins(rig: Rig) -> None:
    a = rig.login()
    (s,) = rig.servers
    a.send(_ext("select pg_advisory_lock(42)", b"lk"))
    s.take()
    s.send(m.message(m.PARSE_COMPLETE) + m.message(m.BIND_COMPLETE) + m.data_row([""])
           + m.command_complete("SELECT 1") + RFQ)
    a.take()
    assert a.session.pinned == "advisory lock" and a.session.server is s.session


def test_rollback_to_savepoint_drops_only_what_came_after_it(rig: Rig) -> None:
    a = rig.login()
    (s,) = rig.servers
    run(a, s, "BEGIN; SET search_path = kept; SAVEPOINT a; SET search_path = undone",
        reply(m.command_complete("BEGIN"), m.command_complete("SET"), m.command_complete("SAVEPOINT"),
              m.command_complete("SET"), status=b"T"))
    run(a, s, "ROLLBACK TO SAVEPOINT a", reply(m.command_complete("ROLLBACK"), status=b"T"))
    run(a, s, "SAVEPOINT b; SET work_mem = '9MB'; RELEASE SAVEPOINT b",
        reply(m.command_complete("SAVEPOINT"), m.command_complete("SET"), m.command_complete("RELEASE"),
              status=b"T"))
    run(a, s, "COMMIT", reply(m.command_complete("COMMIT")))
    assert a.session.params["search_path"] == "kept" and a.session.params["work_mem"] == "9MB"
    assert {"search_path", "work_mem"} <= s.session.extra  # another client gets them RESET


def test_what_ran_before_an_error_can_outlive_it(rig: Rig) -> None:
    """Statements of a failed query string that ran before the error can outlive it (here through a
    ROLLBACK TO a savepoint taken after the SET): the client keeps them, the next client does not."""
    a = rig.login()
    (s,) = rig.servers
    run(a, s, "BEGIN", reply(m.command_complete("BEGIN"), status=b"T"))
    err = m.error_response("ERROR", "22012", "division by zero")
    run(a, s, "SET search_path = maybe; SAVEPOINT a; SELECT 1/0",
        reply(m.command_complete("SET"), m.command_complete("SAVEPOINT"), err, status=b"E"))
    run(a, s, "ROLLBACK TO SAVEPOINT a", reply(m.command_complete("ROLLBACK"), status=b"T"))
    run(a, s, "COMMIT", reply(m.command_complete("COMMIT")))
    assert a.session.params["search_path"] == "maybe"
    b = rig.login()
    b.send(m.query("select 1"))
    assert s.take() == m.query("RESET search_path") + m.query("select 1")


def test_commit_of_a_failed_transaction_drops_its_effects(rig: Rig) -> None:
    a = rig.login()
    (s,) = rig.servers
    run(a, s, "BEGIN; SET search_path = x", reply(m.command_complete("BEGIN"), m.command_complete("SET"),
                                                  status=b"T"))
    err = m.error_response("ERROR", "22012", "division by zero")
    run(a, s, "SELECT 1/0", err + m.ready_for_query(b"E"))
    run(a, s, "COMMIT", reply(m.command_complete("ROLLBACK")))
    assert "search_path" not in a.session.params and "search_path" not in s.session.extra


def test_a_commit_before_an_error_in_the_same_query_string_counts(rig: Rig) -> None:
    a = rig.login()
    (s,) = rig.servers
    err = m.error_response("ERROR", "22012", "division by zero")
    run(a, s, "BEGIN; SET search_path = committed; COMMIT; SET work_mem = '9MB'; SELECT 1/0",
        reply(m.command_complete("BEGIN"), m.command_complete("SET"), m.command_complete("COMMIT"),
              m.command_complete("SET"), err))
    assert a.session.params["search_path"] == "committed" and "work_mem" not in a.session.params
    assert a.session.tx_effects is None


def test_default_transaction_read_only_is_followed_and_never_leaks(tmp_path: Path) -> None:
    """PostgreSQL 14+ reports default_transaction_read_only: like TimeZone, pgmux follows it through
    ParameterStatus, so a client's read-only default goes with it and never to another client."""
    rig = Rig(tmp_path)
    a = rig.connect()
    (s,) = rig.servers
    rig.server_login(s, {**SERVER_PARAMS, "default_transaction_read_only": "off"})
    a.take()
    changed = reply(m.command_complete("SET"), m.parameter_status("default_transaction_read_only", "on"))
    assert run(a, s, "SET default_transaction_read_only = on", changed) == changed
    assert a.session.params["default_transaction_read_only"] == "on"
    b = rig.login()
    b.send(m.query("update t set x = 1"))
    assert s.take() == m.query("SET default_transaction_read_only = 'off'") + m.query("update t set x = 1")


def test_session_authorization_is_followed_and_never_leaks(tmp_path: Path) -> None:
    """SET SESSION AUTHORIZATION (a superuser pool allows it) changes the reported session_authorization:
    the next client must get the pool's own back, not run as that role."""
    rig = Rig(tmp_path)
    a = rig.connect()
    (s,) = rig.servers
    rig.server_login(s, {**SERVER_PARAMS, "session_authorization": "alice", "is_superuser": "on"})
    a.take()
    changed = reply(m.command_complete("SET"), m.parameter_status("session_authorization", "bob"),
                    m.parameter_status("is_superuser", "off"))
    assert run(a, s, "SET SESSION AUTHORIZATION bob", changed) == changed
    assert a.session.params["session_authorization"] == "bob"
    b = rig.login()
    b.send(m.query("select current_user"))
    assert s.take() == m.query("SET session_authorization = 'alice'") + m.query("select current_user")
