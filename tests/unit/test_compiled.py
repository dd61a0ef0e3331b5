"""The per-transaction modules run compiled (setup.py), unless the install asked for pure Python."""

from __future__ import annotations

import importlib
import importlib.machinery
import os
import time
from pathlib import Path

import pytest

from staleness import stale_compiled_modules

HOT = ["pgmux.session.client", "pgmux.session.server", "pgmux.runtime.app", "pgmux.pooling.pool",
       "pgmux.pooling.histogram", "pgmux.session.states", "pgmux.protocol.codec", "pgmux.session.pipeline",
       "pgmux.session.prepared", "pgmux.protocol.messages", "pgmux.session.params", "pgmux.protocol.auth",
       "pgmux.net.tlsconn", "pgmux.session.fastpath", "pgmux.session.entries", "pgmux.session.replies",
       "pgmux.session.watch", "pgmux.session.shapecheck", "pgmux.protocol.scans", "pgmux.runtime.core",
       "pgmux.runtime.servers", "pgmux.runtime.handoff", "pgmux.runtime.logins", "pgmux.session.client_login",
       "pgmux.session.passing", "pgmux.session.hub",
       "pgmux.runtime.logdirect", "pgmux.runtime.welcome", "pgmux.runtime.admission", "pgmux.metrics.events"]


@pytest.mark.parametrize("name", HOT)
def test_hot_module_is_compiled(name: str) -> None:
    if os.environ.get("PGMUX_PURE", "") not in ("", "0"):
        pytest.fail("PGMUX_PURE is set: these tests check the compiled install; unset it and reinstall")
    module = importlib.import_module(name)
    assert not module.__file__.endswith(".py"), f"{name} runs from source: run ./scripts/setup to compile it"


def test_stale_compiled_module_is_found(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    so = pkg / ("mod" + importlib.machinery.EXTENSION_SUFFIXES[0])
    py = pkg / "mod.py"
    so.write_bytes(b"")
    py.write_text("")
    old = time.time() - 100
    os.utime(so, (old, old))
    assert stale_compiled_modules(pkg) == ["pkg/mod.py"]
    shared = pkg / ("_native__mypyc" + importlib.machinery.EXTENSION_SUFFIXES[0])
    shared.write_bytes(b"")  # a rebuild replaced the shared library, not the module's stub
    assert stale_compiled_modules(pkg) == []
    os.utime(shared, (old, old))
    os.utime(py, (old - 10, old - 10))
    assert stale_compiled_modules(pkg) == []


def test_a_c_module_is_stale_when_a_header_it_includes_is_newer(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    so = pkg / ("_cmod" + importlib.machinery.EXTENSION_SUFFIXES[0])
    so.write_bytes(b"")
    (pkg / "_cmod.c").write_text('#include "_shared.h"\n')
    (pkg / "_other.h").write_text("")  # a header it does not include: no reason to rebuild
    old = time.time() - 100
    os.utime(pkg / "_cmod.c", (old - 10, old - 10))
    os.utime(so, (old, old))
    assert stale_compiled_modules(pkg) == []
    (pkg / "_shared.h").write_text("")
    assert stale_compiled_modules(pkg) == ["pkg/_cmod.c"]
