"""A fake hub: the smallest runtime a session can be driven against (session/hub.py's port).

No App, no config file, no event loop. It records every call a session makes (`calls`) and does only
what a playbook needs to go on: a trust login with a fixed welcome, one pool of fake servers handed
out in order, and a server back to idle when the session says its transaction is over. Tests play
both peers by feeding bytes to the sessions and read what the sessions wrote.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fakes import SERVER_PARAMS, Clock, FakeTransport, Peer

from pgmux.errors import PgmuxError
from pgmux.pooling.pool import Pool, PoolLimits
from pgmux.protocol import messages as m
from pgmux.protocol.auth import ClientAuthenticator
from pgmux.session.client import ClientSession
from pgmux.session.hub import Hub
from pgmux.session.params import startup_params
from pgmux.session.prepared import Registry
from pgmux.session.server import ServerSession, ServerTarget
from pgmux.session.states import ClientState, ServerState

CANCEL_PID, CANCEL_KEY = 77, 7777


class FakeHub(Hub):
    """Implements session/hub.Hub: a Python subclass of it (Hub allows them, compiled or not)."""

    def __init__(self, mode: str = "transaction", max_prepared: int = 0) -> None:
        self.clock = Clock()
        self.now: Callable[[], float] = self.clock
        self.suspended = False
        self.calls: list[tuple[Any, ...]] = []  # (member name, arguments...), in order
        self.pool: Pool[Any, Any] = Pool("app", "alice", PoolLimits(pool_size=2), mode)
        self.registry = Registry()
        self.max_prepared = max_prepared
        self.sigs: dict[Any, Any] = {}
        self.next_id = 1
        self.logged: list[str] = []  # log_pooler_error and log_exception, in order

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]

    # -- what the playbooks make -----------------------------------------------------------------
    def client(self) -> Peer:
        c = ClientSession(self._id(), self, self.now(), 1 << 30, self.sigs)
        t = FakeTransport()
        c.connection_made(t, "127.0.0.1", 5000 + c.id, False, None)
        return Peer(c, t)

    def server(self, logged_in: bool = True) -> Peer:
        """A server of the pool; logged in (idle in the pool) unless asked otherwise."""
        target = ServerTarget(host="127.0.0.1", port=5432, unix_path=None, dbname="appdb", user="alice")
        s = ServerSession(self._id(), self, self.pool, target, self.now(), self.registry, self.max_prepared)
        t = FakeTransport()
        s.connection_made(t)
        self.pool.add_server(s)
        peer = Peer(s, t)
        if logged_in:
            t.take()  # the StartupMessage
            peer.send(m.auth_ok() + b"".join(m.parameter_status(k, v) for k, v in SERVER_PARAMS.items())
                      + m.backend_key_data(4242, 777) + m.ready_for_query(b"I"))
        return peer

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    # -- a client's login ------------------------------------------------------------------------
    def start_tls(self, c: ClientSession, hello: bytes = b"") -> bool:
        self.calls.append(("start_tls", c, hello))
        return False

    def cancel_request(self, requester: ClientSession, pid: int, key: int) -> None:
        self.calls.append(("cancel_request", requester, pid, key))
        requester.transport.close()

    def login(self, c: ClientSession, params: dict[str, str]) -> None:
        self.calls.append(("login", c, dict(params)))
        user = params.get("user", "")
        if not user:
            raise PgmuxError("no PostgreSQL user name specified in startup packet", sqlstate="28000",
                             severity="FATAL")
        c.set_identity(params.get("database") or user, user)
        c.auth = ClientAuthenticator("any", user, None)  # (trust wants the user in auth_file)
        c.params = startup_params(params, ())

    def client_authenticated(self, c: ClientSession) -> None:
        self.calls.append(("client_authenticated", c))
        c.cancel_pid, c.cancel_key = CANCEL_PID, CANCEL_KEY
        c.pool = self.pool
        c.watch = self.pool.mode != "session"
        c.send_welcome(dict(SERVER_PARAMS))

    def probe(self, c: ClientSession, server: ServerSession, now: float) -> None:
        self.calls.append(("probe", c, server, now))

    # -- a logged-in client ------------------------------------------------------------------------
    def acquire(self, c: ClientSession, now: float | None = None) -> None:
        self.calls.append(("acquire", c))
        now = self.now() if now is None else now
        server = self.pool.take_idle()
        if server is None:
            c.move(ClientState.WAITING)
            self.pool.add_waiter(c, now)
            return
        server.move(ServerState.ACTIVE)
        c.attach(server, now)

    def route_hold(self, c: ClientSession, server: ServerSession, data: bytes | memoryview) -> bool:
        self.calls.append(("route_hold", c, server, bytes(data)))
        return False

    def admin_message(self, c: ClientSession, mtype: int, body: bytes) -> None:
        self.calls.append(("admin_message", c, mtype, body))

    def replication_data(self, c: ClientSession, data: bytes) -> None:
        self.calls.append(("replication_data", c, data))

    def client_closed(self, c: ClientSession, reason: str) -> None:
        self.calls.append(("client_closed", c, reason))
        if c.state is ClientState.CLOSED:
            return
        if c.state is ClientState.WAITING:
            self.pool.remove_waiter(c)
        c.move(ClientState.CLOSED)
        server = c.detach()
        if server is not None:
            self.close_server(server, "client left")
        c.transport.close()

    def log_pooler_error(self, prefix: str, message: str) -> None:
        self.logged.append(f"{prefix} pooler error: {message}")

    def log_exception(self, prefix: str, exc: BaseException) -> None:
        self.logged.append(f"{prefix} internal error: {exc!r}")

    # -- a server --------------------------------------------------------------------------------
    def server_login_done(self, server: ServerSession) -> None:
        self.calls.append(("server_login_done", server))
        self._give(server)

    def server_ready(self, c: ClientSession, server: ServerSession) -> None:
        self.calls.append(("server_ready", c, server))
        if server.tx_status != b"I" or self.pool.mode == "session" or c.unsynced:
            return  # the client keeps its server
        c.detach()
        if c.pending:
            self._give(server)
            self.acquire(c)
            return
        self._give(server)

    def _give(self, server: ServerSession) -> None:
        waiter = self.pool.put(server, self.now())
        if waiter is not None:
            server.move(ServerState.ACTIVE)
            waiter.attach(server, self.now())
        else:
            server.move(ServerState.IDLE)

    def internal_done(self, server: ServerSession) -> None:
        self.calls.append(("internal_done", server, server.swallow_error))

    def host_error(self, server: ServerSession, fields: dict[str, str]) -> None:
        self.calls.append(("host_error", server, fields))

    def close_server(self, server: ServerSession, reason: str, relaunch: bool = True) -> None:
        self.calls.append(("close_server", server, reason))
        if server.state is not ServerState.CLOSED:
            server.move(ServerState.CLOSED)
            self.pool.remove_server(server)
            server.transport.close()
            c = server.client
            if c is not None and c.server is server:
                c.detach()

    def server_closed(self, server: ServerSession, reason: str) -> None:
        self.calls.append(("server_closed", server, reason))

    def server_failed(self, server: ServerSession, err: PgmuxError) -> None:
        self.calls.append(("server_failed", server, err.message))
        client = server.client
        self.close_server(server, err.message)
        if client is not None:
            client.fail(PgmuxError("server conn crashed?", sqlstate="08006", severity="FATAL"))

    def server_crashed(self, server: ServerSession, exc: BaseException) -> None:
        self.calls.append(("server_crashed", server, exc))
        self.close_server(server, "crashed")
