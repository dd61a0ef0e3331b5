"""The pools with a min_pool_size, known to every worker (issue 14 item 2), so that the minimum survives
the death of the only worker that had the pool.

A pool comes into being in the worker where its first client logs in (as in one process), and that
worker keeps the pooler's minimum (runtime/minshare.py). When it dies, the supervisor zeroes its counts,
and the minimum must come back: from another worker that has the pool, or else from one that adopts it.
So a worker that has a pool with min_pool_size > 0 writes its name once to `<rundir>/minpools/<digest>`
(JSON: database, user; a temporary file renamed, never changed afterwards), and every worker reads that
directory once a second (`EVERY` ticks; only new files are read; a worker whose registry grew looks at
the next tick). A worker without such a pool makes it (as a login would: `App.pool_setup`) when the
pooler-wide count of the pool's servers (the shared counts, runtime/workershare.py) is below the
minimum; its janitor then tops it up like any pool, under the shared lock (so several workers adopting
at once still open the minimum once). An adopted pool with
nothing to do is an empty pool of that worker, as after its last client left.

Not adopted: a pool whose server login needs the keys of a client's own SCRAM login (its secret is a
SCRAM verifier, or none is known in this worker while auth_query would find one): the minimum comes back
at the next login of a client of that pool, as the pool would in a new process; and the per-host pools
of split databases (routing makes them at a login).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Any, Final

from pgmux.protocol.auth import secret_kind
from pgmux.runtime import workershare as ws
from pgmux.runtime.routing import is_split

log = logging.getLogger("pgmux")

EVERY: Final = 5  # janitor ticks (0.2 s) between two looks at the directory
DIRNAME: Final = "minpools"


def record_name(database: str, user: str) -> str:
    return hashlib.blake2b(f"{database}\0{user}".encode("utf-8", "surrogateescape"), digest_size=12).hexdigest()


class MinPools:
    """Called every janitor tick of a worker (minshare.MinimumRegistry.tick_minimum)."""

    def __init__(self, share: Any, minimum: Any) -> None:  # worker.WorkerShare, minshare.Minimum (no cycle)
        self.share = share
        self.minimum = minimum
        self.dir = os.path.join(share.rundir, DIRNAME)
        self.written: set[str] = set()  # records this process knows to be there
        self.known: dict[str, tuple[str, str]] = {}  # record -> (database, user), read from the directory
        self.ticks = 0
        self.pools = 0  # the registry's size at the last look

    def __call__(self) -> None:
        self.ticks += 1
        app = self.share.app
        if app is None or app.shutting_down or self.share.retiring:
            return
        pools = len(app.registry)
        new = pools != self.pools  # a pool made (by a login, most likely): its record at once
        if not new and self.ticks % EVERY:
            return
        self.pools = pools
        try:
            self._write(app)
            self._read()
        except OSError as e:
            log.warning("min_pool_size: %s: %s", self.dir, e)
            return
        self._adopt(app)

    def _write(self, app: Any) -> None:
        minimum = self.minimum
        for pool in app.registry:
            if pool.host is not None or minimum.configured_for(pool) <= 0:
                continue
            name = record_name(pool.database, pool.user)
            if name in self.written or name in self.known:
                continue
            os.makedirs(self.dir, 0o700, exist_ok=True)
            tmp = os.path.join(self.dir, f".{name}.{os.getpid()}")
            with open(tmp, "w") as f:
                json.dump({"database": pool.database, "user": pool.user}, f)
            os.replace(tmp, os.path.join(self.dir, name))
            self.written.add(name)

    def _read(self) -> None:
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return
        for name in names:
            if name.startswith(".") or name in self.known:
                continue
            try:
                with open(os.path.join(self.dir, name)) as f:
                    rec = json.load(f)
                self.known[name] = (str(rec["database"]), str(rec["user"]))
            except (OSError, ValueError, KeyError, TypeError) as e:
                log.warning("min_pool_size: unreadable record %s: %s", name, e)
                self.known[name] = ("", "")  # not read again

    def _adopt(self, app: Any) -> None:
        cfg = app.config
        c = self.share.counts
        for database, user in self.known.values():
            if not database or app.registry.get(database, user) is not None:
                continue
            db = cfg.database(database)
            if db is None or is_split(db) or (db.user or user) != user:
                continue
            minimum = cfg.min_pool_size_for(db)
            if minimum <= 0 or not self._can_log_in(app, db, user):
                continue
            try:
                total = c.total(c.slot(ws.pool_key(database, user)))
            except ws.TableFull:
                continue
            if total >= minimum:
                continue
            app.registry.get_or_create(database, user, lambda db=db, user=user: app.pool_setup(db, user))
            log.info("worker %d adopts the pool %s/%s: the pooler holds %d of its min_pool_size (%d)",
                     self.share.slot, database, user, total, minimum)

    @staticmethod
    def _can_log_in(app: Any, db: Any, user: str) -> bool:
        """Can this worker log in to the pool's servers as the worker that made it did, without a client's
        SCRAM keys? (The secret it would use: not a SCRAM verifier; none at all only where no auth_query
        would have found one at a client's login.)"""
        if user in app.scram_keys:
            return True
        cfg = app.config
        secret = db.password if db.user else None
        if secret is None:
            secret = cfg.userlist.get(user) or app.auth_secrets.get(user)
        if secret is None:
            return user in cfg.userlist or not (db.auth_user or cfg.settings.auth_user)
        return secret_kind(secret) != "scram"
