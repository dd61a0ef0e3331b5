"""Host lists with roles and weights, and the routing settings, in both config formats (issue 4)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pgmux.config import Config, DatabaseConfig, HostConfig, Settings, diff, load_config
from pgmux.config import values as v
from pgmux.errors import ConfigError
from pgmux.routing.balancer import POLICIES


def load(tmp_path: Path, name: str, text: str) -> Config:
    path = tmp_path / name
    path.write_text(text)
    return load_config(str(path))


INI = "[databases]\napp = " + " ".join([
    "host=127.0.0.1,127.0.0.1 port=5432,5433 pgmux_roles=primary,replica pgmux_weights=1,2",
    "pgmux_read_write_split=1 pgmux_balance=round_robin pgmux_max_lag_bytes=1048576",
    "pgmux_max_lag_seconds=2.5 pgmux_read_your_writes=1 pgmux_write_functions='nextval2,audit_*'",
]) + "\n"
TOML = """\
[databases.app]
hosts = [{host = "127.0.0.1", port = 5432, role = "primary"},
         {host = "127.0.0.1", port = 5433, role = "replica", weight = 2}]
read_write_split = true
balance = "round_robin"
max_lag_bytes = 1048576
max_lag_seconds = 2.5
read_your_writes = true
write_functions = ["nextval2", "audit_*"]
"""


def test_ini_and_toml_give_equal_models(tmp_path: Path) -> None:
    ini = load(tmp_path, "pgbouncer.ini", INI).databases["app"]
    toml = load(tmp_path, "pgmux.toml", TOML).databases["app"]
    assert ini == toml
    assert ini.topology == (HostConfig("127.0.0.1", 5432, "primary", 1.0),
                            HostConfig("127.0.0.1", 5433, "replica", 2.0))
    assert (ini.read_write_split, ini.balance, ini.max_lag_bytes, ini.max_lag_seconds) == (
        True, "round_robin", 1048576, 2.5)
    assert ini.read_your_writes and ini.write_functions == ("nextval2", "audit_*")
    assert (ini.host, ini.port) == ("127.0.0.1,127.0.0.1", 5432)  # the data path's view today


def test_defaults_keep_pgbouncer_behaviour(tmp_path: Path) -> None:
    config = load(tmp_path, "pgbouncer.ini", "[databases]\none = host=a\nmany = host=a,b,c port=6000\n"
                                             "sock =\n")
    one, many, sock = (config.databases[n] for n in ("one", "many", "sock"))
    assert one.topology == (HostConfig("a", 5432, "primary", 1.0),)
    assert many.topology == tuple(HostConfig(h, 6000, "auto", 1.0) for h in "abc")
    assert sock.topology == (HostConfig(None, 5432, "primary", 1.0),)
    assert (many.read_write_split, many.balance, many.max_lag_bytes, many.max_lag_seconds,
            many.read_your_writes, many.write_functions) == (False, "least_outstanding", 0, 0.0, False, ())
    s = config.settings
    assert (s.health_check_period, s.health_check_timeout, s.ban_time, s.failover_wait_timeout) == (
        1.0, 2.0, 300.0, 10.0)


def test_canonical_forms_compare_equal() -> None:
    assert DatabaseConfig("x", host="a,b", ports=(), roles=(), weights=()).topology == \
        DatabaseConfig("x", host="a,b").topology


@pytest.mark.parametrize(("line", "same_as"), [
    ("host=a,b port=5432,5432", "host=a,b"),
    ("host=a,b pgmux_roles=auto,AUTO pgmux_weights=1,1.0", "host=a,b"),
    ("host=a pgmux_roles=primary", "host=a"),
])
def test_ini_lists_equal_to_defaults_normalise(tmp_path: Path, line: str, same_as: str) -> None:
    config = load(tmp_path, "pgbouncer.ini", f"[databases]\nx = {line}\ny = {same_as}\n")
    x, y = config.databases["x"], config.databases["y"]
    assert (x.port, x.ports, x.roles, x.weights) == (y.port, y.ports, y.roles, y.weights)


def test_toml_partial_roles_and_default_port(tmp_path: Path) -> None:
    db = load(tmp_path, "pgmux.toml", '[databases.app]\nhosts = [{host = "a", role = "primary"}, '
                                      '{host = "b", weight = 0}]\n').databases["app"]
    assert db.topology == (HostConfig("a", 5432, "primary", 1.0), HostConfig("b", 5432, "auto", 0.0))


def test_global_settings_in_both_formats(tmp_path: Path) -> None:
    ini = load(tmp_path, "pgbouncer.ini", "[pgbouncer]\nhealth_check_period = 0.5\nban_time = 30\n"
                                          "health_check_timeout = 1\nfailover_wait_timeout = 20\n")
    toml = load(tmp_path, "pgmux.toml", "[pgmux]\nhealth_check_period = 0.5\nban_time = 30\n"
                                        "health_check_timeout = 1\nfailover_wait_timeout = 20\n")
    assert ini.settings == toml.settings
    assert ini.settings.ban_time == 30.0 and ini.warnings == ()
    assert Settings().health_check_period == 1.0


@pytest.mark.parametrize(("line", "key", "message"), [
    ("host=a,b pgmux_roles=primary,master", "databases.x.pgmux_roles", "must be one of"),
    ("host=a,b pgmux_roles=primary", "databases.x.pgmux_roles", "1 roles for 2 hosts"),
    ("host=a,b pgmux_roles=primary,primary", "databases.x.pgmux_roles", "at most one host"),
    ("host=a,b pgmux_weights=1,-2", "databases.x.pgmux_weights", "0 or more"),
    ("host=a,b pgmux_weights=1,x", "databases.x.pgmux_weights", "not a number"),
    ("host=a,b pgmux_weights=1,2,3", "databases.x.pgmux_weights", "3 weights for 2 hosts"),
    ("host=a,b,c port=1,2", "databases.x.port", "2 ports for 3 hosts"),
    ("host=a port=1,,2", "databases.x.port", "without empty items"),
    ("host=a port=70000", "databases.x.port", "at most 65535"),
    ("host=a pgmux_balance=random", "databases.x.pgmux_balance", "must be one of"),
    ("host=a pgmux_read_write_split=maybe", "databases.x.pgmux_read_write_split", "boolean"),
    ("host=a pgmux_max_lag_bytes=-1", "databases.x.pgmux_max_lag_bytes", "at least 0"),
    ("host=a pgmux_max_lag_seconds=x", "databases.x.pgmux_max_lag_seconds", "seconds"),
])
def test_ini_errors_name_file_line_key(tmp_path: Path, line: str, key: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, "pgbouncer.ini", f"[pgbouncer]\n\n[databases]\nx = {line}\n")
    err = info.value
    assert (err.key, err.line, err.file) == (key, 4, str(tmp_path / "pgbouncer.ini"))
    assert message in str(err)


@pytest.mark.parametrize(("body", "message"), [
    ('hosts = [{host = "a", role = "boss"}, {host = "b"}]', "must be one of"),
    ('hosts = [{host = "a", weight = -1}, {host = "b"}]', "0 or more"),
    ('hosts = [{host = "a", weight = true}]', "weight"),
    ('hosts = [{host = "a", prot = 1}]', "unknown key 'prot'"),
    ('hosts = [{host = "a,b"}]', "one host name"),
    ('hosts = [{port = 5432}]', "one host name"),
    ("hosts = []", "non-empty list"),
    ('hosts = ["a"]', "expected a table"),
    ('host = "a"\nhosts = [{host = "b"}]', "not both"),
    ('hosts = [{host = "a", role = "primary"}, {host = "b", role = "primary"}]', "at most one host"),
    ('hosts = [{host = "a", port = 0}]', "at least 1"),
])
def test_toml_host_list_errors(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, "pgmux.toml", f"[databases.x]\n{body}\n")
    assert info.value.key == "databases.x.hosts"
    assert info.value.line is not None
    assert message in str(info.value)


def test_toml_routing_key_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, "pgmux.toml", '[databases.x]\nhost = "a"\n\nbalance = "fastest"\n')
    assert (info.value.key, info.value.line) == ("databases.x.balance", 4)


def test_balance_names_match_the_balancer() -> None:
    assert set(v.BALANCE_POLICIES) == set(POLICIES)


def test_reload_plan_ports_reconnect_roles_live(tmp_path: Path) -> None:
    old = load(tmp_path, "a.ini", "[databases]\nx = host=a,b port=1,2\n")
    ports = load(tmp_path, "b.ini", "[databases]\nx = host=a,b port=1,3\n")
    roles = load(tmp_path, "c.ini", "[databases]\nx = host=a,b port=1,2 pgmux_roles=primary,replica\n")
    assert diff(old, ports).databases_reconnect == ("x",)
    plan = diff(old, roles)
    assert plan.databases_changed == ("x",) and plan.databases_reconnect == ()
