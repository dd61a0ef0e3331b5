"""One connection to PostgreSQL: login, then relaying its replies to the linked client.

Sans-IO: the transport is anything with write/close/pause_reading/resume_reading, and every
decision about pools goes to the hub (the runtime). On the relay path only message headers are
read; bodies are decoded for Z (transaction status), S (parameters), E (errors) and, during login,
R and K.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from pgmux.errors import PgmuxError, ProtocolViolation
from pgmux.protocol import messages as m
from pgmux.protocol.auth import ServerAuthenticator
from pgmux.protocol.codec import Buffer, noted_table, scan, walk
from pgmux.protocol.scans import ready
from pgmux.session.params import canon
from pgmux.session.passing import server_large, server_pass
from pgmux.session.pipeline import Entry, release, to_client
from pgmux.session.prepared import ServerStatements
from pgmux.session.states import S_ACTIVE, S_IDLE, S_LOGIN, SERVER_MOVES, IllegalTransition, ServerState
from pgmux.session.tracking import own_params

if TYPE_CHECKING:
    from pgmux.pooling.pool import Pool
    from pgmux.session.client import ClientSession
    from pgmux.session.hub import Hub
    from pgmux.session.prepared import Registry

_Z, _S, _E, _R, _K, _N = (ord(c) for c in "ZSERKN")
_G: Final = ord("G")  # CopyInResponse
_Z_LEN: Final = 6  # a ReadyForQuery: type, length 5, status
_NOTED: Final = noted_table("SEG")  # what the header-only relay looks at, besides ReadyForQuery
_D: Final = ord("D")  # DataRow
_LOGIN_MIN: Final = {_R: 4, _K: 8, _Z: 1}  # body sizes the login reads without looking
_IDLE_OK: Final = frozenset((_S, _N, ord("A")))  # what an idle server may send: ParameterStatus, notices
_I32: Final = struct.Struct("!i")
# Interned transaction-status bytes, so the hot path compares the same objects every time.
_STATUS: Final = {c: bytes((c,)) for c in range(256)}

# Replies are small; a server that claims a 1 GiB message is either broken or hostile.
MAX_SERVER_MESSAGE: Final = 1 << 30


@dataclass
class ServerTarget:
    """Where and as whom to log in: resolved from a [databases] line and the client's pool."""

    host: str | None
    port: int
    unix_path: str | None
    dbname: str
    user: str
    password: str | None = None
    scram_keys: tuple[bytes, bytes] | None = None
    startup: dict[str, str] = field(default_factory=dict)
    connect_query: str | None = None

    @property
    def label(self) -> str:
        return self.unix_path or f"{self.host}:{self.port}"


class ServerSession:
    __slots__ = ("id", "hub", "pool", "target", "transport", "state", "created_at", "idle_since",
                 "close_needed", "client", "owed", "tx_status", "params", "backend_pid", "backend_key",
                 "buf", "swallow", "swallow_error", "auth", "query_start", "link_time", "closed_reason",
                 "local_port", "paused", "connect_started", "prefix", "cq_sent", "extra", "sig", "copy_in",
                 "queue", "stmts", "unnamed_owner", "unnamed", "sql", "want_lsn", "lsn", "held", "release",
                 "checked", "skipping", "passing", "wpaused", "registry", "max_prepared")

    def __init__(self, sid: int, hub: Hub, pool: Pool[Any, Any], target: ServerTarget, now: float,
                 registry: Registry, max_prepared: int) -> None:
        self.id = sid
        self.hub = hub
        # Prepared statements, when tracked (pipeline.py): the process-wide registry of statement names,
        # and how many this server may hold (max_prepared_statements when the server was opened).
        self.registry = registry
        self.max_prepared = max_prepared
        self.pool = pool
        self.target = target
        self.transport: Any = None
        self.state = ServerState.LOGIN
        self.created_at = now
        self.idle_since = now
        self.connect_started = now
        self.close_needed = False
        self.client: ClientSession | None = None
        self.owed = 0  # ReadyForQuery messages the linked client is still owed
        self.copy_in = False  # CopyInResponse seen since the last ReadyForQuery (see ClientSession._relay)
        self.tx_status = b"I"
        self.params: dict[str, str] = {}
        self.extra: set[str] = set()  # unreported parameters a client had pgmux SET here
        self.sig: tuple[tuple[str, str], ...] | None = None  # the client params last synced here, if unchanged
        self.backend_pid = 0
        self.backend_key = 0
        self.buf = Buffer()
        self.swallow = 0  # ReadyForQuery messages of pgmux's own queries still to come and to swallow
        self.swallow_error: dict[str, str] | None = None
        self.auth = ServerAuthenticator(target.user, target.password, scram_keys=target.scram_keys)
        self.query_start = 0.0
        self.link_time = 0.0
        self.closed_reason = ""
        self.local_port = 0
        self.paused = False
        self.cq_sent = False
        self.prefix = f"S-{sid} {pool.database}/{pool.user}@{target.label}"
        # Requests whose replies pgmux must reorder, swallow or add to (session/pipeline.py); empty
        # unless prepared statements are tracked and a rewritten message is in flight.
        self.queue: deque[Entry] = deque()
        self.stmts: ServerStatements | None = None  # statements prepared here, when tracked
        self.unnamed_owner = 0  # id of the client whose unnamed statement this server may hold
        self.unnamed: bytes | None = None  # the Parse of the unnamed statement it holds, when known
        self.sql: dict[str, str] = {}  # SQL-level prepared statements held here, any client's: name -> PREPARE
        # A statement's shape being checked (session/pipeline.py, _check): the client's messages held
        # until the reply, whether it came, and the statement just checked while they go on.
        self.held: list[bytes] | None = None
        self.release = False
        self.checked = ""
        self.skipping = False  # an extended-protocol error came with no Sync in flight: the server skips to one
        self.want_lsn = False  # read-your-writes: pgmux's own query reads the WAL position (runtime/routing.py)
        self.lsn: str | None = None  # ... and what it read
        self.passing = 0  # bytes of a long reply still to come, forwarded as they arrive (see _large)
        self.wpaused = False  # the socket buffer towards the server is above its high-water mark

    # -- state ---------------------------------------------------------------------------------
    def move(self, new: ServerState) -> None:
        old = self.state  # the two moves of every transaction by identity first (as ClientSession.move)
        if new is S_ACTIVE and old is S_IDLE or new is S_IDLE and old is S_ACTIVE:
            self.state = new
            return
        if new not in SERVER_MOVES[old]:
            raise IllegalTransition(f"{self.prefix}: server state {self.state.value} -> {new.value}")
        self.state = new

    @property
    def clean(self) -> bool:
        """Nothing owed, no transaction open, no half-finished extended-protocol batch (nor one that
        failed, the server skipping to its Sync)."""
        c = self.client
        return (self.owed == 0 and self.swallow == 0 and self.tx_status == b"I" and not self.queue
                and not (c and c.unsynced) and not self.skipping)

    # -- I/O events ----------------------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        if self.hub.suspended:  # a connection begun before SUSPEND: it logs in after RESUME
            transport.pause_reading()
        params = {"user": self.target.user, "database": self.target.dbname}
        params.update(self.target.startup)
        transport.write(m.startup_message(params))

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.state is not ServerState.CLOSED:
            self.hub.server_closed(self, "server closed the connection unexpectedly" if exc is None else
                                   f"server connection lost: {exc}")

    def pause_reading(self) -> None:
        if not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.paused and self.transport is not None:
            self.paused = False
            if not self.hub.suspended:  # else RESUME resumes it (runtime/suspend.py)
                self.transport.resume_reading()

    def suspend(self, on: bool) -> None:
        """SUSPEND (on) and RESUME: stop or start reading, unless the client's writes keep it paused."""
        if self.transport is not None and not self.paused:
            if on:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    def send_internal(self, sql: str) -> None:
        """Run a query of pgmux's own; its replies are swallowed up to its ReadyForQuery, and its error
        kept for the hub (take_error)."""
        if not self.swallow:
            self.swallow_error = None
        self.swallow += 1
        self.transport.write(m.query(sql))

    def take_error(self) -> dict[str, str] | None:
        """The error of pgmux's own query (or connect_query) that just finished, if any; then forgotten."""
        err, self.swallow_error = self.swallow_error, None
        return err

    def data_received(self, data: bytes) -> None:
        """Every read from the server. After login this is the relay, inline (one call per reply)."""
        try:
            if self.state is S_LOGIN:
                self._login_data(data)
                return
            if self.passing:  # the rest of a long reply, forwarded as it comes
                data = server_pass(self, data)
                if not data:
                    return
            buf = self.buf
            if buf.pending:
                data = buf.feed(data)
                if not data:
                    return
            if self.swallow or self.client is None or self.queue:
                self._relay_slow(data)
                return
            # The usual reply (whole, one ReadyForQuery, last, nothing the relay must read): told by
            # scans.ready (in C where built) as one int, and handled as _relay_walk would handle it.
            # test_session_playbook.py holds the two to the same effects.
            z = ready(data, MAX_SERVER_MESSAGE, _NOTED)
            if z:
                n = len(data)
                self.owed -= 1
                self.copy_in = False
                self._forward(self.client, data, 0, n, z, n - 6)
                return
            self._relay_walk(data)
        except PgmuxError as e:
            self.hub.server_failed(self, e)
        except Exception as e:  # a bug: logged with its traceback, never a traceback to the client
            self.hub.server_crashed(self, e)

    def _relay_walk(self, data: bytes) -> None:
        """The relay of any reply to a linked client, nothing swallowed or queued: codec.walk (in C where
        built) finds the end, the ReadyForQuery messages, and the few other types the relay must look
        at; usually there are none, and no loop here."""
        n = len(data)
        try:
            pos, nz, z, zpos, items = walk(data, MAX_SERVER_MESSAGE, _NOTED)
        except ValueError as e:
            raise ProtocolViolation(f"invalid message length {e.args[1]} for message type "
                                    f"{chr(e.args[0])!r}") from None
        if items is None:
            if nz:
                self.owed -= nz
                self.copy_in = False
        else:
            for t, start, total in items:
                self._note(data, t, start, total)
        large = self.buf.keep(data, pos) if pos < n else False
        if pos == 0:
            if large:
                server_large(self)
            return
        self._forward(self.client, data, 0, pos, z, zpos)
        if large:
            server_large(self)

    # -- relay ---------------------------------------------------------------------------------
    def _note(self, data: bytes, t: int, start: int, total: int) -> None:
        """What both relays read in a reply they forward: ReadyForQuery settles one owed reply,
        ParameterStatus and ErrorResponse are decoded, CopyInResponse marks a COPY FROM STDIN."""
        if t == _Z:
            self.owed -= 1
            self.copy_in = False
        elif t == _S:
            self._param(data, start, total)
        elif t == _E:
            self._error(data, start, total)
        elif t == _G:
            self.copy_in = True

    def _relay_slow(self, data: bytes) -> None:
        """Replies while pgmux's own query is being swallowed, while no client is linked, or while
        the replies to rewritten requests are due."""
        msgs, pos = scan(data, 0, MAX_SERVER_MESSAGE)
        large = self.buf.keep(data, pos)
        if msgs:
            self._relay_msgs(data, msgs, pos)
        elif self.client is None and not self.swallow and pos < len(data):
            self._idle_data(msgs, 0, data[pos])  # a partial message from an idle server is judged now
            if self.state is ServerState.CLOSED:
                return
        if large:
            server_large(self)

    def _relay_msgs(self, data: bytes, msgs: list[tuple[int, int, int]], pos: int) -> None:
        first = 0
        if self.swallow:
            first = self._swallow(data, msgs)
            if first < 0:
                return
        client = self.client
        if self.queue and client is not None:
            self._relay_tracked(client, data, msgs, first, pos)
            return
        z = zpos = 0
        for t, start, total in msgs:
            if start < first:
                continue
            if t == _Z:
                z = data[start + 5]
                zpos = start
            self._note(data, t, start, total)
        if client is None:
            self._idle_data(msgs, first, data[pos] if pos < len(data) and not self.swallow else _S)
            return
        self._forward(client, data, first, pos, z, zpos)

    def _forward(self, client: ClientSession | None, data: bytes, first: int, pos: int, z: int, zpos: int) -> None:
        """The tail of both header-only relays: replies data[first:pos] to the client, then _ready()."""
        assert client is not None, "a relay forwards to a linked client"
        if z and self.owed <= 0:
            if z != 73 and self.pool.mode == "statement":
                pos = zpos  # withhold ReadyForQuery: BEGIN itself must fail, as in PgBouncer
            elif pos > zpos + _Z_LEN:
                self._forward_unasked(client, data, first, pos, z, zpos + _Z_LEN)
                return
        client.transport.write(data if first == 0 and pos == len(data) else memoryview(data)[first:pos])
        self.pool.stats.bytes_sent += pos - first
        if z:
            self._ready(client, z)

    def _forward_unasked(self, client: ClientSession, data: bytes, first: int, pos: int, z: int, end: int) -> None:
        """_forward() when the server sent more after the ReadyForQuery that ends its reply (at `end`):
        a notice, a ParameterStatus, or a FATAL as it is terminated (fast shutdown, pg_terminate_backend)."""
        view = memoryview(data)
        client.transport.write(view[first:end])
        self.pool.stats.bytes_sent += end - first
        self._ready_then(client, z, view[end:pos])

    def _ready_then(self, client: ClientSession, z: int, unasked: bytes | memoryview) -> None:
        """_ready(), then what the server sent after that ReadyForQuery, to the client only if it keeps
        this server: a client whose transaction is over must not hear its old server die (the FATAL,
        noted already, makes _ready() close that server instead of handing it on)."""
        self._ready(client, z)
        if unasked and self.client is client and self.state is not ServerState.CLOSED:
            client.transport.write(unasked)
            self.pool.stats.bytes_sent += len(unasked)

    def _ready(self, client: ClientSession, z: int) -> None:
        """A ReadyForQuery went to the client (every relay ends here): its status kept; when the server
        owes nothing more, the hub hears that the transaction (or statement) is over."""
        self.tx_status = b"I" if z == 73 else _STATUS[z]  # 'I', the usual: a constant (no int boxed, no dict read)
        if self.owed <= 0:
            self.owed = 0
            self.hub.server_ready(client, self)

    def _idle_data(self, msgs: list[tuple[int, int, int]], first: int, partial: int) -> None:
        """Between clients a server may still send a notice or a ParameterStatus; anything else means
        it is in an unknown state. `partial` is the type of a message not complete yet: judged now,
        or the server could go to a client with another message's first bytes in its buffer."""
        if self.state is not ServerState.CLOSED:
            if partial not in _IDLE_OK or any(t not in _IDLE_OK for t, s, _ in msgs if s >= first):
                self.hub.close_server(self, "unexpected data from idle server")

    def _relay_tracked(self, client: ClientSession, data: bytes, msgs: list[tuple[int, int, int]], first: int,
                       pos: int) -> None:
        """Replies to requests pgmux rewrote: see session/pipeline.py."""
        parts, z, zpos = to_client(self, data, msgs, first, pos)
        out = parts[0] if len(parts) == 1 else b"".join(parts)
        rest: bytes | memoryview = b""  # what the server sent after its last ReadyForQuery, passed as is
        unasked = pos - zpos - _Z_LEN if z and self.owed <= 0 else 0
        if unasked > 0 and out[len(out) - unasked:] == data[pos - unasked:pos]:
            rest, out = out[len(out) - unasked:], out[:len(out) - unasked]
        if out:
            client.transport.write(out)
        self.pool.stats.bytes_sent += len(out)
        if self.release:  # a statement's shape is known: the client's held messages go on
            release(self)
        if z:
            self._ready_then(client, z, rest)

    def _swallow(self, data: bytes, msgs: list[tuple[int, int, int]]) -> int:
        """Consume the replies to pgmux's own queries. Returns where the client's replies start, -1 if
        the whole chunk was swallowed."""
        for t, start, total in msgs:
            if not self.swallow:
                return start
            if t == _Z:
                self.swallow -= 1
                self.tx_status = _STATUS[data[start + 5]]
                if not self.swallow:
                    self.hub.internal_done(self)
            elif t == _S:
                name, value = self._param(data, start, total)
                # PostgreSQL reports a parameter the way it spells it ('utf-8' comes back as 'UTF8'):
                # take its spelling for the client too, or the two would never compare equal again.
                c = self.client
                if c is not None and name in c.params:
                    own_params(c)[name] = value
                    c.sig = None
            elif t == _E:
                self.swallow_error = m.parse_error_fields(memoryview(data)[start + 5:start + total])
                if self.swallow_error.get("S") in ("FATAL", "PANIC"):
                    self.close_needed = True
            elif t == _D and self.want_lsn:
                self.lsn = _first_value(data, start, total)
        return -1

    def _param(self, data: bytes, start: int, total: int) -> tuple[str, str]:
        parts = bytes(data[start + 5:start + total]).split(b"\x00")
        if len(parts) < 2:
            raise ProtocolViolation("malformed ParameterStatus from server")
        name, value = canon(parts[0].decode(errors="replace")), parts[1].decode(errors="replace")
        self.params[name] = value
        self.sig = None
        c = self.client
        if c is not None and name in c.params and c.params[name] != value:
            # A reported parameter the linked client changed (SET, RESET, a function, a rollback):
            # the server says its value, so the client carries it to its next server.
            own_params(c)[name] = value
            c.sig = None
        return name, value

    def _error(self, data: bytes, start: int, total: int) -> None:
        # A FATAL, or a class 08 error, means this server is gone or about to be: never reuse it. But an
        # ERROR 08P01 is PostgreSQL refusing a client's malformed message, and its session goes on.
        fields = m.parse_error_fields(memoryview(data)[start + 5:start + total])
        code = fields.get("C", "")
        severe = fields.get("S") in ("FATAL", "PANIC")
        if self.owed <= 0 and not severe:  # no Sync in flight: the server ignores all up to the next one
            self.skipping = True  # (a FATAL, say after the last ReadyForQuery, ends the session, not a batch)
        if severe or code.startswith("08") and code != "08P01":
            self.close_needed = True
            if self.pool.hstate is not None:  # a host of a split database: maybe the host is failing
                self.hub.host_error(self, fields)
        elif self.stmts is not None and fields.get("R") == "RevalidateCachedQuery" and fields.get("C") == "0A000":
            # "cached plan must not change result type": a statement prepared here before a DDL changed
            # its result type, bound by a client that holds it from before the DDL too (a later Parse
            # would have prepared it again: session/prepared.py), which gets this error directly too.
            # The copy stays broken for every client that shares it: prepare each again at next use.
            self.stmts.stale_all()
            self.registry.revalidate_error = bytes(data[start:start + total])  # in this server's words

    # -- login ---------------------------------------------------------------------------------
    def _login_data(self, data: bytes) -> None:
        data = self.buf.feed(data)
        msgs, pos = scan(data, 0, 1 << 20)
        self.buf.keep(data, pos)
        for t, start, total in msgs:
            body = data[start + 5:start + total]
            if total - 5 < _LOGIN_MIN.get(t, 0):
                raise ProtocolViolation(f"malformed message {chr(t)!r} from server during login")
            if t == _R:
                (code,) = _I32.unpack_from(body, 0)
                reply = self.auth.feed(code, bytes(body[4:]))
                if reply:
                    self.transport.write(reply)
            elif t == _S:
                self._param(data, start, total)
            elif t == _K:
                self.backend_pid, self.backend_key = struct.unpack_from("!ii", body, 0)
            elif t == _E:
                fields = m.parse_error_fields(body)
                if self.swallow:  # connect_query failed: the server is usable but the operator must know
                    self.swallow_error = fields
                    continue
                raise PgmuxError(fields.get("M", "server login failed"), sqlstate=fields.get("C", "08006"),
                                 severity="FATAL", detail=fields.get("D"), hint=fields.get("H"))
            elif t == _Z:
                self.tx_status = _STATUS[body[0]]
                if self.swallow:
                    self.swallow -= 1
                elif self.target.connect_query and not self.cq_sent:
                    self.cq_sent = True
                    self.send_internal(self.target.connect_query)
                    continue
                if not self.swallow:
                    self.hub.server_login_done(self)
                    return
            elif t in (_N, ord("v")):
                continue
            elif self.swallow:  # connect_query's own reply: rows, CommandComplete, EmptyQueryResponse
                continue
            else:
                raise ProtocolViolation(f"unexpected message {chr(t)!r} from server during login")


def _first_value(data: bytes, start: int, total: int) -> str | None:
    """The first column of a DataRow, as text (None for NULL or no column)."""
    if total < 11 or data[start + 5:start + 7] == b"\x00\x00":
        return None
    (size,) = _I32.unpack_from(data, start + 7)
    if size < 0:
        return None
    return bytes(data[start + 11:start + 11 + size]).decode(errors="replace")
