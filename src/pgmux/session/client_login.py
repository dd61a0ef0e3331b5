"""A client's startup and login: the startup packet (SSL, GSS and cancel requests, protocol
versions), the authentication exchange, and the welcome that ends it. Functions of a ClientSession
(session/client.py), kept apart from its relay; compiled with it (setup.py)."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Final

from pgmux.errors import ProtocolViolation
from pgmux.protocol import messages as m
from pgmux.protocol.codec import read_startup, scan
from pgmux.session.params import TRACKED, welcome
from pgmux.session.states import ClientState

if TYPE_CHECKING:
    from pgmux.session.client import ClientSession


_X: Final = ord("X")  # Terminate
_READY_IDLE: Final = m.ready_for_query(b"I")
# The reason a client that sent Terminate closes with (the hub closes its socket at once for it).
CLOSE_REQUEST: Final = "client close request"


def startup_data(c: ClientSession, data: bytes) -> None:
    if c.state is ClientState.REPLICATION:  # not startup: a replication client's bytes, as they come
        c.hub.replication_data(c, data)
        return
    if not c.sbuf and data[:1] == b"\x16" and c.state is ClientState.STARTUP and \
            c.hub.start_tls(c, data):
        return  # a TLS ClientHello first: direct TLS (PostgreSQL 17), the hub took the connection over
    c.sbuf += data
    while c.sbuf and c.state in (ClientState.STARTUP, ClientState.AUTH):
        if c.state is ClientState.STARTUP:
            if _seen_startup(c):
                continue
            res, used = read_startup(c.sbuf)
            if res is None:
                return
            packet, c.sbuf = c.sbuf[:used], c.sbuf[used:]
            if res.code == m.SSL_REQUEST_CODE:
                if c.sbuf:  # sent before our answer, so not encrypted: PostgreSQL refuses it too
                    raise ProtocolViolation("received unencrypted data after SSL request")
                if c.hub.start_tls(c):  # answered S; the startup packet comes encrypted
                    return
                c.transport.write(b"N")  # client TLS off (or the Unix socket): go on in plain text
            elif res.code == m.GSSENC_REQUEST_CODE:
                c.transport.write(b"N")
            elif res.code == m.CANCEL_REQUEST_CODE:
                # Not a client: a connection that carries one cancel, read no further. The hub
                # closes it once the cancel is passed on (or cancel_wait_timeout passed), as
                # PgBouncer does: its end tells the client the cancel was delivered.
                c.move(ClientState.CLOSED)
                c.sbuf = b""
                c.hub.cancel_request(c, res.key_pid, res.key_secret)
                return
            elif res.major != 3:
                raise ProtocolViolation(f"unsupported frontend protocol {res.major}.{res.minor}: "
                                        "server supports 3.0 to 3.0")
            else:
                _startup(c, res.params, res.minor, packet)
        else:
            msgs, pos = scan(c.sbuf, 0, 1 << 16)
            if not msgs:
                return
            mtype, start, total = msgs[0]
            body = c.sbuf[start + 5:start + total]
            c.sbuf = c.sbuf[start + total:]
            if mtype != ord("p"):  # PasswordMessage/SASL responses are lower-case 'p'
                raise ProtocolViolation(f"expected password response, got message type {chr(mtype)!r}")
            auth = c.auth
            if auth is None:  # still looking the user up: nothing was asked yet
                raise ProtocolViolation("unexpected password message before an authentication request")
            reply = auth.feed(b"p", body)
            if auth.done:
                c.auth_ok = reply  # goes out with the welcome, in one write
                c.move(ClientState.LOGIN_WAIT)
                c.hub.client_authenticated(c)
                c.auth = None  # done with: a few hundred bytes per idle client (issue 11)
            elif reply:
                c.transport.write(reply)

# StartupMessages (protocol 3.0, no protocol options) as earlier clients sent them, byte for byte, to
# their parameters (_shared's dict): pgbench -C, a pool's application servers and most drivers send the
# same packet every time, and it is parsed once (issue 14 item 6: a login's instructions).
_PACKETS: Final[dict[bytes, dict[str, str]]] = {}
_PACKET_MAX: Final = 2048  # longer ones are parsed each time (a bound on what the cache holds)


def _seen_startup(c: ClientSession) -> bool:
    """A StartupMessage equal to one seen before at the start of c.sbuf: log in with its parameters,
    as _startup would after parsing it."""
    buf = c.sbuf
    if len(buf) < 8:
        return False
    length = (buf[0] << 24) | (buf[1] << 16) | (buf[2] << 8) | buf[3]  # (native: int.from_bytes is a Python call)
    if length > _PACKET_MAX or len(buf) < length:
        return False
    params = _PACKETS.get(buf if len(buf) == length else buf[:length])
    if params is None:
        return False
    c.sbuf = buf[length:]
    _login(c, params)
    return True


def _startup(c: ClientSession, params: dict[str, str], minor: int, packet: bytes = b"") -> None:
    if minor > 0 or any(k.startswith("_pq_.") for k in params):
        # Newer minor versions and protocol options: say what we speak, as PostgreSQL does.
        unknown = [k for k in params if k.startswith("_pq_.")]
        body = struct.pack("!ii", m.PROTOCOL_V3, len(unknown)) + b"".join(m.cstr(k) for k in unknown)
        c.transport.write(m.message(m.NEGOTIATE_PROTOCOL_VERSION, body))
        params = _shared({k: v for k, v in params.items() if not k.startswith("_pq_.")})
    else:
        params = _shared(params)
        if packet and len(packet) <= _PACKET_MAX:
            if len(_PACKETS) >= 1024:  # a bound, against clients that log in with ever new values
                _PACKETS.clear()
            _PACKETS[packet] = params
    _login(c, params)


def _login(c: ClientSession, params: dict[str, str]) -> None:
    c.startup = params  # only ever read
    c.move(ClientState.AUTH)
    c.hub.login(c, params)  # sets identity, pool or admin, and c.auth; raises on refusal
    if c.state is ClientState.AUTH and c.auth is not None:  # None: auth_query looks the user up
        begin_auth(c)

def adopted(c: ClientSession) -> None:
    """Instead of a login: a client handed over by another pgmux process (runtime/handover.py), its
    session restored (session/handover.py), goes through the login's states at once to IDLE (its login
    happened in the other process; no welcome: it is in the middle of its session)."""
    c.move(ClientState.AUTH)  # (IllegalTransition unless a fresh client's STARTUP)
    c.move(ClientState.LOGIN_WAIT)
    c.move(ClientState.IDLE)


def begin_auth(c: ClientSession) -> None:
    """Send the first authentication request (or log in at once, for trust and the like)."""
    auth = c.auth
    if c.state is ClientState.AUTH and auth is not None:  # (set by the hub's login, or by auth_query)
        first = auth.start()
        if auth.done:  # trust: AuthenticationOk goes out with the welcome, in one write
            c.auth_ok = first
            c.move(ClientState.LOGIN_WAIT)
            c.hub.client_authenticated(c)
            c.auth = None
        elif first:
            c.transport.write(first)

def send_welcome(c: ClientSession, server_params: dict[str, str], tracked: tuple[str, ...] = TRACKED,
                 notify: str | None = None) -> None:
    """AuthenticationOk (held back by the login), then what PostgreSQL sends after it. The client's
    own reported parameters are in PostgreSQL's spelling by now (App.welcome)."""
    # (worked out once per kind of login: session/params.py) `after`: the client's parameters and the
    # pool's value of each tracked one it did not ask for, shared until changed (tracking.own_params).
    after, statuses, sig = welcome(server_params, c.params, tracked)
    c.sig = sig  # (catch_up's key for `after`, shared like it)
    c.params = c.initial = after
    out = [c.auth_ok, statuses, m.backend_key_data(c.cancel_pid, c.cancel_key)]
    c.auth_ok = b""
    if notify:  # PgBouncer's welcome notice: where PostgreSQL's own login notices go, before ReadyForQuery
        out.append(m.notice_response(notify))
    out.append(_READY_IDLE)
    c.transport.write(b"".join(out))
    c.move(ClientState.IDLE)
    if c.pending:
        c.hub.acquire(c)
    if c.sbuf:  # a client that pipelined its first query behind the password
        rest, c.sbuf = c.sbuf, b""
        c.held = False  # (reading paused while they piled up: resumed once they are relayed)
        c.data_received(rest)
        c._reading()


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


def admin_data(c: ClientSession, data: bytes) -> None:
    """A read of a client logged in to the admin console: its messages, one by one, to the hub."""
    data = c.buf.feed(data)
    msgs, pos = scan(data, 0, 1 << 20)
    if pos < len(data):
        c._own_buf().keep(data, pos)
    for t, start, total in msgs:
        body = bytes(data[start + 5:start + total])
        if t == _X:
            c.hub.client_closed(c, CLOSE_REQUEST)
            return
        c.hub.admin_message(c, t, body)
