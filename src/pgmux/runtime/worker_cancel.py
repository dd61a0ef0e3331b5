"""Cancels across worker processes (issue 14 item 3): the low bits of every BackendKeyData pid name the
row of the worker that handed it out (workershare.tag_pid); a CancelRequest that lands on another worker
is passed on to that worker's private Unix socket, where it arrives as any CancelRequest does."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from pgmux.net import connector
from pgmux.runtime import workershare as ws

if TYPE_CHECKING:
    from pgmux.runtime.app import App
    from pgmux.session.client import ClientSession

log = logging.getLogger("pgmux")
cancel_path = ws.private_socket
WorkerShare = Any  # runtime/worker.WorkerShare (which imports this module)


def forward_cancel(share: WorkerShare, app: App, requester: ClientSession, pid: int, key: int) -> bool:
    """A CancelRequest whose key no client of this worker has: pass it on (True), or False when no
    other worker can have it. The key's tag names the worker that handed it out; a client handed over
    in a rolling restart keeps its key and is on that worker's sibling row (workershare.sibling).
    One hop only from the private socket (a request another worker passed on): to the sibling, when
    the tag is this worker's own; otherwise nowhere, so no request travels in a circle."""
    target = ws.owner(pid, share.bits)
    if target >= share.rows:
        return False
    sibling = ws.sibling(target, share.workers)
    if _passed_on(share, requester):
        targets = [sibling] if target == share.index else []
    else:
        targets = [target, sibling] if target != share.index else [sibling]
    targets = [t for t in targets if t != share.index]
    if not targets:
        return False
    app.spawn(_forward, share, app, requester, targets, pid, key)
    return True


def _passed_on(share: WorkerShare, requester: ClientSession) -> bool:
    """Did this CancelRequest come in on this worker's private socket (from another worker)?"""
    if not requester.is_unix or requester.transport is None:
        return False
    return requester.transport.get_extra_info("sockname") == cancel_path(share.rundir, share.index)


async def _forward(share: WorkerShare, app: App, requester: ClientSession, targets: list[int], pid: int,
                   key: int) -> None:
    wait = app.config.settings.cancel_wait_timeout
    try:  # the other worker closes the connection once its cancel reached PostgreSQL, as a server does
        for i, target in enumerate(targets):
            log.info("passing a cancel request on to worker %d", target)
            try:
                await connector.send_cancel(None, 0, cancel_path(share.rundir, target), pid, key, wait)
                return
            except TimeoutError:
                log.warning("cancel request to worker %d failed: not sent within cancel_wait_timeout (%gs)",
                            target, wait)
                return
            except OSError as e:  # gone (its slot was replaced): its sibling next
                if i == len(targets) - 1:
                    log.warning("cancel request to worker %d failed: %s", target, e)
    finally:
        requester.transport.close()
