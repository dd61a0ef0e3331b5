"""pgmux.toml reader: the same model as pgbouncer.ini, in native TOML types.

    [pgmux]                      # the keys of [pgbouncer], same names and meaning
    listen_addr = ["127.0.0.1"]  # lists where PgBouncer takes comma lists
    listen_port = 6432
    server_idle_timeout = 600    # numbers in seconds
    [databases.app]              # the keys of a [databases] line; [databases."*"] is the fallback
    host = "10.0.0.5"
    pool_size = 40
    [users.alice]                # the keys of a [users] line
    pool_mode = "transaction"
    [userlist]                   # optional, instead of auth_file: user = secret
    alice = "md5..."

A database or user may also be given as a PgBouncer connection string (`app = "host=a port=5432"`), which
eases moving a config over. Errors name the key path (`databases.app.port`) and, where the table is written
in the plain `[a.b]` form, the line. Room is left for tables the INI format cannot express (replica sets,
routing rules): add them as new top-level tables.

A database with several hosts lists them as tables; the routing keys sit beside the list:

    [databases.app]
    hosts = [{host = "10.0.0.5", port = 5432, role = "primary"},
             {host = "10.0.0.6", port = 5432, role = "replica", weight = 2}]
    read_write_split = true
    balance = "least_outstanding"      # or "round_robin", "weighted_random"
    max_lag_bytes = 1048576            # 0 = no limit; max_lag_seconds likewise
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import replace

from pgmux.config.build import Raw, build_database, build_settings, build_user, finish, read_auth_file
from pgmux.config.ini import parse_connstr
from pgmux.config.model import Config
from pgmux.errors import ConfigError

TABLES = ("pgmux", "databases", "users", "userlist")


class _Lines:
    """Best-effort line numbers: tomllib keeps no positions, so find `[table]` then `key =` below it."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()

    def find(self, table: tuple[str, ...], key: str | None = None) -> int | None:
        wanted = ".".join(table)
        inside = not table
        for lineno, line in enumerate(self.lines, start=1):
            stripped = line.strip()
            if stripped.startswith("["):
                inside = re.sub(r"[\s\"'\[\]]", "", stripped.split("#")[0]) == wanted
                if inside and key is None:
                    return lineno
            elif inside and key is not None and re.match(rf"[\"']?{re.escape(key)}[\"']?\s*=", stripped):
                return lineno
        return None


def _table(value: object, path: str, file: str, line: int | None) -> Mapping[str, object]:
    if not isinstance(value, dict):
        raise ConfigError("expected a table", file=file, line=line, key=path)
    return value


def _entries(name: str, value: object, section: str, file: str, lines: _Lines) -> dict[str, Raw]:
    path = f"{section}.{name}"
    if isinstance(value, str):
        line = lines.find((section,), name)
        try:
            pairs = parse_connstr(value)
        except ValueError as exc:
            raise ConfigError(f"syntax error in connection string: {exc}", file=file, line=line,
                              key=path) from None
        return {k: Raw(val, file, line, f"{path}.{k}") for k, val in pairs}
    table = _table(value, path, file, lines.find((section, name)))
    raw = {k: Raw(val, file, lines.find((section, name), k), f"{path}.{k}") for k, val in table.items()
           if not (section == "databases" and k == "hosts")}
    if section == "databases" and "hosts" in table:
        raw.update(_host_list(table, Raw(table["hosts"], file, lines.find((section, name), "hosts"),
                                         f"{path}.hosts")))
    return raw


_HOST_KEYS = ("host", "port", "role", "weight")
# Keys a `hosts` list replaces; giving both would leave two answers to "where is host 2".
_HOSTS_CONFLICT = ("host", "port", "roles", "pgmux_roles", "weights", "pgmux_weights")


def _host_list(table: Mapping[str, object], where: Raw) -> dict[str, Raw]:
    """`hosts = [{host=..., port=..., role=..., weight=...}, ...]` as the host/port/roles/weights keys
    of a PgBouncer line, so one validation (build.py) serves both formats."""
    clash = [k for k in _HOSTS_CONFLICT if k in table]
    if clash:
        raise where.error(f"give either hosts or {', '.join(clash)}, not both")
    items = where.value
    if not isinstance(items, list) or not items:
        raise where.error("expected a non-empty list of tables: [{host = ..., port = ..., role = ...}]")
    hosts, ports, roles, weights = [], [], [], []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise where.error(f"item {i + 1}: expected a table {{host = ..., port = ...}}")
        unknown = [k for k in item if k not in _HOST_KEYS]
        if unknown:
            raise where.error(f"item {i + 1}: unknown key {unknown[0]!r} (expected: {', '.join(_HOST_KEYS)})")
        host = item.get("host")
        if not isinstance(host, str) or not host.strip() or "," in host:
            raise where.error(f"item {i + 1}: host must be one host name, address or socket directory")
        hosts.append(host.strip())
        ports.append(item.get("port", 5432))
        roles.append(item.get("role"))
        weights.append(item.get("weight", 1.0))
    default = "primary" if len(items) == 1 else "auto"
    out = {"host": replace(where, value=",".join(hosts)), "port": replace(where, value=ports),
           "weights": replace(where, value=weights)}
    if any(r is not None for r in roles):
        out["roles"] = replace(where, value=[default if r is None else r for r in roles])
    return out


def load_toml(path: str) -> Config:
    try:
        with open(path, "rb") as fh:
            text = fh.read().decode("utf-8-sig")
        doc = tomllib.loads(text)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}", file=path) from None
    except UnicodeDecodeError:
        raise ConfigError("not valid UTF-8", file=path) from None
    except tomllib.TOMLDecodeError as exc:
        found = re.search(r"line (\d+)", str(exc))
        raise ConfigError(f"TOML syntax error: {exc}", file=path,
                          line=int(found.group(1)) if found else None) from None
    lines = _Lines(text)
    for name in doc:
        if name not in TABLES:
            raise ConfigError(f"unknown table {name!r} (expected one of: {', '.join(TABLES)})",
                              file=path, line=lines.find((name,)), key=name)
    warnings: list[str] = []
    ignored: list[str] = []
    pgmux = _table(doc.get("pgmux", {}), "pgmux", path, lines.find(("pgmux",)))
    raw = {k: Raw(val, path, lines.find(("pgmux",), k), f"pgmux.{k}") for k, val in pgmux.items()}
    settings = build_settings(raw, ignored, warnings)
    databases = [
        build_database(name, _entries(name, value, "databases", path, lines), path,
                       lines.find(("databases", name)) or lines.find(("databases",), name), ignored)
        for name, value in _table(doc.get("databases", {}), "databases", path, None).items()
    ]
    users = [
        build_user(name, _entries(name, value, "users", path, lines), path,
                   lines.find(("users", name)) or lines.find(("users",), name), ignored)
        for name, value in _table(doc.get("users", {}), "users", path, None).items()
    ]
    userlist = _userlist(doc, path, lines)
    if userlist is not None and settings.auth_file:
        raise ConfigError("give either pgmux.auth_file or a [userlist] table, not both", file=path,
                          line=lines.find(("userlist",)), key="userlist")
    if userlist is None:
        userlist = read_auth_file(settings, warnings)
    return finish(settings, databases, users, userlist, path, warnings, ignored)


def _userlist(doc: Mapping[str, object], path: str, lines: _Lines) -> dict[str, str] | None:
    if "userlist" not in doc:
        return None
    table = _table(doc["userlist"], "userlist", path, lines.find(("userlist",)))
    result: dict[str, str] = {}
    for user, secret in table.items():
        if not isinstance(secret, str):
            raise ConfigError("expected the secret as a string", file=path,
                              line=lines.find(("userlist",), user), key=f"userlist.{user}")
        result[user] = secret
    return result
