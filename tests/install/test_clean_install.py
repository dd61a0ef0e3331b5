"""pgmux installs on a machine that has nothing of its own installed.

The developer machine (and so CI) has pgmux's dependencies installed already, which once hid a build
that needed them: mypyc type-checked modules importing pglast and scramp in pip's isolated build
environment, where they are absent. clean_install.py installs the checkout into a brand-new virtual
environment (no system site-packages), with pip's default build isolation, and imports the compiled
modules there. It needs the package registry, as any install does.

tests/conftest.py starts it when the session begins (at the lowest CPU priority, so that it takes
only what the other tests leave idle) and runs this test last: here it is waited for.
"""

from __future__ import annotations

import subprocess

import pytest

from clean_build import BUILD_KEY


def test_fresh_venv_install_builds_and_imports_the_compiled_modules(request: pytest.FixtureRequest) -> None:
    build = request.config.stash.get(BUILD_KEY, None)
    assert build is not None, "tests/conftest.py did not start the clean install"
    proc, log = build
    try:
        proc.wait(timeout=1200)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    out = log.read_text(errors="replace")
    assert proc.returncode == 0 and "clean install: ok" in out, out[-8000:]
