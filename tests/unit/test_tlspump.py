"""pgmux._tlspump (C) and net/tlsconn.py's TLS connection, in memory: no socket, a real OpenSSL handshake.

The pump must give exactly what the ssl module's path gives: the same plaintext for any split of the
ciphertext, the peer's close_notify, an SSLError for a record that does not decrypt; and it must
refuse objects it cannot check against OpenSSL. TlsConnection is driven through both paths.
"""

from __future__ import annotations

import importlib
import random
import ssl
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgmux.net.tlsconn import TlsConnection
from pgmux.testing.certs import Certs, make_certs

Pump = importlib.import_module("pgmux._tlspump").Pump  # built wherever pgmux is (setup.py)


@pytest.fixture(scope="module")
def certs() -> Iterator[Certs]:
    c = make_certs()
    yield c
    c.cleanup()


def _contexts(certs: Certs) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(certs.path("server.crt"), certs.path("server.key"))
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(certs.path("ca.crt"))
    return server, client


class Side:
    """One end of a TLS connection through the ssl module (the reference the pump is held to)."""

    def __init__(self, ctx: ssl.SSLContext, server_side: bool) -> None:
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.incoming, self.outgoing, server_side=server_side,
                                server_hostname=None if server_side else "127.0.0.1")

    def handshake(self) -> bool:
        try:
            self.obj.do_handshake()
        except ssl.SSLWantReadError:
            return False
        return True

    def take(self) -> bytes:
        return self.outgoing.read()

    def read_all(self, data: bytes) -> bytes:
        self.incoming.write(data)
        got = []
        while True:
            try:
                chunk = self.obj.read(65536)
            except ssl.SSLWantReadError:
                break
            if not chunk:
                break
            got.append(chunk)
        return b"".join(got)


def _pair(certs: Certs, version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3) -> tuple[Side, Side]:
    sctx, cctx = _contexts(certs)
    sctx.maximum_version = version
    server, client = Side(sctx, True), Side(cctx, False)
    for _ in range(10):
        c_done = client.handshake()
        server.incoming.write(client.take())
        s_done = server.handshake()
        client.incoming.write(server.take())
        if c_done and s_done:
            break
    assert server.obj.version() is not None and client.handshake()
    return server, client


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_the_pump_gives_the_plaintext_of_any_split_of_the_records(certs: Certs, version: ssl.TLSVersion) -> None:
    server, client = _pair(certs, version)
    pump = Pump(server.obj._sslobj, server.incoming, server.outgoing)
    rnd = random.Random(7)
    sent = b""
    stream = b""
    for size in [1, 5, 40, 300, 16383, 16384, 16385, 70000, 1 << 20]:
        msg = rnd.randbytes(size)
        client.obj.write(msg)
        stream += client.take()
        sent += msg
    got = []
    pos = 0
    while pos < len(stream):  # the ciphertext in random pieces: one byte, part of a record, many records
        n = rnd.choice([1, 3, 5, 100, 4096, 20000, 200000])
        got.append(pump.decrypt(stream[pos:pos + n]))
        pos += n
    assert b"".join(got) == sent
    assert not pump.eof
    # and the other way: what the pump encrypts, the ssl module reads
    back = rnd.randbytes(100000)
    assert client.read_all(pump.encrypt(back) + pump.encrypt(b"") + pump.encrypt(memoryview(b"tail"))) == back + b"tail"


def test_the_pump_reads_what_came_before_the_close_notify_and_says_eof(certs: Certs) -> None:
    server, client = _pair(certs)
    pump = Pump(server.obj._sslobj, server.incoming, server.outgoing)
    client.obj.write(b"last words")
    with pytest.raises(ssl.SSLWantReadError):
        client.obj.unwrap()  # its close_notify goes out; it would wait for ours
    assert pump.decrypt(client.take()) == (b"last words", True)  # the rare read: a tuple
    assert pump.eof
    assert pump.decrypt(b"") == (b"", True)  # and it stays closed


def test_a_record_that_does_not_decrypt_raises_ssl_error(certs: Certs) -> None:
    server, client = _pair(certs)
    pump = Pump(server.obj._sslobj, server.incoming, server.outgoing)
    client.obj.write(b"Q\x00\x00\x00\x0dSELECT 1\x00")
    record = bytearray(client.take())
    record[-3] ^= 0x40
    with pytest.raises(ssl.SSLError):
        pump.decrypt(bytes(record))
    # OpenSSL's error queue was emptied: a fresh connection's pump works at once
    server2, client2 = _pair(certs)
    pump2 = Pump(server2.obj._sslobj, server2.incoming, server2.outgoing)
    client2.obj.write(b"fine")
    assert pump2.decrypt(client2.take()) == b"fine"


def test_the_pump_refuses_objects_it_cannot_check(certs: Certs) -> None:
    server, _ = _pair(certs)
    sslobj = server.obj._sslobj
    with pytest.raises(TypeError):
        Pump(object(), server.incoming, server.outgoing)
    with pytest.raises(TypeError):
        Pump(sslobj, b"in", server.outgoing)
    with pytest.raises(TypeError):  # the BIOs swapped: not what this SSL object reads and writes
        Pump(sslobj, server.outgoing, server.incoming)
    with pytest.raises(TypeError):  # another connection's BIOs
        Pump(sslobj, ssl.MemoryBIO(), ssl.MemoryBIO())
    unmade = Pump.__new__(Pump)
    with pytest.raises(ValueError):
        unmade.decrypt(b"")


class Raw:
    """The TCP transport under a TlsConnection: what it was asked to write, and whether it closed."""

    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.closed = False
        self.protocol: Any = None

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def write(self, data: bytes) -> None:
        self.out.append(bytes(data))

    def take(self) -> bytes:
        data, self.out = b"".join(self.out), []
        return data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


class App:
    def __init__(self) -> None:
        self.got: list[bytes] = []
        self.lost: list[BaseException | None] = []

    def data_received(self, data: bytes) -> None:
        self.got.append(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.append(exc)


def _open_connection(certs: Certs, pumped: bool) -> tuple[TlsConnection, Raw, Side, App]:
    sctx, cctx = _contexts(certs)
    raw = Raw()
    results: list[BaseException | None] = []
    conn = TlsConnection(raw, sctx, True, None, 0, lambda tls, exc: results.append(exc))
    client = Side(cctx, False)
    for _ in range(10):
        client.handshake()
        conn.data_received(client.take())
        client.incoming.write(raw.take())
        if results:
            break
    assert results == [None] and client.handshake()
    assert conn.pump is not None  # the C pump is taken wherever it is built
    if not pumped:
        conn.pump = None  # the ssl module's path, as where pgmux._tlspump was not built
    app = App()
    conn.attach(app)
    return conn, raw, client, app


@pytest.mark.parametrize("pumped", [True, False])
def test_a_tls_connection_relays_both_ways_and_closes_on_the_peers_close_notify(certs: Certs,
                                                                               pumped: bool) -> None:
    conn, raw, client, app = _open_connection(certs, pumped)
    client.obj.write(b"Q\x00\x00\x00\x0dSELECT 1\x00")
    client.obj.write(b"X\x00\x00\x00\x04")
    stream = client.take()
    conn.data_received(stream[:7])
    conn.data_received(stream[7:])
    assert b"".join(app.got) == b"Q\x00\x00\x00\x0dSELECT 1\x00X\x00\x00\x00\x04"
    conn.write(b"Z\x00\x00\x00\x05I")
    assert client.read_all(raw.take()) == b"Z\x00\x00\x00\x05I"
    with pytest.raises(ssl.SSLWantReadError):
        client.obj.unwrap()
    conn.data_received(client.take())
    assert raw.closed  # our close_notify went out, then the socket closes
    conn.write(b"dropped")  # a write after close is dropped, as asyncio's transports do
    conn.connection_lost(None)
    assert app.lost == [None]


@pytest.mark.parametrize("pumped", [True, False])
def test_a_tls_connection_ends_on_a_record_that_does_not_decrypt(certs: Certs, pumped: bool) -> None:
    conn, raw, client, app = _open_connection(certs, pumped)
    client.obj.write(b"Q\x00\x00\x00\x0dSELECT 1\x00")
    record = bytearray(client.take())
    record[-2] ^= 0x01
    conn.data_received(bytes(record))
    assert app.got == [] and raw.closed
    conn.connection_lost(None)
    assert len(app.lost) == 1 and isinstance(app.lost[0], ssl.SSLError)


@pytest.mark.parametrize("pumped", [True, False])
def test_plaintext_before_attach_is_held_and_given_at_attach(certs: Certs, pumped: bool) -> None:
    conn, raw, client, app = _open_connection(certs, pumped)
    conn._deliver = None  # as between the handshake and the session's attach()
    client.obj.write(b"first")
    conn.data_received(client.take())
    client.obj.write(b"second")
    conn.data_received(client.take())
    assert app.got == []
    later = App()
    conn.attach(later)
    assert later.got == [b"firstsecond"]


def test_the_client_side_of_a_handshake_takes_the_pump_too(certs: Certs) -> None:
    """Pooled server connections (net/tls.py connect_server) are TlsConnections on the client side."""
    sctx, cctx = _contexts(certs)
    raw = Raw()
    results: list[BaseException | None] = []
    conn = TlsConnection(raw, cctx, False, "127.0.0.1", 0, lambda tls, exc: results.append(exc))
    server = Side(sctx, True)
    conn.start()
    for _ in range(10):
        server.incoming.write(raw.take())
        server.handshake()
        conn.data_received(server.take())
        if results:
            break
    assert results == [None] and conn.pump is not None
    app = App()
    conn.attach(app)
    conn.write(b"Q\x00\x00\x00\x0dSELECT 1\x00")
    assert server.read_all(raw.take()) == b"Q\x00\x00\x00\x0dSELECT 1\x00"
    server.obj.write(b"Z\x00\x00\x00\x05I")
    conn.data_received(server.take())
    assert b"".join(app.got) == b"Z\x00\x00\x00\x05I"


@settings(max_examples=150, deadline=None)
@given(junk=st.binary(max_size=600), at=st.integers(min_value=0, max_value=599),
       cut=st.integers(min_value=1, max_value=64))
def test_hostile_ciphertext_gives_plaintext_or_ssl_error_never_more(certs: Certs, junk: bytes, at: int,
                                                                      cut: int) -> None:
    """Whatever a peer sends after the handshake (garbage, a real record with bytes flipped or cut):
    decrypt returns only what the peer's records hold, or raises ssl.SSLError; then nothing more."""
    server, client = _pair(certs)
    pump = Pump(server.obj._sslobj, server.incoming, server.outgoing)
    client.obj.write(b"Q\x00\x00\x00\x0dSELECT 1\x00")
    record = bytearray(client.take())
    if junk:
        record[at % len(record)] ^= junk[0] | 1  # one byte flipped (never by 0)
    stream = bytes(record) + junk
    got = b""
    try:
        for pos in range(0, len(stream), cut):
            out = pump.decrypt(stream[pos:pos + cut])
            got += out if isinstance(out, bytes) else out[0]
    except ssl.SSLError:
        pass  # (or no error: a flipped length may leave the record waiting for more bytes)
    # a record with a flipped byte never gives plaintext; the intact one gives exactly its own
    assert got == (b"" if junk else b"Q\x00\x00\x00\x0dSELECT 1\x00")
