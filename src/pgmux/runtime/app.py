"""The running pooler: the hub every session reports to, and the owner of pools and listeners.

Sessions (sans-IO) call the hub for every decision that involves more than one connection; the hub
asks the pool core (pure, given `now`) and acts: links, releases, opens and closes connections.
Timeouts are checked by a janitor tick, as PgBouncer does, instead of a timer per connection.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Final

from pgmux.config import diff, load_config
from pgmux.config.model import Config
from pgmux.errors import PgmuxError
from pgmux.net import sdnotify
from pgmux.net.listen import is_unix_listener, serve_sockets, start_listeners, unix_socket_path
from pgmux.net.tls import Contexts, TlsConfigError
from pgmux.runtime.admission import Admission
from pgmux.runtime.auth_query import AuthQuery
from pgmux.runtime.core import HotSettings
from pgmux.runtime.logins import Logins
from pgmux.runtime.replication import Replication
from pgmux.runtime.routing import Routing, is_split
from pgmux.runtime.timeouts import check_timeouts

log = logging.getLogger("pgmux")

TICK: Final = 0.2


class App(Logins):
    def __init__(self, config: Config, config_path: str) -> None:
        super().__init__(config, config_path)
        self.routing = Routing(self)
        self.admission = Admission(self)
        self.replication = Replication(self)
        self.auth_query = AuthQuery(self)
        self.apply_limits()

    async def start(self, inherited: list[socket.socket] | None = None) -> None:
        """Listen (or accept on `inherited` listening sockets: those `pgmux -R` took over) and run."""
        from pgmux.runtime.admin_service import AdminService
        from pgmux.runtime.periodic import hooks
        from pgmux.runtime.suspend import Suspension

        self.admin = AdminService(self)
        self.suspension = Suspension(self)
        self.tick_hooks.extend(hooks(self))  # stats_period/log_stats
        s = self.config.settings
        self.stopped = asyncio.get_running_loop().create_future()
        if inherited is not None:
            self.listeners = await serve_sockets(self, inherited, s.listen_backlog)
        else:
            self.listeners = await start_listeners(self, s.listen_addr, s.listen_port, s.unix_socket_dir,
                                                   getattr(s, "unix_socket_mode", 0o777))
        self._janitor = asyncio.get_running_loop().create_task(self._janitor_loop())
        for db in self.config.databases.values():
            if db.user and db.name != "*" and is_split(db):  # checks as the forced user, from the start
                self.routing.split_for(db, db.user, db.password if db.password is not None
                                       else self.config.userlist.get(db.user))
        for w in self.config.warnings:
            log.warning("%s", w)
        log.info("listening on %s port %d%s", ",".join(s.listen_addr) or "(no tcp)", s.listen_port,
                 f" and unix socket in {s.unix_socket_dir}" if s.unix_socket_dir else "")

    async def wait_stopped(self) -> None:
        assert self.stopped is not None
        await self.stopped

    def shutdown(self, mode: str = "servers") -> None:
        """PgBouncer 1.25's three shutdowns. "servers" (SIGINT, SHUTDOWN WAIT_FOR_SERVERS): stop accepting,
        start no new transaction (a client that asks for a server, or waits for one, is disconnected),
        close each server as its transaction ends, exit when none is left. "clients" (SIGTERM, SHUTDOWN
        WAIT_FOR_CLIENTS): stop accepting, serve the connected clients as usual, exit when the last one
        has left. "immediate" (SIGQUIT, SHUTDOWN): exit now. The Unix socket stays open for the admin
        console until the exit; other logins are refused."""
        if not self.shutting_down:
            sdnotify.notify("STOPPING=1")
        if self.suspended:  # the suspended connections are read again, to finish or to be told
            self.spawn(self.suspension.resume)
        if mode == "immediate":
            log.info("shutting down immediately")
            self.shutting_down, self.shutdown_mode, self.shedding = True, mode, True
            self._finish_shutdown()
            return
        if self.shutdown_mode in (mode, "servers", "immediate"):
            return  # already on the way out, as fast or faster
        self.shutting_down, self.shutdown_mode = True, mode
        log.info("shutting down: %s", "waiting for server connections to be released" if mode == "servers"
                 else "waiting for all clients to disconnect")
        for srv in self.listeners:
            if not is_unix_listener(srv):
                srv.close()
        if mode == "servers":
            self.shedding = True
            err = PgmuxError("pgmux is shutting down", sqlstate="57P01", severity="FATAL")
            for pool in self.registry:
                for c in list(pool.waiters) + list(pool.login_waiters):
                    c.fail(err)
                for server in pool.take_all_idle():
                    self.close_server(server, "pgmux shutdown")
        self.after_change()

    def _finish_shutdown(self) -> None:
        if self.finished:
            return
        self.finished = True
        for listener in self.listeners:
            listener.close()
        if self.suspension is not None:
            self.suspension.close()
        for c in list(self.clients.values()):
            c.fail(PgmuxError("pgmux is shutting down", sqlstate="57P01", severity="FATAL"))
        for srv in list(self.servers.values()):
            self.close_server(srv, "pgmux shutdown")
        self.routing.stop()
        self.auth_query.close()
        if self._janitor is not None:
            self._janitor.cancel()
        unix_dir = self.config.settings.unix_socket_dir
        if unix_dir and self.share is None and not self.listeners_given:  # workers: the supervisor removes it
            try:
                os.unlink(unix_socket_path(unix_dir, self.config.settings.listen_port))
            except OSError:
                pass
        if self.stopped is not None and not self.stopped.done():
            self.stopped.set_result(None)

    def after_change(self) -> None:
        if self.waiting_admin:
            self.admin.check_waiting()
        if self.shutting_down and not self.finished and (not self.servers if self.shedding else not self.clients):
            log.info("%s, exiting", "server connections dropped" if self.shedding else "client connections dropped")
            self._finish_shutdown()

    def reload(self, new: Config | None = None) -> list[str]:
        """HUP or RELOAD: apply what can change live, keep restart-only settings as they are (and say
        so), and let servers made from a changed database line be replaced as they come back. `new`:
        a config to apply instead of re-reading the file (the console's SET)."""
        import dataclasses

        if new is None:
            new = load_config(self.config_path)
        plan = diff(self.config, new)
        try:  # new certificates and keys for new connections; connected clients keep their sessions
            self.tls = Contexts(new.settings)
        except TlsConfigError as e:
            log.error("TLS configuration not reloaded, keeping the previous one: %s", e)
        if plan.needs_restart:
            kept = {k: getattr(self.config.settings, k) for k in plan.needs_restart}
            new = dataclasses.replace(new, settings=dataclasses.replace(new.settings, **kept))
        self.config = new
        self.reset_always = new.settings.server_reset_query_always
        self.hot = HotSettings(new)
        stale = set(plan.databases_reconnect) | set(plan.databases_removed)
        for name in sorted(stale & set(self.routing.splits)):
            log.warning("database %s: changes to a read/write-split database (hosts, roles, routing keys) "
                        "apply at the next restart", name)
        for pool in self.registry:
            if pool.database in stale or (new.database(pool.database) is None):
                for srv in list(pool.servers):
                    srv.close_needed = True
                for srv in pool.take_all_idle():
                    self.close_server(srv, "database configuration changed")
        self.apply_limits()
        for pool in self.registry:
            self.launch(pool)
        for note in plan.notes:
            log.warning("%s", note)
        for w in new.warnings:  # what the new file sets that pgmux ignores, as at start-up
            log.warning("%s", w)
        for hook in self.reload_hooks:
            hook()
        log.info("configuration reloaded from %s", self.config_path)
        return list(plan.notes)

    async def _janitor_loop(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            try:
                self.tick(self.now())
            except Exception as e:  # noqa: BLE001 - the janitor must outlive any one bad pass
                log.error("janitor pass failed", exc_info=e)

    def tick(self, now: float) -> None:
        if not self.suspended:  # SUSPEND: no timeout runs, as PgBouncer skips its maintenance
            check_timeouts(self, now)
        self.last_tick = now
        self.admission.free_idle_pools(now)
        if self.replication.waiting or self.replication.servers:
            self.replication.tick(now)
        if self.routing.splits:
            self.routing.tick(now)
        if self.shutting_down:
            self.after_change()
        for hook in self.tick_hooks:
            hook()
