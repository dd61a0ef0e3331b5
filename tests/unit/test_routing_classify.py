"""Read/write classification: a table of statements, the hints, prepared statements and the cache."""

from __future__ import annotations

import pytest

from pgmux.routing import classify as classify_module
from pgmux.routing.classify import LONG_TEXT, Classifier, Verdict, classify

P, R, A = "primary", "replica", "any"

TABLE = [
    # plain reads
    ("SELECT 1", R, "select"),
    ("select * from t where id = $1", R, "select"),
    ("SELECT a FROM t UNION ALL SELECT b FROM u", R, "select"),
    ("SELECT * FROM (SELECT * FROM t) s JOIN u USING (id)", R, "select"),
    ("VALUES (1), (2)", R, "select"),
    ("TABLE t", R, "select"),
    ("SHOW search_path", R, "show"),
    ("WITH x AS (SELECT 1) SELECT * FROM x", R, "select"),
    ("WITH RECURSIVE r(n) AS (SELECT 1 UNION SELECT n + 1 FROM r WHERE n < 5) SELECT * FROM r", R, "select"),
    ("SELECT now(), lower('A'), count(*) FROM t", R, "select"),
    ("SELECT 'insert into t values (1)' AS s", R, "select"),
    ("SELECT '/* pgmux:primary */'", R, "select"),  # a string, not a comment
    ("EXPLAIN SELECT * FROM t", R, "explain: select"),
    ("EXPLAIN (ANALYZE, BUFFERS) SELECT * FROM t", R, "explain: select"),
    ("COPY t TO STDOUT", R, "copy to"),
    ("COPY (SELECT * FROM t) TO STDOUT WITH (FORMAT csv)", R, "copy to"),
    ("DECLARE c CURSOR FOR SELECT * FROM t", R, "declare cursor: select"),
    ("  \n select 1  ;  ", R, "select"),
    # writes
    ("INSERT INTO t VALUES (1)", P, "write: INSERT"),
    ("UPDATE t SET a = 1", P, "write: UPDATE"),
    ("DELETE FROM t", P, "write: DELETE"),
    ("MERGE INTO t USING u ON t.id = u.id WHEN MATCHED THEN DELETE", P, "write: MERGE"),
    ("INSERT INTO t SELECT * FROM u ON CONFLICT DO NOTHING", P, "write: INSERT"),
    ("COPY t FROM STDIN", P, "write: COPY FROM"),
    ("COPY t TO '/tmp/t.csv'", P, "copy to server file"),
    ("COPY t TO PROGRAM 'gzip > /tmp/t.gz'", P, "copy to program"),
    ("COPY (INSERT INTO t VALUES (1) RETURNING *) TO STDOUT", P, "writable CTE"),
    ("TRUNCATE t", P, "write: TRUNCATE"),
    ("SELECT * INTO t2 FROM t", P, "select into"),
    ("SELECT * FROM t FOR UPDATE", P, "locking clause FOR UPDATE"),
    ("SELECT * FROM t FOR SHARE", P, "locking clause FOR SHARE"),
    ("SELECT * FROM t FOR NO KEY UPDATE SKIP LOCKED", P, "locking clause FOR NO KEY UPDATE"),
    ("SELECT * FROM t FOR KEY SHARE", P, "locking clause FOR KEY SHARE"),
    ("SELECT * FROM (SELECT * FROM t FOR UPDATE) s", P, "locking clause FOR UPDATE"),
    ("WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x", P, "writable CTE"),
    ("SELECT * FROM t WHERE id IN (WITH d AS (UPDATE u SET a = 1 RETURNING id) SELECT id FROM d)",
     P, "writable CTE"),
    ("SELECT nextval('s')", P, "volatile function nextval"),
    ("SELECT pg_catalog.setval('s', 10)", P, "volatile function pg_catalog.setval"),
    ("SELECT currval('s')", P, "volatile function currval"),
    ("SELECT * FROM nextval('s')", P, "volatile function nextval"),
    ("VALUES (nextval('s'))", P, "volatile function nextval"),
    ("SELECT pg_advisory_lock(1)", P, "volatile function pg_advisory_lock"),
    ("SELECT pg_try_advisory_xact_lock(1)", P, "volatile function pg_try_advisory_xact_lock"),
    ("SELECT lo_create(0)", P, "volatile function lo_create"),
    ("SELECT txid_current()", P, "volatile function txid_current"),
    ("SELECT pg_current_xact_id()", P, "volatile function pg_current_xact_id"),
    ("SELECT pg_notify('c', 'x')", P, "volatile function pg_notify"),
    ("SELECT set_config('search_path', 'x', false)", P, "volatile function set_config"),
    ("SELECT coalesce(max(id), 0) + nextval('s') FROM t", P, "volatile function nextval"),
    ("EXPLAIN ANALYZE DELETE FROM t", P, "explain: write: DELETE"),
    ("EXPLAIN UPDATE t SET a = 1", P, "explain: write: UPDATE"),
    ("EXPLAIN SELECT nextval('s')", P, "explain: volatile function nextval"),
    ("DECLARE c CURSOR FOR SELECT * FROM t FOR UPDATE", P, "declare cursor: locking clause FOR UPDATE"),
    # DDL, maintenance and the rest that only the primary may run
    ("CREATE TABLE t (id int)", P, "ddl"),
    ("CREATE TEMP TABLE t AS SELECT 1", P, "ddl"),
    ("ALTER TABLE t ADD COLUMN b int", P, "ddl"),
    ("DROP TABLE t", P, "ddl"),
    ("CREATE INDEX CONCURRENTLY i ON t (a)", P, "ddl"),
    ("GRANT SELECT ON t TO bob", P, "ddl"),
    ("REFRESH MATERIALIZED VIEW m", P, "ddl"),
    ("VACUUM t", P, "maintenance: VACUUM"),
    ("ANALYZE t", P, "maintenance: ANALYZE"),
    ("CHECKPOINT", P, "maintenance: CHECKPOINT"),
    ("LOCK TABLE t IN ACCESS EXCLUSIVE MODE", P, "lock"),
    ("LISTEN c", P, "listen"),
    ("NOTIFY c, 'x'", P, "notify"),
    ("UNLISTEN *", P, "unlisten"),
    ("CALL p(1)", P, "call"),
    ("DO $$ BEGIN PERFORM 1; END $$", P, "do"),
    ("PREPARE q AS INSERT INTO t VALUES ($1)", P, "prepare: write: INSERT"),
    ("EXECUTE q(1)", P, "ambiguous: EXECUTE q"),
    ("COMMIT PREPARED 'gid'", P, "two-phase commit"),
    # session state and transaction control: "any"
    ("SET search_path = x", A, "session: SET"),
    ("SET LOCAL statement_timeout = 0", A, "session: SET"),
    ("RESET ALL", A, "session: RESET"),
    ("DISCARD ALL", A, "session: DISCARD"),
    ("DEALLOCATE ALL", A, "session: DEALLOCATE"),
    ("FETCH 10 FROM c", A, "cursor"),
    ("CLOSE c", A, "cursor"),
    ("BEGIN", A, "transaction control"),
    ("COMMIT", A, "transaction control"),
    ("ROLLBACK", A, "transaction control"),
    ("SAVEPOINT s", A, "transaction control"),
    ("RELEASE SAVEPOINT s", A, "transaction control"),
    ("ROLLBACK TO SAVEPOINT s", A, "transaction control"),
    # several statements: the strictest wins
    ("select 1; insert into t values (1)", P, "write: INSERT"),
    ("SET x = 1; SELECT 1", R, "select"),
    ("SELECT 1; SELECT nextval('s'); DELETE FROM t", P, "volatile function nextval"),
    # hints, parse errors, nothing at all
    ("/* pgmux:primary */ select 1", P, "hint pgmux:primary"),
    ("select 1 -- pgmux:primary", P, "hint pgmux:primary"),
    ("/* app:web pgmux:primary */ SHOW x", P, "hint pgmux:primary"),
    ("/* pgmux:replica */ INSERT INTO t VALUES (1)", P, "write: INSERT"),  # never a known write
    ("/* pgmux:replica */ EXECUTE q", R, "hint pgmux:replica"),
    ("/* pgmux:replica */ SELEC 1", R, "hint pgmux:replica"),
    ("SELEC 1", P, "ambiguous: parse error"),
    ("select 'unterminated", P, "ambiguous: parse error"),
    ("-- pgmux:primary\nselect 'unterminated", P, "hint pgmux:primary"),
    ("select 1\x00; delete from t", P, "ambiguous: parse error"),
    ("select '\udcff'", P, "ambiguous: parse error"),  # undecodable bytes kept as surrogates
    ("", A, "empty"),
    (" ; -- nothing\n", A, "empty"),
]


@pytest.mark.parametrize(("sql", "target", "reason"), TABLE, ids=[t[0][:40] for t in TABLE])
def test_table(sql: str, target: str, reason: str) -> None:
    v = Classifier().classify(sql)
    assert (v.target, v.reason) == (target, reason)


def test_module_level_classify_uses_the_defaults() -> None:
    assert classify("SELECT nextval('s')").target == "primary"
    assert classify("SELECT 1") == Verdict("replica", "select")


@pytest.mark.parametrize(("sql", "begins", "read_only", "ends"), [
    ("BEGIN", True, False, False),
    ("BEGIN READ ONLY", True, True, False),
    ("BEGIN ISOLATION LEVEL SERIALIZABLE, READ ONLY, DEFERRABLE", True, True, False),
    ("BEGIN READ WRITE", True, False, False),
    ("START TRANSACTION READ ONLY", True, True, False),
    ("SET TRANSACTION READ ONLY", False, True, False),
    ("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ", False, False, False),
    ("SET transaction_read_only = on", False, True, False),
    ("COMMIT", False, False, True),
    ("END", False, False, True),
    ("ABORT", False, False, True),
    ("COMMIT AND CHAIN", True, False, True),
    ("PREPARE TRANSACTION 'gid'", False, False, True),
    ("SAVEPOINT s", False, False, False),
    ("BEGIN READ ONLY; SELECT 1; COMMIT", True, True, True),
    ("/* pgmux:primary */ BEGIN READ ONLY", True, True, False),
])
def test_transaction_flags(sql: str, begins: bool, read_only: bool, ends: bool) -> None:
    v = Classifier().classify(sql)
    assert (v.begins_tx, v.read_only_tx, v.ends_tx) == (begins, read_only, ends)


def test_read_only_transaction_then_read_goes_to_a_replica() -> None:
    v = Classifier().classify("BEGIN READ ONLY; SELECT * FROM t")
    assert (v.target, v.begins_tx, v.read_only_tx) == ("replica", True, True)


def test_configured_write_functions_add_to_the_defaults() -> None:
    c = Classifier(write_functions={"bump_counter", "audit.log_*", "public.f2"})
    assert c.classify("SELECT bump_counter(1)") == Verdict("primary", "volatile function bump_counter")
    assert c.classify("SELECT audit.log_event('x')").target == "primary"
    assert c.classify("SELECT f2()").target == "primary"  # search_path may resolve f2 to public.f2
    assert c.classify("SELECT other.f2()").target == "replica"
    assert c.classify("SELECT x.bump_counter()").target == "primary"  # a bare name matches in any schema
    assert c.classify("SELECT nextval('s')").target == "primary"  # defaults still apply
    assert Classifier().classify("SELECT bump_counter(1)").target == "replica"


def test_execute_resolves_against_the_sessions_prepared_statements() -> None:
    c = Classifier()
    read = c.classify("PREPARE r AS SELECT * FROM t WHERE id = $1")
    write = c.classify("PREPARE w AS UPDATE t SET a = $1")
    assert (read.target, read.prepares, write.target, write.prepares) == ("replica", "r", "primary", "w")
    # a protocol-level Parse is classified and stored the same way
    known = {"r": read, "w": write, "p": c.classify("SELECT 1")}
    assert c.classify("EXECUTE r(1)", known) == Verdict("replica", "execute r: select")
    assert c.classify("EXECUTE p", known) == Verdict("replica", "execute p: select")
    assert c.classify("EXECUTE w(1)", known) == Verdict("primary", "execute w: write: UPDATE")
    assert c.classify("EXECUTE other", known) == Verdict("primary", "ambiguous: EXECUTE other")
    assert c.classify("EXPLAIN EXECUTE r(1)", known) == Verdict("replica", "explain: execute r: select")
    assert c.classify("EXECUTE r(1); EXECUTE w(2)", known).target == "primary"
    assert c.classify("/* pgmux:primary */ EXECUTE r(1)", known).target == "primary"
    # the same cached text resolves differently per session
    assert c.classify("EXECUTE r(1)").target == "primary"
    assert c.parses == 10


def test_prepares_survives_only_for_a_lone_prepare() -> None:
    assert Classifier().classify("PREPARE a AS SELECT 1; SELECT 2").prepares is None


def test_same_text_is_parsed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = classify_module.statements_json  # sql/parse.py: the one place that calls pglast
    monkeypatch.setattr(classify_module, "statements_json", lambda sql: calls.append(sql) or real(sql))
    c = Classifier()
    for _ in range(3):
        assert c.classify("SELECT * FROM t").target == "replica"
        assert c.classify("/* pgmux:primary */ SELECT 1").target == "primary"
    assert calls == ["SELECT * FROM t", "/* pgmux:primary */ SELECT 1"]
    assert (c.parses, c.hits, len(c)) == (2, 4, 2)


def test_cache_is_a_bounded_lru() -> None:
    c = Classifier(cache_size=2)
    c.classify("SELECT 1")
    c.classify("SELECT 2")
    c.classify("SELECT 1")  # now the most recently used
    c.classify("SELECT 3")  # evicts SELECT 2
    assert (len(c), c.parses) == (2, 3)
    c.classify("SELECT 1")
    assert c.parses == 3
    c.classify("SELECT 2")
    assert c.parses == 4


def test_cache_size_zero_disables_the_cache() -> None:
    c = Classifier(cache_size=0)
    c.classify("SELECT 1")
    c.classify("SELECT 1")
    assert (len(c), c.parses) == (0, 2)
    with pytest.raises(ValueError):
        Classifier(cache_size=-1)


def test_long_texts_are_cached_by_digest() -> None:
    c = Classifier()
    sql = "INSERT INTO t VALUES " + ", ".join(f"({i})" for i in range(LONG_TEXT))
    assert c.classify(sql).target == "primary"
    assert c.classify(sql).target == "primary"
    assert c.parses == 1
    (key,) = c._cache
    assert isinstance(key, bytes) and len(key) == 16
