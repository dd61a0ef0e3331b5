"""The admin console of one worker process among several (issue 14, item 4 in part).

A console connection lands on one worker. What acts on the whole pooler goes through the supervisor,
whose signals reach every worker (runtime/supervisor.py): RELOAD (HUP), PAUSE and RESUME without a
database (USR1, USR2; PAUSE also waits for this worker's servers, as in one process), SHUTDOWN (QUIT,
or INT for WAIT_FOR_SERVERS, TERM for WAIT_FOR_CLIENTS). KILL_CLIENT acts on this worker's client ids,
the ones its SHOW CLIENTS lists. The commands that would act on this worker only (SET, DISABLE, ENABLE,
KILL, RECONNECT, WAIT_CLOSE, BAN, UNBAN, PAUSE/RESUME of one database) are refused with 0A000 naming
what to do instead. SHOW answers with this worker's rows, after a NOTICE that says so: the sums across
workers are not implemented yet.
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Any, Final

from pgmux.admin import render
from pgmux.admin.commands import AdminCommand
from pgmux.errors import PgmuxError
from pgmux.protocol import messages as m
from pgmux.runtime.admin_service import AdminService

log = logging.getLogger("pgmux")

ONE_WORKER_ONLY: Final = frozenset({"SET", "DISABLE", "ENABLE", "KILL", "RECONNECT", "WAIT_CLOSE", "BAN", "UNBAN"})


class WorkerAdmin(AdminService):
    """AdminService for a worker: app.admin's class is set to this once the app started."""

    def execute(self, c: Any, cmd: AdminCommand) -> bytes | None:
        share = self.app.share
        v = cmd.verb
        where = f"pgmux runs {share.workers} worker processes and this console is on worker {share.index}"
        if v == "SHOW":
            out = super().execute(c, cmd)
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
