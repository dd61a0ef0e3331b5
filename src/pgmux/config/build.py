"""Turn raw key/value entries, as either loader found them, into the typed model, with strict validation.

The loaders only read syntax; every rule about keys and values lives here, so pgbouncer.ini and pgmux.toml
accept the same things and fail with the same messages. Each raw value carries where it came from, and
every error names that file, line and key.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from pgmux.config import values as v
from pgmux.config.hba import HbaRule, load_hba
from pgmux.config.model import Config, DatabaseConfig, UserConfig
from pgmux.config.settings import SETTINGS_INFO, Settings
from pgmux.config.userlist import load_userlist
from pgmux.errors import ConfigError

# PgBouncer keeps "pgbouncer" for its admin console; clients of pgmux's console use the same name.
RESERVED_DATABASES = frozenset({"pgbouncer"})


@dataclass(frozen=True)
class Raw:
    """One value as a loader found it: text from INI, a native value from TOML."""

    value: object
    file: str | None
    line: int | None
    key: str  # as messages name it: "listen_port", "databases.app.port"

    def error(self, message: str) -> ConfigError:
        return ConfigError(message, file=self.file, line=self.line, key=self.key)


def _parse(raw: Raw, parser: v.Parser) -> object:
    try:
        return parser(raw.value)
    except ValueError as exc:
        raise raw.error(f"invalid value {raw.value!r}: {exc}") from None


def _unknown(raw: Raw, what: str, name: str, known: Iterable[str]) -> ConfigError:
    close = difflib.get_close_matches(name, list(known), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return raw.error(f"unknown {what} {name!r}{hint}")


def _seconds_or_unset(value: object) -> float | None:
    # Per-database and per-user timeouts take -1 for "not set", as PgBouncer documents.
    if value in (-1, "-1"):
        return None
    return v.seconds(value)


_OPT = v.optional_text
DB_KEYS: Mapping[str, tuple[str, v.Parser]] = {
    "host": ("host", _OPT), "port": ("port", v.port_list), "dbname": ("dbname", _OPT), "user": ("user", _OPT),
    "password": ("password", _OPT), "auth_user": ("auth_user", _OPT), "auth_dbname": ("auth_dbname", _OPT),
    "auth_query": ("auth_query", _OPT), "pool_size": ("pool_size", v.pool_size),
    "min_pool_size": ("min_pool_size", v.count), "reserve_pool_size": ("reserve_pool_size", v.count),
    "reserve_pool": ("reserve_pool_size", v.count), "pool_mode": ("pool_mode", v.pool_mode),
    "max_db_connections": ("max_db_connections", v.count),
    "max_db_client_connections": ("max_db_client_connections", v.count),
    "server_lifetime": ("server_lifetime", v.seconds),
    "query_wait_timeout": ("query_wait_timeout", _seconds_or_unset),
    "load_balance_hosts": ("load_balance_hosts", v.choice("disable", "round-robin")),
    "connect_query": ("connect_query", _OPT), "application_name": ("application_name", _OPT),
    "client_encoding": ("client_encoding", _OPT), "datestyle": ("datestyle", _OPT),
    "timezone": ("timezone", _OPT),
    # pgmux only. pgbouncer.ini spells them with the pgmux_ prefix, so they stand out on a PgBouncer db
    # line; pgmux.toml tables use the plain names (and `hosts = [{...}]`, see toml.py). Both load both.
    "pgmux_roles": ("roles", v.role_list), "roles": ("roles", v.role_list),
    "pgmux_weights": ("weights", v.weight_list), "weights": ("weights", v.weight_list),
    "pgmux_read_write_split": ("read_write_split", v.boolean), "read_write_split": ("read_write_split", v.boolean),
    "pgmux_balance": ("balance", v.balance), "balance": ("balance", v.balance),
    "pgmux_max_lag_bytes": ("max_lag_bytes", v.count), "max_lag_bytes": ("max_lag_bytes", v.count),
    "pgmux_max_lag_seconds": ("max_lag_seconds", v.seconds), "max_lag_seconds": ("max_lag_seconds", v.seconds),
    "pgmux_read_your_writes": ("read_your_writes", v.boolean), "read_your_writes": ("read_your_writes", v.boolean),
    "pgmux_write_functions": ("write_functions", v.name_list), "write_functions": ("write_functions", v.name_list),
    "pgmux_pin_mode": ("pin_mode", v.choice("pin", "refuse")), "pin_mode": ("pin_mode", v.choice("pin", "refuse")),
}
# Database options PgBouncer 1.25 knows that pgmux validates but does not act on (yet).
DB_KEYS_IGNORED: Mapping[str, v.Parser] = {
    "target_session_attrs": v.choice("any", "read-write", "read-only", "primary", "standby"),
}
# Keys of DB_KEYS that load into the model but that nothing acts on yet: a line that sets one loads with a
# warning naming it (remove a key here as its feature lands; the README table follows).
DB_KEYS_NI: frozenset[str] = frozenset()
# Keys pgmux refuses to start with, and why (see settings.py: running without them would be unsafe).
DB_KEYS_REFUSED: Mapping[str, str] = {}
USER_KEYS: Mapping[str, v.Parser] = {
    "pool_mode": v.pool_mode, "pool_size": v.pool_size, "reserve_pool_size": v.count,
    "max_user_connections": v.count, "max_user_client_connections": v.count,
    "query_timeout": _seconds_or_unset, "query_wait_timeout": _seconds_or_unset,
    "idle_transaction_timeout": _seconds_or_unset, "transaction_timeout": _seconds_or_unset,
    "client_idle_timeout": _seconds_or_unset,
}
USER_KEYS_NI: frozenset[str] = frozenset()


def build_settings(raw: Mapping[str, Raw], ignored: list[str], warnings: list[str] | None = None) -> Settings:
    """Validate the [pgbouncer] keys; append to `ignored` the unimplemented ones set to a non-default,
    and to `warnings` what a `warn` gate says about a value given explicitly. Raises ConfigError for a
    value a `refuse` gate names (settings.py: running without it would be unsafe)."""
    parsed: dict[str, object] = {}
    for name, entry in raw.items():
        info = SETTINGS_INFO.get(name)
        if info is None:
            raise _unknown(entry, "setting", name, SETTINGS_INFO)
        value = parsed[name] = _parse(entry, info.parse)
        if info.refuse is not None and info.refuse.hit(value, info.default):
            raise entry.error(f"{entry.value} is refused: {info.refuse.reason} "
                              f"(remove it{_or_default(info.default)})")
        if info.warn is not None and info.warn.hit(value, info.default) and warnings is not None:
            warnings.append(f"{name} = {value}: {info.warn.reason}")
        if not info.implemented and value != info.default:
            ignored.append(name)
    return Settings(**parsed)  # type: ignore[arg-type]  # keys and types are checked above


def _or_default(default: object) -> str:
    return f", or set it to {default}" if isinstance(default, str) else ""


def build_database(name: str, items: Mapping[str, Raw], file: str | None, line: int | None,
                   ignored: list[str]) -> DatabaseConfig:
    if name in RESERVED_DATABASES:
        raise ConfigError(f"database name {name!r} is reserved for the admin console",
                          file=file, line=line, key=name)
    fields: dict[str, object] = {}
    where: dict[str, Raw] = {}
    for key, entry in items.items():
        if key in DB_KEYS_IGNORED:
            _parse(entry, DB_KEYS_IGNORED[key])
            ignored.append(entry.key)
            continue
        if key not in DB_KEYS:
            raise _unknown(entry, "database option", key, [*DB_KEYS, *DB_KEYS_IGNORED])
        field_name, parser = DB_KEYS[key]
        fields[field_name] = _parse(entry, parser)  # later keys win, as in PgBouncer
        if key in DB_KEYS_REFUSED:
            raise entry.error(f"{entry.value} is refused: {DB_KEYS_REFUSED[key]} (remove it)")
        if key in DB_KEYS_NI:
            ignored.append(entry.key)
        where[field_name] = entry
    _topology(fields, where)
    return DatabaseConfig(name=name, file=file, line=line, **fields)  # type: ignore[arg-type]


def _topology(fields: dict[str, object], where: Mapping[str, Raw]) -> None:
    """Check the per-host lists against the host list and store them in canonical form, so that
    `port=5432,5432` equals `port=5432` and a TOML `hosts` table equals the INI line it mirrors: a list
    whose items all equal the default is stored as ()."""
    host = fields.get("host")
    count = len([h for h in host.split(",") if h.strip()]) if isinstance(host, str) else 1
    if isinstance(host, str) and count == 0:
        raise where["host"].error(f"invalid value {where['host'].value!r}: expected a host or a list of hosts")
    ports = fields.pop("port", None)
    if isinstance(ports, tuple):
        if len(ports) not in (1, count):
            raise where["port"].error(f"{len(ports)} ports for {count} hosts: give one port for all hosts "
                                      "or one per host")
        fields["port"] = ports[0]
        if len(set(ports)) > 1:
            fields["ports"] = ports
    roles = fields.get("roles")
    if isinstance(roles, tuple):
        if len(roles) != count:
            raise where["roles"].error(f"{len(roles)} roles for {count} hosts: give one role per host")
        if roles.count("primary") > 1:
            raise where["roles"].error("at most one host can be configured as primary; "
                                       "use auto to let the health checks find it")
        default = "primary" if count == 1 else "auto"
        if all(r == default for r in roles):
            fields["roles"] = ()
    weights = fields.get("weights")
    if isinstance(weights, tuple):
        if len(weights) != count:
            raise where["weights"].error(f"{len(weights)} weights for {count} hosts: "
                                         "give one weight per host")
        if all(w == 1.0 for w in weights):
            fields["weights"] = ()


def build_user(name: str, items: Mapping[str, Raw], file: str | None, line: int | None,
               ignored: list[str] | None = None) -> UserConfig:
    fields: dict[str, object] = {}
    for key, entry in items.items():
        if key not in USER_KEYS:
            raise _unknown(entry, "user option", key, USER_KEYS)
        fields[key] = _parse(entry, USER_KEYS[key])
        if key in USER_KEYS_NI and ignored is not None:
            ignored.append(entry.key)
    return UserConfig(name=name, file=file, line=line, **fields)  # type: ignore[arg-type]


def read_auth_file(settings: Settings, warnings: list[str]) -> dict[str, str]:
    """Load auth_file when the auth_type uses it, as PgBouncer does (not for `any` or `pam`).

    A relative path is taken from the current directory, as PgBouncer opens it; a reload reads the same
    path again. A missing file is a warning, not an error: PgBouncer starts without it too, and the
    runtime can load it on a later reload.
    """
    path = settings.auth_file
    if path is None or settings.auth_type in ("any", "pam"):
        return {}
    if not os.path.exists(path):
        warnings.append(f"auth_file {path!r} does not exist (current directory {os.getcwd()!r}); "
                        "no users can log in with a password until it does")
        return {}
    return load_userlist(path)


def finish(settings: Settings, databases: Iterable[DatabaseConfig], users: Iterable[UserConfig],
           userlist: Mapping[str, str], source: str, warnings: list[str], ignored: list[str]) -> Config:
    if ignored:
        warnings.insert(0, "accepted for PgBouncer compatibility but not implemented, ignored: "
                           + ", ".join(dict.fromkeys(ignored)))
    dbs = {db.name: db for db in databases}
    hba: tuple[HbaRule, ...] = ()
    if settings.auth_type == "hba" and settings.auth_hba_file:  # build_settings insists on the file
        hba = load_hba(settings.auth_hba_file)
        if any(r.method == "cert" for r in hba) and settings.client_tls_sslmode not in ("verify-ca", "verify-full"):
            raise ConfigError("auth_hba_file has cert lines, which need client certificates: set "
                              "client_tls_sslmode = verify-ca or verify-full (and client_tls_ca_file)",
                              file=source, key="client_tls_sslmode")
    if settings.auth_type == "cert" and settings.client_tls_sslmode not in ("verify-ca", "verify-full"):
        raise ConfigError("auth_type = cert needs client certificates: set client_tls_sslmode = verify-ca or "
                          "verify-full (and client_tls_ca_file)", file=source, key="auth_type")
    return Config(
        settings=settings,
        databases=MappingProxyType(dbs),
        users=MappingProxyType({u.name: u for u in users}),
        userlist=MappingProxyType(dict(userlist)),
        source=source,
        warnings=tuple(warnings),
        hba=hba,
    )
