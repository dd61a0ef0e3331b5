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
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pglast
from pglast import ast, keywords
from pglast.enums import (
    CURSOR_OPT_HOLD,
    DiscardMode,
    ObjectType,
    OnCommitAction,
    TransactionStmtKind,
    VariableSetKind,
)
from pglast.parser import ParseError, scan
from pglast.stream import RawStream

from pgmux.session.params import canon

DEFAULT_CACHE_SIZE = 10_000


@dataclass(frozen=True, slots=True)
class SetParam:
    """`value` is the setting's text as PostgreSQL stores it (what SHOW prints and ParameterStatus
    reports); `SET name = <value as a string literal>` applies it again, as params.sync_sql does."""

    name: str
    value: str
    local: bool = False


@dataclass(frozen=True, slots=True)
class ResetParam:
    name: str
    local: bool = False  # SET LOCAL x TO DEFAULT


@dataclass(frozen=True, slots=True)
class ResetAll:
    pass


@dataclass(frozen=True, slots=True)
class DiscardAll:
    pass


@dataclass(frozen=True, slots=True)
class DiscardPlans:
    pass


@dataclass(frozen=True, slots=True)
class DiscardTemp:
    pass


@dataclass(frozen=True, slots=True)
class DiscardSequences:
    pass


@dataclass(frozen=True, slots=True)
class Prepare:
    """SQL-level PREPARE. `query_text` is the statement after AS, as written; `param_types` are the
    declared types as SQL (`integer`, `varchar(3)[]`), empty when none are declared."""

    name: str
    query_text: str
    param_types: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Execute:
    name: str


@dataclass(frozen=True, slots=True)
class Deallocate:
    name: str | None  # None: DEALLOCATE ALL


@dataclass(frozen=True, slots=True)
class Listen:
    channel: str


@dataclass(frozen=True, slots=True)
class Unlisten:
    channel: str | None  # None: UNLISTEN *


@dataclass(frozen=True, slots=True)
class CreateTemp:
    name: str  # the temporary table, view, sequence, function or type


@dataclass(frozen=True, slots=True)
class DropTemp:
    """DROP TABLE/VIEW/SEQUENCE/TYPE of a name that may be one of the session's temporary objects:
    unqualified (pg_temp comes first in the search path) or qualified with pg_temp."""

    names: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AdvisoryLock:
    function: str  # a session-level lock function; the _xact_ ones end with the transaction


@dataclass(frozen=True, slots=True)
class AdvisoryUnlock:
    all: bool  # pg_advisory_unlock_all


@dataclass(frozen=True, slots=True)
class DeclareHold:
    cursor: str


@dataclass(frozen=True, slots=True)
class CloseCursor:
    name: str | None  # None: CLOSE ALL


@dataclass(frozen=True, slots=True)
class Load:
    library: str


@dataclass(frozen=True, slots=True)
class TxBegin:
    pass


@dataclass(frozen=True, slots=True)
class TxEnd:
    """COMMIT/END (commit), ROLLBACK/ABORT, and PREPARE TRANSACTION, which keeps session changes as a
    commit does. `chain`: AND CHAIN starts a new transaction at once."""

    commit: bool
    chain: bool = False


@dataclass(frozen=True, slots=True)
class Savepoint:
    name: str


@dataclass(frozen=True, slots=True)
class ReleaseSavepoint:
    name: str


@dataclass(frozen=True, slots=True)
class RollbackToSavepoint:
    name: str


_MISSING = object()


@dataclass(frozen=True, slots=True)
class SetConfigBound:
    """`set_config(name, value, is_local)` with parameters among its arguments, as drivers send it
    through the extended protocol (`set_config('app.user', $1, false)`). Each argument is its constant,
    or the number of the parameter ($n) whose value a Bind gives: `resolve` then makes the effect."""

    name_arg: str | int
    value_arg: str | int | None
    local_arg: bool | int

    def resolve(self, params: Sequence[str | None]) -> Effect:
        """The effect, given the Bind's parameter values as text (None for NULL; a text parameter's
        binary format is the same bytes, and a binary boolean is one byte, 0 or 1)."""
        def arg(v: object) -> object:
            if _is_param(v):
                assert isinstance(v, int)
                return params[v - 1] if 0 < v <= len(params) else _MISSING
            return v
        name, value, is_local = arg(self.name_arg), arg(self.value_arg), arg(self.local_arg)
        if is_local in ("\x00", "\x01"):  # a boolean in binary format (as text PostgreSQL refuses it)
            is_local = is_local == "\x01"
        local = False if is_local is None else _pg_bool(is_local)
        if not isinstance(name, str) or local is None or value is _MISSING:
            return Unknown("set_config with unreadable parameters")
        if value is None:
            return ResetParam(canon(name), local)
        return SetParam(canon(name), str(value), local)


@dataclass(frozen=True, slots=True)
class Unknown:
    """Something that may change the session in a way not tracked here; the caller chooses to pin."""

    reason: str


Effect = (SetParam | ResetParam | ResetAll | DiscardAll | DiscardPlans | DiscardTemp | DiscardSequences
          | SetConfigBound | Prepare | Execute | Deallocate | Listen | Unlisten | CreateTemp | DropTemp
          | AdvisoryLock | AdvisoryUnlock | DeclareHold | CloseCursor | Load | TxBegin | TxEnd | Savepoint
          | ReleaseSavepoint | RollbackToSavepoint | Unknown)

_PIN_REASONS: dict[type, str] = {
    Listen: "listen", CreateTemp: "temp table", AdvisoryLock: "advisory lock",
    DeclareHold: "with hold cursor", Load: "load",
}

# Undone when their transaction rolls back (GUCs, LISTEN, DDL, cursors). PREPARE/DEALLOCATE, session
# advisory locks and LOAD are not transactional.
_TRANSACTIONAL = frozenset({SetParam, ResetParam, ResetAll, Listen, Unlisten, CreateTemp, DeclareHold,
                            DiscardTemp, DropTemp})


def pin_reason(effect: Effect) -> str | None:
    """The reason SHOW CLIENTS prints when this effect keeps a client on its server, else None.
    `Unknown` gives None too: whether to pin on it is the caller's policy."""
    return _PIN_REASONS.get(type(effect))


def undone_by_rollback(effect: Effect) -> bool:
    """Whether a ROLLBACK of the transaction the effect ran in takes it back (SET LOCAL never lasts)."""
    return type(effect) in _TRANSACTIONAL


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
        tokens = scan(_parsable(sql))
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


# --- values ----------------------------------------------------------------------------------------

# GUCs flagged GUC_LIST_QUOTE: PostgreSQL quotes each element as an identifier when it flattens SET.
_LIST_QUOTE = frozenset({"search_path", "temp_tablespaces", "session_preload_libraries",
                         "local_preload_libraries", "shared_preload_libraries"})
_NOT_BARE = frozenset(keywords.RESERVED_KEYWORDS | keywords.COL_NAME_KEYWORDS
                      | keywords.TYPE_FUNC_NAME_KEYWORDS)
_BARE = re.compile(r"[a-z_][a-z0-9_]*\Z")
_HOUR_TO_MINUTE = (1 << 10) | (1 << 11)  # INTERVAL_MASK(HOUR) | INTERVAL_MASK(MINUTE)
_HH_MM = re.compile(r"\s*[+-]?\d+:\d+\s*\Z")


def quote_ident(name: str) -> str:
    """PostgreSQL's quote_identifier: bare when lower-case, plain and not a reserved-ish keyword."""
    if _BARE.match(name) and name not in _NOT_BARE:
        return name
    return '"' + name.replace('"', '""') + '"'


def _str(value: str | None) -> str:
    """pglast types every field as optional; the grammar fills the ones read through this."""
    return value or ""


def _const(node: object) -> tuple[bool, object]:
    """(is a constant, its value): str, bool, or None for NULL. Casts of constants count as constants."""
    while isinstance(node, ast.TypeCast):
        node = node.arg
    if not isinstance(node, ast.A_Const):
        return False, None
    if node.isnull:
        return True, None
    val = node.val
    if isinstance(val, ast.String):
        return True, val.sval
    if isinstance(val, ast.Integer):
        return True, str(val.ival)
    if isinstance(val, ast.Float):
        return True, val.fval
    if isinstance(val, ast.Boolean):
        return True, bool(val.boolval)
    return False, None


def _const_or_param(node: object) -> tuple[bool, object]:
    """As _const, and a parameter reference ($n, cast or not) as (True, n)."""
    inner = node
    while isinstance(inner, ast.TypeCast):
        inner = inner.arg
    if isinstance(inner, ast.ParamRef):
        return True, int(inner.number or 0)
    return _const(node)


def _is_param(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _pg_bool(value: object) -> bool | None:
    """PostgreSQL's boolin: true/false/yes/no by unique prefix, on/off, 1/0."""
    if isinstance(value, bool):
        return value
    if not isinstance(value, str):
        return None
    v = value.strip().lower()
    if v in ("on", "1") or (v and ("true".startswith(v) or "yes".startswith(v))):
        return True
    if v in ("off", "of", "0") or (v and ("false".startswith(v) or "no".startswith(v))):
        return False
    return None


def _interval(node: ast.TypeCast) -> str | None:
    """SET TIME ZONE INTERVAL '...': PostgreSQL re-reads `INTERVAL '<text>'` without a qualifier, so
    only literals whose meaning does not depend on one are kept (the documented `HOUR TO MINUTE` form)."""
    ok, text = _const(node.arg)
    if not ok or not isinstance(text, str) or node.typeName is None:
        return None
    if [n.sval for n in node.typeName.names or ()][-1:] != ["interval"]:
        return None
    mods = node.typeName.typmods
    if mods:
        fields = [m.val.ival for m in mods if isinstance(m, ast.A_Const) and isinstance(m.val, ast.Integer)]
        if fields != [_HOUR_TO_MINUTE] or not _HH_MM.match(text):
            return None
    return f"INTERVAL '{text}'"


def _flatten(name: str, args: tuple[object, ...]) -> str | None:
    """The stored text of SET's arguments, as PostgreSQL's flatten_set_variable_args builds it."""
    parts = []
    for arg in args:
        value: object = None
        if isinstance(arg, ast.TypeCast):
            value = _interval(arg) if name == "timezone" else None
        elif isinstance(arg, ast.A_Const):
            _, value = _const(arg)
            if isinstance(value, str) and name in _LIST_QUOTE and isinstance(arg.val, ast.String):
                value = quote_ident(value)
        if not isinstance(value, str):
            return None
        parts.append(value)
    return ", ".join(parts)


# --- statements ------------------------------------------------------------------------------------

_MULTI = {"TRANSACTION": ("", True), "SESSION CHARACTERISTICS": ("default_", False)}


def _set(node: ast.VariableSetStmt) -> list[Effect]:
    kind, local = node.kind, bool(node.is_local)
    if kind == VariableSetKind.VAR_RESET_ALL:
        return [ResetAll()]
    if kind == VariableSetKind.VAR_SET_CURRENT:  # sets the value it already has
        return []
    if kind == VariableSetKind.VAR_SET_MULTI:
        if node.name == "TRANSACTION SNAPSHOT":
            return []
        if node.name not in _MULTI:
            return [Unknown(f"SET {node.name}")]
        prefix, local = _MULTI[node.name]
        out: list[Effect] = []
        for item in node.args or ():
            ok, value = _const(item.arg)
            if item.defname != "transaction_isolation":
                value = "on" if value == "1" else "off" if value == "0" else value
            if not ok or not isinstance(value, str):
                return [Unknown(f"SET {node.name} with an unexpected value")]
            out.append(SetParam(prefix + item.defname, value, local))
        return out
    name = canon(_str(node.name))
    if kind in (VariableSetKind.VAR_SET_DEFAULT, VariableSetKind.VAR_RESET):
        return [ResetParam(name, local)]
    value = _flatten(name.lower(), tuple(node.args or ()))
    if value is None:
        return [Unknown(f"SET {node.name} with an unsupported value")]
    return [SetParam(name, value, local)]


def _temp_rel(rel: ast.RangeVar | None) -> str | None:
    if rel is None:
        return None
    if rel.relpersistence == "t" or _temp_schema(rel.schemaname):
        return _str(rel.relname)
    return None


def _temp_schema(schema: str | None) -> bool:
    return schema is not None and (schema == "pg_temp" or schema.startswith("pg_temp_"))


def _temp_names(names: tuple[ast.String, ...] | None) -> list[Effect]:
    if names and len(names) > 1 and _temp_schema(names[0].sval):
        return [CreateTemp(_str(names[-1].sval))]
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
    out: list[Effect] = [DeclareHold(_str(node.portalname))] if (node.options or 0) & CURSOR_OPT_HOLD else []
    _walk(node.query, out)
    return out


def _option_on(arg: object) -> bool:
    """An option of EXPLAIN (...): no value means on; the value is a bare String/Integer/Boolean node."""
    if arg is None:
        return True
    if isinstance(arg, ast.String):
        return _pg_bool(arg.sval) is not False
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
            return [Savepoint(_str(node.savepoint_name))]
        case k.TRANS_STMT_RELEASE:
            return [ReleaseSavepoint(_str(node.savepoint_name))]
        case k.TRANS_STMT_ROLLBACK_TO:
            return [RollbackToSavepoint(_str(node.savepoint_name))]
    return []  # COMMIT/ROLLBACK PREPARED run outside any transaction of this session


_DO_WORDS = re.compile(r"\b(?:set|reset|discard|listen|unlisten|load|prepare|deallocate|temp|temporary"
                       r"|set_config|hold)\b|_advisory_|pg_temp", re.IGNORECASE)


def _do(node: ast.DoStmt) -> list[Effect]:
    body = " ".join(str(opt.arg.sval) for opt in node.args or () if opt.defname == "as")
    return [Unknown("DO block may change session state")] if _DO_WORDS.search(body) else []


def _prepare(node: ast.PrepareStmt, text: str) -> list[Effect]:
    """The query is cut from the source text after the first AS outside parentheses, through its last
    token, so comments inside it stay and the trailing semicolon does not."""
    tokens, depth, start = scan(_parsable(text)), 0, None
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
    types = tuple(RawStream()(t) for t in node.argtypes or ())
    return [Prepare(_str(node.name), query, types)]


_ADVISORY_LOCKS = frozenset({"pg_advisory_lock", "pg_advisory_lock_shared", "pg_try_advisory_lock",
                             "pg_try_advisory_lock_shared"})
_ADVISORY_UNLOCKS = frozenset({"pg_advisory_unlock", "pg_advisory_unlock_shared"})


def _call(node: ast.FuncCall, out: list[Effect]) -> None:
    names = [_str(n.sval) for n in node.funcname or () if isinstance(n, ast.String)]
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
    args = [_const_or_param(a) for a in node.args or ()]
    if len(args) == 3 and all(ok for ok, _ in args) and any(_is_param(v) for _, v in args):
        (_, name), (_, value), (_, is_local) = args
        local = is_local if _is_param(is_local) else False if is_local is None else _pg_bool(is_local)
        if (isinstance(name, (str, int)) and not isinstance(name, bool) and isinstance(value, (str, int, type(None)))
                and not isinstance(value, bool) and isinstance(local, (bool, int))):
            return SetConfigBound(canon(name) if isinstance(name, str) else name, value, local)
        return Unknown("set_config with non-constant arguments")
    if len(args) != 3 or not all(ok for ok, _ in args) or not isinstance(args[0][1], str):
        return Unknown("set_config with non-constant arguments")
    (_, name), (_, value), (_, is_local) = args
    local = False if is_local is None else _pg_bool(is_local)  # a NULL is_local means false
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
        words = [_str(w.sval) for w in parts or () if isinstance(w, ast.String)]
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
        out.append(Execute(_str(node.name)))
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
    ast.VariableSetStmt: _set,
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
        raws = pglast.parse_sql(_parsable(sql))
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
    """`effects()` with its own bounded LRU of verdicts by exact text. `parses` counts real parses."""

    def __init__(self, maxsize: int = DEFAULT_CACHE_SIZE) -> None:
        if maxsize < 1:
            raise ValueError("the effect cache needs room for at least one entry")
        self.maxsize = maxsize
        self.hits = 0
        self.parses = 0
        self._cache: OrderedDict[str, tuple[Effect, ...]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._cache)

    def effects(self, sql: str) -> tuple[Effect, ...]:
        if not might_change_session(sql):
            return ()
        found = self._cache.get(sql)
        if found is not None:
            self._cache.move_to_end(sql)
            self.hits += 1
            return found
        self.parses += 1
        result = _analyse(sql)
        self._cache[sql] = result
        if len(self._cache) > self.maxsize:
            self._cache.popitem(last=False)
        return result


_DEFAULT_CACHE = EffectCache()


def effects(sql: str) -> tuple[Effect, ...]:
    """What the statements in one simple-query string do to the session, in order. Memoised by text:
    a pure function of `sql`, so the process-wide cache cannot make callers depend on each other."""
    return _DEFAULT_CACHE.effects(sql)
