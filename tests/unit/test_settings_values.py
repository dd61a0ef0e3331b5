"""The settings this issue implemented: their values parse, bad ones stop start-up with file:line: key, and
the pure parts of their behaviour (socket options, application_name, the stats line) are what PgBouncer does."""

from __future__ import annotations

import grp
import os
import socket
from pathlib import Path

import pytest

from pgmux.admin.stats_line import FIELDS, averages, stats_line
from pgmux.config import Settings, load_config
from pgmux.errors import ConfigError
from pgmux.net.sockopts import tcp_options
from pgmux.session.params import with_client_host


def write_ini(tmp_path: Path, text: str) -> str:
    path = tmp_path / "pgbouncer.ini"
    path.write_text(text)
    return str(path)


def load(tmp_path: Path, text: str) -> Settings:
    return load_config(write_ini(tmp_path, text)).settings


GOOD = [
    ("tcp_keepalive", "0", False), ("tcp_keepalive", "yes", True), ("tcp_keepcnt", "5", 5),
    ("tcp_keepidle", "600", 600), ("tcp_keepintvl", "0x10", 16), ("tcp_user_timeout", "30000", 30000),
    ("tcp_socket_buffer", "65536", 65536), ("tcp_defer_accept", "0", False), ("so_reuseport", "1", True),
    ("listen_backlog", "4096", 4096), ("unix_socket_group", grp.getgrgid(os.getgid()).gr_name,
                                        grp.getgrgid(os.getgid()).gr_name),
]
BAD = [
    ("tcp_keepalive", "maybe", "boolean"), ("tcp_keepcnt", "-1", "at least 0"), ("tcp_keepcnt", "128", "at most 127"),
    ("tcp_keepidle", "1h", "expected an integer"), ("tcp_keepidle", "40000", "at most 32767"),
    ("tcp_keepintvl", "-3", "at least 0"), ("tcp_user_timeout", "1.5", "expected an integer"),
    ("tcp_user_timeout", "-1", "at least 0"), ("tcp_socket_buffer", "big", "expected an integer"),
    ("tcp_defer_accept", "2", "boolean"), ("so_reuseport", "sure", "boolean"),
    ("listen_backlog", "0", "at least 1"), ("listen_backlog", "many", "expected an integer"),
    ("unix_socket_group", "no-such-group-pgmux", "no such group"),
]


@pytest.mark.parametrize(("key", "text", "value"), GOOD)
def test_good_values(tmp_path: Path, key: str, text: str, value: object) -> None:
    settings = load(tmp_path, f"[pgbouncer]\n{key} = {text}\n")
    assert getattr(settings, key) == value
    assert load_config(str(tmp_path / "pgbouncer.ini")).warnings == ()  # implemented: no warning


@pytest.mark.parametrize(("key", "text", "message"), BAD)
def test_bad_values_name_file_line_and_key(tmp_path: Path, key: str, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        load(tmp_path, f"[pgbouncer]\nlisten_port = 7000\n{key} = {text}\n")
    assert str(err.value).startswith(f"{tmp_path / 'pgbouncer.ini'}:3: {key}: invalid value")


def test_tcp_options_follow_pgbouncer() -> None:
    ka, tcp, sol = socket.SO_KEEPALIVE, socket.IPPROTO_TCP, socket.SOL_SOCKET
    assert tcp_options(Settings()) == [(sol, ka, 1)]  # keepalive on with the OS's timings, nothing else
    full = Settings(tcp_keepcnt=3, tcp_keepidle=60, tcp_keepintvl=5, tcp_user_timeout=9000, tcp_socket_buffer=4096)
    assert tcp_options(full) == [
        (sol, ka, 1), (tcp, socket.TCP_KEEPCNT, 3), (tcp, socket.TCP_KEEPIDLE, 60), (tcp, socket.TCP_KEEPINTVL, 5),
        (tcp, socket.TCP_USER_TIMEOUT, 9000), (sol, socket.SO_SNDBUF, 4096), (sol, socket.SO_RCVBUF, 4096)]
    off = Settings(tcp_keepalive=False, tcp_keepcnt=3, tcp_user_timeout=9000)
    assert tcp_options(off) == [(sol, ka, 0), (tcp, socket.TCP_USER_TIMEOUT, 9000)]


@pytest.mark.parametrize(("name", "addr", "port", "unix", "expected"), [
    ("billing", "10.0.0.5", 51012, False, "billing - 10.0.0.5:51012"),
    (None, "10.0.0.5", 51012, False, "app - 10.0.0.5:51012"),  # PgBouncer's name for a client without one
    ("", "10.0.0.5", 51012, False, "app - 10.0.0.5:51012"),
    ("x", "::1", 40000, False, "x - [::1]:40000"),
    ("psql", "unix", 0, True, "psql - unix:6432"),
])
def test_application_name_add_host(name: str | None, addr: str, port: int, unix: bool, expected: str) -> None:
    assert with_client_host(name, addr, port, unix, 6432) == expected


MORE_BAD = [
    ("scram_iterations", "0", "at least 1"), ("scram_iterations", "many", "expected an integer"),
    ("log_stats", "perhaps", "boolean"), ("stats_period", "-1", "0 or more"), ("stats_period", "1m", "seconds"),
    ("log_pooler_errors", "2", "boolean"), ("application_name_add_host", "yes please", "boolean"),
    ("pkt_buf", "0", "at least 1"),
]


@pytest.mark.parametrize(("key", "text", "message"), MORE_BAD)
def test_more_bad_values(tmp_path: Path, key: str, text: str, message: str) -> None:
    test_bad_values_name_file_line_and_key(tmp_path, key, text, message)


def test_more_good_values(tmp_path: Path) -> None:
    s = load(tmp_path, "[pgbouncer]\nscram_iterations = 10000\nlog_stats = 0\nstats_period = 15\n"
                       "log_pooler_errors = off\napplication_name_add_host = 1\nlogin_notify_message = hi there\n")
    assert (s.scram_iterations, s.log_stats, s.stats_period, s.log_pooler_errors) == (10000, False, 15.0, False)
    assert (s.application_name_add_host, s.login_notify_message) == (True, "hi there")
    assert load_config(str(tmp_path / "pgbouncer.ini")).warnings == ()
    (warning,) = load_config(write_ini(tmp_path, "[pgbouncer]\npkt_buf = 8192\n")).warnings
    assert "pkt_buf" in warning  # pkt_buf: ignored, and said so


def test_stats_line_is_pgbouncers() -> None:
    old = dict.fromkeys(FIELDS, 0)
    cur = {**old, "xact_count": 120, "query_count": 300, "client_parse_count": 6, "server_parse_count": 3,
           "bind_count": 60, "bytes_received": 6000, "bytes_sent": 24000, "xact_time": 240000,
           "query_time": 150000, "wait_time": 1200}
    avg = averages(cur, old, 60.0)
    assert stats_line(avg) == (
        "stats: 2 xacts/s, 5 queries/s, 0 client parses/s, 0 server parses/s, 1 binds/s, in 100 B/s, "
        "out 400 B/s, xact 2000 us, query 500 us, wait 10 us")
    assert stats_line(avg, "app").startswith("stats for database app: 2 xacts/s, 5 queries/s, ")
    # An idle period: zeros, no division by zero; times are per transaction/query of the period only.
    assert stats_line(averages(cur, cur, 60.0)).startswith("stats: 0 xacts/s, 0 queries/s")
    later = {**cur, "xact_count": 121, "xact_time": 240000 + 7000, "query_count": 301, "query_time": 150000 + 5000}
    again = averages(later, cur, 60.0)
    assert (again["xact_count"], again["xact_time"], again["query_time"]) == (0, 7000, 5000)
