"""The admin console of one worker process among several (issue 14, item 4).

A console connection lands on one worker. RELOAD and SHUTDOWN go through the supervisor, whose signals
reach every worker (runtime/supervisor.py; RELOAD also renews the supervisor's configuration, which the
workers it starts later get): HUP, and QUIT, INT (WAIT_FOR_SERVERS) or TERM (WAIT_FOR_CLIENTS).
SET, DISABLE, ENABLE, KILL, RECONNECT, WAIT_CLOSE, BAN, UNBAN, PAUSE, RESUME and SUSPEND are sent as they are to
every worker's console, this one's too, over the private Unix sockets (as pgmux's own OS user, with
application_name PEER_APP: such a console acts for its own worker only), and answered once all have: the
reply of one, with a WARNING for each worker that failed, or the error when all failed alike. PAUSE,
WAIT_CLOSE and SUSPEND answer when every worker is done. KILL_CLIENT takes this worker's client ids (SHOW CLIENTS'
`worker` column says which). A SET lasts until the next RELOAD, as in PgBouncer, in the workers running
now: a worker restarted after a crash starts from the configuration file.

SHOW POOLS, STATS, STATS_TOTALS, STATS_AVERAGES, LISTS (summed), DATABASES, USERS, MEM, STATE, TOTALS (one
row per name, counts combined) and CLIENTS, SERVERS, SOCKETS, ACTIVE_SOCKETS (every worker's rows, a `worker`
column last) ask every other worker's console the same way and merge the replies (admin/merge.py); a worker
that does not answer within PEER_TIMEOUT is named in a WARNING. Other SHOWs answer with this worker's rows
after a NOTICE that says so. All this needs the simple query protocol (psql, the exporters): over the
extended one, SHOW is this worker's and the commands above are refused (0A000).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from typing import Any, Final

from pgmux.admin import render
from pgmux.admin.commands import AdminCommand, admin_command
from pgmux.admin.merge import CONNECTION_SUBJECTS, KEYED_SUBJECTS, SUMMED_SUBJECTS, merge
from pgmux.errors import PgmuxError
from pgmux.net.probe import Probe
from pgmux.protocol import messages as m
from pgmux.runtime.admin_service import AdminService
from pgmux.runtime.workershare import PRIVATE_PORT, private_dir
from pgmux.session.states import ClientState

log = logging.getLogger("pgmux")

PEER_APP: Final = "pgmux worker console"
PEER_TIMEOUT: Final = 5.0
# Sent as they are to every worker's console (this one's too, over its own private socket), answered once
# all have: PAUSE and WAIT_CLOSE when every worker is done, as PgBouncer's answer when its servers are.
EVERY_WORKER: Final = frozenset({"SET", "DISABLE", "ENABLE", "KILL", "RECONNECT", "WAIT_CLOSE", "BAN", "UNBAN",
                                 "PAUSE", "RESUME", "SUSPEND"})
# No time bound of the console's: PAUSE and WAIT_CLOSE wait for transactions to end, SUSPEND for the socket
# buffers to be written out (bounded by suspend_timeout).
WAITING: Final = frozenset({"PAUSE", "WAIT_CLOSE", "SUSPEND"})
COMMAND_TIMEOUT: Final = 30.0


class WorkerAdmin(AdminService):
    """AdminService for a worker: app.admin's class is set to this once the app started."""

    def message(self, c: Any, mtype: int, body: bytes) -> None:
        if mtype == ord("Q") and c.startup.get("application_name") != PEER_APP:
            sql = body.rstrip(b"\x00").decode(errors="replace")
            try:
                cmd = admin_command(sql, is_admin=c.admin_level == "admin")
            except PgmuxError:
                cmd = None
            if cmd is not None and cmd.verb in EVERY_WORKER:
                self.stats.query_count += 1
                self.stats.xact_count += 1
                log.info("%s admin command: %s (every worker)", c.prefix, cmd.query or cmd.verb)
                self.app.spawn(self._everywhere, c, sql, cmd)
                return
            merged = cmd is not None and (cmd.arg in SUMMED_SUBJECTS or cmd.arg in CONNECTION_SUBJECTS
                                          or cmd.arg in KEYED_SUBJECTS)
            if cmd is not None and cmd.verb == "SHOW" and merged:
                self.stats.query_count += 1
                self.stats.xact_count += 1
                log.info("%s admin command: %s (every worker)", c.prefix, cmd.query or "SHOW")
                local = AdminService.execute(self, c, cmd) or b""
                self.app.spawn(self._merged, c, sql, cmd.arg, local)
                return
        super().message(c, mtype, body)

    async def _merged(self, c: Any, sql: str, subject: str, local: bytes) -> None:
        share = self.app.share
        others = [i for i in share.live() if i != share.index]
        answers = await asyncio.gather(*(self._ask(i, sql) for i in others), return_exceptions=True)
        replies = [(share.index, local)]
        notes = b""
        for i, answer in zip(others, answers, strict=True):
            if isinstance(answer, BaseException):
                notes += m.notice_response(f"worker {i} did not answer ({type(answer).__name__}: {answer}); "
                                           "its rows are missing", severity="WARNING", sqlstate="01000")
            else:
                replies.append((i, answer))
        if c.state is ClientState.CLOSED:
            return
        c.transport.write(notes + merge(subject, replies) + m.ready_for_query(b"I"))

    async def _everywhere(self, c: Any, sql: str, cmd: AdminCommand) -> None:
        share = self.app.share
        wait = None if cmd.verb in WAITING else COMMAND_TIMEOUT
        rows = share.live()
        answers = await asyncio.gather(*(self._ask(i, sql, wait) for i in rows), return_exceptions=True)
        failed = [(i, a) for i, a in zip(rows, answers, strict=True) if isinstance(a, BaseException)]
        done = [a for a in answers if not isinstance(a, BaseException)]
        if c.state is ClientState.CLOSED:
            return
        if not done:  # the same refusal everywhere (a bad SET value, an unknown database): one error
            why = str(failed[0][1])
            code, _, text = why.partition(" ")
            if not (len(code) == 5 and code.isalnum()):
                code, text = "F0000", why
            c.transport.write(render.render_error(PgmuxError(text, sqlstate=code)) + m.ready_for_query(b"I"))
            return
        notes = b"".join(m.notice_response(f"worker {i}: {type(e).__name__}: {e}", severity="WARNING",
                                           sqlstate="01000") for i, e in failed)
        c.transport.write(notes + done[0] + m.ready_for_query(b"I"))

    async def _ask(self, index: int, sql: str, wait: float | None = PEER_TIMEOUT) -> bytes:
        share = self.app.share
        probe = await asyncio.wait_for(Probe.open(private_dir(share.rundir, index), PRIVATE_PORT, "pgmux", None,
                                                  "pgbouncer", "", application_name=PEER_APP), PEER_TIMEOUT)
        try:
            return await asyncio.wait_for(probe.query_reply(sql), wait)
        finally:
            probe.close()

    def execute(self, c: Any, cmd: AdminCommand) -> bytes | None:
        share = self.app.share
        v = cmd.verb
        if c.startup.get("application_name") == PEER_APP:  # another worker's console asks: this worker only
            return super().execute(c, cmd)
        where = f"pgmux runs {share.workers} worker processes and this console is on worker {share.index}"
        if v == "SHOW":
            out = super().execute(c, cmd)
            note = m.notice_response(f"{where} (pid {os.getpid()}): these rows are this worker's only")
            return note + out if out is not None else note
        if v in EVERY_WORKER:  # sent with the extended protocol: the simple one goes to every worker (message)
            return render.render_error(PgmuxError(
                f"{cmd.query or v}: {where}; send it as a simple query (psql, or a driver's simple protocol) "
                "to act on every worker", sqlstate="0A000"))
        sig = None
        if v == "RELOAD":
            sig = signal.SIGHUP
        elif v == "RESTART":  # a rolling restart (runtime/rolling.py)
            log.info("%s admin command RESTART: asking the supervisor (pid %d) to replace the workers one at a time",
                     c.prefix, share.supervisor)
            try:
                os.kill(share.supervisor, signal.SIGWINCH)
            except OSError as e:
                return render.render_error(PgmuxError(f"RESTART failed: cannot signal the supervisor: {e}",
                                                      sqlstate="F0000"))
            return m.notice_response(
                f"replacing the {share.workers} worker processes one at a time; clients move to the new ones "
                "between transactions; this console's worker is replaced too, and this connection ends then "
                "(the log says when every worker has been replaced)") + render.render_ok("RESTART")
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
