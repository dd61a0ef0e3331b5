"""Counters of things that happen once per connection, not per transaction: server connections opened and
closed (by reason), client login times, TLS handshakes. The App owns one `Events` and calls it from its
login and close paths; the collectors read it at scrape time. Always on: each call is a dict update on a
path that already logs a line.

Close reasons are free text ("server login failed: password authentication failed for user ..."): the
label is the text before the first colon, without words that carry numbers or addresses, and a bounded
number of distinct labels (`MAX_KINDS`), past which they count as "other", so a metric's series stay few.
"""

from __future__ import annotations

from array import array
from typing import Any

from pgmux.pooling.histogram import BOUNDS, Histogram, bucket
from pgmux.session.hub import mypyc_attr

MAX_KINDS = 64


def reason_kind(text: str) -> str:
    head = text.split(":", 1)[0].strip()
    words = [w for w in head.split() if not any(ch.isdigit() for ch in w) and "/" not in w]
    return " ".join(words)[:80] or "unknown"


def _bump(counts: dict[Any, int], key: Any) -> None:
    if key not in counts and len(counts) >= MAX_KINDS:
        key = (*key[:-1], "other") if isinstance(key, tuple) else "other"
    counts[key] = counts.get(key, 0) + 1


# Compiled (setup.py): client_login() runs once per login. ClosingEvents (runtime/worker.py) extends it.
@mypyc_attr(allow_interpreted_subclasses=True)
class Events:
    def __init__(self) -> None:
        self.servers_opened: dict[str, int] = {}  # database -> server logins completed
        self.servers_closed: dict[tuple[str, str], int] = {}  # (database, reason kind) -> closes
        self.tls: dict[tuple[str, str], int] = {}  # (side "client"/"server", "ok"/"failed") -> handshakes
        # client login time (connect to authenticated, seconds) as C integers, made into a Histogram when
        # read: a count above 256 in a list would be a new int per login, and the last ones, made during
        # a storm of logins, would each keep one of the storm's memory arenas resident (issue 11)
        self._login = array("q", bytes(8 * (len(BOUNDS) + 1)))
        self._login_total = array("d", (0.0,))

    @property
    def login(self) -> Histogram:
        h = Histogram()
        h.set_counts(list(self._login))
        h.total = self._login_total[0]
        return h

    def server_opened(self, server: Any) -> None:
        _bump(self.servers_opened, server.pool.database)
        transport = server.transport
        if transport is not None and transport.get_extra_info("ssl_object") is not None:
            _bump(self.tls, ("server", "ok"))

    def server_closed(self, server: Any, reason: str) -> None:
        _bump(self.servers_closed, (server.pool.database, reason_kind(reason)))

    def client_login(self, secs: float) -> None:
        """A client authenticated `secs` after it connected (negative: a clock step, counted as 0)."""
        secs = max(secs, 0.0)
        self._login[bucket(secs)] += 1
        self._login_total[0] += secs

    def tls_handshake(self, side: str, ok: bool) -> None:
        _bump(self.tls, (side, "ok" if ok else "failed"))
