"""pgmux under tracemalloc, for `bench/memory.py --breakdown`: where an idle client's bytes go.

    python3 bench/memprobe.py CTLDIR [--no-trace] [--pure] PGMUX-ARGS...

Runs pgmux (as `python -m pgmux PGMUX-ARGS`) with tracemalloc on and a thread that reads commands
from CTLDIR/cmd and answers in CTLDIR/out: `snap` takes the baseline snapshot; `diff N` lists the
allocations still alive since then by source line, divided by N clients; `sizes` lists
sys.getsizeof of what each live ClientSession holds, per session; `arenas` counts CPython's
small-object arenas (sys._debugmallocstats) and lists the objects that keep a sparse one alive (each
object's pool header, at its address rounded down to 16 KiB, names its arena). `--pure` imports pgmux's modules
from their .py files even where compiled ones are built: tracemalloc sees no Python frame inside
compiled code, so only the pure build names the lines that allocate.
"""

from __future__ import annotations

import ctypes
import gc
import importlib.machinery as im
import os
import re
import runpy
import sys
import threading
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
_SHARED_ATTRS = {"hub", "pool", "route", "server"}  # shared with other clients, or not idle state


def type_counts() -> Counter[str]:
    return Counter(type(o).__qualname__ for o in gc.get_objects())


def diff_report(base: tracemalloc.Snapshot, n: int, types: Counter[str]) -> str:
    gc.collect()
    snap = tracemalloc.take_snapshot()
    grown = [(k, v) for k, v in (type_counts() - types).most_common(8)]
    stats = snap.compare_to(base, "lineno")
    total = sum(s.size_diff for s in stats)
    lines = [f"alive since the baseline: {total / n:,.0f} bytes per client (tracemalloc: Python's allocators)"]
    for s in stats[:30]:
        if abs(s.size_diff) / n < 4:
            break
        frame = s.traceback[0]
        where = f"{os.path.relpath(frame.filename, ROOT) if frame.filename.startswith(str(ROOT)) else frame.filename}"
        lines.append(f"  {s.size_diff / n:8,.0f} B {s.count_diff / n:6.2f} blocks  {where}:{frame.lineno}")
    lines.append("objects the collector tracks, more than at the baseline: "
                 + (", ".join(f"{k} +{v}" for k, v in grown) or "none"))
    return "\n".join(lines)


def _deep(o: Any, seen: set[int]) -> int:
    """o's size and that of the containers and bytes it holds, each object once over all calls."""
    if id(o) in seen or o is None or isinstance(o, (bool, type)) or (isinstance(o, int) and -5 <= o <= 256):
        return 0
    seen.add(id(o))
    size = sys.getsizeof(o)
    if isinstance(o, dict):
        size += sum(_deep(k, seen) + _deep(v, seen) for k, v in o.items())
    elif isinstance(o, (list, tuple, set, frozenset)):
        size += sum(_deep(x, seen) for x in o)
    elif type(o).__module__.startswith("pgmux"):
        cls = type(o)
        attrs = getattr(cls, "__slots__", None) or getattr(cls, "__mypyc_attrs__", ())
        size += sum(_deep(getattr(o, a, None), seen) for a in attrs)
    return size


def sizes_report() -> str:
    gc.collect()
    clients = [o for o in gc.get_objects() if type(o).__name__ == "ClientSession"]
    if not clients:
        return "no ClientSession alive"
    cls = type(clients[0])
    attrs = list(getattr(cls, "__slots__", None) or getattr(cls, "__mypyc_attrs__", ()))  # (mypyc: no __slots__)
    seen: set[int] = set()
    per: dict[str, int] = {}
    own = 0
    for c in clients:
        own += sys.getsizeof(c)
        seen.add(id(c))
        for a in attrs:
            if a in _SHARED_ATTRS:
                continue
            v = getattr(c, a, None)
            if a == "transport" and v is not None:  # the transport, its protocol, and the bound method
                proto = v.get_protocol()
                size = sys.getsizeof(v) + _deep(proto, seen)
                size += _deep(getattr(proto, "data_received", None), seen)
                seen.add(id(v))
            else:
                size = _deep(v, seen)
            per[a] = per.get(a, 0) + size
    n = len(clients)
    lines = [f"{n} ClientSession objects; sys.getsizeof per session, biggest first "
             f"(containers with their contents; shared objects once):",
             f"  {own / n:8,.0f} B  the ClientSession object itself ({type(clients[0]).__module__})"]
    for a, size in sorted(per.items(), key=lambda kv: -kv[1]):
        if size / n >= 1:
            lines.append(f"  {size / n:8,.0f} B  .{a}")
    lines.append(f"  {(own + sum(per.values())) / n:8,.0f} B  in all")
    return "\n".join(lines)


_POOL = 1 << 14  # CPython 3.11 on 64-bit: 16 KiB pools in 1 MiB arenas


def arena_count() -> tuple[int, int, int]:
    """(arenas allocated now, unused pools in them, the most arenas there were) from
    sys._debugmallocstats (it writes to fd 2)."""
    import tempfile

    with tempfile.TemporaryFile("w+") as f:
        saved = os.dup(2)
        os.dup2(f.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        f.seek(0)
        text = f.read()
    patterns = (r"# arenas allocated current\s*=\s*([\d,]+)", r"([\d,]+) unused pools",
                r"# arenas highwater mark\s*=\s*([\d,]+)")
    found = [re.search(pattern, text) for pattern in patterns]
    a, u, h = (int(m.group(1).replace(",", "")) if m else -1 for m in found)
    return a, u, h


def arenas_report(base_arenas: tuple[int, int, int]) -> str:
    """The arenas now, and in each arena where few reachable objects live, what they are (and what
    holds them): the survivors that keep a departed storm's arena resident."""
    import bisect

    gc.collect()
    arenas, unused, highwater = arena_count()
    if highwater < 0:  # tracemalloc hooks the allocator, and then CPython prints no pymalloc statistics
        return "small-object arenas: not counted under tracemalloc (bench/memory.py --arenas N counts them)"
    regions = []  # readable and writable mappings: a header is read only where memory is
    with open("/proc/self/maps") as f:
        for line in f:
            span, perms = line.split()[:2]
            if perms.startswith("rw"):
                regions.append(tuple(int(x, 16) for x in span.split("-")))
    starts = [a for a, _ in regions]
    seen: dict[int, Any] = {}
    stack = [(o, None) for o in gc.get_objects()]
    found: dict[int, list[tuple[Any, Any]]] = {}
    while stack:
        o, parent = stack.pop()
        if id(o) in seen:
            continue
        seen[id(o)] = o
        stack.extend((r, o) for r in gc.get_referents(o) if id(r) not in seen and not isinstance(r, type))
        if sys.getsizeof(o) > 512:
            continue  # not the small-object allocator's
        pool = id(o) & ~(_POOL - 1)
        i = bisect.bisect_right(starts, pool) - 1
        if i < 0 or not regions[i][0] <= pool < pool + 48 <= regions[i][1]:
            continue  # not in a mapping of its own pool: not the small-object allocator's
        index = ctypes.c_uint.from_address(pool + 32).value  # pool_header.arenaindex
        if ctypes.c_uint.from_address(pool).value and index < highwater:
            found.setdefault(index, []).append((o, parent))
    lines = [f"small-object arenas: {arenas} now ({unused} unused pools), {base_arenas[0]} at the baseline"]
    for index, objs in sorted(found.items()):
        if len(objs) > 40:
            continue
        kinds = ", ".join(f"{type(o).__qualname__} (in {type(p).__qualname__})" for o, p in objs[:8])
        lines.append(f"  arena {index}: {len(objs)} reachable objects: {kinds}")
    seen.clear()
    return "\n".join(lines)


def serve(ctl: Path) -> None:
    base: tracemalloc.Snapshot | None = None
    types: Counter[str] = Counter()
    base_arenas = (-1, -1, -1)
    while True:
        time.sleep(0.1)
        cmd_file = ctl / "cmd"
        if not cmd_file.exists():
            continue
        cmd = cmd_file.read_text().split()
        cmd_file.unlink()
        try:
            if cmd[0] == "snap":
                gc.collect()
                base = tracemalloc.take_snapshot()
                types = type_counts()
                base_arenas = arena_count()
                out = "ok"
            elif cmd[0] == "arenasnap":
                gc.collect()
                base_arenas = arena_count()
                out = "ok"
            elif cmd[0] == "arenas":
                out = arenas_report(base_arenas)
            elif cmd[0] == "diff" and base is not None:
                out = diff_report(base, int(cmd[1]), types)
            else:
                out = sizes_report()
        except Exception as e:  # noqa: BLE001 - report it to the driver instead of hanging it
            out = f"memprobe failed: {e!r}"
        (ctl / "out.tmp").write_text(out)
        os.rename(ctl / "out.tmp", ctl / "out")


def main() -> None:
    ctl = Path(sys.argv[1])
    args = sys.argv[2:]
    trace = not (args and args[0] == "--no-trace")  # --arenas: CPython counts arenas only untraced
    if not trace:
        args = args[1:]
    if args and args[0] == "--pure":
        args = args[1:]
        sys.path_hooks.insert(0, im.FileFinder.path_hook(
            (im.SourceFileLoader, im.SOURCE_SUFFIXES), (im.ExtensionFileLoader, im.EXTENSION_SUFFIXES)))
        sys.path_importer_cache.clear()
    sys.path.insert(0, str(ROOT / "src"))
    if trace:
        tracemalloc.start(1)
    threading.Thread(target=serve, args=(ctl,), daemon=True).start()
    sys.argv = ["pgmux", *args]
    runpy.run_module("pgmux", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
