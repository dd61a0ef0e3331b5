"""Client parameters: the startup packet, libpq's `options`, and the SET that brings a server in line."""

from __future__ import annotations

import pytest

from pgmux.protocol.messages import parameter_status
from pgmux.session.params import canon, parse_options, quote_literal, startup_params, sync_sql, welcome


@pytest.mark.parametrize(("name", "want"), [
    ("datestyle", "DateStyle"), ("DATESTYLE", "DateStyle"), ("TimeZone", "TimeZone"),
    ("timezone", "TimeZone"),
    ("intervalstyle", "IntervalStyle"), ("Application_Name", "application_name"),
    ("search_path", "search_path"), ("myapp.Tenant", "myapp.tenant"),
])
def test_canon(name: str, want: str) -> None:
    assert canon(name) == want


@pytest.mark.parametrize(("options", "want"), [
    ("", {}),
    ("-c search_path=app", {"search_path": "app"}),
    ("-csearch_path=app", {"search_path": "app"}),
    ("--search_path=app", {"search_path": "app"}),
    ("--statement-timeout=5s", {"statement_timeout": "5s"}),  # dashes in names are underscores
    ("-c statement-timeout=5s", {"statement_timeout": "5s"}),
    ("-c datestyle=ISO,\\ DMY", {"DateStyle": "ISO, DMY"}),  # backslash escapes a space
    ("-c a=1 -c b=2  --c=3", {"a": "1", "b": "2", "c": "3"}),
    ("-c a=1 -c a=2", {"a": "2"}),
    ("-c opt=x=y", {"opt": "x=y"}),  # only the first '=' splits
    ("-c empty=", {"empty": ""}),
    ("-c noequals -c", {}),  # nothing usable
    ("-x y -c a=1", {"a": "1"}),  # other switches are not parameters
    ("-c myapp.tenant=42", {"myapp.tenant": "42"}),
])
def test_parse_options(options: str, want: dict[str, str]) -> None:
    assert parse_options(options) == want


def test_startup_params_drop_what_is_not_a_parameter() -> None:
    raw = {"user": "alice", "database": "app", "replication": "false", "application_name": "psql",
           "DateStyle": "ISO", "client_encoding": "UTF8"}
    assert startup_params(raw, ()) == {"application_name": "psql", "DateStyle": "ISO",
                                      "client_encoding": "UTF8"}


def test_startup_params_merge_options_last() -> None:
    raw = {"user": "alice", "application_name": "a", "options": "-c application_name=b -c search_path=s"}
    assert startup_params(raw, ()) == {"application_name": "b", "search_path": "s"}


def test_ignore_startup_parameters_is_case_insensitive() -> None:
    raw = {"user": "u", "extra_float_digits": "2", "Application_Name": "x", "options": "-c a=1"}
    assert startup_params(raw, ("EXTRA_FLOAT_DIGITS", "options")) == {"application_name": "x"}
    assert startup_params(raw, ("application_name",)) == {"extra_float_digits": "2", "a": "1"}


@pytest.mark.parametrize(("value", "want"), [
    ("", "''"), ("psql", "'psql'"), ("O'Brien", "'O''Brien'"), ("''", "''''''"), ("a;b", "'a;b'"),
    ("a\\b", "E'a\\\\b'"),
    # Non-ASCII as Unicode escapes: the SQL pgmux sends is read alike in every client_encoding.
    ("café ☕", "E'caf\\u00e9 \\u2615'"), ("d'é\\", "E'd''\\u00e9\\\\'"), ("😀", "E'\\U0001f600'"),
])
def test_quote_literal(value: str, want: str) -> None:
    assert quote_literal(value) == want


def test_sync_sql_sets_only_what_differs_in_order() -> None:
    wanted = {"application_name": "psql", "DateStyle": "ISO, DMY", "search_path": "app"}
    current = {"application_name": "", "DateStyle": "ISO, DMY", "TimeZone": "UTC"}
    assert sync_sql(wanted, current) == "SET application_name = 'psql';SET search_path = 'app'"


def test_sync_sql_none_when_nothing_differs() -> None:
    assert sync_sql({}, {"a": "1"}) is None
    assert sync_sql({"a": "1"}, {"a": "1", "b": "2"}) is None


def test_sync_sql_quotes_values() -> None:
    assert sync_sql({"application_name": "it's; DROP TABLE t"}, {}) == \
        "SET application_name = 'it''s; DROP TABLE t'"


def test_startup_params_repeat_as_new_dicts_and_refusals_are_not_kept() -> None:
    """Worked out once per kind of startup packet (a login per transaction with pgbench -C), each
    caller still gets a dict of its own to change."""
    raw = {"user": "u", "database": "d", "application_name": "app", "DateStyle": "iso"}
    first = startup_params(raw, ())
    first["search_path"] = "changed"
    again = startup_params(dict(raw), ())
    assert again == {"application_name": "app", "DateStyle": "iso"}
    assert again is not first
    assert startup_params(raw, ("datestyle",)) == {"application_name": "app"}  # the ignore list is in the key
    bad = {"user": "u", "bad;name": "x"}
    for _ in range(2):
        with pytest.raises(ValueError, match="bad;name"):
            startup_params(bad, ())


def test_welcome_shows_the_clients_own_values_and_fills_in_the_tracked_ones() -> None:
    shown = {"client_encoding": "UTF8", "DateStyle": "ISO, MDY", "TimeZone": "UTC", "server_version": "16.4",
             "application_name": ""}
    tracked = ("client_encoding", "DateStyle", "TimeZone", "application_name")
    params = {"application_name": "pgbench", "DateStyle": "SQL, DMY"}
    after, block, sig = welcome(shown, params, tracked)
    assert sig == tuple(after.items())  # (catch_up's key)
    assert after == {"application_name": "pgbench", "DateStyle": "SQL, DMY", "client_encoding": "UTF8",
                     "TimeZone": "UTC"}
    assert block == b"".join(parameter_status(k, v) for k, v in [
        ("client_encoding", "UTF8"), ("DateStyle", "SQL, DMY"), ("TimeZone", "UTC"), ("server_version", "16.4"),
        ("application_name", "pgbench")])
    assert params == {"application_name": "pgbench", "DateStyle": "SQL, DMY"}  # the caller's dict is left alone
    assert welcome(shown, dict(params), tracked) == (after, block, sig)  # the same login again: the same answer
    assert welcome(shown, dict(params), tracked)[0] is after  # (kept, and shared between equal logins)
    other_pool = dict(shown, TimeZone="Europe/Paris")
    assert welcome(other_pool, dict(params), tracked)[0]["TimeZone"] == "Europe/Paris"
    assert welcome(shown, {"application_name": "other"}, tracked)[1].count(b"other\x00") == 1
    assert welcome(shown, dict(params), ("client_encoding",))[0] == {**params, "client_encoding": "UTF8"}


def test_the_last_login_remembered_is_compared_by_value() -> None:
    """startup_params and welcome answer a login equal to the last one without building their keys
    (the same packet's dict; an equal parameters dict): a dict changed in place after the call, or
    another one of the same pool, still gets its own answer."""
    raw = {"user": "u", "application_name": "a"}
    first = startup_params(raw, ())
    first["application_name"] = "changed by the caller"
    assert startup_params(raw, ()) == {"application_name": "a"}  # a new dict each time
    assert startup_params({"user": "u", "application_name": "b"}, ()) == {"application_name": "b"}
    assert startup_params(raw, ("application_name",)) == {}
    shown = {"application_name": "", "TimeZone": "UTC"}
    tracked = ("application_name", "TimeZone")
    params = {"application_name": "a"}
    assert welcome(shown, params, tracked)[0] == {"application_name": "a", "TimeZone": "UTC"}
    params["TimeZone"] = "Europe/Paris"  # the caller's dict, changed after the call
    after, block, sig = welcome(shown, params, tracked)
    assert after == {"application_name": "a", "TimeZone": "Europe/Paris"} and b"Europe/Paris" in block
    assert sig == tuple(after.items())
    assert welcome(dict(shown), {"application_name": "a"}, tracked)[0]["TimeZone"] == "UTC"  # another pool


def test_printable_ascii_is_isascii_and_isprintable() -> None:
    """probe_pairs' test of an application_name PostgreSQL keeps as it is (a compiled loop instead of
    two str methods, its answers kept) says what str.isascii() and str.isprintable() together say."""
    from pgmux.session.params import _printable_ascii

    for o in range(0x300):
        for v in (chr(o), f"app{chr(o)}", f"{chr(o)}x"):
            assert _printable_ascii(v) == (v.isascii() and v.isprintable()), (o, v)
    assert _printable_ascii("") and _printable_ascii("pgbench") and not _printable_ascii("caf\u00e9")
    for _ in range(2):  # the kept answers are the same
        assert _printable_ascii("pgbench") and not _printable_ascii("caf\u00e9") and not _printable_ascii("a\tb")
