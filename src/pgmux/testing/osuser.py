"""Who runs PostgreSQL's server-side commands, and where its binaries are.

PostgreSQL refuses to run as root. When we are root, every command that owns server files (initdb,
postgres, pg_basebackup, pg_ctl promote) runs as an unprivileged OS user (`pgmuxtest`, or
$PGMUX_TEST_OSUSER, created on first use). When we are not root, everything runs as ourselves.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any

from pgmux.testing.procs import ClusterError

OS_USER = os.environ.get("PGMUX_TEST_OSUSER", "pgmuxtest")


def find_bindir() -> str:
    """Where initdb/pg_ctl/postgres live: $PGMUX_PG_BINDIR, else `pg_config --bindir`, else the newest
    /usr/lib/postgresql/*/bin."""
    candidates: list[str] = []
    if os.environ.get("PGMUX_PG_BINDIR"):
        candidates.append(os.environ["PGMUX_PG_BINDIR"])
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10)
            candidates.append(out.stdout.strip())
        except (OSError, subprocess.SubprocessError):
            pass
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                         key=lambda p: int(p.split("/")[-2]) if p.split("/")[-2].isdigit() else 0,
                         reverse=True)
    for d in candidates:
        if d and all(os.access(os.path.join(d, b), os.X_OK) for b in ("initdb", "pg_ctl", "postgres")):
            return d
    raise ClusterError(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found; looked in "
        f"{candidates or ['(nothing)']}. `pg_config --bindir` must name the directory that holds them "
        "(install the PostgreSQL server package), or set PGMUX_PG_BINDIR."
    )


@dataclass(frozen=True)
class OsUser:
    """Who runs the server-side commands. `switch` is False when that is already us."""

    name: str
    uid: int
    gid: int
    home: str
    switch: bool

    def popen_kwargs(self) -> dict[str, Any]:
        if not self.switch:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def env(self) -> dict[str, str]:
        env = _clean_env()
        if self.switch:
            env.update(HOME=self.home, USER=self.name, LOGNAME=self.name)
        return env

    def chown(self, path: str) -> None:
        if self.switch:
            os.chown(path, self.uid, self.gid)


def pgmux_user_args(user: OsUser | None = None) -> list[str]:
    """pgmux's command-line flags to run as the cluster's OS user: `-u NAME` when we are root (pgmux
    refuses root), nothing otherwise. For the tests' direct starts, bench/ and `pgmux demo`."""
    user = user if user is not None else server_os_user()
    return ["-u", user.name] if user.switch else []


def server_os_user() -> OsUser:
    """Ourselves if we are not root; otherwise the unprivileged OS_USER, created if it does not exist."""
    if os.geteuid() != 0:
        pw = pwd.getpwuid(os.geteuid())
        return OsUser(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir, switch=False)
    try:
        pw = pwd.getpwnam(OS_USER)
    except KeyError:
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        # Another process may be creating the same user right now: look again before failing.
        proc = subprocess.run([useradd, "--system", "--create-home", "--shell", "/bin/sh", OS_USER],
                              capture_output=True, text=True, timeout=30)
        try:
            pw = pwd.getpwnam(OS_USER)
        except KeyError:
            raise ClusterError(f"PostgreSQL cannot run as root and `useradd {OS_USER}` failed: "
                               f"{proc.stderr.strip()}") from None
    return OsUser(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir, switch=True)


def _clean_env() -> dict[str, str]:
    # Our own libpq variables must not leak into psql/pg_basebackup and point them elsewhere.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    return env
