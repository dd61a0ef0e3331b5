"""Health checks for the hosts of a logical database: the I/O half of routing.health.

One asyncio task per host keeps a small connection of its own (net/probe.py: pgmux's own protocol
code, no driver) and, every `period`, runs CHECK_QUERY on it. The answer goes to
`HostState.record_check`, which decides the role (promotion, demotion) and the lag verdict; the
monitor only measures. A check that cannot connect, fails, or takes longer than `timeout` marks the
host down and, for a replica, bans it for `ban_time`: the connection is dropped and opened again on
the next period.

Why one connection per host, kept open: a check then costs one round trip, not a TCP handshake, a
login and a backend fork every second. It also notices a restart: the kept connection breaks, the
check fails, and the next one logs in again.

Why the primary is never banned: a failed check already makes it unusable until a check succeeds;
a ban would keep writes away for `ban_time` after a blip. A host whose role no check has told yet
("auto") is not banned either, since it may be the primary. PgDog makes the same choice.

Lag, as CHECK_QUERY measures it on a replica:
- bytes: WAL received but not yet replayed (`pg_last_wal_receive_lsn() - pg_last_wal_replay_lsn()`).
  It misses WAL the replica has not received yet (a slow network); comparing with the primary's LSN
  from another connection would catch that, but adds the skew between two samples. NULL (a replica
  fed from an archive, no WAL receiver) is reported as unknown, which HostState counts as in limits.
- seconds: `now() - pg_last_xact_replay_timestamp()`, but 0 when everything received is replayed.
  The raw timestamp difference grows without bound on an idle primary (nothing to replay, so the
  last replayed commit gets older), which would ban healthy replicas of a quiet database.
On the primary both are 0 and `lsn` is `pg_current_wal_lsn()`; on a replica `lsn` is the replay
position. `current_lsn[host]` keeps the last value as an integer, for read-your-writes: a replica
may serve a client once its replay LSN reaches the LSN of that client's last commit on the primary.

With worker processes (`share`, a runtime/health_share.HealthShare) the hosts are checked once for the
whole pooler, not once per worker. One loop per monitor runs every tick (min(period, FOLLOW_TICK)):
- the worker holding the database's lock file is the checker: it runs the per-host loops above and
  publishes every host's verdict (routing/verdicts.py) after each check; a follower's request for a
  check now (the kick file) has it check every host at once (at most twice a second);
- every other worker follows: it reads the board when it changed and adopts the verdicts into its own
  HostStates (on_change fires as after its own check), tries the lock (a dead checker's lock is gone:
  it takes over within a tick), and turns its own check requests into kicks. A host whose verdict is
  older than `verdicts.stale_after` (3 periods + timeout: the checker is stuck, say stopped) it checks
  itself, logged, until fresh verdicts come again.
What is published is what the checks found, as each check left the host (`_found`), and the bans of
failed checks of a replica, console BAN/UNBAN and the unban of a promoted replica (`_shared_ban`). A
ban or a "down" a worker sets from its own traffic (runtime/routing.py `_mark`), the checker included,
stays that worker's, and asks the checker for a check now, whose verdict then holds for all.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from pgmux.net.connector import default_unix_dir
from pgmux.net.probe import CheckFailed, Probe
from pgmux.routing import verdicts
from pgmux.routing.health import HostState, format_lsn, parse_lsn
from pgmux.runtime.health_share import HealthShare

__all__ = ["CHECK_QUERY", "CheckResult", "HealthMonitor", "format_lsn", "parse_lsn"]

log = logging.getLogger("pgmux")

FOLLOW_TICK = 0.2  # seconds between a worker's looks at the lock, the board and the kicks (with `share`)
KICK_GAP = 0.5  # the checker checks every host out of turn at most this often

CHECK_QUERY = (
    "SELECT pg_is_in_recovery(), "
    "CASE WHEN pg_is_in_recovery() "
    "THEN pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::bigint ELSE 0 END, "
    "CASE WHEN NOT pg_is_in_recovery() THEN 0 "
    "WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0 "
    "ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp()) END, "
    "CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END::text"
)


class CheckResult:
    __slots__ = ("in_recovery", "lag_bytes", "lag_seconds", "lsn")

    def __init__(self, in_recovery: bool, lag_bytes: int | None, lag_seconds: float | None,
                 lsn: int | None) -> None:
        self.in_recovery, self.lag_bytes, self.lag_seconds, self.lsn = in_recovery, lag_bytes, lag_seconds, lsn


def _parse_result(row: Sequence[str | None]) -> CheckResult:
    if len(row) != 4 or row[0] not in ("t", "f"):
        raise CheckFailed(f"unexpected check result {list(row)!r}")
    lag_bytes = int(row[1]) if row[1] is not None else None
    lag_seconds = max(0.0, float(row[2])) if row[2] is not None else None
    lsn = parse_lsn(row[3]) if row[3] is not None else None
    return CheckResult(row[0] == "t", lag_bytes, lag_seconds, lsn)


class HealthMonitor:
    """Checks every host each `period` seconds, each check bounded by `timeout`.

    `hosts` are routing.health.HostState objects whose `.host` has `.host` and `.port` (a
    config.HostConfig). `on_change(state)` is called after a check that changed a host's role or its
    status word (up, down, lagging, banned). `clock` must be the clock the rest of the runtime passes
    to HostState as `now`. Nothing raises out of the check loops; `stop()` cancels them and closes
    the connections.
    """

    def __init__(self, hosts: Sequence[HostState[Any]], period: float, timeout: float, user: str,
                 password: str | None, dbname: str,
                 on_change: Callable[[HostState[Any]], None] | None = None, *,
                 ban_time: float = 300.0, clock: Callable[[], float] = time.monotonic,
                 unix_dir: str | None = None, tls: Callable[[], Any] | None = None,
                 share: HealthShare | None = None) -> None:
        if period <= 0 or timeout <= 0:
            raise ValueError("health check period and timeout must be above 0")
        self.hosts = list(hosts)
        self.period, self.timeout, self.ban_time = period, timeout, ban_time
        self.user, self.password, self.dbname = user, password, dbname
        self.on_change = on_change
        self.clock = clock
        self.unix_dir = unix_dir or default_unix_dir()
        self.tls = tls  # () -> net/tls.Contexts, read at each connect so that a reload applies
        self.current_lsn: dict[HostState[Any], int] = {}  # last replay (replica) or write (primary) LSN
        self.checks = 0  # completed checks, ok or not: lets tests and SHOW wait for "one more round"
        self._conns: dict[HostState[Any], Probe] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._locks: dict[HostState[Any], asyncio.Lock] = {}
        self.share = share  # worker processes: one checker for all (the module's docstring)
        self._applied: dict[HostState[Any], verdicts.Verdict] = {}  # a follower's last adopted verdicts
        self._shared_ban: dict[HostState[Any], tuple[float, str]] = {}  # the bans the checker publishes
        self._found: dict[HostState[Any], verdicts.Verdict] = {}  # what this worker's last check of each found
        self._fallback: dict[HostState[Any], float] = {}  # hosts a follower checks itself -> its last check
        self._since = clock()  # when this monitor started waiting for verdicts
        self._kick_pending = False
        self._kicked_at = -KICK_GAP
        self._dirty = False

    # -- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> None:
        if self._tasks:
            return
        if self.share is not None:
            self._since = self.clock()
            self._tasks = [asyncio.create_task(self._follow(), name="health follow")]
            return
        self._loops()

    def _loops(self) -> None:
        self._tasks += [asyncio.create_task(self._loop(h), name=f"health {self._name(h)}") for h in self.hosts]

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for state in list(self._conns):
            self._drop(state)
        if self.share is not None:
            self.share.close()

    async def __aenter__(self) -> HealthMonitor:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- checks --------------------------------------------------------------------------------------
    async def check_all(self) -> None:
        """One check of every host, concurrently: at startup, so the first picks do not rest on the
        configured guesses, or before a write waits for a primary. Never raises. A follower asks the
        checker instead (and checks the hosts it checks itself)."""
        if self.share is not None and not self.share.leading:
            self.share.kick()
            await asyncio.gather(*(self.check(h) for h in list(self._fallback)))
            return
        await asyncio.gather(*(self.check(h) for h in self.hosts))

    async def check(self, state: HostState[Any]) -> None:
        """One check of one host, bounded by `timeout`; the verdict goes to `state`. Never raises
        (except CancelledError). A follower asks the checker instead, unless it checks this host itself."""
        if self.share is not None and not self.share.leading and state not in self._fallback:
            self.share.kick()
            return
        lock = self._locks.setdefault(state, asyncio.Lock())
        async with lock:  # check_all() while the loops run must not share one connection
            await self._check(state)

    async def _check(self, state: HostState[Any]) -> None:
        before = (state.role, state.status(self.clock()))
        try:
            async with asyncio.timeout(self.timeout):
                result = await self._measure(state)
        except asyncio.CancelledError:
            self._drop(state)
            raise
        except Exception as exc:  # every failure is a verdict on the host, not a crash of ours
            self._drop(state)
            self._failed(state, _describe(exc, self.timeout))
        else:
            state.record_check(self.clock(), True, result.in_recovery, result.lag_bytes, result.lag_seconds)
            if before[0] != "primary" and state.role == "primary" and state.banned(self.clock()):
                # A replica banned while it flapped has just been promoted: it is now the only host
                # that can take writes, and keeping it out would turn a failover into an outage.
                state.unban()
                self._shared_ban.pop(state, None)
            if result.lsn is not None:
                self.current_lsn[state] = result.lsn
        self.checks += 1
        if self.share is not None:  # published as the check left it: not what this worker's traffic does after
            self._found[state] = verdicts.verdict_of(state, self.current_lsn.get(state), None)
        if state in self._fallback:
            self._fallback[state] = self.clock()
        self._after(state, before)
        if self.share is not None and self.share.leading:
            self._publish_soon()

    def _after(self, state: HostState[Any], before: tuple[str, str], source: str = "") -> None:
        after = (state.role, state.status(self.clock()))
        if after != before:
            log.info("health %s: %s -> %s (%s)%s", self._name(state), "/".join(before), "/".join(after),
                     state.reason, source)
            if self.on_change is not None:
                try:
                    self.on_change(state)
                except Exception:
                    log.exception("health %s: on_change failed", self._name(state))

    async def _measure(self, state: HostState[Any]) -> CheckResult:
        conn = self._conns.get(state)
        if conn is None:
            conn = await Probe.open(state.host.host, state.host.port, self.user, self.password, self.dbname,
                                    self.unix_dir, self.tls() if self.tls is not None else None)
            self._conns[state] = conn
        return _parse_result(await conn.query_row(CHECK_QUERY))

    def _failed(self, state: HostState[Any], reason: str) -> None:
        now = self.clock()
        state.record_check(now, False, detail=reason)
        self.current_lsn.pop(state, None)
        if state.role != "replica":
            return
        if self.share is None:
            if not state.banned(now):
                state.ban(now, self.ban_time, f"health check failed: {reason}")
            return
        shared = self._shared_ban.get(state)
        if shared is None or shared[0] <= now:  # (a ban from this worker's own traffic is not published)
            state.ban(now, self.ban_time, f"health check failed: {reason}")
            self._shared_ban[state] = (now + self.ban_time, f"health check failed: {reason}")

    def _drop(self, state: HostState[Any]) -> None:
        conn = self._conns.pop(state, None)
        if conn is not None:
            conn.close()

    async def _loop(self, state: HostState[Any]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                await self.check(state)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug in a check must not end the monitoring of this host
                log.exception("health %s: check crashed", self._name(state))
            await asyncio.sleep(max(0.0, self.period - (loop.time() - started)))

    # -- one checker for all workers (share) ------------------------------------------------------------
    def console_ban(self, state: HostState[Any], on: bool) -> None:
        """BAN/UNBAN from the console (every worker gets it): what the checker publishes follows it."""
        if self.share is None:
            return
        if on and state.banned_until is not None:
            self._shared_ban[state] = (state.banned_until, state.ban_reason)
        elif not on:
            self._shared_ban.pop(state, None)
        if self.share.leading:
            self._publish_soon()

    async def _follow(self) -> None:
        step = min(self.period, FOLLOW_TICK)
        while True:
            try:
                self._turn()
            except Exception:  # a bug here must not end the checks
                log.exception("health checks of %s: follow loop failed", self._db())
            await asyncio.sleep(step)

    def _turn(self) -> None:
        share = self.share
        assert share is not None
        now = self.clock()
        if not share.leading and share.try_lead():
            self._lead(now)
        if share.leading:
            self._kick_pending = self._kick_pending or share.kicked()
            if self._kick_pending and now - self._kicked_at >= KICK_GAP:
                self._kick_pending, self._kicked_at = False, now
                self._spawn(self.check_all())
            return
        board = share.read()
        if board is not None:
            self._adopt(board, now)
        self._fall_back(now)

    def _lead(self, now: float) -> None:
        share = self.share
        assert share is not None
        board = share.read(force=True)
        self._shared_ban = {}
        self._found = {}
        if board is not None:
            self._adopt(board, now)  # what the previous checker knew, bans included, goes on
            for state in self.hosts:
                v = board.hosts.get(verdicts.host_key(state))
                if v is not None and v.banned_until is not None:
                    self._shared_ban[state] = (v.banned_until, v.ban_reason)
        log.info("health checks of %s: worker %d (pid %d) checks the hosts now, for every worker%s", self._db(),
                 share.worker, os.getpid(),
                 f" (after worker {board.worker}, pid {board.pid})" if board is not None else "")
        self._fallback.clear()
        self._loops()

    def _adopt(self, board: verdicts.Board, now: float) -> None:
        for state in self.hosts:
            v = board.hosts.get(verdicts.host_key(state))
            if v is None:
                continue
            before = (state.role, state.status(now))
            verdicts.adopt(state, v, self._applied.get(state), now)
            self._applied[state] = v
            if v.checked is not None and state.last_check == v.checked:  # the verdict's check was adopted
                if v.lsn is not None:
                    self.current_lsn[state] = v.lsn
                else:
                    self.current_lsn.pop(state, None)
            self._after(state, before, f" [checked by worker {board.worker}]")

    def _fall_back(self, now: float) -> None:
        """Hosts without a fresh verdict are checked here, every period, until verdicts come again."""
        for state in self.hosts:
            v = self._applied.get(state)
            stale = verdicts.is_stale(v.checked if v is not None else None, self._since, now, self.period,
                                      self.timeout)
            if stale and state not in self._fallback:
                age = f"{now - v.checked:.1f}s old" if v is not None and v.checked is not None else "none yet"
                log.warning("health %s of %s: no fresh verdict from the checking worker (%s, bound %gs): this "
                            "worker checks it itself", self._name(state), self._db(), age,
                            verdicts.stale_after(self.period, self.timeout))
                self._fallback[state] = -self.period
            elif not stale and state in self._fallback:
                log.info("health %s of %s: following the checking worker's verdicts again", self._name(state),
                         self._db())
                del self._fallback[state]
                self._drop(state)
            last = self._fallback.get(state)
            if last is not None and now - last >= self.period and not self._locks.get(state, _FREE).locked():
                self._fallback[state] = now
                self._spawn(self.check(state))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.append(task)
        task.add_done_callback(self._tasks_done)

    def _tasks_done(self, task: asyncio.Task[None]) -> None:
        if task in self._tasks:
            self._tasks.remove(task)

    def _publish_soon(self) -> None:
        if not self._dirty:
            self._dirty = True
            asyncio.get_running_loop().call_soon(self._publish)

    def _publish(self) -> None:
        self._dirty = False
        share = self.share
        if share is None or not share.leading:
            return
        now = self.clock()
        share.seq += 1
        board = verdicts.Board(os.getpid(), share.worker, share.seq, now)
        for state in self.hosts:
            ban = self._shared_ban.get(state)
            found = self._found.get(state)
            if found is None:  # not checked here yet: what the previous checker published, as adopted
                found = verdicts.verdict_of(state, self.current_lsn.get(state), None)
            board.hosts[verdicts.host_key(state)] = dataclasses.replace(
                found, banned_until=ban[0] if ban is not None else None, ban_reason=ban[1] if ban is not None else "")
        share.publish(board)

    def _db(self) -> str:
        return self.share.database if self.share is not None else self.dbname

    @staticmethod
    def _name(state: HostState[Any]) -> str:
        addr = state.host
        return f"{getattr(addr, 'host', None) or 'unix'}:{getattr(addr, 'port', '?')}"


_FREE = asyncio.Lock()  # (never taken: "no check of this host running")


def _describe(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g}s"
    if isinstance(exc, asyncio.IncompleteReadError):
        return "connection closed by the server"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if isinstance(exc, OSError) else text
