"""SCRAM-SHA-256 as PostgreSQL speaks it (RFC 5802 / RFC 7677), sans-IO; towards clients over TLS also
SCRAM-SHA-256-PLUS with channel binding `tls-server-end-point` (RFC 5929: the hash of pgmux's own
certificate, which a man in the middle presenting another certificate cannot match).

Why the exchange is written here rather than driven through scramp's ScramServer/ScramClient:
PgBouncer's trick of logging in to PostgreSQL with only a SCRAM verifier needs the ClientKey a
client proves (ClientProof XOR ClientSignature), and neither side of scramp exposes it; scramp's
server also rejects the empty user name libpq sends ("n=,"). The math is a few lines of hashlib
and hmac. scramp still does SASLprep here and is the oracle the unit tests check both sides against.

Parsing works on bytes so the AuthMessage is signed byte for byte as received, whatever the
encoding of the (ignored) user name.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from scramp.utils import saslprep

from pgmux.errors import PgmuxError, ProtocolViolation

MECHANISM = "SCRAM-SHA-256"
MECHANISM_PLUS = "SCRAM-SHA-256-PLUS"
CBIND_TYPE = b"tls-server-end-point"
DEFAULT_ITERATIONS = 4096
SALT_LEN = 16  # PostgreSQL's SCRAM_DEFAULT_SALT_LEN
_RAW_NONCE_LEN = 18  # PostgreSQL's SCRAM_RAW_NONCE_LEN; base64 of it has no ',' and no padding
_KEY_LEN = 32


@dataclass(frozen=True)
class ScramVerifier:
    """PostgreSQL's stored secret: `SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`."""

    iterations: int
    salt: bytes
    stored_key: bytes
    server_key: bytes

    def __str__(self) -> str:
        b64 = _b64e
        return (f"{MECHANISM}${self.iterations}:{b64(self.salt)}"
                f"${b64(self.stored_key)}:{b64(self.server_key)}")


def _b64e(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


def _b64d(s: bytes | str) -> bytes:
    return base64.b64decode(s, validate=True)


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.digest(key, msg, "sha256")


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def normalize_password(password: str | bytes) -> bytes:
    """SASLprep the way PostgreSQL's pg_saslprep uses it: pure ASCII passes untouched, and a
    password SASLprep rejects (bad UTF-8, prohibited characters) is used as raw bytes, so
    every password PostgreSQL accepts gives the same keys here."""
    raw = password.encode("utf-8") if isinstance(password, str) else password
    if raw.isascii():
        return raw
    try:
        return str(saslprep(raw.decode("utf-8"))).encode("utf-8")
    except Exception:  # scramp raises ScramException; UnicodeDecodeError for non-UTF-8 bytes
        return raw


def keys_from_password(password: str | bytes, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
    """(ClientKey, ServerKey) for a password. Hi() of RFC 5802 is PBKDF2-HMAC-SHA-256."""
    salted = hashlib.pbkdf2_hmac("sha256", normalize_password(password), salt, iterations)
    return _hmac(salted, b"Client Key"), _hmac(salted, b"Server Key")


def make_verifier(password: str | bytes, salt: bytes | None = None,
                  iterations: int = DEFAULT_ITERATIONS) -> ScramVerifier:
    salt = secrets.token_bytes(SALT_LEN) if salt is None else salt
    client_key, server_key = keys_from_password(password, salt, iterations)
    return ScramVerifier(iterations, salt, hashlib.sha256(client_key).digest(), server_key)


def parse_verifier(s: str) -> ScramVerifier:
    """Parse PostgreSQL's SCRAM secret format; ValueError when `s` is not one."""
    try:
        mech, iter_salt, keys = s.split("$")
        iters, salt = iter_salt.split(":")
        stored, server = keys.split(":")
        v = ScramVerifier(int(iters), _b64d(salt), _b64d(stored), _b64d(server))
    except (ValueError, binascii.Error) as e:
        raise ValueError(f"not a SCRAM-SHA-256 secret: {e}") from None
    if mech != MECHANISM or v.iterations <= 0 or not v.salt or \
            len(v.stored_key) != _KEY_LEN or len(v.server_key) != _KEY_LEN:
        raise ValueError("not a SCRAM-SHA-256 secret")
    return v


def _new_nonce() -> bytes:
    return base64.b64encode(secrets.token_bytes(_RAW_NONCE_LEN))


def _malformed(what: str) -> ProtocolViolation:
    return ProtocolViolation(f"malformed SCRAM message: {what}")


def _printable_nonce(n: bytes) -> bool:
    return bool(n) and all(0x21 <= c <= 0x7E and c != 0x2C for c in n)


class ServerExchange:
    """pgmux as the SCRAM server, checking a client against `verifier`.

    The caller decides the outcome for a doomed exchange (unknown user, or a secret SCRAM can't
    use): it still runs to the end against a mock verifier so the client can't tell why it failed.
    """

    def __init__(self, verifier: ScramVerifier, cbind_data: bytes | None = None) -> None:
        """`cbind_data`: the tls-server-end-point hash when the client is on TLS and -PLUS was offered."""
        self._v = verifier
        self._cbind_data = cbind_data
        self.plus = False  # the client chose SCRAM-SHA-256-PLUS (set by the caller from the mechanism)
        self._gs2 = b""
        self._expected_cbind = b""
        self._auth_prefix = b""  # client-first-bare "," server-first
        self._nonce = b""

    def first(self, client_first: bytes) -> bytes:
        """client-first-message in, server-first-message out."""
        parts = client_first.split(b",", 2)
        if len(parts) != 3:
            raise _malformed("client-first-message needs a GS2 header")
        flag, authzid, bare = parts
        if flag.startswith(b"p="):
            if not self.plus or self._cbind_data is None:
                # -PLUS was not offered (no TLS) or not chosen: a client insisting on binding is confused.
                raise ProtocolViolation("client requires SCRAM channel binding, but it was not offered")
            if flag[2:] != CBIND_TYPE:
                raise ProtocolViolation(f"unsupported SCRAM channel-binding type {flag[2:]!r}")
        elif self.plus:
            raise ProtocolViolation("client selected SCRAM-SHA-256-PLUS without channel binding")
        elif flag == b"y" and self._cbind_data is not None:
            # The client could bind and believes we cannot, yet we offered -PLUS: a downgrade (RFC 5802).
            raise ProtocolViolation("SCRAM channel binding negotiation error")
        elif flag not in (b"n", b"y"):
            raise _malformed("unexpected channel-binding flag")
        if authzid:
            raise ProtocolViolation("client uses authorization identity, but it is not supported")
        attrs = bare.split(b",")
        # The user name ("n=") is ignored as PostgreSQL does: the StartupMessage named the user.
        if len(attrs) < 2 or not attrs[0].startswith(b"n=") or not attrs[1].startswith(b"r="):
            raise _malformed("client-first-message needs n= and r=")
        c_nonce = attrs[1][2:]
        if not _printable_nonce(c_nonce):
            raise _malformed("invalid client nonce")
        self._gs2 = flag + b",,"
        self._expected_cbind = self._gs2 + (self._cbind_data or b"") if self.plus else self._gs2
        self._nonce = c_nonce + _new_nonce()
        server_first = (b"r=" + self._nonce + b",s=" + base64.b64encode(self._v.salt)
                        + b",i=" + str(self._v.iterations).encode())
        self._auth_prefix = bare + b"," + server_first
        return server_first

    def final(self, client_final: bytes) -> tuple[bytes, bytes] | None:
        """client-final-message in; (server-final-message, ClientKey) when the proof holds, else None."""
        if not self._nonce:
            raise ProtocolViolation("SCRAM client-final-message before client-first-message")
        attrs = client_final.split(b",")
        if len(attrs) < 3 or attrs[0][:2] != b"c=" or attrs[1][:2] != b"r=" or attrs[-1][:2] != b"p=":
            raise _malformed("client-final-message needs c=, r= and p=")
        try:
            cbind, proof = _b64d(attrs[0][2:]), _b64d(attrs[-1][2:])
        except binascii.Error:
            raise _malformed("bad base64 in client-final-message") from None
        if not hmac.compare_digest(cbind, self._expected_cbind):
            raise ProtocolViolation("SCRAM channel binding check failed")
        if attrs[1][2:] != self._nonce:
            raise ProtocolViolation("SCRAM nonce mismatch")
        if len(proof) != _KEY_LEN:
            raise _malformed("invalid proof length")
        auth_msg = self._auth_prefix + b"," + client_final[:-len(attrs[-1]) - 1]
        client_key = _xor(proof, _hmac(self._v.stored_key, auth_msg))
        if not hmac.compare_digest(hashlib.sha256(client_key).digest(), self._v.stored_key):
            return None
        return b"v=" + base64.b64encode(_hmac(self._v.server_key, auth_msg)), client_key


class ClientExchange:
    """pgmux as the SCRAM client, proving either a password or a (ClientKey, ServerKey) pair.

    The key pair only works when PostgreSQL's verifier has the salt and iteration count the keys
    were made with; PostgreSQL then answers 28P01 like for a wrong password.
    """

    def __init__(self, user: str, *, password: str | None = None,
                 keys: tuple[bytes, bytes] | None = None) -> None:
        if password is None and keys is None:
            raise ValueError("a SCRAM client needs a password or a (client_key, server_key) pair")
        self._password = password
        self._keys = keys
        # PostgreSQL ignores this name; sending it keeps strict servers (scramp's) happy too.
        name = user.replace("=", "=3D").replace(",", "=2C").encode("utf-8")
        self._c_nonce = _new_nonce()
        self._bare = b"n=" + name + b",r=" + self._c_nonce
        self._server_signature = b""

    def first(self) -> bytes:
        return b"n,," + self._bare

    def final(self, server_first: bytes) -> bytes:
        attrs = server_first.split(b",")
        if len(attrs) < 3 or [a[:2] for a in attrs[:3]] != [b"r=", b"s=", b"i="]:
            raise _malformed("server-first-message needs r=, s= and i=")
        nonce = attrs[0][2:]
        if not nonce.startswith(self._c_nonce) or len(nonce) <= len(self._c_nonce) \
                or not _printable_nonce(nonce):
            raise ProtocolViolation("SCRAM server nonce does not extend the client nonce")
        try:
            salt, iterations = _b64d(attrs[1][2:]), int(attrs[2][2:])
        except (binascii.Error, ValueError):
            raise _malformed("bad salt or iteration count in server-first-message") from None
        if iterations <= 0 or not salt:
            raise _malformed("bad salt or iteration count in server-first-message")
        if self._password is not None:
            client_key, server_key = keys_from_password(self._password, salt, iterations)
        else:
            assert self._keys is not None
            client_key, server_key = self._keys
        without_proof = b"c=biws,r=" + nonce  # biws = base64("n,,")
        auth_msg = self._bare + b"," + server_first + b"," + without_proof
        proof = _xor(client_key, _hmac(hashlib.sha256(client_key).digest(), auth_msg))
        self._server_signature = _hmac(server_key, auth_msg)
        return without_proof + b",p=" + base64.b64encode(proof)

    def verify(self, server_final: bytes) -> None:
        """Check the server knows the verifier too; raises PgmuxError 28000 when it does not."""
        if not self._server_signature:
            raise ProtocolViolation("SCRAM server-final-message before server-first-message")
        if server_final.startswith(b"e="):
            err = server_final[2:].decode("utf-8", "replace")
            raise PgmuxError(f"server rejected SCRAM authentication: {err}", sqlstate="28000")
        if not server_final.startswith(b"v="):
            raise _malformed("server-final-message needs v=")
        try:
            signature = _b64d(server_final[2:].split(b",")[0])
        except binascii.Error:
            raise _malformed("bad base64 in server-final-message") from None
        if not hmac.compare_digest(signature, self._server_signature):
            raise PgmuxError("server's SCRAM signature does not verify: it does not know this user's "
                             "secret (wrong server, or a man in the middle)", sqlstate="28000")
