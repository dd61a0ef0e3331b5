"""Replication connections (`replication=true|database|...` in the startup packet), as PgBouncer 1.23+
serves them: each such client gets a server connection of its own, opened for it with the same
`replication` value, never pooled, never lent to anyone else, closed when the client leaves.

Sans-IO like the other sessions. pgmux reads the server's login (authentication, ParameterStatus,
BackendKeyData, ReadyForQuery: the client's welcome is the server's own, with pgmux's BackendKeyData);
after that the bytes go both ways as they come, uninterpreted: the replication protocol (CopyBoth,
IDENTIFY_SYSTEM, START_REPLICATION, BASE_BACKUP, ...) is PostgreSQL's and the client's business.
The runtime (runtime/replication.py) opens the connection, applies the pool limits and closes both sides.
"""

from __future__ import annotations

import struct
from typing import Any

from pgmux.errors import ProtocolViolation
from pgmux.protocol import messages as m
from pgmux.protocol.auth import ServerAuthenticator
from pgmux.protocol.codec import Buffer, scan
from pgmux.session.states import SERVER_MOVES, IllegalTransition, ServerState

_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def replication_mode(value: str) -> str:
    """PostgreSQL's reading of the startup parameter: "logical" for `database`, "physical" for a true
    boolean, "" for a false one (an ordinary connection). Raises ValueError for anything else."""
    if value == "database":  # (case and all, as PostgreSQL compares it)
        return "logical"
    v = value.lower()
    # parse_bool: a unique prefix of true/false/yes/no, on/off (at least "of"), 1/0.
    if v and any(w.startswith(v) for w in _TRUE[:2]) or v in ("on", "1"):
        return "physical"
    if v and any(w.startswith(v) for w in _FALSE[:2]) or v in ("off", "of", "0"):
        return ""
    raise ValueError(value)


class ReplicationServer:
    """The server connection of one replication client. `owner` is the runtime's Replication."""

    def __init__(self, sid: int, owner: Any, client: Any, pool: Any, target: Any, startup: dict[str, str],
                 mode: str, now: float) -> None:
        self.id = sid
        self.owner = owner
        self.client = client
        self.pool = pool  # the client's pool: SHOW SERVERS names its database and user; never lent from it
        self.target = target
        self.startup = startup  # what the server is sent: the client's own startup parameters, as given
        self.mode = mode  # "physical" or "logical"
        self.transport: Any = None
        self.state = ServerState.LOGIN
        self.created_at = now
        self.connect_started = now
        self.link_time = now
        self.close_needed = False
        self.closed_reason = ""
        self.backend_pid = 0
        self.backend_key = 0
        self.local_port = 0
        self.wpaused = False  # its socket buffer is full (net/protocols.py): the client is throttled
        self.paused = False
        self.suspended = False  # SUSPEND (runtime/suspend.py): read nothing until RESUME
        self.stmts = None  # (SHOW SERVERS reads these two like a pooled server's)
        self.params: dict[str, str] = {}
        self.auth = ServerAuthenticator(target.user, target.password, scram_keys=target.scram_keys)
        self.buf = Buffer()
        self.welcome: list[bytes] = []  # the server's ParameterStatus and notices during login, raw
        self.early: list[bytes] = []  # what the client sent before the server was ready
        self.prefix = f"S-{sid} {pool.database}/{pool.user}@{target.label} (replication={mode})"

    # -- I/O events ------------------------------------------------------------------------------
    def move(self, new: ServerState) -> None:
        """Every change of state, checked against the pooled servers' table (session/states.py)."""
        if new not in SERVER_MOVES[self.state]:
            raise IllegalTransition(f"R-{self.id}: server state {self.state.value} -> {new.value}")
        self.state = new

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.write(m.startup_message(self.startup))

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.state is not ServerState.CLOSED:
            self.owner.server_closed(self, "server closed the connection" if exc is None
                                     else f"server connection lost: {exc}")

    def pause_reading(self) -> None:
        if not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.paused and self.transport is not None:
            self.paused = False
            if not self.suspended:
                self.transport.resume_reading()

    def suspend(self, on: bool) -> None:
        """SUSPEND (on) and RESUME: stop or start reading, unless the client's writes keep it paused."""
        self.suspended = on
        if self.transport is not None and not self.paused:
            if on:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.state is ServerState.ACTIVE:
            self.client.transport.write(data)  # the relay: as it comes
            return
        if self.state is ServerState.LOGIN:
            try:
                self._login_data(data)
            except ProtocolViolation as e:
                self.owner.login_failed(self, None, e.message)

    def forward(self, data: bytes) -> None:
        """Bytes from the client: to the server as they come, once it is ready for them."""
        if self.state is ServerState.ACTIVE:
            self.transport.write(data)
        elif self.state is ServerState.LOGIN:
            self.early.append(data)

    # -- login -----------------------------------------------------------------------------------
    def _login_data(self, data: bytes) -> None:
        data = self.buf.feed(data)
        msgs, pos = scan(data, 0, 1 << 20)
        self.buf.keep(data, pos)
        for t, start, total in msgs:
            raw = bytes(data[start:start + total])
            body = raw[5:]
            if t == ord("R"):
                (code,) = struct.unpack_from("!i", body, 0)
                reply = self.auth.feed(code, body[4:])
                if reply:
                    self.transport.write(reply)
            elif t == ord("S"):
                parts = body.split(b"\x00")
                if len(parts) >= 2:
                    self.params[parts[0].decode(errors="replace")] = parts[1].decode(errors="replace")
                self.welcome.append(raw)
            elif t == ord("N"):
                self.welcome.append(raw)
            elif t == ord("K"):
                self.backend_pid, self.backend_key = struct.unpack_from("!ii", body, 0)
            elif t == ord("E"):
                self.owner.login_failed(self, raw, m.parse_error_fields(body).get("M", "server login failed"))
                return
            elif t == ord("Z"):
                self.move(ServerState.ACTIVE)
                rest = bytes(data[start + total:])  # (the relay from here on: the kept tail too)
                self.buf = Buffer()
                self.owner.ready(self, raw)
                if rest:
                    self.client.transport.write(rest)
                return
            elif t != ord("v"):  # NegotiateProtocolVersion is harmless; anything else is not a login
                raise ProtocolViolation(f"unexpected message {chr(t)!r} from server during login")
