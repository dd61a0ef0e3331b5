"""The console grammar and the admin/stats split, as tables checked against PgBouncer's behaviour."""

from __future__ import annotations

import pytest

from pgmux.admin import AdminCommand, AdminError, admin_command, authorize, parse_admin, requires_admin
from pgmux.admin.rows import SHOW_ROW_TYPES

C = AdminCommand


@pytest.mark.parametrize(("sql", "expected"), [
    ("SHOW POOLS", C("SHOW", "pools")),
    ("show pools", C("SHOW", "pools")),
    ("ShOw PoOlS;", C("SHOW", "pools")),
    ("  show\tstats_totals \n; \r\n", C("SHOW", "stats_totals")),
    ('SHOW "servers"', C("SHOW", "servers")),
    ("SELECT version", C("SHOW", "version")),  # PgBouncer's alias
    ("show help", C("SHOW", "help")),
    ("SHOW FDS", C("SHOW", "fds")),
    ("SHOW Client_Encoding", C("SHOW", "client_encoding")),
    ("PAUSE", C("PAUSE")),
    ("pause;", C("PAUSE")),
    ("PAUSE p0", C("PAUSE", "p0")),
    ("PAUSE P0", C("PAUSE", "P0")),  # database names keep their case
    ('PAUSE "my-db"', C("PAUSE", "my-db")),
    ('PAUSE "a""b"', C("PAUSE", 'a"b')),
    ('PAUSE ""', C("PAUSE")),  # an empty name is no name
    ("RESUME", C("RESUME")),
    ("resume p0;", C("RESUME", "p0")),
    ("SUSPEND", C("SUSPEND")),
    ("RELOAD;", C("RELOAD")),
    ("DISABLE p0", C("DISABLE", "p0")),
    ("ENABLE p0", C("ENABLE", "p0")),
    ("DISABLE", C("DISABLE")),  # rejected later, after the access check
    ("RECONNECT", C("RECONNECT")),
    ("RECONNECT p0", C("RECONNECT", "p0")),
    ("KILL", C("KILL")),
    ("KILL p0", C("KILL", "p0")),
    ("KILL_CLIENT 1234", C("KILL_CLIENT", "1234")),
    ("WAIT_CLOSE", C("WAIT_CLOSE")),
    ("wait_close p0", C("WAIT_CLOSE", "p0")),
    ("SHUTDOWN", C("SHUTDOWN")),
    ("shutdown wait_for_servers", C("SHUTDOWN", "WAIT_FOR_SERVERS")),
    ("SHUTDOWN WAIT_FOR_CLIENTS;", C("SHUTDOWN", "WAIT_FOR_CLIENTS")),
    ("SET log_connections = 1", C("SET", "log_connections", "1")),
    ("set log_connections=0;", C("SET", "log_connections", "0")),
    ("SET default_pool_size TO 40", C("SET", "default_pool_size", "40")),
    ("SET server_check_query = 'select 2'", C("SET", "server_check_query", "select 2")),
    ("SET server_check_query = 'select ''x'''", C("SET", "server_check_query", "select 'x'")),
    ("SET admin_users = ''", C("SET", "admin_users", "")),
    ('SET "pool_mode" = "session"', C("SET", "pool_mode", "session")),
])
def test_parse(sql: str, expected: AdminCommand) -> None:
    cmd = parse_admin(sql)
    assert cmd == expected
    assert cmd.query == sql


def test_every_show_subject_parses() -> None:
    for subject in SHOW_ROW_TYPES:
        assert parse_admin(f"SHOW {subject.upper()}") == C("SHOW", subject)


@pytest.mark.parametrize("sql", [
    "",
    ";",
    "SHOW",
    "SHOW FOO",
    "SHOW POOLS;;",
    "SHOW POOLS extra",  # 1.25 takes no filter argument
    "SELECT 1",
    "PAUSE p0 p1",
    "PAUSE my-db",  # unquoted names are [A-Za-z0-9_]+
    "RELOAD now",
    "SUSPEND x",
    "SHUTDOWN now",
    "KILL_CLIENT -1",
    "FROB",
    "SET",
    "SET x",
    "SET x = 1.5",  # a bare value is a word; quote anything else
    "SET x = 'unterminated",
    "BEGIN",
])
def test_syntax_error(sql: str) -> None:
    with pytest.raises(AdminError) as exc:
        parse_admin(sql)
    err = exc.value
    assert (err.sqlstate, err.severity) == ("08P01", "ERROR")
    assert err.message == f"invalid command '{sql}', use SHOW HELP;"


def test_syntax_error_message_is_cut_like_pgbouncer() -> None:
    sql = "SHOW - " + "x" * 2000  # no rule matches, so no word-length check runs first
    with pytest.raises(AdminError) as exc:
        parse_admin(sql)
    assert len(exc.value.message.encode()) == 1023


@pytest.mark.parametrize("sql", [
    "A" * 16,  # command word past PgBouncer's 16-byte buffer
    "PAUSE " + "d" * 64,
    "SET " + "k" * 64 + " = 1",
    "SET k = '" + "v" * 300 + "'",
    'SET "" = 1',
])
def test_bad_arguments(sql: str) -> None:
    with pytest.raises(AdminError, match="^bad arguments$"):
        parse_admin(sql)


def test_longest_accepted_words() -> None:
    assert parse_admin("PAUSE " + "d" * 63).arg == "d" * 63
    assert parse_admin("SET k = '" + "v" * 253 + "'").value == "v" * 253


@pytest.mark.parametrize(("sql", "tag"), [
    ("PAUSE", "PAUSE"),
    ("resume p0", "RESUME"),
    ("KILL_CLIENT 7", "KILL_CLIENT"),
    ("SHUTDOWN WAIT_FOR_CLIENTS", "SHUTDOWN"),
    ("show pools", "SHOW"),
    ("SET log_connections = 0", "SET log_connections=0"),
    ("SET server_check_query = 'select ''x'''", "SET server_check_query=select 'x'"),
    ("SET client_encoding = utf8", "SET"),
])
def test_tag(sql: str, tag: str) -> None:
    assert parse_admin(sql).tag == tag


@pytest.mark.parametrize(("arg", "client_id"), [
    ("1234", 1234), ("0", 0), ("12abc", 12), ('" 7"', 7), ('"-1"', 2**64 - 1), ("abc", None),
])
def test_kill_client_id_reads_like_sscanf(arg: str, client_id: int | None) -> None:
    assert parse_admin(f"KILL_CLIENT {arg}").client_id == client_id


# (query, allowed for a stats user)
PERMISSIONS = [
    ("SHOW POOLS", True),
    ("SHOW STATS", True),
    ("SHOW CONFIG", True),
    ("SHOW HELP", True),
    ("SHOW client_encoding", True),
    ("SET client_encoding = utf8", True),  # ignored with a notice, for drivers
    ("SET DateStyle = 'ISO'", True),
    ("SHOW FDS", False),  # shows cancel keys
    ("SET log_connections = 1", False),
    ("PAUSE", False),
    ("RESUME p0", False),
    ("SUSPEND", False),
    ("DISABLE p0", False),
    ("ENABLE p0", False),
    ("RECONNECT", False),
    ("KILL p0", False),
    ("KILL_CLIENT 1", False),
    ("WAIT_CLOSE", False),
    ("RELOAD", False),
    ("SHUTDOWN", False),
    ("SHUTDOWN WAIT_FOR_SERVERS", False),
]


@pytest.mark.parametrize(("sql", "stats_ok"), PERMISSIONS)
def test_permission_split(sql: str, stats_ok: bool) -> None:
    cmd = parse_admin(sql)
    assert requires_admin(cmd) is not stats_ok
    authorize(cmd, is_admin=True)
    if stats_ok:
        authorize(cmd, is_admin=False)
    else:
        with pytest.raises(AdminError, match="^admin access needed$"):
            authorize(cmd, is_admin=False)


@pytest.mark.parametrize(("sql", "message"), [
    ("DISABLE", "a database is required"),
    ("ENABLE", "a database is required"),
    ("KILL_CLIENT abc", "invalid client pointer supplied"),
    ("KILL_CLIENT", "invalid client pointer supplied"),
])
def test_argument_errors_come_after_the_access_check(sql: str, message: str) -> None:
    with pytest.raises(AdminError, match="^admin access needed$"):
        admin_command(sql, is_admin=False)
    with pytest.raises(AdminError) as exc:
        admin_command(sql, is_admin=True)
    assert exc.value.message == message


def test_syntax_errors_come_before_the_access_check() -> None:
    # PgBouncer rejects "RELOAD x" as a syntax error even for a stats user.
    with pytest.raises(AdminError, match="^invalid command"):
        admin_command("RELOAD x", is_admin=False)
