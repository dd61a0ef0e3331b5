"""The console's SET: what it accepts, what it refuses and why, and SHOW CONFIG's `changeable` column
telling the truth about it."""

from __future__ import annotations

import pytest

from pgmux.admin.config_show import config_rows, format_setting
from pgmux.admin.set_setting import changeable_settings, set_setting
from pgmux.config.settings import SETTINGS_INFO, Settings
from pgmux.errors import PgmuxError


def _accepts(settings: Settings, key: str, value: str) -> bool:
    try:
        set_setting(settings, key, value)
    except PgmuxError:
        return False
    return True


def test_changeable_column_is_exactly_what_set_accepts() -> None:
    settings = Settings()
    rows = config_rows(settings, None, changeable_settings())
    assert {r.key for r in rows} == set(SETTINGS_INFO)
    for row in rows:
        # Setting a key to the value SHOW CONFIG prints for it is a SET that can only fail for the key.
        value = row.value if row.value is not None else ""
        assert _accepts(settings, row.key, value) == (row.changeable == "yes"), row


def test_restart_only_keys_are_not_changeable() -> None:
    rows = {r.key: r for r in config_rows(Settings(), None, changeable_settings())}
    for key in ("listen_port", "listen_addr", "unix_socket_dir", "pidfile", "user", "pkt_buf"):
        assert rows[key].changeable == "no"
    for key in ("default_pool_size", "query_wait_timeout", "log_connections", "logfile", "verbose"):
        assert rows[key].changeable == "yes"


def test_set_applies_the_parsed_value() -> None:
    new, warnings = set_setting(Settings(), "default_pool_size", "7")
    assert new.default_pool_size == 7 and warnings == []
    new, _ = set_setting(new, "SERVER_CHECK_QUERY", "select 2")  # keys are case-insensitive
    assert new.server_check_query == "select 2" and new.default_pool_size == 7
    new, _ = set_setting(new, "log_connections", "off")
    assert new.log_connections is False
    new, _ = set_setting(new, "query_wait_timeout", "2.5")
    assert new.query_wait_timeout == 2.5
    assert format_setting(new.query_wait_timeout) == "2.5"


@pytest.mark.parametrize(("key", "value", "sqlstate", "words"), [
    ("listen_port", "7000", "55P02", "cannot be changed while pgmux runs"),
    ("no_such_key", "1", "42704", "unknown setting"),
    ("default_pool_size", "many", "22023", "expected an integer"),
    ("default_pool_size", "-1", "22023", "at least 0"),
    ("pool_mode", "sometimes", "22023", "pool_mode"),
    ("auth_type", "hba", "22023", "set it in the configuration file and RELOAD"),
])
def test_refusals_name_why(key: str, value: str, sqlstate: str, words: str) -> None:
    with pytest.raises(PgmuxError) as exc:
        set_setting(Settings(), key, value)
    assert exc.value.sqlstate == sqlstate
    assert exc.value.severity == "ERROR"
    assert exc.value.message.startswith("SET failed: ") and words in exc.value.message, exc.value.message


def test_unknown_key_suggests_the_close_one() -> None:
    with pytest.raises(PgmuxError) as exc:
        set_setting(Settings(), "default_pool_sise", "3")
    assert exc.value.hint is not None and "default_pool_size" in exc.value.hint


def test_hba_and_cert_are_switched_on_in_the_file() -> None:
    """Their files (and the TLS mode cert needs) are checked when a configuration loads: not by SET."""
    s, _ = set_setting(Settings(), "auth_hba_file", "/etc/pgbouncer/hba.conf")
    for method in ("hba", "cert"):
        with pytest.raises(PgmuxError, match="set it in the configuration file and RELOAD"):
            set_setting(s, "auth_type", method)


def test_unimplemented_setting_warns() -> None:
    name = next(n for n, i in SETTINGS_INFO.items() if not i.implemented and i.reloadable
                and isinstance(i.default, float))
    new, warnings = set_setting(Settings(), name, "42")
    assert getattr(new, name) == 42.0
    assert warnings and "not implemented" in warnings[0]


def test_refused_auth_type_is_refused_as_the_loader_refuses_it() -> None:
    with pytest.raises(PgmuxError, match="auth_type: pam is refused"):
        set_setting(Settings(), "auth_type", "pam")
