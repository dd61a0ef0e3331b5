"""Where one transaction of a read/write-split database goes: the primary or a replica, then which host.

Pure: the runtime hands in the messages a client has queued when it asks for a server, the time and
per-host facts (work in flight, replay positions); this decides. One Router per logical database.

The rule for a transaction (transaction and statement pooling route each transaction on its own):
- Every statement queued when the client asks for a server is classified: Query texts, Parse texts,
  and for a Bind the text of the statement it names (its Parse, or the client's prepared statement;
  a name the router cannot resolve counts as a write). FunctionCall is a write.
- Any statement the classifier sends to the primary (writes, DDL, locking reads, volatile functions,
  hints, anything ambiguous) makes the whole transaction a write.
- A transaction opened (BEGIN / START TRANSACTION) without READ ONLY and not closed within the queued
  messages is a write: its later statements are not known yet, and a write after reads on a replica
  would fail there. So the one honest shortcut is for what is visible at once: an autocommit read,
  `BEGIN; SELECT ...; COMMIT` sent as one string, and `BEGIN READ ONLY` (or `SET TRANSACTION READ
  ONLY` right after the BEGIN) go to a replica.
- The rest (reads, SHOW, SET, empty queries) are reads.
Messages that arrive after the server is assigned stay on it until the transaction ends: a write a
client pipelines behind a read on a replica is refused there by PostgreSQL (25006), never misplaced.

Reads go to a usable replica chosen by the balancer (health.choose: up, not banned, not lagging), or
the primary when none is; with read-your-writes, only to replicas whose last polled replay position
has reached the client's last commit, else the primary.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

from pgmux.protocol.scans import ANY_LENGTH, message_end
from pgmux.routing.balancer import make_policy
from pgmux.routing.classify import Classifier, Verdict
from pgmux.routing.health import HostState, choose

__all__ = ["Kind", "Router", "transaction_kind"]

Kind = Literal["read", "write"]
_Q, _P, _B, _F = (ord(c) for c in "QPBF")


def _cstr(data: bytes, start: int, end: int) -> tuple[str, int]:
    """The NUL-terminated string at `start`, and where the next field begins."""
    stop = data.find(b"\x00", start, end)
    if stop < 0:
        stop = end
    return data[start:stop].decode("utf-8", "replace"), stop + 1


def transaction_kind(classifier: Classifier, data: bytes, statement_text: Callable[[str], str | None],
                     ) -> tuple[Kind, str]:
    """(kind, reason) for the complete protocol messages in `data`, the start of a transaction.

    `statement_text(name)` returns the query text of the client's prepared statement `name` (the
    unnamed one for ""), or None when it is unknown."""
    parsed: dict[str, str] = {}
    verdicts: list[Verdict] = []
    n = len(data)
    pos = 0
    while n - pos >= 5:
        t = data[pos]
        try:
            end = message_end(data, pos, ANY_LENGTH)
        except ValueError:
            break
        if end > n:
            break
        if t == _Q:
            verdicts.append(classifier.classify(_cstr(data, pos + 5, end)[0]))
        elif t == _P:
            name, at = _cstr(data, pos + 5, end)
            text = _cstr(data, at, end)[0]
            parsed[name] = text
            verdicts.append(classifier.classify(text))
        elif t == _B:
            _, at = _cstr(data, pos + 5, end)
            name = _cstr(data, at, end)[0]
            known = parsed.get(name)
            if known is None:
                known = statement_text(name)
            if known is None:
                return "write", f"unknown prepared statement {name!r}"
            verdicts.append(classifier.classify(known))
        elif t == _F:
            return "write", "function call"
        pos = end
    return decide(verdicts)


def decide(verdicts: Iterable[Verdict]) -> tuple[Kind, str]:
    """The transaction rule over the verdicts of its first statements, in order."""
    open_tx = read_only = False
    reason = "read"
    for v in verdicts:
        if v.target == "primary":
            return "write", v.reason
        if v.begins_tx and v.ends_tx:
            # One string that both ends and begins: "BEGIN; ...; COMMIT" (opened and closed at once,
            # its statements already checked), or COMMIT AND CHAIN inside an open transaction.
            if open_tx:
                read_only = v.read_only_tx
        elif v.begins_tx:
            open_tx, read_only = True, v.read_only_tx
        elif v.ends_tx:
            open_tx = read_only = False
        elif v.read_only_tx and open_tx:  # SET TRANSACTION READ ONLY
            read_only = True
        if v.target == "replica":
            reason = v.reason
    if open_tx and not read_only:
        return "write", "transaction not declared read only"
    return "read", "read only transaction" if open_tx else reason


class Router:
    """The hosts of one logical database, their balancer and their counters."""

    def __init__(self, name: str, hosts: Sequence[HostState[Any]], policy: str = "least_outstanding", *,
                 read_your_writes: bool = False, classifier: Classifier | None = None,
                 rng: random.Random | None = None) -> None:
        self.name = name
        self.hosts = list(hosts)
        self.policy = make_policy(policy)
        self.read_your_writes = read_your_writes
        self.classifier = classifier if classifier is not None else Classifier()
        self.rng = rng if rng is not None else random.Random()
        self.weights = {h: float(getattr(h.host, "weight", 1.0)) for h in self.hosts}
        self.reads: dict[HostState[Any], int] = dict.fromkeys(self.hosts, 0)
        self.writes: dict[HostState[Any], int] = dict.fromkeys(self.hosts, 0)

    def pick(self, kind: Kind, now: float, outstanding: Mapping[HostState[Any], int] | None = None,
             min_lsn: int = 0, lsns: Mapping[HostState[Any], int] | None = None,
             count: bool = True) -> HostState[Any] | None:
        """The host for a transaction of `kind`, counted; None when no host can take it (no usable
        primary for a write; nothing usable at all for a read). `min_lsn` (read-your-writes): a
        replica qualifies only if `lsns` says it has replayed that far."""
        if kind == "write":
            candidates = choose(self.hosts, "write", now)
        else:
            candidates = choose(self.hosts, "read", now)
            if min_lsn and lsns is not None:
                candidates = [h for h in candidates if h.role == "primary" or lsns.get(h, -1) >= min_lsn]
                if not candidates:
                    candidates = choose(self.hosts, "write", now)
        if not candidates:
            return None
        host: HostState[Any] | None = candidates[0]
        if len(candidates) > 1:
            host = self.policy(candidates, outstanding or {}, self.weights, self.rng)
        if host is None:  # pragma: no cover - policies return a candidate when given any
            return None
        if count:
            (self.writes if kind == "write" else self.reads)[host] += 1
        return host

    def find(self, host: str, port: int) -> HostState[Any] | None:
        """The host named `host:port` (BAN/UNBAN), or None."""
        for h in self.hosts:
            if (h.host.host or "unix") == host and h.host.port == port:
                return h
        return None
