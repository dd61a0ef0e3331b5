"""A parameter one client asked for never reaches another client sharing the same server."""

from __future__ import annotations

from pathlib import Path

import pytest
from fakes import Peer, Rig, reply, select_one_reply

from pgmux.protocol import messages as m
from pgmux.session.params import startup_params

Q1 = m.query("select 1")


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path, settings="default_pool_size = 1")


def _run_first_query(rig: Rig, client: Peer, expect_sql: str | None) -> None:
    (server,) = rig.servers
    client.send(Q1)
    sent = server.take()
    if expect_sql is None:
        assert sent == Q1
        server.send(select_one_reply())
    else:
        assert sent == m.query(expect_sql) + Q1
        server.send(reply(m.command_complete("SET")) + select_one_reply())
    assert client.take() == select_one_reply()


def test_reported_parameter_is_put_back_for_the_next_client(rig: Rig) -> None:
    a = rig.login(client_encoding="LATIN1")
    _run_first_query(rig, a, None)  # the server applied LATIN1 at a's login, to learn how it spells it
    b = rig.login()  # asked for nothing: gets the pool's default back
    _run_first_query(rig, b, "SET client_encoding = 'UTF8'")


def test_unreported_parameter_is_reset_for_the_next_client(rig: Rig) -> None:
    a = rig.login(options="-c search_path=private")
    _run_first_query(rig, a, "SET search_path = 'private'")
    b = rig.login()
    _run_first_query(rig, b, "RESET search_path")
    c = rig.login(options="-c search_path=private")
    _run_first_query(rig, c, "SET search_path = 'private'")


def test_same_parameters_cost_nothing(rig: Rig) -> None:
    a = rig.login(options="-c search_path=private")
    _run_first_query(rig, a, "SET search_path = 'private'")
    a2 = rig.login(options="-c search_path=private")
    _run_first_query(rig, a2, None)


@pytest.mark.parametrize("name", ["a=1;drop table t;--", "x y", "1abc", "a.b.c", ""])
def test_parameter_names_that_could_carry_sql_are_refused(name: str) -> None:
    raw = {"user": "u", name: "v"} if name else {"user": "u", "options": "-c =v"}
    with pytest.raises(ValueError):
        startup_params(raw, ())


def test_refused_name_gets_a_fatal_08p01(rig: Rig) -> None:
    client = rig.connect(**{"bad;name": "1"})
    out = client.take()
    assert b"C08P01" in out and b"unsupported startup parameter" in out
