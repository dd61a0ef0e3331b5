"""The admin console of one worker process among several (issue 14, item 4 in part).

A console connection lands on one worker. What acts on the whole pooler goes through the supervisor,
whose signals reach every worker (runtime/supervisor.py): RELOAD (HUP), PAUSE and RESUME without a
database (USR1, USR2; PAUSE also waits for this worker's servers, as in one process), SHUTDOWN (QUIT,
or INT for WAIT_FOR_SERVERS, TERM for WAIT_FOR_CLIENTS). KILL_CLIENT acts on this worker's client ids,
the ones its SHOW CLIENTS lists. The commands that would act on this worker only (SET, DISABLE, ENABLE,
KILL, RECONNECT, WAIT_CLOSE, BAN, UNBAN, PAUSE/RESUME of one database) are refused with 0A000 naming
what to do instead.

SHOW POOLS, STATS, STATS_TOTALS, STATS_AVERAGES, LISTS (summed) and CLIENTS, SERVERS, SOCKETS,
ACTIVE_SOCKETS (every worker's rows, a `worker` column last) sent as a simple query ask every other worker's
console over its private Unix socket (as pgmux's own OS user, application_name PEER_APP: those answer
for themselves only) and answer once all have (admin/merge.py); a worker that does not answer within
PEER_TIMEOUT is named in a NOTICE. Other SHOWs, and SHOWs over the extended protocol, answer with this
worker's rows after a NOTICE that says so.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from typing import Any, Final

from pgmux.admin import render
from pgmux.admin.commands import AdminCommand, admin_command
from pgmux.admin.merge import CONNECTION_SUBJECTS, SUMMED_SUBJECTS, merge
from pgmux.errors import PgmuxError
from pgmux.net.probe import Probe
from pgmux.protocol import messages as m
from pgmux.runtime.admin_service import AdminService
from pgmux.runtime.workershare import PRIVATE_PORT, private_dir
from pgmux.session.states import ClientState

log = logging.getLogger("pgmux")

PEER_APP: Final = "pgmux worker console"
PEER_TIMEOUT: Final = 5.0
ONE_WORKER_ONLY: Final = frozenset({"SET", "DISABLE", "ENABLE", "KILL", "RECONNECT", "WAIT_CLOSE", "BAN", "UNBAN"})


class WorkerAdmin(AdminService):
    """AdminService for a worker: app.admin's class is set to this once the app started."""

    def message(self, c: Any, mtype: int, body: bytes) -> None:
        if mtype == ord("Q") and c.startup.get("application_name") != PEER_APP:
            sql = body.rstrip(b"\x00").decode(errors="replace")
            try:
                cmd = admin_command(sql, is_admin=c.admin_level == "admin")
            except PgmuxError:
                cmd = None
            if cmd is not None and cmd.verb == "SHOW" and (cmd.arg in SUMMED_SUBJECTS or cmd.arg in CONNECTION_SUBJECTS):
                self.stats.query_count += 1
                self.stats.xact_count += 1
                log.info("%s admin command: %s (every worker)", c.prefix, cmd.query or "SHOW")
                local = AdminService.execute(self, c, cmd) or b""
                self.app.spawn(self._merged, c, sql, cmd.arg, local)
                return
        super().message(c, mtype, body)

    async def _merged(self, c: Any, sql: str, subject: str, local: bytes) -> None:
        share = self.app.share
        others = [i for i in range(share.workers) if i != share.index]
        answers = await asyncio.gather(*(self._ask(i, sql) for i in others), return_exceptions=True)
        replies = [(share.index, local)]
        notes = b""
        for i, answer in zip(others, answers):
            if isinstance(answer, BaseException):
                notes += m.notice_response(f"worker {i} did not answer ({type(answer).__name__}: {answer}); "
                                           "its rows are missing", severity="WARNING", sqlstate="01000")
            else:
                replies.append((i, answer))
        if c.state is ClientState.CLOSED:
            return
        c.transport.write(notes + merge(subject, replies) + m.ready_for_query(b"I"))

    async def _ask(self, index: int, sql: str) -> bytes:
        share = self.app.share
        probe = await asyncio.wait_for(Probe.open(private_dir(share.rundir, index), PRIVATE_PORT, "pgmux", None,
                                                  "pgbouncer", "", application_name=PEER_APP), PEER_TIMEOUT)
        try:
            return await asyncio.wait_for(probe.query_reply(sql), PEER_TIMEOUT)
        finally:
            probe.close()

    def execute(self, c: Any, cmd: AdminCommand) -> bytes | None:
        share = self.app.share
        v = cmd.verb
        where = f"pgmux runs {share.workers} worker processes and this console is on worker {share.index}"
        if v == "SHOW":
            out = super().execute(c, cmd)
            if c.startup.get("application_name") == PEER_APP:
                return out
            note = m.notice_response(f"{where} (pid {os.getpid()}): these rows are this worker's only")
            return note + out if out is not None else note
        if v in ONE_WORKER_ONLY or v in ("PAUSE", "RESUME") and cmd.arg is not None:
            return render.render_error(PgmuxError(
                f"{cmd.query or v}: {where}, and this command would act on that worker only, which pgmux "
                "refuses", sqlstate="0A000",
                hint="change the configuration file and RELOAD (or SIGHUP to the supervisor); PAUSE, RESUME, "
                     "RELOAD and SHUTDOWN without a database act on every worker"))
        sig = None
        if v == "RELOAD":
            sig = signal.SIGHUP
        elif v == "PAUSE":
            sig = signal.SIGUSR1
        elif v == "RESUME":
            sig = signal.SIGUSR2
        elif v == "SHUTDOWN":
            sig = {None: signal.SIGQUIT, "WAIT_FOR_SERVERS": signal.SIGINT}.get(cmd.arg, signal.SIGTERM)
        if sig is not None:
            log.info("%s admin command %s: asking the supervisor (pid %d) to pass %s to every worker", c.prefix,
                     v, share.supervisor, sig.name)
            try:
                os.kill(share.supervisor, sig)
            except OSError as e:
                return render.render_error(PgmuxError(f"{v} failed: cannot signal the supervisor: {e}",
                                                      sqlstate="F0000"))
            if v == "SHUTDOWN":
                return None if cmd.arg is None else render.render_ok("SHUTDOWN")
        return super().execute(c, cmd)
