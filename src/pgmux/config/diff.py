"""Compare two loaded configs and say what a reload must do.

PgBouncer applies most settings on RELOAD/SIGHUP and silently keeps the old value of its CF_NO_RELOAD keys
(listen_addr, listen_port, unix_socket_*, user, pidfile, pkt_buf, ...). pgmux does the same but says so:
those keys land in `needs_restart`, each with a note for the log, and the runtime keeps their old values.
For databases, PgBouncer closes server connections (when released) only if a connection parameter
changed; a new pool_size or pool_mode applies live. `databases_reconnect` lists the former.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from pgmux.config.model import Config, DatabaseConfig
from pgmux.config.settings import SETTINGS_INFO

# PgBouncer marks a database's servers stale when dbname, host, port, user, connect_query or auth_dbname
# change; pgmux adds the password and the startup parameters, which shape a new server connection too,
# and per-host ports. Roles, weights and routing settings change live: they steer new picks only.
_CONNECTION_FIELDS = ("host", "port", "ports", "dbname", "user", "password", "connect_query", "auth_dbname",
                      "application_name", "client_encoding", "datestyle", "timezone")


@dataclass(frozen=True)
class ReloadPlan:
    changed: tuple[str, ...] = ()  # every [pgbouncer] key whose value changed, in schema order
    live: tuple[str, ...] = ()  # the part of `changed` a reload applies
    needs_restart: tuple[str, ...] = ()  # the part of `changed` that keeps its old value until restart
    notes: tuple[str, ...] = ()  # one human-readable line per needs_restart key
    databases_added: tuple[str, ...] = ()
    databases_removed: tuple[str, ...] = ()
    databases_changed: tuple[str, ...] = ()
    databases_reconnect: tuple[str, ...] = ()  # changed in a way that makes existing servers stale
    users_added: tuple[str, ...] = ()
    users_removed: tuple[str, ...] = ()
    users_changed: tuple[str, ...] = ()
    userlist_changed: tuple[str, ...] = ()  # users whose secret was added, removed or changed

    @property
    def empty(self) -> bool:
        return not any(getattr(self, f.name) for f in fields(self))


def _keyed(old: dict[str, object], new: dict[str, object]) -> tuple[tuple[str, ...], ...]:
    added = tuple(k for k in new if k not in old)
    removed = tuple(k for k in old if k not in new)
    changed = tuple(k for k in new if k in old and old[k] != new[k])
    return added, removed, changed


def _reconnect(old: DatabaseConfig, new: DatabaseConfig) -> bool:
    return any(getattr(old, name) != getattr(new, name) for name in _CONNECTION_FIELDS)


def diff(old: Config, new: Config) -> ReloadPlan:
    changed = tuple(name for name in SETTINGS_INFO
                    if getattr(old.settings, name) != getattr(new.settings, name))
    restart = tuple(name for name in changed if not SETTINGS_INFO[name].reloadable)
    notes = tuple(f"{name} changed from {getattr(old.settings, name)!r} to {getattr(new.settings, name)!r};"
                  " it takes effect only after a restart" for name in restart)
    db_added, db_removed, db_changed = _keyed(dict(old.databases), dict(new.databases))
    u_added, u_removed, u_changed = _keyed(dict(old.users), dict(new.users))
    ul_added, ul_removed, ul_changed = _keyed(dict(old.userlist), dict(new.userlist))
    return ReloadPlan(
        changed=changed,
        live=tuple(name for name in changed if name not in restart),
        needs_restart=restart,
        notes=notes,
        databases_added=db_added,
        databases_removed=db_removed,
        databases_changed=db_changed,
        databases_reconnect=tuple(n for n in db_changed if _reconnect(old.databases[n], new.databases[n])),
        users_added=u_added,
        users_removed=u_removed,
        users_changed=u_changed,
        userlist_changed=ul_added + ul_removed + ul_changed,
    )
