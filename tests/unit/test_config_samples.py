"""PgBouncer's own sample configs load: as shipped, and with every commented-out setting switched on.

The fixture is a copy of PgBouncer's etc/pgbouncer.ini, so the test runs everywhere; the copies a
PgBouncer package installs are tested too when this machine has them.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pgmux.config import load_config
from pgmux.errors import ConfigError

FIXTURE = Path(__file__).parent / "data" / "config" / "pgbouncer-sample.ini"
INSTALLED = [Path("/etc/pgbouncer/pgbouncer.ini"), Path("/usr/share/doc/pgbouncer/pgbouncer-minimal.ini")]
SAMPLES = [FIXTURE, *(p for p in INSTALLED if p.is_file())]

# `;key = value` and `; key = value` are settings; `;; prose` and `; prose` are not. `;conffile` has no
# value and `;%include` names a file that does not exist: PgBouncer would reject those two as well.
_SETTING = re.compile(r"^;\s?([A-Za-z0-9_*][A-Za-z0-9_.\-*]*\s*=.*)$")


def uncomment(text: str) -> str:
    return "\n".join(_SETTING.sub(r"\1", line) for line in text.splitlines()) + "\n"


@pytest.mark.parametrize("sample", SAMPLES, ids=str)
def test_sample_loads_as_shipped(sample: Path) -> None:
    config = load_config(str(sample))
    assert config.settings.listen_port == 6432


# Lines of the samples that ask for what pgmux refuses (settings.py): TLS 1.3 suites, ident maps.
_REFUSED = re.compile(r"^(client_tls13_ciphers|server_tls13_ciphers|auth_ident_file) *= *\S", re.M)


@pytest.mark.parametrize("sample", SAMPLES, ids=str)
def test_sample_with_every_setting_on_loads_or_is_refused_by_name(sample: Path, tmp_path: Path) -> None:
    path = tmp_path / "pgbouncer.ini"
    text = uncomment(sample.read_text())
    path.write_text(text)
    if not _REFUSED.search(text):
        assert load_config(str(path)).settings.listen_port == 6432
        return
    with pytest.raises(ConfigError, match="is refused") as err:
        load_config(str(path))
    assert err.value.key in ("client_tls13_ciphers", "server_tls13_ciphers", "auth_ident_file")


def uncomment_safe(text: str) -> str:
    """Every setting on, except those pgmux refuses."""
    return "\n".join(line for line in uncomment(text).splitlines() if not _REFUSED.match(line)) + "\n"


@pytest.mark.parametrize("sample", SAMPLES, ids=str)
def test_sample_loads_with_every_other_setting_on(sample: Path, tmp_path: Path) -> None:
    path = tmp_path / "pgbouncer.ini"
    path.write_text(uncomment_safe(sample.read_text()))
    config = load_config(str(path))
    assert config.settings.listen_port == 6432


def test_upstream_sample_values(tmp_path: Path) -> None:
    path = tmp_path / "pgbouncer.ini"
    path.write_text(uncomment_safe(FIXTURE.read_text()))
    config = load_config(str(path))
    s = config.settings
    assert (s.logfile, s.pidfile, s.listen_addr) == (
        "/var/log/pgbouncer/pgbouncer.log", "/var/run/pgbouncer/pgbouncer.pid", ("localhost",))
    assert s.admin_users == ("user2", "someadmin", "otheradmin")
    assert s.ignore_startup_parameters == ("extra_float_digits",)
    assert (s.max_prepared_statements, s.server_check_query, s.track_extra_parameters) == (0, "select 1", ())
    assert s.unix_socket_group is None and s.auth_query.endswith("WHERE rolname=$1 AND rolcanlogin")
    dbs = config.databases
    assert list(dbs) == ["foodb", "bardb", "forcedb", "nondefaultdb", "*"]
    assert dbs["foodb"].host is None
    assert (dbs["bardb"].auth_dbname, dbs["bardb"].max_db_client_connections) == ("foo", 10)
    assert (dbs["forcedb"].port, dbs["forcedb"].client_encoding, dbs["forcedb"].connect_query) == (
        300, "UNICODE", "SELECT 1")
    assert (dbs["nondefaultdb"].pool_size, dbs["nondefaultdb"].reserve_pool_size) == (50, 10)
    user1 = config.users["user1"]
    assert (user1.pool_size, user1.reserve_pool_size, user1.pool_mode) == (5, 2, "transaction")
    assert (user1.max_user_connections, user1.max_user_client_connections) == (10, 20)
    ignored = next(w for w in config.warnings if w.startswith("accepted for PgBouncer compatibility"))
    for name in ("resolv_conf", "service_name"):
        assert name in ignored
    for name in ("auth_query", "databases.bardb.auth_dbname", "client_tls_sslmode", "server_tls_sslmode"):
        assert name not in ignored  # they work
