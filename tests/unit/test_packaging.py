"""The operator files in etc/: the systemd unit and the logrotate example say what pgmux does."""

from __future__ import annotations

from pathlib import Path

ETC = Path(__file__).resolve().parents[2] / "etc"


def _unit() -> dict[str, str]:
    keys: dict[str, str] = {}
    for line in (ETC / "pgmux.service").read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            keys[key.strip()] = value.strip()
    return keys


def test_systemd_unit() -> None:
    unit = _unit()
    assert unit["Type"] == "notify"  # pgmux sends READY=1 (net/sdnotify.py)
    assert unit["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert unit["KillSignal"] == "SIGINT"  # SHUTDOWN WAIT_FOR_SERVERS: bounded, unlike SIGTERM
    assert unit.get("User") not in (None, "root")  # pgmux refuses root
    assert unit["ExecStart"].split()[0].endswith("pgmux")


def test_logrotate_uses_create_and_sighup() -> None:
    text = (ETC / "pgmux.logrotate").read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    assert any(ln.startswith("create ") for ln in lines)
    assert "copytruncate" not in lines
    assert any("reload" in ln or "-HUP" in ln for ln in lines)
