"""Configuration: one typed, frozen model, loaded from pgbouncer.ini (+ auth_file) or pgmux.toml.

`load_config` picks the loader by suffix; `diff` compares two loads into a ReloadPlan. The package is pure:
it reads files but opens no sockets and keeps no global state, so every load returns a fresh Config.
"""

from __future__ import annotations

from pgmux.config.diff import ReloadPlan, diff
from pgmux.config.ini import load_ini
from pgmux.config.model import Config, DatabaseConfig, HostConfig, Settings, UserConfig
from pgmux.config.settings import SETTINGS_INFO, SettingInfo
from pgmux.config.toml import load_toml
from pgmux.config.userlist import load_userlist, parse_userlist

__all__ = [
    "SETTINGS_INFO",
    "Config",
    "DatabaseConfig",
    "HostConfig",
    "ReloadPlan",
    "SettingInfo",
    "Settings",
    "UserConfig",
    "diff",
    "load_config",
    "load_ini",
    "load_toml",
    "load_userlist",
    "parse_userlist",
]


def load_config(path: str) -> Config:
    """Load `path`: a `.toml` file as pgmux.toml, anything else as pgbouncer.ini. Raises ConfigError."""
    if path.lower().endswith(".toml"):
        return load_toml(path)
    return load_ini(path)
