"""TLS on the event loop's own TCP transport: an ssl.SSLObject and two memory BIOs, driven by pgmux.

One TlsConnection is both the protocol of the plain TCP transport and the transport the session
writes to, so a read is: the loop reads the socket (as for plain TCP), the ciphertext goes into the
incoming BIO, each complete record comes out as plaintext, and the session gets it in one call; a
write is one SSL_write into the outgoing BIO and one write of the records to the socket. The syscalls
are those of plain TCP: one read and one write per message exchange. Once the handshake is done, the
SSL_reads of a read and the SSL_write of a write are one call each into pgmux._tlspump (C), where it
is built; the ssl module's calls otherwise (the same OpenSSL objects either way).

Why not loop.start_tls (uvloop's SSLProtocol, which does the same with more layers): per read it
asks for 256 KiB of plaintext (a 256 KiB bytes object allocated, then shrunk, on every read), goes
through ssl.py's Python wrappers (SSLObject.read, .pending, .write: Python frames on a path that is
otherwise compiled), and checks its flow control twice; the handshake needs a task and two loop
iterations before the session has its transport. What it cost per
transaction, before and after: README.md, Benchmark.

Fail closed: a handshake that fails, times out, or is cut sends what OpenSSL has to say (an alert)
and closes the socket; the session never sees a byte that did not come out of SSL_read. A record
that fails to decrypt or any other TLS error closes the connection (the session gets
connection_lost). A peer's close_notify closes our side too.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import Any, Final


def _load_pump() -> Any:
    """pgmux._tlspump.Pump (C): the records of an open connection without the ssl module's Python-level
    calls and GIL switches; None where it was not built (the ssl module's path below then)."""
    try:
        from pgmux import _tlspump
    except ImportError:
        return None
    return _tlspump.Pump


_PUMP: Final[Any] = _load_pump()

# At most one record's plaintext (16 KiB) comes out of one SSL_read. The ssl module allocates the size
# asked for before it reads (then shrinks it), so ask for no more than the ciphertext at hand: a small
# reply's plaintext then fits in a small allocation (CPython's own allocator, not malloc's).
READ_SIZE: Final = 16384

# (Final: C constants in the compiled module; a plain module global is a dict lookup at every read.)
_HANDSHAKE: Final = 0
_OPEN: Final = 1
_CLOSING: Final = 2  # close() called: our close_notify went out, the socket closes once its buffer is sent
_CLOSED: Final = 3

# done(tls, None) once the handshake is complete; done(tls, exc) when it failed or the peer left
Done = Callable[["TlsConnection", "BaseException | None"], None]


class TlsConnection:
    """A TLS connection over `raw` (an asyncio transport whose protocol this becomes at once)."""

    def __init__(self, raw: Any, ctx: ssl.SSLContext, server_side: bool, server_hostname: str | None,
                 timeout: float, done: Done) -> None:
        self.raw = raw
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj: ssl.SSLObject = ctx.wrap_bio(self.incoming, self.outgoing, server_side=server_side,
                                               server_hostname=server_hostname)
        # The C object behind SSLObject: its read/write/pending without ssl.py's Python frame each.
        c: Any = getattr(self.obj, "_sslobj", self.obj)
        self._read: Callable[[int], bytes] = c.read
        self._write: Callable[[Any], int] = c.write
        self._pending: Callable[[], int] = c.pending
        self._raw_write: Callable[[Any], None] = raw.write
        self._feed: Callable[[bytes], int] = self.incoming.write
        self._drain: Callable[[], bytes] = self.outgoing.read
        self.tls_state = _HANDSHAKE
        self.done: Done | None = done
        self.app: Any = None  # the session's protocol (ClientProtocol/ServerProtocol), once attached
        self._deliver: Callable[[bytes], None] | None = None
        self.held: list[bytes] = []  # plaintext that came before attach()
        self.queued: list[bytes] = []  # writes before the handshake completed
        self.lost = False  # the connection ended before attach()
        self.error: BaseException | None = None  # the TLS error that ended it, for connection_lost
        self.timer: asyncio.TimerHandle | None = None
        self.pump: Any = None  # the C pump, once the handshake is done (None: the ssl module's path)
        if timeout > 0:
            self.timer = asyncio.get_running_loop().call_later(timeout, self._timed_out)
        raw.set_protocol(self)

    def start(self) -> None:
        """The client side speaks first: send the ClientHello."""
        self._handshake()

    # -- the session's side: a transport -------------------------------------------------------

    @property
    def session(self) -> Any:
        """For the loop's exception handler (net/protocols.py), which looks for the session."""
        return getattr(self.app, "session", None)

    def attach(self, protocol: Any) -> None:
        """The session's protocol gets the plaintext from now on (and what came before, at once)."""
        self.app = protocol
        self._deliver = protocol.data_received
        if self.held:
            data = b"".join(self.held)
            self.held = []
            protocol.data_received(data)

    def set_protocol(self, protocol: Any) -> None:
        self.attach(protocol)

    def get_protocol(self) -> Any:
        return self.app

    def write(self, data: Any) -> None:
        if self.tls_state != _OPEN:
            if self.tls_state == _HANDSHAKE and data:
                self.queued.append(bytes(data))
            return  # closing or closed: dropped, as asyncio's transports do
        if not data:
            return
        pump = self.pump
        try:
            if pump is not None:
                self._raw_write(pump.encrypt(data))
                return
            self._write(data)
        except ssl.SSLError as e:
            self._fatal(e)
            return
        self._raw_write(self._drain())

    def writelines(self, parts: Any) -> None:
        self.write(b"".join(parts))

    def close(self) -> None:
        """close_notify, then the socket closes once what is buffered is sent."""
        if self.tls_state >= _CLOSING:
            return
        was_open = self.tls_state == _OPEN
        self.tls_state = _CLOSING
        self._cancel_timer()
        if was_open:
            try:
                self.obj.unwrap()
            except (ssl.SSLError, ValueError):
                pass  # SSLWantReadError: the peer's close_notify is not awaited
            if self.outgoing.pending:
                self._raw_write(self.outgoing.read())
        self.raw.close()

    def abort(self) -> None:
        self.tls_state = _CLOSED
        self._cancel_timer()
        self.raw.abort()

    def is_closing(self) -> bool:
        return self.tls_state >= _CLOSING or bool(self.raw.is_closing())

    def pause_reading(self) -> None:
        self.raw.pause_reading()

    def resume_reading(self) -> None:
        self.raw.resume_reading()

    def get_write_buffer_size(self) -> int:
        return int(self.raw.get_write_buffer_size())

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.raw.set_write_buffer_limits(high, low)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self.obj
        if name == "sslcontext":
            return self.obj.context
        if name == "peercert":
            return self.obj.getpeercert() if self.tls_state == _OPEN else default
        if name == "cipher":
            return self.obj.cipher()
        return self.raw.get_extra_info(name, default)

    # -- the socket's side: a protocol ----------------------------------------------------------

    def connection_made(self, transport: Any) -> None:  # never called: set_protocol does not
        pass

    def data_received(self, data: bytes) -> None:
        if self.tls_state == _OPEN:
            pump = self.pump
            if pump is not None:
                try:
                    plain = pump.decrypt(data)
                except ssl.SSLError as e:
                    self._fatal(e)
                    return
                deliver = self._deliver
                if isinstance(plain, bytes) and deliver is not None:  # the usual read
                    if plain:
                        deliver(plain)
                    return
                if isinstance(plain, bytes):
                    self._deliver_plain(plain, False)
                else:  # (plaintext, eof): the peer closed, or OpenSSL has records to send back
                    self._deliver_plain(plain[0], bool(plain[1]))
                return
            self._feed(data)
            self._decrypt()
            return
        self._feed(data)
        if self.tls_state == _HANDSHAKE:
            self._handshake()

    def eof_received(self) -> bool | None:
        return None  # the transport closes; connection_lost follows

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_timer()
        handshaking = self.tls_state == _HANDSHAKE
        self.tls_state = _CLOSED
        if handshaking:
            self._finish(exc or ConnectionResetError("connection closed during the TLS handshake"))
        elif self.app is not None:
            self.app.connection_lost(exc or self.error)
        else:
            self.lost = True

    def pause_writing(self) -> None:
        if self.app is not None:
            self.app.pause_writing()

    def resume_writing(self) -> None:
        if self.app is not None:
            self.app.resume_writing()

    # -- inside -------------------------------------------------------------------------------------

    def _decrypt(self) -> None:
        """Every complete record in the incoming BIO, to the session in one call."""
        read = self._read
        incoming = self.incoming
        got: list[bytes] = []
        eof = False
        try:
            while True:
                # Plaintext is shorter than its record; what an earlier read left is in pending().
                chunk = read(min(incoming.pending or self._pending(), READ_SIZE) or READ_SIZE)
                if not chunk:
                    eof = True  # the peer's close_notify
                    break
                got.append(chunk)
                # No more complete records: stop without the SSLWantReadError a further read raises.
                if not incoming.pending and not self._pending():
                    break
        except ssl.SSLWantReadError:
            pass  # the rest of a record comes with a later read
        except ssl.SSLError as e:
            self._fatal(e)
            return
        self._deliver_plain(got[0] if len(got) == 1 else b"".join(got), eof)

    def _deliver_plain(self, data: bytes, eof: bool) -> None:
        """What one read decrypted, to the session (or held until attach()); then the peer's close."""
        if self.outgoing.pending:  # OpenSSL answered something (a TLS 1.3 KeyUpdate, an alert)
            self._raw_write(self.outgoing.read())
        if data:
            deliver = self._deliver
            if deliver is not None:
                deliver(data)
            else:
                self.held.append(data)
        if eof and self.tls_state == _OPEN:
            self.close()

    def _handshake(self) -> None:
        try:
            self.obj.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        except (ssl.SSLError, ValueError) as e:
            self._flush()  # the alert that says why
            self.tls_state = _CLOSING
            self._cancel_timer()
            self.raw.close()
            self._finish(e)
            return
        self._flush()
        self._cancel_timer()
        self.tls_state = _OPEN
        self.pump = _pump_for(self)
        self._finish(None)
        if self.tls_state == _OPEN and self.queued:
            queued, self.queued = self.queued, []
            self.write(b"".join(queued))
        if self.tls_state == _OPEN and (self.incoming.pending or self._pending()):
            self.data_received(b"")  # the peer's first message came with its Finished

    def _finish(self, exc: BaseException | None) -> None:
        done, self.done = self.done, None
        if done is not None:
            done(self, exc)

    def _flush(self) -> None:
        if self.outgoing.pending:
            self._raw_write(self.outgoing.read())

    def _fatal(self, exc: BaseException) -> None:
        """A record that does not decrypt, or any other TLS error: the connection ends."""
        self._flush()
        self.tls_state = _CLOSED
        self.error = exc
        self.raw.close()  # connection_lost follows: the session is told, with `exc`

    def _timed_out(self) -> None:
        self.timer = None
        if self.tls_state == _HANDSHAKE:
            self.tls_state = _CLOSED
            self.raw.abort()
            self._finish(TimeoutError("TLS handshake timed out"))

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


def _pump_for(tls: TlsConnection) -> Any:
    """The C pump over this connection's SSL object and BIOs; None where it is not built or refuses
    them (it checks them against OpenSSL first): the connection then keeps the ssl module's path."""
    if _PUMP is None:
        return None
    try:
        return _PUMP(getattr(tls.obj, "_sslobj", None), tls.incoming, tls.outgoing)
    except TypeError:
        return None
