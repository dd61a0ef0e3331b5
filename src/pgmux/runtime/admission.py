"""Who may hold what: client limits per database and per user, the console beyond max_client_conn, and
freeing the pools nobody uses.

Nothing here, or anywhere, is created for a client that has not authenticated: the counts below take
a client once its login succeeded (App.client_authenticated), and pools are made only then. A
stranger trying 20,000 user names leaves nothing behind.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Final

from pgmux.errors import PgmuxError
from pgmux.session.hub import mypyc_attr

if TYPE_CHECKING:
    from pgmux.config.model import DatabaseConfig
    from pgmux.pooling.pool import Pool
    from pgmux.runtime.core import Core
    from pgmux.session.client import ClientSession

# Console connections allowed beyond max_client_conn for the users named in admin_users/stats_users
# (PgBouncer lets every console login past the limit; a bound keeps strangers who guess an admin's
# name from opening unlimited connections). pgmux's own OS user over the Unix socket always gets in.
CONSOLE_RESERVE: Final = 10
SWEEP_EVERY: Final = 1.0  # seconds between passes looking for pools to free


# Compiled (setup.py): admit() and release() run once per login and logout. SharedAdmission (runtime/
# worker.py) extends it in Python.
@mypyc_attr(allow_interpreted_subclasses=True)
class Admission:
    def __init__(self, app: Core) -> None:
        self.app = app
        self.per_db: dict[str, int] = {}  # authenticated clients per database (SHOW DATABASES' count)
        self.per_user: dict[str, int] = {}  # ... per user
        # client -> (database, user) it is counted under. Keyed by the session, not its id: a compiled
        # ClientSession keeps its id unboxed, so an int key would be a new object per client (issue 11).
        self.held: dict[ClientSession, tuple[str, str]] = {}
        self._pairs: dict[tuple[str, str], tuple[str, str]] = {}  # one such tuple for all their clients
        self.next_sweep = 0.0

    # -- client limits -----------------------------------------------------------------------------
    def admit(self, c: ClientSession, db: DatabaseConfig) -> None:
        """Count an authenticated client, or refuse it past max_db_client_connections /
        max_user_client_connections (PgBouncer's messages; SQLSTATE 53300, PostgreSQL's own for
        "too many connections for database/role")."""
        s = self.app.hot  # (native fields: runtime/core.py)
        user = db.user if s.auth_type == "any" and db.user else c.user
        dbname = c.database
        # Config.max_db_client_connections_for() and max_user_client_connections_for(), read here without
        # their Python calls: a local value above 0 wins, else the global one (0: no limit).
        limit: int = db.max_db_client_connections or 0
        if limit <= 0:
            limit = s.max_db_client_connections
        if limit > 0 and self.per_db.get(dbname, 0) >= limit:
            raise PgmuxError("client connections exceeded (max_db_client_connections)", sqlstate="53300",
                             severity="FATAL", detail=f'database "{dbname}" allows {limit} client connections')
        entry = s.users.get(user)
        limit = (entry.max_user_client_connections or 0) if entry is not None else 0
        if limit <= 0:
            limit = s.max_user_client_connections
        if limit > 0 and self.per_user.get(user, 0) >= limit:
            raise PgmuxError("client connections exceeded (max_user_client_connections)", sqlstate="53300",
                             severity="FATAL", detail=f'user "{user}" allows {limit} client connections')
        self.per_db[dbname] = self.per_db.get(dbname, 0) + 1
        self.per_user[user] = self.per_user.get(user, 0) + 1
        pair = (dbname, user)
        if len(self._pairs) >= 4096:  # a bound, against ever new names
            self._pairs.clear()
        self.held[c] = self._pairs.setdefault(pair, pair)  # (issue 11: 56 bytes per idle client)

    def release(self, c: ClientSession) -> None:
        held = self.held.get(c)  # (get and del: dict.pop is a Python method call from compiled code)
        if held is None:
            return
        del self.held[c]
        _uncount(self.per_db, held[0])
        _uncount(self.per_user, held[1])

    def console_may_exceed(self, c: ClientSession, user: str) -> bool:
        """May this console login go past max_client_conn? pgmux's own OS user over the Unix socket
        always; admin_users and stats_users (anyone under auth_type=any, as PgBouncer has it) while
        fewer than CONSOLE_RESERVE console connections are open."""
        if c.is_unix and c.peer_uid is not None and c.peer_uid == os.getuid():
            return True
        s = self.app.config.settings
        if user not in s.admin_users and user not in s.stats_users and s.auth_type != "any":
            return False
        return sum(1 for other in self.app.clients.values() if other.is_admin) < CONSOLE_RESERVE

    # -- freeing pools -----------------------------------------------------------------------------
    def free_idle_pools(self, now: float) -> int:
        """Free the pools that have had no client, no server and no waiter for pool_idle_timeout, or,
        for databases made from the "*" fallback, autodb_idle_timeout (PgBouncer frees the whole
        auto-database; here each of its pools goes), and at once those of a database a reload removed.
        A paused or disabled pool stays: it holds an admin's decision. Per-host pools of split
        databases stay (routing keeps them). Runs every SWEEP_EVERY seconds, in time proportional to
        the pools and clients there are; returns how many pools went."""
        if now < self.next_sweep:
            return 0
        self.next_sweep = now + SWEEP_EVERY
        app = self.app
        cfg = app.config
        s = cfg.settings
        registry = app.registry
        used = {id(c.pool) for c in app.clients.values() if c.pool is not None}
        since = registry.empty_since
        gone: list[Pool[Any, Any]] = []
        fallback = "*" in cfg.databases
        for key, pool in list(registry.pools.items()):
            if (id(pool) in used or pool.servers or pool.waiters or pool.login_waiters or pool.connecting
                    or pool.paused or pool.host is not None):
                since.pop(key, None)
                continue
            auto = pool.database not in cfg.databases
            if auto and not fallback:  # a reload removed its database: nothing to keep
                gone.append(pool)
                continue
            if pool.disabled:
                continue
            timeout = _idle_timeout(s.pool_idle_timeout, s.autodb_idle_timeout if auto else 0.0)
            if timeout <= 0:
                continue
            if now - since.setdefault(key, now) >= timeout:
                gone.append(pool)
        if gone:
            registry.remove(gone)
            users = {p.user for p in registry.pools.values()}
            for pool in gone:
                app.host_turn.pop((pool.database, pool.user), None)
                if pool.user not in users:
                    app.scram_keys.pop(pool.user, None)
        return len(gone)


def _uncount(counts: dict[str, int], key: str) -> None:
    n = counts.get(key, 0) - 1
    if n > 0:
        counts[key] = n
    else:
        counts.pop(key, None)


def _idle_timeout(pool_idle: float, autodb_idle: float) -> float:
    """The smaller of the timeouts that are set (0 = not set)."""
    both = [t for t in (pool_idle, autodb_idle) if t > 0]
    return min(both) if both else 0.0
