"""Session parameters a client asks for (startup packet, `options`), and how to apply them to a server.

Servers are shared, so a client's parameters are set on whichever server it gets, only where the
server's current value differs. GUC names are case-insensitive; the reported ones keep PostgreSQL's
spelling so the welcome message looks exactly like PostgreSQL's.
"""

from __future__ import annotations

import re
import shlex
from typing import TYPE_CHECKING, Any, Final

from pgmux.protocol.messages import parameter_status, query

if TYPE_CHECKING:
    from pgmux.session.client import ClientSession
    from pgmux.session.server import ServerSession

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


# Parameters PostgreSQL reports with ParameterStatus that every client has a value for. A client that
# did not ask for one gets the pool's default, so that a value another client set on a shared server
# is put back instead of leaking (PgBouncer's varcache does the same). Every reported parameter a
# client can SET must be here: pgmux follows those through ParameterStatus only, not through its
# SET tracking. (PostgreSQL 14+ reports default_transaction_read_only; session_authorization changes
# with SET SESSION AUTHORIZATION, which a superuser pool allows; the other reported ones,
# server_version, is_superuser, in_hot_standby..., cannot be SET.)
TRACKED = ("client_encoding", "DateStyle", "TimeZone", "IntervalStyle", "standard_conforming_strings",
           "application_name", "default_transaction_read_only", "session_authorization")

# A GUC name as PostgreSQL accepts it, custom ones ("myext.setting") included. Anything else is
# refused at login: names go into SET statements, so they must never carry SQL.
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?")


def valid_name(name: str) -> bool:
    return _NAME.fullmatch(name) is not None


# Logins repeat: most clients of a pool send the same startup packet and get the same welcome (with a
# connection per transaction, one login per transaction). What those two cost is worked out once per
# kind of login (keyed by value; bounded, and forgotten at once when full).
_MAX_CACHED = 256
_STARTUP: dict[tuple[tuple[tuple[str, str], ...], tuple[str, ...]], dict[str, str]] = {}
_LAST_STARTUP: Final[list[Any]] = [None, None, None]  # the last (raw, ignore, found) of startup_params


def startup_params(raw: dict[str, str], ignore: tuple[str, ...]) -> dict[str, str]:
    """The parameters a client's startup packet asks for (a new dict: the caller's to change). Raises
    ValueError naming a bad one."""
    last = _LAST_STARTUP
    if last[0] is raw and last[1] is ignore:  # the same packet as the last login (client_login._PACKETS
        return dict(last[2])  # shares its dict): no key to build
    key = (tuple(raw.items()), ignore)
    found = _STARTUP.get(key)
    if found is None:
        found = _startup_params(raw, ignore)  # (raises before anything is kept)
        if len(_STARTUP) >= _MAX_CACHED:
            _STARTUP.clear()
        _STARTUP[key] = found
    last[0], last[1], last[2] = raw, ignore, found  # (held: the identity test above stays sound)
    return dict(found)


def _startup_params(raw: dict[str, str], ignore: tuple[str, ...]) -> dict[str, str]:
    ignored = {i.lower() for i in ignore}
    out: dict[str, str] = {}
    for k, v in raw.items():
        if k in NOT_PARAMS or k.lower() in ignored:
            continue
        out[canon(k)] = v
    if "options" in raw and "options" not in ignored:
        out.update(parse_options(raw["options"]))
    for k in out:
        if not valid_name(k):
            raise ValueError(k)
    return out


def quote_literal(value: str) -> str:
    """PostgreSQL's quote_literal: safe whatever standard_conforming_strings says, and ASCII whatever
    `value` holds (non-ASCII characters as E'' Unicode escapes): PostgreSQL converts a whole query string
    from the session's client_encoding as it arrives, and a pooled server may be in any client's."""
    if not value.isascii():
        return _escaped_literal(value)
    q = "'" + value.replace("'", "''") + "'"
    if "\\" in value:
        return "E" + q.replace("\\", "\\\\")
    return q


def _escaped_literal(value: str) -> str:
    out: list[str] = []
    for ch in value:
        o = ord(ch)
        if ch == "'":
            out.append("''")
        elif ch == "\\":
            out.append("\\\\")
        elif o < 0x80 or 0xD800 <= o <= 0xDFFF:  # (a lone surrogate: a byte that was not UTF-8, sent as it came)
            out.append(ch)
        elif o <= 0xFFFF:
            out.append(f"\\u{o:04x}")
        else:
            out.append(f"\\U{o:08x}")
    return "E'" + "".join(out) + "'"


# GUCs whose elements PostgreSQL quotes as identifiers when SET gives them as string literals
# (GUC_LIST_QUOTE): `SET search_path = 'a, b'` would name one schema "a, b". Their stored text (as
# SHOW prints it, or as a startup option gives it) goes through set_config, which reads it as a list.
_LIST_QUOTE = frozenset({"search_path", "temp_tablespaces", "session_preload_libraries",
                         "local_preload_libraries"})


def _set(name: str, value: str) -> str:
    if name in _LIST_QUOTE and ("," in value or '"' in value):
        return f"SELECT pg_catalog.set_config({quote_literal(name)}, {quote_literal(value)}, false)"
    return f"SET {name} = {quote_literal(value)}"


# A pool's canonical spellings learnt from its servers are kept up to this many (then forgotten at once).
MAX_KNOWN = 4096


_PLAIN_NAMES: Final[dict[str, bool]] = {}  # application_name -> printable ASCII? (short ones, 1024 kept)


def _printable_ascii(v: str) -> bool:
    """str.isascii() and str.isprintable(): two Python method calls from compiled code, so the answer
    for a name is kept (most clients of a pool send the same one, often the same string object)."""
    known = _PLAIN_NAMES.get(v)
    if known is None:
        known = v.isascii() and v.isprintable()
        if len(v) <= 64:
            if len(_PLAIN_NAMES) >= 1024:  # a bound, against clients that send ever new names
                _PLAIN_NAMES.clear()
            _PLAIN_NAMES[v] = known
    return known


def probe_pairs(params: dict[str, str], shown: dict[str, str],
                known: dict[tuple[str, str], str]) -> list[tuple[str, str]]:
    """The reported parameters of a client's startup packet whose value as PostgreSQL would report it
    (its ParameterStatus) is not known yet: a server must apply them first (`probe_sql`).

    PostgreSQL reports its own spelling (`latin1` -> `LATIN1`, `utf-8` -> `UTF8`, `sql` -> `SQL, MDY`,
    `europe/paris` -> `Europe/Paris`), and drivers compare it. Values the pool's servers already
    taught us (`known`, by name and value as the client spelt it) are put in `params` in their
    canonical form here; a value equal to the pool's own needs nothing, and neither does a printable
    ASCII application_name (PostgreSQL keeps it as it is)."""
    out: list[tuple[str, str]] = []
    for k, v in params.items():
        current = shown.get(k)
        if current is None or v == current:
            continue  # not reported (no ParameterStatus to get right), or the pool's value already
        spelt = known.get((k, v))
        if spelt is not None:
            params[k] = spelt
        elif k == "application_name" and _printable_ascii(v):
            continue
        else:
            out.append((k, v))
    return out


def probe_sql(pairs: list[tuple[str, str]]) -> str:
    """Apply `pairs` as a startup packet would: from the server's session defaults (RESET first: a
    partial DateStyle such as `SQL` keeps the order of the value it starts from). One query string,
    so one implicit transaction: a value PostgreSQL refuses leaves the server as it was."""
    return ";".join(f"RESET {k};{_set(k, v)}" for k, v in pairs)


_WELCOME: dict[tuple[int, int, tuple[tuple[str, str], ...]],
               tuple[dict[str, str], tuple[str, ...], dict[str, str], bytes, tuple[tuple[str, str], ...]]] = {}
_LAST_WELCOME: Final[list[Any]] = [None]  # the entry welcome() returned last, with its params: (entry, params)


def welcome(shown: dict[str, str], params: dict[str, str],
            tracked: tuple[str, ...]) -> tuple[dict[str, str], bytes, tuple[tuple[str, str], ...]]:
    """What a client is welcomed with, given the pool's reported parameters (`shown`), the client's own
    (`params`, in PostgreSQL's spelling by now) and the `tracked` ones: (its parameters after login,
    `params` with the pool's value of each tracked one it did not ask for; the ParameterStatus
    messages, the pool's values with the client's own in their place; the first's items as a tuple,
    for catch_up's comparisons). The first and third are shared between equal logins: read them,
    never change them (ClientSession.initial).

    Kept per pool (`shown` is the pool's dict, made once and never changed: the entry holds it, so
    its id names it) and kind of login; the last one is compared first, by its dicts' identity and
    `params`' value, with no key to build (most logins repeat the one before)."""
    last = _LAST_WELCOME[0]
    if last is not None:
        hit, seen = last
        if hit[0] is shown and hit[1] is tracked and seen == params:
            return hit[2], hit[3], hit[4]
    key = (id(shown), id(tracked), tuple(params.items()))
    hit = _WELCOME.get(key)
    if hit is None or hit[0] is not shown or hit[1] is not tracked:
        after = dict(params)
        for k in tracked:
            if k not in after and k in shown:
                after[k] = shown[k]  # the pool's default, restored if another client changed it
        block = b"".join(parameter_status(k, params.get(k, v)) for k, v in shown.items())
        if len(_WELCOME) >= _MAX_CACHED:
            _WELCOME.clear()
        hit = _WELCOME[key] = (shown, tracked, after, block, tuple(after.items()))
    _LAST_WELCOME[0] = (hit, dict(params))  # (a copy: the caller's dict may change later)
    return hit[2], hit[3], hit[4]


def sync_sql(wanted: dict[str, str], current: dict[str, str], extra: set[str] | None = None) -> str | None:
    """The statements that bring a server to `wanted`, or None when nothing differs.

    `extra`: names of unreported parameters an earlier client had set on this server; those the
    new client did not ask for are RESET (and dropped from `extra` and `current`)."""
    sets = [_set(k, v) for k, v in wanted.items() if current.get(k) != v]
    if extra:
        for k in [k for k in extra if k not in wanted]:
            sets.append(f"RESET {k}")
            extra.discard(k)
            current.pop(k, None)
    return ";".join(sets) if sets else None


def catch_up(c: ClientSession, server: ServerSession) -> list[bytes | memoryview] | None:
    """The Query that brings `server`'s parameters to the client's, first of what the client sends
    it on attach (its reply swallowed); None when they are equal already."""
    # Clients of one pool mostly ask for the same parameters. Equal sets share one tuple (App.sigs),
    # so when this server was last brought to ours and nothing changed either since, `is` says so.
    sig = c.sig
    if sig is None:
        sigs = c.sigs
        if len(sigs) >= 1024:  # a bound, against clients that SET ever new values
            sigs.clear()
        sig = tuple(c.params.items())
        sig = c.sig = sigs.setdefault(sig, sig)
    out: list[bytes | memoryview] | None = None
    if server.sig is not sig and server.sig != sig:
        sql = sync_sql(c.params, server.params, server.extra)
        if sql is not None:
            server.swallow += 1
            server.swallow_error = None
            out = [query(sql)]
            server.params.update(c.params)
            reported = c.logged_in_pool().server_params or {}
            server.extra.update(k for k in c.params if k not in reported)
        server.sig = sig
    return out


def with_client_host(app_name: str | None, addr: str, port: int, is_unix: bool, listen_port: int) -> str:
    """application_name_add_host: ` - host:port` of the client appended, as PgBouncer's set_appname() and
    pga_details() write it ("app" when the client gave no name; IPv6 in brackets; a Unix socket client
    as `unix:<listen_port>`)."""
    if is_unix:
        where = f"unix:{listen_port}"
    elif ":" in addr:
        where = f"[{addr}]:{port}"
    else:
        where = f"{addr}:{port}"
    return f"{app_name or 'app'} - {where}"
