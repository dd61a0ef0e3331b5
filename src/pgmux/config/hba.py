"""auth_hba_file: PgBouncer's subset of pg_hba.conf, parsed into rules and matched first-wins.

Supported, as PgBouncer documents it:
- record types `local`, `host`, `hostssl`, `hostnossl`;
- database: `all`, `sameuser`, `replication` (replication connections only), names, comma lists,
  `@file` (names read from a file, relative to the HBA file's directory);
- user: `all`, names, comma lists, `@file` (`+group` needs the server's role membership: refused);
- address: IPv4 and IPv6 with a CIDR suffix or a separate mask, `all`; `samehost`/`samenet` and host
  names are refused (PgBouncer does not have them either);
- methods: trust, reject, password, md5, scram-sha-256, cert, peer. Options (`map=`, ...) are refused.

A line pgmux cannot honour stops loading with file:line, instead of becoming a rule that matches
more or less than written. No matching line means the connection is rejected, as in PostgreSQL.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass

from pgmux.errors import ConfigError

CONN_TYPES = ("local", "host", "hostssl", "hostnossl")
METHODS = ("trust", "reject", "password", "md5", "scram-sha-256", "cert", "peer")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_TOKEN = re.compile(r'"((?:[^"]|"")*)"|([^\s,"]+)|(,)')


@dataclass(frozen=True)
class HbaRule:
    conn_type: str
    databases: frozenset[str]  # lower-case keywords stand for themselves only when unquoted: see _KEY
    users: frozenset[str]
    network: Network | None  # None: local, or `all`
    method: str
    line: int

    def matches(self, *, is_unix: bool, tls: bool, database: str, user: str, addr: str,
                replication: bool = False) -> bool:
        if is_unix != (self.conn_type == "local"):
            return False
        if (self.conn_type == "hostssl" and not tls) or (self.conn_type == "hostnossl" and tls):
            return False
        if not _db_matches(self.databases, database, user, replication):
            return False
        if _KEY + "all" not in self.users and user not in self.users:
            return False
        if self.network is not None:
            try:
                ip = ipaddress.ip_address(addr)
            except ValueError:
                return False
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None \
                    and isinstance(self.network, ipaddress.IPv4Network):
                ip = ip.ipv4_mapped
            if ip.version != self.network.version or ip not in self.network:
                return False
        return True


# Keywords are kept with a prefix no name can have after parsing, so `"all"` (quoted: a database called
# all) and `all` (the keyword) stay different, as in PostgreSQL.
_KEY = "\x00"


def _db_matches(dbs: frozenset[str], database: str, user: str, replication: bool) -> bool:
    if replication:  # replication connections match only `replication`, as in PostgreSQL
        return _KEY + "replication" in dbs
    return (_KEY + "all" in dbs or database in dbs or (_KEY + "sameuser" in dbs and database == user))


def _tokens(text: str, path: str, lineno: int) -> list[list[tuple[str, bool]]]:
    """Whitespace-separated fields, each a list of (value, quoted) items (comma lists)."""
    fields: list[list[tuple[str, bool]]] = []
    pos, joining = 0, False
    text = text.split("#", 1)[0] if '"' not in text else _strip_comment(text)
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1  # a comma before the blank keeps the list going
        if pos >= len(text):
            break
        m = _TOKEN.match(text, pos)
        if m is None:
            raise ConfigError(f"cannot parse {text[pos:]!r}", file=path, line=lineno)
        pos = m.end()
        if m.group(3):  # a comma continues the current field's list
            joining = True
            continue
        item = (m.group(1).replace('""', '"'), True) if m.group(1) is not None else (m.group(2), False)
        if joining and fields:
            fields[-1].append(item)
        else:
            fields.append([item])
        joining = False
    return fields


def _strip_comment(text: str) -> str:
    quoted = False
    for i, ch in enumerate(text):
        if ch == '"':
            quoted = not quoted
        elif ch == "#" and not quoted:
            return text[:i]
    return text


def _names(items: list[tuple[str, bool]], keywords: tuple[str, ...], base: str, path: str,
           lineno: int, what: str) -> frozenset[str]:
    out: set[str] = set()
    for value, quoted in items:
        if not quoted and value in keywords:
            out.add(_KEY + value)
        elif not quoted and value.startswith("@"):
            out.update(_include(os.path.join(base, value[1:]), path, lineno))
        elif not quoted and value.startswith("+"):
            raise ConfigError(f"{what} {value!r}: group membership (+group) is not supported", file=path,
                              line=lineno)
        elif not quoted and value in ("samerole", "samegroup", "replication"):
            raise ConfigError(f"{what} keyword {value!r} is not supported here", file=path, line=lineno)
        else:
            out.add(value)
    return frozenset(out)


def _include(file: str, path: str, lineno: int) -> set[str]:
    try:
        with open(file, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as e:
        raise ConfigError(f"cannot read @file {file}: {e.strerror or e}", file=path, line=lineno) from None
    names: set[str] = set()
    for n, raw in enumerate(text.splitlines(), start=1):
        for field in _tokens(raw, file, n):
            names.update(v for v, _ in field)
    return names


def _network(fields: list[list[tuple[str, bool]]], path: str, lineno: int) -> tuple[Network | None, int]:
    """The address field (and a mask field after it); returns the network and the fields used."""
    addr = fields[0][0][0]
    if addr == "all":
        return None, 1
    if addr in ("samehost", "samenet") or not re.match(r"^[0-9a-fA-F:.]+(/\d+)?$", addr):
        raise ConfigError(f"address {addr!r}: only IP addresses with a mask or CIDR suffix, or all, are "
                          "supported (no host names, samehost or samenet)", file=path, line=lineno)
    try:
        if "/" in addr:
            return ipaddress.ip_network(addr, strict=False), 1
        if len(fields) < 3:
            raise ConfigError(f"address {addr!r} needs a /prefix or a mask", file=path, line=lineno)
        mask = fields[1][0][0]
        return ipaddress.ip_network(f"{addr}/{mask}", strict=False), 2
    except ValueError as e:
        raise ConfigError(f"invalid address or mask: {e}", file=path, line=lineno) from None


def parse_hba(text: str, path: str) -> tuple[HbaRule, ...]:
    base = os.path.dirname(os.path.abspath(path))
    rules: list[HbaRule] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        fields = _tokens(raw, path, lineno)
        if not fields:
            continue
        conn_type = fields[0][0][0]
        if conn_type not in CONN_TYPES:
            raise ConfigError(f"record type {conn_type!r} is not supported (use {', '.join(CONN_TYPES)})",
                              file=path, line=lineno)
        need = 4 if conn_type == "local" else 5
        if len(fields) < need:
            raise ConfigError(f"a {conn_type} line needs {need} fields", file=path, line=lineno)
        databases = _names(fields[1], ("all", "sameuser", "replication"), base, path, lineno, "database")
        users = _names(fields[2], ("all",), base, path, lineno, "user")
        network, used = (None, 0) if conn_type == "local" else _network(fields[3:], path, lineno)
        rest = fields[3 + used:]
        method = rest[0][0][0] if rest else ""
        if method not in METHODS:
            raise ConfigError(f"authentication method {method!r} is not supported (use {', '.join(METHODS)})",
                              file=path, line=lineno)
        if len(rest) > 1:
            raise ConfigError(f"options after the method are not supported: {rest[1][0][0]!r}", file=path,
                              line=lineno)
        if method == "peer" and conn_type != "local":
            raise ConfigError("peer authentication works only on local (Unix socket) lines", file=path,
                              line=lineno)
        if method == "cert" and conn_type in ("local", "hostnossl"):
            raise ConfigError(f"cert authentication needs TLS, which a {conn_type} line never has", file=path,
                              line=lineno)
        rules.append(HbaRule(conn_type, databases, users, network, method, lineno))
    return tuple(rules)


def load_hba(path: str) -> tuple[HbaRule, ...]:
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as e:
        raise ConfigError(f"cannot read auth_hba_file: {e.strerror or e}", file=path) from None
    return parse_hba(text, path)


def first_match(rules: tuple[HbaRule, ...], *, is_unix: bool, tls: bool, database: str, user: str,
                addr: str, replication: bool = False) -> HbaRule | None:
    for rule in rules:
        if rule.matches(is_unix=is_unix, tls=tls, database=database, user=user, addr=addr,
                        replication=replication):
            return rule
    return None
