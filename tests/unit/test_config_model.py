"""Which value applies to a pool (PgBouncer's precedence), and what a reload changes."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from pgmux.config import Config, DatabaseConfig, Settings, UserConfig, diff, load_config


def make(settings: Settings | None = None, dbs: tuple[DatabaseConfig, ...] = (),
         users: tuple[UserConfig, ...] = (), userlist: dict[str, str] | None = None) -> Config:
    return Config(settings=settings or Settings(), databases={d.name: d for d in dbs},
                  users={u.name: u for u in users}, userlist=userlist or {}, source="test.ini")


PLAIN = DatabaseConfig("plain")
SIZED = DatabaseConfig("sized", pool_size=7, min_pool_size=2, reserve_pool_size=1, pool_mode="transaction",
                       max_db_connections=30, server_lifetime=60.0)
FORCED = DatabaseConfig("forced", user="svc", pool_size=9)
CONFIG = make(Settings(default_pool_size=20, min_pool_size=1, reserve_pool_size=3, pool_mode="session",
                       max_db_connections=50, max_user_connections=40, query_timeout=9.0),
              (PLAIN, SIZED, FORCED),
              (UserConfig("alice", pool_size=4, pool_mode="statement", reserve_pool_size=0,
                          max_user_connections=5, query_timeout=1.5),
               UserConfig("svc", pool_mode="transaction", max_user_connections=0), UserConfig("bob")))


def test_pool_size_user_then_database_then_default() -> None:
    assert CONFIG.pool_size_for(PLAIN, "bob") == 20
    assert CONFIG.pool_size_for(SIZED, "bob") == 7
    assert CONFIG.pool_size_for(SIZED, "alice") == 4  # a [users] pool_size beats the database's
    assert CONFIG.reserve_pool_size_for(SIZED, "alice") == 0  # 0 is a value, not "unset"
    assert CONFIG.reserve_pool_size_for(SIZED, "bob") == 1
    assert CONFIG.reserve_pool_size_for(PLAIN, "bob") == 3


def test_pool_mode_user_then_database_then_default() -> None:
    assert CONFIG.pool_mode_for(PLAIN, "bob") == "session"
    assert CONFIG.pool_mode_for(SIZED, "bob") == "transaction"
    assert CONFIG.pool_mode_for(SIZED, "alice") == "statement"


def test_forced_user_is_the_pools_user() -> None:
    # alice connects to a database that logs in as svc: svc's [users] entry counts, not alice's
    assert CONFIG.pool_mode_for(FORCED, "alice") == "transaction"
    assert CONFIG.pool_size_for(FORCED, "alice") == 9
    # client timeouts follow the client's own name
    assert CONFIG.query_timeout_for("alice") == 1.5 and CONFIG.query_timeout_for("bob") == 9.0


def test_database_only_settings_and_limits() -> None:
    assert (CONFIG.min_pool_size_for(PLAIN), CONFIG.min_pool_size_for(SIZED)) == (1, 2)
    assert (CONFIG.server_lifetime_for(PLAIN), CONFIG.server_lifetime_for(SIZED)) == (3600.0, 60.0)
    assert (CONFIG.max_db_connections_for(PLAIN), CONFIG.max_db_connections_for(SIZED)) == (50, 30)
    assert CONFIG.max_user_connections_for("alice") == 5
    assert CONFIG.max_user_connections_for("svc") == 40  # 0 per user means "use the global limit"
    assert CONFIG.max_user_connections_for("nobody") == 40


def test_diff_marks_restart_only_settings() -> None:
    old = CONFIG
    new = replace(old, settings=replace(old.settings, listen_port=7000, default_pool_size=30,
                                        unix_socket_dir="/run/pgmux"))
    plan = diff(old, new)
    assert plan.changed == ("listen_port", "unix_socket_dir", "default_pool_size")
    assert plan.needs_restart == ("listen_port", "unix_socket_dir")
    assert plan.live == ("default_pool_size",)
    assert len(plan.notes) == 2 and "7000" in plan.notes[0] and "restart" in plan.notes[0]
    assert diff(old, old).empty and not plan.empty


def test_diff_databases_users_and_userlist() -> None:
    old = make(dbs=(PLAIN, SIZED, FORCED), users=(UserConfig("alice"),), userlist={"a": "1", "b": "2"})
    new = make(dbs=(replace(PLAIN, host="elsewhere"), replace(SIZED, pool_size=8, line=99),
                    DatabaseConfig("added")),
               users=(UserConfig("alice", pool_size=2), UserConfig("zed")), userlist={"a": "1", "b": "3"})
    plan = diff(old, new)
    assert (plan.databases_added, plan.databases_removed) == (("added",), ("forced",))
    assert plan.databases_changed == ("plain", "sized")  # moving a line alone (line=99) is no change...
    assert plan.databases_reconnect == ("plain",)  # ...and a new pool_size needs no new connections
    assert (plan.users_added, plan.users_changed, plan.users_removed) == (("zed",), ("alice",), ())
    assert plan.userlist_changed == ("b",)
    assert plan.changed == ()


def test_diff_of_two_loads(tmp_path: Path) -> None:
    path = tmp_path / "pgbouncer.ini"
    path.write_text("[databases]\napp = host=a pool_size=5\n[pgbouncer]\nlisten_port = 6432\n")
    old = load_config(str(path))
    path.write_text("; moved\n[databases]\napp = host=a pool_size=6\n[pgbouncer]\nlisten_port = 6433\n")
    plan = diff(old, load_config(str(path)))
    assert (plan.needs_restart, plan.live, plan.databases_changed) == (("listen_port",), (), ("app",))
