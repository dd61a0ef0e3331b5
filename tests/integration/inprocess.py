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


def write_config(pg: PgCluster, tmp_path: Path, settings: Mapping[str, Any]) -> str:
    primary = pg.primary
    userlist = tmp_path / "userlist.txt"
    userlist.write_text(render_userlist({pg.superuser: ""}))
    merged: dict[str, Any] = {"listen_addr": HOST, "listen_port": free_port(), "unix_socket_dir": "",
                              "auth_type": "trust", "auth_file": str(userlist), "pool_mode": "session",
                              "admin_users": pg.superuser}
    merged.update(settings)
    path = tmp_path / "pgbouncer.ini"
    path.write_text(render_ini({"testdb": f"host={primary.host} port={primary.port} dbname=testdb"}, merged))
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
