"""The welcome of a pooled client: PostgreSQL's ParameterStatus values, in PostgreSQL's spelling.

A client's startup parameters are applied on whichever server it gets, later; but its welcome comes
now, and it must show what PostgreSQL would have reported on a direct connection (`latin1` shows as
`LATIN1`, `sql` as `SQL, MDY`, `europe/paris` as `Europe/Paris`): drivers compare those values. The
surest source is the server's own report, so a reported parameter asked for in a spelling the pool has
not seen yet is applied on one of its servers before the welcome (the probe: session/params.py
probe_sql, one round trip, swallowed), and what the server then holds is the value shown, remembered
per pool and spelling (Pool.known) so the next client with it costs nothing. A value PostgreSQL refuses
ends the login with PostgreSQL's FATAL, after AuthenticationOk, as on a direct connection.

The probing client stays in LOGIN_WAIT. When no server is idle it waits in the pool's queue like any
client (query_wait_timeout and client_login_timeout apply); ClientSession.attach hands the server back
here (App.probe) instead of running queries.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pgmux.errors import PgmuxError
from pgmux.session.params import MAX_KNOWN, probe_pairs, probe_sql
from pgmux.session.states import ServerState

if TYPE_CHECKING:
    from pgmux.runtime.servers import Servers
    from pgmux.session.client import ClientSession
    from pgmux.session.server import ServerSession


def welcome(app: Servers, c: ClientSession, launch: bool = True) -> None:
    """Welcome a client of a pool whose servers' parameters are known, or probe first."""
    pool = c.logged_in_pool()
    shown = pool.server_params
    assert shown is not None, "welcome() runs once the pool's parameters are known"
    pairs = probe_pairs(c.params, shown, pool.known)
    if not pairs:
        c.send_welcome(shown, app.tracked, app.config.settings.login_notify_message)
        return
    app.probing[c.id] = pairs
    now = app.now()
    server = None if app.paused else pool.take_idle()
    if server is not None:
        server.move(ServerState.ACTIVE)
        probe(app, c, server, now)
        return
    pool.add_waiter(c, now)  # (state LOGIN_WAIT: ClientSession.attach calls App.probe)
    if launch:
        app.launch(pool)


def probe(app: Servers, c: ClientSession, server: ServerSession, now: float) -> None:
    """`server` (ACTIVE) is lent to client `c` to apply its startup parameters before its welcome."""
    pool = c.logged_in_pool()
    shown = pool.server_params or {}
    pairs = probe_pairs(c.params, shown, pool.known)  # another client may have taught them meanwhile
    if not pairs:
        app.probing.pop(c.id, None)
        app.give(server, now)
        c.send_welcome(shown, app.tracked, app.config.settings.login_notify_message)
        return
    app.probing[c.id] = pairs
    c.link(server, now)
    server.send_internal(probe_sql(pairs))


def probe_done(app: Servers, c: ClientSession, server: ServerSession, err: dict[str, str] | None) -> None:
    """The probe's ReadyForQuery (App.internal_done): welcome or refuse the client, give the server back."""
    pairs = app.probing.pop(c.id, [])
    c.detach()
    pool = c.logged_in_pool()
    if err is None:
        known = pool.known
        if len(known) >= MAX_KNOWN:
            known.clear()
        for k, v in pairs:
            spelt = server.params.get(k, v)  # reported when it changed, else what the server had already
            known[(k, v)] = spelt
            c.params[k] = spelt
    app.return_server(server)
    if err is not None:
        c.transport.write(c.auth_ok)
        c.auth_ok = b""
        c.fail(PgmuxError(err.get("M", "invalid startup parameter"), sqlstate=err.get("C", "22023"),
                          severity="FATAL", detail=err.get("D"), hint=err.get("H")))
        return
    c.send_welcome(pool.server_params or {}, app.tracked, app.config.settings.login_notify_message)
