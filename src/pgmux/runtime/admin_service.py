"""The admin console wired to the live pooler: commands come parsed from pgmux.admin, rows are
built here from the running objects and rendered by pgmux.admin.render."""

from __future__ import annotations

import logging
import time
from array import array
from collections.abc import Sequence
from typing import Any

from pgmux import VERSION_STRING
from pgmux.admin import derive, render
from pgmux.admin import errors as admin_errors
from pgmux.admin import rows as R
from pgmux.admin.commands import AdminCommand, admin_command
from pgmux.errors import PgmuxError
from pgmux.net.tls import describe
from pgmux.pooling.pool import PoolStats
from pgmux.pooling.ring import keep
from pgmux.protocol import messages as m
from pgmux.protocol.scans import ANY_LENGTH, message_end
from pgmux.runtime.admin_ext import ExtState, binary_rows, parse_or_bind
from pgmux.runtime.admin_show import ShowRows, run_set, sockname
from pgmux.session.states import ClientState, ServerState

log = logging.getLogger("pgmux")

_STAT_FIELDS = ("server_assignment_count", "xact_count", "query_count", "bytes_received", "bytes_sent",
                "xact_time", "query_time", "wait_time", "client_parse_count", "server_parse_count", "bind_count",
                "pin_count", "client_login_count")
_Q = ord("Q")


def _ptr(obj: Any) -> str:
    return f"0x{id(obj):x}"


class AdminService(ShowRows):
    def __init__(self, app: Any) -> None:
        self.app = app
        self.stats = PoolStats()  # the admin database's own row in SHOW STATS ("pgbouncer")
        self.prev: dict[str, array[int]] = {}
        self.avgs: dict[str, array[int]] = {}
        self.sampled_at = time.monotonic()  # sample() is called every stats_period (runtime/stats_log.py)

    # -- wire ------------------------------------------------------------------------------------
    def message(self, c: Any, mtype: int, body: bytes) -> None:
        st = self.stats
        st.bytes_received += 5 + len(body)
        if mtype == _Q:
            st.query_count += 1
            st.xact_count += 1
            sql = body.rstrip(b"\x00").decode(errors="replace")
            out = self.run(c, sql)
            if out is not None:
                st.bytes_sent += len(out) + 6
                c.transport.write(out + m.ready_for_query(b"I"))
            return
        self._extended(c, chr(mtype), body)

    def _extended(self, c: Any, ch: str, body: bytes) -> None:
        """Enough of the extended protocol for drivers that always use it (asyncpg, psycopg's
        server-side binding): Parse, Bind, Describe, Execute, Close, Flush, Sync. A statement is the
        console command text; Describe answers with the command's RowDescription (SHOW) or NoData,
        Execute with its rows. After an error, everything up to Sync is skipped, as PostgreSQL does."""
        st = c.admin_ext  # the batch's state, until its Sync, kept on the client (gone with it)
        if st is None:
            st = c.admin_ext = ExtState()
        if ch == "S":
            if st.deferred:  # ReadyForQuery once the command's answer is out (answer_later)
                st.synced = True
                return
            c.admin_ext = None
            c.transport.write(m.ready_for_query(b"I"))
            return
        if st.failed or ch == "H":
            return
        if ch == "P" or ch == "B":
            out = parse_or_bind(c, st, ch, body)
        elif ch == "C":
            out = m.message(m.CLOSE_COMPLETE)
        elif ch == "D":
            head = self._row_description(c, st.sql)
            params = m.message(m.PARAMETER_DESCRIPTION, b"\x00\x00") if body[:1] == b"S" else b""
            out = params + (head if head is not None else m.message(m.NO_DATA))
        elif ch == "E":
            answer = self.run(c, st.sql)
            st.deferred = answer is None  # answered later: PAUSE, WAIT_CLOSE, SUSPEND
            out = answer or b""
            if out[:1] == b"T":  # the RowDescription belongs to Describe, not Execute
                end = message_end(out, 0, ANY_LENGTH)
                if any(st.formats):
                    out = binary_rows(out[:end], out[end:], st.formats)
                else:
                    out = out[end:]
        else:
            out = render.render_error(PgmuxError(f"unsupported message {ch!r} on the admin console",
                                                 sqlstate="08P01"))
        if out[:1] == b"E":
            st.failed = True
        c.transport.write(out)

    def _row_description(self, c: Any, sql: str) -> bytes | None:
        """The RowDescription a SHOW would send, without side effects; None for other commands."""
        try:
            cmd = admin_command(sql, is_admin=c.admin_level == "admin")
        except PgmuxError:
            return None
        if cmd.verb != "SHOW":
            return None
        out = self.execute(c, cmd) or b""
        return out[:message_end(out, 0, ANY_LENGTH)] if out[:1] == b"T" else None

    def run(self, c: Any, sql: str) -> bytes | None:
        try:
            cmd = admin_command(sql, is_admin=c.admin_level == "admin")
            return self.execute(c, cmd)
        except PgmuxError as e:
            return render.render_error(e)

    # -- commands --------------------------------------------------------------------------------
    def execute(self, c: Any, cmd: AdminCommand) -> bytes | None:
        app = self.app
        v = cmd.verb
        log.info("%s admin command: %s", c.prefix, cmd.query or v)
        if v == "SHOW":
            return self.show(cmd)
        if v == "SET":
            return run_set(self.app, cmd)
        if v == "RELOAD":
            try:
                app.reload()
            except Exception as e:  # noqa: BLE001 - keep the old config, tell the operator why
                return render.render_error(PgmuxError(f"RELOAD failed: {e}", sqlstate="F0000"))
            return render.render_ok("RELOAD")
        if v == "SHUTDOWN":
            if cmd.arg is None:
                app.shutdown("immediate")
                return None  # PgBouncer sends no reply: the connection closes as the process exits
            app.shutdown("servers" if cmd.arg == "WAIT_FOR_SERVERS" else "clients")
            return render.render_ok("SHUTDOWN")
        if v == "PAUSE":
            if app.suspended:
                return render.render_error(admin_errors.already_paused())
            self._pause(cmd.arg, True)
            return self._wait_or_ok(c, cmd, "PAUSE")
        if v == "RESUME":
            if app.suspended:
                if cmd.arg is not None:  # PgBouncer resumes a suspension as a whole only
                    return render.render_error(PgmuxError("cannot resume one database while the pooler is "
                                                          "suspended: RESUME without a database", sqlstate="08P01"))
                app.spawn(app.suspension.resume)
                return render.render_ok("RESUME")
            self._pause(cmd.arg, False)
            return render.render_ok("RESUME")
        if v in ("DISABLE", "ENABLE"):
            for p in self._pools(cmd.arg):
                p.disabled = v == "DISABLE"
            return render.render_ok(v)
        if v == "KILL":
            for p in self._pools(cmd.arg):
                p.paused = True
                for cl in [cl for cl in list(app.clients.values()) if cl.pool is p]:
                    cl.fail(PgmuxError("database removed or killed by admin", sqlstate="08P01", severity="FATAL"))
                for s in list(p.servers):
                    app.close_server(s, "database killed by admin")
            return render.render_ok("KILL")
        if v == "KILL_CLIENT":
            target = app.clients.get(cmd.client_id)
            if target is None:
                return render.render_error(PgmuxError("client not found", sqlstate="08P01"))
            target.fail(PgmuxError("client killed by admin", sqlstate="08P01", severity="FATAL"))
            return render.render_ok("KILL_CLIENT")
        if v == "RECONNECT":
            for p in self._pools(cmd.arg):
                for s in list(p.servers):
                    s.close_needed = True
                for s in p.take_all_idle():
                    app.close_server(s, "reconnect requested by admin")
            return render.render_ok("RECONNECT")
        if v == "WAIT_CLOSE":
            return self._wait_or_ok(c, cmd, "WAIT_CLOSE")
        if v in ("BAN", "UNBAN"):
            assert cmd.arg is not None and cmd.value is not None
            host, port = cmd.value.rsplit(":", 1)
            err = app.routing.ban(cmd.arg, host, int(port), v == "BAN")
            if err is not None:
                return render.render_error(PgmuxError(err, sqlstate="08P01"))
            return render.render_ok(v)
        if v == "SUSPEND":
            return app.suspension.suspend(c)  # answered once the socket buffers are written out
        if v in ("TAKEOVER", "RESTART"):  # `pgmux -R`'s, and the rolling restart's (with workers only)
            from pgmux.runtime.reboot import console

            return console(app, c, v)
        return render.render_error(PgmuxError(f"unknown command: {cmd.query}", sqlstate="08P01"))

    def _pools(self, db: str | None) -> list[Any]:
        if db is None:
            return list(self.app.registry)
        pools = self.app.registry.for_database(db)
        if not pools and self.app.config.database(db) is None:
            raise PgmuxError(f"no such database: {db}", sqlstate="08P01")
        return pools

    def _pause(self, db: str | None, on: bool) -> None:
        app = self.app
        if db is None:
            app.paused = on
        for p in self._pools(db):
            p.paused = on
            if on:
                for s in p.take_all_idle():  # PAUSE disconnects servers as they become idle
                    app.close_server(s, "pause requested")
            else:
                app.launch(p)  # queued clients get servers in arrival order as they connect

    def pause_all(self) -> None:
        self._pause(None, True)

    def resume_all(self) -> None:
        """SIGUSR2: RESUME, of a suspension too."""
        if self.app.suspended:
            self.app.spawn(self.app.suspension.resume)
            return
        self._pause(None, False)

    def _done(self, cmd: AdminCommand) -> bool:
        pools = self._pools(cmd.arg)
        if cmd.verb == "PAUSE":
            return all(not any(s.state is not ServerState.IDLE for s in p.servers) and not p.idle for p in pools)
        return all(not any(s.close_needed for s in p.servers) for p in pools)

    def _wait_or_ok(self, c: Any, cmd: AdminCommand, tag: str) -> bytes | None:
        if self._done(cmd):
            return render.render_ok(tag)
        self.app.waiting_admin.append((c, tag, cmd))
        return None  # answered by check_waiting when the servers are gone

    def answer_later(self, c: Any, out: bytes) -> None:
        """The answer of a command that waited (PAUSE, WAIT_CLOSE, SUSPEND), then ReadyForQuery: at once
        after a simple Query; after the extended protocol's Execute, when its Sync has come."""
        st = c.admin_ext
        if st is not None and st.deferred:
            st.deferred = False
            if st.synced:
                c.admin_ext = None
                out += m.ready_for_query(b"I")
            c.transport.write(out)
            return
        c.transport.write(out + m.ready_for_query(b"I"))

    def check_waiting(self) -> None:
        still = []
        for c, tag, cmd in self.app.waiting_admin:
            if c.state is ClientState.CLOSED:
                continue
            if self._done(cmd):
                self.answer_later(c, render.render_ok(tag))
            else:
                still.append((c, tag, cmd))
        self.app.waiting_admin = still

    # -- SHOW ------------------------------------------------------------------------------------
    def show(self, cmd: AdminCommand) -> bytes:
        what = cmd.arg or ""
        if what == "help":
            return render.render_help()
        if what == "version":
            return render.render_version(VERSION_STRING)
        if cmd.fake_param is not None:
            return render.render_fake_show(cmd.fake_param)
        name = _show_names(type(self)).get(what)  # the class's own name string: see _show_names
        build = getattr(self, name, None) if name is not None else None
        if build is None:
            return render.render_error(PgmuxError(f"SHOW {what} is not supported by pgmux yet", sqlstate="0A000"))
        rows, row_type = build()
        return render.render_rows(rows, row_type)

    def _show_pools(self) -> tuple[list[Any], type]:
        now = time.monotonic()
        out = []
        for p in self.app.registry:
            cl = [c for c in self.app.clients.values() if c.pool is p]
            states = [s.state for s in p.servers]
            states += [s.state for s in self.app.replication.servers.values() if s.pool is p]
            wait = p.max_wait(now)
            out.append(R.PoolRow(
                database=p.database, user=p.user,
                cl_active=sum(1 for c in cl if c.state in (ClientState.IDLE, ClientState.ACTIVE)
                              or c.state is ClientState.REPLICATION and c.repl is not None),
                cl_waiting=sum(1 for c in cl if c.state in (ClientState.WAITING, ClientState.LOGIN_WAIT)
                               or c.state is ClientState.REPLICATION and c.repl is None),
                cl_active_cancel_req=0, cl_waiting_cancel_req=0,
                sv_active=states.count(ServerState.ACTIVE), sv_active_cancel=0, sv_being_canceled=0,
                sv_idle=states.count(ServerState.IDLE), sv_used=0, sv_tested=states.count(ServerState.TESTED),
                sv_login=states.count(ServerState.LOGIN), maxwait=int(wait), maxwait_us=int((wait % 1) * 1e6),
                pool_mode=p.mode, load_balance_hosts=None, **_host_role(self.app, p), pool_size=p.limits.pool_size))
        # PgBouncer lists its console as a pool of its own; exporters expect the row.
        admins = [c for c in self.app.clients.values() if c.is_admin and c.state is not ClientState.CLOSED]
        out.append(R.PoolRow(
            database="pgbouncer", user="pgbouncer", cl_active=len(admins), cl_waiting=0, cl_active_cancel_req=0,
            cl_waiting_cancel_req=0, sv_active=0, sv_active_cancel=0, sv_being_canceled=0, sv_idle=0, sv_used=0,
            sv_tested=0, sv_login=0, maxwait=0, maxwait_us=0, pool_mode="statement", load_balance_hosts=None))
        return out, R.PoolRow

    def _conn_row(self, row_type: type, kind: str, obj: Any, now_wall: float, now: float) -> Any:
        local = sockname(obj.transport)
        if kind == "C":
            link = obj.server if obj.repl is None else obj.repl
            state = obj.state.show if obj.state is not ClientState.IDLE else "idle"
            waiting = obj.state is ClientState.WAITING or obj.state is ClientState.REPLICATION and obj.repl is None
            if waiting:  # (a replication client waiting for room under the limits, too)
                state = "waiting"
            wait = now - obj.wait_since if waiting else 0.0
            return row_type(type="C", user=obj.user, database=obj.database, replication=obj.replication or "none",
                            state=state, addr=obj.addr, port=obj.port, local_addr=local[0],
                            local_port=local[1] if local[0] != "unix" else self.app.config.settings.listen_port,
                            connect_time=now_wall - (now - obj.connect_time),
                            request_time=now_wall - (now - obj.request_time), wait=int(wait),
                            wait_us=int((wait % 1) * 1e6), close_needed=0, ptr=_ptr(obj),
                            link=_ptr(link) if link is not None else "", remote_pid=obj.cancel_pid,
                            tls=describe(obj.transport),
                            application_name=obj.params.get("application_name", ""),
                            prepared_statements=obj.stmts.prepared_statements if obj.stmts else 0, id=obj.id,
                            pin=obj.pinned)
        link = obj.client
        t = obj.target
        return row_type(type="S", user=obj.pool.user, database=obj.pool.database,
                        replication=getattr(obj, "mode", "none"),
                        state=obj.state.show, addr=t.host or "unix", port=t.port, local_addr=local[0],
                        local_port=obj.local_port, connect_time=now_wall - (now - obj.created_at),
                        request_time=now_wall - (now - (obj.link_time or obj.created_at)), wait=0, wait_us=0,
                        close_needed=int(obj.close_needed), ptr=_ptr(obj),
                        link=_ptr(link) if link is not None else "", remote_pid=obj.backend_pid,
                            tls=describe(obj.transport),
                        application_name=link.params.get("application_name", "") if link is not None else "",
                        prepared_statements=obj.stmts.prepared_statements if obj.stmts else 0, id=obj.id,
                        role=obj.pool.hstate.role if obj.pool.hstate is not None else None)

    def _show_hosts(self) -> tuple[list[Any], type]:
        app = self.app
        now = app.now()
        out = []
        for name, sp in app.routing.splits.items():
            router = sp.router
            lsns = sp.monitor.current_lsn if sp.monitor is not None else {}
            for h in router.hosts:
                lsn = lsns.get(h)
                banned = h.banned(now)
                out.append(R.HostRow(
                    database=name, host=h.host.host or "unix", port=h.host.port, role=h.role,
                    configured_role=h.configured_role, state=h.status(now), weight=f"{h.host.weight:g}",
                    lag_bytes=h.lag_bytes if h.role == "replica" else None,
                    lag_seconds=f"{h.lag_seconds:.3f}" if h.role == "replica" and h.lag_seconds is not None
                    else None,
                    replay_lsn=f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}" if lsn is not None else None,
                    banned_until=app.routing.wall(h.banned_until) if banned and h.banned_until else None,
                    reads=router.reads[h], writes=router.writes[h], reason=h.reason))
        return out, R.HostRow

    def _show_clients(self) -> tuple[list[Any], type]:
        now_wall, now = time.time(), time.monotonic()
        return [self._conn_row(R.ClientRow, "C", c, now_wall, now) for c in self.app.clients.values()
                if c.state is not ClientState.CLOSED], R.ClientRow

    def _show_servers(self) -> tuple[list[Any], type]:
        now_wall, now = time.time(), time.monotonic()
        servers = [*self.app.servers.values(), *self.app.replication.servers.values()]
        return [self._conn_row(R.ServerRow, "S", s, now_wall, now) for s in servers], R.ServerRow

    def _show_databases(self) -> tuple[list[Any], type]:
        cfg = self.app.config
        out = []
        for name, db in cfg.databases.items():
            pools = self.app.registry.for_database(name)
            out.append(R.DatabaseRow(
                name=name, host=db.host, port=db.port, database=db.target_dbname, force_user=db.user,
                pool_size=max((p.limits.pool_size for p in pools), default=0) if cfg.pool_size_for(
                    db, db.user or "") < 0 else cfg.pool_size_for(db, db.user or ""),  # auto: the size in force
                min_pool_size=cfg.min_pool_size_for(db),
                reserve_pool_size=cfg.reserve_pool_size_for(db, db.user or ""),
                server_lifetime=int(cfg.server_lifetime_for(db)), pool_mode=db.pool_mode, load_balance_hosts=None,
                max_connections=cfg.max_db_connections_for(db),
                current_connections=sum(len(p.servers) for p in pools),
                max_client_connections=cfg.max_db_client_connections_for(db),
                current_client_connections=sum(1 for c in self.app.clients.values() if c.database == name),
                paused=int(any(p.paused for p in pools)), disabled=int(any(p.disabled for p in pools))))
        out.append(R.DatabaseRow(
            name="pgbouncer", host=None, port=cfg.settings.listen_port, database="pgbouncer",
            force_user="pgbouncer", pool_size=2, min_pool_size=0, reserve_pool_size=0, server_lifetime=0,
            pool_mode="statement", load_balance_hosts=None, max_connections=0, current_connections=0,
            max_client_connections=0,
            current_client_connections=sum(1 for c in self.app.clients.values() if c.is_admin),
            paused=0, disabled=0))
        return out, R.DatabaseRow

    def _show_users(self) -> tuple[list[Any], type]:
        cfg = self.app.config
        names = dict.fromkeys(list(cfg.users) + [p.user for p in self.app.registry] + ["pgbouncer"])
        out = []
        for name in names:
            u = cfg.users.get(name)
            out.append(R.UserRow(
                name=name, pool_size=u.pool_size if u else None,
                reserve_pool_size=u.reserve_pool_size if u else None, pool_mode=u.pool_mode if u else None,
                max_user_connections=cfg.max_user_connections_for(name),
                current_connections=sum(len(p.servers) for p in self.app.registry if p.user == name),
                max_user_client_connections=cfg.max_user_client_connections_for(name),
                current_client_connections=sum(1 for c in self.app.clients.values() if c.user == name)))
        return out, R.UserRow

    def _totals(self) -> dict[str, tuple[int, ...]]:
        out: dict[str, list[int]] = {}
        for p in self.app.registry:
            acc = out.setdefault(p.database, [0] * len(_STAT_FIELDS))
            for i, f in enumerate(_STAT_FIELDS):
                acc[i] += getattr(p.stats, f)
        # PgBouncer lists its admin database too (exporters see its console traffic there).
        out["pgbouncer"] = [getattr(self.stats, f) for f in _STAT_FIELDS]
        return {k: tuple(v) for k, v in out.items()}

    def sample(self, now: float) -> None:
        """Every stats_period: averages per second over the last period, as PgBouncer reports them."""
        period = now - self.sampled_at
        if period <= 0:
            return
        cur = self._totals()
        zero = (0,) * len(_STAT_FIELDS)
        # In place, as C integers (pooling/ring.keep): new dicts of ints kept a period would each keep
        # the memory arena they were made in, a storm's if one was passing (issue 11)
        avgs = {db: [int((a - b) / period) for a, b in zip(vals, self.prev.get(db, zero), strict=True)]
                for db, vals in cur.items()}
        keep(self.avgs, avgs)
        keep(self.prev, {db: list(vals) for db, vals in cur.items()})
        self.sampled_at = now

    def _stats_row(self, db: str, t: tuple[int, ...], a: Sequence[int]) -> R.StatsRow:
        d = dict(zip(_STAT_FIELDS, t, strict=True))
        av = dict(zip(_STAT_FIELDS, a, strict=True))
        q, x = av["query_count"] or 1, av["xact_count"] or 1
        return R.StatsRow(
            database=db, total_server_assignment_count=d["server_assignment_count"],
            total_xact_count=d["xact_count"], total_query_count=d["query_count"],
            total_received=d["bytes_received"], total_sent=d["bytes_sent"], total_xact_time=d["xact_time"],
            total_query_time=d["query_time"], total_wait_time=d["wait_time"],
            total_client_parse_count=d["client_parse_count"], total_server_parse_count=d["server_parse_count"],
            total_bind_count=d["bind_count"], total_client_login_count=d["client_login_count"],
            avg_server_assignment_count=av["server_assignment_count"],
            avg_xact_count=av["xact_count"], avg_query_count=av["query_count"], avg_recv=av["bytes_received"],
            avg_sent=av["bytes_sent"], avg_xact_time=av["xact_time"] // x, avg_query_time=av["query_time"] // q,
            avg_wait_time=av["wait_time"] // x, avg_client_parse_count=av["client_parse_count"],
            avg_server_parse_count=av["server_parse_count"], avg_bind_count=av["bind_count"],
            avg_client_login_count=av["client_login_count"],
            total_pinned_count=d["pin_count"], avg_pinned_count=av["pin_count"])

    def _stats(self) -> list[R.StatsRow]:
        zero: Sequence[int] = (0,) * len(_STAT_FIELDS)
        return [self._stats_row(db, t, self.avgs.get(db, zero)) for db, t in self._totals().items()]

    def _show_stats(self) -> tuple[list[Any], type]:
        return self._stats(), R.StatsRow

    def _show_stats_totals(self) -> tuple[list[Any], type]:
        return [derive.stats_totals_row(s) for s in self._stats()], R.StatsTotalsRow

    def _show_stats_averages(self) -> tuple[list[Any], type]:
        return [derive.stats_averages_row(s) for s in self._stats()], R.StatsAveragesRow

    def _show_state(self) -> tuple[list[Any], type]:
        return derive.state_rows(paused=self.app.paused, suspended=self.app.suspended), R.StateRow

    def _show_config(self) -> tuple[list[Any], type]:
        from pgmux.admin.config_show import config_rows
        from pgmux.admin.set_setting import changeable_settings

        return config_rows(self.app.config.settings, None, changeable_settings()), R.ConfigRow


def _host_role(app: Any, pool: Any) -> dict[str, str | None]:
    if pool.hstate is not None:
        return {"host": f"{pool.host.host or 'unix'}:{pool.host.port}", "role": pool.hstate.role}
    db = app.config.database(pool.database)
    return {"host": db.host if db is not None else None, "role": None}


_SHOW_NAMES: dict[type, dict[str, str]] = {}


def _show_names(cls: type) -> dict[str, str]:
    """SHOW's subcommands of `cls`, each to its method's name as the class spells it. getattr with a
    name built per command would leave that string in CPython's method cache, and one made during a
    storm of clients keeps the storm's memory arena resident (issue 11, runtime/memtrim.py)."""
    names = _SHOW_NAMES.get(cls)
    if names is None:
        names = _SHOW_NAMES[cls] = {n[len("_show_"):]: n for n in dir(cls) if n.startswith("_show_")}
    return names
