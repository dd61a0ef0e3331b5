"""What pgmux believes about each host: its role, whether it answers, how far behind it is.

Pure state, time passed in. The runtime runs the checks (`SELECT pg_is_in_recovery()`, lag from
the replay position) and reports each with `record_check`; connection failures become timed bans
with `ban`. `choose` then says which hosts may take a read or a write.

The role a host is configured with is only a first guess. Once checks answer, the server decides:
a replica that stops being in recovery was promoted and now takes writes; an old primary that
comes back in recovery is a replica. When two hosts both claim to be primary (the old one not yet
fenced after a failover), writes go only to the one that became primary last, never to both.

Two separate things make a host unusable, because they end differently: a failed health check
lasts until a check succeeds; a ban lasts until `banned_until` (or `unban()`), whatever checks say,
so a host that fails connections but answers the check query does not flap back in at once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Generic, Literal, TypeVar

__all__ = ["HostState", "Role", "choose"]

Role = Literal["primary", "replica", "auto"]  # "auto": not known until the first check answers
H = TypeVar("H")


class HostState(Generic[H]):
    """One backend host. `host` is opaque (the config entry); `history` keeps the last transitions,
    each (now, text), for SHOW HOSTS and logs."""

    def __init__(self, host: H, role: Role = "auto", *, max_lag_bytes: int = 0,
                 max_lag_seconds: float = 0.0, history_size: int = 16) -> None:
        self.host = host
        self.configured_role: Role = role
        self.role: Role = role
        self.max_lag_bytes = max_lag_bytes  # 0 = no limit
        self.max_lag_seconds = max_lag_seconds  # 0 = no limit
        self.banned_until: float | None = None
        self.ban_reason = ""
        self.ban_count: dict[str, int] = {}  # bans since start by the words of their reason before a colon
        self.healthy = True  # optimistic until a check says otherwise: the first connect will tell
        self.lagging = False
        self.last_check: float | None = None
        self.lag_bytes: int | None = None
        self.lag_seconds: float | None = None
        self.primary_since: float | None = None  # when a check first saw it as primary
        self._role_checked = False  # has a check told us the role yet?
        self.reason = f"configured {role}"
        self.history: deque[tuple[float, str]] = deque(maxlen=history_size)

    def __repr__(self) -> str:
        return f"HostState({self.host!r}, role={self.role!r}, reason={self.reason!r})"

    # -- bans ----------------------------------------------------------------------------------------
    def ban(self, now: float, ban_time: float, reason: str) -> None:
        self.ban_until(now, now + ban_time, reason)

    def ban_until(self, now: float, until: float, reason: str, count: bool = True) -> None:
        """A ban to `until` (never shortening one in force). Another worker's published ban comes here
        with count=False: counted once in the pooler, by the worker that decided it."""
        if self.banned_until is None or until > self.banned_until:
            self.banned_until = until
        self.ban_reason = reason
        kind = reason.split(":", 1)[0][:80]
        if count:
            if kind not in self.ban_count and len(self.ban_count) >= 32:
                kind = "other"
            self.ban_count[kind] = self.ban_count.get(kind, 0) + 1
        self._note(now, f"banned for {max(0.0, until - now):g}s: {reason}")

    def unban(self) -> None:
        if self.banned_until is not None:
            self.banned_until = None
            self.ban_reason = ""
            self.reason = "unbanned"

    def banned(self, now: float) -> bool:
        return self.banned_until is not None and now < self.banned_until

    def usable(self, now: float) -> bool:
        """Up, not banned, and (for a replica) not behind the configured lag limits."""
        return self.healthy and not self.lagging and not self.banned(now)

    # -- checks --------------------------------------------------------------------------------------
    def record_check(self, now: float, ok: bool, in_recovery: bool | None = None,
                     lag_bytes: int | None = None, lag_seconds: float | None = None,
                     detail: str = "") -> None:
        """One health check's result. With ok=False the other values are ignored. Unknown lag (None)
        counts as within limits: the check could not measure it, which is no evidence of delay."""
        self.last_check = now
        if not ok:
            if self.healthy:
                self._note(now, "health check failed" + (f": {detail}" if detail else ""))
            self.healthy = False
            return
        if not self.healthy:
            self._note(now, "health check ok again")
        self.healthy = True
        if in_recovery is not None:
            self._set_role(now, "replica" if in_recovery else "primary")
        self.lag_bytes, self.lag_seconds = lag_bytes, lag_seconds
        behind = self.role == "replica" and self._over_limit()
        if behind != self.lagging:
            self._note(now, self._lag_text() if behind else "caught up")
        elif behind:
            self.reason = self._lag_text()  # current numbers, without a history line per check
        self.lagging = behind

    def _set_role(self, now: float, role: Role) -> None:
        if role == "replica":
            self.primary_since = None
        elif self.primary_since is None:
            self.primary_since = now
        old, self.role = self.role, role
        if not self._role_checked:
            self._role_checked = True
            suffix = "" if self.configured_role in ("auto", role) else f" (configured {self.configured_role})"
            self._note(now, f"is a {role}{suffix}")
        elif old == "replica" and role == "primary":
            self._note(now, "promoted: no longer in recovery")
        elif old == "primary" and role == "replica":
            self._note(now, "demoted: in recovery again")

    def _over_limit(self) -> bool:
        over_bytes = self.max_lag_bytes > 0 and (self.lag_bytes or 0) > self.max_lag_bytes
        over_time = self.max_lag_seconds > 0 and (self.lag_seconds or 0.0) > self.max_lag_seconds
        return over_bytes or over_time

    def _lag_text(self) -> str:
        parts = []
        if self.max_lag_bytes > 0 and (self.lag_bytes or 0) > self.max_lag_bytes:
            parts.append(f"{self.lag_bytes} bytes > {self.max_lag_bytes}")
        if self.max_lag_seconds > 0 and (self.lag_seconds or 0.0) > self.max_lag_seconds:
            parts.append(f"{self.lag_seconds:g}s > {self.max_lag_seconds:g}s")
        return "lagging: " + ", ".join(parts)

    def _note(self, now: float, text: str) -> None:
        self.reason = text
        self.history.append((now, text))

    def status(self, now: float) -> str:
        """One word for SHOW HOSTS: banned, down, lagging or up."""
        if self.banned(now):
            return "banned"
        if not self.healthy:
            return "down"
        return "lagging" if self.lagging else "up"


def choose(hosts: Iterable[HostState[H]], kind: Literal["read", "write"], now: float, *,
           include_primary: bool = False) -> list[HostState[H]]:
    """Candidates for a read or a write, for the balancer to pick from; [] when nobody can serve.

    Writes: the current primary (the newest, should two claim the role). Reads: usable replicas
    (plus the primary with include_primary); the primary alone when every replica is down or behind.
    """
    hosts = list(hosts)
    primaries = [h for h in hosts if h.role == "primary" and h.usable(now)]
    # The newest primary wins; a configured primary no check has confirmed yet counts as oldest.
    primary = max(primaries, key=lambda h: -1.0 if h.primary_since is None else h.primary_since,
                  default=None)
    if kind == "write":
        return [primary] if primary is not None else []
    replicas = [h for h in hosts if h.role == "replica" and h.usable(now)]
    if include_primary and primary is not None:
        return [*replicas, primary]
    return replicas or ([primary] if primary is not None else [])


def parse_lsn(text: str) -> int:
    """'16/B374D848' -> the 64-bit WAL position PostgreSQL prints as two hex halves."""
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"
