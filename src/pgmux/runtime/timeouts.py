"""The janitor's pass over every timeout, with `now` passed in (PgBouncer's janitor.c, in spirit).

Client-facing timeouts answer with PgBouncer's words as a FATAL error, then disconnect, as PgBouncer does.
"""

from __future__ import annotations

from typing import Any

from pgmux.errors import PgmuxError
from pgmux.session.states import ClientState, ServerState

_LOGIN = (ClientState.STARTUP, ClientState.AUTH, ClientState.LOGIN_WAIT)


def _timeout(message: str) -> PgmuxError:
    # FATAL 08P01, as PgBouncer 1.2x sends for every disconnect (send_pooler_error with level_fatal).
    return PgmuxError(message, sqlstate="08P01", severity="FATAL")


def check_timeouts(app: Any, now: float) -> None:
    s = app.config.settings
    for pool in app.registry:
        for c in pool.timed_out_waiters(now, s.query_wait_timeout):
            pool.remove_waiter(c)
            c.fail(_timeout("query_wait_timeout"), close=True)
        for srv in pool.expired(now, s.server_idle_timeout, pool.limits.server_lifetime):
            if srv in pool.idle:
                pool.idle.remove(srv)
            app.close_server(srv, "server idle timeout" if not srv.close_needed else "server close needed")
        for srv in list(pool.servers):
            if srv.state is ServerState.LOGIN and s.server_connect_timeout > 0 and \
                    now - srv.connect_started > s.server_connect_timeout:
                app._login_failed(srv, PgmuxError(f"server connect timeout ({srv.target.label})",
                                                  sqlstate="57P03", severity="FATAL"))
        if s.server_check_delay > 0 and s.server_check_query and not app.paused:
            for srv in list(pool.idle):
                if now - srv.idle_since > s.server_check_delay:
                    pool.idle.remove(srv)
                    srv.move(ServerState.TESTED)
                    # PgBouncer's "<empty>" means an empty query: the cheapest round trip there is.
                    srv.send_internal("" if s.server_check_query == "<empty>" else s.server_check_query)
        app.launch(pool)  # min_pool_size, and retries after server_login_retry
    if not (s.client_idle_timeout or s.client_login_timeout or s.query_timeout or s.idle_transaction_timeout):
        return
    for c in list(app.clients.values()):
        srv = c.server
        if c.state is ClientState.REPLICATION:
            continue  # its own server, streaming or waiting for room (runtime/replication.py)
        if c.state in _LOGIN:
            if s.client_login_timeout and now - c.connect_time > s.client_login_timeout:
                c.fail(PgmuxError("client_login_timeout", sqlstate="08P01", severity="FATAL"))
        elif srv is not None and srv.owed > 0:
            if s.query_timeout and now - srv.query_start > s.query_timeout:
                app.close_server(srv, "query timeout")
                c.fail(_timeout("query timeout"), close=True)  # PgBouncer's words (janitor.c)
        elif srv is not None and srv.tx_status != b"I":
            if s.idle_transaction_timeout and now - c.request_time > s.idle_transaction_timeout:
                app.close_server(srv, "idle transaction timeout")
                c.fail(_timeout("idle transaction timeout"), close=True)
        elif s.client_idle_timeout and now - c.request_time > s.client_idle_timeout:
            c.fail(_timeout("client_idle_timeout"), close=True)
