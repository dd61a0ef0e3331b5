"""auth_hba_file: parsing PgBouncer's subset of pg_hba.conf, and first-match-wins."""

from __future__ import annotations

from pathlib import Path

import pytest

from pgmux.config.hba import first_match, load_hba, parse_hba
from pgmux.errors import ConfigError

HBA = """
# TYPE     DATABASE          USER           ADDRESS            METHOD
local      all               postgres                          peer
hostssl    app               alice          10.0.0.0/8         cert
host       app,"All"         alice,bob      10.1.0.0 255.255.0.0  scram-sha-256
host       sameuser          all            192.168.1.5/32     md5
hostnossl  all               mallory        0.0.0.0/0          reject
host       all               all            ::1/128            password
host       all               all            all                trust   # a comment
"""


def match(rules, **kw):  # type: ignore[no-untyped-def]
    args = {"is_unix": False, "tls": False, "database": "app", "user": "alice", "addr": "10.1.2.3", **kw}
    rule = first_match(rules, **args)
    return None if rule is None else (rule.line, rule.method)


def test_first_matching_line_wins() -> None:
    rules = parse_hba(HBA, "hba.conf")
    assert match(rules, is_unix=True, user="postgres", addr="unix") == (3, "peer")
    assert match(rules, is_unix=True, user="alice", addr="unix") is None  # no other local line: rejected
    assert match(rules, tls=True, addr="10.9.9.9") == (4, "cert")
    assert match(rules, tls=False, addr="10.9.9.9") == (9, "trust")  # hostssl does not match plain text
    assert match(rules, addr="10.1.2.3") == (5, "scram-sha-256")  # address + separate mask
    assert match(rules, database="All", user="bob", addr="10.1.2.3") == (5, "scram-sha-256")  # quoted name
    assert match(rules, database="all", user="bob", addr="10.1.2.3") == (9, "trust")  # "All" is case-exact
    assert match(rules, database="carol", user="carol", addr="192.168.1.5") == (6, "md5")  # sameuser
    assert match(rules, database="x", user="carol", addr="192.168.1.5") == (9, "trust")
    assert match(rules, user="mallory", addr="8.8.8.8") == (7, "reject")
    assert match(rules, user="mallory", addr="8.8.8.8", tls=True) == (9, "trust")  # hostnossl: plain only
    assert match(rules, user="zed", addr="::1") == (8, "password")
    assert match(rules, user="zed", addr="::ffff:10.1.2.3") == (9, "trust")  # v4-mapped is v4, not ::1
    assert match(rules, user="alice", addr="::ffff:10.1.2.3") == (5, "scram-sha-256")


def test_replication_connections_match_only_the_replication_keyword() -> None:
    rules = parse_hba("host replication repl 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 reject\n", "h")
    assert match(rules, user="repl", addr="127.0.0.1", replication=True) == (1, "trust")
    assert match(rules, database="replication", user="repl", addr="127.0.0.1") == (2, "reject")
    assert match(rules, user="other", addr="127.0.0.1", replication=True) is None


def test_at_file_lists_are_read_relative_to_the_hba_file(tmp_path: Path) -> None:
    (tmp_path / "admins.txt").write_text("# the admins\nalice, bob\ncarol\n")
    (tmp_path / "hba.conf").write_text("host all @admins.txt 127.0.0.1/32 trust\n")
    rules = load_hba(str(tmp_path / "hba.conf"))
    assert match(rules, user="carol", addr="127.0.0.1") == (1, "trust")
    assert match(rules, user="dave", addr="127.0.0.1") is None


@pytest.mark.parametrize("line, words", [
    ("hostgssenc all all 127.0.0.1/32 trust", "record type"),
    ("host all all localhost trust", "no host names"),
    ("host all all samenet trust", "no host names"),
    ("host all all 127.0.0.1 trust", "needs a /prefix or a mask"),
    ("host all all 127.0.0.1/33 trust", "invalid address"),
    ("host all +admins 127.0.0.1/32 trust", "group membership"),
    ("host samerole all 127.0.0.1/32 trust", "not supported"),
    ("host all all 127.0.0.1/32 ident", "authentication method 'ident'"),
    ("host all all 127.0.0.1/32 cert map=x", "options after the method"),
    ("host all all 127.0.0.1/32 peer", "peer authentication works only on local"),
    ("local all all cert", "cert authentication needs TLS"),
    ("host all all", "needs 5 fields"),
    ("host all @missing.txt 127.0.0.1/32 trust", "cannot read @file"),
])
def test_what_cannot_be_honoured_stops_loading_with_file_and_line(line: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words) as info:
        parse_hba("# first line\n" + line + "\n", "/etc/pgmux/hba.conf")
    assert "/etc/pgmux/hba.conf:2" in str(info.value)
