"""Client parameters: the startup packet, libpq's `options`, and the SET that brings a server in line."""

from __future__ import annotations

import pytest

from pgmux.session.params import canon, parse_options, quote_literal, startup_params, sync_sql


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
