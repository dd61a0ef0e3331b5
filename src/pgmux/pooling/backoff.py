"""How long a pool waits after a failed server login before it tries again (pure, no I/O).

PgBouncer waits server_login_retry (15 s) after any failure, so a pool heals at best 15 s after its
server came back from a restart, while its clients wait. pgmux tells three kinds of failure apart:

- the server is not listening (connection refused, or its Unix socket is gone): a connect attempt
  costs the server nothing, the kernel answers it. Retry soon: 0.5 s, 1 s, then every 2 s (never
  more often than server_login_retry allows when that is smaller).
- the server is there but cannot log us in yet or any more (SQLSTATE class 57P, "the database system
  is starting up / shutting down"; class 08, the connection dropped during login; a connect timeout):
  back off from 0.5 s, doubling up to server_login_retry.
- the server refused the login (a wrong password, a missing database or role, too many connections
  for a role...): retrying soon would not help and would fill its log. Wait server_login_retry.

The backoff counts failures of one kind in a row: a server that stops refusing connections and
answers "starting up" is on its way, and is asked again after 0.5 s. A success resets the count
(App.server_login_done).
"""

from __future__ import annotations

from typing import Final

FIRST: Final = 0.5  # the first retry after a failure that may heal by itself
PROBE_MAX: Final = 2.0  # retries of a server that refuses the TCP connection (or has no socket)

REFUSED: Final = "refused"  # nothing listening
TRANSIENT: Final = "transient"  # starting up, shutting down, dropped, timed out
REJECTED: Final = "rejected"  # the server answered the login with an error of its own


def kind_of(sqlstate: str, refused: bool = False) -> str:
    """Which kind of failure a login error is (see the module docstring)."""
    if refused:
        return REFUSED
    if sqlstate.startswith(("57P", "08")):
        return TRANSIENT
    return REJECTED


def retry_delay(kind: str, failures: int, server_login_retry: float) -> float:
    """Seconds to wait before the next attempt, after `failures` failures in a row (1 = the first)."""
    if server_login_retry <= 0:
        return 0.0
    if kind == REJECTED:
        return server_login_retry
    step = FIRST * 2.0 ** min(max(failures - 1, 0), 16)
    if kind == REFUSED:
        step = min(step, PROBE_MAX)
    return min(step, server_login_retry)
