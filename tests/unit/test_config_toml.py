"""pgmux.toml loads into the same model as the equivalent pgbouncer.ini, with the same strictness."""

from __future__ import annotations

from pathlib import Path

import pytest

from pgmux.config import Config, load_config
from pgmux.errors import ConfigError

DATA = Path(__file__).parent / "data" / "config"


def load(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "pgmux.toml"
    path.write_text(text)
    return load_config(str(path))


def test_toml_and_ini_load_to_an_equal_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(DATA)
    ini, toml = load_config(str(DATA / "example.ini")), load_config(str(DATA / "example.toml"))
    assert toml.settings == ini.settings
    assert dict(toml.databases) == dict(ini.databases)
    assert list(toml.databases) == list(ini.databases)
    assert dict(toml.users) == dict(ini.users)
    assert dict(toml.userlist) == dict(ini.userlist)
    assert toml.warnings == ini.warnings == ()
    s = toml.settings
    assert (s.listen_addr, s.unix_socket_mode, s.log_connections) == (("127.0.0.1", "::1"), 0o700, False)
    app = toml.databases["app"]
    assert (app.connect_query, app.file, app.line) == ("SELECT 'hi'", str(DATA / "example.toml"), 12)
    assert toml.databases["my db"].reserve_pool_size == 3


def test_userlist_table_and_connstring_values(tmp_path: Path) -> None:
    config = load(tmp_path, """
        [databases]
        app = "host=a port=5433 pool_size=4"
        [userlist]
        alice = "md5abc"
    """)
    assert (config.databases["app"].host, config.databases["app"].port) == ("a", 5433)
    assert dict(config.userlist) == {"alice": "md5abc"}


@pytest.mark.parametrize(("text", "key", "line", "message"), [
    ('[pgmux]\nlisten_port = "x"\n', "pgmux.listen_port", 2, "expected an integer"),
    ("[pgmux]\n\nlisten_prot = 1\n", "pgmux.listen_prot", 3, "did you mean 'listen_port'"),
    ("[pgmux]\nlisten_addr = 5\n", "pgmux.listen_addr", 2, "list"),
    ("[pgmux]\nlog_stats = 2\n", "pgmux.log_stats", 2, "boolean"),
    ("[pgmux]\nserver_lifetime = -1\n", "pgmux.server_lifetime", 2, "0 or more"),
    ("[databases.app]\nhost = 'a'\nport = 70000\n", "databases.app.port", 3, "at most 65535"),
    ('[databases.app]\npool_mode = "tx"\n', "databases.app.pool_mode", 2, "must be one of"),
    ("[databases.app]\nhots = 'a'\n", "databases.app.hots", 2, "unknown database option"),
    ("[users.bob]\nmax_user_connections = -2\n", "users.bob.max_user_connections", 2, "at least 0"),
    ("[routing]\nx = 1\n", "routing", 1, "unknown table"),
    ("[userlist]\nbob = 5\n", "userlist.bob", 2, "string"),
    ("[pgmux]\nauth_file = 'u.txt'\n[userlist]\nbob = 'x'\n", "userlist", 3, "not both"),
    ("[pgmux\n", None, 1, "TOML syntax error"),
])
def test_errors_name_key_path_and_line(tmp_path: Path, text: str, key: str | None, line: int,
                                       message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        load(tmp_path, text)
    assert (err.value.file, err.value.line, err.value.key) == (str(tmp_path / "pgmux.toml"), line, key)


def test_strings_follow_the_ini_rules(tmp_path: Path) -> None:
    config = load(tmp_path, '[pgmux]\nunix_socket_mode = "0700"\nadmin_users = "a, b"\nquery_timeout = 2\n')
    s = config.settings
    assert (s.unix_socket_mode, s.admin_users, s.query_timeout) == (0o700, ("a", "b"), 2.0)
