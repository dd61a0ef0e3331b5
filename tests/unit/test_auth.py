"""Authentication exchanges: md5 and SCRAM vectors, PgBouncer's auth_type rules, and both SCRAM
roles checked against scramp (an independent implementation) and against secrets PostgreSQL 15
made itself (CREATE ROLE ... PASSWORD, read back from pg_authid)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct
from collections.abc import Callable

import pytest
import scramp
from hypothesis import given, settings
from hypothesis import strategies as st

from pgmux.errors import AuthFailed, PgmuxError, ProtocolViolation
from pgmux.protocol import auth as auth_module
from pgmux.protocol import scram
from pgmux.protocol.auth import (
    ClientAuthenticator,
    ServerAuthenticator,
    make_scram_verifier,
    md5_response,
    md5_secret,
    parse_scram_verifier,
    secret_kind,
)
from pgmux.protocol.messages import (
    AUTH_CLEARTEXT,
    AUTH_MD5,
    AUTH_OK,
    AUTH_SASL,
    AUTH_SASL_CONTINUE,
    AUTH_SASL_FINAL,
    cstr,
)

# Made by PostgreSQL 15: alice/pencil with scram-sha-256, bob/pencil with md5,
# carol/"pen\u00adcil" (SASLprep drops the soft hyphen), dave/"\u00e9\x07x" (SASLprep refuses
# the control character, so PostgreSQL hashes the raw bytes).
PG_ALICE = ("SCRAM-SHA-256$4096:SI2pLQdfqRhzYOlgCAjx9Q==$QVqxsO1uyGhcNr9yGt0TDPCKpZCQitiUx+IzClgcizE="
            ":IBxDM+vNfPk1pTytt6pg8rHU8ESWF8AAm9x2Y2/wB3Q=")
PG_BOB = "md5e4f70fb0b8f2745aa7a69557c80cbd0c"
PG_CAROL = ("SCRAM-SHA-256$4096:X+H3O4UUHLYloYedo6icPg==$pdruPowWDBkdzCoOUwGonfwmR94fn24USx3MSZA1tVU="
            ":hMnoE4x72B1s76Y7/XAECNSwHVVUL5jxVSY3mxekpBo=")
PG_DAVE = ("SCRAM-SHA-256$4096:kIHL4JVm9KA7IsheFMc9Sw==$PbcgGGE9pqelMPipbP+ZRUplmb/y2eM5mBbqqGFf7D0="
           ":ibbuCfTt3hEnqTGU9VNRgkqP0yd5DP6Wjo4it+KViAU=")

USER, PW = "alice", "pencil"


# -- wire helpers -------------------------------------------------------------------------------

def frames(data: bytes) -> list[tuple[bytes, bytes]]:
    out, i = [], 0
    while i < len(data):
        (n,) = struct.unpack_from("!i", data, i + 1)
        out.append((data[i:i + 1], data[i + 5:i + 1 + n]))
        i += 1 + n
    return out


def requests(data: bytes) -> list[tuple[int, bytes]]:
    assert all(t == b"R" for t, _ in frames(data))
    return [(struct.unpack("!i", b[:4])[0], b[4:]) for _, b in frames(data)]


def one_request(data: bytes) -> tuple[int, bytes]:
    (req,) = requests(data)
    return req


def one_password_body(data: bytes) -> bytes:
    ((t, body),) = frames(data)
    assert t == b"p"
    return body


def initial_body(data: bytes) -> bytes:
    return cstr("SCRAM-SHA-256") + struct.pack("!i", len(data)) + data


def converse(client: ClientAuthenticator, server: ServerAuthenticator) -> None:
    """Run pgmux-as-server against pgmux-as-client until AuthenticationOk or an exception."""
    out = client.start()
    while True:
        reply = None
        for code, payload in requests(out):
            reply = server.feed(code, payload)
        if server.done:
            assert client.done
            return
        assert reply is not None
        out = client.feed(b"p", one_password_body(reply))


def scramp_login(auth: ClientAuthenticator, password: str, user: str = USER) -> bytes:
    """A client driven by scramp's ScramClient; returns the server-final-message it accepted."""
    code, payload = one_request(auth.start())
    assert (code, payload) == (AUTH_SASL, b"SCRAM-SHA-256\x00\x00")
    c = scramp.ScramClient(["SCRAM-SHA-256"], user, password)
    code, server_first = one_request(auth.feed(b"p", initial_body(c.get_client_first().encode())))
    assert code == AUTH_SASL_CONTINUE
    c.set_server_first(server_first.decode())
    (final, ok) = requests(auth.feed(b"p", c.get_client_final().encode()))
    assert final[0] == AUTH_SASL_FINAL and ok == (AUTH_OK, b"")
    c.set_server_final(final[1].decode())  # raises unless our signature is right
    return final[1]


def scramp_server(verifier: str) -> scramp.core.ScramServer:
    v = parse_scram_verifier(verifier)
    return scramp.ScramMechanism().make_server(
        lambda _user: (v.salt, v.stored_key, v.server_key, v.iterations))


def login_to_scramp(auth: ServerAuthenticator, server: scramp.core.ScramServer) -> None:
    first = one_password_body(auth.feed(AUTH_SASL, b"SCRAM-SHA-256-PLUS\x00SCRAM-SHA-256\x00\x00"))
    mech, rest = first.split(b"\x00", 1)
    assert mech == b"SCRAM-SHA-256" and struct.unpack("!i", rest[:4])[0] == len(rest) - 4
    server.set_client_first(rest[4:].decode())
    client_final = one_password_body(auth.feed(AUTH_SASL_CONTINUE, server.get_server_first().encode()))
    server.set_client_final(client_final.decode())  # raises unless the proof is right
    assert auth.feed(AUTH_SASL_FINAL, server.get_server_final().encode()) is None
    assert auth.feed(AUTH_OK, b"") is None and auth.done


# -- md5 ----------------------------------------------------------------------------------------

def test_md5_vectors() -> None:
    assert md5_secret("admin", "1234") == "md545f2603610af569b6155c45067268c6b"  # PgBouncer's docs
    assert md5_secret("bob", "pencil") == PG_BOB
    salt = b"\x01\x02\x03\x04"
    expected = b"md5" + hashlib.md5(PG_BOB[3:].encode() + salt).hexdigest().encode()
    assert md5_response("bob", "pencil", salt) == expected
    assert md5_response("bob", PG_BOB, salt) == expected
    assert md5_response("bob", PG_BOB.upper().replace("MD5", "md5"), salt) == expected


@given(st.text(min_size=1), st.text(), st.binary(min_size=4, max_size=4))
def test_md5_response_same_from_password_or_hash(user: str, pw: str, salt: bytes) -> None:
    assert md5_response(user, pw, salt) == md5_response(user, md5_secret(user, pw), salt)


# -- secrets ------------------------------------------------------------------------------------

def test_secret_kinds_follow_postgresql() -> None:
    assert secret_kind(PG_BOB) == "md5"
    assert secret_kind(PG_ALICE) == "scram"
    assert secret_kind("pencil") == "plain"
    assert secret_kind("md5notreallyahash") == "plain"
    assert secret_kind("SCRAM-SHA-256$oops") == "plain"  # PostgreSQL: a malformed verifier is a password


def test_verifier_matches_scramp_and_postgresql() -> None:
    v = parse_scram_verifier(PG_ALICE)
    assert str(v) == PG_ALICE
    assert make_scram_verifier("pencil", v.salt, v.iterations) == PG_ALICE
    salt, stored, server, it = scramp.ScramMechanism().make_auth_info("pencil", 4096, v.salt)
    assert (salt, stored, server, it) == (v.salt, v.stored_key, v.server_key, v.iterations)
    fresh = parse_scram_verifier(make_scram_verifier("pencil"))
    assert fresh.iterations == 4096 and len(fresh.salt) == 16 and fresh.salt != v.salt
    for pw, secret in (("pen\u00adcil", PG_CAROL), ("\u00e9\x07x", PG_DAVE)):
        v = parse_scram_verifier(secret)
        assert make_scram_verifier(pw, v.salt) == secret
    assert scram.normalize_password("pen\u00adcil") == b"pencil"
    assert scram.normalize_password("\u00e9\x07x") == "\u00e9\x07x".encode()


@pytest.mark.parametrize("bad", ["", "pencil", PG_ALICE.replace("SHA-256", "SHA-1"),
                                 PG_ALICE.replace("4096", "x"), PG_ALICE[:-8], PG_ALICE + "$x"])
def test_parse_verifier_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_scram_verifier(bad)


# -- ClientAuthenticator: auth_type x kind of secret --------------------------------------------

SECRETS = {"plain": PW, "md5": md5_secret(USER, PW), "scram": PG_ALICE, "unknown": None}

# auth_type, secret kind -> first request code, or None for an immediate AuthenticationOk
FIRST = {
    ("plain", "plain"): AUTH_CLEARTEXT, ("plain", "md5"): AUTH_CLEARTEXT,
    ("plain", "scram"): AUTH_CLEARTEXT, ("plain", "unknown"): AUTH_CLEARTEXT,
    ("md5", "plain"): AUTH_MD5, ("md5", "md5"): AUTH_MD5,
    ("md5", "scram"): AUTH_SASL, ("md5", "unknown"): AUTH_MD5,
    ("scram-sha-256", "plain"): AUTH_SASL, ("scram-sha-256", "md5"): AUTH_SASL,
    ("scram-sha-256", "scram"): AUTH_SASL, ("scram-sha-256", "unknown"): AUTH_SASL,
}


@pytest.mark.parametrize("auth_type,kind", sorted(FIRST))
def test_matrix_right_password(auth_type: str, kind: str) -> None:
    first = one_request(ClientAuthenticator(auth_type, USER, SECRETS[kind]).start())
    assert first[0] == FIRST[auth_type, kind]
    auth = ClientAuthenticator(auth_type, USER, SECRETS[kind])
    # An md5 hash can't answer SCRAM; an unknown user never gets in.
    if kind == "unknown" or (auth_type, kind) == ("scram-sha-256", "md5"):
        with pytest.raises(AuthFailed) as e:
            converse(auth, ServerAuthenticator(USER, PW))
        assert e.value.message == 'password authentication failed for user "alice"'
        assert e.value.sqlstate == "28P01" and not auth.done
        assert ("md5 hash" if kind == "md5" else "no such user") in (auth.log_detail or "")
        return
    converse(auth, ServerAuthenticator(USER, PW))
    # The cleartext is known when the client sent it, or when auth_file holds it.
    assert auth.password == (PW if auth_type == "plain" or kind == "plain" else None)
    # Keys come from a stored verifier only; with plain text the password is the better credential.
    has_keys = kind == "scram"
    assert (auth.client_key is not None) == has_keys and (auth.server_key is not None) == has_keys
    if has_keys:
        v = parse_scram_verifier(PG_ALICE)
        assert hashlib.sha256(auth.client_key or b"").digest() == v.stored_key


@pytest.mark.parametrize("auth_type,kind", sorted(FIRST))
def test_matrix_wrong_password(auth_type: str, kind: str) -> None:
    auth = ClientAuthenticator(auth_type, USER, SECRETS[kind])
    with pytest.raises(AuthFailed, match='password authentication failed for user "alice"'):
        converse(auth, ServerAuthenticator(USER, "wrong"))
    assert not auth.done and auth.password is None and auth.client_key is None
    with pytest.raises(ProtocolViolation):  # a failed exchange takes nothing more
        auth.feed(b"p", cstr("pencil"))


@pytest.mark.parametrize("auth_type,secret", [("md5", None), ("scram-sha-256", None),
                                               ("scram-sha-256", md5_secret(USER, PW))])
def test_doomed_exchange_fails_even_if_the_mock_matches(monkeypatch: pytest.MonkeyPatch, auth_type: str,
                                                        secret: str | None) -> None:
    # The mock secret is random; make it the client's password to prove the failure is decided, not lucky.
    monkeypatch.setattr(auth_module.secrets, "token_hex", lambda _n=None: PW)
    with pytest.raises(AuthFailed):
        converse(ClientAuthenticator(auth_type, USER, secret), ServerAuthenticator(USER, PW))


@pytest.mark.parametrize("kind", sorted(SECRETS))
def test_any_lets_everyone_in(kind: str) -> None:
    auth = ClientAuthenticator("any", USER, SECRETS[kind])
    assert one_request(auth.start()) == (AUTH_OK, b"") and auth.done


def test_trust_needs_a_known_user() -> None:
    auth = ClientAuthenticator("trust", USER, PG_BOB)
    assert one_request(auth.start()) == (AUTH_OK, b"") and auth.done
    with pytest.raises(AuthFailed, match="no such user") as e:
        ClientAuthenticator("trust", "mallory", None).start()
    assert e.value.sqlstate == "28000"


def test_unknown_auth_type() -> None:
    with pytest.raises(ValueError):
        ClientAuthenticator("cert", USER, PW)


def test_md5_challenge_has_fresh_salt() -> None:
    salts = {one_request(ClientAuthenticator("md5", USER, PW).start())[1] for _ in range(8)}
    assert len(salts) > 1 and all(len(s) == 4 for s in salts)


def _server_first(auth: ClientAuthenticator) -> dict[str, str]:
    auth.start()
    _, sf = one_request(auth.feed(b"p", initial_body(b"n,,n=,r=abcdefghijkl")))
    return dict(a.split("=", 1) for a in sf.decode().split(","))


def test_unknown_user_looks_like_a_known_one() -> None:
    # Same salt on every attempt (as a stored verifier has) and the same shape as a real user's.
    a, b = (_server_first(ClientAuthenticator("scram-sha-256", "ghost", None)) for _ in range(2))
    real = _server_first(ClientAuthenticator("scram-sha-256", USER, PW))
    assert a["s"] == b["s"] and a["r"] != b["r"]
    assert a["i"] == real["i"] == "4096" and len(base64.b64decode(a["s"])) == len(base64.b64decode(real["s"]))
    assert a["r"].startswith("abcdefghijkl") and len(a["r"]) == len(real["r"])


# -- SCRAM, pgmux as the server -----------------------------------------------------------------

@pytest.mark.parametrize("auth_type,secret", [("scram-sha-256", PW), ("scram-sha-256", PG_ALICE),
                                               ("md5", PG_ALICE)])
def test_scramp_client_logs_in(auth_type: str, secret: str) -> None:
    auth = ClientAuthenticator(auth_type, USER, secret)
    scramp_login(auth, PW)
    assert auth.done


def test_scram_iterations_for_plain_secrets() -> None:
    """scram_iterations: the verifier pgmux makes from a plain-text secret (or for an unknown user, so
    that both look alike) uses it; a stored SCRAM secret keeps its own count."""
    auth = ClientAuthenticator("scram-sha-256", USER, PW, 10000)
    assert _server_first(auth)["i"] == "10000"
    auth = ClientAuthenticator("scram-sha-256", USER, PW, 5000)
    scramp_login(auth, PW)
    assert auth.done
    assert _server_first(ClientAuthenticator("scram-sha-256", "ghost", None, 5000))["i"] == "5000"
    assert _server_first(ClientAuthenticator("scram-sha-256", USER, PG_ALICE, 5000))["i"] == \
        PG_ALICE.split("$")[1].split(":")[0]


@pytest.mark.parametrize("user,pw,secret", [("carol", "pen\u00adcil", PG_CAROL),
                                            ("dave", "\u00e9\x07x", PG_DAVE)])
def test_postgresql_verifiers_with_saslprep(user: str, pw: str, secret: str) -> None:
    converse(ClientAuthenticator("scram-sha-256", user, secret), ServerAuthenticator(user, pw))
    auth = ClientAuthenticator("plain", user, secret)
    converse(auth, ServerAuthenticator(user, pw))
    assert auth.password == pw


def _rfc_like_client(gs2: bytes, password: str, server_first_of: ClientAuthenticator) -> bytes:
    """A hand-written client (RFC 5802 directly) for headers scramp won't send, such as "y,,"."""
    bare = b"n=,r=fyko+d2lbbFgONRv9qkxdawL"
    _, sf = one_request(server_first_of.feed(b"p", initial_body(gs2 + bare)))
    attrs = dict(a.split(b"=", 1) for a in sf.split(b","))
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(attrs[b"s"]), int(attrs[b"i"]))
    ck = hmac.digest(salted, b"Client Key", "sha256")
    without = b"c=" + base64.b64encode(gs2) + b",r=" + attrs[b"r"]
    msg = bare + b"," + sf + b"," + without
    sig = hmac.digest(hashlib.sha256(ck).digest(), msg, "sha256")
    return without + b",p=" + base64.b64encode(bytes(x ^ y for x, y in zip(ck, sig, strict=True)))


@pytest.mark.parametrize("gs2", [b"n,,", b"y,,"])
def test_gs2_header_n_and_y(gs2: bytes) -> None:
    auth = ClientAuthenticator("scram-sha-256", USER, PG_ALICE)
    auth.start()
    out = auth.feed(b"p", _rfc_like_client(gs2, PW, auth))
    assert [c for c, _ in requests(out)] == [AUTH_SASL_FINAL, AUTH_OK] and auth.done


def test_rfc7677_vector_server_side(monkeypatch: pytest.MonkeyPatch) -> None:
    salt = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
    monkeypatch.setattr(scram, "_new_nonce", lambda: b"%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0")
    ex = scram.ServerExchange(scram.make_verifier("pencil", salt))
    assert ex.first(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO") == (
        b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
    result = ex.final(b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                      b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
    assert result is not None and result[0] == b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def test_rfc7677_vector_client_side(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scram, "_new_nonce", lambda: b"rOprNGfwEbeRWgbNEkqO")
    ex = scram.ClientExchange("user", password="pencil")
    assert ex.first() == b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
    server_first = b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    assert ex.final(server_first) == (
        b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
    ex.verify(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")


GOOD_FIRST = b"n,,n=,r=abcdefghijkl"


@pytest.mark.parametrize("body", [
    cstr("SCRAM-SHA-256-PLUS") + struct.pack("!i", len(GOOD_FIRST)) + GOOD_FIRST,  # mechanism not offered
    cstr("SCRAM-SHA-256") + struct.pack("!i", -1),  # no initial response
    cstr("SCRAM-SHA-256") + struct.pack("!i", 99) + GOOD_FIRST,  # length lies
    b"SCRAM-SHA-256",  # no NUL
    initial_body(b"p=tls-server-end-point,,n=,r=abcdefghijkl"),  # binding we did not offer
    initial_body(b"n,a=bob,n=,r=abcdefghijkl"),  # authzid
    initial_body(b"x,,n=,r=abcdefghijkl"),
    initial_body(b"n,,r=abcdefghijkl"),
    initial_body(b"n,,n=,r="),
    initial_body(b"n,,n=,r=abc\x7fdef"),
    initial_body(b"garbage"),
])
def test_malformed_client_first(body: bytes) -> None:
    auth = ClientAuthenticator("scram-sha-256", USER, PW)
    auth.start()
    with pytest.raises(ProtocolViolation):
        auth.feed(b"p", body)


@pytest.mark.parametrize("mangle", [
    lambda f: f.split(b",p=")[0],  # no proof
    lambda f: f.replace(b"c=biws", b"c=eSws"),  # says "y,," after sending "n,,"
    lambda f: f.replace(b"c=biws", b"c=b!ws"),  # bad base64
    lambda f: f.replace(b",r=", b",r=X"),  # nonce mismatch
    lambda f: f.split(b",p=")[0] + b",p=" + base64.b64encode(b"short"),
    lambda f: b"r=x,c=biws,p=AAAA",
])
def test_malformed_client_final(mangle: Callable[[bytes], bytes]) -> None:
    auth = ClientAuthenticator("scram-sha-256", USER, PG_ALICE)
    auth.start()
    final = _rfc_like_client(b"n,,", PW, auth)
    with pytest.raises(ProtocolViolation):
        auth.feed(b"p", mangle(final))


def test_out_of_order_and_wrong_type() -> None:
    auth = ClientAuthenticator("scram-sha-256", USER, PW)
    with pytest.raises(ProtocolViolation):
        auth.feed(b"p", b"x")  # before start()
    auth.start()
    with pytest.raises(ProtocolViolation):
        auth.feed(b"Q", cstr("select 1"))
    with pytest.raises(ProtocolViolation):
        auth.start()  # twice
    plain = ClientAuthenticator("plain", USER, PW)
    plain.start()
    with pytest.raises(ProtocolViolation):
        plain.feed(b"p", b"pencil")  # not NUL-terminated
    md5 = ClientAuthenticator("md5", USER, PW)
    md5.start()
    with pytest.raises(ProtocolViolation):
        md5.feed(b"p", b"md5\x00abc\x00")


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=80), st.binary(max_size=80))
def test_fuzzed_client_messages_only_raise_pgmux_errors(first: bytes, final: bytes) -> None:
    auth = ClientAuthenticator("scram-sha-256", USER, PG_ALICE)
    auth.start()
    try:
        auth.feed(b"p", initial_body(first))
        auth.feed(b"p", final)
    except (ProtocolViolation, AuthFailed):
        pass
    assert not auth.done


# -- SCRAM, pgmux as the client -----------------------------------------------------------------

def test_server_authenticator_against_scramp_server() -> None:
    login_to_scramp(ServerAuthenticator(USER, PW), scramp_server(PG_ALICE))


def test_client_key_pass_through() -> None:
    """A client logs in to pgmux holding only a verifier; pgmux then logs in to a server holding
    the same verifier with the recovered keys, never knowing the password."""
    front = ClientAuthenticator("scram-sha-256", USER, PG_ALICE)
    scramp_login(front, PW)
    assert front.client_key and front.server_key and front.password is None
    keys = (front.client_key, front.server_key)
    # The auth_file secret may be passed along as `password`: a verifier alone answers nothing.
    login_to_scramp(ServerAuthenticator(USER, PG_ALICE, scram_keys=keys), scramp_server(PG_ALICE))
    login_to_scramp(ServerAuthenticator(USER, None, scram_keys=keys), scramp_server(PG_ALICE))
    # A server whose verifier has another salt rejects the keys (PgBouncer's documented limit).
    other = make_scram_verifier(PW)
    with pytest.raises(scramp.ScramException):
        login_to_scramp(ServerAuthenticator(USER, None, scram_keys=keys), scramp_server(other))


def _to_final(auth: ServerAuthenticator, server: scramp.core.ScramServer) -> None:
    first = one_password_body(auth.feed(AUTH_SASL, b"SCRAM-SHA-256\x00\x00"))
    server.set_client_first(first.split(b"\x00", 1)[1][4:].decode())
    final = one_password_body(auth.feed(AUTH_SASL_CONTINUE, server.get_server_first().encode()))
    server.set_client_final(final.decode())


@pytest.mark.parametrize("server_final", [
    b"v=" + base64.b64encode(bytes(32)),  # a server that doesn't know the secret
    b"e=other-error",
])
def test_bad_server_signature_rejected(server_final: bytes) -> None:
    auth = ServerAuthenticator(USER, PW)
    _to_final(auth, scramp_server(PG_ALICE))
    with pytest.raises(PgmuxError) as e:
        auth.feed(AUTH_SASL_FINAL, server_final)
    assert e.value.sqlstate == "28000" and not auth.done


def test_ok_without_sasl_final_rejected() -> None:
    auth = ServerAuthenticator(USER, PW)
    _to_final(auth, scramp_server(PG_ALICE))
    with pytest.raises(ProtocolViolation):
        auth.feed(AUTH_OK, b"")


@pytest.mark.parametrize("server_first", [
    b"r=someoneelse,s=QUJD,i=4096",  # nonce not extending ours
    b"s=QUJD,i=4096",
    b"r={n}x,s=!!,i=4096",
    b"r={n}x,s=QUJD,i=-1",
    b"r={n},s=QUJD,i=4096",  # server added nothing
])
def test_malformed_server_first(server_first: bytes) -> None:
    auth = ServerAuthenticator(USER, PW)
    first = one_password_body(auth.feed(AUTH_SASL, b"SCRAM-SHA-256\x00\x00"))
    nonce = first.split(b",r=")[1]
    with pytest.raises(ProtocolViolation):
        auth.feed(AUTH_SASL_CONTINUE, server_first.replace(b"{n}", nonce))


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=60), st.binary(max_size=60))
def test_fuzzed_server_messages_only_raise_pgmux_errors(server_first: bytes, server_final: bytes) -> None:
    auth = ServerAuthenticator(USER, PW)
    auth.feed(AUTH_SASL, b"SCRAM-SHA-256\x00\x00")
    try:
        auth.feed(AUTH_SASL_CONTINUE, server_first)
        auth.feed(AUTH_SASL_FINAL, server_final)
        auth.feed(AUTH_OK, b"")
    except PgmuxError:
        pass
    assert not auth.done


# -- ServerAuthenticator: cleartext, md5, what it can't answer ----------------------------------

def test_cleartext_and_md5_answers() -> None:
    assert ServerAuthenticator(USER, PW).feed(AUTH_CLEARTEXT, b"") == b"p\x00\x00\x00\x0bpencil\x00"
    salt = b"abcd"
    for secret in (PW, md5_secret(USER, PW)):
        body = one_password_body(ServerAuthenticator(USER, secret).feed(AUTH_MD5, salt) or b"")
        assert body == md5_response(USER, PW, salt) + b"\x00"


def test_trust_server() -> None:
    auth = ServerAuthenticator(USER, None)
    assert auth.feed(AUTH_OK, b"") is None and auth.done
    with pytest.raises(ProtocolViolation):
        auth.feed(AUTH_OK, b"")


@pytest.mark.parametrize("password,code,payload,needle", [
    (None, AUTH_CLEARTEXT, b"", "no password is known"),
    (None, AUTH_MD5, b"abcd", "no password is known"),
    (None, AUTH_SASL, b"SCRAM-SHA-256\x00\x00", "no password is known"),
    (md5_secret(USER, PW), AUTH_CLEARTEXT, b"", "only an md5 hash"),
    (md5_secret(USER, PW), AUTH_SASL, b"SCRAM-SHA-256\x00\x00", "only an md5 hash"),
    (PG_ALICE, AUTH_MD5, b"abcd", "only a SCRAM secret"),
    (PG_ALICE, AUTH_SASL, b"SCRAM-SHA-256\x00\x00", "did not log in by SCRAM"),
    (PW, AUTH_SASL, b"SCRAM-SHA-256-PLUS\x00\x00", "SCRAM-SHA-256-PLUS"),
    (PW, 7, b"", "GSSAPI"),
    (PW, 9, b"", "SSPI"),
])
def test_server_asks_what_pgmux_cannot_answer(password: str | None, code: int, payload: bytes,
                                               needle: str) -> None:
    with pytest.raises(PgmuxError, match=needle) as e:
        ServerAuthenticator(USER, password).feed(code, payload)
    assert e.value.sqlstate == "28000" and '"alice"' in e.value.message


def test_server_protocol_errors() -> None:
    with pytest.raises(ProtocolViolation):
        ServerAuthenticator(USER, PW).feed(99, b"")
    with pytest.raises(ProtocolViolation):
        ServerAuthenticator(USER, PW).feed(AUTH_MD5, b"abc")
    with pytest.raises(ProtocolViolation):
        ServerAuthenticator(USER, PW).feed(AUTH_SASL_CONTINUE, b"r=x,s=QUJD,i=1")
