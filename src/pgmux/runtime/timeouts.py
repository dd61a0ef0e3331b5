"""The janitor's pass over every timeout, with `now` passed in (PgBouncer's janitor.c, in spirit).

Client-facing timeouts answer with PgBouncer's words as a FATAL error, then disconnect, as PgBouncer does.
Per-user and per-database values follow PgBouncer 1.25's precedence (config/model.py, the `*_for`
methods): query_wait_timeout and client_idle_timeout by the client's own user name; query_timeout,
idle_transaction_timeout and transaction_timeout by the user its pool logs in as.
"""

from __future__ import annotations

from typing import Any

from pgmux.errors import PgmuxError
from pgmux.protocol import messages as m
from pgmux.session.states import ClientState, ServerState

_LOGIN = (ClientState.STARTUP, ClientState.AUTH, ClientState.LOGIN_WAIT)


def _timeout(message: str) -> PgmuxError:
    # FATAL 08P01, as PgBouncer 1.2x sends for every disconnect (send_pooler_error with level_fatal).
    return PgmuxError(message, sqlstate="08P01", severity="FATAL")


def _wait_timeout(pool: Any) -> PgmuxError:
    err = _timeout("query_wait_timeout")
    if pool.last_login_failure is not None and pool.login_error:
        err.detail = f"no server login succeeded while the query waited; the last attempt: {pool.login_error}"
    return err


def notify_waiters(pool: Any, last: float, now: float, after: float) -> None:
    """query_wait_notify: a NOTICE to each client that has now waited longer than `after` seconds and had
    not at the janitor's last pass (`last`), so once per wait. PgBouncer's words, and, when the pool's
    server logins are failing, why and what pgmux does about it."""
    notice = b""
    for c in pool.waiters:  # FIFO: the longest waiting first
        if now - c.wait_since <= after:
            break
        if last - c.wait_since > after:
            continue  # told at an earlier pass
        if not notice:
            text = "No server connection available in postgres backend, client being queued"
            if pool.last_login_failure is not None and pool.login_error:
                text += (f"; pgmux cannot log in to the server ({pool.login_error}) and keeps trying: the "
                         "query runs as soon as a login succeeds, or fails after query_wait_timeout")
            notice = m.notice_response(text)
        c.transport.write(notice)


def check_timeouts(app: Any, now: float) -> None:
    s = app.config.settings
    notify = s.query_wait_notify
    for pool in app.registry:
        _waiters(app, pool, now)
        if notify > 0 and pool.waiters:
            notify_waiters(pool, app.last_tick, now, notify)
        for srv in pool.expired(now, s.server_idle_timeout, pool.limits.server_lifetime):
            pool.discard_idle(srv)
            app.close_server(srv, "server idle timeout" if not srv.close_needed else "server close needed")
        for srv in pool.excess_idle():  # a reload lowered pool_size (PgBouncer's check_pool_size)
            pool.discard_idle(srv)
            app.close_server(srv, "too many servers in the pool")
        for srv in list(pool.servers):
            if srv.state is ServerState.LOGIN and s.server_connect_timeout > 0 and \
                    now - srv.connect_started > s.server_connect_timeout:
                app.login_failed(srv, PgmuxError(f"server connect timeout ({srv.target.label})",
                                                  sqlstate="57P03", severity="FATAL"))
            elif (s.server_fast_close and srv.close_needed and srv.state is ServerState.ACTIVE and srv.clean
                  and pool.mode == "session"):
                fast_close(app, srv)
        if s.server_check_delay > 0 and s.server_check_query and not app.paused:
            for srv in list(pool.idle):
                if now - srv.idle_since > s.server_check_delay:
                    pool.discard_idle(srv)
                    app.check_server(srv)
        app.launch(pool)  # min_pool_size, and retries after server_login_retry
    _clients(app, now)


def fast_close(app: Any, srv: Any) -> None:
    """server_fast_close: a session-mode server marked close_needed (RECONNECT, a RELOAD that changed
    its database) goes as soon as its transaction is over, and its client with it, so the client sees
    the session end (PgBouncer's words: "database configuration changed")."""
    client = srv.client
    app.close_server(srv, "database configuration changed")
    if client is not None:
        client.fail(_timeout("database configuration changed"), close=True)


def _waiters(app: Any, pool: Any, now: float) -> None:
    """query_wait_timeout (user, else database, else global), and the global query_timeout, which
    PgBouncer applies to waiting clients too."""
    cfg = app.config
    if not pool.waiters:
        return
    db = cfg.database(pool.database)
    per_client = db is not None and cfg.any_user_query_wait_timeout
    wait = cfg.query_wait_timeout_for(db, "") if db is not None else cfg.settings.query_wait_timeout
    query = cfg.settings.query_timeout
    if per_client:
        timeouts: dict[str, float] = {}
        late = []
        for c in pool.waiters:
            t = timeouts.get(c.user)
            if t is None:
                t = timeouts[c.user] = cfg.query_wait_timeout_for(db, c.user)
            if t > 0 and now - c.wait_since > t:
                late.append((c, "query_wait_timeout"))
            elif query > 0 and now - c.wait_since > query:
                late.append((c, "query_timeout"))
    else:
        late = [(c, "query_wait_timeout") for c in pool.timed_out_waiters(now, wait)]
        if query > 0:
            seen = {id(c) for c, _ in late}
            late += [(c, "query_timeout") for c in pool.timed_out_waiters(now, query) if id(c) not in seen]
    for c, why in late:
        pool.remove_waiter(c)
        c.fail(_wait_timeout(pool) if why == "query_wait_timeout" else _timeout(why), close=True)


def _clients(app: Any, now: float) -> None:
    cfg = app.config
    s = cfg.settings
    arriving = app.arriving
    for cid, c in list(arriving.items()):  # client_login_timeout; the ones logged in or gone leave the dict
        if c.state not in _LOGIN:
            del arriving[cid]
        elif s.client_login_timeout and now - c.connect_time > s.client_login_timeout:
            c.fail(PgmuxError("client_login_timeout", sqlstate="08P01", severity="FATAL"))
    if not (s.client_idle_timeout or s.query_timeout or s.idle_transaction_timeout or s.transaction_timeout
            or cfg.any_user_timeouts):
        return  # (the default: no pass over every logged-in client, five times a second)
    cache: dict[tuple[str, str], tuple[float, float, float, float]] = {}
    for c in list(app.clients.values()):
        if c.state is ClientState.REPLICATION or c.state in _LOGIN:
            continue  # its own server (runtime/replication.py); a login: above
        pool = c.pool
        key = (pool.user if pool is not None else c.user, c.user)
        t = cache.get(key)
        if t is None:
            t = cache[key] = (cfg.query_timeout_for(key[0]), cfg.idle_transaction_timeout_for(key[0]),
                              cfg.transaction_timeout_for(key[0]), cfg.client_idle_timeout_for(key[1]))
        query_t, idle_tx_t, tx_t, client_idle_t = t
        srv = c.server
        if srv is not None and (srv.owed > 0 or srv.tx_status != b"I"):
            # Checked in PgBouncer's order: query, idle transaction, transaction.
            why = None
            if srv.owed > 0 and query_t and now - srv.query_start > query_t:
                why = "query timeout"  # PgBouncer's words (janitor.c)
            elif srv.owed == 0 and idle_tx_t and now - c.request_time > idle_tx_t:
                why = "idle transaction timeout"
            elif tx_t and c.xact_start and now - c.xact_start > tx_t:
                why = "transaction timeout"
            if why is not None:
                app.close_server(srv, why)  # never back to the pool: it is inside a transaction
                c.fail(_timeout(why), close=True)
        elif client_idle_t and now - c.request_time > client_idle_t:
            c.fail(_timeout("client_idle_timeout"), close=True)
