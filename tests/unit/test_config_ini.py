"""pgbouncer.ini loading: PgBouncer's defaults, syntax, %include, the fallback database, strict errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgmux.config import Config, Settings, load_config
from pgmux.config.ini import parse_connstr
from pgmux.config.settings import DEFAULT_AUTH_QUERY
from pgmux.errors import ConfigError

DATA = Path(__file__).parent / "data" / "config"


def write(directory: Path, name: str, text: str) -> str:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def load(tmp_path: Path, text: str) -> Config:
    return load_config(write(tmp_path, "pgbouncer.ini", text))


# PgBouncer's defaults, written out independently of settings.py (from its docs and bouncer_params[]).
PGBOUNCER_DEFAULTS = {
    "listen_addr": (), "listen_port": 6432, "listen_backlog": 128, "unix_socket_dir": "/tmp",
    "unix_socket_mode": 0o777, "unix_socket_group": None, "user": None, "pidfile": None, "logfile": None,
    "auth_type": "md5", "auth_file": None, "auth_hba_file": None, "auth_user": None, "auth_dbname": None,
    "auth_query": DEFAULT_AUTH_QUERY, "admin_users": (), "stats_users": (), "pool_mode": "session",
    "max_client_conn": 100, "default_pool_size": 20, "min_pool_size": 0, "reserve_pool_size": 0,
    "reserve_pool_timeout": 5.0, "max_db_connections": 0, "max_db_client_connections": 0,
    "max_user_connections": 0, "max_user_client_connections": 0, "server_round_robin": False,
    "max_prepared_statements": 200, "track_extra_parameters": ("IntervalStyle",),
    "ignore_startup_parameters": (), "application_name_add_host": False,
    "server_reset_query": "DISCARD ALL", "server_reset_query_always": False,
    "server_check_query": "<empty>", "server_check_delay": 30.0, "server_fast_close": False,
    "server_lifetime": 3600.0, "server_idle_timeout": 600.0, "server_connect_timeout": 15.0,
    "server_login_retry": 15.0, "client_login_timeout": 60.0, "autodb_idle_timeout": 3600.0,
    "query_timeout": 0.0, "query_wait_timeout": 120.0, "cancel_wait_timeout": 10.0,
    "client_idle_timeout": 0.0, "idle_transaction_timeout": 0.0, "transaction_timeout": 0.0,
    "log_connections": True, "log_disconnections": True, "log_pooler_errors": True, "log_stats": True,
    "stats_period": 60.0, "verbose": 0, "pkt_buf": 4096, "max_packet_size": 2147483647,
    "tcp_keepalive": True, "tcp_keepcnt": 0, "tcp_keepidle": 0, "tcp_keepintvl": 0, "tcp_user_timeout": 0,
    "tcp_defer_accept": sys.platform.startswith("linux"), "scram_iterations": 4096,
    "client_tls_sslmode": "disable", "server_tls_sslmode": "prefer", "dns_max_ttl": 15.0,
}


def test_defaults_equal_pgbouncers(tmp_path: Path) -> None:
    config = load(tmp_path, "[pgbouncer]\n")
    for key, expected in PGBOUNCER_DEFAULTS.items():
        assert getattr(config.settings, key) == expected, key
    assert config.settings == Settings()
    assert config.warnings == ()
    assert dict(config.databases) == {}


def test_value_syntax(tmp_path: Path) -> None:
    config = load(tmp_path, """
        # both comment styles; values run to the end of the line
        [pgbouncer]
        listen_addr = *
        unix_socket_mode = 0700
        admin_users = alice , bob,
        log_connections = off
        server_reset_query_always = yes
        server_idle_timeout = 0.25
        server_check_query = select 1 ; not a comment
        unix_socket_dir =
    """)
    s = config.settings
    assert s.listen_addr == ("*",)
    assert s.unix_socket_mode == 0o700
    assert s.admin_users == ("alice", "bob")
    assert (s.log_connections, s.server_reset_query_always) == (False, True)
    assert s.server_idle_timeout == 0.25
    assert s.server_check_query == "select 1 ; not a comment"
    assert s.unix_socket_dir == ""


def test_database_lines_and_quoting(tmp_path: Path) -> None:
    config = load(tmp_path, """
        [databases]
        foodb =
        bardb = host=localhost dbname=bazdb
        forcedb = host = db1 port=300 user=baz password='it''s secret' connect_query='SELECT 1'
        old = reserve_pool=7 min_pool_size=2 max_db_connections=9
        "my ""odd"" db" = host=/var/run/postgresql
    """)
    dbs = config.databases
    assert list(dbs) == ["foodb", "bardb", "forcedb", "old", 'my "odd" db']
    assert dbs["foodb"].host is None and dbs["foodb"].port == 5432 and dbs["foodb"].target_dbname == "foodb"
    assert dbs["bardb"].target_dbname == "bazdb"
    forced = dbs["forcedb"]
    assert (forced.host, forced.port, forced.user) == ("db1", 300, "baz")
    assert forced.password == "it's secret" and forced.connect_query == "SELECT 1"
    assert forced.file == str(tmp_path / "pgbouncer.ini") and forced.line == 5
    old = dbs["old"]
    assert (old.reserve_pool_size, old.min_pool_size, old.max_db_connections) == (7, 2, 9)
    assert dbs['my "odd" db'].host == "/var/run/postgresql"


def test_connstr_parser() -> None:
    assert parse_connstr("  a=1   b = 'x y' c=''''") == [("a", "1"), ("b", "x y"), ("c", "'")]
    assert parse_connstr("") == []
    for bad in ("host", "host=", "=x", "a='open", "a='x'b=1"):
        with pytest.raises(ValueError):
            parse_connstr(bad)


def test_wildcard_database(tmp_path: Path) -> None:
    config = load(tmp_path, "[databases]\napp = host=a\n* = host=fallback port=5433\n")
    assert config.database("app").host == "a"
    auto = config.database("reports")
    assert (auto.name, auto.target_dbname, auto.host, auto.port) == ("reports", "reports", "fallback", 5433)
    assert load(tmp_path, "[databases]\napp =\n").database("reports") is None
    fixed = load(tmp_path, "[databases]\n* = dbname=shared\n").database("x")
    assert fixed.target_dbname == "shared"


def test_include_relative_nested_and_section_carries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # includes resolve next to the including file, not here
    write(tmp_path, "conf.d/dbs.ini", "app = host=a\n%include more.ini\n")
    write(tmp_path, "conf.d/more.ini", "other = host=b\n[pgbouncer]\nlisten_port = 7000\n")
    main = write(tmp_path, "main.ini", "[databases]\n%include conf.d/dbs.ini\ndefault_pool_size = 3\n")
    config = load_config(main)
    assert list(config.databases) == ["app", "other"]
    # more.ini switched to [pgbouncer]; that carries back into main.ini, as in PgBouncer
    assert (config.settings.listen_port, config.settings.default_pool_size) == (7000, 3)
    assert config.databases["other"].file.endswith("more.ini") and config.databases["other"].line == 1


def test_include_falls_back_to_current_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "cwd/extra.ini", "listen_port = 7001\n")
    main = write(tmp_path, "etc/main.ini", "[pgbouncer]\n%include extra.ini\n")
    monkeypatch.chdir(tmp_path / "cwd")
    assert load_config(main).settings.listen_port == 7001


def test_include_loop_and_missing_file(tmp_path: Path) -> None:
    write(tmp_path, "a.ini", "[pgbouncer]\n%include b.ini\n")
    write(tmp_path, "b.ini", "%include a.ini\n")
    with pytest.raises(ConfigError, match="loop") as err:
        load_config(str(tmp_path / "a.ini"))
    assert (err.value.file, err.value.line) == (str(tmp_path / "b.ini"), 1)
    with pytest.raises(ConfigError, match="cannot read") as err:
        load(tmp_path, "[pgbouncer]\n\n%include nowhere.ini\n")
    assert err.value.line == 3


@pytest.mark.parametrize(("text", "key", "line", "message"), [
    ("[pgbouncer]\nlisten_prot = 6432\n", "listen_prot", 2, "did you mean 'listen_port'"),
    ("[pgbouncer]\nlisten_port = 64x\n", "listen_port", 2, "expected an integer"),
    ("[pgbouncer]\nlisten_port = 0\n", "listen_port", 2, "at least 1"),
    ("[pgbouncer]\n\ndefault_pool_size = -1\n", "default_pool_size", 3, "at least 0"),
    ("[pgbouncer]\npool_mode = sessions\n", "pool_mode", 2, "session, transaction, statement"),
    ("[pgbouncer]\nauth_type = kerberos\n", "auth_type", 2, "must be one of"),
    ("[pgbouncer]\nserver_lifetime = 1h\n", "server_lifetime", 2, "seconds"),
    ("[pgbouncer]\nlog_stats = maybe\n", "log_stats", 2, "boolean"),
    ("[databases]\napp = port=abc\n", "databases.app.port", 2, "expected an integer"),
    ("[databases]\napp = pool_size=-5\n", "databases.app.pool_size", 2, "at least 0"),
    ("[databases]\napp = hots=a\n", "databases.app.hots", 2, "did you mean 'host'"),
    ("[databases]\napp = host='a\n", "databases.app", 2, "unterminated"),
    ("[databases]\npgbouncer = host=a\n", "pgbouncer", 2, "reserved"),
    ("[users]\nbob = pool_mode=fast\n", "users.bob.pool_mode", 2, "must be one of"),
    ("[users]\nbob = pool_siz=1\n", "users.bob.pool_siz", 2, "unknown user option"),
    ("[pgbouncer]\nauth_type = pam\n", "auth_type", 2, "pam is refused"),
    ("[server]\n", "server", 1, "unknown section"),
    ("listen_port = 1\n", "listen_port", 1, "outside of any"),
    ("[pgbouncer]\nconffile\n", None, 2, "syntax error"),
])
def test_errors_name_file_line_and_key(tmp_path: Path, text: str, key: str | None, line: int,
                                       message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        load(tmp_path, text)
    path = str(tmp_path / "pgbouncer.ini")
    assert (err.value.file, err.value.line, err.value.key) == (path, line, key)
    assert str(err.value).startswith(f"{path}:{line}: " + (f"{key}: " if key else ""))


def test_unimplemented_settings_give_one_warning(tmp_path: Path) -> None:
    config = load(tmp_path, """
        [databases]
        app = host=a target_session_attrs=read-write auth_dbname=x
        [peers]
        1 = host=/tmp/p1
        [pgbouncer]
        client_tls_sslmode = disable
        client_tls_ciphers = HIGH
        dns_max_ttl = 30
        server_tls_sslmode = disable
        peer_id = 1
    """)
    (warning,) = config.warnings
    for name in ("dns_max_ttl", "peer_id", "databases.app.target_session_attrs", "[peers]"):
        assert name in warning
    for name in ("client_tls_sslmode", "client_tls_ciphers", "server_tls_sslmode", "auth_dbname"):
        assert name not in warning  # TLS and auth_query work
    assert config.settings.client_tls_ciphers == "HIGH"


def test_tls_and_auth_settings_load(tmp_path: Path) -> None:
    config = load(tmp_path, """
        [databases]
        app = host=a auth_user=pgb auth_dbname=x auth_query='SELECT usename, passwd FROM pg_shadow WHERE usename=$1'
        [pgbouncer]
        client_tls_sslmode = verify-full
        client_tls_ca_file = /etc/ca.pem
        server_tls_sslmode = verify-ca
        auth_user = pgbouncer
        auth_type = cert
    """)
    assert config.warnings == ()
    assert (config.settings.client_tls_sslmode, config.settings.server_tls_sslmode) == ("verify-full", "verify-ca")
    assert config.databases["app"].auth_user == "pgb"


def test_auth_type_cert_needs_client_certificates(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="auth_type = cert needs client certificates"):
        load(tmp_path, "[pgbouncer]\nauth_type = cert\nclient_tls_sslmode = require\n")


# Settings that ask for what pgmux does not have: start-up stops, naming file:line: key.
REFUSED = [
    ("auth_type = pam", "auth_type", "weaker check"),
    ("auth_type = ldap", "auth_type", "weaker check"),
    ("auth_ident_file = /etc/ident.conf", "auth_ident_file", "not implemented"),
    ("client_tls13_ciphers = TLS_AES_128_GCM_SHA256", "client_tls13_ciphers", "TLS 1.3 cipher suites"),
    ("server_tls13_ciphers = TLS_AES_128_GCM_SHA256", "server_tls13_ciphers", "TLS 1.3 cipher suites"),
    ("client_tls_dheparams = legacy", "client_tls_dheparams", "1024-bit DH is weak"),
    ("disable_pqexec = 1", "disable_pqexec", "simple query protocol"),
]


@pytest.mark.parametrize(("line", "key", "message"), REFUSED, ids=[r[0] for r in REFUSED])
def test_refused_settings_stop_start_up(tmp_path: Path, line: str, key: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        load(tmp_path, f"[pgbouncer]\nlisten_port = 7000\n{line}\n")
    path = str(tmp_path / "pgbouncer.ini")
    assert str(err.value).startswith(f"{path}:3: {key}: {line.split(' = ')[1]} is refused: ")


def test_refused_in_toml_too(tmp_path: Path) -> None:
    path = write(tmp_path, "pgmux.toml", '[pgmux]\nlisten_port = 7000\nauth_type = "pam"\n')
    with pytest.raises(ConfigError, match="weaker check") as err:
        load_config(path)
    assert (err.value.line, err.value.key) == (3, "pgmux.auth_type")


@given(st.lists(st.tuples(st.from_regex(r"[a-z_]{1,10}", fullmatch=True),
                          st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), min_size=1,
                                  max_size=15)), max_size=5))
def test_connstr_quoting_round_trips(pairs: list[tuple[str, str]]) -> None:
    text = " ".join(f"{k}='{val.replace(chr(39), chr(39) * 2)}'" for k, val in pairs)
    assert parse_connstr(text) == pairs
