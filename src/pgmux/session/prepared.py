"""Protocol-level prepared statements (Parse/Bind/Describe/Close) under transaction pooling.

A client prepares a statement once and binds it for the rest of its session, but in transaction mode
each transaction may run on another server. So, as PgBouncer 1.21+ and PgDog do, pgmux never sends the
client's statement names to a server:

- `Registry` deduplicates statements by (query text, parameter type OIDs) and names each one
  `pgmux_<n>`. Every client that parses the same text shares that one server-side name, so a server
  prepares it once for all of them.
- `ClientStatements` maps one client's names to registry entries. The unnamed statement ("") is
  kept too, but it is not renamed: it stays unnamed on the server, as PgBouncer and PgDog leave it.
  It is remembered only so that a Bind("") that lands on another server after a Sync can be re-parsed
  there (`ServerStatements.ensure_unnamed`).
- `ServerStatements` is an LRU of the names one server connection has prepared, capped at
  `max_prepared_statements`. `ensure` says whether a Parse must precede the Bind/Describe and which
  names to Close first to make room.

Registry entries are reference-counted by the clients that map them and the servers that hold them,
and vanish at zero, so the registry is bounded by what is actually in use. Names are never reused,
so a server can never hold a stale statement under a name that now means another query.

Client Close of a named statement only drops the client's mapping (PgBouncer and PgDog answer
CloseComplete themselves): another client may be using the server-side statement.

A server-side copy can be stale: PostgreSQL fixes a statement's parameter types and result shape at
Parse, and a DDL since (made through pgmux or by anyone else) may have changed what the same text
means. A client's own Parse must behave as on a fresh connection, so each client Parse takes a tick
of the registry's clock (`Statement.since`) and is forwarded to the server, replacing that server's
copy (Close, then Parse); each server copy remembers the tick it was prepared at, and a Bind or
Describe on a server whose copy is older than the client's Parse prepares it again there first. So a
statement is reused across servers and transactions only where its copy was prepared after the
client's own Parse; the steady state (statements the client holds, on servers that prepared them
since) compares two integers per Bind.

A statement the client holds keeps the result shape it had at its Parse, as in PostgreSQL, which
refuses it (0A000) once a DDL changed that shape. Drivers that decode rows with the description they
got at prepare time (asyncpg) depend on it. So when a client Describes its statement, the shape
(`shape_of` the RowDescription, or NoData) is kept with it (`Statement.shape`), and with the server's
copy; a copy whose shape is not known to be the client's is checked before the client's Bind or
Describe goes on (session/pipeline.py), and a shape that changed fails the way PostgreSQL fails it.

Counters follow PgBouncer's SHOW STATS (`total_client_parse_count`, `total_server_parse_count`,
`total_bind_count`) and count named statements only; `PreparedStats` is meant to be one per pool.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final, NamedTuple, Protocol

from pgmux.errors import DuplicatePreparedStatement, MissingPreparedStatement

DEFAULT_MAX_PREPARED_STATEMENTS = 200  # PgBouncer's default; 0 turns tracking off (build none of this)
NAME_PREFIX = "pgmux_"

Key = tuple[str, tuple[int, ...]]

# PostgreSQL 15's error for a statement whose result type a DDL changed, as pgmux gives it when it finds
# that itself (session/pipeline.py): drivers tell it by its routine (asyncpg prepares the statement again
# on R = RevalidateCachedQuery). Replaced by the servers' own once one is seen (`Registry.revalidate_error`).
REVALIDATE_ERROR = (b"E\x00\x00\x00\x6cSERROR\x00VERROR\x00C0A000\x00Mcached plan must not change result type\x00"
                    b"Fplancache.c\x00L722\x00RRevalidateCachedQuery\x00\x00")


@dataclass(frozen=True, slots=True)
class Statement:
    """`name` is the server-side name ("" for an unnamed statement). `since` is the registry's tick of
    the client Parse this statement comes from (0 for the registry's own entries): a server copy
    prepared before that tick is stale for this client."""

    name: str
    query: str
    param_types: tuple[int, ...]
    since: int = field(default=0, compare=False)
    shape: bytes | None = field(default=None, compare=False)  # its result shape, once the client Described it


_ROW_DESCRIPTION = ord("T")


def shape_of(msg: bytes) -> bytes:
    """What PostgreSQL compares when it revalidates a statement (equalTupleDescs): each column's name,
    type, length and modifier, from a RowDescription message; a NoData message as it is. The table
    and column a result column comes from, and the format, are left out."""
    if not msg or msg[0] != _ROW_DESCRIPTION or len(msg) < 7:
        return msg
    out = [msg[5:7]]
    pos = 7
    for _ in range(int.from_bytes(msg[5:7], "big", signed=True)):
        end = msg.find(b"\x00", pos)
        if end < 0 or end + 19 > len(msg):
            return msg
        out.append(msg[pos:end + 1])
        out.append(msg[end + 7:end + 17])  # type OID, length, modifier
        pos = end + 19
    return b"".join(out)


@dataclass(slots=True)
class PreparedStats:
    client_parse_count: int = 0  # named Parse messages from clients
    server_parse_count: int = 0  # Parse messages pgmux sent to servers for named statements
    bind_count: int = 0          # Bind messages of named statements
    prepared_hit_count: int = 0  # a Bind/Describe whose statement the server had prepared already
    prepared_evict_count: int = 0  # statements closed on a server to stay within max_prepared_statements


class Counters(Protocol):
    """Where the counts go: a PreparedStats, or a pool's PoolStats (same names)."""

    client_parse_count: int
    server_parse_count: int
    bind_count: int
    prepared_hit_count: int
    prepared_evict_count: int


class Registry:
    """Every statement in use by some client or server, once per (query, parameter types)."""

    def __init__(self, prefix: str = NAME_PREFIX) -> None:
        self._prefix = prefix
        self._next = 1
        self._by_key: dict[Key, Statement] = {}
        self._by_name: dict[str, Statement] = {}
        self._refs: dict[str, int] = {}
        # Statements some server answered ParseComplete for: a client's Parse + Sync of one of these can
        # be answered without a server (session/localparse.py). Gone with the entry.
        self._parsed: set[str] = set()
        self.clock = 0  # ticks once per client Parse of a named statement
        self.revalidate_error = REVALIDATE_ERROR

    def tick(self) -> int:
        self.clock += 1
        return self.clock

    def acquire(self, query: str, param_types: Sequence[int] = ()) -> Statement:
        """The entry for this text and types, created if new, with one more reference."""
        key = (query, tuple(param_types))
        stmt = self._by_key.get(key)
        if stmt is None:
            stmt = Statement(f"{self._prefix}{self._next}", query, key[1])
            self._next += 1
            self._by_key[key] = stmt
            self._by_name[stmt.name] = stmt
            self._refs[stmt.name] = 0
        self._refs[stmt.name] += 1
        return stmt

    def retain(self, name: str) -> Statement:
        stmt = self._by_name[name]
        self._refs[name] += 1
        return stmt

    def release(self, name: str) -> None:
        self._refs[name] -= 1
        if self._refs[name] == 0:
            stmt = self._by_name.pop(name)
            del self._by_key[(stmt.query, stmt.param_types)], self._refs[name]
            self._parsed.discard(name)

    def find(self, query: str, param_types: tuple[int, ...]) -> Statement | None:
        """The entry for this text and types, if there is one (no reference taken)."""
        return self._by_key.get((query, param_types))

    def parsed(self, name: str) -> None:
        """A server answered ParseComplete for the statement `name`: its text and types parse."""
        if name in self._by_name:
            self._parsed.add(name)

    def known_good(self, name: str) -> bool:
        """Whether some server parsed the statement `name` (since it was last created)."""
        return name in self._parsed

    def get(self, name: str) -> Statement | None:
        return self._by_name.get(name)

    def refs(self, name: str) -> int:
        return self._refs.get(name, 0)

    def __len__(self) -> int:
        return len(self._by_name)

    def __iter__(self) -> Iterator[Statement]:
        return iter(list(self._by_name.values()))


# The `_named` of every ClientStatements without named statements: one empty dict for all of them
# (issue 11: most clients never prepare one, and a dict each is 64 bytes per idle client). Only
# ClientStatements.parse and reopen write into `_named`, and they replace this one first; it stays empty.
_NO_NAMES: Final[dict[str, Statement]] = {}


class ClientStatements:
    """One client's statement names. Unknown names raise the error PostgreSQL would send."""

    __slots__ = ("_registry", "_stats", "_named", "_unnamed")

    def __init__(self, registry: Registry, stats: Counters | None = None) -> None:
        self._registry = registry
        self._stats: Counters = stats if stats is not None else PreparedStats()
        self._named: dict[str, Statement] = _NO_NAMES
        self._unnamed: Statement | None = None

    @property
    def registry(self) -> Registry:
        return self._registry

    @property
    def prepared_statements(self) -> int:
        """SHOW CLIENTS `prepared_statements`: named statements only."""
        return len(self._named)

    def parse(self, client_name: str, query: str, param_types: Sequence[int] = ()) -> str:
        """Record a client Parse; return the name to send to the server ("" stays "")."""
        if client_name == "":
            self._unnamed = Statement("", query, tuple(param_types))
            return ""
        if client_name in self._named:
            raise DuplicatePreparedStatement(f'prepared statement "{client_name}" already exists')
        reg = self._registry
        stmt = reg.acquire(query, param_types)
        if self._named is _NO_NAMES:
            self._named = {}
        self._named[client_name] = Statement(stmt.name, stmt.query, stmt.param_types, reg.tick())
        self._stats.client_parse_count += 1
        return stmt.name

    def described(self, client_name: str, stmt: Statement, shape: bytes) -> None:
        """The client Described `stmt` (its statement `client_name`, if still the same) and got `shape`:
        the first such shape is the one the statement keeps."""
        if self._named.get(client_name) is stmt and stmt.shape is None:
            self._named[client_name] = Statement(stmt.name, stmt.query, stmt.param_types, stmt.since, shape)

    def lookup(self, client_name: str) -> Statement | None:
        return self._unnamed if client_name == "" else self._named.get(client_name)

    def resolve(self, client_name: str) -> Statement:
        """The statement a Describe/Bind names, or the error PostgreSQL would give."""
        stmt = self.lookup(client_name)
        if stmt is None:
            what = f'prepared statement "{client_name}"' if client_name else "unnamed prepared statement"
            raise MissingPreparedStatement(f"{what} does not exist")
        return stmt

    def bind(self, client_name: str) -> Statement:
        stmt = self.resolve(client_name)
        if client_name:
            self._stats.bind_count += 1
        return stmt

    def close(self, client_name: str) -> bool:
        """Forget a name (Close 'S'). Closing an unknown name is not an error, as in PostgreSQL."""
        if client_name == "":
            found, self._unnamed = self._unnamed is not None, None
            return found
        stmt = self._named.pop(client_name, None)
        if stmt is None:
            return False
        self._registry.release(stmt.name)
        if not self._named:
            self._named = _NO_NAMES
        return True

    def reopen(self, client_name: str, stmt: Statement) -> None:
        """Undo close(client_name), which closed `stmt`: the server skipped the client's Close (a
        message before it in its batch failed), so the client still has the statement."""
        if client_name in self._named:
            return
        entry = self._registry.acquire(stmt.query, stmt.param_types)  # under a new name if freed meanwhile
        if self._named is _NO_NAMES:  # (the shared empty dict: never written into)
            self._named = {}
        self._named[client_name] = Statement(entry.name, stmt.query, stmt.param_types, stmt.since, stmt.shape)

    def forget_unnamed(self) -> None:
        """A simple Query destroys the unnamed statement."""
        self._unnamed = None

    def named(self) -> list[tuple[str, Statement]]:
        """The client's named statements, by its names (a hand-over copies them: session/handover.py)."""
        return list(self._named.items())

    def adopt(self, client_name: str, query: str, param_types: Sequence[int], shape: bytes | None) -> None:
        """A statement this client prepared in another pgmux process (session/handover.py): mapped as
        its Parse would map it, with a tick of this registry's clock (a server copy prepared before
        is prepared again before use), its known result shape kept, and no Parse counted."""
        self.parse(client_name, query, param_types)
        self._stats.client_parse_count -= 1
        if client_name == "":
            self._unnamed = Statement("", query, tuple(param_types), 0, shape)
        else:
            s = self._named[client_name]
            self._named[client_name] = Statement(s.name, s.query, s.param_types, s.since, shape)

    def clear(self) -> None:
        """DISCARD ALL / DEALLOCATE ALL from this client, or the client left."""
        for stmt in self._named.values():
            self._registry.release(stmt.name)
        self._named = _NO_NAMES
        self._unnamed = None


class Ensured(NamedTuple):
    need_parse: bool
    evict: list[str]


class ServerStatements:
    """The server-side names one server connection has prepared, least recently used first."""

    __slots__ = ("_registry", "_stats", "_capacity", "_lru", "_unnamed", "shapes")

    def __init__(self, registry: Registry, capacity: int = DEFAULT_MAX_PREPARED_STATEMENTS,
                 stats: Counters | None = None) -> None:
        if capacity < 1:
            raise ValueError("max_prepared_statements = 0 turns tracking off: forward statements as they are")
        self._registry = registry
        self._stats: Counters = stats if stats is not None else PreparedStats()
        self._capacity = capacity
        self._lru: OrderedDict[str, int] = OrderedDict()  # server name -> the registry tick it was prepared at
        self._unnamed: Statement | None = None
        self.shapes: dict[str, bytes] = {}  # server name -> the result shape of this server's copy, when known

    @property
    def prepared_statements(self) -> int:
        """SHOW SERVERS `prepared_statements`."""
        return len(self._lru)

    def names(self) -> list[str]:
        return list(self._lru)

    def __contains__(self, server_name: object) -> bool:
        return server_name in self._lru

    def touch(self, server_name: str, since: int = 0, shape: bytes | None = None) -> bool:
        """Whether this server holds `server_name` prepared at tick `since` or later, and known to have
        the result shape `shape` when that is given; if so it becomes the most recently used."""
        at = self._lru.get(server_name)
        if at is None or at < since or shape is not None and self.shapes.get(server_name) != shape:
            return False
        self._lru.move_to_end(server_name)
        return True

    def count_hits(self, n: int) -> None:
        """`n` Binds found their statements ready here by `touch` (the steady state's fast path)."""
        self._stats.prepared_hit_count += n

    def ensure(self, server_name: str, since: int = 0) -> Ensured:
        """Before a Bind/Describe (or a forwarded Parse) of `server_name` on this server: whether a
        Parse must be sent, and which names to Close first, oldest first. A copy prepared before tick
        `since` is replaced: its own name comes back among those to Close. Records the outcome
        optimistically; if the server then rejects the Parse, call `forget`."""
        lru = self._lru
        at = lru.get(server_name)
        if at is not None:
            lru.move_to_end(server_name)
            if at >= since:
                self._stats.prepared_hit_count += 1
                return Ensured(False, [])
            lru[server_name] = self._registry.clock
            self.shapes.pop(server_name, None)
            self._stats.server_parse_count += 1
            return Ensured(True, [server_name])
        self._registry.retain(server_name)
        evict: list[str] = []
        while len(lru) >= self._capacity:
            old, _ = lru.popitem(last=False)
            self._registry.release(old)
            evict.append(old)
        for old in evict:
            self.shapes.pop(old, None)
        if evict:
            self._stats.prepared_evict_count += len(evict)
        lru[server_name] = self._registry.clock
        self._stats.server_parse_count += 1
        return Ensured(True, evict)

    def renew(self, server_name: str) -> list[str]:
        """Prepare `server_name` here again whatever its tick (a Parse to send): the names to Close first."""
        return self.ensure(server_name, self._registry.clock + 1).evict

    def described(self, server_name: str, shape: bytes) -> None:
        """A Describe of this server's copy returned `shape`."""
        if server_name in self._lru:
            self.shapes[server_name] = shape

    def forget(self, server_name: str) -> bool:
        """The server does not have this statement after all (its Parse failed)."""
        if server_name not in self._lru:
            return False
        del self._lru[server_name]
        self.shapes.pop(server_name, None)
        self._registry.release(server_name)
        return True

    def stale_all(self) -> None:
        """The server refused one of its copies (its result type changed since it was prepared): every
        copy is prepared again before its next use here, a Close and Parse each."""
        lru = self._lru
        for name in lru:
            lru[name] = 0
        self.shapes.clear()

    def forget_all(self) -> None:
        """DISCARD ALL / DEALLOCATE ALL ran on this server, or the server is closing."""
        for name in self._lru:
            self._registry.release(name)
        self._lru.clear()
        self.shapes.clear()
        self._unnamed = None

    def ensure_unnamed(self, stmt: Statement) -> bool:
        """Whether this server's unnamed statement is `stmt`; records that it will be after the caller
        forwards or re-sends the Parse. Unnamed statements are not counted or capped."""
        missing = self._unnamed != stmt
        self._unnamed = stmt
        return missing

    def drop_unnamed(self) -> None:
        """A simple Query (or a failed unnamed Parse) destroyed this server's unnamed statement."""
        self._unnamed = None
