"""pgmux's App run inside the test process, on uvloop as in production, for tests that look at what only
the process itself can see: the options of its live sockets, its listening sockets, its log records.

`run_in_process(pg, tmp_path, settings, body)` writes a pgbouncer.ini (the conftest defaults, overridden
by `settings`), starts an App on it, awaits `body(app)` and shuts the App down, all within a bounded time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import uvloop

from pgmux.config import load_config
from pgmux.runtime.app import App
from pgmux.testing.cluster import HOST, PgCluster, free_port, render_ini, render_userlist


def write_config(pg: PgCluster, tmp_path: Path, settings: Mapping[str, Any],
                 databases: Mapping[str, str] | None = None) -> str:
    primary = pg.primary
    userlist = tmp_path / "userlist.txt"
    userlist.write_text(render_userlist({pg.superuser: ""}))
    merged: dict[str, Any] = {"listen_addr": HOST, "listen_port": free_port(), "unix_socket_dir": "",
                              "auth_type": "trust", "auth_file": str(userlist), "pool_mode": "session",
                              "admin_users": pg.superuser}
    merged.update(settings)
    path = tmp_path / "pgbouncer.ini"
    dbs = {"testdb": f"host={primary.host} port={primary.port} dbname=testdb"} if databases is None else databases
    path.write_text(render_ini(dbs, merged))
    return str(path)


def run_in_process(pg: PgCluster, tmp_path: Path, settings: Mapping[str, Any],
                   body: Callable[[App], Awaitable[None]], timeout: float = 60.0) -> None:
    path = write_config(pg, tmp_path, settings)

    async def main() -> None:
        app = App(load_config(path), path)
        await app.start()
        try:
            await asyncio.wait_for(body(app), timeout)
        finally:
            app.shutdown("immediate")
            await asyncio.wait_for(app.wait_stopped(), 10)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())


def run_two_in_process(pg: PgCluster, tmp_path: Path, settings: Mapping[str, Any],
                       body: Callable[[App, App], Awaitable[None]], timeout: float = 120.0,
                       databases: Mapping[str, str] | None = None) -> None:
    """Two Apps, A and B, on one uvloop loop: the same configuration but their ports (each its own
    directory under `tmp_path`: a/ and b/). Awaits `body(a, b)`, then shuts both down."""
    paths = []
    for name in ("a", "b"):
        d = tmp_path / name
        d.mkdir()
        paths.append(write_config(pg, d, settings, databases))

    async def main() -> None:
        apps = [App(load_config(p), p) for p in paths]
        started: list[App] = []
        try:
            for app in apps:
                await app.start()
                started.append(app)
            await asyncio.wait_for(body(apps[0], apps[1]), timeout)
        finally:
            for app in started:
                app.shutdown("immediate")
            for app in started:
                await asyncio.wait_for(app.wait_stopped(), 10)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())
