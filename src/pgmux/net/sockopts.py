"""Socket options from the [pgbouncer] settings, as PgBouncer's tune_socket() and listener set them.

Every TCP connection, to a client or to a server, gets SO_KEEPALIVE (tcp_keepalive), then, when set,
TCP_KEEPCNT, TCP_KEEPIDLE, TCP_KEEPINTVL (only with keepalive on, as in PgBouncer), TCP_USER_TIMEOUT
and SO_SNDBUF/SO_RCVBUF (tcp_socket_buffer). Unix sockets get none of them. The settings are read
at each new connection, so a reload applies to the connections made after it.
"""

from __future__ import annotations

import logging
import socket
import sys
from typing import Any

log = logging.getLogger("pgmux")

_warned: set[str] = set()


def tcp_options(s: Any) -> list[tuple[int, int, int]]:
    """(level, option, value) for one TCP socket, from settings `s`. Pure: unit-tested."""
    opts = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1 if s.tcp_keepalive else 0)]
    if s.tcp_keepalive:
        for name, value in (("TCP_KEEPCNT", s.tcp_keepcnt), ("TCP_KEEPIDLE", s.tcp_keepidle),
                            ("TCP_KEEPINTVL", s.tcp_keepintvl)):
            if value:
                opts.append((socket.IPPROTO_TCP, getattr(socket, name), value))
    if s.tcp_user_timeout:
        opts.append((socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, s.tcp_user_timeout))
    if s.tcp_socket_buffer:
        opts.append((socket.SOL_SOCKET, socket.SO_SNDBUF, s.tcp_socket_buffer))
        opts.append((socket.SOL_SOCKET, socket.SO_RCVBUF, s.tcp_socket_buffer))
    return opts


_last: tuple[Any, list[tuple[int, int, int]]] = (None, [])


def tune_tcp(sock: Any, s: Any) -> None:
    """Apply tcp_options() to a connected TCP socket. A refused option is logged once per kind (PgBouncer
    logs each failure); the connection goes on with the kernel's default for it."""
    global _last
    if _last[0] is not s:  # the settings object changes only on reload: work the list out once per load
        _last = (s, tcp_options(s))
    for level, opt, value in _last[1]:
        try:
            sock.setsockopt(level, opt, value)
        except OSError as e:
            key = f"{level}/{opt}"
            if key not in _warned:
                _warned.add(key)
                log.warning("setsockopt(%d, %d, %d) failed: %s", level, opt, value, e)


# The settings whose tcp_options() every listening TCP socket has: Linux gives a socket accept()
# returns the options of its listener (keepalive and its timings, TCP_USER_TIMEOUT, the buffer sizes),
# so client connections need no setsockopt of their own while these settings hold (`inherited`). Each
# such call would cost more than the call: uvloop makes and keeps a socket object per transport for
# get_extra_info("socket"), 72 bytes per idle client (issue 11).
_listened: Any = None


def inherited(s: Any) -> bool:
    """Whether a client connection accepted now has the tcp_options() of settings `s` already."""
    return s is _listened and sys.platform.startswith("linux")


def tune_listener(sock: Any, s: Any) -> None:
    """tcp_defer_accept on a listening TCP socket: accept() only once the client has sent something
    (PgBouncer hard-codes 45 seconds for it); and the options of tcp_options(), for the sockets it
    accepts to inherit (`inherited`)."""
    global _listened
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    try:
        for level, opt, value in tcp_options(s):
            sock.setsockopt(level, opt, value)
        _listened = s
    except OSError:
        _listened = None  # each connection applies them, and logs what fails
    defer = getattr(socket, "TCP_DEFER_ACCEPT", None)
    if defer is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, defer, 45 if s.tcp_defer_accept else 0)
    except OSError as e:
        log.warning("setsockopt(TCP_DEFER_ACCEPT) failed: %s", e)
