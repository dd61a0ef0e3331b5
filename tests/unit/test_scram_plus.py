"""SCRAM-SHA-256-PLUS (channel binding tls-server-end-point) towards clients, checked against scramp's
client as an independent implementation, and the end-point hash of a certificate file."""

from __future__ import annotations

import hashlib
import ssl
import struct
import subprocess
from pathlib import Path

import pytest
import scramp

from pgmux.errors import AuthFailed, ProtocolViolation
from pgmux.net.tls import end_point_hash
from pgmux.protocol.auth import ClientAuthenticator
from pgmux.protocol.messages import AUTH_OK, AUTH_SASL, AUTH_SASL_CONTINUE, AUTH_SASL_FINAL, cstr

USER, PW = "alice", "pencil"
CBIND = hashlib.sha256(b"pgmux's certificate").digest()


def _requests(data: bytes) -> list[tuple[int, bytes]]:
    out = []
    while data:
        assert data[:1] == b"R"
        (length,) = struct.unpack("!i", data[1:5])
        body = data[5:1 + length]
        out.append((struct.unpack("!i", body[:4])[0], body[4:]))
        data = data[1 + length:]
    return out


def _initial(mech: str, data: bytes) -> bytes:
    return cstr(mech) + struct.pack("!i", len(data)) + data


def _login(auth: ClientAuthenticator, mech: str, client: scramp.ScramClient) -> None:
    [(code, _)] = _requests(auth.start())
    assert code == AUTH_SASL
    [(code, first)] = _requests(auth.feed(b"p", _initial(mech, client.get_client_first().encode())))
    assert code == AUTH_SASL_CONTINUE
    client.set_server_first(first.decode())
    final, ok = _requests(auth.feed(b"p", client.get_client_final().encode()))
    assert final[0] == AUTH_SASL_FINAL and ok == (AUTH_OK, b"")
    client.set_server_final(final[1].decode())


def test_plus_is_offered_first_over_tls_only() -> None:
    assert _requests(ClientAuthenticator("scram-sha-256", USER, PW, cbind_data=CBIND).start()) == \
        [(AUTH_SASL, b"SCRAM-SHA-256-PLUS\x00SCRAM-SHA-256\x00\x00")]
    assert _requests(ClientAuthenticator("scram-sha-256", USER, PW).start()) == [(AUTH_SASL, b"SCRAM-SHA-256\x00\x00")]


def test_binding_to_our_certificate_logs_in() -> None:
    client = scramp.ScramClient(["SCRAM-SHA-256-PLUS"], USER, PW, channel_binding=("tls-server-end-point", CBIND))
    _login(ClientAuthenticator("scram-sha-256", USER, PW, cbind_data=CBIND), "SCRAM-SHA-256-PLUS", client)


def test_a_client_bound_to_another_certificate_is_refused() -> None:
    other = hashlib.sha256(b"a man in the middle's certificate").digest()
    client = scramp.ScramClient(["SCRAM-SHA-256-PLUS"], USER, PW, channel_binding=("tls-server-end-point", other))
    with pytest.raises(ProtocolViolation, match="channel binding check failed"):
        _login(ClientAuthenticator("scram-sha-256", USER, PW, cbind_data=CBIND), "SCRAM-SHA-256-PLUS", client)


def test_plain_scram_still_works_over_tls_and_wrong_passwords_still_fail() -> None:
    _login(ClientAuthenticator("scram-sha-256", USER, PW, cbind_data=CBIND), "SCRAM-SHA-256",
           scramp.ScramClient(["SCRAM-SHA-256"], USER, PW))
    client = scramp.ScramClient(["SCRAM-SHA-256-PLUS"], USER, "wrong", channel_binding=("tls-server-end-point", CBIND))
    with pytest.raises(AuthFailed):
        _login(ClientAuthenticator("scram-sha-256", USER, PW, cbind_data=CBIND), "SCRAM-SHA-256-PLUS", client)


@pytest.mark.parametrize("mech, gs2, cbind, words", [
    ("SCRAM-SHA-256-PLUS", b"n,,", CBIND, "without channel binding"),  # chose -PLUS, then did not bind
    ("SCRAM-SHA-256", b"p=tls-server-end-point,,", CBIND, "not offered"),  # bound without choosing -PLUS
    ("SCRAM-SHA-256", b"y,,", CBIND, "negotiation error"),  # "y" although -PLUS was offered: a downgrade
    ("SCRAM-SHA-256-PLUS", b"p=tls-unique,,", CBIND, "unsupported SCRAM channel-binding type"),
    ("SCRAM-SHA-256-PLUS", b"p=tls-server-end-point,,", None, "invalid SASL authentication mechanism"),
])
def test_inconsistent_choices_are_protocol_violations(mech: str, gs2: bytes, cbind: bytes | None,
                                                      words: str) -> None:
    auth = ClientAuthenticator("scram-sha-256", USER, PW, cbind_data=cbind)
    auth.start()
    with pytest.raises(ProtocolViolation, match=words):
        auth.feed(b"p", _initial(mech, gs2 + b"n=,r=abcdefghijklmnop"))


def test_end_point_hash_is_sha256_of_the_der_for_an_rsa_sha256_certificate(tmp_path: Path) -> None:
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=x",
                    "-keyout", str(tmp_path / "k.pem"), "-out", str(tmp_path / "c.pem")],
                   check=True, capture_output=True, timeout=60)
    der = ssl.PEM_cert_to_DER_cert((tmp_path / "c.pem").read_text())
    assert end_point_hash(str(tmp_path / "c.pem")) == hashlib.sha256(der).digest()
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384", "-sha384",
                    "-nodes", "-days", "1", "-subj", "/CN=x", "-keyout", str(tmp_path / "k2.pem"),
                    "-out", str(tmp_path / "c2.pem")], check=True, capture_output=True, timeout=60)
    der2 = ssl.PEM_cert_to_DER_cert((tmp_path / "c2.pem").read_text())
    assert end_point_hash(str(tmp_path / "c2.pem")) == hashlib.sha384(der2).digest()
