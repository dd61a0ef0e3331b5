"""Session parameters a client asks for (startup packet, `options`), and how to apply them to a server.

Servers are shared, so a client's parameters are set on whichever server it gets, only where the
server's current value differs. GUC names are case-insensitive; the reported ones keep PostgreSQL's
spelling so the welcome message looks exactly like PostgreSQL's.
"""

from __future__ import annotations

import shlex

_CANON = {"datestyle": "DateStyle", "timezone": "TimeZone", "intervalstyle": "IntervalStyle"}

# Startup keys that are not parameters.
NOT_PARAMS = frozenset({"user", "database", "replication", "options"})


def canon(name: str) -> str:
    low = name.lower()
    return _CANON.get(low, low)


def parse_options(options: str) -> dict[str, str]:
    """`options=-c a=b --c=d` as libpq passes it. Backslash escapes a space, as PostgreSQL's
    pg_split_opts does; shlex in posix mode treats backslash the same way."""
    out: dict[str, str] = {}
    words = shlex.split(options, posix=True)
    i = 0
    while i < len(words):
        w = words[i]
        kv: str | None = None
        if w == "-c" and i + 1 < len(words):
            kv = words[i + 1]
            i += 1
        elif w.startswith("-c"):
            kv = w[2:]
        elif w.startswith("--"):
            kv = w[2:]
        if kv and "=" in kv:
            k, v = kv.split("=", 1)
            out[canon(k.replace("-", "_"))] = v
        i += 1
    return out


def startup_params(raw: dict[str, str], ignore: tuple[str, ...]) -> dict[str, str]:
    ignored = {i.lower() for i in ignore}
    out: dict[str, str] = {}
    for k, v in raw.items():
        if k in NOT_PARAMS or k.lower() in ignored:
            continue
        out[canon(k)] = v
    if "options" in raw and "options" not in ignored:
        out.update(parse_options(raw["options"]))
    return out


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def sync_sql(wanted: dict[str, str], current: dict[str, str]) -> str | None:
    """The SET statements that bring a server to `wanted`, or None when nothing differs."""
    sets = [f"SET {k} = {quote_literal(v)}" for k, v in wanted.items() if current.get(k) != v]
    return ";".join(sets) if sets else None
