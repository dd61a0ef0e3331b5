"""Who pgmux runs as. As PgBouncer: `-u USER` (or `user =` in the config) switches to that OS user at
start-up, and pgmux refuses to run as root otherwise.

After the switch the process may no longer read the directories its interpreter and libraries were
loaded from (a Python under /root, say). So everything pgmux will ever import is imported first, while
it still can: every pgmux module, the libraries they use, and the codecs and helpers Python loads on
first use (the IDNA codec for host names, the thread pool of asyncio's resolver...).

The switch also clears the kernel's parent-death signal (PR_SET_PDEATHSIG) that a supervisor set up
(`setpriv --pdeathsig`, as the tests and `pgmux demo` start pgmux): it is re-armed afterwards.
"""

from __future__ import annotations

import ctypes
import importlib
import os
import pkgutil
import pwd
import sys
from typing import Any

# Imported on first use by the standard library: load them now.
_LAZY = ("encodings.idna", "encodings.utf_8_sig", "encodings.latin_1", "encodings.ascii", "stringprep",
         "unicodedata", "concurrent.futures.thread", "json", "warnings", "ssl", "logging.handlers", "pprint")
# Libraries that import parts of themselves on first use (pglast's printers and visitors): all of them.
_PACKAGES = ("pgmux", "pglast", "scramp", "uvloop")
_PR_SET_PDEATHSIG, _PR_GET_PDEATHSIG = 1, 2


class SwitchUserError(Exception):
    pass


def _load(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:  # optional ones (uvloop on odd platforms)
        return None


def preload() -> None:
    for top in _PACKAGES:
        package = _load(top)
        path = getattr(package, "__path__", None)
        if path is None:
            continue
        for info in pkgutil.walk_packages(path, f"{top}."):
            if not info.name.endswith(".__main__"):  # a package's __main__ runs its command line
                _load(info.name)
    for name in _LAZY:
        _load(name)


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def _pdeathsig(libc: ctypes.CDLL | None) -> int:
    if libc is None or not sys.platform.startswith("linux"):
        return 0
    sig = ctypes.c_int(0)
    if libc.prctl(_PR_GET_PDEATHSIG, ctypes.byref(sig), 0, 0, 0) != 0:
        return 0
    return sig.value


def switch_user(name: str) -> None:
    """Become OS user `name` (its uid, primary gid and supplementary groups). Raises SwitchUserError."""
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        raise SwitchUserError(f"no such OS user: {name!r}") from None
    if os.getuid() == pw.pw_uid and os.geteuid() == pw.pw_uid:
        return
    if os.geteuid() != 0:
        raise SwitchUserError(f"cannot switch to OS user {name!r}: only root can (running as uid {os.geteuid()})")
    preload()
    libc = _libc()
    deathsig, parent = _pdeathsig(libc), os.getppid()
    try:
        os.initgroups(pw.pw_name, pw.pw_gid)
        os.setgid(pw.pw_gid)
        os.setuid(pw.pw_uid)
    except OSError as e:
        raise SwitchUserError(f"cannot switch to OS user {name!r}: {e.strerror}") from None
    if deathsig and libc is not None:
        libc.prctl(_PR_SET_PDEATHSIG, deathsig, 0, 0, 0)
        if os.getppid() != parent:  # the parent died during the switch: do what the signal would have done
            os.kill(os.getpid(), deathsig)
    os.environ.update(HOME=pw.pw_dir, USER=pw.pw_name, LOGNAME=pw.pw_name)


def refuse_root() -> str | None:
    """The message pgmux exits with when it would run as root, else None."""
    if os.geteuid() == 0 or os.getuid() == 0:
        return ("pgmux should not run as root: give -u USER (or `user =` in the configuration) to switch to "
                "an unprivileged OS user at start-up, or start it as that user")
    return None
