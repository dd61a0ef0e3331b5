"""TLS contexts from PgBouncer's client_tls_* and server_tls_* settings.

One context per side, built at start-up and again on every reload (so new certificates and keys
apply to new connections while connected clients keep theirs). A setting that cannot be honoured
(a missing or unreadable file, an unknown cipher or curve, a sslmode that needs a file that is not
set) raises TlsConfigError naming the setting: pgmux refuses to start rather than run weaker, and a
reload that fails keeps the contexts it had.

PgBouncer's words, mapped onto OpenSSL through Python's ssl module:
- `*_tls_protocols`: tlsv1.0 .. tlsv1.3, `all`/`legacy` (all four), `secure` (tlsv1.2, tlsv1.3).
  A set with gaps cannot be expressed (OpenSSL takes a minimum and a maximum): it is refused.
- `*_tls_ciphers`: an OpenSSL cipher string, or PgBouncer's shortcuts (below). They govern TLS 1.2
  and older; `client_tls13_ciphers`/`server_tls13_ciphers` (TLS 1.3 suites) cannot be set through
  Python's ssl module, so anything but their default is refused.
- `client_tls_ecdhcurve`: `auto` (OpenSSL's default groups), a curve name, or `none`.
- `client_tls_dheparams`: `auto` and `none` (OpenSSL 3 picks DH parameters itself; pgmux never loads
  a DH file), `legacy` (1024-bit DH) is refused: it is the weak choice.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
import struct
from typing import Any

from pgmux.net.streams import open_connection
from pgmux.net.tlsconn import TlsConnection

log = logging.getLogger("pgmux")

# PgBouncer's cipher shortcuts (src/lib/usual/tls/tls_config.c, tls_config_set_ciphers).
CIPHER_SHORTCUTS = {
    "default": "HIGH:+3DES:!aNULL",
    "secure": "HIGH:+3DES:!aNULL",
    "normal": "HIGH:MEDIUM:+3DES:!aNULL",
    "fast": "ECDHE+AES128GCM:ECDHE+AES256GCM:ECDHE+CHACHA20:DHE+AES128GCM:DHE+AES256GCM:DHE+CHACHA20:!aNULL",
    "compat": "HIGH:MEDIUM:+3DES:!aNULL",
    "legacy": "HIGH:MEDIUM:+3DES:!aNULL",
    "insecure": "ALL:!aNULL",
    "all": "ALL:!aNULL",
}
_VERSIONS = {"tlsv1.0": ssl.TLSVersion.TLSv1, "tlsv1.1": ssl.TLSVersion.TLSv1_1,
             "tlsv1.2": ssl.TLSVersion.TLSv1_2, "tlsv1.3": ssl.TLSVersion.TLSv1_3}
_ORDER = list(_VERSIONS)
_PROTOCOL_SHORTCUTS = {"all": _ORDER, "legacy": _ORDER, "secure": ["tlsv1.2", "tlsv1.3"]}
ALPN = "postgresql"  # what PostgreSQL 17 clients send, and demand with sslnegotiation=direct

# Modes that make a side use TLS at all; "require" and the verify modes make it mandatory.
CLIENT_TLS_ON = ("allow", "prefer", "require", "verify-ca", "verify-full")
REQUIRED = ("require", "verify-ca", "verify-full")


class TlsConfigError(Exception):
    """A TLS setting pgmux cannot honour; the message names it."""


def _protocols(name: str, value: str) -> tuple[ssl.TLSVersion, ssl.TLSVersion]:
    wanted: set[str] = set()
    for word in value.replace(",", " ").split():
        word = word.strip().lower()
        if word in _PROTOCOL_SHORTCUTS:
            wanted.update(_PROTOCOL_SHORTCUTS[word])
        elif word in _VERSIONS:
            wanted.add(word)
        else:
            raise TlsConfigError(f"{name}: unknown TLS protocol {word!r} (use tlsv1.0..tlsv1.3, all, secure, legacy)")
    if not wanted:
        raise TlsConfigError(f"{name}: no TLS protocol named")
    idx = sorted(_ORDER.index(w) for w in wanted)
    if idx != list(range(idx[0], idx[-1] + 1)):
        raise TlsConfigError(f"{name}: {value!r} leaves a gap between versions, which OpenSSL cannot express")
    return _VERSIONS[_ORDER[idx[0]]], _VERSIONS[_ORDER[idx[-1]]]


def _common(ctx: ssl.SSLContext, prefix: str, s: Any) -> None:
    lo, hi = _protocols(f"{prefix}_tls_protocols", getattr(s, f"{prefix}_tls_protocols"))
    try:
        ctx.minimum_version, ctx.maximum_version = lo, hi
    except (ValueError, ssl.SSLError) as e:
        raise TlsConfigError(f"{prefix}_tls_protocols: this OpenSSL refuses {lo.name}..{hi.name}: {e}") from e
    ciphers = getattr(s, f"{prefix}_tls_ciphers")
    try:
        ctx.set_ciphers(CIPHER_SHORTCUTS.get(ciphers.lower(), ciphers))
    except ssl.SSLError as e:
        raise TlsConfigError(f"{prefix}_tls_ciphers: OpenSSL accepts no cipher of {ciphers!r}") from e
    if getattr(s, f"{prefix}_tls13_ciphers") is not None:
        raise TlsConfigError(f"{prefix}_tls13_ciphers: choosing TLS 1.3 cipher suites is not possible in pgmux "
                             "(Python's ssl module does not expose it); remove the setting to use OpenSSL's")
    ctx.options |= ssl.OP_NO_COMPRESSION


def _load_pair(ctx: ssl.SSLContext, prefix: str, cert: str | None, key: str | None, required: bool) -> None:
    if not cert and not key:
        if required:
            raise TlsConfigError(f"{prefix}_tls_cert_file and {prefix}_tls_key_file must be set for "
                                 f"{prefix}_tls_sslmode")
        return
    if not cert or not key:
        raise TlsConfigError(f"{prefix}_tls_cert_file and {prefix}_tls_key_file must be set together")
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as e:
        raise TlsConfigError(f"{prefix}_tls_cert_file/{prefix}_tls_key_file ({cert}, {key}): {e}") from e


def _load_ca(ctx: ssl.SSLContext, name: str, path: str) -> None:
    try:
        ctx.load_verify_locations(cafile=path)
    except (OSError, ssl.SSLError) as e:
        raise TlsConfigError(f"{name} ({path}): {e}") from e


def client_context(s: Any) -> ssl.SSLContext | None:
    """The context pgmux accepts clients' TLS with, or None when client_tls_sslmode = disable."""
    mode = s.client_tls_sslmode
    if mode not in CLIENT_TLS_ON:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _common(ctx, "client", s)
    _load_pair(ctx, "client", s.client_tls_cert_file, s.client_tls_key_file, required=True)
    curve = s.client_tls_ecdhcurve
    if curve.lower() not in ("auto", "none"):
        try:
            ctx.set_ecdh_curve(curve)
        except (ValueError, ssl.SSLError) as e:
            raise TlsConfigError(f"client_tls_ecdhcurve: unknown curve {curve!r}") from e
    if s.client_tls_dheparams.lower() not in ("auto", "none"):
        raise TlsConfigError(f"client_tls_dheparams: {s.client_tls_dheparams!r} is not supported "
                             "(auto and none are; OpenSSL chooses DH parameters itself)")
    if mode in ("verify-ca", "verify-full"):
        if not s.client_tls_ca_file:
            raise TlsConfigError(f"client_tls_ca_file must be set for client_tls_sslmode = {mode}")
        _load_ca(ctx, "client_tls_ca_file", s.client_tls_ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.verify_mode = ssl.CERT_NONE  # a certificate a client presents is not asked for nor checked
    ctx.set_alpn_protocols([ALPN])
    return ctx


def server_context(s: Any) -> ssl.SSLContext | None:
    """The context pgmux speaks TLS to PostgreSQL with, or None when server_tls_sslmode asks for none
    (disable, and allow: pgmux tries plain text first and does not retry with TLS)."""
    mode = s.server_tls_sslmode
    if mode not in ("prefer", "require", "verify-ca", "verify-full"):
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _common(ctx, "server", s)
    _load_pair(ctx, "server", s.server_tls_cert_file, s.server_tls_key_file, required=False)
    if mode in ("verify-ca", "verify-full"):
        if not s.server_tls_ca_file:
            raise TlsConfigError(f"server_tls_ca_file must be set for server_tls_sslmode = {mode}")
        _load_ca(ctx, "server_tls_ca_file", s.server_tls_ca_file)
        ctx.check_hostname = mode == "verify-full"
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols([ALPN])
    return ctx


# Signature algorithm OIDs (DER-encoded content) -> the hash tls-server-end-point uses (RFC 5929 4.1:
# the certificate's own signature hash, SHA-256 in place of MD5 and SHA-1).
_SIG_HASH = {
    bytes.fromhex("2a864886f70d010104"): "sha256",  # md5WithRSAEncryption
    bytes.fromhex("2a864886f70d010105"): "sha256",  # sha1WithRSAEncryption
    bytes.fromhex("2a864886f70d01010b"): "sha256",  # sha256WithRSAEncryption
    bytes.fromhex("2a864886f70d01010c"): "sha384",
    bytes.fromhex("2a864886f70d01010d"): "sha512",
    bytes.fromhex("2a8648ce3d040302"): "sha256",  # ecdsa-with-SHA256
    bytes.fromhex("2a8648ce3d040303"): "sha384",
    bytes.fromhex("2a8648ce3d040304"): "sha512",
}


def _der_tlv(der: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of content, end of content) of the DER element at `pos`."""
    tag, n = der[pos], der[pos + 1]
    pos += 2
    if n & 0x80:
        k = n & 0x7F
        n = int.from_bytes(der[pos:pos + k], "big")
        pos += k
    return tag, pos, pos + n


def end_point_hash(cert_file: str) -> bytes | None:
    """tls-server-end-point channel-binding data for the first certificate in `cert_file`, or None
    when its signature algorithm is one RFC 5929 gives no hash for (then -PLUS is not offered)."""
    with open(cert_file) as f:
        pem = f.read()
    end = pem.find("-----END CERTIFICATE-----")
    if end < 0:
        return None
    der = ssl.PEM_cert_to_DER_cert(pem[:end + len("-----END CERTIFICATE-----")])
    _, body, _ = _der_tlv(der, 0)  # Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, ... }
    _, _, tbs_end = _der_tlv(der, body)
    _, alg, _ = _der_tlv(der, tbs_end)
    tag, oid, oid_end = _der_tlv(der, alg)
    algo = _SIG_HASH.get(der[oid:oid_end]) if tag == 0x06 else None
    return hashlib.new(algo, der).digest() if algo else None


class Contexts:
    """Both sides' contexts, replaced whole on reload, and the channel-binding data of pgmux's own
    certificate (SCRAM-SHA-256-PLUS towards TLS clients)."""

    __slots__ = ("client", "server", "client_mode", "server_mode", "cbind")

    def __init__(self, s: Any) -> None:
        self.client = client_context(s)
        self.server = server_context(s)
        self.client_mode: str = s.client_tls_sslmode
        self.server_mode: str = s.server_tls_sslmode
        self.cbind = end_point_hash(s.client_tls_cert_file) if self.client is not None else None

    def cbind_for(self, transport: Any) -> bytes | None:
        """The channel-binding data for a client on `transport`: only over TLS."""
        if self.cbind is None or transport.get_extra_info("ssl_object") is None:
            return None
        return self.cbind


def describe(transport: Any) -> str:
    """SHOW CLIENTS/SERVERS' `tls` column, as PgBouncer fills it: protocol, cipher and bits."""
    obj = transport.get_extra_info("ssl_object") if transport is not None else None
    if obj is None:
        return ""
    cipher = obj.cipher()
    if cipher is None:
        return ""
    return f"{obj.version()}/{cipher[0]}/{cipher[2]}"


# -- the handshakes -------------------------------------------------------------------------------

def accept_client_tls(app: Any, c: Any, hello: bytes = b"") -> bool:
    """A client sent SSLRequest, or (`hello`) opened with a TLS ClientHello: PostgreSQL 17's direct
    TLS, `sslnegotiation=direct`. With client TLS on (and a TCP client: the Unix socket never does
    TLS, as in PostgreSQL and PgBouncer), run the handshake on the same connection (after answering
    `S` to an SSLRequest); the startup packet then comes encrypted. False: TLS is off for it.

    The TLS connection (net/tlsconn.py) takes the socket over here, in the same callback, so no byte
    after the SSLRequest (or the hello) can reach the session unencrypted."""
    ctx = app.tls.client
    if ctx is None or c.is_unix:
        return False
    raw = c.transport
    if not hello:
        raw.write(b"S")
    session_protocol = raw.get_protocol()
    timeout = app.config.settings.client_login_timeout or 60.0
    direct = bool(hello)

    def done(tls: TlsConnection, exc: BaseException | None) -> None:
        _client_handshake_done(app, c, tls, exc, direct)

    tls = TlsConnection(raw, ctx, True, None, timeout, done)
    c.transport = tls
    tls.attach(session_protocol)  # plaintext reaches it only once the handshake is done (and done())
    if hello:
        tls.data_received(hello)
    return True


def _client_handshake_done(app: Any, c: Any, tls: TlsConnection, exc: BaseException | None,
                           direct: bool) -> None:
    if exc is None:
        if direct and tls.obj.selected_alpn_protocol() != ALPN:
            # PostgreSQL 17 demands the ALPN protocol on direct TLS, against cross-protocol attacks.
            log.info("%s direct TLS without ALPN %r refused", c.prefix, ALPN)
            tls.close()
            app.events.tls_handshake("client", False)
            app.client_closed(c, "direct TLS without ALPN postgresql")
            return
        app.events.tls_handshake("client", True)
        return
    if isinstance(exc, (ssl.SSLError, TimeoutError)):
        log.info("%s TLS handshake failed: %s", c.prefix, exc)
        app.events.tls_handshake("client", False)
        app.client_closed(c, "TLS handshake failed")
    else:  # the client went away during the handshake
        app.client_closed(c, "client closed during TLS handshake")


class _Answer(asyncio.Protocol):
    """Reads PostgreSQL's one-byte answer to SSLRequest, and nothing else."""

    def __init__(self) -> None:
        self.answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.extra = False

    def data_received(self, data: bytes) -> None:
        if not self.answer.done():
            self.answer.set_result(data[:1])
            # Bytes after the answer were sent before the handshake, unencrypted: a man in the middle
            # injecting them (CVE-2021-23222) is what libpq guards against; so do we.
            self.extra = len(data) > 1

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answer.done():
            self.answer.set_exception(exc or ConnectionResetError("server closed the connection"))


async def connect_server(protocol: asyncio.Protocol, host: str, port: int, ctx: ssl.SSLContext, mode: str,
                         timeout: float | None) -> None:
    """TCP to PostgreSQL with SSLRequest first; `protocol` gets connection_made once the connection is
    ready for the startup packet (encrypted, or plain where `prefer` allows it). Raises OSError."""
    loop = asyncio.get_running_loop()
    probe = _Answer()
    transport, _ = await open_connection(lambda: probe, host, port)
    tls: TlsConnection | None = None
    try:
        transport.write(SSL_REQUEST)
        answer = await probe.answer
        if probe.extra:
            raise OSError(f"server {host}:{port} sent data after its answer to SSLRequest")
        if answer == b"S":
            handshake: asyncio.Future[None] = loop.create_future()

            def done(_: TlsConnection, exc: BaseException | None) -> None:
                if not handshake.done():
                    if exc is None:
                        handshake.set_result(None)
                    else:
                        handshake.set_exception(exc)

            tls = TlsConnection(transport, ctx, False, host, timeout or 60.0, done)
            tls.start()  # our ClientHello
            await handshake
            if tls.lost:
                raise OSError(f"server {host}:{port} closed the connection after the TLS handshake")
            protocol.connection_made(tls)  # type: ignore[arg-type]  # a transport in all but its class
            tls.attach(protocol)  # and what the server sent meanwhile, if anything
            return
        if answer == b"N" and mode not in REQUIRED:
            transport.set_protocol(protocol)
            protocol.connection_made(transport)
            return
        if answer == b"N":
            raise OSError(f"server {host}:{port} does not accept TLS, and server_tls_sslmode = {mode} requires it")
        raise OSError(f"server {host}:{port} answered SSLRequest with {answer!r}")
    except ssl.SSLCertVerificationError as e:
        _drop(transport, tls)
        raise OSError(f"TLS: {e.verify_message or e.reason}") from e
    except (TimeoutError, ssl.SSLError, asyncio.CancelledError, OSError):
        _drop(transport, tls)
        raise


def _drop(transport: asyncio.BaseTransport, tls: TlsConnection | None) -> None:
    if tls is not None:
        tls.abort()
    else:
        transport.close()


async def upgrade_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str,
                         ctx: ssl.SSLContext | None, mode: str) -> None:
    """The same negotiation on an asyncio stream (the health check's probe connection)."""
    if ctx is None:
        return
    writer.write(SSL_REQUEST)
    answer = await reader.readexactly(1)
    if answer == b"S":
        if reader._buffer:  # type: ignore[attr-defined]  # bytes before the handshake: refuse, as above
            raise OSError(f"server {host} sent data after its answer to SSLRequest")
        await writer.start_tls(ctx, server_hostname=host)
    elif answer != b"N" or mode in REQUIRED:
        raise OSError(f"server {host} refused TLS (server_tls_sslmode = {mode})")


SSL_REQUEST = struct.pack("!ii", 8, 80877103)
