"""auth_user / auth_query / auth_dbname: secrets looked up in PostgreSQL for users not in auth_file.

As PgBouncer does: a user that auth_file lacks, logging in to a database with an auth_user (its own
line's, else the global one), is looked up by running auth_query with $1 = the user name, on a
connection of pgmux's own logged in as auth_user (whose secret comes from auth_file) to auth_dbname
(the database line's, else the global one, else the database itself). The row's second column is the
secret: plain text, an md5 hash or a SCRAM verifier, checked like an auth_file entry. No row, or a
NULL secret (the default query returns NULL when VALID UNTIL has passed), fails the login with 28P01
after the same exchange an unknown user gets, so the reply does not tell the two apart.

One connection per (host, port, auth_dbname, auth_user), kept open and used by one lookup at a time;
it is opened again after a failure. Secrets are not cached between logins: a password changed in
PostgreSQL takes effect at the next login. A user that logs in keeps its secret for the server logins
of its pool (`App.auth_secrets`), as PgBouncer keeps it on its user.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from pgmux.net.probe import CheckFailed, Probe

log = logging.getLogger("pgmux")


class AuthQuery:
    def __init__(self, app: Any) -> None:
        self.app = app
        self._conns: dict[tuple[Any, ...], Probe] = {}
        self._locks: dict[tuple[Any, ...], asyncio.Lock] = {}

    async def lookup(self, db: Any, user: str) -> str | None:
        """The secret auth_query returns for `user`, or None (no such user, expired, or the lookup failed:
        pgmux's log says which)."""
        s = self.app.config.settings
        auth_user = db.auth_user or s.auth_user
        dbname = db.auth_dbname or s.auth_dbname or db.target_dbname
        sql = db.auth_query or s.auth_query
        target = self.app.server_target(db, auth_user)  # where the database's servers are
        key = (target.host, target.port, target.unix_path, dbname, auth_user)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            try:
                conn = self._conns.get(key)
                if conn is None:
                    host = target.host if target.unix_path is None else target.unix_path.rsplit("/", 1)[0]
                    conn = await asyncio.wait_for(Probe.open(
                        host, target.port, auth_user, self.app.config.userlist.get(auth_user), dbname, "/tmp",
                        self.app.tls, application_name="pgmux auth_query"), s.server_connect_timeout or None)
                    self._conns[key] = conn
                rows = await asyncio.wait_for(conn.query_params(sql, [user]), s.server_connect_timeout or None)
            except (TimeoutError, OSError, CheckFailed, asyncio.IncompleteReadError) as e:
                self._drop(key)
                log.warning("auth_query as %s on %s failed: %s", auth_user, dbname, e or type(e).__name__)
                return None
        if not rows or len(rows[0]) < 2:
            return None
        return rows[0][1]

    def _drop(self, key: tuple[Any, ...]) -> None:
        conn = self._conns.pop(key, None)
        if conn is not None:
            conn.close()

    def close(self) -> None:
        for key in list(self._conns):
            self._drop(key)
