"""pgbouncer.ini reader: the syntax PgBouncer's loader accepts, nothing more.

Lines are `[section]`, `key = value`, `%include path`, or comments starting with `;` or `#` (only at the
start of a line: `;` later in a value is part of the value, as in PgBouncer). Keys are letters, digits and
`_.-*`, or a double-quoted name (`"my db"`, `""` for a quote) for databases. Values run to the end of
the line, trimmed. Database and user lines hold a connection string: `key=value key2='quoted value'`,
with `''` for a quote inside quotes.

`%include path`: PgBouncer takes a relative path from the current directory. pgmux looks next to the
including file first, then falls back to the current directory, so both layouts a PgBouncer user may have
keep working while a config that travels with its includes does not depend on where pgmux was started.
The current section carries into and out of an included file, as it does in PgBouncer.

Host lists keep PgBouncer's spelling (`host=a,b,c`, with `load_balance_hosts`). pgmux adds per-host
ports the libpq way (`port=5432,5433`: one for all hosts, or one per host) and db-line keys prefixed
`pgmux_`: `pgmux_roles=primary,replica`, `pgmux_weights=1,2`, `pgmux_read_write_split=1`,
`pgmux_balance=round_robin`, `pgmux_max_lag_bytes=...`, `pgmux_max_lag_seconds=...`,
`pgmux_read_your_writes=1`, `pgmux_write_functions='a,b'`, `pgmux_pin_mode=refuse`. build.py validates
them for both formats.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from pgmux.config.build import Raw, build_database, build_settings, build_user, finish, read_auth_file
from pgmux.config.model import Config, DatabaseConfig, UserConfig
from pgmux.errors import ConfigError

SECTIONS = ("pgbouncer", "databases", "users", "peers")
MAX_INCLUDE_DEPTH = 16
_KEY = re.compile(r"[A-Za-z0-9_.\-*]+")


@dataclass
class _Entry:
    key: str
    value: str
    file: str
    line: int


@dataclass
class _Parsed:
    sections: dict[str, list[_Entry]] = field(default_factory=lambda: {s: [] for s in SECTIONS})


def parse_connstr(text: str) -> list[tuple[str, str]]:
    """Split `host=a port=5432 connect_query='SELECT 1'` into pairs; ValueError on bad syntax."""
    pairs: list[tuple[str, str]] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            return pairs
        start = i
        while i < n and text[i] != "=" and not text[i].isspace():
            i += 1
        key = text[start:i]
        while i < n and text[i].isspace():
            i += 1
        if not key or i >= n or text[i] != "=":
            raise ValueError(f"expected key=value at {text[start:].split()[0]!r}")
        i += 1
        while i < n and text[i].isspace():
            i += 1
        if i < n and text[i] == "'":
            chars: list[str] = []
            i += 1
            while True:
                if i >= n:
                    raise ValueError(f"unterminated quoted value for {key!r}")
                if text[i] == "'":
                    if text.startswith("'", i + 1):
                        chars.append("'")
                        i += 2
                        continue
                    i += 1
                    break
                chars.append(text[i])
                i += 1
            if i < n and not text[i].isspace():
                raise ValueError(f"expected a space after the quoted value of {key!r}")
            value = "".join(chars)
        else:
            start = i
            while i < n and not text[i].isspace():
                i += 1
            value = text[start:i]
        if not value:
            raise ValueError(f"empty value for {key!r}")
        pairs.append((key, value))


def _read_key(line: str) -> tuple[str, str] | None:
    """Return (key, rest after the key) for a `key = value` line, or None when it is not one."""
    if line.startswith('"'):
        out, i = [], 1
        while i < len(line):
            if line[i] == '"':
                if line.startswith('"', i + 1):
                    out.append('"')
                    i += 2
                    continue
                return ("".join(out), line[i + 1:]) if out else None
            out.append(line[i])
            i += 1
        return None
    match = _KEY.match(line)
    return (match.group(), line[match.end():]) if match else None


class _Reader:
    def __init__(self) -> None:
        self.parsed = _Parsed()
        self.section: str | None = None
        self.stack: list[str] = []

    def read(self, path: str, origin: tuple[str, int] | None = None) -> None:
        real = os.path.realpath(path)
        # Errors about a file name the %include line that named it; the main file names itself.
        file, at = origin if origin else (path, None)
        if real in self.stack:
            raise ConfigError(f"%include loop: {path} is already being read", file=file, line=at)
        if len(self.stack) >= MAX_INCLUDE_DEPTH:
            raise ConfigError(f"%include nested deeper than {MAX_INCLUDE_DEPTH}", file=file, line=at)
        try:
            with open(path, encoding="utf-8-sig") as fh:
                text = fh.read()
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror or exc}", file=file, line=at) from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path} is not valid UTF-8", file=file, line=at) from None
        self.stack.append(real)
        for lineno, line in enumerate(text.splitlines(), start=1):
            self._line(line.strip(), path, lineno)
        self.stack.pop()

    def _line(self, line: str, file: str, lineno: int) -> None:
        if not line or line[0] in ";#":
            return
        if line.startswith("%include"):
            target = line[len("%include"):].strip()
            if not target or not line[len("%include")].isspace():
                raise ConfigError("%include needs a file name", file=file, line=lineno)
            self.read(_resolve_include(target, file), (file, lineno))
            return
        if line.startswith("["):
            end = line.find("]")
            rest = line[end + 1:].strip() if end > 0 else ""
            if end < 0 or (rest and rest[0] not in ";#"):
                raise ConfigError(f"bad section header {line!r}", file=file, line=lineno)
            name = line[1:end].strip()
            if name not in SECTIONS:
                raise ConfigError(f"unknown section [{name}]", file=file, line=lineno, key=name)
            self.section = name
            return
        pair = _read_key(line)
        if pair is None or not pair[1].lstrip().startswith("="):
            raise ConfigError(f"syntax error, expected key = value: {line!r}", file=file, line=lineno)
        key, rest = pair
        if self.section is None:
            raise ConfigError("setting outside of any [section]", file=file, line=lineno, key=key)
        value = rest.lstrip()[1:].strip()
        self.parsed.sections[self.section].append(_Entry(key, value, file, lineno))


def _resolve_include(target: str, including: str) -> str:
    if os.path.isabs(target):
        return target
    beside = os.path.join(os.path.dirname(including), target)
    return beside if os.path.exists(beside) or not os.path.exists(target) else target


def _line_items(entry: _Entry, section: str) -> dict[str, Raw]:
    try:
        pairs = parse_connstr(entry.value)
    except ValueError as exc:
        raise ConfigError(f"syntax error in connection string: {exc}", file=entry.file, line=entry.line,
                          key=f"{section}.{entry.key}") from None
    return {k: Raw(val, entry.file, entry.line, f"{section}.{entry.key}.{k}") for k, val in pairs}


def load_ini(path: str) -> Config:
    reader = _Reader()
    reader.read(path)
    sections = reader.parsed.sections
    warnings: list[str] = []
    ignored: list[str] = []
    raw = {e.key: Raw(e.value, e.file, e.line, e.key) for e in sections["pgbouncer"]}
    settings = build_settings(raw, ignored, warnings)
    databases: list[DatabaseConfig] = [
        build_database(e.key, _line_items(e, "databases"), e.file, e.line, ignored)
        for e in sections["databases"]
    ]
    users: list[UserConfig] = [
        build_user(e.key, _line_items(e, "users"), e.file, e.line, ignored) for e in sections["users"]
    ]
    if sections["peers"]:
        ignored.append("[peers]")
    userlist = read_auth_file(settings, warnings)
    return finish(settings, databases, users, userlist, path, warnings, ignored)
