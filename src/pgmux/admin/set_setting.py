"""The admin console's `SET key = value`, as a pure function of the current settings.

PgBouncer's SET runs the config file's parser on one key (libusual cf_set): a key a reload may change
takes the new value at once, a CF_NO_RELOAD key or an unknown key or a bad value fails with "SET
failed". pgmux does the same, with the same validation as the config file (config/build.py), and says
why it failed. The value lives until the next RELOAD (or SIGHUP), which re-reads the file and so puts
back the file's value or the default, as PgBouncer's reload does (libusual fill_defaults).

`changeable_settings()` is what SHOW CONFIG's `changeable` column says "yes" for; a unit test checks
that it is exactly the set of keys `set_setting` accepts.
"""

from __future__ import annotations

import dataclasses
import difflib

from pgmux.config.build import Raw, build_settings
from pgmux.config.settings import SETTINGS_INFO, Settings
from pgmux.errors import ConfigError, PgmuxError

# PostgreSQL's own codes for the same three mistakes on its SET.
UNKNOWN_KEY = "42704"  # undefined_object: unrecognized configuration parameter
RESTART_ONLY = "55P02"  # cant_change_runtime_param
BAD_VALUE = "22023"  # invalid_parameter_value


def changeable_settings() -> frozenset[str]:
    """Every setting SET (and RELOAD) can change on a running pgmux."""
    return frozenset(name for name, info in SETTINGS_INFO.items() if info.reloadable)


def set_setting(settings: Settings, key: str, value: str) -> tuple[Settings, list[str]]:
    """Settings with `key` set from the text `value`, plus warnings for the client (a NOTICE each).
    Raises PgmuxError (ERROR) naming why the SET is refused."""
    name = key.lower()  # PgBouncer looks keys up case-insensitively
    info = SETTINGS_INFO.get(name)
    if info is None:
        close = difflib.get_close_matches(name, list(SETTINGS_INFO), n=1)
        raise PgmuxError(f"SET failed: unknown setting {key!r}", sqlstate=UNKNOWN_KEY,
                         hint=f"did you mean {close[0]!r}?" if close else "SHOW CONFIG lists every setting")
    if not info.reloadable:
        raise PgmuxError(f"SET failed: {name} cannot be changed while pgmux runs; change it in the "
                         "configuration file and restart pgmux", sqlstate=RESTART_ONLY)
    raw = {name: Raw(value, None, None, name)}
    if name == "auth_type" and settings.auth_hba_file:  # build_settings checks auth_type = hba against it
        raw["auth_hba_file"] = Raw(settings.auth_hba_file, None, None, "auth_hba_file")
    try:
        parsed = getattr(build_settings(raw, []), name)
    except ConfigError as e:
        raise PgmuxError(f"SET failed: {e.message}", sqlstate=BAD_VALUE) from None
    new = dataclasses.replace(settings, **{name: parsed})
    if name == "auth_type" and parsed in ("hba", "cert") and parsed != settings.auth_type:
        # Their files and the TLS mode they need are checked when a configuration is loaded.
        raise PgmuxError(f"SET failed: auth_type = {parsed} is checked against its files when the configuration "
                         "is loaded: set it in the configuration file and RELOAD", sqlstate=BAD_VALUE)
    warnings = []
    if not info.implemented and parsed != info.default:
        warnings.append(f"{name} is accepted for PgBouncer compatibility but not implemented by pgmux: "
                        "the value is stored (SHOW CONFIG) and has no effect")
    return new, warnings
