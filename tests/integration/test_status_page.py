"""The status page (metrics_listen, /) in a real headless browser (Debian's chromium): it renders from
/status.json with no external resource, its pool numbers change when load arrives, its charts fill, and a
screenshot at a phone's size is saved (the path is printed; PGMUX_SCREENSHOT_DIR keeps a copy)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import psycopg
import pytest
from helpers import guard, wait_for
from metrics_helpers import get, metrics_settings, url

from conftest import PgmuxProc, PgmuxStarter

CLIENTS = 8


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "chromium is needed for this test: apt-get install chromium (scripts/setup does)"
    return path


def _browser(tmp_path: Path, *args: str, budget_ms: int = 6000) -> str:
    """Run headless chromium on the page; the JavaScript runs for `budget_ms` of virtual time (several
    refreshes) before the DOM is dumped or the screenshot taken."""
    profile = tmp_path / "chromium-profile"
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           f"--user-data-dir={profile}", "--no-first-run", f"--virtual-time-budget={budget_ms}", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _pool_cells(dom: str, db: str = "testdb") -> list[str]:
    body = dom.split('id="pools"', 1)[1].split("</table>", 1)[0]
    for row in re.findall(r"<tr>(.*?)</tr>", body, re.S):
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
        if cells and cells[0] == db:
            return cells
    raise AssertionError(f"no row for {db} in the pools table:\n{body[:2000]}")


def _load(mux: PgmuxProc, tmp_path: Path, seconds: int) -> subprocess.Popen[str]:
    script = tmp_path / "tx.sql"
    script.write_text("SELECT pg_sleep(0.01);\n")
    return subprocess.Popen(["pgbench", "-n", "-h", mux.host, "-p", str(mux.port), "-U", "postgres", "-c",
                             str(CLIENTS), "-j", "2", "-T", str(seconds), "-f", str(script), "testdb"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_status_page_renders_live_numbers_in_chromium(pgmux_factory: PgmuxStarter, tmp_path: Path) -> None:
    mux = pgmux_factory(settings=metrics_settings(default_pool_size=2))
    _, ctype, html = get(mux, "/")
    assert ctype.startswith("text/html")
    # offline: nothing is fetched from anywhere but pgmux itself (relative status.json)
    assert not re.search(r"(src|href)=\"(https?:)?//", html) and "@import" not in html
    page = url(mux, "/")
    with guard(mux), psycopg.connect(mux.dsn(), autocommit=True) as idle:
        idle.execute("SELECT 1")  # the pool exists: one client, idle
        before = _pool_cells(_browser(tmp_path, "--dump-dom", page))
        assert before[2:4] == ["1", "0"], before  # clients active 1, waiting 0
        assert "No pool advisor" in _browser(tmp_path, "--dump-dom", page) or "pgmux.pooling.advisor" in html
        bench = _load(mux, tmp_path, seconds=25)
        try:
            wait_for(lambda: json.loads(get(mux, "/status.json")[2])["pools"][0]["cl_waiting"] > 0,
                     "clients waiting on the pool of 2", 20)
            dom = _browser(tmp_path, "--dump-dom", page)
            during = _pool_cells(dom)
            # 8 pgbench clients and the idle one on a pool of 2: more clients, some waiting, both servers used
            assert int(during[2]) + int(during[3]) == CLIENTS + 1, during
            assert int(during[3]) > 0 and during != before, (before, during)
            assert int(during[4]) + int(during[5]) == 2, during
            # the charts fill as the history ring gets points every 2 s
            wait_for(lambda: len(json.loads(get(mux, "/status.json")[2])["history"]["tps"]) >= 3, "history", 20)
            dom = _browser(tmp_path, "--dump-dom", page)
            points = int(re.search(r'id="chart-tps"[^>]*data-points="(\d+)"', dom).group(1))  # type: ignore[union-attr]
            assert points >= 3 and "<polyline" in dom.split('id="chart-tps"', 1)[1].split("</svg>", 1)[0]
            shot = tmp_path / "status-page.png"
            _browser(tmp_path, f"--screenshot={shot}", "--window-size=412,1400", "--hide-scrollbars", page)
            assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            print(f"status page screenshot: {shot}")
            keep = os.environ.get("PGMUX_SCREENSHOT_DIR")
            if keep:
                Path(keep).mkdir(parents=True, exist_ok=True)
                print(f"status page screenshot kept: {shutil.copy(shot, Path(keep) / shot.name)}")
        finally:
            bench.terminate()
            bench.communicate(timeout=30)


def test_status_json_has_every_panel(pgmux_factory: PgmuxStarter) -> None:
    mux = pgmux_factory(settings=metrics_settings())
    with psycopg.connect(mux.dsn(), autocommit=True) as conn:
        conn.execute("LISTEN ch")
        doc = json.loads(get(mux, "/status.json")[2])
    assert {"pools", "hosts", "pinned", "pinned_by_reason", "advice", "history"} <= set(doc)
    assert doc["pinned_by_reason"] == {"listen": 1} and doc["pinned"][0]["reason"] == "listen"
    pool = next(p for p in doc["pools"] if p["database"] == "testdb")
    assert pool["cl_active"] == 1 and pool["pool_mode"] == "transaction"
    if doc["advice"] is None:  # no advisor in this build: the page says the panel is absent
        with pytest.raises(ModuleNotFoundError):
            __import__("pgmux.pooling.advisor")


def test_status_page_with_two_workers_shows_the_whole_pooler(pgmux_factory: PgmuxStarter, tmp_path: Path) -> None:
    from test_workers import connect_on, start

    mux = start(pgmux_factory, 2, **metrics_settings(default_pool_size=2))
    page = url(mux, "/")
    with guard(mux), connect_on(mux, 0) as a, connect_on(mux, 1) as b, connect_on(mux, 1) as c:
        a.execute("LISTEN ch")
        b.execute("SELECT 1")
        c.execute("BEGIN")
        c.execute("SELECT 1")
        wait_for(lambda: len(json.loads(get(mux, "/status.json")[2])["history"]["t"]) >= 2, "history", 30)
        dom = _browser(tmp_path, "--dump-dom", page)
        cells = _pool_cells(dom)
        # 3 clients of two workers; both servers of the pool of 2 busy (one pinned by LISTEN, one in a transaction)
        assert cells[2:6] == ["3", "0", "2", "0"], cells
        workers = re.search(r'<span id="workers"[^>]*>(.*?)</span>', dom)
        assert workers is not None and workers.group(1) == "2 workers, whole pooler", dom[:3000]
        assert "C-" in dom.split('id="pinned"', 1)[1] and " w0<" in dom.split('id="pinned"', 1)[1]
        points = int(re.search(r'id="chart-servers"[^>]*data-points="(\d+)"', dom).group(1))  # type: ignore[union-attr]
        assert points >= 2
