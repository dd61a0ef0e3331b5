"""SHOW results built from the live pooler beyond the per-pool ones in admin_service.py: TOTALS, SOCKETS,
ACTIVE_SOCKETS, MEM, LISTS, DNS_HOSTS, DNS_ZONES, PEERS and PEER_POOLS, in PgBouncer 1.25's columns; and
the console's SET applied to the running pooler.

What pgmux cannot know the way PgBouncer does is filled as documented on each builder (0, never a guess).
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from typing import Any

from pgmux.admin import derive, render
from pgmux.admin import rows as R
from pgmux.admin.commands import AdminCommand
from pgmux.admin.set_setting import set_setting
from pgmux.config.build import read_auth_file
from pgmux.errors import PgmuxError
from pgmux.session.states import ClientState

log = logging.getLogger("pgmux")

_CONN_FIELDS = tuple(f.name for f in dataclasses.fields(R._ConnectionRow))


def run_set(app: Any, cmd: AdminCommand) -> bytes:
    """SET key = value: a changeable setting applies at once, as a RELOAD of a file with that value
    would; it lasts until the next RELOAD re-reads the file (PgBouncer's behaviour). Refusals raise
    PgmuxError (admin/set_setting.py), which the console answers with an ERROR."""
    if cmd.fake_param is not None:
        return render.render_set_ignored()
    assert cmd.arg is not None and cmd.value is not None
    cfg = app.config
    settings, warnings = set_setting(cfg.settings, cmd.arg, cmd.value)
    new = dataclasses.replace(cfg, settings=settings)
    if settings.auth_file != cfg.settings.auth_file or settings.auth_type != cfg.settings.auth_type:
        found: list[str] = []
        new = dataclasses.replace(new, userlist=read_auth_file(settings, found))
        warnings += found
    try:
        app.reload(new)
    except Exception as e:  # noqa: BLE001 - the old settings stay; say why, as RELOAD does
        log.error("SET %s failed: %s", cmd.arg.lower(), e)
        return render.render_error(PgmuxError(f"SET failed: {e}", sqlstate="F0000"))
    log.info("SET %s = %r applied (until the next RELOAD)", cmd.arg.lower(), cmd.value)
    return b"".join(render.render_notice(w, severity="WARNING") for w in warnings) + render.render_ok(cmd.tag)


def sockname(transport: Any) -> tuple[str, int]:
    """The local end of a connection ("unix" and 0 for a Unix socket, as PgBouncer prints it)."""
    if transport is None:
        return "", 0
    name = transport.get_extra_info("sockname")
    if isinstance(name, tuple) and len(name) >= 2:
        return str(name[0]), int(name[1])
    return "unix", 0


def _buffers(obj: Any) -> dict[str, Any]:
    """PgBouncer's sbuf positions, from what pgmux has. pgmux keeps no fixed packet buffer: a read is
    scanned where it lands and only an incomplete message is held (protocol/codec.py Buffer), and writes
    queue in the transport. So: recv_pos and pkt_avail = bytes of a partial message held, pkt_remain =
    bytes still missing to complete it, send_remain and send_avail = bytes queued to write (the
    transport's write buffer); pkt_pos and send_pos are always 0 (nothing is consumed in place)."""
    buf = getattr(obj, "buf", None)
    held = len(buf.pending) if buf is not None else 0
    need = getattr(buf, "_need", 0) if held else 0
    transport = obj.transport
    queued = transport.get_write_buffer_size() if transport is not None and not transport.is_closing() else 0
    return {"recv_pos": held, "pkt_pos": 0, "pkt_remain": max(need - held, 0), "send_pos": 0,
            "send_remain": queued, "pkt_avail": held, "send_avail": queued}


def _shallow_size(objs: list[Any]) -> int:
    """Bytes of one object as sys.getsizeof measures it: the object, its own __dict__ and, for a
    prepared statement, its query text (not what else it points to), averaged over up to 64 live ones;
    0 when there are none."""
    sample = objs[:64]
    if not sample:
        return 0
    total = 0
    for o in sample:
        total += sys.getsizeof(o)
        d = getattr(o, "__dict__", None)
        if d is not None:
            total += sys.getsizeof(d)
        query = getattr(o, "query", None)
        if isinstance(query, str):
            total += sys.getsizeof(query)
    return total // len(sample)


class ShowRows:
    """Mixed into AdminService (runtime/admin_service.py), which provides app, _stats and _conn_row."""

    app: Any

    def _stats(self) -> list[R.StatsRow]:
        raise NotImplementedError

    def _conn_row(self, row_type: type, kind: str, obj: Any, now_wall: float, now: float) -> Any:
        raise NotImplementedError

    def _show_advice(self) -> tuple[list[Any], type]:
        """SHOW ADVICE (pgmux's own): the pool advisor, runtime/pool_watch.py."""
        from pgmux.runtime.pool_watch import advice_rows

        return advice_rows(self.app), R.AdviceRow

    def _show_totals(self) -> tuple[list[Any], type]:
        """SHOW TOTALS: SHOW STATS summed over every database (the admin one included, as PgBouncer)."""
        rows = self._stats()
        sums = {f.name: sum(getattr(r, f.name) for r in rows) for f in dataclasses.fields(R.StatsRow)
                if f.name != "database"}
        # Time averages are per transaction (per query): recompute them from the summed per-second rates.
        xacts = sum(r.avg_xact_count for r in rows) or 1
        queries = sum(r.avg_query_count for r in rows) or 1
        sums["avg_xact_time"] = sum(r.avg_xact_time * r.avg_xact_count for r in rows) // xacts
        sums["avg_query_time"] = sum(r.avg_query_time * r.avg_query_count for r in rows) // queries
        sums["avg_wait_time"] = sum(r.avg_wait_time * r.avg_xact_count for r in rows) // xacts
        return derive.totals_rows(R.StatsRow(database="", **sums)), R.TotalsRow

    def _sockets(self, only_active: bool) -> list[R.SocketRow]:
        now_wall, now = time.time(), time.monotonic()
        out = []
        conns: list[tuple[str, Any, type]] = [("C", c, R.ClientRow) for c in self.app.clients.values()
                                              if c.state is not ClientState.CLOSED]
        conns += [("S", s, R.ServerRow) for s in self.app.servers.values()]
        for kind, obj, row_type in conns:
            base = self._conn_row(row_type, kind, obj, now_wall, now)
            bufs = _buffers(obj)
            if only_active and not (bufs["recv_pos"] or bufs["send_remain"]):
                continue
            fields: dict[str, Any] = {name: getattr(base, name) for name in _CONN_FIELDS}
            out.append(R.SocketRow(**fields, **bufs))
        return out

    def _show_sockets(self) -> tuple[list[Any], type]:
        """Every client and server connection, with SHOW CLIENTS/SERVERS' columns and the buffer ones."""
        return self._sockets(False), R.SocketRow

    def _show_active_sockets(self) -> tuple[list[Any], type]:
        """As PgBouncer: only the connections with something in their buffers (held or queued bytes)."""
        return self._sockets(True), R.SocketRow

    def _show_mem(self) -> tuple[list[Any], type]:
        """One row per kind of object pgmux keeps, under PgBouncer's cache names where one matches.
        used: live objects; size: their average shallow size in bytes (sys.getsizeof of the object, its
        __dict__ and a statement's text, measured on up to 64 live ones); free: 0, pgmux keeps no free
        lists (Python's allocator reuses the memory); memtotal: size * used."""
        app = self.app
        cfg = app.config
        clients = list(app.clients.values())
        stmts: dict[Any, Any] = getattr(app.prepared, "_by_key", {})  # session/prepared.py Registry
        caches: list[tuple[str, list[Any]]] = [
            ("user_cache", list(cfg.users.values())),
            ("credentials_cache", list(cfg.userlist.items())),
            ("db_cache", list(cfg.databases.values())),
            ("pool_cache", list(app.registry)),
            ("server_cache", list(app.servers.values())),
            ("client_cache", clients),
            ("iobuf_cache", [c.buf for c in clients] + [s.buf for s in app.servers.values()]),
            ("server_prepared_statement_cache", list(stmts.values())),
        ]
        rows = []
        for name, objs in caches:
            size = _shallow_size(objs)
            rows.append(R.MemRow(name=name, size=size, used=len(objs), free=0, memtotal=size * len(objs)))
        return rows, R.MemRow

    def _show_lists(self) -> tuple[list[Any], type]:
        """SHOW LISTS with real counts. databases and pools count the admin database and its pool, as
        PgBouncer's lists hold them; users are those PgBouncer keeps: the auth_file's, the [users]
        section's, the forced users of database lines and those pools were made for."""
        app = self.app
        cfg = app.config
        clients = list(app.clients.values())
        login = (ClientState.STARTUP, ClientState.AUTH)
        users = set(cfg.userlist) | set(cfg.users) | {p.user for p in app.registry}
        users |= {db.user for db in cfg.databases.values() if db.user}
        counts = {
            "databases": len(cfg.databases) + 1, "users": len(users), "peers": 0,
            "pools": len(list(app.registry)) + 1, "peer_pools": 0, "free_clients": 0,
            "used_clients": sum(1 for c in clients if c.state not in login),
            "login_clients": sum(1 for c in clients if c.state in login),
            "free_servers": 0, "used_servers": len(app.servers), "dns_names": 0, "dns_zones": 0,
            "dns_queries": 0, "dns_pending": 0,
        }
        return derive.lists_rows(counts), R.ListsRow

    def _show_dns_hosts(self) -> tuple[list[Any], type]:
        """Empty: pgmux resolves host names per connection through the OS and keeps no DNS cache."""
        return [], R.DnsHostRow

    def _show_dns_zones(self) -> tuple[list[Any], type]:
        return [], R.DnsZoneRow

    def _show_peers(self) -> tuple[list[Any], type]:
        """Empty: pgmux has no [peers] (one process)."""
        return [], R.PeerRow

    def _show_peer_pools(self) -> tuple[list[Any], type]:
        return [], R.PeerPoolRow
