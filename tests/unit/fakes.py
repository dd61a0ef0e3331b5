"""Test doubles for session playbooks: the real App hub, fake transports, a hand-turned clock.

No event loop and no sockets. `Rig` builds an App from an ini text, replaces the two places where the
App would need a loop (`spawn` for background tasks, the connect inside `_open_server`) and hands
each new server connection a FakeTransport at once, so a test plays PostgreSQL's side by feeding
bytes to the ServerSession and reads what pgmux wrote back.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pgmux.config import load_config
from pgmux.protocol import messages as m
from pgmux.protocol.codec import scan
from pgmux.runtime.app import App
from pgmux.session.states import ClientState

# What a PostgreSQL 16 server reports at login (a subset, in its order).
SERVER_PARAMS = {
    "application_name": "", "client_encoding": "UTF8", "DateStyle": "ISO, MDY", "integer_datetimes": "on",
    "IntervalStyle": "postgres", "server_encoding": "UTF8", "server_version": "16.4",
    "standard_conforming_strings": "on", "TimeZone": "UTC",
}
SERVER_PID, SERVER_KEY = 4242, 777


class FakeTransport:
    """Records every write; what arrives after close() is kept apart so tests can say there was none."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.after_close: list[bytes] = []
        self.closed = False
        self.paused = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        (self.after_close if self.closed else self.chunks).append(bytes(data))

    def writelines(self, parts: Iterable[bytes | memoryview]) -> None:
        self.write(b"".join(bytes(p) for p in parts))

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return 0

    def take(self) -> bytes:
        out = b"".join(self.chunks)
        self.chunks.clear()
        return out


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def frames(data: bytes) -> list[tuple[str, bytes]]:
    """Split a byte string of typed messages into (type, body); it must hold only whole messages."""
    msgs, pos = scan(data, 0, 1 << 30)
    assert pos == len(data), f"trailing partial message: {data[pos:]!r}"
    return [(chr(t), data[s + 5:s + n]) for t, s, n in msgs]


def error_fields(data: bytes) -> dict[str, str]:
    """The fields of the one ErrorResponse in `data` (other messages around it are allowed)."""
    errors = [body for t, body in frames(data) if t == "E"]
    assert len(errors) == 1, frames(data)
    return m.parse_error_fields(errors[0])


class Peer:
    """One session and the transport it writes to."""

    def __init__(self, session: Any, transport: FakeTransport) -> None:
        self.session = session
        self.transport = transport

    def send(self, data: bytes) -> None:
        self.session.data_received(data)

    def send_bytewise(self, data: bytes) -> None:
        for i in range(len(data)):
            self.session.data_received(data[i:i + 1])

    def take(self) -> bytes:
        return self.transport.take()

    @property
    def state(self) -> Any:
        return self.session.state


def reply(*parts: bytes, status: bytes = b"I") -> bytes:
    return b"".join(parts) + m.ready_for_query(status)


def select_one_reply() -> bytes:
    return reply(m.row_description([("x", m.OID_INT4)]), m.data_row([1]), m.command_complete("SELECT 1"))


class Rig:
    """An App over fake connections. `settings` lines go to [pgbouncer]; database `app` exists."""

    def __init__(self, tmp_path: Path, settings: str = "", databases: str = "",
                 users: Mapping[str, str] | None = None) -> None:
        users = {"alice": "secret", "bob": "secret"} if users is None else users
        (tmp_path / "userlist.txt").write_text("".join(f'"{u}" "{p}"\n' for u, p in users.items()))
        ini = (f"[databases]\napp = host=127.0.0.1 port=5432 dbname=appdb\n{databases}\n"
               f"[pgbouncer]\nauth_type = trust\nauth_file = {tmp_path / 'userlist.txt'}\n"
               f"pool_mode = transaction\ndefault_pool_size = 2\n{settings}\n")
        path = tmp_path / "pgbouncer.ini"
        path.write_text(ini)
        self.clock = Clock()
        self.app = App(load_config(str(path)), str(path))
        self.app.now = self.clock
        self.app.spawn = self._spawn
        self.spawned: list[tuple[str, tuple[Any, ...]]] = []  # background work the App asked for
        self.servers: list[Peer] = []  # every server connection opened, in order

    def _spawn(self, fn: Any, *args: Any) -> None:
        """Note what the App wanted to run in the background, and run none of it. A server connect is
        done here instead: the new server gets a fake transport at once."""
        name = fn.__name__.rpartition(".")[2]  # a method compiled by mypyc names its class too
        self.spawned.append((name, args))
        if name == "_connect":
            session = args[0]
            transport = FakeTransport()
            session.connection_made(transport)
            self.servers.append(Peer(session, transport))

    def connect(self, user: str = "alice", database: str = "app", **params: str) -> Peer:
        """A client that has sent its StartupMessage."""
        peer = self.new_client()
        peer.send(m.startup_message({"user": user, "database": database, **params}))
        return peer

    def new_client(self) -> Peer:
        session = self.app.new_client()
        transport = FakeTransport()
        session.connection_made(transport, "127.0.0.1", 5000 + session.id, False, None)
        return Peer(session, transport)

    @staticmethod
    def server_login(server: Peer, params: Mapping[str, str] = SERVER_PARAMS, pid: int = SERVER_PID,
                     key: int = SERVER_KEY) -> None:
        """Play PostgreSQL's side of a trust login."""
        server.take()  # the StartupMessage
        server.send(m.auth_ok() + b"".join(m.parameter_status(k, v) for k, v in params.items())
                    + m.backend_key_data(pid, key) + m.ready_for_query(b"I"))

    def login(self, user: str = "alice", database: str = "app", **params: str) -> Peer:
        """A logged-in client, its welcome taken. Logs a server in first if the pool has to open one, and
        answers the query that applies the client's reported parameters first, when pgmux sends one."""
        before = len(self.servers)
        client = self.connect(user, database, **params)
        for server in self.servers[before:]:
            self.server_login(server)
        if client.state is ClientState.LOGIN_WAIT:
            for server in self.servers:
                if server.session.client is client.session:
                    self.answer_probe(server)
        client.take()
        return client

    @staticmethod
    def answer_probe(server: Peer, spelling: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
        """Play PostgreSQL's side of the query that applies a client's startup parameters (`RESET k;SET k
        = 'v'` for each): each is reported back, in `spelling` when given. Returns the (k, v) pairs."""
        sql = server.take()[5:-1].decode()
        pairs = re.findall(r"RESET (\w+);SET \w+ = '((?:[^']|'')*)'", sql)
        assert pairs and sql.startswith("RESET "), sql
        out = []
        for k, v in pairs:
            v = v.replace("''", "'")
            out.append(m.command_complete("RESET") + m.command_complete("SET"))
            out.append(m.parameter_status(k, (spelling or {}).get(k, v)))
        server.send(b"".join(out) + m.ready_for_query(b"I"))
        return [(k, v.replace("''", "'")) for k, v in pairs]
