"""What a simple-query string leaves behind in the session, read with PostgreSQL's own parser (pglast).

Transaction pooling gives a client another server for each transaction, so anything a statement
leaves in the session must either be re-applied on the next server (SET, PREPARE) or keep the client
on its server (LISTEN, temp tables, session advisory locks, WITH HOLD cursors, LOAD). `effects()`
names those leftovers, in statement order; the relay decides what to do with them.

Parsing costs about 0.2 ms for an ordinary query: too much to pay on every query. Two guards:
- a keyword prefilter (`might_change_session`): a statement can leave session state only if it
  contains one of a few words (`SET` and friends only as a statement's first word, so
  `UPDATE ... SET` does not count). A string without them has no effects and is never parsed, nor
  cached. False positives only cost a parse.
- verdicts cached by exact text in a bounded LRU.
A consequence: a syntax error without any of those words (`SELEC 1`) yields no effects rather than
`Unknown`. Whatever PostgreSQL cannot parse it rejects whole, so nothing of it runs.

Limits, shared with PgBouncer and PgDog: effects hidden in functions, procedures or triggers are not
seen. DO blocks are not parsed; one that mentions a session-changing word is `Unknown`. A statement
prepared with PREPARE is not looked into until it is executed: its text is kept in `Prepare` so the
caller can call `effects()` on it at EXECUTE time.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from pglast import ast
from pglast.enums import CURSOR_OPT_HOLD, DiscardMode, ObjectType, OnCommitAction, TransactionStmtKind

from pgmux.session.effects import (
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
    is_param,
    pg_bool,
    pin_reason,
    undone_by_rollback,
)
from pgmux.session.params import canon
from pgmux.session.setvalues import const_or_param, quote_ident, set_effects, str_field
from pgmux.sql.parse import DEFAULT_CACHE_SIZE, ParseError, TextCache, deparse, statements
from pgmux.sql.parse import tokens as scan_tokens

# The effects (session/effects.py) are named here too, for the modules that read them with effects().
__all__ = ["AdvisoryLock", "AdvisoryUnlock", "CloseCursor", "CreateTemp", "Deallocate", "DeclareHold",
           "DiscardAll", "DiscardPlans", "DiscardSequences", "DiscardTemp", "DropTemp", "Effect", "Execute",
           "Listen", "Load", "Prepare", "ReleaseSavepoint", "ResetAll", "ResetParam", "RollbackToSavepoint",
           "Savepoint", "SetConfigBound", "SetParam", "TxBegin", "TxEnd", "Unknown", "Unlisten", "is_param",
           "pg_bool", "pin_reason", "undone_by_rollback", "DEFAULT_CACHE_SIZE", "EffectCache", "effects",
           "might_change_session", "quote_ident"]

# --- the prefilter -------------------------------------------------------------------------------

_AT_START = ("set|reset|discard|prepare|deallocate|listen|unlisten|load|declare|close|begin|start"
             "|commit|end|rollback|abort|savepoint|release|do|drop")
_AT_START_WORDS = frozenset(_AT_START.split("|"))
_LEADING = re.compile(rf"\b(?:{_AT_START})\b")
# Words that count wherever they are; U& identifiers can spell any name, so they count too. Plain
# substring tests screen first: they cost nanoseconds, the regular expression microseconds.
_ANYWHERE_SCREEN = ("execute", "temp", "set_config", "_advisory_", "u&")
_ANYWHERE = re.compile(r"\b(?:execute|temp|temporary|set_config)\b|\bpg_temp|_advisory_|u&")
_COMMENTS = frozenset({"C_COMMENT", "SQL_COMMENT"})
_WORD = re.compile(r"[a-z_][a-z0-9_$]*")


def might_change_session(sql: str) -> bool:
    """False only when `sql` cannot change session state. The statement-start words (`set`, `end`,
    `do`...) are common inside statements too (`UPDATE ... SET`, `CASE ... END`), so when only those
    appear, PostgreSQL's own scanner (a tenth of a parse) tells whether one starts a statement: a
    regular expression cannot skip nested comments, and one that tried could backtrack badly."""
    low = sql.lower()
    if any(word in low for word in _ANYWHERE_SCREEN) and _ANYWHERE.search(low):
        return True
    if not _LEADING.search(low):
        return False
    head = low.strip().rstrip(";")
    if ";" not in head and not head.startswith(("/*", "--")):  # one statement: its first word decides
        first_word = _WORD.match(head)
        return first_word is not None and first_word.group() in _AT_START_WORDS
    try:
        tokens = scan_tokens(_parsable(sql))
    except ParseError:
        return True  # let the parser say what is wrong
    first = True
    for tok in tokens:
        if tok.name in _COMMENTS:
            continue
        if first and sql[tok.start:tok.end + 1].lower() in _AT_START_WORDS:
            return True
        first = tok.name == "ASCII_59"
    return False


def _temp_rel(rel: ast.RangeVar | None) -> str | None:
    if rel is None:
        return None
    if rel.relpersistence == "t" or _temp_schema(rel.schemaname):
        return str_field(rel.relname)
    return None


def _temp_schema(schema: str | None) -> bool:
    return schema is not None and (schema == "pg_temp" or schema.startswith("pg_temp_"))


def _temp_names(names: tuple[ast.String, ...] | None) -> list[Effect]:
    if names and len(names) > 1 and _temp_schema(names[0].sval):
        return [CreateTemp(str_field(names[-1].sval))]
    return []


def _create_table(node: ast.CreateStmt | ast.CreateSeqStmt | ast.ViewStmt) -> list[Effect]:
    rel = node.relation if isinstance(node, ast.CreateStmt) else (
        node.sequence if isinstance(node, ast.CreateSeqStmt) else node.view)
    name = _temp_rel(rel)
    if name is None or getattr(node, "oncommit", None) == OnCommitAction.ONCOMMIT_DROP:
        return []  # ON COMMIT DROP: gone by the time the server could be handed on
    return [CreateTemp(name)]


def _into(into: ast.IntoClause | None) -> list[Effect]:
    name = _temp_rel(into.rel) if into is not None else None
    if name is None or into is None or into.onCommit == OnCommitAction.ONCOMMIT_DROP:
        return []
    return [CreateTemp(name)]


def _create_as(node: ast.CreateTableAsStmt) -> list[Effect]:
    out = _into(node.into)
    if node.into is not None and not node.into.skipData:  # WITH NO DATA does not run the query
        _walk(node.query, out)
    return out


def _select(node: ast.SelectStmt) -> list[Effect]:
    out = _into(node.intoClause)
    _walk(node, out)
    return out


def _declare(node: ast.DeclareCursorStmt) -> list[Effect]:
    out: list[Effect] = [DeclareHold(str_field(node.portalname))] if (node.options or 0) & CURSOR_OPT_HOLD else []
    _walk(node.query, out)
    return out


def _option_on(arg: object) -> bool:
    """An option of EXPLAIN (...): no value means on; the value is a bare String/Integer/Boolean node."""
    if arg is None:
        return True
    if isinstance(arg, ast.String):
        return pg_bool(arg.sval) is not False
    if isinstance(arg, ast.Integer):
        return arg.ival != 0
    if isinstance(arg, ast.Boolean):
        return bool(arg.boolval)
    return True


def _explain(node: ast.ExplainStmt) -> list[Effect]:
    analyze = any(opt.defname in ("analyze", "analyse") and _option_on(opt.arg) for opt in node.options or ())
    out: list[Effect] = []
    _walk(node.query, out, functions=analyze)  # plain EXPLAIN runs nothing, but EXECUTE must exist
    return out


_DISCARDS: dict[object, Effect] = {
    DiscardMode.DISCARD_ALL: DiscardAll(), DiscardMode.DISCARD_PLANS: DiscardPlans(),
    DiscardMode.DISCARD_TEMP: DiscardTemp(), DiscardMode.DISCARD_SEQUENCES: DiscardSequences(),
}


def _deallocate(node: ast.DeallocateStmt) -> list[Effect]:
    every = getattr(node, "isall", False) or node.name is None  # pglast 8 says isall; earlier, no name
    return [Deallocate(None if every else node.name)]


def _discard(node: ast.DiscardStmt) -> list[Effect]:
    return [_DISCARDS.get(node.target, Unknown(f"DISCARD {node.target}"))]


def _transaction(node: ast.TransactionStmt) -> list[Effect]:
    k = TransactionStmtKind
    match node.kind:
        case k.TRANS_STMT_BEGIN | k.TRANS_STMT_START:
            return [TxBegin()]
        case k.TRANS_STMT_COMMIT | k.TRANS_STMT_PREPARE:
            return [TxEnd(True, bool(node.chain))]
        case k.TRANS_STMT_ROLLBACK:
            return [TxEnd(False, bool(node.chain))]
        case k.TRANS_STMT_SAVEPOINT:
            return [Savepoint(str_field(node.savepoint_name))]
        case k.TRANS_STMT_RELEASE:
            return [ReleaseSavepoint(str_field(node.savepoint_name))]
        case k.TRANS_STMT_ROLLBACK_TO:
            return [RollbackToSavepoint(str_field(node.savepoint_name))]
    return []  # COMMIT/ROLLBACK PREPARED run outside any transaction of this session


_DO_WORDS = re.compile(r"\b(?:set|reset|discard|listen|unlisten|load|prepare|deallocate|temp|temporary"
                       r"|set_config|hold)\b|_advisory_|pg_temp", re.IGNORECASE)


def _do(node: ast.DoStmt) -> list[Effect]:
    body = " ".join(str(opt.arg.sval) for opt in node.args or () if opt.defname == "as")
    return [Unknown("DO block may change session state")] if _DO_WORDS.search(body) else []


def _prepare(node: ast.PrepareStmt, text: str) -> list[Effect]:
    """The query is cut from the source text after the first AS outside parentheses, through its last
    token, so comments inside it stay and the trailing semicolon does not."""
    tokens, depth, start = scan_tokens(_parsable(text)), 0, None
    for i, tok in enumerate(tokens):
        if tok.name == "ASCII_40":
            depth += 1
        elif tok.name == "ASCII_41":
            depth -= 1
        elif tok.name == "AS" and depth == 0:
            start = i + 1
            break
    body = [t for t in tokens[start:] if t.name != "ASCII_59" and t.name not in _COMMENTS] if start else []
    query = text[body[0].start:body[-1].end + 1] if body else ""
    types = tuple(deparse(t) for t in node.argtypes or ())
    return [Prepare(str_field(node.name), query, types)]


_ADVISORY_LOCKS = frozenset({"pg_advisory_lock", "pg_advisory_lock_shared", "pg_try_advisory_lock",
                             "pg_try_advisory_lock_shared"})
_ADVISORY_UNLOCKS = frozenset({"pg_advisory_unlock", "pg_advisory_unlock_shared"})


def _call(node: ast.FuncCall, out: list[Effect]) -> None:
    names = [str_field(n.sval) for n in node.funcname or () if isinstance(n, ast.String)]
    if len(names) > 2 or (len(names) == 2 and names[0] != "pg_catalog"):
        return  # someone else's function of the same name
    fn = names[-1]
    if fn in _ADVISORY_LOCKS:
        out.append(AdvisoryLock(fn))
    elif fn in _ADVISORY_UNLOCKS or fn == "pg_advisory_unlock_all":
        out.append(AdvisoryUnlock(fn == "pg_advisory_unlock_all"))
    elif fn == "set_config":
        out.append(_set_config(node))


def _set_config(node: ast.FuncCall) -> Effect:
    args = [const_or_param(a) for a in node.args or ()]
    if len(args) == 3 and all(ok for ok, _ in args) and any(is_param(v) for _, v in args):
        (_, name), (_, value), (_, is_local) = args
        local = is_local if is_param(is_local) else False if is_local is None else pg_bool(is_local)
        if (isinstance(name, (str, int)) and not isinstance(name, bool) and isinstance(value, (str, int, type(None)))
                and not isinstance(value, bool) and isinstance(local, (bool, int))):
            return SetConfigBound(canon(name) if isinstance(name, str) else name, value, local)
        return Unknown("set_config with non-constant arguments")
    if len(args) != 3 or not all(ok for ok, _ in args) or not isinstance(args[0][1], str):
        return Unknown("set_config with non-constant arguments")
    (_, name), (_, value), (_, is_local) = args
    local = False if is_local is None else pg_bool(is_local)  # a NULL is_local means false
    if local is None or isinstance(value, bool) or not isinstance(name, str):
        return Unknown("set_config with non-constant arguments")
    if value is None:  # a NULL value resets
        return ResetParam(canon(name), local)
    return SetParam(canon(name), str(value), local)


_DROPPED_TEMP_KINDS = frozenset({ObjectType.OBJECT_TABLE, ObjectType.OBJECT_VIEW, ObjectType.OBJECT_SEQUENCE,
                                 ObjectType.OBJECT_TYPE})


def _drop(node: ast.DropStmt) -> list[Effect]:
    if node.removeType not in _DROPPED_TEMP_KINDS:
        return []
    names: list[str] = []
    for obj in node.objects or ():
        parts = obj.names if isinstance(obj, ast.TypeName) else obj
        words = [str_field(w.sval) for w in parts or () if isinstance(w, ast.String)]
        if len(words) == 1 or (len(words) == 2 and _temp_schema(words[0])):
            names.append(words[-1])
    return [DropTemp(tuple(names))] if names else []


# Statements whose expressions are stored, not run, when the statement runs.
_STORED = (ast.PrepareStmt, ast.ViewStmt, ast.RuleStmt, ast.CreateFunctionStmt, ast.CreateStmt,
           ast.CreatePolicyStmt, ast.CreateTrigStmt)


def _walk(node: object, out: list[Effect], functions: bool = True) -> None:
    """Function calls and EXECUTEs anywhere in a statement that runs them, in source order."""
    if isinstance(node, tuple | list):
        for item in node:
            _walk(item, out, functions)
        return
    if not isinstance(node, ast.Node) or isinstance(node, _STORED):
        return
    if isinstance(node, ast.FuncCall) and functions:
        _call(node, out)
    elif isinstance(node, ast.ExecuteStmt):
        out.append(Execute(str_field(node.name)))
    cls = type(node)
    attrs = _ATTRS.get(cls)
    if attrs is None:  # a node's fields, from its whole MRO but Node's own `ancestors`, which points up
        attrs = _ATTRS[cls] = tuple(a for c in cls.__mro__ if c not in (ast.Node, object)
                                    for a in getattr(c, "__slots__", ()))
    for attr in attrs:
        _walk(getattr(node, attr), out, functions)


_ATTRS: dict[type, tuple[str, ...]] = {}


def _walked(node: ast.Node) -> list[Effect]:
    out: list[Effect] = []
    _walk(node, out)
    return out


_HANDLERS: dict[type, Callable[..., list[Effect]]] = {
    ast.VariableSetStmt: set_effects,
    ast.DiscardStmt: _discard,
    ast.DeallocateStmt: _deallocate,
    ast.ListenStmt: lambda n: [Listen(n.conditionname)],
    ast.UnlistenStmt: lambda n: [Unlisten(n.conditionname)],
    ast.CreateStmt: _create_table,
    ast.CreateSeqStmt: _create_table,
    ast.ViewStmt: _create_table,
    ast.CreateTableAsStmt: _create_as,
    ast.SelectStmt: _select,
    ast.DeclareCursorStmt: _declare,
    ast.ClosePortalStmt: lambda n: [CloseCursor(n.portalname)],
    ast.LoadStmt: lambda n: [Load(n.filename)],
    ast.DropStmt: _drop,
    ast.TransactionStmt: _transaction,
    ast.ExplainStmt: _explain,
    ast.DoStmt: _do,
    ast.CreateFunctionStmt: lambda n: _temp_names(n.funcname),
    ast.DefineStmt: lambda n: _temp_names(n.defnames),
    ast.CreateEnumStmt: lambda n: _temp_names(n.typeName),
    ast.CreateDomainStmt: lambda n: _temp_names(n.domainname),
    ast.CompositeTypeStmt: lambda n: [CreateTemp(name)] if (name := _temp_rel(n.typevar)) else [],
}


def _parsable(sql: str) -> str:
    """`sql` as pglast can take it. Query texts are decoded with surrogateescape (a client's bytes need
    not be UTF-8: client_encoding LATIN1, or garbage), which pglast cannot encode: each such byte becomes
    U+FFFD, one character for one, so the positions pglast reports hold in `sql` too."""
    if sql.isascii():
        return sql
    return sql.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _analyse(sql: str) -> tuple[Effect, ...]:
    try:
        raws = statements(_parsable(sql))
    except ParseError as exc:
        return (Unknown(f"cannot parse: {exc}"),)
    out: list[Effect] = []
    for raw in raws:
        stmt = raw.stmt
        if isinstance(stmt, ast.PrepareStmt):
            start = raw.stmt_location or 0
            out += _prepare(stmt, sql[start:start + raw.stmt_len] if raw.stmt_len else sql[start:])
        else:
            out += _HANDLERS.get(type(stmt), _walked)(stmt)
    return tuple(out)


class EffectCache:
    """`effects()` with its own bounded LRU of verdicts by exact text (sql/parse.py TextCache: at most
    `maxsize` texts, those beyond LONG_TEXT characters kept by digest). `parses` counts real parses."""

    def __init__(self, maxsize: int = DEFAULT_CACHE_SIZE) -> None:
        if maxsize < 1:
            raise ValueError("the effect cache needs room for at least one entry")
        self.maxsize = maxsize
        self._cache: TextCache[tuple[Effect, ...]] = TextCache(maxsize)

    @property
    def hits(self) -> int:
        return self._cache.hits

    @property
    def parses(self) -> int:
        return self._cache.parses

    def __len__(self) -> int:
        return len(self._cache)

    def effects(self, sql: str) -> tuple[Effect, ...]:
        if not might_change_session(sql):
            return ()
        return self._cache.get(sql, _analyse)


_DEFAULT_CACHE = EffectCache()


def effects(sql: str) -> tuple[Effect, ...]:
    """What the statements in one simple-query string do to the session, in order. Memoised by text:
    a pure function of `sql`, so the process-wide cache cannot make callers depend on each other."""
    return _DEFAULT_CACHE.effects(sql)
