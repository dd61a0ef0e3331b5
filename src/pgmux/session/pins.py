"""What keeps a client on its server (issue 3): state that lives in that server's session and nowhere
else. LISTEN, temporary tables, session advisory locks, cursors WITH HOLD and LOAD pin a client in
transaction pooling (`pin`, once the server confirmed them: session/tracking.py decides when); with
pin_mode = refuse the statement is refused instead (`pin_refused`). A client that never pinned has
no Pins object (`client.pins` stays None).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pgmux.errors import PgmuxError
from pgmux.session.statements import (
    AdvisoryLock,
    AdvisoryUnlock,
    CloseCursor,
    CreateTemp,
    DeclareHold,
    DiscardAll,
    DiscardTemp,
    DropTemp,
    Effect,
    Listen,
    Load,
    Unlisten,
    pin_reason,
)

if TYPE_CHECKING:
    from pgmux.session.client import ClientSession

PINNING = (Listen, CreateTemp, AdvisoryLock, DeclareHold, Load)  # what pins (its undoing does not)

_REFUSED_WHAT = {"listen": "LISTEN", "temp table": "a temporary table", "advisory lock": "a session-level "
                 "advisory lock", "with hold cursor": "a cursor WITH HOLD", "load": "LOAD"}


def pin_refused(c: ClientSession, done: tuple[Effect, ...]) -> PgmuxError | None:
    """pin_mode = refuse: the error for a statement that would pin its client, else None."""
    for e in done:
        if isinstance(e, PINNING):
            why = pin_reason(e) or "session state"
            return PgmuxError(
                f"{_REFUSED_WHAT.get(why, why)} would pin this client to one server connection, and "
                f"database \"{c.database}\" refuses that in {c.logged_in_pool().mode} pooling "
                "(pgmux pin_mode = refuse)",
                sqlstate="0A000",
                hint="use session pooling for this client, or set pin_mode = pin for the database "
                     "(pgmux_pin_mode=pin on its pgbouncer.ini line)")
    return None



class Pins:
    """What keeps a client on its server: state that lives in that server's session and nowhere else."""

    __slots__ = ("listen", "temp", "cursors", "locks", "load")

    def __init__(self) -> None:
        self.listen: set[str] = set()
        self.temp: set[str] = set()
        self.cursors: set[str] = set()
        self.locks = 0
        self.load = False

    def reason(self) -> str:
        """The words SHOW CLIENTS prints in `pin` ("" when nothing pins)."""
        parts = [word for word, on in (("listen", self.listen), ("temp table", self.temp),
                                       ("advisory lock", self.locks > 0), ("with hold cursor", self.cursors),
                                       ("load", self.load)) if on]
        return ", ".join(parts)


def pin(c: ClientSession, e: Effect) -> None:
    """Record what a successful statement did to the state that pins; update `client.pinned`."""
    p = c.pins
    if p is None:
        p = c.pins = Pins()
    if isinstance(e, Listen):
        p.listen.add(e.channel)
    elif isinstance(e, Unlisten):
        if e.channel is None:
            p.listen.clear()
        else:
            p.listen.discard(e.channel)
    elif isinstance(e, CreateTemp):
        p.temp.add(e.name)
    elif isinstance(e, DiscardTemp):
        p.temp.clear()
    elif isinstance(e, DropTemp):
        p.temp.difference_update(e.names)
    elif isinstance(e, AdvisoryLock):
        p.locks += 1
    elif isinstance(e, AdvisoryUnlock):
        p.locks = 0 if e.all else max(p.locks - 1, 0)
    elif isinstance(e, DeclareHold):
        p.cursors.add(e.cursor)
    elif isinstance(e, CloseCursor):
        if e.name is None:
            p.cursors.clear()
        else:
            p.cursors.discard(e.name)
    elif isinstance(e, Load):
        p.load = True
    elif isinstance(e, DiscardAll):  # UNLISTEN *, DISCARD TEMP, CLOSE ALL, pg_advisory_unlock_all
        p.listen.clear()
        p.temp.clear()
        p.cursors.clear()
        p.locks = 0
    was = c.pinned
    c.pinned = p.reason()
    if c.pinned and not was and c.pool is not None:
        c.pool.stats.pin_count += 1
