"""auth_file parsing: quoting, escapes, comments, and errors that name the line."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgmux.config import load_config, load_userlist, parse_userlist
from pgmux.errors import ConfigError

DATA = Path(__file__).parent / "data" / "config"


def test_formats_escapes_and_comments() -> None:
    users = parse_userlist(
        '; comment\n'
        '\n'
        '"plain" "secret"\n'
        '  "md5user"   "md545f2603610af569b6155c45067268c6b" "extra" fields ignored\n'
        '"scram" "SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk:c2VydmVy"\n'
        '"quo""te" "pa""ss;word"\n'
        '"empty" ""\n'
        '"plain" "later wins"\n'
    )
    assert users == {
        "plain": "later wins",
        "md5user": "md545f2603610af569b6155c45067268c6b",
        "scram": "SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk:c2VydmVy",
        'quo"te': 'pa"ss;word',
        "empty": "",
    }


@pytest.mark.parametrize(("line", "message"), [
    ("alice secret", "expected"),
    ('"alice secret', "no closing quote"),
    ('"alice"', "no quoted secret"),
    ('"alice" secret', "no quoted secret"),
    ('"alice" "secret', "no closing quote"),
    ('"" "secret"', "empty user name"),
    ("# not a PgBouncer comment", "expected"),
])
def test_bad_lines_name_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "userlist.txt"
    path.write_text(f'"ok" "fine"\n{line}\n')
    with pytest.raises(ConfigError, match=message) as err:
        load_userlist(str(path))
    assert (err.value.file, err.value.line) == (str(path), 2)
    assert str(err.value).startswith(f"{path}:2")


def test_unreadable_file() -> None:
    with pytest.raises(ConfigError, match="cannot read auth_file"):
        load_userlist("/nonexistent/userlist.txt")


def test_config_loads_auth_file_from_current_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(DATA)  # a relative auth_file is opened from the current directory, as PgBouncer does
    config = load_config(str(DATA / "example.ini"))
    assert config.userlist['quo"te'] == 'pa"ss'
    assert set(config.userlist) == {"alice", "svc", 'quo"te'}


def test_missing_auth_file_is_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "pgbouncer.ini"
    path.write_text("[pgbouncer]\nauth_file = users.txt\n")
    config = load_config(str(path))
    assert dict(config.userlist) == {}
    assert any("users.txt" in w and "does not exist" in w for w in config.warnings)


def test_auth_file_not_read_for_any_or_pam(tmp_path: Path) -> None:
    (tmp_path / "users.txt").write_text("broken\n")
    path = tmp_path / "pgbouncer.ini"
    path.write_text(f"[pgbouncer]\nauth_type = any\nauth_file = {tmp_path / 'users.txt'}\n")
    assert dict(load_config(str(path)).userlist) == {}
    path.write_text(f"[pgbouncer]\nauth_file = {tmp_path / 'users.txt'}\n")
    with pytest.raises(ConfigError, match="users.txt:1"):
        load_config(str(path))


_FIELD = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), max_size=20)


@given(st.dictionaries(_FIELD.filter(bool), _FIELD, max_size=5))
def test_quoting_round_trips(users: dict[str, str]) -> None:
    def quote(s: str) -> str:
        return '"' + s.replace('"', '""') + '"'

    text = "".join(f"{quote(u)} {quote(p)}\n" for u, p in users.items())
    assert parse_userlist(text) == users
