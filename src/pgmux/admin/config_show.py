"""SHOW CONFIG rows from any settings dataclass.

Written against dataclasses in general, not pgmux's config model, so the two can evolve apart: every
flat field becomes one row (key, value, default, changeable), sorted by key as PgBouncer lists them.
Values print as PgBouncer prints them: bools as 1/0, durations as (fractional) seconds, lists
comma-joined, an unset value as NULL. A field's key is its name unless its metadata says
`{"key": "ini_name"}`. Nested dataclasses and mappings (pgmux-only sections such as replica sets)
are not settings PgBouncer has and are left out.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import os
from collections.abc import Collection, Mapping

from pgmux.admin.rows import ConfigRow


def format_setting(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):  # before int: bool is an int
        return "1" if value else "0"
    if isinstance(value, enum.Enum):
        return format_setting(value.value)
    if isinstance(value, datetime.timedelta):
        return format_setting(value.total_seconds())
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, int | str):
        return str(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, frozenset | set):
        return ",".join(sorted(format_setting(v) or "" for v in value))
    if isinstance(value, tuple | list):
        return ",".join(format_setting(v) or "" for v in value)
    return str(value)


def _is_flat(value: object) -> bool:
    is_record = dataclasses.is_dataclass(value) and not isinstance(value, type)
    return not (is_record or isinstance(value, Mapping))


def _default(f: dataclasses.Field[object], defaults: object) -> tuple[bool, object]:
    """(known, value) of a field's default: from `defaults` if it is an instance, else the class."""
    if defaults is not None and not isinstance(defaults, type):
        return True, getattr(defaults, f.name)
    if f.default is not dataclasses.MISSING:
        return True, f.default
    if f.default_factory is not dataclasses.MISSING:
        return True, f.default_factory()
    return False, None


def config_rows(settings: object, defaults: object = None,
                changeable: Collection[str] = frozenset()) -> list[ConfigRow]:
    """settings: a dataclass instance. defaults: an instance holding the defaults, or None (or the
    class) to use the fields' declared defaults. changeable: keys (or field names) that RELOAD/SET
    may change; the others show 'no'."""
    if not dataclasses.is_dataclass(settings) or isinstance(settings, type):
        raise TypeError(f"config_rows needs a dataclass instance, not {type(settings).__name__}")
    rows = []
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if not _is_flat(value):
            continue
        key = str(f.metadata.get("key", f.name))
        known, default = _default(f, defaults)
        rows.append(ConfigRow(
            key=key,
            value=format_setting(value),
            default=format_setting(default) if known and _is_flat(default) else None,
            changeable="yes" if key in changeable or f.name in changeable else "no",
        ))
    rows.sort(key=lambda r: r.key)
    return rows
