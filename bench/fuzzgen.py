"""Frontend messages for bench/fuzz.py: valid ones, mutated ones, startup packets, from a random.Random.

Every post-login message is framed correctly (its length says its body) unless a generator says it is a
`terminal` case (a length below 4 or above max_packet_size, a message cut short): those end the
connection, so the fuzzer sends them last and expects an error and a close, or nothing (cut short).
"""

from __future__ import annotations

import random
import struct

from pgmux.protocol import messages as m

# SQL a client might send. No COPY FROM STDIN (a Query would wait for data, and the fuzzer's marker
# query behind it would be eaten by the COPY), no blocking lock (two fuzz clients would wait for each
# other, which is no hang of pgmux's).
SQL = [
    "SELECT 1", "SELECT $1", "SELECT $1::int + 1", "SELECT x FROM fz WHERE x = $1", "BEGIN", "COMMIT",
    "ROLLBACK", "BEGIN READ ONLY", "SET application_name = 'fz'", "SET LOCAL work_mem = '2MB'",
    "SET search_path = public", "RESET ALL", "DISCARD ALL", "SHOW TimeZone", "SET TimeZone = 'UTC'",
    "SELECT repeat('x', 3000)", "SELECT generate_series(1, 50)", "INSERT INTO fz VALUES (1)",
    "SELECT * FROM fz LIMIT 3", "SELECT 1/0", "SELEC 1", "", ";", "SELECT 1; SELECT 2",
    "PREPARE p1 AS SELECT 1", "EXECUTE p1", "DEALLOCATE p1", "DEALLOCATE ALL", "LISTEN fz", "UNLISTEN *",
    "NOTIFY fz, 'x'", "SAVEPOINT a", "ROLLBACK TO SAVEPOINT a", "RELEASE a", "CREATE TEMP TABLE tt (x int)",
    "DROP TABLE IF EXISTS tt", "DECLARE c1 CURSOR WITH HOLD FOR SELECT 1", "CLOSE c1",
    "SELECT pg_try_advisory_lock(7)", "SELECT pg_advisory_unlock_all()", "SELECT set_config('a.b', 'c', false)",
    "COPY (SELECT 1) TO STDOUT", "SELECT pg_sleep(0.001)", "SELECT 'é'::text", "SHOW ALL",
]
NAMES = [b"", b"s1", b"s2", b"pgmux_1", b"x" * 70]
PORTALS = [b"", b"p1", b"c1"]


def cstr(b: bytes) -> bytes:
    return b + b"\x00"


def frame(t: bytes, body: bytes) -> bytes:
    return t + struct.pack("!i", len(body) + 4) + body


def parse(r: random.Random) -> bytes:
    sql = r.choice(SQL).encode()
    types = [r.choice((0, 23, 25, 701, 99999)) for _ in range(r.choice((0, 0, 1, 2)))]
    body = cstr(r.choice(NAMES)) + cstr(sql) + struct.pack("!h", len(types)) + b"".join(
        struct.pack("!i", t) for t in types)
    return frame(b"P", body)


def bind(r: random.Random) -> bytes:
    nfmt = r.choice((0, 1, 2))
    params = [r.choice((None, b"1", b"abc", b"\x00\x00\x00\x01", b"9" * 20)) for _ in range(r.choice((0, 1, 1, 2)))]
    body = cstr(r.choice(PORTALS)) + cstr(r.choice(NAMES))
    body += struct.pack("!h", nfmt) + b"".join(struct.pack("!h", r.choice((0, 1, 2))) for _ in range(nfmt))
    body += struct.pack("!h", len(params))
    for p in params:
        body += struct.pack("!i", -1) if p is None else struct.pack("!i", len(p)) + p
    nres = r.choice((0, 1))
    body += struct.pack("!h", nres) + b"".join(struct.pack("!h", r.choice((0, 1))) for _ in range(nres))
    return frame(b"B", body)


def describe_or_close(r: random.Random) -> bytes:
    kind = r.choice(b"SP")
    name = r.choice(NAMES if kind == 83 else PORTALS)
    return frame(r.choice((b"D", b"C")), bytes((kind,)) + cstr(name))


def execute(r: random.Random) -> bytes:
    return frame(b"E", cstr(r.choice(PORTALS)) + struct.pack("!i", r.choice((0, 0, 1, 2))))


def query(r: random.Random) -> bytes:
    sql = r.choice(SQL)
    if r.random() < 0.2:
        sql = "; ".join(r.choice(SQL) for _ in range(r.randint(2, 4)))
    return frame(b"Q", cstr(sql.encode()))


def function_call(r: random.Random) -> bytes:
    oid = r.choice((1299, 2108, 0, 123456789))  # now(), sum, nothing, nothing
    body = struct.pack("!ih", oid, 0) + struct.pack("!h", r.choice((0, 1)))
    body += struct.pack("!i", -1) if body[-1] else b""
    return frame(b"F", body + struct.pack("!h", 0))


def simple(r: random.Random) -> bytes:
    return r.choice((frame(b"H", b""), frame(b"d", b"junk"), frame(b"c", b""), frame(b"f", b"why\x00")))


VALID = [(parse, 4), (bind, 4), (describe_or_close, 3), (execute, 3), (query, 4), (function_call, 1),
         (simple, 1)]
_GENS = [g for g, w in VALID for _ in range(w)]


def valid(r: random.Random) -> bytes:
    return r.choice(_GENS)(r)


def mutate(r: random.Random, msg: bytes) -> bytes:
    """A framed message with its body changed (the length kept true) or its type byte changed."""
    t, body = msg[:1], bytearray(msg[5:])
    how = r.randrange(7)
    if how == 0 and body:  # flip bytes
        for _ in range(r.randint(1, 4)):
            i = r.randrange(len(body))
            body[i] = r.randrange(256)
    elif how == 1:  # cut short
        body = body[:r.randint(0, len(body))]
    elif how == 2:  # grow
        body += bytes(r.randrange(256) for _ in range(r.randint(1, 40)))
    elif how == 3:  # nothing at all
        body = bytearray()
    elif how == 4:  # NULs and huge int fields
        for _ in range(r.randint(1, 3)):
            i = r.randint(0, len(body))
            body[i:i] = r.choice((b"\x00", b"\xff\xff", b"\x7f\xff\xff\xff", b"\x80\x00\x00\x00"))
    elif how == 5:  # another (known) type byte
        t = bytes((r.choice(b"PBDECHSFdcfQp"),))
    else:  # any type byte: most are unknown, and PostgreSQL ends the session
        t = bytes((r.randrange(256),))
        if t in (b"X", b"Z"):
            t = b"?"
    return frame(t, bytes(body))


def post_login(r: random.Random) -> bytes:
    msg = valid(r)
    return mutate(r, msg) if r.random() < 0.3 else msg


def terminal(r: random.Random, max_packet: int) -> tuple[bytes, bool]:
    """(bytes, whether pgmux must answer with an error and close): a bad length or a cut message."""
    t = bytes((r.choice(b"PBDECHSFQdp"),))
    how = r.randrange(3)
    if how == 0:
        return t + struct.pack("!i", r.choice((-1, 0, 1, 3, -2**31))), True
    if how == 1:
        return t + struct.pack("!i", r.randint(max_packet + 1, 2**31 - 1)) + b"x" * r.randint(0, 100), True
    msg = valid(r)
    return msg[:r.randint(1, len(msg) - 1)], False


# -- startup ----------------------------------------------------------------------------------------

PARAM_VALUES = {
    "application_name": ["fz", "", "é" * 40, "x" * 500],
    "client_encoding": ["UTF8", "utf-8", "LATIN1", "nope", "SQL_ASCII"],
    "DateStyle": ["ISO, MDY", "German", "garbage"],
    "TimeZone": ["UTC", "Europe/Paris", "Mars/Olympus"],
    "options": ["-c work_mem=2MB", "-c search_path=x", "-c nope", "--foo=bar", "-c statement_timeout=1"],
    "search_path": ["public", "\"a b\""],
    "_pq_.compression": ["on"],
    "replication": ["database", "true"],
}


def startup(r: random.Random, databases: list[str], user: str) -> tuple[bytes, bool]:
    """(a startup-phase packet, whether it is complete so that pgmux must answer or close)."""
    how = r.randrange(10)
    params = {"user": r.choice((user, user, "nobody", "")), "database": r.choice(databases + ["nodb", ""])}
    for k in r.sample(sorted(PARAM_VALUES), r.randint(0, 3)):
        params[k] = r.choice(PARAM_VALUES[k])
    pkt = m.startup_message(params, protocol=r.choice((m.PROTOCOL_V3,) * 6 + ((3 << 16) | 1, 2 << 16, 1234)))
    if how <= 3:
        return pkt, True
    if how == 4:
        pre = struct.pack("!ii", 8, r.choice((m.SSL_REQUEST_CODE, m.GSSENC_REQUEST_CODE)))
        return pre + pkt, True
    if how == 5:
        return struct.pack("!iii", 16, m.CANCEL_REQUEST_CODE, r.randrange(2**31)) + struct.pack(
            "!i", r.randrange(2**31)), True
    if how == 6:  # a lying length
        n = r.choice((0, 4, 7, 8, 10001, 2**31 - 1, -5, len(pkt) - 1, len(pkt) + 3))
        out = struct.pack("!i", n) + pkt[4:]
        return out, n < 8 or n > 10000 or n <= len(out)
    if how == 7:  # flipped bytes in the body
        b = bytearray(pkt)
        for _ in range(r.randint(1, 4)):
            b[r.randrange(4, len(b))] = r.randrange(256)
        return bytes(b), True
    if how == 8:  # random bytes
        return bytes(r.randrange(256) for _ in range(r.randint(1, 64))), False
    return pkt[:r.randint(1, len(pkt) - 1)], False
