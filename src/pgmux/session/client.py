"""One client connection: startup, authentication, then relaying its messages to whatever server
the pool lends it.

Sans-IO like ServerSession. The relay reads only headers: it counts what each message makes the
server owe (Query, Sync and FunctionCall each end in one ReadyForQuery), notes an extended-protocol
batch not yet closed by Sync (the server must stay linked until it is), and catches Terminate.
Everything else is forwarded as byte ranges, one write per read.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from pgmux.errors import PgmuxError, ProtocolViolation
from pgmux.protocol import messages as m
from pgmux.protocol.auth import ClientAuthenticator
from pgmux.protocol.codec import STREAM_FROM, Buffer
from pgmux.protocol.scans import COPY_MESSAGES, only_copy, query, steps
from pgmux.session import client_login
from pgmux.session.fastpath import same_batch
from pgmux.session.localparse import answer as local_parse
from pgmux.session.params import TRACKED, catch_up
from pgmux.session.passing import client_large, client_pass
from pgmux.session.pipeline import to_server
from pgmux.session.prepared import ClientStatements
from pgmux.session.states import (
    C_ACTIVE,
    C_IDLE,
    C_LOGIN_WAIT,
    C_WAITING,
    CLIENT_MOVES,
    ClientState,
    IllegalTransition,
)
from pgmux.session.tracking import Pins

if TYPE_CHECKING:
    from pgmux.pooling.pool import Pool
    from pgmux.session.hub import Hub
    from pgmux.session.server import ServerSession

# Equal parameter sets of clients share one tuple (see attach); the hub gives every client the same dict.
Sigs = dict[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]

log = logging.getLogger("pgmux")

# Reads queued for a server (each at most one read of the socket) before the client is read no more.
_MAX_QUEUED: Final = 16
_PARSE: Final = ord("P")
# ClientSession.pending_ext: what is queued needs session/pipeline.py's walk (_WALK), or is one batch of
# the unnamed statement the client sent last, which fastpath.same_batch may send as it is (_SAME).
_WALK: Final = 1
_SAME: Final = 2


class ClientSession:
    __slots__ = ("id", "hub", "transport", "addr", "port", "is_unix", "state", "user", "database",
                 "pool", "is_admin", "admin_level", "auth", "server", "pending", "pending_syncs",
                 "unsynced", "buf", "sbuf", "params", "startup", "cancel_pid", "cancel_key", "connect_time",
                 "request_time", "wait_since", "max_packet",
                 "xact_start", "peer_uid", "sig", "copy_syncs", "auth_ok",
                 "stmts", "skip", "pending_ext", "watch", "initial", "tx_effects", "q_error", "q_ends",
                 "pins", "pinned", "unnamed", "screened", "stmt_fx", "portal_fx", "sql", "q_sql", "route",
                 "lsn_wanted", "ryw_lsn", "admin_ext", "replication", "repl", "passing", "sink", "held", "throttled",
                 "rpaused", "sigs", "clock")

    def __init__(self, cid: int, hub: Hub, now: float, max_packet: int, sigs: Sigs) -> None:
        self.id = cid
        self.hub = hub
        self.sigs = sigs
        # The hub's clock, kept: read on every relayed read (one attribute read less each time).
        self.clock: Callable[[], float] = hub.now
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
        self.auth: ClientAuthenticator | None = None  # (typed: its calls are native, once per login)
        self.server: ServerSession | None = None
        # Complete messages waiting for a server: None while none waits (most clients are idle, issue 11:
        # a list each is 56 bytes), a list made by _push() (not a deque: an empty one costs 760 bytes).
        self.pending: list[bytes | memoryview] | None = None
        self.pending_syncs = 0
        self.unsynced = False  # an extended-protocol batch without its Sync yet
        self.auth_ok = b""  # the authenticator's last bytes (AuthenticationOk), sent with the welcome
        self.copy_syncs = 0  # Syncs sent since the last Execute: ignored by a backend in copy-in mode
        self.buf = _NO_BUF  # its own Buffer once a read ends inside a message (_own_buf)
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
        # Protocol-level prepared statements, when tracked (transaction/statement pooling with
        # max_prepared_statements > 0): see session/pipeline.py.
        self.stmts: ClientStatements | None = None
        self.skip = False  # pgmux answered an extended-protocol error itself: drop messages up to Sync
        self.pending_ext = 0  # self.pending holds messages for session/pipeline.py (_WALK, _SAME)
        # Session state from simple queries (transaction/statement pooling): see session/tracking.py.
        self.watch = False
        self.initial: dict[str, str] = {}  # params after login: what RESET goes back to
        self.tx_effects: list[Any] | None = None  # effects waiting for their transaction to commit
        self.q_error = False  # the watched Query in flight got an ErrorResponse
        self.q_ends: list[bool] | None = None  # ... and its COMMIT (False) and ROLLBACK (True) tags
        self.pins: Pins | None = None  # LISTEN, temp tables, advisory locks...: keep this server
        self.pinned = ""  # why the client keeps its server ("" when it does not): SHOW CLIENTS `pin`
        self.unnamed: bytes | None = None  # the client's last unnamed Parse, re-sent where it is missing
        self.screened: bytes | None = None  # the last unnamed Parse the screen passed (session/fastpath.py)
        self.stmt_fx: dict[bytes, tuple[Any, ...]] | None = None  # statements with session effects, by client name
        self.portal_fx: dict[bytes, tuple[Any, ...]] | None = None  # portals bound to those, by name
        self.sql: dict[str, str] | None = None  # SQL-level prepared statements: name -> PREPARE (sqlprepared.py)
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
        # (dropped when `sink`); reading paused while such a message (or a hand-over) waits (`held`), or
        # while the server's socket buffer is full (`throttled`); `rpaused` is what the transport was told.
        self.passing = 0
        self.sink = False
        self.held = False
        self.throttled = False
        self.rpaused = False

    def move(self, new: ClientState) -> None:
        """Every change of the client's state, checked against CLIENT_MOVES (session/states.py)."""
        old = self.state
        # The three moves of every transaction by identity first: hashing an Enum member twice costs
        # more than the rest of the move (test_states.py checks these are in CLIENT_MOVES).
        if (new is C_ACTIVE and (old is C_IDLE or old is C_WAITING) or new is C_IDLE and old is C_ACTIVE
                or new is C_WAITING and old is C_IDLE):
            self.state = new
            return
        if new not in CLIENT_MOVES[old]:
            raise IllegalTransition(f"{self.prefix}: client state {self.state.value} -> {new.value}")
        self.state = new

    def use_pool(self, pool: Pool[Any, Any]) -> None:
        """The pool this client's transactions take servers from: set at login, and changed by read/write
        routing (a host's pool) only while the client holds no server."""
        if self.server is not None and pool is not self.pool:
            raise IllegalTransition(f"{self.prefix}: pool changed while a server is linked")
        self.pool = pool

    def link(self, server: ServerSession, now: float) -> None:
        """Link `server` to this client: attach(), and the login probe (runtime/welcome.py)."""
        self.server = server
        server.client = self
        server.link_time = now

    def logged_in_pool(self) -> Pool[Any, Any]:
        """The pool of a client past login (found then, for its database and user)."""
        pool = self.pool
        assert pool is not None, "a client past login has its pool"
        return pool

    def connection_made(self, transport: Any, addr: str, port: int, is_unix: bool, peer_uid: int | None) -> None:
        self.transport = transport
        # One string for the clients of one host (issue 11: memory per idle client).
        self.addr, self.port, self.is_unix, self.peer_uid = sys.intern(addr), port, is_unix, peer_uid

    def set_identity(self, database: str, user: str) -> None:
        self.database, self.user = database, user

    @property
    def prefix(self) -> str:
        """Who this client is, at the start of its log lines: made when a line is written, not kept
        (issue 11: memory per idle client)."""
        if self.transport is None:
            return f"C-{self.id}"
        if self.is_unix:
            return f"C-{self.id} {self.database or '(nodb)'}/{self.user or '(nouser)'}@unix"
        return f"C-{self.id} {self.database or '(nodb)'}/{self.user or '(nouser)'}@{self.addr}:{self.port}"

    # -- I/O events ----------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        """Every read from the client. After login, a read of exactly one Query (the usual read of a
        simple-protocol client), or of one batch of the unnamed statement the client sent last (the
        usual read of an extended-protocol one), is relayed right here, with no walk; _relay() takes
        every other."""
        try:
            state = self.state  # compared by identity: C globals, no set lookup on every read
            if state is C_IDLE or state is C_ACTIVE or state is C_WAITING or state is C_LOGIN_WAIT:
                if self.sbuf:  # bytes pipelined behind the login are not relayed yet: keep their order
                    self.sbuf += data
                    if len(self.sbuf) > STREAM_FROM and not self.held:
                        self.held = True  # until the welcome: send_welcome() relays them, then reads on
                        self._reading()
                    return
                if self.is_admin:
                    client_login.admin_data(self, data)
                    return
                if self.passing:  # the rest of a long message, forwarded as it comes
                    data = client_pass(self, data)
                    if not data:
                        return
                buf = self.buf
                if buf.pending:
                    data = buf.feed(data)
                    if not data:
                        return
                kind = query(data, self.max_packet, self.screened)  # (in C where built: protocol/scans.py)
                if not kind:
                    self._relay(data)
                    return
                # A copy of _relay for its most common reads, without the walk and the memoryview (per
                # transaction); test_session_playbook.py holds both to the same effects.
                self.unsynced = False
                if kind == 3:  # Parse, Bind, Execute, Sync: ends in one Sync after an Execute (see steps)
                    self.copy_syncs = 1
                    track: Any = _SAME if self.stmts is not None or self.watch else False
                else:
                    self.copy_syncs = 0
                    track = kind == 2 and self.watch
                now = self.request_time = self.clock()
                self.logged_in_pool().stats.bytes_received += len(data)
                server = self.server
                if server is None or self.route is not None and self.hub.route_hold(self, server, data):
                    self._queue(data, 1, track, now)  # between transactions (the usual case)
                else:
                    self._send(server, data, now, 1, 0, track)
            elif self.state is not ClientState.CLOSED:
                client_login.startup_data(self, data)
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
        self.hub.log_pooler_error(self.prefix, err.message)

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

    # -- startup and authentication (session/client_login.py) ----------------------------------
    def begin_auth(self) -> None:
        """Send the first authentication request (or log in at once, for trust and the like)."""
        client_login.begin_auth(self)

    def send_welcome(self, server_params: dict[str, str], tracked: tuple[str, ...] = TRACKED,
                     notify: str | None = None) -> None:
        """AuthenticationOk (held back by the login), then what PostgreSQL sends after it."""
        client_login.send_welcome(self, server_params, tracked, notify)

    # -- relay: client -> server ---------------------------------------------------------------
    def _relay(self, data: bytes) -> None:
        """Every read but one whole Query (data_received relays that): complete messages only, the
        rest kept in self.buf for the next read."""
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
        large = self._own_buf().keep(data, pos) if pos < n and not terminate else False
        if pos > 0:
            now = self.request_time = self.clock()
            self.logged_in_pool().stats.bytes_received += pos
            chunk: bytes | memoryview = data if pos == n else memoryview(data)[:pos]
            server = self.server
            if server is not None and self.route is not None and self.hub.route_hold(self, server, chunk):
                server = None  # queued: routed on its own once this replica is done (runtime/routing.py)
            self.unsynced = unsynced
            self.copy_syncs = copy_syncs
            track = track or (ext and (self.stmts is not None or self.watch))
            if server is not None:
                self._send(server, chunk, now, syncs, ignored, track)
            elif not syncs and not self.pending and data[0] in COPY_MESSAGES and only_copy(chunk):
                # The rest of a COPY FROM STDIN that has already failed (asyncpg sends its CopyDone after
                # the error): PostgreSQL ignores it, and taking a server for it would hold that server.
                # (`syncs` first: a Query, the usual read here, is never that.)
                pass
            elif (syncs == 1 and ext and chunk[0] == _PARSE and chunk[5] != 0 and not unsynced  # a named Parse
                    and self.stmts is not None and self.state is C_IDLE and not self.pending and not self.skip
                    and (reply := local_parse(self, chunk)) is not None):
                self.transport.write(reply)  # statements pgmux knows: no server needed (session/localparse.py)
            else:
                self._queue(chunk if isinstance(chunk, bytes) else bytes(chunk), syncs, track, now)
        if terminate:
            self.hub.client_closed(self, client_login.CLOSE_REQUEST)
        elif large:
            self._large()

    def _queue(self, chunk: bytes, syncs: int, track: Any, now: float) -> None:
        """Complete messages no server takes yet: queued, and a server asked for. What waits stays
        bounded: past _MAX_QUEUED reads, reading stops until a server takes them."""
        pending = self._push(chunk)
        self.pending_syncs += syncs
        if track:  # (_SAME only while it is all that is queued)
            self.pending_ext = _SAME if track == _SAME and len(pending) == 1 else _WALK
        if self.state is C_IDLE:
            self.hub.acquire(self, now)
        elif len(pending) >= _MAX_QUEUED and not self.held:
            self._hold()

    def _push(self, data: bytes | memoryview) -> list[bytes | memoryview]:
        """`data` queued for a server: the queue, made for its first entry."""
        pending = self.pending
        if pending is None:
            pending = self.pending = [data]
        else:
            pending.append(data)
        return pending

    def _own_buf(self) -> Buffer:
        """This client's read buffer, to keep the start of a message in: made on first use."""
        buf = self.buf
        if buf is _NO_BUF:
            buf = self.buf = Buffer()
        return buf

    def _send(self, server: ServerSession, chunk: bytes | memoryview, now: float, syncs: int, ignored: int,
              track: Any) -> None:
        """Complete messages to the server this client holds; `syncs` replies owed for them, less
        `ignored` (Syncs the server reads in copy-in mode and does not answer)."""
        if syncs and not server.owed:
            server.query_start = now
            if self.xact_start == 0.0:  # a transaction starts on a server we keep (session mode, pinned)
                self.xact_start = now
        if track == _SAME and same_batch(self, server):
            server.owed += syncs - ignored
            server.transport.write(chunk)
        elif track or server.queue or self.tx_effects or server.skipping:
            # Statement names rewritten, the replies owed queued (before owed counts these Syncs).
            # (skipping: a Query the server skips after an error is owed nothing, pipeline.py)
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
        self.link(server, now)
        self.move(C_ACTIVE)
        if self.xact_start == 0.0:
            self.xact_start = now
        out = catch_up(self, server)
        if server.wpaused:  # its socket buffer is full already: wait before reading more
            self.throttle(True)
        if server.unnamed_owner != self.id:  # another client's query may have replaced or destroyed it
            server.unnamed = None
            server.unnamed_owner = self.id
        self.send_pending(server, now, out)

    def send_pending(self, server: ServerSession, now: float, out: list[bytes | memoryview] | None = None) -> None:
        """What we queued (after `out`, pgmux's own first messages), to `server`, which is ours: one write."""
        pending = self.pending
        if pending is not None:
            self.pending = None
            ext = self.pending_ext
            if ext:  # rewritten for this server; before owed counts the Syncs (pipeline.py)
                if ext != _SAME or len(pending) != 1 or not same_batch(self, server):
                    pending = to_server(self, server, b"".join(pending))
                self.pending_ext = 0
            if self.pending_syncs:
                server.query_start = now
                server.owed += self.pending_syncs
                self.pending_syncs = 0
        data: bytes | memoryview | None = None
        if out:
            if pending:
                out.extend(pending)
            data = out[0] if len(out) == 1 else b"".join(out)
        elif pending:
            data = pending[0] if len(pending) == 1 else b"".join(pending)  # one: the usual case
        if data:
            server.transport.write(data)
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
            self.move(C_IDLE)
        return server

    # -- long messages: streamed, or held up to a bound ------------------------------------------
    def _large(self) -> None:
        """The message self.buf keeps is longer than STREAM_FROM: held whole or streamed (passing.py;
        the rest of a streamed one goes through passing.client_pass)."""
        client_large(self)

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

    def suspend(self) -> None:
        """hub.suspended (runtime/suspend.py) or an idle client's `held` (runtime/handover.py) changed."""
        self._reading()

    def _reading(self) -> None:
        """Read from the client unless held, throttled, or the pooler is suspended (not for consoles)."""
        paused = self.held or self.throttled or (self.hub.suspended and not self.is_admin)
        if paused != self.rpaused and self.transport is not None and self.state is not ClientState.CLOSED:
            self.rpaused = paused
            if paused:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()


# The read buffer of every client that never had a read end inside a message (issue 11: most clients'
# reads are whole messages, and a Buffer each is 56 bytes per idle client). Only keep() fills a Buffer,
# and its callers here take _own_buf() first: this one stays empty.
_NO_BUF: Final = Buffer()
