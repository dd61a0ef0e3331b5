"""Which compiled modules of pgmux are older than their source (tests/conftest.py stops the run then).

setup.py compiles the per-transaction modules with mypyc, and Python imports a compiled module in
preference to its .py file: after an edit to such a .py, the tests would run the old compiled code.
The same holds for the C modules (_speedups.c, _arenas.c, _tlspump.c, _streams.c) and their .so.
"""

from __future__ import annotations

import importlib.machinery
from pathlib import Path

import pgmux

PACKAGE = Path(pgmux.__file__).parent


def stale_compiled_modules(package: Path = PACKAGE) -> list[str]:
    """Compiled modules of `package` whose .py source is newer than the compiled code. mypyc puts the
    code of all of them in one shared library (`*__mypyc*`), which a rebuild replaces; each module's
    own file is a small stub that a rebuild may leave as it was."""
    built = {suffix: list(package.rglob(f"*{suffix}")) for suffix in importlib.machinery.EXTENSION_SUFFIXES}
    shared = max((so.stat().st_mtime for files in built.values() for so in files if "__mypyc" in so.name),
                 default=0.0)
    headers = list(package.glob("*.h"))  # the C modules' shared header (_views.h)
    stale = []
    for suffix, files in built.items():
        for so in files:
            for ext in (".py", ".c"):  # mypyc's modules, and the C ones (_speedups, _arenas, _tlspump, _streams)
                source = so.with_name(so.name[: -len(suffix)] + ext)
                newer = so.stat().st_mtime if ext == ".c" else max(so.stat().st_mtime, shared)
                if source.exists() and source.stat().st_mtime > newer:
                    stale.append(str(source.relative_to(package.parent)))
                if ext == ".c" and source.exists() and any(h.stat().st_mtime > newer for h in headers
                                                           if f'"{h.name}"' in source.read_text()):
                    stale.append(str(source.relative_to(package.parent)))
    return sorted(set(stale))
