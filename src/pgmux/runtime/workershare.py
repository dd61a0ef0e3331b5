"""What worker processes share (issue 14): the counts behind the limits, and the cancel-key tag.

With `workers = N > 1` every limit (max_client_conn, pool_size + reserve_pool_size, max_db_connections,
max_user_connections, max_db_client_connections, max_user_client_connections) holds for the pooler as a
whole. The supervisor maps one anonymous shared memory block before it forks the workers; in it, each
worker owns one row of counts per key ("what I hold now") and one row of unmet demand ("clients of mine
wait for this key and I may not open more"). A worker writes only its own row; the sum over rows is the
pooler's count. Taking more than one holds (a new client, new server connections) happens under a lock
(fcntl.lockf on a file: POSIX record locks are per process and the kernel drops them when the process
dies, so a worker killed while holding it blocks nobody). Giving back is a plain store into the worker's
own row, lock-free: a count that is briefly too high only makes the others more careful. When a worker
dies the supervisor zeroes its rows: its clients and server connections died with it.

Keys are strings hashed to 64 bits into a fixed table of `KEYS` slots (open addressing, inserted under
the lock, never removed). This module is pure: `Counts` works on any writable buffer (the tests give it
a bytearray) and the lock is passed in.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from typing import TYPE_CHECKING, Final, Protocol

if TYPE_CHECKING:
    from pgmux.config.model import Config

KEYS: Final = 16384  # key slots: pools, databases and users ever used (none is removed while pgmux runs)
CLIENTS: Final = "clients"  # max_client_conn's key


# -- cancel keys --------------------------------------------------------------------------------------
def worker_bits(workers: int) -> int:
    """Low bits of the BackendKeyData pid that name the worker (0 for one process: keys unchanged)."""
    return (workers - 1).bit_length() if workers > 1 else 0


def tag_pid(pid: int, index: int, bits: int) -> int:
    """The pid part of a client's BackendKeyData (31 random bits) with the worker index in its low
    `bits`; never 0."""
    if bits == 0:
        return pid
    pid = (pid >> bits << bits) | index
    return pid or 1 << bits


def owner(pid: int, bits: int) -> int:
    """The worker a BackendKeyData pid was handed out by."""
    return pid & ((1 << bits) - 1)


# -- the private sockets ------------------------------------------------------------------------------
PRIVATE_PORT: Final = 1  # named as PostgreSQL's sockets are: <rundir>/w<index>/.s.PGSQL.1


def private_dir(rundir: str, index: int) -> str:
    return os.path.join(rundir, f"w{index}")


def private_socket(rundir: str, index: int) -> str:
    """Worker `index`'s private Unix socket: cancels passed on to it, and the other workers' console."""
    return os.path.join(private_dir(rundir, index), f".s.PGSQL.{PRIVATE_PORT}")


# -- keys -----------------------------------------------------------------------------------------------
def pool_key(database: str, user: str, host: str = "") -> str:
    return f"p\0{database}\0{user}\0{host}"


def pool_clients_key(database: str, user: str, host: str = "") -> str:
    return f"c\0{database}\0{user}\0{host}"  # clients of a pool (each worker's share follows them)


def db_key(database: str) -> str:
    return f"d\0{database}"  # server connections of a database (max_db_connections)


def user_key(user: str) -> str:
    return f"u\0{user}"  # server connections of a user (max_user_connections)


def db_clients_key(database: str) -> str:
    return f"D\0{database}"  # max_db_client_connections


def user_clients_key(user: str) -> str:
    return f"U\0{user}"  # max_user_client_connections


def _hash(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=8).digest(),
                          "little") | 1


def rows_for(workers: int) -> int:
    """Rows of counts for `workers` worker slots: two per slot, so that during a rolling restart the old
    process of a slot and its replacement each count what they hold (runtime/rolling.py)."""
    return 2 * workers


def sibling(row: int, workers: int) -> int:
    """The other row of the same worker slot: where a slot's replacement runs, or its predecessor."""
    return (row + workers) % (2 * workers)


def size_for(rows: int) -> int:
    """Bytes of the shared block for this many rows."""
    return KEYS * 8 + 2 * rows * KEYS * 4 + rows * 8


class Lock(Protocol):
    def __enter__(self) -> object: ...
    def __exit__(self, *exc: object) -> None: ...


class NoLock:
    """For one process (tests): nothing to exclude."""

    def __enter__(self) -> object:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class FileLock:
    """An exclusive POSIX record lock on an open file, re-entrant within the process. The descriptor may
    be inherited across fork: lockf locks belong to the process, and die with it."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.depth = 0

    def __enter__(self) -> object:
        if self.depth == 0:
            os.lseek(self.fd, 0, os.SEEK_SET)
            fcntl.lockf(self.fd, fcntl.LOCK_EX, 1, 0)
        self.depth += 1
        return self

    def __exit__(self, *exc: object) -> None:
        self.depth -= 1
        if self.depth == 0:
            fcntl.lockf(self.fd, fcntl.LOCK_UN, 1, 0)


class TableFull(Exception):
    """More distinct keys than KEYS: the caller refuses what it would count (never counts it nowhere)."""


class Counts:
    """The shared table: keys, and per row (a worker process: rows_for) its holds and unmet demand per
    key, and whether it accepts. `workers` here is the number of rows."""

    def __init__(self, buf: memoryview | bytearray, workers: int, lock: Lock) -> None:
        view = memoryview(buf)
        if len(view) < size_for(workers):
            raise ValueError("shared block too small")
        self.workers = workers
        self.lock = lock
        self.keys = view[:KEYS * 8].cast("Q")
        rows = workers * KEYS * 4
        self.held = view[KEYS * 8:KEYS * 8 + rows].cast("i")
        self.demand = view[KEYS * 8 + rows:KEYS * 8 + 2 * rows].cast("i")
        # Per row, the pid of the worker process serving there once it accepts (0: none): whose private
        # socket a console asks (WorkerShare.live), which the supervisor clears when that process ends.
        self.ready = view[KEYS * 8 + 2 * rows:KEYS * 8 + 2 * rows + workers * 8].cast("q")
        self.slots: dict[str, int] = {}  # this process's memo of key -> slot

    def slot(self, key: str) -> int:
        """The key's slot, inserted (under the lock) on first use. Raises TableFull."""
        found = self.slots.get(key)
        if found is not None:
            return found
        h = _hash(key)
        with self.lock:
            i = h % KEYS
            for _ in range(KEYS):
                k = self.keys[i]
                if k == h:
                    break
                if k == 0:
                    self.keys[i] = h
                    break
                i = (i + 1) % KEYS
            else:
                raise TableFull(f"more than {KEYS} distinct pools, databases and users in use")
        self.slots[key] = i
        return i

    # -- one worker's rows -------------------------------------------------------------------------
    def set(self, worker: int, slot: int, n: int) -> None:
        self.held[worker * KEYS + slot] = n

    def get(self, worker: int, slot: int) -> int:
        return self.held[worker * KEYS + slot]

    def want(self, worker: int, slot: int, n: int) -> None:
        self.demand[worker * KEYS + slot] = n

    def total(self, slot: int) -> int:
        return sum(self.held[w * KEYS + slot] for w in range(self.workers))

    def others(self, worker: int, slot: int) -> int:
        return self.total(slot) - self.held[worker * KEYS + slot]

    def others_demand(self, worker: int, slot: int) -> int:
        return sum(self.demand[w * KEYS + slot] for w in range(self.workers) if w != worker)

    def active_workers(self, slot: int) -> int:
        """Workers holding or wanting this key (the fair share divides the limit among them)."""
        return sum(1 for w in range(self.workers)
                   if self.held[w * KEYS + slot] > 0 or self.demand[w * KEYS + slot] > 0)

    def mark_ready(self, worker: int, pid: int) -> None:
        self.ready[worker] = pid

    def live(self) -> list[int]:
        """The rows whose worker process accepts now."""
        return [w for w in range(self.workers) if self.ready[w] != 0]

    def zero(self, worker: int) -> None:
        """A worker died: what it held is gone with it (the supervisor calls this before a restart)."""
        self.ready[worker] = 0
        base = worker * KEYS
        for i in range(base, base + KEYS):
            self.held[i] = 0
            self.demand[i] = 0


# -- the accounting rules (pure) -------------------------------------------------------------------------
def room(limit: int, total: int) -> int:
    """What a limit still allows (0 = no limit, as PgBouncer's max_db_connections)."""
    return 1 << 30 if limit <= 0 else max(0, limit - total)


def fair_share(limit: int, active: int, clients: list[int] | None = None, me: int = 0) -> int:
    """Worker `me`'s share of a pool limit while other workers have clients waiting for it, at least 1:
    in proportion to each worker's clients of the pool (`clients`, one count per worker; the largest
    remainders get the rest, so that the shares add up to the limit and a pooler whose workers all hold
    their share is full), or the limit divided among the `active` workers (holding or wanting it) when
    no clients are counted. Shares by clients follow the load, and a client count changes slowly; equal
    shares, with clients spread unevenly over the workers, had the busiest give servers up and take them
    back tick after tick."""
    n = sum(clients) if clients else 0
    if not clients or n <= 0:
        return max(1, limit // max(1, active))
    exact = [limit * k // n for k in clients]
    left = limit - sum(exact)
    # the rest, one each, to the largest remainders (ties: the lower index, as every worker reads it)
    order = sorted(range(len(clients)), key=lambda w: (-(limit * clients[w] % n), w))
    return max(1, exact[me] + (1 if me in order[:left] else 0))


def crowded(mine: int, total: int, workers: int) -> bool:
    """Has a worker with `mine` of the pooler's `total` clients clearly more than its part (an eighth
    more than the mean, and at least 2 more)?"""
    mean = total / max(1, workers)
    return mine > mean + max(2.0, mean / 8)


def to_give_up(limit: int, mine: int, others_demand: int, total: int, share: int) -> int:
    """How many of its servers for a key a worker gives up so that another worker's waiting clients
    get some: none while the limit has room for them, else what this worker holds beyond its fair
    `share` (never more than the others wait for)."""
    if others_demand <= 0 or limit <= 0:
        return 0
    free = max(0, limit - total)
    if free >= others_demand:
        return 0
    return max(0, min(mine - share, others_demand - free))


# -- what is not shared ------------------------------------------------------------------------------------
def per_worker(config: Config) -> list[str]:
    """What runs once per worker with workers > 1 (logged as warnings at start-up)."""
    if config.settings.workers <= 1:
        return []
    out = []
    if config.settings.auth_user or any(db.auth_user for db in config.databases.values()):
        out.append("each worker keeps its own auth_query connection")
    return out
