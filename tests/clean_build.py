"""The clean-install check in the background (tests/install/clean_install.py, test_clean_install.py).

Building pgmux in a fresh virtual environment takes a minute of one core (mypyc, the C compiler)
and otherwise runs alone at the start of the suite. tests/conftest.py starts it once the session's
tests are collected, when the clean-install test is among them, at the lowest CPU priority
(SCHED_IDLE and nice 19: it only gets what the other tests leave idle, which is most of a core, as
they mostly wait on PostgreSQL and the pooler), runs that test last, and it waits for the result.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "install" / "clean_install.py"
TEST = HERE / "install" / "test_clean_install.py"
BUILD_KEY = pytest.StashKey[tuple[subprocess.Popen[bytes], Path]]()  # the build, and its log in its work dir


def _lowest_priority() -> None:
    os.nice(19)
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):  # not Linux: nice alone
        pass


def start(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.option.collectonly or not any(item.path == TEST for item in items):
        return
    work = Path(tempfile.mkdtemp(prefix="pgmux-clean-install-"))
    log = work / "log.txt"
    with open(log, "wb") as f:
        proc = subprocess.Popen([sys.executable, str(SCRIPT), str(work / "w")], stdout=f, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_lowest_priority)
    config.stash[BUILD_KEY] = (proc, log)


def last(items: list[pytest.Item]) -> None:
    """The clean-install test at the end of the run, in place (the build has had the whole run)."""
    items.sort(key=lambda item: item.path == TEST)


def stop(config: pytest.Config) -> None:
    build = config.stash.get(BUILD_KEY, None)
    if build is None:
        return
    proc, log = build
    if proc.poll() is None:  # the session ended before the test waited for it
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    shutil.rmtree(log.parent, ignore_errors=True)
