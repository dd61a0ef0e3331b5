"""Processes, ports and config files for the throwaway clusters, the poolers the tests start, `pgmux demo`
and bench/: bounded waits, stop by PID, and the pgbouncer.ini / userlist.txt both poolers read."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from typing import Any

HOST = "127.0.0.1"


class ClusterError(RuntimeError):
    """A throwaway cluster could not be set up, started or stopped."""


class _Exited(ClusterError):
    """A process we were waiting for is gone: waiting longer is pointless."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (callers retry if they lose the race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.1) -> None:
    """Poll `predicate` until true; raise ClusterError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            if predicate():
                return
        except _Exited:
            raise
        except ClusterError as e:
            last_error = e
        if time.monotonic() >= deadline:
            raise ClusterError(f"timed out after {timeout}s waiting for {what}"
                               + (f" (last error: {last_error})" if last_error else ""))
        time.sleep(interval)


def render_ini(databases: Mapping[str, str], settings: Mapping[str, Any],
               users: Mapping[str, str] | None = None) -> str:
    """A pgbouncer.ini that both PgBouncer and pgmux read. A None value in `settings` leaves the key out."""
    lines = ["[databases]"]
    lines += [f"{name} = {conn}" for name, conn in databases.items()]
    lines += ["", "[pgbouncer]"]
    lines += [f"{key} = {value}" for key, value in settings.items() if value is not None]
    if users:
        lines += ["", "[users]"]
        lines += [f"{name} = {conf}" for name, conf in users.items()]
    return "\n".join(lines) + "\n"


def render_userlist(userlist: Mapping[str, str]) -> str:
    """userlist.txt: `"user" "password"` per line, double quotes doubled as PgBouncer expects."""
    def q(s: str) -> str:
        return '"' + s.replace('"', '""') + '"'
    return "".join(f"{q(user)} {q(password)}\n" for user, password in userlist.items())


def die_with_parent(cmd: list[str], sig: str = "TERM") -> list[str]:
    """Prefix `cmd` so that the process gets SIG when we die, even by SIGKILL or a CI timeout, where no
    cleanup of ours runs (util-linux `setpriv --pdeathsig`; it execs, so the PID stays the same).
    Without setpriv, `cmd` unchanged. Note: "we" is the thread that starts it; start from the main one."""
    setpriv = shutil.which("setpriv") or shutil.which("setpriv", path="/usr/bin:/bin")
    return [setpriv, "--pdeathsig", sig, "--", *cmd] if setpriv else list(cmd)


def port_accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_listening(proc: subprocess.Popen[Any], host: str, port: int, timeout: float = 20) -> None:
    """Wait until `proc` accepts TCP on host:port; raise ClusterError if it exits first or never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ClusterError(f"process {proc.pid} exited with code {proc.returncode} before listening "
                               f"on {host}:{port}")
        if port_accepts(host, port):
            return
        time.sleep(0.05)
    raise ClusterError(f"process {proc.pid} did not listen on {host}:{port} within {timeout}s")


def stop_process(proc: subprocess.Popen[Any], timeout: float = 10, sig: int = signal.SIGTERM) -> int | None:
    """Signal `proc` by PID, wait up to `timeout`, then SIGKILL. Returns its exit code."""
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                return None
    return proc.returncode
