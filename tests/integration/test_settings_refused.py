"""Settings pgmux refuses stop the process at start-up with file:line: key and a non-zero exit, and a
reload that asks for them is refused while the running configuration keeps serving. Settings it
ignores are named in one warning at start-up."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from helpers import wait_for

from conftest import PgmuxStarter


@pytest.mark.parametrize(("line", "key"), [
    ("client_tls13_ciphers = TLS_AES_128_GCM_SHA256", "client_tls13_ciphers"),
    ("auth_ident_file = /etc/pgbouncer/ident.conf", "auth_ident_file"),
    ("auth_type = pam", "auth_type"),
])
def test_start_up_refused(tmp_path: Path, line: str, key: str) -> None:
    ini = tmp_path / "pgbouncer.ini"
    ini.write_text(f"[databases]\napp = host=127.0.0.1\n[pgbouncer]\nlisten_addr = 127.0.0.1\n{line}\n")
    out = subprocess.run([sys.executable, "-m", "pgmux", str(ini)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert out.stderr.startswith(f"pgmux: configuration error: {ini}:5: {key}: {line.split(' = ')[1]} is refused: ")


def test_reload_that_asks_for_a_refused_setting_is_refused(pgmux_factory: PgmuxStarter) -> None:
    proc = pgmux_factory()
    proc.admin("SHOW VERSION")  # served: pgmux is past start-up and handles SIGHUP (before, it would end it)
    proc.rewrite(settings={"auth_type": "pam"})
    proc.reload()
    wait_for(lambda: "reload failed, keeping the old configuration" in proc.log(), "the refused reload")
    assert "auth_type: pam is refused" in proc.log()
    with psycopg.connect(proc.dsn()) as conn:  # still serving, with the old authentication
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert proc.admin_dicts("SHOW CONFIG") and any(
        r["key"] == "auth_type" and r["value"] == "trust" for r in proc.admin_dicts("SHOW CONFIG"))


def test_ignored_settings_are_named_at_start_up(pgmux_factory: PgmuxStarter) -> None:
    proc = pgmux_factory(settings={"sbuf_loopcnt": 10, "dns_max_ttl": 60})
    wait_for(lambda: "accepted for PgBouncer compatibility" in proc.log(), "the start-up warning")
    (line,) = [ln for ln in proc.log().splitlines() if "accepted for PgBouncer compatibility" in ln]
    assert " WARNING " in line
    for name in ("sbuf_loopcnt", "dns_max_ttl"):
        assert name in line
    with psycopg.connect(proc.dsn()) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_reload_names_ignored_settings_too(pgmux_factory: PgmuxStarter) -> None:
    proc = pgmux_factory()
    proc.admin("SHOW VERSION")  # served: past start-up, SIGHUP is handled
    assert "accepted for PgBouncer compatibility" not in proc.log()
    proc.rewrite(settings={"sbuf_loopcnt": 3})
    proc.reload()
    wait_for(lambda: "configuration reloaded" in proc.log(), "the reload")
    (line,) = [ln for ln in proc.log().splitlines() if "accepted for PgBouncer compatibility" in ln]
    assert " WARNING " in line and "sbuf_loopcnt" in line
