"""Handing idle clients to another pgmux process, between transactions, without their reconnecting.

The sender (`hand_over`, a retiring process) and the receiver (`start_adopting`, its successor) talk
over a Unix socket (net/fdpass.py). Per client, in lock-step on one connection:

  sender:   stops reading the client, checks it may move (session/handover.why_not), snapshots it
  sender -> receiver:  header + the client's socket (SCM_RIGHTS), then the snapshot
  receiver: restores it on a new ClientSession, joins its pool (admission counted), checks its cancel key
  receiver -> sender:  Y, or N + 2-byte length + reason (the sender keeps the client and reads it again)
  sender:   checks once more that nothing closed the client meanwhile, then in one step sends C (or A to
            abort) and forgets the client as if it had left, closing its copy of the socket without a
            shutdown (the connection lives on in the receiver)
  receiver: on C serves the socket (net/streams.adopt, net/protocols.ClientProtocol with the
            restored session); on A or end of file drops what it made and closes its copy

So exactly one process reads the client at any time, and what the client sent meanwhile waits in the
kernel's socket buffer for the receiver. A client's reads pause for one round of this exchange; the
sender waits ACK_WAIT at most for the receiver's answer, then keeps the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final

from pgmux.errors import PgmuxError
from pgmux.net import fdpass, streams
from pgmux.net.protocols import ClientProtocol
from pgmux.session.client_login import adopted
from pgmux.session.handover import MAX_SNAPSHOT, HandoverError, identify, load, restore, snapshot, why_not
from pgmux.session.states import ClientState

if TYPE_CHECKING:
    from pgmux.session.client import ClientSession

# The hub (runtime/app.App), typed loosely: the console imports this module (TAKEOVER, through
# runtime/reboot.py and retire.py), and the App imports the console.
App = Any

log = logging.getLogger("pgmux")

ACK_WAIT: Final = 5.0  # seconds the sender waits for the receiver's answer about one client
BODY_WAIT: Final = 10.0  # seconds the receiver waits for a snapshot once its header came
COMMIT_WAIT: Final = 10.0  # seconds the receiver waits for C or A after its Y
_YES, _NO, _COMMIT, _ABORT = b"Y", b"N", b"C", b"A"
_LEN = struct.Struct("!H")


# -- the receiving side ---------------------------------------------------------------------------------

class Adopting:
    """The Unix socket a pgmux process takes clients on (`start_adopting`)."""

    def __init__(self, app: App, sock: socket.socket, path: str) -> None:
        self.app, self.sock, self.path = app, sock, path
        self.adopted = 0  # clients taken on so far
        self._inode = os.stat(path).st_ino
        self._tasks: set[asyncio.Task[None]] = set()
        self._accepting = asyncio.get_running_loop().create_task(self._accept())

    def close(self) -> None:
        """Stop taking clients (those taken on stay). Connections in the middle of a client drop it."""
        self._accepting.cancel()
        for t in list(self._tasks):
            t.cancel()
        with contextlib.suppress(OSError):
            if os.stat(self.path).st_ino == self._inode:  # (not a successor's socket made since)
                os.unlink(self.path)
        self.sock.close()

    async def wait_closed(self) -> None:
        await asyncio.gather(self._accepting, *self._tasks, return_exceptions=True)

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(self.sock)
            except OSError as e:
                log.warning("hand-over socket %s: accept failed: %s", self.path, e)
                await asyncio.sleep(0.1)
                continue
            conn.setblocking(False)
            task = loop.create_task(self._serve(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _serve(self, conn: socket.socket) -> None:
        """One sender's connection: its clients, one after the other."""
        try:
            while True:
                got = await fdpass.recv_with_fd(conn, MAX_SNAPSHOT, BODY_WAIT)
                if got is None:
                    return
                if not await self._one(conn, *got):
                    return
        except (OSError, fdpass.FramingError, TimeoutError) as e:
            log.warning("hand-over connection on %s: %s", self.path, e)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - logged, that connection ends, pgmux goes on
            self.app.log_exception(f"hand-over connection on {self.path}", e)
        finally:
            conn.close()

    async def _one(self, conn: socket.socket, fd: int, blob: bytes) -> bool:
        """One client offered: taken on (Y, then C) or not (N + reason). False: the connection ends."""
        app = self.app
        try:  # our copy: closing it leaves the client's connection to the sender
            sock: socket.socket | None = socket.socket(fileno=fd)
        except OSError:
            os.close(fd)
            sock = None
        c, why = take_on(app, blob) if sock is not None and _is_stream(sock) else (None, "not a stream socket")
        if c is None or sock is None:
            if sock is not None:
                sock.close()
            log.info("hand-over: client not taken on: %s", why)
            reason = why.encode("utf-8", "replace")[:1000]
            await fdpass.send_all(conn, _NO + _LEN.pack(len(reason)) + reason)
            return True
        answer = b""
        try:
            await fdpass.send_all(conn, _YES)
            answer = await asyncio.wait_for(fdpass.recv_exact(conn, 1), COMMIT_WAIT)
        except (OSError, TimeoutError) as e:
            log.warning("%s hand-over: no commit from the sender: %s", c.prefix, e)
        finally:
            if answer != _COMMIT:
                forget(app, c)
                sock.close()
        if answer != _COMMIT:
            return answer == _ABORT
        await serve(app, c, sock)
        self.adopted += 1
        return True


def _is_stream(sock: socket.socket) -> bool:
    return sock.type == socket.SOCK_STREAM and sock.family in (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX)


async def start_adopting(app: App, path: str) -> Adopting:
    """Take clients handed over by another pgmux process on a Unix socket at `path` (mode 0600; keep it
    in a private directory). Close with `.close()` (and `await .wait_closed()`)."""
    return Adopting(app, fdpass.listen(path), path)


def take_on(app: App, blob: bytes) -> tuple[ClientSession | None, str]:
    """A client's snapshot restored on a new ClientSession of `app`, joined to its pool, counted and its
    cancel key taken (a cancel meanwhile finds no server: nothing to cancel yet), but not in app.clients
    until `serve`; or None and why not."""
    if app.shutting_down:
        return None, "shutting down"
    s = app.config.settings
    n = len(app.clients) + 1
    if n > s.max_client_conn or app.share is not None and app.share.clients_full(n, s.max_client_conn):
        return None, "no more connections allowed (max_client_conn)"
    try:
        snap = load(blob)
    except HandoverError as e:
        return None, str(e)
    if snap.cancel_pid in app.by_cancel:
        return None, "cancel key in use here"
    c = app.new_client()
    app.clients.pop(c.id, None)  # until it is served: no timeout or console meets it half made
    try:
        now = app.now()
        identify(c, snap, now)
        app._join_pool(c)  # noqa: SLF001 - counted as a login counts it; PgmuxError for a db gone, limits
        restore(c, snap, now)
        adopted(c)
        app.by_cancel[c.cancel_pid] = c
    except (HandoverError, PgmuxError) as e:
        forget(app, c)
        return None, e.message if isinstance(e, PgmuxError) else str(e)
    except Exception as e:  # noqa: BLE001 - never taken on half made
        app.log_exception(c.prefix, e)
        forget(app, c)
        return None, f"internal error: {type(e).__name__}"
    if snap.keys is not None:  # server logins of this user may need them (runtime/logins.py)
        app.scram_keys.setdefault(c.user, snap.keys)
    if snap.secret is not None and c.user not in app.config.userlist:
        app.auth_secrets.setdefault(c.user, snap.secret)
    return c, ""


async def serve(app: App, c: ClientSession, sock: socket.socket) -> None:
    """A client taken on (`take_on`): served on `sock` like an accepted connection."""
    app.clients[c.id] = c
    sock.setblocking(False)
    try:
        await streams.adopt(lambda: ClientProtocol(app, c), sock)
    except Exception as e:  # noqa: BLE001 - the client is lost (its socket closes); pgmux goes on
        app.log_exception(c.prefix, e)
        forget(app, c)
        sock.close()
        return
    c.suspend()  # (reads nothing while this process is SUSPENDed, as its other clients)


# -- the sending side ---------------------------------------------------------------------------------

def forget(app: App, c: ClientSession) -> None:
    """`c` leaves this process's books as a closing client leaves them (Handoff.client_closed), without
    a log line and without ending its connection: the transport is closed, never shut down or reset,
    so the socket lives on in the process that holds its other copy."""
    if c.state is not ClientState.CLOSED:
        c.move(ClientState.CLOSED)
    app.clients.pop(c.id, None)
    if app.by_cancel.get(c.cancel_pid) is c:
        del app.by_cancel[c.cancel_pid]
    app.admission.release(c)
    if c.route is not None:
        app.routing.forget(c)
    if c.stmts is not None:
        c.stmts.clear()
    if c.transport is not None:
        c.transport.close()
    app.after_change()


def refusal(app: App, c: ClientSession, moving: bool = False) -> str:
    """Why `c` stays in this process ("" when it may go): why_not(), and what only the hub knows."""
    why = why_not(c, moving)
    if not why and c.id in app.probing:
        why = "login"
    if not why and app.clients.get(c.id) is not c:
        why = "not a client of this process"
    return why


async def hand_over(app: App, path: str, clients: Iterable[ClientSession] | None = None,
                    ack_wait: float = ACK_WAIT) -> tuple[int, dict[str, int]]:
    """Hand every client of `app` that may move now (or those of `clients` that may) to the pgmux
    process taking clients on at `path`. Returns how many moved, and per reason how many stayed
    (a busy client stays, to be tried again on the next call)."""
    stayed: dict[str, int] = {}
    moved = 0
    conn: socket.socket | None = None
    try:
        for c in list(app.clients.values() if clients is None else clients):
            # (a client whose reading the caller stopped already: runtime/retire.py catches clients so)
            why = refusal(app, c, c.held)
            if not why and conn is None:
                try:
                    conn = await fdpass.connect(path, ack_wait)
                except (OSError, TimeoutError) as e:
                    why = f"no receiver: {type(e).__name__} {e}".rstrip()
                else:
                    why = refusal(app, c, c.held)  # (the connect awaited: check again)
            if not why:
                assert conn is not None
                why = await _move(app, conn, c, path, ack_wait)
                if why.startswith("hand-over failed"):
                    conn.close()
                    conn = None
            if why:
                stayed[why] = stayed.get(why, 0) + 1
            else:
                moved += 1
    finally:
        if conn is not None:
            conn.close()
    return moved, stayed


async def _move(app: App, conn: socket.socket, c: ClientSession, path: str, ack_wait: float) -> str:
    """One client, reading paused for the time it takes: "" once moved, else why it stays (and is read
    again). A reason starting "hand-over failed" means the connection to the receiver is unusable."""
    c.held = True  # reading stops (ClientSession._reading, through suspend())
    c.suspend()
    try:
        why = refusal(app, c, moving=True)
        if why:
            return why
        try:
            blob = snapshot(c, app.now(), app.scram_keys.get(c.user), app.auth_secrets.get(c.user))
        except HandoverError as e:
            return str(e)
        sock: Any = c.transport.get_extra_info("socket")
        try:
            await fdpass.send_with_fd(conn, sock.fileno(), blob)
            answer = await asyncio.wait_for(fdpass.recv_exact(conn, 1), ack_wait)
            if answer == _NO:
                (n,) = _LEN.unpack(await asyncio.wait_for(fdpass.recv_exact(conn, 2), ack_wait))
                reason = await asyncio.wait_for(fdpass.recv_exact(conn, n), ack_wait)
                return f"refused: {reason.decode('utf-8', 'replace')}"
            if answer != _YES:
                return f"hand-over failed: unexpected answer {answer!r}"
        except (OSError, TimeoutError) as e:  # the receiver drops the client at end of file
            return f"hand-over failed: {type(e).__name__} {e}".rstrip()
        # From here to forget(): no await, so nothing of this process touches the client in between.
        last = refusal(app, c, moving=True)
        try:
            conn.send(_ABORT if last else _COMMIT)
        except OSError as e:  # (one byte, in lock-step: the buffer is never full)
            return f"hand-over failed: {e}"
        if last:
            return last
        log.info("%s handed over to %s", c.prefix, path)
        forget(app, c)
        return ""
    except Exception as e:  # noqa: BLE001 - logged with the client; the client stays
        app.log_exception(c.prefix, e)
        return f"hand-over failed: internal error {type(e).__name__}"
    finally:
        if c.state is not ClientState.CLOSED:
            c.held = False
            c.suspend()
