"""The pool core: synchronous, no I/O, time passed in.

A pool holds the server connections of one (database, user) pair. It decides; the runtime acts:
`take_idle` hands out the most recently used idle server (LIFO keeps the working set warm and lets
the rest age out), `put` gives a released server to the oldest waiter (FIFO) or parks it, and
`wanted` says how many new connections to open. Limits shared across pools (max_db_connections,
max_user_connections) reach `wanted` as `headroom`, computed by the registry.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from pgmux.pooling.histogram import Timings


class ServerLike(Protocol):
    created_at: float
    idle_since: float
    close_needed: bool


class ClientLike(Protocol):
    wait_since: float


S = TypeVar("S", bound=ServerLike)
C = TypeVar("C", bound=ClientLike)


@dataclass(frozen=True)
class PoolLimits:
    pool_size: int = 20
    min_pool_size: int = 0
    reserve_pool_size: int = 0
    reserve_pool_timeout: float = 5.0
    server_login_retry: float = 15.0
    server_lifetime: float = 3600.0
    # server_round_robin: hand out the least recently used idle server (FIFO) instead of the most
    # recently used one (LIFO), so that every server, and every host behind a round-robin address, gets
    # its share of the load.
    round_robin: bool = False
    # server_check_delay, when server_check_query is set: an idle server that waited at least this long
    # runs the check before a client gets it; 0 checks before every reuse. Negative: no check.
    check_delay: float = -1.0


class Pool(Generic[S, C]):
    def __init__(self, database: str, user: str, limits: PoolLimits, mode: str, host: Any = None) -> None:
        self.database = database
        self.user = user
        # With read/write split, one pool per host of the database: `host` is its config entry
        # (config.HostConfig) and `hstate` its routing.health.HostState. None: one pool for the
        # database's whole host list, as PgBouncer has.
        self.host = host
        self.hstate: Any = None
        self.limits = limits
        self.mode = mode
        self.servers: set[S] = set()  # every server of this pool, in any state, logged in or not
        self.idle: list[S] = []  # LIFO: the end is the most recently used
        self.waiters: deque[C] = deque()  # FIFO
        self.login_waiters: list[C] = []  # clients waiting for the first server's parameters
        self.connecting = 0
        self.last_login_failure: float | None = None
        # After a failed server login no new one starts for retry_delay seconds: server_login_retry, or
        # less while the server is merely not up yet (pooling/backoff.py). login_failures counts the
        # failures of the kind login_failure_kind in a row; login_error is the last one's message, for
        # the clients left waiting.
        self.retry_delay = limits.server_login_retry
        self.login_failures = 0
        self.login_failure_kind = ""
        self.login_error = ""
        self.server_params: dict[str, str] | None = None  # from the first server login: the welcome
        # Reported parameters as PostgreSQL spells them, by (name, the client's spelling), learnt from
        # the servers (session/params.py probe_pairs): what the welcome shows a client that asks for one.
        self.known: dict[tuple[str, str], str] = {}
        self.paused = False
        self.disabled = False
        self.refuse_pins = False  # pin_mode = refuse: statements that would pin a client fail instead
        # With workers: the shared limits had no room for a new server of this pool, and the hub does not
        # ask them again before this time (runtime/worker.py; a server of the pool closing clears it).
        self.no_room_until = 0.0
        # Counters behind SHOW STATS; the runtime adds to them.
        self.stats = PoolStats()

    # -- hand-out and return -------------------------------------------------------------------
    def take_idle(self) -> S | None:
        if self.paused or not self.idle:
            return None
        if self.limits.round_robin:
            return self.idle.pop(0)
        return self.idle.pop()

    def needs_check(self, server: S, now: float) -> bool:
        """Whether an idle server just taken must run server_check_query before a client gets it."""
        delay = self.limits.check_delay
        return delay == 0.0 or 0.0 < delay < now - server.idle_since

    def over_size(self) -> bool:
        """More servers than pool_size + reserve_pool_size (a reload lowered them): a server that comes
        back is closed instead of reused, as PgBouncer's check_pool_size closes the surplus."""
        lim = self.limits
        return lim.pool_size > 0 and len(self.servers) > lim.pool_size + lim.reserve_pool_size

    def excess_idle(self) -> list[S]:
        """The idle servers to close so that the pool gets back to pool_size + reserve_pool_size (the
        least recently used first)."""
        lim = self.limits
        many = len(self.servers) - (lim.pool_size + lim.reserve_pool_size)
        if lim.pool_size <= 0 or many <= 0:
            return []
        return self.idle[:many]

    def queued_demand(self, now: float) -> int:
        """New connections that waiting clients need, within this pool's own size (min_pool_size not
        counted): what may evict idle servers of other pools under max_db/max_user_connections."""
        demand = len(self.waiters) - self.connecting
        if self.server_params is None and self.login_waiters and not self.servers:
            demand = max(demand, 1)
        return max(0, min(demand, self.limit(now) - len(self.servers)))

    def put(self, server: S, now: float) -> C | None:
        """A clean server comes back. Returns the waiter that gets it, or None if it was parked."""
        if self.waiters and not self.paused:
            return self.waiters.popleft()
        server.idle_since = now
        self.idle.append(server)
        return None

    def add_waiter(self, client: C, now: float) -> None:
        client.wait_since = now
        self.waiters.append(client)

    def enqueue(self, client: C) -> None:
        """add_waiter() for a caller that set client.wait_since itself: a native store where the client's
        class is known (runtime/handoff.py, once per waiting transaction), a generic one here."""
        self.waiters.append(client)

    def remove_waiter(self, client: C) -> bool:
        try:
            self.waiters.remove(client)
        except ValueError:
            return False
        return True

    def take_all_idle(self) -> list[S]:
        """Every idle server, taken out of the pool (to be closed: PAUSE, KILL, a reload, shutdown)."""
        idle, self.idle = self.idle, []
        return idle

    def take_oldest_idle(self) -> S | None:
        """The least recently used idle server, taken out of the pool (to be evicted), or None."""
        return self.idle.pop(0) if self.idle else None

    def discard_idle(self, server: S) -> bool:
        """Take `server` out of the idle list; False when it was not idle."""
        try:
            self.idle.remove(server)
        except ValueError:
            return False
        return True

    def add_login_waiter(self, client: C) -> None:
        """A client that waits for the pool's first server to learn the parameters its welcome shows."""
        self.login_waiters.append(client)

    def take_login_waiters(self) -> list[C]:
        waiters, self.login_waiters = self.login_waiters, []
        return waiters

    def remove_login_waiter(self, client: C) -> bool:
        try:
            self.login_waiters.remove(client)
        except ValueError:
            return False
        return True

    def add_server(self, server: S) -> None:
        self.servers.add(server)

    def remove_server(self, server: S) -> None:
        self.servers.discard(server)
        self.no_room_until = 0.0
        if server in self.idle:
            self.idle.remove(server)

    # -- decisions -----------------------------------------------------------------------------
    def limit(self, now: float) -> int:
        """pool_size, plus the reserve once the oldest waiter has waited reserve_pool_timeout."""
        lim = self.limits
        if lim.reserve_pool_size and self.waiters and now - self.waiters[0].wait_since >= lim.reserve_pool_timeout:
            return lim.pool_size + lim.reserve_pool_size
        return lim.pool_size

    def wanted(self, now: float, headroom: int) -> int:
        """How many new server connections to start now. headroom: what shared limits still allow."""
        if self.disabled or headroom <= 0:
            return 0
        if self.last_login_failure is not None and now - self.last_login_failure < self.retry_delay:
            return 0
        demand = len(self.waiters) - self.connecting
        if self.server_params is None and self.login_waiters and not self.servers:
            demand = max(demand, 1)
        total = len(self.servers)
        want = max(demand, self.limits.min_pool_size - total)
        room = self.limit(now) - total
        return max(0, min(want, room, headroom))

    def expired(self, now: float, idle_timeout: float, lifetime: float) -> list[S]:
        """Idle servers to close: past server_lifetime, marked close_needed, or idle past
        server_idle_timeout while above min_pool_size. Oldest-idle first (the front of the LIFO)."""
        out: list[S] = []
        keep = len(self.servers)
        for s in self.idle:
            if s.close_needed or (lifetime > 0 and now - s.created_at >= lifetime):
                out.append(s)
                keep -= 1
            elif idle_timeout > 0 and now - s.idle_since >= idle_timeout and keep > self.limits.min_pool_size:
                out.append(s)
                keep -= 1
        return out

    def timed_out_waiters(self, now: float, timeout: float) -> list[C]:
        if timeout <= 0:
            return []
        out: list[C] = []
        for c in self.waiters:
            if now - c.wait_since < timeout:
                break  # FIFO: everyone behind waited less
            out.append(c)
        return out

    def max_wait(self, now: float) -> float:
        return now - self.waiters[0].wait_since if self.waiters else 0.0


class PoolStats:
    """Cumulative counters, PgBouncer's SHOW STATS names. The times add up in seconds, as floats (the
    per-transaction path adds a difference of two clock readings, nothing more), and read as whole
    microseconds, as PgBouncer shows them."""

    __slots__ = ("xact_count", "query_count", "bytes_received", "bytes_sent", "xact_secs", "query_secs",
                 "wait_secs", "server_assignment_count", "client_parse_count", "server_parse_count",
                 "bind_count", "pin_count", "client_login_count", "timing", "prepared_hit_count",
                 "prepared_evict_count")

    def __init__(self) -> None:
        self.xact_count = 0
        self.query_count = 0
        self.bytes_received = 0
        self.bytes_sent = 0
        self.xact_secs = 0.0
        self.query_secs = 0.0
        self.wait_secs = 0.0
        self.server_assignment_count = 0
        self.client_parse_count = 0  # protocol-level prepared statements (session/prepared.py counts them)
        self.server_parse_count = 0
        self.bind_count = 0
        self.pin_count = 0  # clients that became pinned to a server (SHOW STATS total_pinned_count, pgmux's own)
        self.client_login_count = 0  # clients that logged in (SHOW STATS total_client_login_count)
        # metrics_listen (pgmux/metrics/): histograms of wait, transaction and query times, None when off
        self.timing: Timings | None = None
        self.prepared_hit_count = 0  # a Bind/Describe found its statement prepared on the server already
        self.prepared_evict_count = 0  # statements closed on a server to stay within max_prepared_statements

    @property
    def xact_time(self) -> int:
        return int(self.xact_secs * 1e6)

    @property
    def query_time(self) -> int:
        return int(self.query_secs * 1e6)

    @property
    def wait_time(self) -> int:
        return int(self.wait_secs * 1e6)
