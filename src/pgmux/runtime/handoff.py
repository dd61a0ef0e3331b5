"""The hand-off of servers to clients, once per transaction: acquire a server for a client, take it
back when ReadyForQuery says the transaction is over (server_ready), settle a leaving client. The
layer of the hub above servers.Servers (see core.py)."""

from __future__ import annotations

import logging

from pgmux.errors import PgmuxError
from pgmux.net.linger import close_after_error
from pgmux.protocol import messages as m
from pgmux.runtime import logdirect, welcome
from pgmux.runtime.admission import Admission
from pgmux.runtime.servers import Servers
from pgmux.runtime.timeouts import fast_close
from pgmux.session.client import ClientSession
from pgmux.session.client_login import CLOSE_REQUEST
from pgmux.session.server import ServerSession
from pgmux.session.states import C_WAITING, S_ACTIVE, ClientState, ServerState

log = logging.getLogger("pgmux")


class Handoff(Servers):
    admission: Admission  # made by App.__init__; typed (compiled): admit() and release() are native calls

    def acquire(self, c: ClientSession, now: float | None = None) -> None:
        pool = c.logged_in_pool()
        if self.shedding:  # SHUTDOWN WAIT_FOR_SERVERS: no new transaction starts
            c.fail(PgmuxError("pgmux is shutting down", sqlstate="57P01", severity="FATAL"))
            return
        if now is None:
            now = self.now()
        if c.route is not None:  # read/write split: this transaction's host, or wait for one
            routed = self.routing.route(c, now)
            if routed is None:
                return
            pool = routed
        # typed: the pool's servers are generic there, and a ServerSession here is called natively
        server: ServerSession | None = None if self.paused else pool.take_idle()
        if server is not None and pool.needs_check(server, now):
            # server_check_delay: the server waited long enough (0: any time) to run the check query
            # first; internal_done() gives it to the oldest waiter, this client, or closes it.
            c.move(C_WAITING)
            pool.add_waiter(c, now)
            self.check_server(server)
            return
        if server is not None:
            server.move(S_ACTIVE)
            pool.stats.server_assignment_count += 1
            if pool.stats.timing is not None:  # metrics: a wait of 0
                pool.stats.timing.wait.observe(0.0)
            c.attach(server, now)
            return
        c.move(C_WAITING)
        c.wait_since = now  # pool.add_waiter(), the store native: c is typed here (see Pool.enqueue)
        pool.enqueue(c)
        # A full pool (the usual case under load) opens nothing: skip the arithmetic of launch(). With
        # workers this worker's part is full before len(servers) reaches the limit, and the shared counts'
        # refusal is remembered (pool.no_room_until): checked here, without launch()'s call and clock read.
        if not self.paused and len(pool.servers) < pool.limits.pool_size + pool.limits.reserve_pool_size \
                and pool.no_room_until <= now:
            self.launch(pool)

    def server_ready(self, c: ClientSession, server: ServerSession) -> None:
        """The linked server sent ReadyForQuery and owes nothing: count it, and in transaction or
        statement mode give the server back when the transaction is over.

        This runs once per transaction. The usual case (the transaction is over, nothing is queued,
        held or pinned) hands the server on here; everything else goes through _ready_other()."""
        pool = server.pool
        st = pool.stats
        now = self.now()
        st.query_count += 1
        st.query_secs += now - server.query_start
        timing = st.timing  # metrics (pooling/histogram.py), None when off
        if timing is not None:
            timing.query.observe(now - server.query_start)
        if (server.tx_status != b"I" or pool.mode == "session" or c.pending or c.unsynced or c.pinned
                or c.lsn_wanted or c.passing or server.skipping):
            self._ready_other(c, server, now)
            return
        st.xact_count += 1
        st.xact_secs += now - c.xact_start
        if timing is not None:
            timing.xact.observe(now - c.xact_start)
        c.xact_start = 0.0
        c.detach()
        # return_server() in short for the usual case (no reset query to run): one call per transaction.
        why = self.worn(server, now)
        if why:
            self.close_server(server, why)
        elif self.reset_always:
            self.return_server(server, now=now)
        else:
            self.give(server, now)
        if self.on_idle is not None:
            self.on_idle(c)

    def _ready_other(self, c: ClientSession, server: ServerSession, now: float) -> None:
        """server_ready() for a transaction still open, session mode, and a client with something
        queued, half-sent, pinned or a WAL position to capture."""
        pool = server.pool
        idle = server.tx_status == b"I"
        if idle:
            st = pool.stats
            st.xact_count += 1
            st.xact_secs += now - c.xact_start
            if st.timing is not None:
                st.timing.xact.observe(now - c.xact_start)
            c.xact_start = 0.0
        mode = pool.mode
        if mode == "session":
            if idle and server.close_needed and self.config.settings.server_fast_close and server.clean:
                fast_close(self, server)
            return
        if c.pending and (idle or mode != "statement"):  # held back from a replica (runtime/routing.py)
            if idle and not c.unsynced and not c.pinned and not server.skipping:
                c.detach()
                self.return_server(server, now=now)
                self.acquire(c, now)  # routed on its own: a write goes to the primary
            else:
                c.send_pending(server, now)  # inside the replica's transaction: it is answered there
            return
        if not idle:
            if mode == "statement":
                err = PgmuxError("transaction blocks not allowed in statement pooling mode", sqlstate="08P01",
                                 severity="FATAL")
                self.close_server(server, err.message)
                c.fail(err)
            return
        if c.unsynced or c.pinned:  # pinned: LISTEN, temp tables... live on this server only
            return
        if server.skipping:
            # An extended-protocol message failed and no Sync followed (a Query after it was skipped
            # with no reply, or the ReadyForQuery was a Query's before it): PostgreSQL ignores all up
            # to the client's next Sync. That is this client's session state; another client's
            # messages there would be ignored too (its simple Query never answered).
            return
        if c.passing:  # the rest of a long message is on its way to this server (ClientSession._pass)
            return
        if c.lsn_wanted:  # read-your-writes: the commit's WAL position first (runtime/routing.py)
            self.routing.capture_lsn(c, server)
            return
        c.detach()
        self.return_server(server, now=now)
        if self.on_idle is not None:
            self.on_idle(c)

    def internal_done(self, server: ServerSession) -> None:
        """pgmux's own query on this server finished (reset, check, or parameter sync)."""
        err = server.take_error()
        c = server.client
        if c is not None and c.state is ClientState.LOGIN_WAIT:  # a client's startup parameters (probe())
            welcome.probe_done(self, c, server, err)
            return
        if err is not None:
            log.warning("%s internal query failed: %s", server.prefix, err.get("M"))
        if server.want_lsn:
            self.routing.lsn_done(server, err)
            return
        if server.state is ServerState.TESTED:
            if err is not None or server.close_needed:
                self.close_server(server, "server reset or check query failed")
            else:
                self.give(server)
        elif err is not None and server.client is not None:
            server.client.transport.write(m.notice_response(
                f"pgmux could not apply a session parameter on the server: {err.get('M')}", severity="WARNING",
                sqlstate=err.get("C", "01000")))

    def probe(self, c: ClientSession, server: ServerSession, now: float) -> None:
        """ClientSession.attach for a client still logging in: the server applies its parameters first."""
        welcome.probe(self, c, server, now)

    def client_closed(self, c: ClientSession, reason: str) -> None:
        if c.state is ClientState.CLOSED:
            return
        was = c.state
        c.move(ClientState.CLOSED)
        cid = c.id
        if cid in self.clients:  # (not dict.pop: a Python method call from compiled code)
            del self.clients[cid]
        if self.by_cancel.get(c.cancel_pid) is c:
            del self.by_cancel[c.cancel_pid]
        self.admission.release(c)
        if self.hot.log_disconnections:
            # age in whole seconds, as PgBouncer writes it (an int: a float's format spec is three Python calls)
            logdirect.info(log, f"{c.prefix} closing because: {reason} (age={int(self.now() - c.connect_time)}s)")
        pool = c.pool
        if c.route is not None:
            self.routing.forget(c)
        if c.replication:
            self.replication.client_gone(c)
        if pool is not None:
            if was is ClientState.WAITING:
                pool.remove_waiter(c)
            elif was is ClientState.LOGIN_WAIT:
                if not pool.remove_login_waiter(c):
                    pool.remove_waiter(c)  # waiting for a server to apply its parameters (probe())
                self.probing.pop(c.id, None)
        if c.stmts is not None:
            c.stmts.clear()
        # read before detach(): server.clean no longer sees the client after it; a message the server
        # got only part of leaves it unusable too
        unsynced = c.unsynced or c.passing > 0
        server = c.detach()
        if server is not None:
            if c.pinned:  # its LISTENs, temp tables or locks must not reach another client
                self.close_server(server, f"client left session state on the server ({c.pinned})")
            elif server.clean and not unsynced and not server.close_needed:
                self.return_server(server, leaving=True)
            else:
                self.close_server(server, "client disconnect while server was not ready")
        if reason == CLOSE_REQUEST:  # (a Terminate: the client closes its side, nothing is lost)
            c.transport.close()
        else:  # pgmux ended it, mostly with an error: a reset must not make the client lose that
            close_after_error(c.transport)
        self.after_change()
