"""Session effects of simple-query strings, as a table: SQL in, effects out, in statement order."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgmux.session import statements
from pgmux.session.params import quote_literal
from pgmux.session.statements import (
    AdvisoryLock,
    AdvisoryUnlock,
    CloseCursor,
    CreateTemp,
    Deallocate,
    DeclareHold,
    DiscardAll,
    DiscardPlans,
    DiscardSequences,
    DiscardTemp,
    DropTemp,
    Effect,
    EffectCache,
    Execute,
    Listen,
    Load,
    Prepare,
    ReleaseSavepoint,
    ResetAll,
    ResetParam,
    RollbackToSavepoint,
    Savepoint,
    SetConfigBound,
    SetParam,
    TxBegin,
    TxEnd,
    Unknown,
    Unlisten,
    effects,
    might_change_session,
    pin_reason,
    quote_ident,
    undone_by_rollback,
)

NONCONST = Unknown("set_config with non-constant arguments")

TABLE: list[tuple[str, tuple[Effect, ...]]] = [
    # SET, every spelling
    ("SET statement_timeout = 5000", (SetParam("statement_timeout", "5000"),)),
    ("set statement_timeout to '5s'", (SetParam("statement_timeout", "5s"),)),
    ("SET SESSION work_mem = '64MB'", (SetParam("work_mem", "64MB"),)),
    ("set local statement_timeout to '5s'", (SetParam("statement_timeout", "5s", local=True),)),
    ("SET LOCAL lock_timeout TO DEFAULT", (ResetParam("lock_timeout", local=True),)),
    ("SET application_name = 'it''s mine'", (SetParam("application_name", "it's mine"),)),
    ("SET application_name = E'tab\\there'", (SetParam("application_name", "tab\there"),)),
    ("SET application_name = $$dollar 'quoted'$$", (SetParam("application_name", "dollar 'quoted'"),)),
    ("SET myapp.Tenant = 42", (SetParam("myapp.tenant", "42"),)),
    ('SET "MyApp.Tenant" = 42', (SetParam("myapp.tenant", "42"),)),  # GUC names ignore case
    ("SET extra_float_digits = -1", (SetParam("extra_float_digits", "-1"),)),
    ("SET random_page_cost = 1.50", (SetParam("random_page_cost", "1.50"),)),
    ("SET enable_seqscan = off", (SetParam("enable_seqscan", "off"),)),
    ("SET enable_seqscan TO true", (SetParam("enable_seqscan", "true"),)),
    ("SET datestyle = iso, dmy", (SetParam("DateStyle", "iso, dmy"),)),
    ("SET NAMES 'UTF8'", (SetParam("client_encoding", "UTF8"),)),
    ("SET ROLE app_reader", (SetParam("role", "app_reader"),)),
    ("SET SESSION AUTHORIZATION DEFAULT", (ResetParam("session_authorization"),)),
    # search_path comes back as PostgreSQL flattens it: elements quoted as identifiers
    ("SET search_path = a, b", (SetParam("search_path", "a, b"),)),
    ('SET search_path TO "My Schema", public', (SetParam("search_path", '"My Schema", public'),)),
    ("SET search_path = 'My Schema', \"$user\"", (SetParam("search_path", '"My Schema", "$user"'),)),
    ("SET search_path = \"user\", \"Upper\", \"we\"\"ird\"",
     (SetParam("search_path", '"user", "Upper", "we""ird"'),)),
    ("SET search_path = ''", (SetParam("search_path", '""'),)),
    ("SET SCHEMA 'app'", (SetParam("search_path", "app"),)),
    ("SET search_path TO DEFAULT", (ResetParam("search_path"),)),
    # time zones
    ("SET TIME ZONE 'Europe/Rome'", (SetParam("TimeZone", "Europe/Rome"),)),
    ("SET TIME ZONE -7", (SetParam("TimeZone", "-7"),)),
    ("SET TIME ZONE LOCAL", (ResetParam("TimeZone"),)),
    ("set time zone default", (ResetParam("TimeZone"),)),
    ("SET TIME ZONE INTERVAL '+05:30'", (SetParam("TimeZone", "INTERVAL '+05:30'"),)),
    ("SET TIME ZONE INTERVAL '-08:00' HOUR TO MINUTE", (SetParam("TimeZone", "INTERVAL '-08:00'"),)),
    ("SET TIME ZONE INTERVAL '5' HOUR", (Unknown("SET timezone with an unsupported value"),)),
    # transaction characteristics
    ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
     (SetParam("transaction_isolation", "serializable", local=True),)),
    ("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY",
     (SetParam("default_transaction_isolation", "repeatable read"),
      SetParam("default_transaction_read_only", "on"))),
    ("SET TRANSACTION SNAPSHOT '00000003-0000001B-1'", ()),
    ("SET work_mem FROM CURRENT", ()),  # sets the value it has
    # RESET and DISCARD
    ("RESET statement_timeout", (ResetParam("statement_timeout"),)),
    ("RESET TIME ZONE", (ResetParam("TimeZone"),)),
    ("RESET ALL", (ResetAll(),)),
    ("DISCARD ALL", (DiscardAll(),)),
    ("discard plans", (DiscardPlans(),)),
    ("DISCARD TEMP", (DiscardTemp(),)),
    ("DISCARD TEMPORARY", (DiscardTemp(),)),
    ("DISCARD SEQUENCES", (DiscardSequences(),)),
    # set_config, wherever it is called
    ("SELECT set_config('search_path', 'a,b', false)", (SetParam("search_path", "a,b"),)),
    ("SELECT pg_catalog.set_config('TimeZone', 'UTC', true)", (SetParam("TimeZone", "UTC", local=True),)),
    ("SELECT 1 AS x, coalesce(set_config('app.user', 'bob', false), '') || 'y', now()",
     (SetParam("app.user", "bob"),)),
    ("SELECT set_config('a.b', 'v', 'f'::boolean), set_config('c.d', 'w'::text, 'on')",
     (SetParam("a.b", "v"), SetParam("c.d", "w", local=True))),
    ("SELECT * FROM set_config('app.x', 'y', false)", (SetParam("app.x", "y"),)),
    ("SELECT set_config('app.x', NULL, false)", (ResetParam("app.x"),)),
    ("SELECT set_config('app.x', 'y', NULL)", (SetParam("app.x", "y"),)),
    ("SELECT set_config('app.user', current_user, false)", (NONCONST,)),
    # ... with parameters, as drivers send it: resolved when a Bind gives the values
    ("SELECT set_config('app.user', $1, false)", (SetConfigBound("app.user", 1, False),)),
    ("SELECT set_config('app.user', 'x', $1)", (SetConfigBound("app.user", "x", 1),)),
    ("SELECT set_config($1::text, $2::text, false)", (SetConfigBound(1, 2, False),)),
    ("SELECT set_config($1::text, $2, $3)", (SetConfigBound(1, 2, 3),)),
    ("SELECT set_config('TimeZone', $1, 'on')", (SetConfigBound("TimeZone", 1, True),)),
    ("SELECT set_config('app.user', current_user || $1, false)", (NONCONST,)),
    ("SELECT set_config($1, lower($2), false)", (NONCONST,)),
    ("SELECT myschema.set_config('a', 'b', false)", ()),  # someone else's function
    ("SELECT 'set_config(''a'', ''b'', false)'", ()),  # only a string
    # prepared statements in SQL
    ("PREPARE q1 AS SELECT 1", (Prepare("q1", "SELECT 1"),)),
    ("PREPARE q2 (int, text, varchar(3)[]) AS /* c */ SELECT $1, $2 -- tail\n;",
     (Prepare("q2", "SELECT $1, $2", ("integer", "text", "varchar(3)[]")),)),
    ("PREPARE q3 AS INSERT INTO t VALUES ('as', 'é'); EXECUTE q3",
     (Prepare("q3", "INSERT INTO t VALUES ('as', 'é')"), Execute("q3"))),
    ("PREPARE q4 AS SELECT pg_advisory_lock(1)", (Prepare("q4", "SELECT pg_advisory_lock(1)"),)),
    ("EXECUTE q1(1, 'x')", (Execute("q1"),)),
    ("EXPLAIN EXECUTE q1", (Execute("q1"),)),
    ("CREATE TABLE t2 AS EXECUTE q1", (Execute("q1"),)),
    ("DEALLOCATE q1", (Deallocate("q1"),)),
    ("DEALLOCATE PREPARE q1", (Deallocate("q1"),)),
    ("DEALLOCATE ALL", (Deallocate(None),)),
    # pin causes and what undoes them
    ("LISTEN jobs", (Listen("jobs"),)),
    ('LISTEN "Mixed Case"', (Listen("Mixed Case"),)),
    ("UNLISTEN jobs", (Unlisten("jobs"),)),
    ("UNLISTEN *", (Unlisten(None),)),
    ("NOTIFY jobs, 'x'", ()),
    ("CREATE TEMP TABLE tt (a int)", (CreateTemp("tt"),)),
    ("CREATE TEMPORARY TABLE IF NOT EXISTS tt (a int)", (CreateTemp("tt"),)),
    ("CREATE LOCAL TEMP TABLE tt (LIKE t)", (CreateTemp("tt"),)),
    ("CREATE TABLE pg_temp.tt (a int)", (CreateTemp("tt"),)),
    ("CREATE TABLE pg_temp_3.tt (a int)", (CreateTemp("tt"),)),
    ("CREATE TEMP TABLE tt (a int) ON COMMIT DROP", ()),  # gone at commit
    # DROP of what may be a temporary object: unqualified, or in pg_temp
    ("DROP TABLE t, pg_temp.u, public.v", (DropTemp(("t", "u")),)),
    ("DROP VIEW IF EXISTS w", (DropTemp(("w",)),)),
    ("DROP TYPE pg_temp.ty", (DropTemp(("ty",)),)),
    ("DROP TABLE public.v", ()),
    ("DROP INDEX i", ()),
    ("CREATE TEMP TABLE tt AS SELECT 1", (CreateTemp("tt"),)),
    ("CREATE TEMP TABLE tt AS SELECT pg_advisory_lock(1) WITH NO DATA", (CreateTemp("tt"),)),
    ("SELECT * INTO TEMP tt FROM t", (CreateTemp("tt"),)),
    ("CREATE TEMP VIEW tv AS SELECT set_config('a', 'b', false)", (CreateTemp("tv"),)),  # stored, not run
    ("CREATE TEMP SEQUENCE ts", (CreateTemp("ts"),)),
    ("CREATE FUNCTION pg_temp.f() RETURNS int LANGUAGE sql AS 'SELECT 1'", (CreateTemp("f"),)),
    ("CREATE TABLE t (a int)", ()),
    ("SELECT pg_advisory_lock(42)", (AdvisoryLock("pg_advisory_lock"),)),
    ("SELECT pg_try_advisory_lock_shared(1, 2)", (AdvisoryLock("pg_try_advisory_lock_shared"),)),
    ("SELECT x FROM t WHERE pg_try_advisory_lock(t.id)", (AdvisoryLock("pg_try_advisory_lock"),)),
    ("SELECT pg_advisory_xact_lock(42)", ()),  # ends with the transaction
    ("SELECT pg_advisory_unlock(42)", (AdvisoryUnlock(False),)),
    ("SELECT pg_advisory_unlock_all()", (AdvisoryUnlock(True),)),
    ("EXPLAIN ANALYZE SELECT pg_advisory_lock(1)", (AdvisoryLock("pg_advisory_lock"),)),
    ("EXPLAIN (ANALYZE false) SELECT pg_advisory_lock(1)", ()),
    ("EXPLAIN SELECT set_config('a', 'b', false)", ()),
    ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", (DeclareHold("c"),)),
    ("DECLARE c NO SCROLL CURSOR WITHOUT HOLD FOR SELECT 1", ()),
    ("CLOSE c", (CloseCursor("c"),)),
    ("CLOSE ALL", (CloseCursor(None),)),
    ("LOAD 'auto_explain'", (Load("auto_explain"),)),
    # transactions
    ("BEGIN", (TxBegin(),)),
    ("START TRANSACTION ISOLATION LEVEL SERIALIZABLE", (TxBegin(),)),
    ("COMMIT", (TxEnd(True),)),
    ("END", (TxEnd(True),)),
    ("COMMIT AND CHAIN", (TxEnd(True, chain=True),)),
    ("ROLLBACK", (TxEnd(False),)),
    ("ABORT", (TxEnd(False),)),
    ("ROLLBACK AND CHAIN", (TxEnd(False, chain=True),)),
    ("PREPARE TRANSACTION 'gid'", (TxEnd(True),)),
    ("COMMIT PREPARED 'gid'", ()),
    ("SAVEPOINT s1", (Savepoint("s1"),)),
    ("RELEASE SAVEPOINT s1", (ReleaseSavepoint("s1"),)),
    ("ROLLBACK TO s1", (RollbackToSavepoint("s1"),)),
    # several statements, comments
    ("BEGIN; SET LOCAL work_mem = '1GB'; SELECT 1; COMMIT",
     (TxBegin(), SetParam("work_mem", "1GB", local=True), TxEnd(True))),
    ("/* leading */ SET a.b TO 1; -- trailing", (SetParam("a.b", "1"),)),
    ("SELECT 1 /* nested /* comment */ still */; SET a.b = 2", (SetParam("a.b", "2"),)),
    ("-- SET a.b = 1\nSELECT 1", ()),
    ("SELECT 'x; SET a.b = 1'", ()),
    ("SELECT 1;SET a.b = 1;LISTEN c", (SetParam("a.b", "1"), Listen("c"))),
    # ordinary statements that only look like SET
    ("UPDATE t SET a = 1 WHERE b", ()),
    ("INSERT INTO t VALUES (1) ON CONFLICT (a) DO UPDATE SET b = 2", ()),
    ("SELECT CASE WHEN a THEN 1 END FROM t", ()),
    ("ALTER ROLE r SET search_path = a", ()),
    ("SELECT temp FROM weather", ()),
    ("update t set a = 1;", ()),
    ("  set a.b = 1 ;", (SetParam("a.b", "1"),)),
    ("SELECT settings, reset_at, do_not FROM t", ()),
    ("", ()),
    # DO blocks are not parsed
    ("DO $$ BEGIN PERFORM pg_advisory_lock(1); END $$", (Unknown("DO block may change session state"),)),
    ("DO $$ BEGIN RAISE NOTICE 'hi'; END $$", ()),
    # what cannot be parsed
    ("SET statement_timeout =", (Unknown("cannot parse: syntax error at end of input"),)),
    ("SELEC 1", ()),  # no session word: PostgreSQL rejects it whole, nothing runs
]


@pytest.mark.parametrize(("sql", "want"), TABLE, ids=[sql[:40] for sql, _ in TABLE])
def test_effects(sql: str, want: tuple[Effect, ...]) -> None:
    assert effects(sql) == want


def test_syntax_error_with_session_word_is_unknown() -> None:
    (effect,) = effects("LISTEN; SET x = 1")
    assert isinstance(effect, Unknown) and effect.reason.startswith("cannot parse:")


def test_unterminated_string_is_parsed_to_an_unknown() -> None:
    (effect,) = effects("SELECT 'abc; SET x = 1")
    assert isinstance(effect, Unknown)


def test_prefilter_passes_every_function_the_walk_looks_for() -> None:
    names = statements._ADVISORY_LOCKS | statements._ADVISORY_UNLOCKS
    names |= {"pg_advisory_unlock_all", "set_config"}
    for name in names:
        assert might_change_session(f"SELECT {name}(1)"), name
        assert might_change_session(f'SELECT pg_catalog."{name}"(1)'), name
    assert effects("DO $$ BEGIN PERFORM pg_try_advisory_lock(1); END $$") == (
        Unknown("DO block may change session state"),)


@pytest.mark.parametrize("sql", ["UPDATE t SET a = 1", "SELECT 1", "SELECT CASE WHEN true THEN 1 END"])
def test_prefilter_rejects_ordinary_statements(sql: str) -> None:
    assert not might_change_session(sql)


def test_a_setparam_value_applies_again_as_a_literal() -> None:
    """SET name = '<value>' stores exactly `value`, so re-applying one gives the same setting."""
    (first,) = effects('SET search_path = "My Schema", public')
    assert isinstance(first, SetParam)
    (again,) = effects(f"SET search_path = {quote_literal(first.value)}")
    assert again == SetParam("search_path", '"""My Schema"", public"')  # as PostgreSQL would: quoted again
    (applied,) = effects(f"SELECT set_config('search_path', {quote_literal(first.value)}, false)")
    assert applied == first


@pytest.mark.parametrize(("name", "want"), [
    ("public", "public"), ("My Schema", '"My Schema"'), ("$user", '"$user"'), ("user", '"user"'),
    ("select", '"select"'), ("abort", "abort"), ("a1_b", "a1_b"), ("1a", '"1a"'), ('q"t', '"q""t"'),
    ("", '""'),
])
def test_quote_ident(name: str, want: str) -> None:
    assert quote_ident(name) == want


def test_pin_reasons() -> None:
    assert [pin_reason(e) for e in (Listen("c"), CreateTemp("t"), AdvisoryLock("pg_advisory_lock"),
                                    DeclareHold("c"), Load("x"))] == [
        "listen", "temp table", "advisory lock", "with hold cursor", "load"]
    assert pin_reason(SetParam("a", "b")) is None
    assert pin_reason(Unknown("x")) is None


def test_undone_by_rollback() -> None:
    assert undone_by_rollback(SetParam("a", "b")) and undone_by_rollback(Listen("c"))
    assert undone_by_rollback(CreateTemp("t"))
    assert not undone_by_rollback(AdvisoryLock("pg_advisory_lock"))
    assert not undone_by_rollback(Prepare("p", "SELECT 1"))


def test_same_text_is_parsed_once() -> None:
    cache = EffectCache()
    sql = "SET a.b = 1; LISTEN c"
    assert cache.effects(sql) == cache.effects(sql) == (SetParam("a.b", "1"), Listen("c"))
    assert (cache.parses, cache.hits) == (1, 1)
    assert cache.effects("SELECT 1") == () and cache.parses == 1 and len(cache) == 1  # never parsed


def test_cache_evicts_least_recently_used() -> None:
    cache = EffectCache(maxsize=2)
    a, b, c = "SET a.x = 1", "SET a.x = 2", "SET a.x = 3"
    cache.effects(a)
    cache.effects(b)
    cache.effects(a)  # a is now the most recent
    cache.effects(c)  # evicts b
    assert cache.parses == 3
    cache.effects(a)
    assert cache.parses == 3
    cache.effects(b)
    assert cache.parses == 4 and len(cache) == 2


def test_default_cache_size() -> None:
    assert EffectCache().maxsize == 10_000
    with pytest.raises(ValueError):
        EffectCache(maxsize=0)


_WORDS = st.sampled_from([
    "SET", "set", "x", "=", "UPDATE", "t", "SELECT", "1", "FROM", "BEGIN", "END", "CASE", "WHEN", "THEN",
    "'a'", ";", "/*", "*/", "--", "\n", "LOCAL", "TIME", "ZONE", "search_path", "TO", "DEFAULT", ",", '"q"',
    "(", ")", "pg_advisory_lock", "pg_try_advisory_lock", "set_config", "PREPARE", "AS", "EXECUTE", "DO",
    "$$", "CREATE", "TEMP", "TABLE", "RESET", 'u&"a"', "DECLARE", "CURSOR", "WITH", "HOLD", "FOR",
    "INTERVAL", "HOUR", "é", "LISTEN", "INTO", "pg_temp.t",
])


@settings(max_examples=400, deadline=None)
@given(st.lists(_WORDS, max_size=12).map(" ".join))
def test_prefilter_is_sound(sql: str) -> None:
    """Whatever the prefilter passes over, a full parse finds nothing in either (or cannot parse it)."""
    parsed = statements._analyse(sql)
    assert isinstance(EffectCache().effects(sql), tuple)
    if not might_change_session(sql):
        assert all(isinstance(e, Unknown) and e.reason.startswith("cannot parse") for e in parsed), parsed


def test_set_config_with_parameters_resolves_with_the_bind_values() -> None:
    assert SetConfigBound("app.user", 1, False).resolve(["bob"]) == SetParam("app.user", "bob")
    assert SetConfigBound(1, 2, 3).resolve(["TimeZone", "UTC", "true"]) == SetParam("TimeZone", "UTC", local=True)
    assert SetConfigBound("app.user", 1, False).resolve([None]) == ResetParam("app.user")
    assert SetConfigBound("app.user", "x", 1).resolve([None]) == SetParam("app.user", "x")
    assert isinstance(SetConfigBound("app.user", 2, False).resolve(["only one"]), Unknown)
    assert isinstance(SetConfigBound(1, "x", False).resolve([None]), Unknown)
    # a boolean bound in binary format (psycopg and asyncpg may send one): one byte, 1 or 0
    assert SetConfigBound("a.b", "x", 1).resolve(["\x01"]) == SetParam("a.b", "x", local=True)
    assert SetConfigBound("a.b", "x", 1).resolve(["\x00"]) == SetParam("a.b", "x")
