"""Builders for the messages pgmux writes itself, and the type bytes PostgreSQL names.

Only messages pgmux originates are built here; relayed messages are never decoded into objects.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence

from pgmux.errors import ProtocolViolation

_I32 = struct.Struct("!i")
_HDR = struct.Struct("!ci")

PROTOCOL_V3 = 196608  # 3 << 16
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102

# Backend (server -> client) message types.
AUTHENTICATION = b"R"
BACKEND_KEY_DATA = b"K"
BIND_COMPLETE = b"2"
CLOSE_COMPLETE = b"3"
COMMAND_COMPLETE = b"C"
COPY_DATA = b"d"
COPY_DONE = b"c"
COPY_IN_RESPONSE = b"G"
COPY_OUT_RESPONSE = b"H"
COPY_BOTH_RESPONSE = b"W"
DATA_ROW = b"D"
EMPTY_QUERY_RESPONSE = b"I"
ERROR_RESPONSE = b"E"
FUNCTION_CALL_RESPONSE = b"V"
NEGOTIATE_PROTOCOL_VERSION = b"v"
NO_DATA = b"n"
NOTICE_RESPONSE = b"N"
NOTIFICATION_RESPONSE = b"A"
PARAMETER_DESCRIPTION = b"t"
PARAMETER_STATUS = b"S"
PARSE_COMPLETE = b"1"
PORTAL_SUSPENDED = b"s"
READY_FOR_QUERY = b"Z"
ROW_DESCRIPTION = b"T"

# Frontend (client -> server) message types.
BIND = b"B"
CLOSE = b"C"
COPY_FAIL = b"f"
DESCRIBE = b"D"
EXECUTE = b"E"
FLUSH = b"H"
FUNCTION_CALL = b"F"
PARSE = b"P"
PASSWORD = b"p"  # also SASLInitialResponse and SASLResponse
QUERY = b"Q"
SYNC = b"S"
TERMINATE = b"X"

# Authentication request codes (the int32 after 'R').
AUTH_OK = 0
AUTH_CLEARTEXT = 3
AUTH_MD5 = 5
AUTH_SASL = 10
AUTH_SASL_CONTINUE = 11
AUTH_SASL_FINAL = 12

# Type OIDs used in admin result sets.
OID_INT8 = 20
OID_INT4 = 23
OID_TEXT = 25
OID_NUMERIC = 1700


def message(mtype: bytes, body: bytes = b"") -> bytes:
    return _HDR.pack(mtype, len(body) + 4) + body


def cstr(s: str) -> bytes:
    # surrogateescape: names and texts a client sent that are not UTF-8 were decoded so; they go back
    # out as the bytes they came as (a statement name in an error message, a PREPARE re-sent).
    return s.encode("utf-8", "surrogateescape") + b"\x00"


def auth_request(code: int, payload: bytes = b"") -> bytes:
    return message(AUTHENTICATION, _I32.pack(code) + payload)


def auth_ok() -> bytes:
    return _AUTH_OK  # (bytes: one object for every login)


_AUTH_OK = auth_request(AUTH_OK)


def auth_md5(salt: bytes) -> bytes:
    return auth_request(AUTH_MD5, salt)


def auth_sasl(mechanisms: Sequence[str]) -> bytes:
    return auth_request(AUTH_SASL, b"".join(cstr(m) for m in mechanisms) + b"\x00")


def parameter_status(name: str, value: str) -> bytes:
    return message(PARAMETER_STATUS, cstr(name) + cstr(value))


_BACKEND_KEY_DATA = struct.Struct("!ciii")


def backend_key_data(pid: int, key: int) -> bytes:
    return _BACKEND_KEY_DATA.pack(BACKEND_KEY_DATA, 12, pid, key)


def ready_for_query(status: bytes = b"I") -> bytes:
    return message(READY_FOR_QUERY, status)


def command_complete(tag: str) -> bytes:
    return message(COMMAND_COMPLETE, cstr(tag))


def empty_query_response() -> bytes:
    return message(EMPTY_QUERY_RESPONSE)


def _fields(severity: str, sqlstate: str, text: str, detail: str | None, hint: str | None) -> bytes:
    parts = [b"S", cstr(severity), b"V", cstr(severity), b"C", cstr(sqlstate), b"M", cstr(text)]
    if detail:
        parts += [b"D", cstr(detail)]
    if hint:
        parts += [b"H", cstr(hint)]
    parts.append(b"\x00")
    return b"".join(parts)


def error_response(severity: str, sqlstate: str, text: str, *, detail: str | None = None,
                   hint: str | None = None) -> bytes:
    return message(ERROR_RESPONSE, _fields(severity, sqlstate, text, detail, hint))


def notice_response(text: str, *, sqlstate: str = "00000", severity: str = "NOTICE") -> bytes:
    return message(NOTICE_RESPONSE, _fields(severity, sqlstate, text, None, None))


def row_description(columns: Iterable[tuple[str, int]]) -> bytes:
    """columns: (name, type oid) pairs. All columns are sent in text format."""
    cols = list(columns)
    parts = [struct.pack("!h", len(cols))]
    for name, oid in cols:
        size = 8 if oid == OID_INT8 else 4 if oid == OID_INT4 else -1
        parts.append(cstr(name) + struct.pack("!ihihih", 0, 0, oid, size, -1, 0))
    return message(ROW_DESCRIPTION, b"".join(parts))


def data_row_values(body: bytes | memoryview) -> list[bytes | None]:
    """The column values of a DataRow body, as bytes (None for SQL NULL)."""
    (n,) = struct.unpack_from("!h", body, 0)
    pos = 2
    out: list[bytes | None] = []
    for _ in range(n):
        (size,) = _I32.unpack_from(body, pos)
        pos += 4
        if size < 0:
            out.append(None)
        else:
            out.append(bytes(body[pos:pos + size]))
            pos += size
    return out


def data_row(values: Iterable[object]) -> bytes:
    """Text-format row; None is SQL NULL; bool as PostgreSQL prints it is up to the caller."""
    vals = list(values)
    parts = [struct.pack("!h", len(vals))]
    for v in vals:
        if v is None:
            parts.append(_I32.pack(-1))
        else:
            b = v if isinstance(v, bytes) else str(v).encode()
            parts.append(_I32.pack(len(b)) + b)
    return message(DATA_ROW, b"".join(parts))


def startup_message(params: dict[str, str], protocol: int = PROTOCOL_V3) -> bytes:
    body = _I32.pack(protocol) + b"".join(cstr(k) + cstr(v) for k, v in params.items()) + b"\x00"
    return _I32.pack(len(body) + 4) + body


def cancel_request(pid: int, key: int) -> bytes:
    return struct.pack("!iiii", 16, CANCEL_REQUEST_CODE, pid, key)


def password_message(secret: bytes) -> bytes:
    return message(PASSWORD, secret)


def sasl_initial_response(mechanism: str, data: bytes) -> bytes:
    return message(PASSWORD, cstr(mechanism) + _I32.pack(len(data)) + data)


def sasl_response(data: bytes) -> bytes:
    return message(PASSWORD, data)


def query(sql: str) -> bytes:
    return message(QUERY, cstr(sql))


def terminate() -> bytes:
    return message(TERMINATE)


def parse_error_fields(body: bytes | memoryview) -> dict[str, str]:
    """Decode an ErrorResponse/NoticeResponse body into {field code: value}. A field without its NUL
    is a ProtocolViolation: the server that sent it is broken (found by fuzzing: a ValueError here
    escaped the server's read callback)."""
    out: dict[str, str] = {}
    b = bytes(body)
    i = 0
    while i < len(b) and b[i] != 0:
        code = chr(b[i])
        end = b.find(b"\x00", i + 1)
        if end < 0:
            raise ProtocolViolation("malformed ErrorResponse or NoticeResponse: unterminated field")
        out[code] = b[i + 1:end].decode(errors="replace")
        i = end + 1
    return out
