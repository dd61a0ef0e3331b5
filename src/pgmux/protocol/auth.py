"""Authentication exchanges, sans-IO: bytes in, bytes (or a decision) out.

ClientAuthenticator: pgmux plays the server to a client, with PgBouncer's auth_type rules.
ServerAuthenticator: pgmux plays the client to PostgreSQL.

A secret from auth_file is classified as PostgreSQL's get_password_type does: "md5" + 32 hex
digits is an md5 hash, a parseable SCRAM-SHA-256 verifier is a verifier, anything else is the
plain-text password.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
import struct
from typing import Literal

from pgmux.errors import AuthFailed, PgmuxError, ProtocolViolation
from pgmux.protocol import scram
from pgmux.protocol.messages import (
    AUTH_CLEARTEXT,
    AUTH_MD5,
    AUTH_OK,
    AUTH_SASL,
    AUTH_SASL_CONTINUE,
    AUTH_SASL_FINAL,
    PASSWORD,
    auth_md5,
    auth_ok,
    auth_request,
    auth_sasl,
    cstr,
    password_message,
    sasl_initial_response,
    sasl_response,
)
from pgmux.protocol.scram import ScramVerifier

__all__ = [
    "AUTH_TYPES", "ClientAuthenticator", "ScramVerifier", "ServerAuthenticator", "make_scram_verifier",
    "md5_response", "md5_secret", "parse_scram_verifier", "secret_kind",
]

AUTH_TYPES = frozenset({"trust", "any", "plain", "md5", "scram-sha-256"})
SecretKind = Literal["plain", "md5", "scram"]

# Keys the salt shown for a user whose secret is not a stored verifier (plain text, md5, unknown
# user), so it is the same on every attempt, as a real verifier's is: a salt that changed per
# attempt would tell a prober which users don't exist. Made at import: worker processes forked
# after import share it, so they agree too.
_SALT_KEY = secrets.token_bytes(32)

_HEX = frozenset("0123456789abcdefABCDEF")


def md5_secret(user: str, password: str) -> str:
    """PostgreSQL's stored md5 hash: "md5" + md5(password + user)."""
    return "md5" + hashlib.md5((password + user).encode("utf-8")).hexdigest()


def _is_md5(secret: str) -> bool:
    return len(secret) == 35 and secret.startswith("md5") and all(c in _HEX for c in secret[3:])


def md5_response(user: str, secret: str, salt: bytes) -> bytes:
    """Answer to an MD5 challenge, "md5" + md5(md5hex(password + user) + salt), without the NUL.
    `secret` may be the plain password or its md5 hash: the hash is all the answer needs."""
    inner = secret[3:].lower() if _is_md5(secret) else md5_secret(user, secret)[3:]
    return b"md5" + hashlib.md5(inner.encode("ascii") + salt).hexdigest().encode("ascii")


def secret_kind(secret: str) -> SecretKind:
    if _is_md5(secret):
        return "md5"
    if secret.startswith(scram.MECHANISM + "$"):
        try:
            scram.parse_verifier(secret)
            return "scram"
        except ValueError:
            pass  # PostgreSQL takes a malformed verifier as a plain-text password; so do we
    return "plain"


def parse_scram_verifier(s: str) -> ScramVerifier:
    return scram.parse_verifier(s)


def make_scram_verifier(password: str, salt: bytes | None = None,
                        iterations: int = scram.DEFAULT_ITERATIONS) -> str:
    return str(scram.make_verifier(password, salt, iterations))


def _cstring(body: bytes, what: str) -> bytes:
    if not body.endswith(b"\x00") or body.index(b"\x00") != len(body) - 1:
        raise ProtocolViolation(f"invalid {what} packet")
    return body[:-1]


class _State(enum.Enum):
    START = "start"
    CLEARTEXT = "awaiting cleartext password"
    MD5 = "awaiting md5 response"
    SASL_INITIAL = "awaiting SASLInitialResponse"
    SASL_FINAL = "awaiting SASLResponse"
    DONE = "done"
    FAILED = "failed"


class ClientAuthenticator:
    """Authenticates one client. start() once, then feed() each 'p' message until .done.

    `log_detail` says why a login failed, for pgmux's log only: like PostgreSQL, the client just
    hears "password authentication failed", whether the user is unknown, the password wrong, or
    the stored secret unusable for the method.
    """

    def __init__(self, auth_type: str, user: str, secret: str | None,
                 iterations: int = scram.DEFAULT_ITERATIONS, cbind_data: bytes | None = None) -> None:
        """`cbind_data`: the client is on TLS and this is the tls-server-end-point hash of pgmux's
        certificate; SCRAM then offers SCRAM-SHA-256-PLUS first."""
        if auth_type not in AUTH_TYPES:
            raise ValueError(f"unsupported auth_type {auth_type!r}")
        self.auth_type = auth_type
        # scram_iterations: for the verifier made from a plain-text secret (a stored one keeps its own).
        self.iterations = iterations
        self.user = user
        self.secret = secret
        self.done = False
        self.password: str | None = None
        self.client_key: bytes | None = None
        self.server_key: bytes | None = None
        self.log_detail: str | None = None
        self._state = _State.START
        self._kind: SecretKind | None = None if secret is None else secret_kind(secret)
        self._salt = b""
        self._scram: scram.ServerExchange | None = None
        self._doomed = False
        self._cbind_data = cbind_data

    # -- the first request ------------------------------------------------------------------

    def start(self) -> bytes:
        if self._state is not _State.START:
            raise ProtocolViolation("authentication already started")
        kind, secret = self._kind, self.secret
        if self.auth_type == "any" or (self.auth_type == "trust" and secret is not None):
            return self._succeed(auth_ok())
        if self.auth_type == "trust":  # PgBouncer: the user must still exist in auth_file
            self._state = _State.FAILED
            self.log_detail = "no such user in auth_file"
            raise AuthFailed(f'no such user: "{self.user}"', sqlstate="28000")
        if self.auth_type == "plain":
            self._state = _State.CLEARTEXT
            return auth_request(AUTH_CLEARTEXT)
        if self.auth_type == "md5" and kind != "scram":
            if secret is None:
                self._doomed, self.log_detail = True, "no such user in auth_file"
            elif kind == "plain":
                self.password = secret
            self._salt = secrets.token_bytes(4)
            self._state = _State.MD5
            return auth_md5(self._salt)
        # SCRAM: auth_type scram-sha-256, or md5 with a SCRAM verifier in auth_file.
        if kind == "scram":
            assert secret is not None
            verifier = scram.parse_verifier(secret)
        else:
            # A plain password gets a verifier for this exchange; an md5 hash or unknown user gets
            # a mock one (from a random password, so the time spent is the same) and is doomed.
            salt = hmac.digest(_SALT_KEY, self.user.encode("utf-8"), "sha256")[:scram.SALT_LEN]
            if kind == "plain":
                assert secret is not None
                self.password = secret
                verifier = scram.make_verifier(secret, salt, self.iterations)
            else:
                self._doomed = True
                self.log_detail = ("no such user in auth_file" if secret is None else
                                   "auth_file has an md5 hash for this user, which cannot answer "
                                   "SCRAM-SHA-256; store the plain-text password or a SCRAM secret")
                verifier = scram.make_verifier(secrets.token_hex(16), salt, self.iterations)
        self._scram = scram.ServerExchange(verifier, self._cbind_data)
        self._state = _State.SASL_INITIAL
        if self._cbind_data is not None:
            return auth_sasl([scram.MECHANISM_PLUS, scram.MECHANISM])
        return auth_sasl([scram.MECHANISM])

    # -- the client's answers ---------------------------------------------------------------

    def feed(self, msg_type: bytes, body: bytes | memoryview) -> bytes:
        if msg_type != PASSWORD:
            raise ProtocolViolation(f"expected password response, got message type {msg_type!r}")
        handler = {
            _State.CLEARTEXT: self._on_cleartext,
            _State.MD5: self._on_md5,
            _State.SASL_INITIAL: self._on_sasl_initial,
            _State.SASL_FINAL: self._on_sasl_response,
        }.get(self._state)
        if handler is None:
            raise ProtocolViolation(f"unexpected password message while {self._state.value}")
        return handler(bytes(body))

    def _on_cleartext(self, body: bytes) -> bytes:
        raw = _cstring(body, "password")
        try:
            given = raw.decode("utf-8")
        except UnicodeDecodeError:
            given = None  # can't equal any secret read from a text file
        kind, secret = self._kind, self.secret or ""
        ok = False
        if kind == "plain":
            ok = hmac.compare_digest(raw, secret.encode("utf-8"))
        elif kind == "md5" and given is not None:
            ok = hmac.compare_digest(md5_secret(self.user, given), secret.lower())
        elif kind == "scram" and given is not None:
            v = scram.parse_verifier(secret)
            client_key, server_key = scram.keys_from_password(raw, v.salt, v.iterations)
            ok = hmac.compare_digest(hashlib.sha256(client_key).digest(), v.stored_key) & \
                hmac.compare_digest(server_key, v.server_key)
            if ok:
                self.client_key, self.server_key = client_key, server_key
        elif kind is None:
            hmac.compare_digest(raw, secrets.token_bytes(len(raw)))  # same work, then fail
            self.log_detail = "no such user in auth_file"
        if not ok or given is None:
            return self._fail()
        self.password = given
        return self._succeed(auth_ok())

    def _on_md5(self, body: bytes) -> bytes:
        answer = _cstring(body, "password")
        secret = self.secret if self.secret is not None and not self._doomed else secrets.token_hex(8)
        ok = hmac.compare_digest(answer, md5_response(self.user, secret, self._salt))
        if not ok or self._doomed:
            return self._fail()
        return self._succeed(auth_ok())

    def _on_sasl_initial(self, body: bytes) -> bytes:
        mech_end = body.find(b"\x00")
        if mech_end < 0 or len(body) < mech_end + 5:
            raise ProtocolViolation("invalid SASLInitialResponse packet")
        mech = body[:mech_end]
        plus = mech == scram.MECHANISM_PLUS.encode() and self._cbind_data is not None
        if mech != scram.MECHANISM.encode() and not plus:
            raise ProtocolViolation("client selected an invalid SASL authentication mechanism")
        (length,) = struct.unpack_from("!i", body, mech_end + 1)
        data = body[mech_end + 5:]
        if length != len(data):
            raise ProtocolViolation("invalid SASLInitialResponse length")
        assert self._scram is not None
        self._scram.plus = plus
        server_first = self._scram.first(data)
        self._state = _State.SASL_FINAL
        return auth_request(AUTH_SASL_CONTINUE, server_first)

    def _on_sasl_response(self, body: bytes) -> bytes:
        assert self._scram is not None
        result = self._scram.final(body)
        if result is None or self._doomed:
            return self._fail()
        server_final, client_key = result
        if self._kind == "scram":
            # Kept only against a stored verifier: then PostgreSQL may hold the same one, and these
            # keys log in there. With a plain secret the password itself is better and the keys
            # belong to a salt made up for this exchange.
            assert self.secret is not None
            self.client_key = client_key
            self.server_key = scram.parse_verifier(self.secret).server_key
        return self._succeed(auth_request(AUTH_SASL_FINAL, server_final) + auth_ok())

    def _succeed(self, out: bytes) -> bytes:
        self._state, self.done = _State.DONE, True
        return out

    def _fail(self) -> bytes:
        self._state = _State.FAILED
        self.password = self.client_key = self.server_key = None
        if self.log_detail is None:
            self.log_detail = "password does not match"
        raise AuthFailed(f'password authentication failed for user "{self.user}"')


_UNSUPPORTED = {2: "Kerberos V5", 6: "SCM credential", 7: "GSSAPI", 8: "GSSAPI", 9: "SSPI"}


class ServerAuthenticator:
    """Logs pgmux in to PostgreSQL. feed() each AuthenticationRequest until .done.

    `password` is the auth_file secret or the password from the database's connection string:
    plain text answers everything, an md5 hash answers only md5. A SCRAM verifier can't answer
    anything by itself; `scram_keys` from the client's own SCRAM login can.
    """

    def __init__(self, user: str, password: str | None, *,
                 scram_keys: tuple[bytes, bytes] | None = None) -> None:
        self.user = user
        self.password = password
        self.scram_keys = scram_keys
        self.done = False
        self._kind: SecretKind | None = None if password is None else secret_kind(password)
        self._scram: scram.ClientExchange | None = None
        self._scram_stage = 0  # 1 after SASL, 2 after SASLContinue, 3 after a verified SASLFinal

    def feed(self, code: int, payload: bytes | memoryview) -> bytes | None:
        payload = bytes(payload)
        if self.done:
            raise ProtocolViolation("authentication request after AuthenticationOk")
        if code == AUTH_OK:
            if self._scram is not None and self._scram_stage != 3:
                # Without SASLFinal the server never proved it knows the secret.
                raise ProtocolViolation("server sent AuthenticationOk before completing SCRAM")
            self.done = True
            return None
        if code == AUTH_CLEARTEXT:
            if self._kind != "plain":
                raise self._no_password("a cleartext password", "put the plain-text password in auth_file "
                                        "or the database's connection string")
            assert self.password is not None
            return password_message(cstr(self.password))
        if code == AUTH_MD5:
            if len(payload) != 4:
                raise ProtocolViolation("invalid MD5 authentication request")
            if self._kind not in ("plain", "md5"):
                raise self._no_password("md5", "put the plain-text password or its md5 hash in auth_file "
                                        "or the database's connection string")
            assert self.password is not None
            return password_message(md5_response(self.user, self.password, payload) + b"\x00")
        if code in (AUTH_SASL, AUTH_SASL_CONTINUE, AUTH_SASL_FINAL):
            return self._on_sasl(code, payload)
        if code in _UNSUPPORTED:
            raise PgmuxError(f'server asks for {_UNSUPPORTED[code]} authentication for user "{self.user}", '
                             "which pgmux does not support; use scram-sha-256, md5 or password "
                             "for this user in pg_hba.conf", sqlstate="28000")
        raise ProtocolViolation(f"server sent unknown authentication request code {code}")

    def _on_sasl(self, code: int, payload: bytes) -> bytes | None:
        if code == AUTH_SASL and self._scram is None:
            mechanisms = payload.split(b"\x00")
            if scram.MECHANISM.encode() not in mechanisms:
                offered = ", ".join(m.decode("utf-8", "replace") for m in mechanisms if m)
                raise PgmuxError(f'server offers only SASL mechanisms pgmux does not support for user '
                                 f'"{self.user}": {offered}', sqlstate="28000")
            if self._kind == "plain":
                self._scram = scram.ClientExchange(self.user, password=self.password)
            elif self.scram_keys is not None:
                self._scram = scram.ClientExchange(self.user, keys=self.scram_keys)
            else:
                raise self._no_password(
                    "SCRAM-SHA-256", "put the plain-text password in auth_file or the database's "
                    "connection string, or put the server's exact SCRAM secret (same salt and "
                    "iterations) in auth_file and have clients log in by SCRAM")
            self._scram_stage = 1
            return sasl_initial_response(scram.MECHANISM, self._scram.first())
        if code == AUTH_SASL_CONTINUE and self._scram_stage == 1:
            assert self._scram is not None
            self._scram_stage = 2
            return sasl_response(self._scram.final(payload))
        if code == AUTH_SASL_FINAL and self._scram_stage == 2:
            assert self._scram is not None
            self._scram.verify(payload)
            self._scram_stage = 3
            return None
        raise ProtocolViolation(f"unexpected SASL authentication request {code}")

    def _no_password(self, method: str, remedy: str) -> PgmuxError:
        have = {None: "no password is known", "md5": "only an md5 hash is known",
                "scram": "only a SCRAM secret is known"}.get(self._kind, "no usable password is known")
        if self._kind == "scram" and self.scram_keys is None and method == "SCRAM-SHA-256":
            have += " and the client did not log in by SCRAM"
        return PgmuxError(f'server asks for {method} authentication for user "{self.user}", but {have}; '
                          f"{remedy}", sqlstate="28000")
