"""Connection states. The values are the words SHOW CLIENTS / SHOW SERVERS and the logs print."""

from __future__ import annotations

import enum
from typing import Final


class ClientState(enum.Enum):
    STARTUP = "startup"  # waiting for the startup packet
    AUTH = "auth"  # authenticating
    LOGIN_WAIT = "login_wait"  # authenticated, waiting for the pool's first server to learn its parameters
    IDLE = "idle"  # logged in, no query pending
    WAITING = "waiting"  # a query is queued for a server
    ACTIVE = "active"  # linked to a server
    REPLICATION = "replication"  # a replication connection: its own server, bytes relayed as they come
    CLOSED = "closed"

    # Members are singletons: identity hashing is correct, and unlike Enum's own __hash__ (Python
    # code) it costs no function call on the per-message path.
    __hash__ = object.__hash__

    @property
    def show(self) -> str:
        """PgBouncer's words: logged-in clients are 'active' whether linked or not."""
        return _CLIENT_SHOW[self]


_CLIENT_SHOW = {
    ClientState.STARTUP: "login", ClientState.AUTH: "login", ClientState.LOGIN_WAIT: "waiting",
    ClientState.IDLE: "active", ClientState.WAITING: "waiting", ClientState.ACTIVE: "active",
    ClientState.REPLICATION: "active", ClientState.CLOSED: "closed",
}


# Reading a member off an Enum class (ClientState.IDLE) goes through EnumType.__getattr__ in Python
# 3.11, four times the cost of a plain class attribute; the per-transaction path uses these module
# constants (the same members) instead.
# The members the per-transaction code compares with. Final: compiled (setup.py), the sessions read them
# as C globals, not from this module's dict.
C_IDLE: Final = ClientState.IDLE
C_WAITING: Final = ClientState.WAITING
C_ACTIVE: Final = ClientState.ACTIVE
C_LOGIN_WAIT: Final = ClientState.LOGIN_WAIT


_C = ClientState
# A client's legal moves (ClientSession.move checks every change against this table):
#   startup -> auth -> login_wait -> idle <-> waiting -> active -> idle; login_wait -> replication;
#   idle -> active when a server is free at once; waiting -> idle when a split database's host is
#   lost and its clients are routed again (runtime/routing.py), waiting -> waiting when a client parked
#   for a usable host is queued in a pool; any state but closed -> closed.
CLIENT_MOVES: Final[dict[ClientState, frozenset[ClientState]]] = {
    _C.STARTUP: frozenset({_C.AUTH, _C.CLOSED}),
    _C.AUTH: frozenset({_C.LOGIN_WAIT, _C.CLOSED}),
    _C.LOGIN_WAIT: frozenset({_C.IDLE, _C.REPLICATION, _C.CLOSED}),
    _C.IDLE: frozenset({_C.WAITING, _C.ACTIVE, _C.CLOSED}),
    _C.WAITING: frozenset({_C.ACTIVE, _C.IDLE, _C.WAITING, _C.CLOSED}),
    _C.ACTIVE: frozenset({_C.IDLE, _C.CLOSED}),
    _C.REPLICATION: frozenset({_C.CLOSED}),
    _C.CLOSED: frozenset(),
}


class ServerState(enum.Enum):
    LOGIN = "login"  # connecting and authenticating
    IDLE = "idle"  # in the pool, clean
    ACTIVE = "active"  # linked to a client
    TESTED = "tested"  # running server_reset_query, server_check_query or a parameter sync
    CLOSED = "closed"

    __hash__ = object.__hash__

    @property
    def show(self) -> str:
        return self.value


S_LOGIN: Final = ServerState.LOGIN
S_IDLE: Final = ServerState.IDLE
S_ACTIVE: Final = ServerState.ACTIVE

# Legal moves, checked on every change so that a wrong move fails loudly in tests instead of leaking.
SERVER_MOVES: Final[dict[ServerState, frozenset[ServerState]]] = {
    ServerState.LOGIN: frozenset({ServerState.IDLE, ServerState.ACTIVE, ServerState.CLOSED}),
    ServerState.IDLE: frozenset({ServerState.ACTIVE, ServerState.TESTED, ServerState.CLOSED}),
    ServerState.ACTIVE: frozenset({ServerState.IDLE, ServerState.TESTED, ServerState.ACTIVE, ServerState.CLOSED}),
    ServerState.TESTED: frozenset({ServerState.IDLE, ServerState.ACTIVE, ServerState.CLOSED}),
    ServerState.CLOSED: frozenset({ServerState.CLOSED}),
}


class IllegalTransition(Exception):
    """A state change the tables above do not allow: a bug in pgmux, logged as an internal error.
    (An Exception, not a RuntimeError: mypyc compiles subclasses of Exception only.)"""
