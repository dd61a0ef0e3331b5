"""The typed, frozen configuration model both loaders produce.

The `*_for` methods answer "which value applies to this pool" with PgBouncer's precedence (objects.c in
1.25): a [users] entry beats a [databases] entry beats the [pgbouncer] default for pool_mode, pool_size and
reserve_pool_size; min_pool_size and server_lifetime come from the database, else the default; per-database
and per-user connection limits apply when above 0, else the global limit. The user that counts is the one
the pool logs in as: the database's forced `user=` if it has one, else the client's user name. For the
timeouts, see the comment above query_wait_timeout_for.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import TypeVar

from pgmux.config.hba import HbaRule
from pgmux.config.settings import Settings

__all__ = ["Config", "DatabaseConfig", "HostConfig", "Settings", "UserConfig"]


@dataclass(frozen=True)
class HostConfig:
    """One backend host of a logical database, as the config describes it.

    `role` is the configured guess ("auto": let the health checks tell); the runtime's HostState keeps
    what the server itself says. `weight` is a relative capacity for the balancer (0: only when nothing
    else can serve)."""

    host: str | None  # None: the unix socket in the default directory
    port: int
    role: str = "primary"
    weight: float = 1.0


@dataclass(frozen=True)
class DatabaseConfig:
    """One line of [databases]. None means "not set here": the [pgbouncer] value applies."""

    name: str  # the key clients connect to; "*" for the fallback entry
    # A TCP host name or address; a unix socket directory if it starts with "/" ("@": abstract namespace);
    # None: the unix socket in the default directory. PgBouncer also allows a comma-separated list
    # (round-robin), kept as written here; see `hosts`.
    host: str | None = None
    port: int = 5432
    dbname: str | None = None  # None: same as the name the client asked for
    user: str | None = None  # forced user: every client of this database shares one pool
    password: str | None = None
    auth_user: str | None = None
    auth_dbname: str | None = None
    auth_query: str | None = None
    pool_size: int | None = None
    min_pool_size: int | None = None
    reserve_pool_size: int | None = None  # the old key "reserve_pool" is accepted as an alias
    pool_mode: str | None = None
    max_db_connections: int | None = None
    max_db_client_connections: int | None = None
    server_lifetime: float | None = None
    query_wait_timeout: float | None = None
    # host=a,b,c: "round-robin" takes the next host for each new connection; "disable" stays on one
    # until a connection to it fails (PgBouncer 1.25's key).
    load_balance_hosts: str = "round-robin"
    connect_query: str | None = None
    application_name: str | None = None
    client_encoding: str | None = None
    datestyle: str | None = None
    timezone: str | None = None
    # -- pgmux topology and routing (pgbouncer.ini spells these pgmux_*; see `topology`)
    ports: tuple[int, ...] = ()  # one per host when `port` was a list of differing ports; () = `port` each
    roles: tuple[str, ...] = ()  # one per host; () = the default: "primary" alone, "auto" in a list
    weights: tuple[float, ...] = ()  # one per host; () = 1.0 each
    read_write_split: bool = False  # off: PgBouncer's behaviour, every query goes where `host` says
    balance: str = "least_outstanding"
    max_lag_bytes: int = 0  # 0 = no limit
    max_lag_seconds: float = 0.0  # 0 = no limit
    read_your_writes: bool = False
    write_functions: tuple[str, ...] = ()  # added to routing's DEFAULT_WRITE_FUNCTIONS
    # Transaction/statement pooling: what a statement that would pin its client to one server (LISTEN,
    # temp tables, session advisory locks, WITH HOLD cursors, LOAD) does: "pin" it, or "refuse" it.
    pin_mode: str = "pin"
    # Where it was defined, for messages. Not part of equality: moving a line is not a change.
    file: str | None = field(default=None, compare=False)
    line: int | None = field(default=None, compare=False)

    @property
    def hosts(self) -> tuple[str, ...]:
        """The host list ("a,b" in PgBouncer); empty when the default unix socket is meant."""
        if self.host is None:
            return ()
        return tuple(h.strip() for h in self.host.split(",") if h.strip())

    @property
    def topology(self) -> tuple[HostConfig, ...]:
        """Every host with its port, configured role and weight, in config order. The loaders have
        checked that `ports`, `roles` and `weights` are empty or one per host."""
        hosts: tuple[str | None, ...] = self.hosts or (None,)
        default_role = "primary" if len(hosts) == 1 else "auto"
        return tuple(
            HostConfig(host=h,
                       port=self.ports[i] if self.ports else self.port,
                       role=self.roles[i] if self.roles else default_role,
                       weight=self.weights[i] if self.weights else 1.0)
            for i, h in enumerate(hosts))

    @property
    def target_dbname(self) -> str:
        """The database name to ask PostgreSQL for."""
        return self.dbname or self.name


@dataclass(frozen=True)
class UserConfig:
    """One line of [users]: per-user overrides. None means "not set here"."""

    name: str
    pool_mode: str | None = None
    pool_size: int | None = None
    reserve_pool_size: int | None = None
    max_user_connections: int | None = None
    max_user_client_connections: int | None = None
    query_timeout: float | None = None
    query_wait_timeout: float | None = None
    idle_transaction_timeout: float | None = None
    transaction_timeout: float | None = None
    client_idle_timeout: float | None = None
    file: str | None = field(default=None, compare=False)
    line: int | None = field(default=None, compare=False)


_NO_USER = UserConfig(name="")
_T = TypeVar("_T")


@dataclass(frozen=True)
class Config:
    settings: Settings
    databases: Mapping[str, DatabaseConfig]  # in file order
    users: Mapping[str, UserConfig]
    userlist: Mapping[str, str]  # user -> plain password, "md5<32 hex>" or a SCRAM-SHA-256 secret
    source: str  # path of the main file
    warnings: tuple[str, ...] = ()
    hba: tuple[HbaRule, ...] = ()  # auth_type = hba: the rules of auth_hba_file, first match wins

    def database(self, name: str) -> DatabaseConfig | None:
        """The entry for `name`: exact, else the "*" fallback made concrete for it, else None."""
        found = self.databases.get(name)
        if found is not None:
            return found
        wildcard = self.databases.get("*")
        if wildcard is None:
            return None
        # PgBouncer parses the "*" connection string as if it were written for `name`: dbname defaults
        # to the requested name unless the fallback line sets one.
        return replace(wildcard, name=name, dbname=wildcard.dbname or name)

    def _user(self, db: DatabaseConfig | None, user: str) -> UserConfig:
        name = db.user if db is not None and db.user else user
        return self.users.get(name, _NO_USER)

    def pool_mode_for(self, db: DatabaseConfig, user: str) -> str:
        return self._user(db, user).pool_mode or db.pool_mode or self.settings.pool_mode

    def pool_size_for(self, db: DatabaseConfig, user: str) -> int:
        return _first(self._user(db, user).pool_size, db.pool_size, self.settings.default_pool_size)

    def reserve_pool_size_for(self, db: DatabaseConfig, user: str) -> int:
        return _first(self._user(db, user).reserve_pool_size, db.reserve_pool_size,
                      self.settings.reserve_pool_size)

    def min_pool_size_for(self, db: DatabaseConfig) -> int:
        return _first(db.min_pool_size, self.settings.min_pool_size)

    def server_lifetime_for(self, db: DatabaseConfig) -> float:
        # PgBouncer reads 0 at database level as "not set", not as "use once".
        return db.server_lifetime or self.settings.server_lifetime

    def max_db_connections_for(self, db: DatabaseConfig) -> int:
        return _positive(db.max_db_connections, self.settings.max_db_connections)

    def max_db_client_connections_for(self, db: DatabaseConfig) -> int:
        return _positive(db.max_db_client_connections, self.settings.max_db_client_connections)

    def max_user_connections_for(self, user: str) -> int:
        return _positive(self._user(None, user).max_user_connections, self.settings.max_user_connections)

    def max_user_client_connections_for(self, user: str) -> int:
        return _positive(self._user(None, user).max_user_client_connections,
                         self.settings.max_user_client_connections)

    # The timeouts follow PgBouncer 1.25's janitor.c. query_wait_timeout: the client's [users] entry if
    # set (0 included: it disables), else its [databases] entry if set, else the global value. The others
    # have no [databases] key in PgBouncer; a [users] value above 0 overrides the global one (0 there
    # means "not set"). query_timeout, idle_transaction_timeout and transaction_timeout are the server
    # side's: they follow the user the pool logs in as (pass the pool's user); client_idle_timeout and
    # query_wait_timeout follow the client's own user name.
    def query_wait_timeout_for(self, db: DatabaseConfig, user: str) -> float:
        return _first(self._user(None, user).query_wait_timeout, db.query_wait_timeout,
                      self.settings.query_wait_timeout)

    def query_timeout_for(self, user: str) -> float:
        return _above_zero(self._user(None, user).query_timeout, self.settings.query_timeout)

    def idle_transaction_timeout_for(self, user: str) -> float:
        return _above_zero(self._user(None, user).idle_transaction_timeout, self.settings.idle_transaction_timeout)

    def transaction_timeout_for(self, user: str) -> float:
        return _above_zero(self._user(None, user).transaction_timeout, self.settings.transaction_timeout)

    def client_idle_timeout_for(self, user: str) -> float:
        return _above_zero(self._user(None, user).client_idle_timeout, self.settings.client_idle_timeout)

    @cached_property
    def any_user_timeouts(self) -> bool:
        """Whether some [users] entry sets a client or server timeout (the janitor skips its pass over
        the clients when neither they nor the globals set one). Computed once per loaded config."""
        return any(u.query_timeout or u.idle_transaction_timeout or u.transaction_timeout or u.client_idle_timeout
                   for u in self.users.values())

    @cached_property
    def any_user_query_wait_timeout(self) -> bool:
        """Whether some [users] entry sets query_wait_timeout: then waiting clients of one pool may have
        different ones (a database with a forced user)."""
        return any(u.query_wait_timeout is not None for u in self.users.values())

def _first(*candidates: _T | None) -> _T:
    for value in candidates:
        if value is not None:
            return value
    raise AssertionError("the last candidate is a [pgbouncer] default and is never None")


def _positive(local: int | None, default: int) -> int:
    return local if local is not None and local > 0 else default


def _above_zero(local: float | None, default: float) -> float:
    return local if local is not None and local > 0 else default
