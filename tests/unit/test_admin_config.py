"""SHOW CONFIG from a generic settings dataclass, and the rows PgBouncer derives from SHOW STATS."""

from __future__ import annotations

import dataclasses
import datetime
import enum

import pytest

from pgmux.admin import derive
from pgmux.admin.config_show import config_rows, format_setting
from pgmux.admin.render import render_rows
from pgmux.admin.rows import ConfigRow, ListsRow, StateRow, StatsRow, TotalsRow


class PoolMode(enum.Enum):
    SESSION = "session"
    TRANSACTION = "transaction"


@dataclasses.dataclass(frozen=True)
class Nested:
    weight: int = 1


@dataclasses.dataclass(frozen=True)
class Settings:
    listen_port: int = 6432
    pool_mode: PoolMode = PoolMode.SESSION
    log_connections: bool = True
    server_lifetime: float = 3600.0
    query_wait_timeout: datetime.timedelta = datetime.timedelta(seconds=120)
    admin_users: tuple[str, ...] = ()
    auth_file: str | None = None
    reserve_pool_timeout: float = 5.0
    res_pool_size: int = dataclasses.field(default=0, metadata={"key": "reserve_pool_size"})
    listen_addr: tuple[str, ...] = dataclasses.field(default_factory=lambda: ("127.0.0.1",))
    replicas: Nested = dataclasses.field(default_factory=Nested)  # not a PgBouncer setting
    logfile: str = ""


LIVE = Settings(listen_port=6543, pool_mode=PoolMode.TRANSACTION, log_connections=False,
                server_lifetime=1800.5, admin_users=("alice", "bob"), auth_file="/etc/users.txt",
                res_pool_size=3, listen_addr=("127.0.0.1", "::1"))


def by_key(rows: list[ConfigRow]) -> dict[str, tuple[str | None, str | None, str]]:
    return {row.key: (row.value, row.default, row.changeable) for row in rows}


def test_rows_from_class_defaults() -> None:
    rows = config_rows(LIVE, changeable={"pool_mode", "log_connections", "res_pool_size"})
    assert [row.key for row in rows] == sorted(row.key for row in rows)  # PgBouncer lists them sorted
    assert by_key(rows) == {
        "admin_users": ("alice,bob", "", "no"),
        "auth_file": ("/etc/users.txt", None, "no"),
        "listen_addr": ("127.0.0.1,::1", "127.0.0.1", "no"),
        "listen_port": ("6543", "6432", "no"),
        "log_connections": ("0", "1", "yes"),
        "logfile": ("", "", "no"),
        "pool_mode": ("transaction", "session", "yes"),
        "query_wait_timeout": ("120", "120", "no"),
        "reserve_pool_size": ("3", "0", "yes"),  # metadata key; changeable by field name too
        "reserve_pool_timeout": ("5", "5", "no"),
        "server_lifetime": ("1800.5", "3600", "no"),
    }


def test_rows_from_a_defaults_instance() -> None:
    defaults = Settings(listen_port=5000)
    rows = by_key(config_rows(LIVE, defaults, changeable=frozenset()))
    assert rows["listen_port"] == ("6543", "5000", "no")


def test_field_without_default_has_null_default() -> None:
    @dataclasses.dataclass(frozen=True)
    class Required:
        dsn: str

    assert config_rows(Required("x")) == [ConfigRow("dsn", "x", None, "no")]


def test_needs_an_instance() -> None:
    with pytest.raises(TypeError):
        config_rows(Settings)


@pytest.mark.parametrize(("value", "text"), [
    (None, None), (True, "1"), (False, "0"), (0, "0"), (2.0, "2"), (0.25, "0.25"), ("", ""),
    (("a", "b"), "a,b"), (frozenset({"b", "a"}), "a,b"), (PoolMode.SESSION, "session"),
    (datetime.timedelta(milliseconds=1500), "1.5"),
])
def test_format_setting(value: object, text: str | None) -> None:
    assert format_setting(value) == text


def _stats(**overrides: int) -> StatsRow:
    names = [f.name for f in dataclasses.fields(StatsRow)][1:]
    values = {name: i + 1 for i, name in enumerate(names)}
    values.update(overrides)
    return StatsRow(database="p0", **values)


def test_stats_totals_and_averages_are_renamed_views() -> None:
    s = _stats()
    t = derive.stats_totals_row(s)
    a = derive.stats_averages_row(s)
    assert (t.database, t.server_assignment_count, t.bytes_received, t.bytes_sent, t.bind_count) == \
        ("p0", s.total_server_assignment_count, s.total_received, s.total_sent, s.total_bind_count)
    assert (a.xact_time, a.bytes_received, a.avg_client_parse_count, a.avg_bind_count) == \
        (s.avg_xact_time, s.avg_recv, s.avg_client_parse_count, s.avg_bind_count)
    assert list(dataclasses.astuple(t))[1:] == list(dataclasses.astuple(s))[1:13] + [s.total_pinned_count]
    assert list(dataclasses.astuple(a))[1:] == list(dataclasses.astuple(s))[13:25] + [s.avg_pinned_count]
    assert (t.client_login_count, a.avg_client_login_count) == (s.total_client_login_count,
                                                                 s.avg_client_login_count)


def test_show_totals_names_are_pgbouncer_internal_ones() -> None:
    s = _stats()
    rows = derive.totals_rows(s)
    assert [row.name for row in rows] == [
        "total_server_assignment_count", "total_xact_count", "total_query_count",
        "total_client_bytes", "total_server_bytes", "total_xact_time", "total_query_time",
        "total_wait_time", "total_ps_client_parse_count", "total_ps_server_parse_count",
        "total_ps_bind_count", "total_client_login_count",
        "avg_server_assignment_count", "avg_xact_count", "avg_query_count",
        "avg_client_bytes", "avg_server_bytes", "avg_xact_time", "avg_query_time",
        "avg_wait_time", "avg_ps_client_parse_count", "avg_ps_server_parse_count", "avg_ps_bind_count",
        "avg_client_login_count",
        "total_pinned_count", "avg_pinned_count",  # pgmux's own, after PgBouncer's
    ]
    assert rows[3] == TotalsRow("total_client_bytes", s.total_received)
    assert rows[16] == TotalsRow("avg_server_bytes", s.avg_sent)
    assert [row.value for row in rows] == list(dataclasses.astuple(s))[1:]


def test_lists_in_pgbouncer_order() -> None:
    rows = derive.lists_rows({"pools": 3, "databases": 2, "used_clients": 7})
    assert [row.list for row in rows] == [
        "databases", "users", "peers", "pools", "peer_pools", "free_clients", "used_clients",
        "login_clients", "free_servers", "used_servers", "dns_names", "dns_zones", "dns_queries",
        "dns_pending",
    ]
    assert rows[0] == ListsRow("databases", 2) and rows[1] == ListsRow("users", 0)
    with pytest.raises(ValueError):
        derive.lists_rows({"nonsense": 1})


@pytest.mark.parametrize(("paused", "suspended", "values"), [
    (False, False, ["yes", "no", "no"]),
    (True, False, ["no", "yes", "no"]),
    (False, True, ["no", "no", "yes"]),
])
def test_state(paused: bool, suspended: bool, values: list[str]) -> None:
    rows = derive.state_rows(paused=paused, suspended=suspended)
    assert rows == [StateRow(k, v) for k, v in zip(["active", "paused", "suspended"], values, strict=True)]


def test_config_rows_render() -> None:
    data = render_rows(config_rows(LIVE), ConfigRow)
    # auth_file's default is NULL on the wire: length -1.
    assert b"auth_file\x00\x00\x00\x0e/etc/users.txt\xff\xff\xff\xff" in data
