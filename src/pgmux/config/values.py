"""Value parsers shared by the INI and TOML loaders.

Each parser takes either the text an INI file holds or the native value TOML gives, and returns the typed
value or raises ValueError with a reason; the caller adds file, line and key. Text follows PgBouncer's rules
(libusual's cf_set_int / cf_set_time_usec) so a pgbouncer.ini that PgBouncer accepts loads here too:
integers are C-style (`0777` is octal, `0x10` hex), times are non-negative seconds, possibly fractional,
without unit suffixes. A native string goes through the same text rules, so TOML may say `"0777"` as well.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterable

Parser = Callable[[object], object]

_C_INT = re.compile(r"[+-]?(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)")
_TRUE = frozenset({"1", "yes", "on", "true"})
_FALSE = frozenset({"0", "no", "off", "false"})


def _native_int(value: object) -> int | None:
    # bool is an int subclass; `port = true` is a mistake, not 1.
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


def parse_int(value: object, lo: int | None = 0, hi: int | None = None) -> int:
    n = _native_int(value)
    if n is None:
        if not isinstance(value, str):
            raise ValueError("expected an integer")
        text = value.strip()
        if not _C_INT.fullmatch(text):
            raise ValueError("expected an integer")
        sign = -1 if text.startswith("-") else 1
        digits = text.lstrip("+-")
        if digits[:2] in ("0x", "0X"):
            n = sign * int(digits[2:], 16)
        elif len(digits) > 1 and digits[0] == "0":
            n = sign * int(digits, 8)  # strtol base 0: a leading zero means octal (unix_socket_mode = 0777)
        else:
            n = sign * int(digits)
    if lo is not None and n < lo:
        raise ValueError(f"must be at least {lo}")
    if hi is not None and n > hi:
        raise ValueError(f"must be at most {hi}")
    return n


def integer(lo: int | None = 0, hi: int | None = None) -> Parser:
    return lambda value: parse_int(value, lo, hi)


def seconds(value: object) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a number of seconds")
    if isinstance(value, int | float):
        result = float(value)
    elif isinstance(value, str):
        try:
            result = float(value.strip())
        except ValueError:
            raise ValueError("expected a number of seconds") from None
    else:
        raise ValueError("expected a number of seconds")
    if not math.isfinite(result) or result < 0:
        raise ValueError("must be a finite number of seconds, 0 or more")
    return result


def boolean(value: object) -> bool:
    if isinstance(value, bool):
        return value
    n = _native_int(value)
    if n in (0, 1):
        return bool(n)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise ValueError("expected a boolean (0/1, yes/no, on/off, true/false)")


def text(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a string")
    return value


def optional_text(value: object) -> str | None:
    """PgBouncer treats an empty string as "not set" for file names and optional strings."""
    result = text(value)
    return result or None


def name_list(value: object) -> tuple[str, ...]:
    """A comma-separated list in INI (`admin_users = a, b`), a list of strings in TOML."""
    items: Iterable[object]
    if isinstance(value, str):
        items = value.split(",")
    elif isinstance(value, list | tuple):
        items = value
    else:
        raise ValueError("expected a comma-separated list or a list of strings")
    result = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError("expected a list of strings")
        if item.strip():
            result.append(item.strip())
    return tuple(result)


def choice(*allowed: str) -> Parser:
    """Case-insensitive like PgBouncer's cf_set_lookup; returns the canonical spelling."""

    def parse(value: object) -> str:
        if isinstance(value, str) and value.strip().lower() in allowed:
            return value.strip().lower()
        raise ValueError(f"must be one of: {', '.join(allowed)}")

    return parse


def listen_address(value: object) -> str | None:
    """metrics_listen: "HOST:PORT" ("[::1]:9127" for IPv6, "*:9127" for every address); "" is off.
    Returns the text as given, checked; runtime/web.py splits it."""
    result = optional_text(value)
    if result is None:
        return None
    split_listen(result)
    return result


def split_listen(text: str) -> tuple[str, int]:
    host, sep, port_text = text.strip().rpartition(":")
    if not sep or not host:
        raise ValueError("expected HOST:PORT, e.g. 127.0.0.1:9127")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError("an IPv6 address goes in brackets: [::1]:9127")
    return host, parse_int(port_text, 1, 65535)


POOL_MODES = ("session", "transaction", "statement")
AUTH_TYPES = ("any", "trust", "plain", "md5", "scram-sha-256", "cert", "hba", "ldap", "pam")
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")

pool_mode = choice(*POOL_MODES)
auth_type = choice(*AUTH_TYPES)
ssl_mode = choice(*SSL_MODES)
port = integer(1, 65535)
count = integer(0)  # sizes and limits: 0 means "none" or "unlimited", negatives are always a mistake


class _Auto(int):
    """pool_size = auto: an int (-1, never a real size) that prints as `auto` wherever a setting is shown."""

    def __str__(self) -> str:
        return "auto"

    __repr__ = __str__


AUTO = _Auto(-1)


def pool_size(value: object) -> int:
    """pool_size and default_pool_size: a count, or `auto` (pgmux chooses it: pooling/autosize.py)."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return AUTO
    try:
        return parse_int(value, 0)
    except ValueError as e:
        raise ValueError(f"{e} or auto" if "expected" in str(e) else str(e)) from None


def workers(value: object) -> int:
    """workers: a count of worker processes (1 to 256), or `auto` = the machine's cores (os.cpu_count())."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return max(1, min(256, os.cpu_count() or 1))
    try:
        return parse_int(value, 1, 256)
    except ValueError as e:
        raise ValueError(f"{e} or auto" if "expected" in str(e) else str(e)) from None


# -- host lists (issue 4): per-host ports, roles and weights, as INI text or TOML lists ------------------

ROLES = ("primary", "replica", "auto")
# The balancer's policy names (pgmux.routing.balancer.POLICIES); a unit test keeps the two in step.
BALANCE_POLICIES = ("least_outstanding", "round_robin", "weighted_random")

balance = choice(*BALANCE_POLICIES)


def _items(value: object, what: str) -> list[object]:
    if isinstance(value, str):
        parts: list[object] = [p.strip() for p in value.split(",")]
    elif isinstance(value, list | tuple):
        parts = list(value)
    else:
        parts = [value]
    if not parts or any(p == "" for p in parts):
        raise ValueError(f"expected a comma-separated list of {what} without empty items")
    return parts


def port_list(value: object) -> tuple[int, ...]:
    """`port=5432` or `port=5432,5433` (one per host, as libpq takes it); a TOML int or list of ints."""
    return tuple(parse_int(p, 1, 65535) for p in _items(value, "ports"))


def role_list(value: object) -> tuple[str, ...]:
    roles = tuple(str(r).strip().lower() if isinstance(r, str) else r for r in _items(value, "roles"))
    for role in roles:
        if role not in ROLES:
            raise ValueError(f"role {role!r} must be one of: {', '.join(ROLES)}")
    return roles  # type: ignore[return-value]  # checked above


def weight(value: object) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a weight (a number, 0 or more)")
    try:
        result = float(value.strip()) if isinstance(value, str) else float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"weight {value!r} is not a number") from None
    if not math.isfinite(result) or result < 0:
        raise ValueError(f"weight {value!r} must be a finite number, 0 or more")
    return result


def weight_list(value: object) -> tuple[float, ...]:
    return tuple(weight(w) for w in _items(value, "weights"))
