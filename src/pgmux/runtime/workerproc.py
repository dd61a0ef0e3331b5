"""Starting a worker process (issue 14): a fresh interpreter, not a fork of the supervisor.

The supervisor starts each worker with `python -m pgmux.runtime.workerstart`, passing it the inherited
descriptors (the listening sockets, the shared counts' memfd, the lock file) and a description of its
place in the environment variable PGMUX_WORKER. A worker started so runs the code installed *now* and
reads the configuration file *now*: a rolling restart (runtime/rolling.py) gives every worker new code
and new configuration without stopping the port. Where the OS user pgmux switched to cannot start the
interpreter (`can_exec`), the worker is forked from the supervisor instead and runs the same entry:
new process and configuration, the supervisor's code (logged at start-up). The settings that only the
supervisor can apply (the listening sockets, the OS user, pidfile, the number of workers) are the
supervisor's, passed along: a worker never listens anywhere else than its siblings.

Start-up cost: one interpreter and pgmux's imports (about 0.3 s here), paid at start-up (all workers at
once), when a dead worker is replaced, and once per worker in a rolling restart, where its predecessor
serves until the replacement accepts.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from typing import Any, Final

log = logging.getLogger("pgmux")

ENV: Final = "PGMUX_WORKER"
_PACKAGE_FILE: Final = os.path.join(os.path.dirname(os.path.dirname(__file__)), "__init__.py")
CONFIG_ERROR: Final = 78  # EX_CONFIG: the worker could not read the configuration
# Settings a worker takes from the supervisor, never from the file it reads: what the supervisor bound,
# switched to or counts on (the others that need a restart apply to each new worker process).
SUPERVISOR_OWNED: Final = ("listen_addr", "listen_port", "listen_backlog", "unix_socket_dir", "unix_socket_mode",
                           "unix_socket_group", "user", "pidfile", "so_reuseport", "workers", "job_name",
                           "service_name")


def spawn(entry: Callable[[dict[str, Any]], int], *, row: int, workers: int, config_path: str, settings: Any,
          sockets: list[socket.socket], counts_fd: int, counts_size: int, lock_fd: int, rundir: str, quiet: bool,
          verbose: int, metrics: tuple[str, list[socket.socket]] | None = None) -> int:
    """Start worker process `row`; its pid. Nothing of the supervisor's state goes with it but `place`,
    which `entry` (runtime/main.worker_run) gets in the new process (through runtime/workerstart.py when
    it is a new interpreter)."""
    fds = [s.fileno() for s in sockets]
    metrics_fds = [s.fileno() for s in metrics[1]] if metrics else []  # metrics_listen (runtime/webshare.py)
    owned = {name: _plain(getattr(settings, name)) for name in SUPERVISOR_OWNED}
    place = {"row": row, "workers": workers, "config": config_path, "owned": owned, "sockets": fds,
             "counts": counts_fd, "size": counts_size, "lock": lock_fd, "rundir": rundir,
             "supervisor": os.getpid(), "quiet": quiet, "verbose": verbose,
             "metrics": [metrics[0], metrics_fds] if metrics else None}
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)  # readiness is the supervisor's to report
    root = os.path.dirname(os.path.dirname(os.path.abspath(_PACKAGE_FILE)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    if not can_exec(env):
        return _fork(entry, place)
    env[ENV] = json.dumps(place)
    proc = subprocess.Popen([sys.executable, "-m", "pgmux.runtime.workerstart"], env=env,
                            pass_fds=[*fds, *metrics_fds, counts_fd, lock_fd], close_fds=True,
                            stdin=subprocess.DEVNULL)
    return proc.pid


_exec_ok: bool | None = None


def can_exec(env: dict[str, str]) -> bool:
    """Can this process start a new interpreter that imports pgmux? Asked once, by trying. Not when pgmux
    switched to an OS user that cannot run the interpreter it was started with (installed in root's home,
    say): then workers are forked, said once in the log."""
    global _exec_ok
    if _exec_ok is None:
        try:
            done = subprocess.run([sys.executable, "-c", "import pgmux.runtime.workerstart"], env=env,
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  timeout=30, check=False)
            _exec_ok, why = done.returncode == 0, done.stderr.decode(errors="replace").strip()[-300:]
        except (OSError, subprocess.SubprocessError) as e:
            _exec_ok, why = False, str(e)
        if _exec_ok:
            log.info("supervisor: workers are started as new interpreters (%s): a rolling restart brings new "
                     "code and configuration", sys.executable)
        else:
            log.warning("supervisor: workers are forked from the supervisor: this OS user (uid %d) cannot start %s "
                        "(%s); a rolling restart renews each worker's process and configuration, not its code",
                        os.getuid(), sys.executable, why or "it failed")
    return _exec_ok


def _fork(entry: Callable[[dict[str, Any]], int], place: dict[str, Any]) -> int:
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            code = entry(place)
        except BaseException as e:  # noqa: BLE001 - a worker must never return into the supervisor's code
            log.critical("worker %d failed", place["row"] % place["workers"], exc_info=e)
        finally:
            logging.shutdown()
            os._exit(code)
    return pid


def die_with(supervisor: int) -> None:
    """A worker whose supervisor is killed (SIGKILL: it cannot pass anything on) gets SIGTERM, the
    shutdown that lets its connected clients finish, instead of serving on with nobody to restart it."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != supervisor:  # it died already
        os.kill(os.getpid(), signal.SIGTERM)


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, (tuple, list, frozenset, set)) else value


