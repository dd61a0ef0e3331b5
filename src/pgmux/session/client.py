"""One client connection: startup, authentication, then relaying its messages to whatever server
the pool lends it.

Sans-IO like ServerSession. The relay reads only headers: it counts what each message makes the
server owe (Query, Sync and FunctionCall each end in one ReadyForQuery), notes an extended-protocol
batch not yet closed by Sync (the server must stay linked until it is), and catches Terminate.
Everything else is forwarded as byte ranges, one write per read.
"""

from __future__ import annotations

import logging
import struct
from typing import TYPE_CHECKING, Any, Final

from pgmux.errors import PgmuxError, ProtocolViolation
from pgmux.protocol import messages as m
from pgmux.protocol.codec import MAX_INSPECTED, STREAM_FROM, Buffer, read_startup, scan, unpack_len
from pgmux.session.params import TRACKED, sync_sql, welcome
from pgmux.session.pipeline import to_server
from pgmux.session.prepared import ClientStatements
from pgmux.session.states import C_ACTIVE, C_IDLE, C_LOGIN_WAIT, ClientState
from pgmux.session.tracking import Pins, query, steps

if TYPE_CHECKING:
    from pgmux.pooling.pool import Pool
    from pgmux.runtime.app import App
    from pgmux.session.server import ServerSession

log = logging.getLogger("pgmux")
_log = log

_X: Final = ord("X")
_Q: Final = ord("Q")
_F: Final = ord("F")
_COPY_DATA: Final = ord("d")
# What PostgreSQL's backend reads after login (postgres.c SocketBackend): messages that may be long,
# and those it refuses beyond 10000 bytes (PQ_SMALL_MESSAGE_LIMIT; pgmux refuses them beyond
# STREAM_FROM, at their header). Others it refuses whatever their length.
_LARGE: Final = frozenset(b"QFPBd")
_PG_LARGE_LIMIT: Final = 0x3FFFFFFE  # PostgreSQL's PQ_LARGE_MESSAGE_LIMIT, for those
# Reads queued for a server (each at most one read of the socket) before the client is read no more.
_MAX_QUEUED: Final = 16
_SMALL: Final = frozenset(b"SHECDXcf")
_NAMES: Final = {_Q: "Query", _F: "FunctionCall", ord("P"): "Parse", ord("B"): "Bind"}
_COPY_MSGS: Final = frozenset(ord(c) for c in "dcf")  # CopyData, CopyDone, CopyFail
_LOGGED_IN: Final = frozenset({ClientState.IDLE, ClientState.WAITING, ClientState.ACTIVE, ClientState.LOGIN_WAIT})


class ClientSession:
    __slots__ = ("id", "hub", "transport", "addr", "port", "is_unix", "state", "user", "database",
                 "pool", "is_admin", "admin_level", "auth", "server", "pending", "pending_syncs",
                 "unsynced", "buf", "sbuf", "params", "startup", "cancel_pid", "cancel_key", "connect_time",
                 "request_time", "wait_since", "prefix", "max_packet",
                 "xact_start", "peer_uid", "sig", "copy_syncs", "auth_ok",
                 "stmts", "skip", "pending_ext", "watch", "initial", "tx_effects", "q_error", "q_ends",
                 "pins", "pinned", "unnamed", "stmt_fx", "portal_fx", "sql", "q_sql", "route", "lsn_wanted",
                 "ryw_lsn", "admin_ext", "replication", "repl", "passing", "sink", "held", "throttled",
                 "rpaused")

    def __init__(self, cid: int, hub: App, now: float, max_packet: int) -> None:
        self.id = cid
        self.hub = hub
        self.transport: Any = None
        self.addr = "?"
        self.port = 0
        self.is_unix = False
        self.peer_uid: int | None = None
        self.state = ClientState.STARTUP
        self.user = ""
        self.database = ""
        self.pool: Pool[Any, Any] | None = None
        self.is_admin = False
        self.admin_level = ""  # "admin" or "stats" for console users
        self.auth: Any = None
        self.server: ServerSession | None = None
        # Complete messages waiting for a server. A list, not a deque: an empty list costs 56 bytes and
        # no block, an empty deque 760 (its first block), and most clients are idle (issue 11).
        self.pending: list[bytes | memoryview] = []
        self.pending_syncs = 0
        self.unsynced = False  # an extended-protocol batch without its Sync yet
        self.auth_ok = b""  # the authenticator's last bytes (AuthenticationOk), sent with the welcome
        self.copy_syncs = 0  # Syncs sent since the last Execute: ignored by a backend in copy-in mode
        self.buf = Buffer()
        self.sbuf = b""
        self.params: dict[str, str] = {}  # parameters this client asked for; set on every server it gets
        self.sig: tuple[tuple[str, str], ...] | None = None  # params as a tuple; None after a change
        self.startup: dict[str, str] = {}
        self.cancel_pid = 0
        self.cancel_key = 0
        self.connect_time = now
        self.request_time = now
        self.wait_since = now
        self.max_packet = max_packet
        self.xact_start = 0.0
        self.prefix = f"C-{cid}"
        # Protocol-level prepared statements, when tracked (transaction/statement pooling with
        # max_prepared_statements > 0): see session/pipeline.py.
        self.stmts: ClientStatements | None = None
        self.skip = False  # pgmux answered an extended-protocol error itself: drop messages up to Sync
        self.pending_ext = False  # self.pending holds messages for session/pipeline.py
        # Session state from simple queries (transaction/statement pooling): see session/tracking.py.
        self.watch = False
        self.initial: dict[str, str] = {}  # params after login: what RESET goes back to
        self.tx_effects: list[Any] = []  # effects waiting for their transaction to commit
        self.q_error = False  # the watched Query in flight got an ErrorResponse
        self.q_ends: list[bool] = []  # ... and its COMMIT (False) and ROLLBACK (True) tags
        self.pins: Pins | None = None  # LISTEN, temp tables, advisory locks...: keep this server
        self.pinned = ""  # why the client keeps its server ("" when it does not): SHOW CLIENTS `pin`
        self.unnamed: bytes | None = None  # the client's last unnamed Parse, re-sent where it is missing
        self.stmt_fx: dict[bytes, tuple[Any, ...]] = {}  # statements with session effects, by client name
        self.portal_fx: dict[bytes, tuple[Any, ...]] = {}  # portals bound to those, by name
        self.sql: dict[str, str] = {}  # SQL-level prepared statements: name -> PREPARE (session/sqlprepared.py)
        self.q_sql = 0  # PREPAREs/DEALLOCATEs the watched Query in flight has run so far
        # Read/write split (runtime/routing.py): the database's Split (router, checks), None when the
        # database is not split; whether the primary must tell this transaction's WAL position when it ends
        # (read-your-writes), and the last such position: later reads need a replica that far.
        self.route: Any = None
        self.lsn_wanted = False
        self.ryw_lsn = 0
        self.admin_ext: Any = None  # a console client's extended-protocol batch until Sync (admin_service.py)
        # A replication connection (startup `replication=...`): "physical" or "logical", and its own
        # server (session/replication.py), which no one else uses. "" and None for every other client.
        self.replication = ""
        self.repl: Any = None
        # Bounded memory (see _large): bytes of a long message still to come, forwarded as they arrive
        # (dropped when `sink`); reading paused while such a message waits for a server (`held`) or
        # while the server's socket buffer is full (`throttled`); `rpaused` is what the transport was told.
        self.passing = 0
        self.sink = False
        self.held = False
        self.throttled = False
        self.rpaused = False

    def logged_in_pool(self) -> Pool[Any, Any]:
        """The pool of a client past login (found then, for its database and user)."""
        pool = self.pool
        assert pool is not None, "a client past login has its pool"
        return pool

    def connection_made(self, transport: Any, addr: str, port: int, is_unix: bool, peer_uid: int | None) -> None:
        self.transport = transport
        self.addr, self.port, self.is_unix, self.peer_uid = addr, port, is_unix, peer_uid
        self.prefix = f"C-{self.id} (nodb)/(nouser)@{'unix' if is_unix else f'{addr}:{port}'}"

    def set_identity(self, database: str, user: str) -> None:
        self.database, self.user = database, user
        where = "unix" if self.is_unix else f"{self.addr}:{self.port}"
        self.prefix = f"C-{self.id} {database}/{user}@{where}"

    # -- I/O events ----------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        """Every read from the client. After login, a read of exactly one Query (the usual read of a
        simple-protocol client) is relayed right here, with no walk; _relay() takes every other."""
        try:
            if self.state in _LOGGED_IN:
                if self.sbuf:  # bytes pipelined behind the login are not relayed yet: keep their order
                    self.sbuf += data
                    if len(self.sbuf) > STREAM_FROM and not self.held:
                        self.held = True  # until the welcome: send_welcome() relays them, then reads on
                        self._reading()
                    return
                if self.is_admin:
                    self._admin_data(data)
                    return
                if self.passing:  # the rest of a long message, forwarded as it comes
                    data = self._pass(data)
                    if not data:
                        return
                buf = self.buf
                if buf.pending:
                    data = buf.feed(data)
                    if not data:
                        return
                kind = query(data, self.max_packet)  # (in C where built: session/tracking.py)
                if not kind:
                    self._relay(data)
                    return
                # Between transactions (the usual case) it is queued and a server asked for here.
                self.unsynced = False
                self.copy_syncs = 0
                now = self.request_time = self.hub.now()
                self.logged_in_pool().stats.bytes_received += len(data)
                track = kind == 2 and self.watch
                server = self.server
                if server is None or self.route is not None and self.hub.routing.hold(self, server, data):
                    self.pending.append(data)
                    self.pending_syncs += 1
                    if track:
                        self.pending_ext = True
                    if self.state is C_IDLE:
                        self.hub.acquire(self, now)
                    elif len(self.pending) >= _MAX_QUEUED and not self.held:
                        self._hold()
                else:
                    self._send(server, data, now, 1, 0, track)
            elif self.state is not ClientState.CLOSED:
                self._startup_data(data)
        except ProtocolViolation as e:  # the client's bytes break the protocol: its error, not a server's
            log.warning("%s client protocol error: %s", self.prefix, e.message)
            self.fail(e)
        except PgmuxError as e:
            self.fail(e)
        except Exception as e:  # never a traceback to the client: log it, answer in PostgreSQL's words
            self.hub.log_exception(self.prefix, e)
            self.fail(PgmuxError(f"internal error in pgmux: {type(e).__name__}", sqlstate="XX000",
                                 severity="FATAL"))

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.state is not ClientState.CLOSED:
            self.hub.client_closed(self, "client unexpected eof" if exc is None else f"client connection lost: {exc}")

    def pause_writing(self) -> None:
        if self.server is not None:
            self.server.pause_reading()
        elif self.repl is not None:
            self.repl.pause_reading()

    def resume_writing(self) -> None:
        if self.server is not None:
            self.server.resume_reading()
        elif self.repl is not None:
            self.repl.resume_reading()

    # -- errors and closing --------------------------------------------------------------------
    def send_error(self, err: PgmuxError, ready: bool = False) -> None:
        self.pooler_error(err)
        out = m.error_response(err.severity, err.sqlstate, err.message, detail=err.detail, hint=err.hint)
        if ready:
            out += m.ready_for_query(b"I")
        self.transport.write(out)

    def pooler_error(self, err: PgmuxError) -> None:
        """An error pgmux itself answers this client with: logged with log_pooler_errors, as PgBouncer does."""
        if self.hub.config.settings.log_pooler_errors:
            _log.warning("%s pooler error: %s", self.prefix, err.message)

    def fail(self, err: PgmuxError, close: bool | None = None) -> None:
        """Answer with an ErrorResponse; close the connection for FATAL (or when asked: PgBouncer
        reports its timeouts as ERROR and then disconnects)."""
        if self.state is ClientState.CLOSED:
            return
        if close is None:
            close = err.severity in ("FATAL", "PANIC")
        if close:
            self.send_error(err)
            self.hub.client_closed(self, err.message)
        else:
            self.send_error(err, ready=True)

    # -- startup and authentication ------------------------------------------------------------
    def _startup_data(self, data: bytes) -> None:
        if self.state is ClientState.REPLICATION:  # not startup: a replication client's bytes, as they come
            self.hub.replication.client_data(self, data)
            return
        if not self.sbuf and data[:1] == b"\x16" and self.state is ClientState.STARTUP and \
                self.hub.start_tls(self, data):
            return  # a TLS ClientHello first: direct TLS (PostgreSQL 17), the hub took the connection over
        self.sbuf += data
        while self.sbuf and self.state in (ClientState.STARTUP, ClientState.AUTH):
            if self.state is ClientState.STARTUP:
                res, used = read_startup(self.sbuf)
                if res is None:
                    return
                self.sbuf = self.sbuf[used:]
                if res.code == m.SSL_REQUEST_CODE:
                    if self.sbuf:  # sent before our answer, so not encrypted: PostgreSQL refuses it too
                        raise ProtocolViolation("received unencrypted data after SSL request")
                    if self.hub.start_tls(self):  # answered S; the startup packet comes encrypted
                        return
                    self.transport.write(b"N")  # client TLS off (or the Unix socket): go on in plain text
                elif res.code == m.GSSENC_REQUEST_CODE:
                    self.transport.write(b"N")
                elif res.code == m.CANCEL_REQUEST_CODE:
                    # Not a client: a connection that carries one cancel, read no further. The hub
                    # closes it once the cancel is passed on (or cancel_wait_timeout passed), as
                    # PgBouncer does: its end tells the client the cancel was delivered.
                    self.state = ClientState.CLOSED
                    self.sbuf = b""
                    self.hub.cancel_request(self, res.key_pid, res.key_secret)
                    return
                elif res.major != 3:
                    raise ProtocolViolation(f"unsupported frontend protocol {res.major}.{res.minor}: "
                                            "server supports 3.0 to 3.0")
                else:
                    self._startup(res.params, res.minor)
            else:
                msgs, pos = scan(self.sbuf, 0, 1 << 16)
                if not msgs:
                    return
                mtype, start, total = msgs[0]
                body = self.sbuf[start + 5:start + total]
                self.sbuf = self.sbuf[start + total:]
                if mtype != ord("p"):  # PasswordMessage/SASL responses are lower-case 'p'
                    raise ProtocolViolation(f"expected password response, got message type {chr(mtype)!r}")
                if self.auth is None:  # still looking the user up: nothing was asked yet
                    raise ProtocolViolation("unexpected password message before an authentication request")
                reply = self.auth.feed(b"p", body)
                if self.auth.done:
                    self.auth_ok = reply  # goes out with the welcome, in one write
                    self.state = ClientState.LOGIN_WAIT
                    self.hub.client_authenticated(self)
                    self.auth = None  # done with: a few hundred bytes per idle client (issue 11)
                elif reply:
                    self.transport.write(reply)

    def _startup(self, params: dict[str, str], minor: int) -> None:
        if minor > 0 or any(k.startswith("_pq_.") for k in params):
            # Newer minor versions and protocol options: say what we speak, as PostgreSQL does.
            unknown = [k for k in params if k.startswith("_pq_.")]
            body = struct.pack("!ii", m.PROTOCOL_V3, len(unknown)) + b"".join(m.cstr(k) for k in unknown)
            self.transport.write(m.message(m.NEGOTIATE_PROTOCOL_VERSION, body))
            params = {k: v for k, v in params.items() if not k.startswith("_pq_.")}
        self.startup = params = _shared(params)  # only ever read
        self.state = ClientState.AUTH
        self.hub.login(self, params)  # sets identity, pool or admin, and self.auth; raises on refusal
        if self.state is ClientState.AUTH and self.auth is not None:  # None: auth_query looks the user up
            self.begin_auth()

    def begin_auth(self) -> None:
        """Send the first authentication request (or log in at once, for trust and the like)."""
        if self.state is ClientState.AUTH:
            first = self.auth.start()
            if self.auth.done:  # trust: AuthenticationOk goes out with the welcome, in one write
                self.auth_ok = first
                self.state = ClientState.LOGIN_WAIT
                self.hub.client_authenticated(self)
                self.auth = None
            elif first:
                self.transport.write(first)

    def send_welcome(self, server_params: dict[str, str], tracked: tuple[str, ...] = TRACKED) -> None:
        """AuthenticationOk (held back by the login), then what PostgreSQL sends after it. The client's
        own reported parameters are in PostgreSQL's spelling by now (App.welcome)."""
        after, statuses = welcome(server_params, self.params, tracked)  # (worked out once per kind of login)
        self.params.update(after)  # + the pool's value of each tracked parameter the client did not ask for
        self.sig = None
        self.initial = after  # (shared: only ever read)
        out = [self.auth_ok, statuses, m.backend_key_data(self.cancel_pid, self.cancel_key)]
        self.auth_ok = b""
        notify = self.hub.config.settings.login_notify_message
        if notify:  # PgBouncer's welcome notice: where PostgreSQL's own login notices go, before ReadyForQuery
            out.append(m.notice_response(notify))
        out.append(m.ready_for_query(b"I"))
        self.transport.write(b"".join(out))
        self.state = ClientState.IDLE
        if self.pending:
            self.hub.acquire(self)
        if self.sbuf:  # a client that pipelined its first query behind the password
            rest, self.sbuf = self.sbuf, b""
            self.held = False  # (reading paused while they piled up: resumed once they are relayed)
            self.data_received(rest)
            self._reading()

    # -- relay: client -> server ---------------------------------------------------------------
    def _relay(self, data: bytes) -> None:
        """Every read but one whole Query (data_received relays that): complete messages only, the
        rest kept in self.buf for the next read."""
        buf = self.buf
        n = len(data)
        server = self.server
        copy_in = server is not None and server.copy_in
        try:
            # One call (in C where built: session/tracking.py) walks the complete messages.
            pos, syncs, copy_syncs, unsynced, ext, track, ignored, copy_in, terminate = steps(
                data, self.max_packet, self.copy_syncs, self.unsynced, self.watch, copy_in)
        except ValueError as e:
            raise ProtocolViolation(f"invalid message length {e.args[1]} for message type {chr(e.args[0])!r}") \
                from None
        if server is not None and server.copy_in and not copy_in:
            server.copy_in = False  # its CopyDone (or CopyFail) is in this read
        large = buf.keep(data, pos) if pos < n and not terminate else False
        if pos > 0:
            now = self.request_time = self.hub.now()
            self.logged_in_pool().stats.bytes_received += pos
            chunk: bytes | memoryview = data if pos == n else memoryview(data)[:pos]
            server = self.server
            if server is not None and self.route is not None and self.hub.routing.hold(self, server, chunk):
                server = None  # queued: routed on its own once this replica is done (runtime/routing.py)
            self.unsynced = unsynced
            self.copy_syncs = copy_syncs
            track = track or (ext and (self.stmts is not None or self.watch))
            if server is not None:
                self._send(server, chunk, now, syncs, ignored, track)
            elif not syncs and not self.pending and data[0] in _COPY_MSGS and _only_copy(chunk):
                # The rest of a COPY FROM STDIN that has already failed (asyncpg sends its CopyDone after
                # the error): PostgreSQL ignores it, and taking a server for it would hold that server.
                # (`syncs` first: a Query, the usual read here, is never that.)
                pass
            else:
                self.pending.append(bytes(chunk))
                self.pending_syncs += syncs
                self.pending_ext = self.pending_ext or track
                if self.state is C_IDLE:
                    self.hub.acquire(self, now)
                elif len(self.pending) >= _MAX_QUEUED and not self.held:
                    self._hold()  # what waits for a server stays bounded: reads stop until one takes it
        if terminate:
            self.hub.client_closed(self, "client close request")
        elif large:
            self._large()

    def _send(self, server: ServerSession, chunk: bytes | memoryview, now: float, syncs: int, ignored: int,
              track: Any) -> None:
        """Complete messages to the server this client holds; `syncs` replies owed for them, less
        `ignored` (Syncs the server reads in copy-in mode and does not answer)."""
        if syncs and not server.owed:
            server.query_start = now
            if self.xact_start == 0.0:  # a transaction starts on a server we keep (session mode, pinned)
                self.xact_start = now
        if track or server.queue or self.tx_effects:
            # Statement names rewritten, the replies owed queued (before owed counts these Syncs).
            parts = to_server(self, server, chunk, ignored)
            server.owed += syncs - ignored
            out = parts[0] if len(parts) == 1 else b"".join(parts)  # one part: the chunk as it came, usually
            if out:
                server.transport.write(out)
        else:
            server.owed += syncs - ignored
            server.transport.write(chunk)

    def attach(self, server: ServerSession, now: float) -> None:
        """The pool lends us `server`: bring its parameters to ours, then send what we queued."""
        if self.state is C_LOGIN_WAIT:  # still logging in: the server is to tell how it spells our parameters
            self.hub.probe(self, server, now)
            return
        self.server = server
        server.client = self
        self.state = C_ACTIVE
        server.link_time = now
        if self.xact_start == 0.0:
            self.xact_start = now
        # Clients of one pool mostly ask for the same parameters. Equal sets share one tuple (App.sigs),
        # so when this server was last brought to ours and nothing changed either since, `is` says so.
        sig = self.sig
        if sig is None:
            sigs = self.hub.sigs
            if len(sigs) >= 1024:  # a bound, against clients that SET ever new values
                sigs.clear()
            sig = tuple(self.params.items())
            sig = self.sig = sigs.setdefault(sig, sig)
        out: list[bytes | memoryview] | None = None
        if server.sig is not sig and server.sig != sig:
            sql = sync_sql(self.params, server.params, server.extra)
            if sql is not None:
                server.swallow += 1
                server.swallow_error = None
                out = [m.query(sql)]
                server.params.update(self.params)
                reported = self.logged_in_pool().server_params or {}
                server.extra.update(k for k in self.params if k not in reported)
            server.sig = sig
        if server.wpaused:  # its socket buffer is full already: wait before reading more
            self.throttle(True)
        if server.unnamed_owner != self.id:  # another client's query may have replaced or destroyed it
            server.unnamed = None
            server.unnamed_owner = self.id
        pending = self.pending
        if out is None and len(pending) == 1 and not self.pending_ext:
            # send_pending() for the usual case, inline: one queued query, nothing to sync first.
            if self.pending_syncs:
                server.query_start = now
                server.owed += self.pending_syncs
                self.pending_syncs = 0
            server.transport.write(pending.pop())
            if self.held:
                self._release()
            return
        self.send_pending(server, now, out)

    def send_pending(self, server: ServerSession, now: float, out: list[bytes | memoryview] | None = None) -> None:
        """What we queued (after `out`, pgmux's own first messages), to `server`, which is ours."""
        out = [] if out is None else out
        pending = self.pending
        if pending:
            if self.pending_ext:  # rewritten for this server; before owed counts the Syncs (pipeline.py)
                rewritten = to_server(self, server, b"".join(pending))
                pending.clear()
                pending.extend(rewritten)
                self.pending_ext = False
            if self.pending_syncs:
                server.query_start = now
                server.owed += self.pending_syncs
                self.pending_syncs = 0
            if not out and len(pending) == 1:  # the common case: one queued query, nothing to sync
                data = pending[0]
                pending.clear()
                server.transport.write(data)
                if self.held:
                    self._release()
                return
            out.extend(pending)
            pending.clear()
        if len(out) == 1:
            server.transport.write(out[0])
        elif out:
            server.transport.write(b"".join(out))
        if self.held:
            self._release()

    def detach(self) -> ServerSession | None:
        server, self.server = self.server, None
        if server is not None:
            server.client = None
            if server.paused:
                server.resume_reading()
        if self.throttled:  # that server's socket buffer is no longer this client's business
            self.throttle(False)
        if self.state is C_ACTIVE:
            self.state = C_IDLE
        return server

    # -- long messages: streamed, or held up to a bound ------------------------------------------
    def _large(self) -> None:
        """The message self.buf keeps is longer than STREAM_FROM (codec.py). A message pgmux reads
        whole is held, up to MAX_INSPECTED; anything else is forwarded as it arrives (_pass), so
        that what one connection holds stays bounded whatever length a message claims."""
        buf = self.buf
        t = buf.pending[0]
        total = buf.need
        if t in _SMALL:  # as PostgreSQL's backend refuses them (postgres.c)
            raise ProtocolViolation(f"invalid message length {total - 1} for message type {chr(t)!r}")
        if t not in _LARGE:
            raise ProtocolViolation(f"invalid frontend message type {t}")
        if total - 1 > _PG_LARGE_LIMIT:  # PostgreSQL would drop the connection at this header
            raise ProtocolViolation(f"invalid message length {total - 1} for message type {chr(t)!r}")
        server = self.server
        if t != _COPY_DATA and (self.watch or self.stmts is not None or self.route is not None) \
                or self.route is not None and (server is None or self.pending):
            if total > MAX_INSPECTED:
                raise PgmuxError(
                    f"message too long: a {_NAMES.get(t, chr(t))} of {total} bytes, and pgmux reads these whole "
                    f"to track session state or route them, up to {MAX_INSPECTED} bytes",
                    sqlstate="54000", severity="FATAL",
                    hint="use session pooling for this client, or send smaller messages")
            return  # held whole (bounded): completed by buf.feed() in data_received
        part = buf.take()
        self.passing = total - len(part)
        syncs = 1 if t == _Q or t == _F else 0
        if syncs:
            self.unsynced = False
            self.copy_syncs = 0
        elif t != _COPY_DATA:
            self.unsynced = True  # a Parse or a Bind
        now = self.request_time = self.hub.now()
        self.logged_in_pool().stats.bytes_received += len(part)
        if server is not None and not self.pending:
            if syncs and not server.owed:
                server.query_start = now
            server.owed += syncs
            server.transport.write(part)
        elif t == _COPY_DATA and not self.pending:
            self.sink = True  # the rest of a failed COPY FROM STDIN: PostgreSQL would drop it too
        else:
            self.pending.append(part)
            self.pending_syncs += syncs
            self._hold()

    def _pass(self, data: bytes) -> bytes:
        """The next bytes of a long message (see _large): forwarded (or dropped); returns what follows it."""
        left = self.passing
        n = len(data)
        part: bytes | memoryview = data
        rest = b""
        if left < n:
            part = memoryview(data)[:left]
            rest = data[left:]
            self.passing = 0
        else:
            self.passing = left - n
        if self.sink:
            if not self.passing:
                self.sink = False
            return rest
        self.logged_in_pool().stats.bytes_received += len(part)
        server = self.server
        if server is not None and not self.held:
            server.transport.write(part)
            if (not self.passing and not server.owed and server.tx_status == b"I" and not server.queue
                    and not self.unsynced):
                # Its replies came while the message was still on its way (a COPY that failed early):
                # the server was kept for the rest (App.server_ready); now it can go.
                self.hub.server_ready(self, server)
        else:  # read before the pause took effect: queued behind the start of the message
            self.pending.append(bytes(part))
            self._hold()
        return rest

    def _hold(self) -> None:
        """Stop reading until a server takes what is queued (attach/send_pending release it)."""
        self.held = True
        self._reading()
        if self.state is C_IDLE:
            self.hub.acquire(self, self.hub.now())

    def _release(self) -> None:
        self.held = False
        self._reading()

    def throttle(self, on: bool) -> None:
        """The linked server's socket buffer went above (or back below) its high-water mark."""
        self.throttled = on
        self._reading()

    def _reading(self) -> None:
        paused = self.held or self.throttled
        if paused != self.rpaused and self.transport is not None and self.state is not ClientState.CLOSED:
            self.rpaused = paused
            if paused:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    # -- admin console -------------------------------------------------------------------------
    def _admin_data(self, data: bytes) -> None:
        data = self.buf.feed(data)
        msgs, pos = scan(data, 0, 1 << 20)
        self.buf.keep(data, pos)
        for t, start, total in msgs:
            body = bytes(data[start + 5:start + total])
            if t == _X:
                self.hub.client_closed(self, "client close request")
                return
            self.hub.admin_message(self, t, body)


def _only_copy(chunk: bytes | memoryview) -> bool:
    """Whether the complete messages in `chunk` are all CopyData, CopyDone or CopyFail."""
    pos, n = 0, len(chunk)
    while pos < n:
        if chunk[pos] not in _COPY_MSGS:
            return False
        pos += 1 + unpack_len(chunk, pos + 1)[0]
    return True


_SHARED: Final[dict[tuple[tuple[str, str], ...], dict[str, str]]] = {}


def _shared(params: dict[str, str]) -> dict[str, str]:
    """One dict for equal ones that are only ever read (the startup packet's parameters; those after
    login, which RESET goes back to): the same for most clients of a pool, and a few hundred bytes each
    per idle client (issue 11)."""
    key = tuple(params.items())
    found = _SHARED.get(key)
    if found is None:
        if len(_SHARED) >= 1024:  # a bound, against clients that log in with ever new values
            _SHARED.clear()
        found = _SHARED[key] = dict(params)
    return found
