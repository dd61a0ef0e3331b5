"""Install the checkout into a brand-new virtual environment and check it there (test_clean_install.py).

    python3 tests/install/clean_install.py WORKDIR

Copies the source (not the work tree: built .so files and caches must not leak in) to WORKDIR/src,
makes WORKDIR/venv (no system site-packages), installs with pip's default build isolation, imports
the compiled modules there and runs `pgmux -V`. Exits 0 when all of that held; says what failed
otherwise. tests/conftest.py starts it at the beginning of a test session, at the lowest CPU
priority, so that the build (mypyc and the C compiler, about a minute of one core) uses what the
other tests leave idle; the test waits for it at the end.
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
hot = ["pgmux.session.client", "pgmux.runtime.app", "pgmux.protocol.auth", "pgmux._speedups", "pgmux._arenas",
       "pgmux._tlspump", "pgmux._streams"]
for name in hot:
    m = importlib.import_module(name)
    assert not m.__file__.endswith(".py"), f"{name} is not compiled: {m.__file__}"
    assert Path(sys.prefix) in Path(m.__file__).parents, f"{name} comes from outside the venv: {m.__file__}"
import pglast, scramp, uvloop  # the runtime dependencies came along
from pgmux.routing.classify import classify
print("ok")
"""


def step(what: str, cmd: list[str], cwd: Path, env: dict[str, str], timeout: float) -> str:
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        sys.exit(f"{what} failed (exit {res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-6000:]}")
    return res.stdout + res.stderr


def main(work: Path) -> None:
    src = work / "src"
    ignore = shutil.ignore_patterns("*.so", "__pycache__", "build", "*.egg-info", ".git", ".venv", "bench")
    shutil.copytree(ROOT, src, ignore=ignore)
    venv = work / "venv"
    env = {k: val for k, val in os.environ.items() if k not in ("PYTHONPATH", "PGMUX_PURE", "VIRTUAL_ENV")}
    step("venv", [sys.executable, "-m", "venv", str(venv)], work, env, 120)
    py = str(venv / "bin" / "python")
    step("pip install", [py, "-m", "pip", "install", "-q", "--disable-pip-version-check", str(src)], work, env, 900)
    out = step("the import check", [py, "-c", CHECK], work, env, 120)
    if out.strip() != "ok":
        sys.exit(f"the import check said: {out}")
    out = step("pgmux -V", [str(venv / "bin" / "pgmux"), "-V"], work, env, 60)
    if "pgmux" not in out:
        sys.exit(f"pgmux -V said: {out}")
    print("clean install: ok")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
