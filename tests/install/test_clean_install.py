"""pgmux installs on a machine that has nothing of its own installed.

The developer machine (and so CI) has pgmux's dependencies installed already, which once hid a build
that needed them: mypyc type-checked modules importing pglast and scramp in pip's isolated build
environment, where they are absent. This test installs the checkout into a brand-new virtual
environment (no system site-packages), with pip's default build isolation, and imports the compiled
modules there. It needs the package registry, as any install does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CHECK = """
import importlib, sys
from pathlib import Path
hot = ["pgmux.session.client", "pgmux.runtime.app", "pgmux.protocol.auth", "pgmux._speedups"]
for name in hot:
    m = importlib.import_module(name)
    assert not m.__file__.endswith(".py"), f"{name} is not compiled: {m.__file__}"
    assert Path(sys.prefix) in Path(m.__file__).parents, f"{name} comes from outside the venv: {m.__file__}"
import pglast, scramp, uvloop  # the runtime dependencies came along
from pgmux.routing.classify import classify
print("ok")
"""


def test_fresh_venv_install_builds_and_imports_the_compiled_modules(tmp_path: Path) -> None:
    # Copy the source, not the work tree: built .so files and caches in the checkout must not leak in.
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("*.so", "__pycache__", "build", "*.egg-info", ".git", ".venv", "bench")
    shutil.copytree(ROOT, src, ignore=ignore)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    env = {k: val for k, val in os.environ.items() if k not in ("PYTHONPATH", "PGMUX_PURE", "VIRTUAL_ENV")}
    install = subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(src)],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-6000:]
    run = subprocess.run([str(py), "-c", CHECK], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stdout + run.stderr
    version = subprocess.run([str(venv / "bin" / "pgmux"), "-V"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and "pgmux" in version.stdout + version.stderr, version.stdout + version.stderr
