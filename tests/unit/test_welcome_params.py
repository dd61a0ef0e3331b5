"""The welcome's ParameterStatus values are PostgreSQL's spelling of what the client asked for: learnt
from a server that applies them (the probe), once per spelling and pool; and track_extra_parameters."""

from __future__ import annotations

from pathlib import Path

import pytest
from fakes import SERVER_PARAMS, Peer, Rig, error_fields, frames, reply, select_one_reply

from pgmux.protocol import messages as m
from pgmux.session.params import probe_pairs, probe_sql
from pgmux.session.states import ClientState, ServerState

Q1 = m.query("select 1")


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path, settings="default_pool_size = 1")


def shown(welcome: bytes) -> dict[str, str]:
    out = {}
    for t, body in frames(welcome):
        if t == "S":
            k, v = body[:-1].split(b"\x00")
            out[k.decode()] = v.decode()
    return out


def first_login(rig: Rig) -> Peer:
    """A client with no parameters of its own: the pool's server logs in, idle afterwards."""
    a = rig.login()
    assert rig.servers[0].state is ServerState.IDLE
    return a


def test_the_welcome_shows_the_servers_spelling_learnt_once(rig: Rig) -> None:
    first_login(rig)
    (server,) = rig.servers
    b = rig.connect(client_encoding="latin1", DateStyle="sql")
    assert b.state is ClientState.LOGIN_WAIT and b.take() == b""  # no welcome before the server's answer
    assert server.take() == m.query("RESET client_encoding;SET client_encoding = 'latin1';"
                                    "RESET DateStyle;SET DateStyle = 'sql'")
    server.send(m.command_complete("RESET") + m.command_complete("SET") + m.command_complete("RESET")
                + m.command_complete("SET") + m.parameter_status("client_encoding", "LATIN1")
                + m.parameter_status("DateStyle", "SQL, MDY") + m.ready_for_query(b"I"))
    welcome = b.take()
    assert frames(welcome)[0] == ("R", m.auth_ok()[5:])
    assert shown(welcome)["client_encoding"] == "LATIN1" and shown(welcome)["DateStyle"] == "SQL, MDY"
    assert shown(welcome)["TimeZone"] == SERVER_PARAMS["TimeZone"]
    assert b.state is ClientState.IDLE and server.state is ServerState.IDLE and server.session.client is None
    # The same spelling again costs no round trip; the server already has it, so no SET either.
    c = rig.connect(client_encoding="latin1", DateStyle="sql")
    assert shown(c.take())["client_encoding"] == "LATIN1" and server.take() == b""
    c.send(Q1)
    assert server.take() == Q1
    server.send(select_one_reply())
    assert c.take() == select_one_reply()


def test_a_value_the_server_already_had_is_not_reported_again(rig: Rig) -> None:
    first_login(rig)
    (server,) = rig.servers
    server.session.params["TimeZone"] = "Europe/Paris"  # as another client left it
    b = rig.connect(TimeZone="europe/paris")
    assert server.take().startswith(m.query("RESET TimeZone;SET TimeZone = 'europe/paris'")[:5])
    # RESET then SET back to the same value: PostgreSQL reports nothing (no change since its last report).
    server.send(reply(m.command_complete("RESET"), m.command_complete("SET")))
    assert shown(b.take())["TimeZone"] == "Europe/Paris"
    assert b.session.params["TimeZone"] == "Europe/Paris"


def test_a_value_postgresql_refuses_ends_the_login_as_postgresql_would(rig: Rig) -> None:
    first_login(rig)
    (server,) = rig.servers
    b = rig.connect(DateStyle="bogus")
    server.take()
    server.send(m.error_response("ERROR", "22023", 'invalid value for parameter "DateStyle": "bogus"',
                                 detail='Unrecognized key word: "bogus".') + m.ready_for_query(b"I"))
    out = b.take()
    assert [t for t, _ in frames(out)] == ["R", "E"]
    err = error_fields(out)
    assert (err["S"], err["C"], err["M"]) == ("FATAL", "22023", 'invalid value for parameter "DateStyle": "bogus"')
    assert err["D"] == 'Unrecognized key word: "bogus".'
    assert b.state is ClientState.CLOSED
    assert server.state is ServerState.IDLE  # the failed SETs ran in one implicit transaction: nothing changed
    c = rig.login()
    c.send(Q1)
    assert server.take() == Q1


def test_a_probe_waits_for_a_busy_server_and_leaving_meanwhile_is_clean(rig: Rig) -> None:
    a = first_login(rig)
    (server,) = rig.servers
    a.send(m.query("BEGIN"))
    server.take()
    server.send(reply(m.command_complete("BEGIN"), status=b"T"))
    a.take()
    b = rig.connect(IntervalStyle="iso_8601")  # pool of one, busy: b waits
    gone = rig.connect(IntervalStyle="sql_standard")
    assert b.state is ClientState.LOGIN_WAIT and b.session in server.session.pool.waiters
    gone.session.connection_lost(None)
    assert gone.session not in server.session.pool.waiters
    a.send(m.query("COMMIT"))
    server.take()
    server.send(reply(m.command_complete("COMMIT")))
    a.take()
    assert server.take() == m.query("RESET IntervalStyle;SET IntervalStyle = 'iso_8601'")
    server.send(reply(m.command_complete("RESET"), m.command_complete("SET"),
                      m.parameter_status("IntervalStyle", "iso_8601")))
    assert shown(b.take())["IntervalStyle"] == "iso_8601"


def test_probe_pairs_needs_only_unknown_spellings() -> None:
    shown_ = dict(SERVER_PARAMS)
    known = {("client_encoding", "utf-8"): "UTF8"}
    params = {"client_encoding": "utf-8", "application_name": "psql", "search_path": "x", "DateStyle": "ISO, MDY",
              "TimeZone": "utc"}
    assert probe_pairs(params, shown_, known) == [("TimeZone", "utc")]
    assert params["client_encoding"] == "UTF8"  # the known spelling, in place
    assert probe_pairs({"application_name": "café"}, shown_, {}) == [("application_name", "café")]
    assert probe_sql([("search_path", "a, b")]) == (
        "RESET search_path;SELECT pg_catalog.set_config('search_path', 'a, b', false)")


# -- track_extra_parameters ------------------------------------------------------------------------------
# PostgreSQL 15 reports nothing settable beyond what pgmux always tracks; an extension may report more
# (Citus 12 reports search_path). A tracked parameter that a client did not ask for is put back to the
# pool's value when another client changed it on a shared server.

CITUS_PARAMS = {**SERVER_PARAMS, "search_path": '"$user", public'}


def _two_clients_share_a_server(rig: Rig) -> list[bytes]:
    """a takes the pool's server first; b then SETs search_path there; a's next query: what is sent."""
    before = len(rig.servers)
    a = rig.connect()
    (server,) = rig.servers[before:]
    rig.server_login(server, CITUS_PARAMS)
    a.take()
    b = rig.login()
    b.send(m.query("SET search_path = private"))
    assert server.take() == m.query("SET search_path = private")
    server.send(reply(m.command_complete("SET"), m.parameter_status("search_path", "private")))
    b.take()
    a.send(Q1)
    sent = server.take()
    return [sent]


def test_track_extra_parameters_puts_a_reported_parameter_back(tmp_path: Path) -> None:
    rig = Rig(tmp_path, settings="default_pool_size = 1\ntrack_extra_parameters = search_path, IntervalStyle")
    (sent,) = _two_clients_share_a_server(rig)
    assert sent == m.query("SELECT pg_catalog.set_config('search_path', '\"$user\", public', false)") + Q1


def test_without_track_extra_parameters_the_value_is_not_tracked(tmp_path: Path) -> None:
    rig = Rig(tmp_path, settings="default_pool_size = 1")
    (sent,) = _two_clients_share_a_server(rig)
    assert sent == Q1  # (the default, IntervalStyle, is tracked anyway; search_path is not)


def test_an_extra_parameter_the_server_does_not_report_is_logged(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    rig = Rig(tmp_path, settings="track_extra_parameters = search_path")
    with caplog.at_level("WARNING", logger="pgmux"):
        rig.login()
    assert "track_extra_parameters: the server does not report search_path" in caplog.text
