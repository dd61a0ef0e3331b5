"""A client's session as bytes, to go on in another pgmux process (runtime/handover.py moves the socket).

Only a client between transactions moves (`why_not`): logged in and idle, no server linked, nothing
queued, half-read or half-written, no session state that lives on one server (pins), a transaction or
statement pool, and not over TLS (the TLS state lives in this process's memory). What such a client's
session is, is then all in the ClientSession: its identity, its parameters (startup, SET, RESET's
target), its cancel key, its protocol-level prepared statements (client name -> text, parameter types,
known result shape: the receiving process's servers prepare them on demand, as for any client), its
unnamed statement, its SQL-level PREPAREs (their PREPARE texts), its read-your-writes position.
Portals end with their transaction, so an idle client holds none.

The encoding is JSON of plain values (bytes as base64), versioned and bounded (`MAX_SNAPSHOT`):
`restore` refuses a wrong version, a malformed blob or one too large with HandoverError, before it
changes anything.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from pgmux.session.states import ClientState
from pgmux.session.tracking import query_effects

if TYPE_CHECKING:
    from pgmux.session.client import ClientSession

VERSION: Final = 1
MAX_SNAPSHOT: Final = 16 << 20  # bytes: a client's snapshot above this stays where it is
_ENC, _ERRORS = "utf-8", "surrogateescape"  # as protocol/extended.py reads statement names and texts


_LOGGED_IN: Final = (ClientState.IDLE, ClientState.WAITING, ClientState.ACTIVE)


class HandoverError(ValueError):
    """A snapshot that cannot be restored: wrong version, malformed, too large, or not for this session."""


# -- may it move? --------------------------------------------------------------------------------------

def why_not(c: ClientSession, moving: bool = False) -> str:
    """"" when `c` can move to another process now, else a short reason (erring on "not movable").
    `moving`: its reading was stopped for the move already (`held`, runtime/handover.py)."""
    if c.state is ClientState.CLOSED:
        return "closed"
    if c.replication or c.repl is not None:
        return "replication"
    if c.state not in _LOGGED_IN:
        return "login"
    if c.is_admin:
        return "console"
    pool = c.pool
    if pool is None:
        return "no pool"
    if pool.mode == "session":
        return "session pooling"
    if c.pinned or c.pins:
        return f"pinned ({c.pinned or 'session state'})"
    server = c.server
    if server is not None:
        return "in a transaction" if server.tx_status != b"I" else "server linked"
    if c.state is not ClientState.IDLE:
        return f"state {c.state.value}"
    t = c.transport
    if t is None or t.is_closing():
        return "no connection"
    if t.get_extra_info("ssl_object") is not None:
        return "TLS"
    if t.get_write_buffer_size():
        return "busy (writing)"
    busy = _busy(c)
    if busy:
        return f"busy ({busy})"
    if c.held != moving or c.throttled or c.rpaused != moving:
        return "reading paused"
    if c.stmt_fx and not _effects_follow(c):
        return "statement effects"
    return ""


def _busy(c: ClientSession) -> str:
    """What this idle-looking client still has in flight, or ""."""
    if c.pending or c.pending_syncs or c.pending_ext:
        return "queued"
    if c.sbuf or c.buf.pending or c.passing or c.sink:
        return "partly read"
    if c.unsynced or c.skip:
        return "batch without Sync"
    if c.tx_effects or c.q_error or c.q_ends or c.q_sql:
        return "query in flight"
    if c.lsn_wanted:
        return "WAL position wanted"
    if c.auth is not None or c.auth_ok or c.admin_ext is not None:
        return "login"
    return ""


def _effects_follow(c: ClientSession) -> bool:
    """Whether the session effects of the client's statements (`stmt_fx`) come back from their texts,
    as the receiving process recomputes them (`restore`)."""
    stmts = c.stmts
    if stmts is None or c.stmt_fx is None:
        return False
    for name, done in c.stmt_fx.items():
        stmt = stmts.lookup(name.decode(_ENC, _ERRORS))
        if stmt is None or _effects_of(stmt.query) != done:
            return False
    return True


def _effects_of(query: str) -> tuple[Any, ...]:
    return query_effects(query.encode(_ENC, _ERRORS) + b"\x00")


# -- the snapshot ----------------------------------------------------------------------------------

def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


def snapshot(c: ClientSession, now: float, keys: tuple[bytes, bytes] | None = None,
             secret: str | None = None) -> bytes:
    """`c`'s session as bytes (at most MAX_SNAPSHOT; HandoverError above). `now`: the hub's clock (ages
    travel, not times). `keys`/`secret`: the SCRAM keys or auth_query secret the server logins of this
    user need (App.scram_keys, App.auth_secrets), when the receiver may not have them."""
    stmts = c.stmts
    named: list[list[Any]] | None = None
    unnamed_stmt: list[Any] | None = None
    if stmts is not None:
        named = [[name, s.query, list(s.param_types), _b64(s.shape)] for name, s in stmts.named()]
        u = stmts.lookup("")
        if u is not None:
            unnamed_stmt = [u.query, list(u.param_types), _b64(u.shape)]
    doc = {
        "v": VERSION, "user": c.user, "database": c.database, "addr": c.addr, "port": c.port,
        "is_unix": c.is_unix, "peer_uid": c.peer_uid, "age": max(now - c.connect_time, 0.0),
        "idle": max(now - c.request_time, 0.0), "startup": dict(c.startup), "params": dict(c.params),
        "initial": dict(c.initial), "cancel": [c.cancel_pid, c.cancel_key], "watch": c.watch,
        "stmts": named, "unnamed_stmt": unnamed_stmt, "unnamed": _b64(c.unnamed),
        "stmt_fx": sorted(base64.b64encode(n).decode("ascii") for n in c.stmt_fx) if c.stmt_fx else [],
        "sql": dict(c.sql) if c.sql else None, "ryw_lsn": c.ryw_lsn,
        "keys": [_b64(keys[0]), _b64(keys[1])] if keys is not None else None, "secret": secret,
    }
    blob = json.dumps(doc, separators=(",", ":")).encode("ascii")
    if len(blob) > MAX_SNAPSHOT:
        raise HandoverError(f"session state too large ({len(blob)} bytes, at most {MAX_SNAPSHOT})")
    return blob


@dataclass(slots=True)
class Snapshot:
    """A decoded, checked snapshot (`load`)."""

    user: str
    database: str
    addr: str
    port: int
    is_unix: bool
    peer_uid: int | None
    age: float
    idle: float
    startup: dict[str, str]
    params: dict[str, str]
    initial: dict[str, str]
    cancel_pid: int
    cancel_key: int
    watch: bool
    stmts: list[tuple[str, str, tuple[int, ...], bytes | None]] | None
    unnamed_stmt: tuple[str, tuple[int, ...], bytes | None] | None
    unnamed: bytes | None
    stmt_fx: list[bytes]
    sql: dict[str, str] | None
    ryw_lsn: int
    keys: tuple[bytes, bytes] | None = field(default=None, repr=False)  # never printed
    secret: str | None = field(default=None, repr=False)  # never printed


def _want(value: Any, kind: type | tuple[type, ...], what: str) -> Any:
    if not isinstance(value, kind) or isinstance(value, bool) and kind in (int, float):
        raise HandoverError(f"malformed snapshot: {what}")
    return value


def _text_map(value: Any, what: str) -> dict[str, str]:
    _want(value, dict, what)
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise HandoverError(f"malformed snapshot: {what}")
    return dict(value)


def _bytes(value: Any, what: str) -> bytes | None:
    if value is None:
        return None
    try:
        return base64.b64decode(_want(value, str, what), validate=True)
    except (binascii.Error, ValueError):
        raise HandoverError(f"malformed snapshot: {what}") from None


def _types(value: Any, what: str) -> tuple[int, ...]:
    _want(value, list, what)
    if not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < 1 << 32 for t in value):
        raise HandoverError(f"malformed snapshot: {what}")
    return tuple(value)


def load(blob: bytes) -> Snapshot:
    """`blob` decoded and checked, or HandoverError."""
    if len(blob) > MAX_SNAPSHOT:
        raise HandoverError(f"snapshot too large ({len(blob)} bytes, at most {MAX_SNAPSHOT})")
    try:
        doc = json.loads(blob)
    except (ValueError, RecursionError):
        raise HandoverError("malformed snapshot: not JSON") from None
    if not isinstance(doc, dict):
        raise HandoverError("malformed snapshot: not an object")
    if doc.get("v") != VERSION:
        raise HandoverError(f"snapshot version {doc.get('v')!r}, this pgmux reads version {VERSION}")
    try:
        return _decode(doc)
    except HandoverError:
        raise
    except (KeyError, TypeError, ValueError):  # (ValueError: a list of the wrong length)
        raise HandoverError("malformed snapshot: a field is missing or of the wrong type") from None


def _decode(d: dict[str, Any]) -> Snapshot:
    stmts = None
    if d["stmts"] is not None:
        stmts = []
        for i, e in enumerate(_want(d["stmts"], list, "stmts")):
            name, query, types, shape = _want(e, list, f"stmts[{i}]")
            stmts.append((_want(name, str, "statement name"), _want(query, str, "statement text"),
                          _types(types, "parameter types"), _bytes(shape, "statement shape")))
    unnamed_stmt = None
    if d["unnamed_stmt"] is not None:
        query, types, shape = _want(d["unnamed_stmt"], list, "unnamed_stmt")
        unnamed_stmt = (_want(query, str, "statement text"), _types(types, "parameter types"),
                        _bytes(shape, "statement shape"))
    keys = None
    if d["keys"] is not None:
        ck, sk = (_bytes(k, "keys") for k in _want(d["keys"], list, "keys"))
        if ck is None or sk is None:
            raise HandoverError("malformed snapshot: keys")
        keys = (ck, sk)
    pid, key = _want(d["cancel"], list, "cancel")
    peer_uid = d["peer_uid"]
    return Snapshot(
        user=_want(d["user"], str, "user"), database=_want(d["database"], str, "database"),
        addr=_want(d["addr"], str, "addr"), port=_want(d["port"], int, "port"),
        is_unix=_want(d["is_unix"], bool, "is_unix"),
        peer_uid=None if peer_uid is None else _want(peer_uid, int, "peer_uid"),
        age=float(_want(d["age"], (int, float), "age")), idle=float(_want(d["idle"], (int, float), "idle")),
        startup=_text_map(d["startup"], "startup"), params=_text_map(d["params"], "params"),
        initial=_text_map(d["initial"], "initial"),
        cancel_pid=_want(pid, int, "cancel pid"), cancel_key=_want(key, int, "cancel key"),
        watch=_want(d["watch"], bool, "watch"), stmts=stmts, unnamed_stmt=unnamed_stmt,
        unnamed=_bytes(d["unnamed"], "unnamed"),
        stmt_fx=[b for b in (_bytes(n, "stmt_fx") for n in _want(d["stmt_fx"], list, "stmt_fx")) if b is not None],
        sql=None if d["sql"] is None else _text_map(d["sql"], "sql") or None,
        ryw_lsn=_want(d["ryw_lsn"], int, "ryw_lsn"), keys=keys,
        secret=None if d["secret"] is None else _want(d["secret"], str, "secret"))


def identify(c: ClientSession, snap: Snapshot, now: float) -> None:
    """Step one of a restore, on a fresh ClientSession: who it is (its pool is joined from this)."""
    if c.state is not ClientState.STARTUP or c.user:
        raise HandoverError("a snapshot is restored on a fresh client only")
    c.set_identity(snap.database, snap.user)
    c.addr, c.port, c.is_unix, c.peer_uid = snap.addr, snap.port, snap.is_unix, snap.peer_uid
    c.connect_time = now - snap.age
    c.request_time = c.wait_since = now - snap.idle
    c.startup = snap.startup


def restore(c: ClientSession, blob: bytes | Snapshot, now: float) -> Snapshot:
    """The inverse of snapshot() on a fresh ClientSession (identified first with `identify` when its
    pool is to be joined between the steps: the pool decides `watch` and makes `c.stmts`). Everything
    is checked before anything changes. The client's state stays STARTUP: client_login.adopted() makes
    it IDLE once the runtime took it on."""
    snap = load(blob) if isinstance(blob, bytes) else blob
    if c.state is not ClientState.STARTUP:
        raise HandoverError("a snapshot is restored on a fresh client only")
    if c.user and (c.user, c.database) != (snap.user, snap.database):
        raise HandoverError("snapshot of another client")
    if snap.watch != c.watch:
        raise HandoverError("pool mode differs here (session state is tracked in one process only)")
    if (snap.stmts or snap.unnamed_stmt) and c.stmts is None:
        raise HandoverError("prepared statements are not tracked here (max_prepared_statements = 0)")
    fx = _statement_effects(snap)
    if not c.user:
        identify(c, snap, now)
    if snap.params == snap.initial:  # one dict until the client changes one (tracking.own_params)
        c.params = c.initial = snap.initial
    else:
        c.params, c.initial = snap.params, snap.initial
    c.sig = None
    c.cancel_pid, c.cancel_key = snap.cancel_pid, snap.cancel_key
    stmts = c.stmts
    if stmts is not None:
        for name, query, types, shape in snap.stmts or ():
            stmts.adopt(name, query, types, shape)
        if snap.unnamed_stmt is not None:
            stmts.adopt("", *snap.unnamed_stmt)
    c.unnamed = snap.unnamed
    c.stmt_fx = fx or None
    c.sql = snap.sql
    c.ryw_lsn = snap.ryw_lsn
    return snap


def _statement_effects(snap: Snapshot) -> dict[bytes, tuple[Any, ...]]:
    """The client's `stmt_fx`, recomputed from the texts of the statements the snapshot names (and
    the statement names checked: each once, none empty)."""
    texts = {name: query for name, query, _, _ in snap.stmts or ()}
    if len(texts) != len(snap.stmts or ()) or "" in texts:
        raise HandoverError("malformed snapshot: a statement name twice, or empty")
    if snap.unnamed_stmt is not None:
        texts[""] = snap.unnamed_stmt[0]
    fx: dict[bytes, tuple[Any, ...]] = {}
    for raw in snap.stmt_fx:
        query = texts.get(raw.decode(_ENC, _ERRORS))
        done = _effects_of(query) if query is not None else ()
        if not done:
            raise HandoverError("malformed snapshot: statement effects of an unknown statement")
        fx[raw] = done
    return fx
