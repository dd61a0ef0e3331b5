"""Client logins: the startup packet's policy (runtime/admission.py limits, runtime/client_auth.py
methods, auth_query), cancel keys, joining a pool, the welcome, and cancel requests. The layer of the
hub above handoff.Handoff (see core.py)."""

from __future__ import annotations

import logging
import os
import secrets
import socket
import struct
from collections.abc import Callable
from typing import Any, Final, cast

from pgmux import __version__
from pgmux.config.model import DatabaseConfig
from pgmux.errors import PgmuxError
from pgmux.net import connector
from pgmux.net.protocols import crashed
from pgmux.net.sockopts import inherited, tune_tcp
from pgmux.net.tls import REQUIRED as TLS_REQUIRED
from pgmux.net.tls import accept_client_tls
from pgmux.pooling.pool import Pool
from pgmux.protocol.auth import ClientAuthenticator
from pgmux.runtime import client_auth, logdirect, welcome
from pgmux.runtime.handoff import Handoff
from pgmux.runtime.routing import is_split
from pgmux.session.client import ClientSession
from pgmux.session.params import startup_params, with_client_host
from pgmux.session.prepared import ClientStatements
from pgmux.session.replication import replication_mode
from pgmux.session.server import ServerTarget
from pgmux.session.states import ClientState

log = logging.getLogger("pgmux")

ADMIN_DATABASES: Final = ("pgbouncer", "pgmux")
_PEERCRED_SIZE: Final = struct.calcsize("3i")
_TWO_U32: Final = struct.Struct(">II")  # a cancel key's pid and key, from 8 random bytes


class Logins(Handoff):
    def new_client(self) -> ClientSession:
        cid = self.next_id
        self.next_id += 1
        c = ClientSession(cid, self, self.now(), self.hot.max_packet_size, self.sigs)
        self.clients[cid] = c
        self.arriving[cid] = c
        return c

    def new_protocol(self) -> ClientConnection:
        """The factory of the C Acceptor (net/listen.py, net/streams.Listener): a new client's protocol."""
        return ClientConnection(self)

    def accepted(self, c: ClientSession, transport: Any) -> None:
        """A new connection (ClientConnection.connection_made below, or net/protocols.py ClientProtocol's):
        the peer's address, and the tcp_* options where the listener did not give them already. asyncio
        and uvloop set TCP_NODELAY on TCP transports themselves. On the Unix socket the peer's uid decides
        admin access."""
        peer = transport.get_extra_info("peername")
        peer_uid: int | None = None
        if isinstance(peer, tuple):
            settings = self.config.settings
            if not inherited(settings):  # (when the listener has them, asking for the socket costs memory)
                sock = transport.get_extra_info("socket")
                if sock is not None:
                    tune_tcp(sock, settings)
            c.connection_made(transport, peer[0], peer[1], False, peer_uid)
            return
        sock = transport.get_extra_info("socket")
        try:
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED_SIZE)
            peer_uid = struct.unpack("3i", creds)[1]
        except (OSError, AttributeError):
            peer_uid = None
        c.connection_made(transport, "unix", 0, True, peer_uid)

    def start_tls(self, c: ClientSession, hello: bytes = b"") -> bool:
        """SSLRequest (or a ClientHello first: `hello`): True when a TLS handshake now runs on the
        client's connection (net/tls.py)."""
        return accept_client_tls(self, c, hello)

    def login(self, c: ClientSession, params: dict[str, str]) -> None:
        """The StartupMessage: decide whether and how this client may authenticate. Nothing that
        outlives the client is made here (no pool, no count, no cancel key): a client that never
        authenticates leaves nothing behind. client_authenticated() does the rest."""
        cfg = self.config
        s = self.hot  # (native fields: runtime/core.py)
        user = params.get("user", "")
        if not user:
            raise PgmuxError("no PostgreSQL user name specified in startup packet", sqlstate="28000",
                             severity="FATAL")
        dbname = params.get("database") or user
        c.set_identity(dbname, user)
        if self.shutting_down and dbname not in ADMIN_DATABASES:  # the console still works
            raise PgmuxError("pgmux is shutting down", sqlstate="57P03", severity="FATAL")
        # client_tls_sslmode require/verify-*: a TCP client that logs in without TLS is refused
        if (self.tls.client_mode in TLS_REQUIRED and not c.is_unix
                and c.transport.get_extra_info("ssl_object") is None):
            raise PgmuxError("SSL required", sqlstate="28000", severity="FATAL",
                             hint=f"client_tls_sslmode = {self.tls.client_mode}: connect with sslmode=require")
        console = dbname in ADMIN_DATABASES
        full = len(self.clients) > s.max_client_conn  # with workers: all of them (runtime/worker.py)
        if self.share is not None and not full:
            full = self.share.clients_full(len(self.clients), s.max_client_conn)
        if full and not (console and self.admission.console_may_exceed(c, user)):
            raise PgmuxError("no more connections allowed (max_client_conn)", sqlstate="53300", severity="FATAL")
        if "replication" in params:
            self._replication_login(c, params["replication"], dbname)
        if console:
            self._admin_login(c, user)
            return
        db = s.databases.get(dbname) or cfg.database(dbname)  # (the "*" fallback: the call)
        if db is None:
            raise PgmuxError(f'no such database: {dbname}', sqlstate="3D000", severity="FATAL",
                             hint="add it to [databases] in the pgmux configuration, or a \"*\" fallback line"
                             + ("; physical replication clients (pg_basebackup, pg_receivewal) ask for database "
                                "\"replication\"" if c.replication == "physical" else ""))
        if s.auth_type == "any" and not db.user:
            # As PgBouncer: unchecked names must not each get a pool (and a server login) of their own.
            raise PgmuxError(f'auth_type "any" needs a forced user, and database "{dbname}" has none',
                             sqlstate="28000", severity="FATAL",
                             hint=f"add user=NAME to the line of {dbname} in [databases]")
        # The exchange of auth_type, or what the auth_hba_file line, a certificate or peer decides (the call)
        auth_type = client_auth.EXCHANGES.get(s.auth_type) or client_auth.choose(self, c, dbname, user,
                                                                                 bool(c.replication))
        # auth_query (runtime/auth_query.py): a user auth_file does not list is looked up, not refused as unknown
        if auth_type != "any" and (db.auth_user or s.auth_user) is not None and user not in cfg.userlist:
            c.auth = None  # the session waits; _look_up gives it its authenticator
            self.spawn(self._look_up, c, db, user, auth_type)
        else:
            c.auth = ClientAuthenticator(auth_type, user, cfg.userlist.get(user), s.scram_iterations,
                                         None if self.tls.cbind is None else self.tls.cbind_for(c.transport))
        try:
            c.params = startup_params(params, s.ignore_startup_parameters)
        except ValueError as e:
            raise PgmuxError(f"unsupported startup parameter: {e}", sqlstate="08P01", severity="FATAL") from e
        if s.application_name_add_host:
            c.params["application_name"] = with_client_host(c.params.get("application_name"), c.addr, c.port,
                                                            c.is_unix, s.listen_port)

    async def _look_up(self, c: ClientSession, db: DatabaseConfig, user: str, auth_type: str) -> None:
        secret = await self.auth_query.lookup(db, user)
        if c.state is not ClientState.AUTH:
            return  # the client left (or timed out) meanwhile
        c.auth = ClientAuthenticator(auth_type, user, secret, self.config.settings.scram_iterations,
                                     self.tls.cbind_for(c.transport))
        try:
            c.begin_auth()
        except PgmuxError as e:
            c.fail(e)
        except Exception as e:  # noqa: BLE001 - never a traceback to the client
            self.log_exception(c.prefix, e)
            c.fail(PgmuxError(f"internal error in pgmux: {type(e).__name__}", sqlstate="XX000", severity="FATAL"))

    def _replication_login(self, c: ClientSession, value: str, dbname: str) -> None:
        """`replication=...` in the startup packet, read as PostgreSQL reads it (runtime/replication.py
        serves the connection once the client has authenticated)."""
        try:
            c.replication = replication_mode(value)
        except ValueError:
            raise PgmuxError(f'invalid value for parameter "replication": "{value}"', sqlstate="22023",
                             severity="FATAL", hint='Valid values are: "false", 0, "true", 1, "database".') from None
        if c.replication and dbname in ADMIN_DATABASES:
            raise PgmuxError("replication connections to the pgmux admin console are not supported",
                             sqlstate="08P01", severity="FATAL")

    def _admin_login(self, c: ClientSession, user: str) -> None:
        s = self.config.settings
        c.is_admin = True
        if c.is_unix and c.peer_uid is not None and c.peer_uid == os.getuid():
            c.admin_level = "admin"  # same OS user over the Unix socket, as PgBouncer allows
            c.auth = ClientAuthenticator("any", user, None)  # "trust" would still want the user in auth_file
            return
        if user in s.admin_users:
            c.admin_level = "admin"
        elif user in s.stats_users:
            c.admin_level = "stats"
        else:
            raise PgmuxError(f'not allowed: user "{user}" is in neither admin_users nor stats_users',
                             sqlstate="28000", severity="FATAL")
        c.auth = ClientAuthenticator(client_auth.choose(self, c, c.database, user), user,
                                     self.config.userlist.get(user), s.scram_iterations,
                                     self.tls.cbind_for(c.transport))

    def _new_cancel_key(self, c: ClientSession) -> None:
        # Our own BackendKeyData: a cancel names a client, and reaches whichever server serves it then.
        # Random bytes come from the OS in blocks: one getrandom() per 512 logins, not two per login;
        # read at an offset (slicing the rest off copied up to 4 KiB a login).
        first: int
        second: int
        while True:
            at = self._random_at
            if at + 8 > len(self._random):
                self._random, at = os.urandom(4096), 0
            first, second = _TWO_U32.unpack_from(self._random, at)  # (one call: no slices, no from_bytes)
            self._random_at = at + 8
            pid = first >> 1 or 1
            if self.share is not None:  # the low bits name this worker: a cancel finds its way here
                pid = self.share.tag_pid(pid)
            if pid not in self.by_cancel:
                break
        c.cancel_pid, c.cancel_key = pid, second >> 1
        self.by_cancel[pid] = c

    def client_authenticated(self, c: ClientSession) -> None:
        if self.hot.log_connections:
            # (the text made here, compiled: the same line as with %-arguments, without formatting at run time)
            logdirect.info(log, f"{c.prefix} login attempt: db={c.database} user={c.user}")
        self._new_cancel_key(c)
        self.events.client_login(self.now() - c.connect_time)
        if c.is_admin:
            if self.admin is not None:  # (unit tests drive the hub without start())
                self.admin.stats.client_login_count += 1
            c.send_welcome({"server_version": f"{__version__}/pgmux", "server_encoding": "UTF8",
                            "client_encoding": "UTF8", "DateStyle": "ISO", "TimeZone": "UTC",
                            "integer_datetimes": "on", "standard_conforming_strings": "on",
                            "application_name": c.startup.get("application_name", "")},
                           notify=self.config.settings.login_notify_message)
            return
        pool = self._join_pool(c)
        auth = c.auth
        if auth is not None and auth.client_key is not None and auth.server_key is not None:
            self.scram_keys[c.user] = (auth.client_key, auth.server_key)
        if auth is not None and auth.secret is not None and c.user not in self.config.userlist:
            self.auth_secrets[c.user] = auth.secret  # from auth_query: the server logins of its pool need it
        pool.stats.client_login_count += 1
        if c.replication:  # a server of its own, not from the pool (runtime/replication.py)
            self.replication.start(c)
            return
        if pool.server_params is not None:
            self.welcome(c)
        else:
            pool.add_login_waiter(c)
            self.launch(pool)

    def _join_pool(self, c: ClientSession) -> Pool[Any, Any]:
        """An authenticated client: count it (max_db/user_client_connections) and give it its pool,
        made now if it is the first of its (database, user)."""
        cfg = self.config
        dbname = c.database
        db = self.hot.databases.get(dbname) or cfg.database(dbname)
        if db is None:  # a reload removed it while the client logged in
            raise PgmuxError(f'no such database: {dbname}', sqlstate="3D000", severity="FATAL")
        server_user = db.user or c.user
        known = self.registry.pools.get((dbname, server_user))  # (Registry.get, without its Python call)
        if known is not None and known.disabled:
            raise PgmuxError(f"database \"{dbname}\" is disabled", sqlstate="57P03",  # PgBouncer's words
                             severity="FATAL")
        self.admission.admit(c, db)
        if db.read_write_split and is_split(db):  # one pool per host; each transaction is routed (runtime/routing.py)
            password = db.password if db.user else cfg.userlist.get(server_user)
            pool = self.routing.login_pool(c, db, server_user, password)
        else:
            pool = known or self.registry.get_or_create(dbname, server_user,
                                                        lambda: self.pool_setup(db, server_user))
        if pool.disabled:
            raise PgmuxError(f"database \"{dbname}\" is disabled", sqlstate="57P03", severity="FATAL")
        c.use_pool(pool)
        pool.refuse_pins = db.pin_mode == "refuse"
        c.watch = pool.mode != "session"
        if pool.mode != "session" and self.hot.max_prepared_statements > 0:
            c.stmts = ClientStatements(self.prepared, pool.stats)
        return pool

    def welcome(self, c: ClientSession, launch: bool = True) -> None:
        """Welcome a client of a pool whose servers' parameters are known, in PostgreSQL's spelling of its
        own (runtime/welcome.py: a server may have to apply them first)."""
        welcome.welcome(self, c, launch)

    def cancel_request(self, requester: ClientSession, pid: int, key: int) -> None:
        """A CancelRequest arrived on `requester`'s connection (already CLOSED as a session: it carries
        nothing else). Its connection ends when the cancel has reached the server, or at once when
        there is nothing to cancel."""
        self.clients.pop(requester.id, None)
        c = self.by_cancel.get(pid)
        # Keys are random 31-bit numbers; compare in constant time so a probe learns nothing.
        if c is None or not secrets.compare_digest(c.cancel_key.to_bytes(4, "big", signed=True),
                                                   key.to_bytes(4, "big", signed=True)):
            if self.share is not None and self.share.forward_cancel(self, requester, pid, key):
                return  # another worker's client (runtime/worker.py): passed on there
            log.info("cancel request for unknown or mismatched key ignored")
            requester.transport.close()
            return
        server = c.server
        if server is None:
            if c.replication:  # its own server (runtime/replication.py)
                found = self.replication.cancel_target(c)
                if found is not None:
                    self.spawn(self._send_cancel, requester, *found)
                    return
            requester.transport.close()
            return  # nothing running for this client now; PostgreSQL would ignore it too
        t = server.target
        log.info("%s sending cancel request to %s", c.prefix, server.prefix)
        self.spawn(self._send_cancel, requester, t, server.backend_pid, server.backend_key)

    async def _send_cancel(self, requester: ClientSession, t: ServerTarget, pid: int, key: int) -> None:
        wait = self.config.settings.cancel_wait_timeout
        try:
            # cancel_wait_timeout bounds how long the cancel may take to reach the server (0: no bound);
            # then the requester is disconnected, as PgBouncer does.
            await connector.send_cancel(t.host, t.port, t.unix_path, pid, key, wait)
        except TimeoutError:
            log.warning("cancel request to %s failed: not sent within cancel_wait_timeout (%gs)", t.label, wait)
        except OSError as e:
            log.warning("cancel request to %s failed: %s", t.label, e)
        finally:
            requester.transport.close()


class ClientConnection:
    """The protocol of a client accepted by the C Acceptor: net/protocols.py's ClientProtocol, compiled,
    so that an accept runs no Python frame (the factory and connection_made were two, about 6,000
    instructions of a login). The same interface: `session`, `data_received` (the session's own bound
    method, which the stream calls straight from C), the four callbacks, each guarding itself as
    ClientProtocol's do (net/protocols.crashed). ClientProtocol stays for uvloop's transports and for
    clients handed over from another process (runtime/handover.py)."""

    def __init__(self, app: Logins) -> None:
        self.session = app.new_client()
        self.data_received: Callable[[bytes], None] = self.session.data_received

    def connection_made(self, transport: Any) -> None:
        c = self.session
        try:
            cast(Logins, c.hub).accepted(c, transport)
        except Exception as e:  # noqa: BLE001 - see net/protocols.crashed()
            crashed(c, e, "connection_made")

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            self.session.connection_lost(exc)
        except Exception as e:  # noqa: BLE001
            crashed(self.session, e, "connection_lost")

    def pause_writing(self) -> None:
        try:
            self.session.pause_writing()
        except Exception as e:  # noqa: BLE001
            crashed(self.session, e, "pause_writing")

    def resume_writing(self) -> None:
        try:
            self.session.resume_writing()
        except Exception as e:  # noqa: BLE001
            crashed(self.session, e, "resume_writing")

    def eof_received(self) -> bool | None:
        return None  # (asyncio.Protocol's: the stream closes)
