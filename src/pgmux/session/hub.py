"""The hub port: every call a session makes to the world outside its own connection.

Sessions (client.py, server.py, pipeline.py) are sans-IO state machines; whatever involves more than
one connection (pools, other clients, the console, TLS, cancels, read/write routing) they ask of the
hub through this class, and of nothing else. The runtime's App implements it (its lowest layer,
runtime/core.Core, derives from Hub); the session playbook tests implement it with a fake
(tests/unit/fakehub.py, a Python subclass). Values a session needs but does not decide (the statement
registry, max_prepared_statements, the shared parameter signatures) are given to it at construction.

Why a class and not a typing.Protocol: the sessions and App are compiled (setup.py), and mypyc
compiles a call through a Protocol-typed attribute as a Python attribute lookup and a Python call
(about 5% of the instructions of a transaction), but a call through a native class as a C call
through its vtable, as cheap as a call inside App. `allow_interpreted_subclasses` lets the fake (pure
Python) derive from it too; its calls go through a Python-level glue. Every member here only raises:
it is the list, and the implementations are App's.

session/ imports nothing from runtime/ or net/ (tests/unit/test_architecture.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

try:
    from mypy_extensions import mypyc_attr
except ImportError:  # installed without mypy (a build requirement only): the decorator matters to mypyc alone

    def mypyc_attr(*args: object, **kwargs: object) -> Callable[[type], type]:  # type: ignore[misc]
        return lambda cls: cls


if TYPE_CHECKING:
    from pgmux.errors import PgmuxError
    from pgmux.session.client import ClientSession
    from pgmux.session.server import ServerSession


@mypyc_attr(allow_interpreted_subclasses=True)
class Hub:
    """What sessions call. Grouped by who calls it; each member says when."""

    # -- the clock: time.monotonic in production, a hand-turned clock in tests
    now: Callable[[], float]
    # -- SUSPEND (runtime/suspend.py): while True, sessions other than consoles read nothing
    suspended: bool

    # -- a client's login (ClientSession._startup_data and after)
    def start_tls(self, c: ClientSession, hello: bytes = b"") -> bool:
        """An SSLRequest (or a TLS ClientHello first, `hello`): True when a handshake now runs."""
        raise NotImplementedError

    def cancel_request(self, requester: ClientSession, pid: int, key: int) -> None:
        """A CancelRequest arrived on `requester`, a connection that carries nothing else."""
        raise NotImplementedError

    def login(self, c: ClientSession, params: dict[str, str]) -> None:
        """The StartupMessage: set the client's identity and authenticator, or raise PgmuxError."""
        raise NotImplementedError

    def client_authenticated(self, c: ClientSession) -> None:
        """The client proved who it is: cancel key, pool, then the welcome (now or later)."""
        raise NotImplementedError

    def probe(self, c: ClientSession, server: ServerSession, now: float) -> None:
        """A server lent to a client still logging in: its startup parameters are applied first."""
        raise NotImplementedError

    # -- a logged-in client
    def acquire(self, c: ClientSession, now: float | None = None) -> None:
        """The client has queued messages and no server: link one, or queue the client."""
        raise NotImplementedError

    def route_hold(self, c: ClientSession, server: ServerSession, data: bytes | memoryview) -> bool:
        """Read/write split only: True when `data` must wait for a server of another host."""
        raise NotImplementedError

    def admin_message(self, c: ClientSession, mtype: int, body: bytes) -> None:
        """One message of a console client."""
        raise NotImplementedError

    def replication_data(self, c: ClientSession, data: bytes) -> None:
        """Bytes of a replication client, relayed to its own server."""
        raise NotImplementedError

    def client_closed(self, c: ClientSession, reason: str) -> None:
        """The client is gone (or must go): forget it, and settle its server."""
        raise NotImplementedError

    def log_pooler_error(self, prefix: str, message: str) -> None:
        """An error pgmux itself answers a client with (logged when log_pooler_errors is on)."""
        raise NotImplementedError

    def log_exception(self, prefix: str, exc: BaseException) -> None:
        """A bug: logged with its traceback, never sent to a client."""
        raise NotImplementedError

    # -- a server
    def server_login_done(self, server: ServerSession) -> None:
        """The server logged in (and ran connect_query): into the pool, or to a waiter."""
        raise NotImplementedError

    def server_ready(self, c: ClientSession, server: ServerSession) -> None:
        """ReadyForQuery and nothing owed: the transaction (or statement) is over."""
        raise NotImplementedError

    def internal_done(self, server: ServerSession) -> None:
        """pgmux's own query on the server (reset, check, parameter sync) finished."""
        raise NotImplementedError

    def host_error(self, server: ServerSession, fields: dict[str, str]) -> None:
        """A FATAL or class-08 error from a server of a split database's host."""
        raise NotImplementedError

    def close_server(self, server: ServerSession, reason: str, relaunch: bool = True) -> None:
        """Close the server (it is broken or unwanted), opening another if the pool needs one."""
        raise NotImplementedError

    def server_closed(self, server: ServerSession, reason: str) -> None:
        """The server's socket closed under us."""
        raise NotImplementedError

    def server_failed(self, server: ServerSession, err: PgmuxError) -> None:
        """The server broke the protocol or refused the login."""
        raise NotImplementedError

    def server_crashed(self, server: ServerSession, exc: BaseException) -> None:
        """A bug while handling the server's bytes: both connections are closed."""
        raise NotImplementedError
