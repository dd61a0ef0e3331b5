"""pgmux._arenas: the empty pools of CPython's arenas given back after a storm (runtime/memtrim.py).

The module installs an arena allocator and writes into pymalloc's pool headers, so each check runs in
a child interpreter of its own, not in the test process. On this project's machines a C compiler is
always present: a missing module is a failure here, not a skip (memory after a storm would silently
stay higher).
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap
from typing import Any

CHILD = textwrap.dedent("""
    import gc, json, sys
    from pgmux import _arenas

    def rss_kb():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * (4096 // 1024)

    def made(i):
        return bytes([i % 256]) * 40 + str(i).encode()

    _arenas.install()
    base = rss_kb()
    storm = [made(i) for i in range(300_000)]
    keep = storm[::2000]  # one object in 2,000 outlives the storm: it pins its arena
    del storm
    gc.collect()
    pinned = rss_kb()
    first = _arenas.release()
    after = rss_kb()
    second = _arenas.release()
    # The released pools are used again, for the same size class and others, and hold what is put in.
    again = [made(i) for i in range(300_000)]
    ok = all(a == made(i) for i, a in enumerate(again))
    ok = ok and all(k == made(i * 2000) for i, k in enumerate(keep))
    d = {str(i): (i, float(i), [i]) for i in range(100_000)}
    ok = ok and all(d[str(i)][2][0] == i for i in range(100_000))
    del again, d
    gc.collect()
    third = _arenas.release()
    print(json.dumps({"base": base, "pinned": pinned, "first": first, "after": after, "second": second,
                      "third": third, "ok": ok, "stats": _arenas.stats()}))
""")


def run_child(env: dict[str, str] | None = None) -> Any:
    res = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120,
                         env={**os.environ, **(env or {})})
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout)


def test_the_module_is_built() -> None:
    mod = importlib.import_module("pgmux._arenas")
    assert {"install", "release", "stats"} <= set(dir(mod))


def test_the_empty_pools_of_pinned_arenas_go_back_and_are_used_again() -> None:
    out = run_child()
    pools, freed = out["first"]
    stats = out["stats"]
    assert isinstance(stats, dict) and stats["installed"] and not stats["broken"], stats
    # ~20 MB of bytes objects, all but one in 2,000 freed: nearly every pool of their arenas is empty.
    assert pools > 500 and freed == pools * (16384 - 4096), out
    drop_kb = out["pinned"] - out["after"]
    assert drop_kb * 1024 >= 0.8 * freed, out  # RSS fell by what was given back
    # what stays: the first page of each pool (a quarter), and the arenas the survivors fill
    assert out["after"] - out["base"] < 0.45 * (out["pinned"] - out["base"]), out
    assert out["second"] == [0, 0]  # a released pool is not released twice
    assert out["ok"] is True  # the pools were set up again from scratch when reused: contents intact
    assert out["third"][0] > 0


def test_without_pymalloc_it_does_nothing() -> None:
    out = run_child({"PYTHONMALLOC": "malloc"})
    assert out["first"] == [0, 0] and out["ok"] is True and out["stats"]["arenas"] == 0, out


def test_under_the_debug_hooks_the_pools_check_out_too() -> None:
    """PYTHONMALLOC=pymalloc_debug (and -X dev) put guard bytes around each block and check them on
    free: a released pool used again must pass those checks."""
    out = run_child({"PYTHONMALLOC": "pymalloc_debug"})
    assert out["ok"] is True and out["first"][0] > 0, out
