"""systemd's readiness protocol (sd_notify), without libsystemd: one datagram per state change to the
Unix socket named by $NOTIFY_SOCKET (a path, or "@name" for the abstract namespace). Without that
variable (not started by systemd with Type=notify) it does nothing. Errors are ignored, as
sd_notify(3) lets a service ignore them: readiness reporting must never stop the pooler."""

from __future__ import annotations

import os
import socket
import time


def notify(state: str) -> bool:
    """Send `state` ("READY=1", "STOPPING=1", ...); True if a datagram went out."""
    addr = os.environ.get("NOTIFY_SOCKET", "")
    if not addr or addr[0] not in "/@":
        return False
    target = "\0" + addr[1:] if addr[0] == "@" else addr
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), target)
    except OSError:
        return False
    return True


def reloading() -> bool:
    """RELOADING=1 with the monotonic timestamp Type=notify-reload wants (as PgBouncer sends it)."""
    return notify(f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
