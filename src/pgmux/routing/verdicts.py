"""Health verdicts shared between worker processes (issue 14 item 4): what one worker's checks found, in a
form the other workers read and adopt instead of checking the hosts themselves.

Pure: bytes in, bytes out, time passed in. The I/O (the checker's lock, the file, its atomic rename) is
runtime/health_share.py; when to publish and adopt is runtime/health_monitor.py.

A `Board` is everything the checking worker knows about the hosts of one split database: per host its
`Verdict` (role, up or down, lag, the replay/write LSN read-your-writes needs, the ban the checks or the
console set and its reason, when it was checked) and, for the board as a whole, who wrote it and a
sequence number that grows with every publication (a new checker continues the old one's).

Times are `time.monotonic()` values: CLOCK_MONOTONIC is one clock for every process of the machine.

What a follower adopts (`adopt`):
- the check's findings (role, healthy, lag, LSN) when the verdict's check is no older than the last check
  the follower knows of: a failure its own traffic reported a moment ago (`Routing._mark`) is not undone
  by a verdict checked before it, only by the next check;
- the ban only when the published ban changed since the last board it adopted: a new ban (a failed check,
  console BAN) bans it here too (never shortening a ban of its own; not counted in `ban_count`: the
  checker counted it, once for the pooler), an unban (console UNBAN, a banned
  replica promoted) lifts whatever ban it had. A ban a worker set from its own traffic stays its own
  until then: the same rule as in one process, where a traffic ban lasts ban_time whatever checks say.
- a replica seen promoted is unbanned, as the checker does: the only host that takes writes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Final

from pgmux.routing.health import HostState, Role

__all__ = ["VERSION", "Board", "Verdict", "adopt", "decode", "encode", "host_key", "is_stale", "stale_after",
           "verdict_of"]

VERSION: Final = 1
STALE_PERIODS: Final = 3  # a verdict older than this many check periods (plus one timeout) is not followed
_ROLES: Final = ("primary", "replica", "auto")


@dataclass(frozen=True)
class Verdict:
    role: str
    role_checked: bool
    healthy: bool
    lagging: bool
    lag_bytes: int | None
    lag_seconds: float | None
    lsn: int | None  # replay position (replica) or write position (primary), for read-your-writes
    checked: float | None  # when the check that found this ended (monotonic); None: not checked yet
    primary_since: float | None
    banned_until: float | None  # the ban the checks or the console set (not one a worker's traffic set)
    ban_reason: str
    reason: str


@dataclass
class Board:
    pid: int  # the checking worker's process
    worker: int  # ... and its index
    seq: int
    written: float
    hosts: dict[str, Verdict] = field(default_factory=dict)


def host_key(state: HostState[Any]) -> str:
    host = state.host
    return f"{getattr(host, 'host', None) or ''}:{getattr(host, 'port', '')}"


def verdict_of(state: HostState[Any], lsn: int | None, ban: tuple[float, str] | None) -> Verdict:
    """The verdict the checker publishes for one host: its checked state, and the shared `ban` (not
    `state`'s own, which may come from the checker's traffic)."""
    return Verdict(role=state.role, role_checked=state._role_checked, healthy=state.healthy,
                   lagging=state.lagging, lag_bytes=state.lag_bytes, lag_seconds=state.lag_seconds, lsn=lsn,
                   checked=state.last_check, primary_since=state.primary_since,
                   banned_until=ban[0] if ban is not None else None, ban_reason=ban[1] if ban is not None else "",
                   reason=state.reason)


def encode(board: Board) -> bytes:
    return json.dumps({"v": VERSION, "pid": board.pid, "worker": board.worker, "seq": board.seq,
                       "written": board.written, "hosts": {k: asdict(v) for k, v in board.hosts.items()}},
                      separators=(",", ":")).encode()


def _opt(value: Any, kind: type | tuple[type, ...]) -> Any:
    if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
        raise ValueError(f"bad value {value!r}")
    return value


def _verdict(d: Any) -> Verdict:
    if not isinstance(d, dict) or d.get("role") not in _ROLES:
        raise ValueError("bad verdict")
    flags = [d.get(k) for k in ("role_checked", "healthy", "lagging")]
    if not all(isinstance(f, bool) for f in flags) or not isinstance(d.get("ban_reason"), str) \
            or not isinstance(d.get("reason"), str):
        raise ValueError("bad verdict")
    num = (int, float)
    return Verdict(role=d["role"], role_checked=d["role_checked"], healthy=d["healthy"], lagging=d["lagging"],
                   lag_bytes=_opt(d.get("lag_bytes"), int), lag_seconds=_opt(d.get("lag_seconds"), num),
                   lsn=_opt(d.get("lsn"), int), checked=_opt(d.get("checked"), num),
                   primary_since=_opt(d.get("primary_since"), num), banned_until=_opt(d.get("banned_until"), num),
                   ban_reason=d["ban_reason"], reason=d["reason"])


def decode(data: bytes) -> Board:
    """A board from its bytes; ValueError for anything else (a torn or foreign file is no verdict)."""
    try:
        d = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"not a verdict board: {e}") from None
    if not isinstance(d, dict) or d.get("v") != VERSION or not isinstance(d.get("hosts"), dict):
        raise ValueError("not a verdict board of this version")
    for k in ("pid", "worker", "seq"):
        if not isinstance(d.get(k), int) or isinstance(d.get(k), bool):
            raise ValueError(f"bad board {k}")
    written = _opt(d.get("written"), (int, float))
    if written is None:
        raise ValueError("bad board time")
    return Board(d["pid"], d["worker"], d["seq"], float(written),
                 {str(k): _verdict(v) for k, v in d["hosts"].items()})


# -- the staleness rule ------------------------------------------------------------------------------------
def stale_after(period: float, timeout: float) -> float:
    """How old a verdict may be before a follower stops trusting it and checks the host itself: a working
    checker publishes every host at least once per period plus one check's timeout; three periods leave
    room for a slow loop (a checker that died is replaced within a tick, long before)."""
    return STALE_PERIODS * period + timeout


def is_stale(checked: float | None, since: float, now: float, period: float, timeout: float) -> bool:
    """Is the verdict checked at `checked` (None: no check yet, counted from `since`, when the follower
    started waiting for one) too old to follow at `now`?"""
    return now - (checked if checked is not None else since) > stale_after(period, timeout)


# -- adopting a verdict ----------------------------------------------------------------------------------
def adopt(state: HostState[Any], v: Verdict, prev: Verdict | None, now: float) -> None:
    """Bring a follower's `state` to the published verdict `v` (`prev`: the verdict of this host it adopted
    last, None at first). The rules are in the module's docstring."""
    was = state.role
    if v.checked is not None and (state.last_check is None or v.checked >= state.last_check):
        state.last_check = v.checked
        if v.healthy != state.healthy:
            state._note(now, "health check ok again" if v.healthy else f"health check failed: {v.reason}")
        state.healthy = v.healthy
        if v.role_checked and (v.role != state.role or not state._role_checked):
            role: Role = v.role  # type: ignore[assignment]  # (decode checked it is one of _ROLES)
            state._set_role(now, role)
        state.primary_since = v.primary_since
        state.lag_bytes, state.lag_seconds = v.lag_bytes, v.lag_seconds
        if v.lagging != state.lagging:
            state._note(now, v.reason if v.lagging else "caught up")
        state.lagging = v.lagging
        state.reason = v.reason
    ban, old = (v.banned_until, v.ban_reason), (prev.banned_until, prev.ban_reason) if prev else (None, "")
    if ban != old:
        if v.banned_until is None:
            state.unban()
        else:
            state.ban_until(now, max(v.banned_until, state.banned_until or 0.0), v.ban_reason, count=False)
    if was != "primary" and state.role == "primary" and state.banned(now):
        state.unban()  # promoted: the only host that can take writes (as HealthMonitor does)
