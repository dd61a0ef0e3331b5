"""What one parsed statement needs: the per-statement rules behind `classify`.

Input is libpg_query's JSON parse tree (pglast's `parse_sql_json` + `json.loads`), not pglast's
Python AST: building AST objects costs about ten times more than the parse itself, and these rules
only look for a handful of node types. In that JSON a node of type `T` is a one-key dict `{"T": {...}}`
(field names are lower-case, node names upper-case); fields whose C type is a concrete struct are
inlined without the wrapper, but everything the rules look for (statements, FuncCall, LockingClause)
lives in `Node *` fields or lists and so always carries its name.

Safety runs one way: a statement type these rules do not know goes to the primary. Only the shapes
listed as reads here may reach a replica.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

Target = Literal["primary", "replica", "any"]

# Functions that write, assign a transaction id, take locks other sessions coordinate on, or read
# per-session sequence state (currval/lastval fail on a replica that never ran the nextval). A name
# ending in "*" is a prefix. Users add their own through Classifier(write_functions=...).
DEFAULT_WRITE_FUNCTIONS: frozenset[str] = frozenset({
    "nextval", "setval", "currval", "lastval",
    "pg_advisory_*", "pg_try_advisory_*",
    "lo_create", "lo_creat", "lo_import", "lo_export", "lo_unlink", "lo_put", "lo_from_bytea",
    "lowrite", "lo_truncate", "lo_truncate64",
    "txid_current", "pg_current_xact_id",
    "pg_notify", "set_config",
    "pg_current_wal_lsn", "pg_current_wal_insert_lsn", "pg_current_wal_flush_lsn", "pg_switch_wal",
    "pg_create_restore_point", "pg_logical_emit_message",
    "pg_create_physical_replication_slot", "pg_create_logical_replication_slot",
    "pg_drop_replication_slot", "pg_copy_physical_replication_slot", "pg_copy_logical_replication_slot",
    "dblink_exec",
})

_DML = {"InsertStmt": "INSERT", "UpdateStmt": "UPDATE", "DeleteStmt": "DELETE", "MergeStmt": "MERGE"}
_LOCKING = {"LCS_FORKEYSHARE": "FOR KEY SHARE", "LCS_FORSHARE": "FOR SHARE",
            "LCS_FORNOKEYUPDATE": "FOR NO KEY UPDATE", "LCS_FORUPDATE": "FOR UPDATE"}
_PRIMARY_SIMPLE = {"LockStmt": "lock", "ListenStmt": "listen", "NotifyStmt": "notify",
                   "UnlistenStmt": "unlisten", "CallStmt": "call", "DoStmt": "do",
                   "TruncateStmt": "write: TRUNCATE", "CheckPointStmt": "maintenance: CHECKPOINT"}
_SESSION = {"VariableSetStmt": "SET", "DiscardStmt": "DISCARD", "DeallocateStmt": "DEALLOCATE",
            "LoadStmt": "LOAD", "ConstraintsSetStmt": "SET CONSTRAINTS"}
_TRUE = {"on", "true", "yes", "1", "t", "y"}


@dataclass(frozen=True, slots=True)
class Verdict:
    """Where a statement may run. "any" means it does not constrain routing (SET, BEGIN, ...)."""

    target: Target
    reason: str
    begins_tx: bool = False
    read_only_tx: bool = False  # BEGIN/START TRANSACTION/SET TRANSACTION ... READ ONLY
    ends_tx: bool = False
    prepares: str | None = None  # PREPARE name AS ...: record this verdict to resolve EXECUTE name


@dataclass(frozen=True, slots=True)
class Rule:
    """One statement's verdict, plus the prepared statement it executes (resolved per session)."""

    verdict: Verdict
    executes: str | None = None
    prefix: str = ""  # "explain: " when the EXECUTE sits under EXPLAIN


class FunctionMatcher:
    """Write-function names: "f" (in any schema), "s.f", or prefixes ("pg_advisory_*")."""

    def __init__(self, names: Iterable[str]) -> None:
        lowered = {n.strip().lower() for n in names if n.strip()}
        exact = {n for n in lowered if not n.endswith("*")}
        self.anywhere = frozenset(n for n in exact if "." not in n)
        self.qualified = frozenset(n for n in exact if "." in n)
        # "s.f" also matches an unqualified f(): search_path may resolve it to s.f.
        self.unqualified = self.anywhere | {n.rsplit(".", 1)[1] for n in self.qualified}
        self.prefixes = tuple(sorted(n[:-1] for n in lowered if n.endswith("*")))

    def writes(self, parts: list[str]) -> bool:
        bare, qualified = parts[-1], ".".join(parts)
        if bare in (self.unqualified if len(parts) == 1 else self.anywhere) or qualified in self.qualified:
            return True
        return any(bare.startswith(p) or qualified.startswith(p) for p in self.prefixes)


def _scan(tree: Any, functions: FunctionMatcher) -> str | None:
    """The reason a read-shaped tree (SELECT, COPY query, ...) must still go to the primary, or None."""
    writable = locking = func = None
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(reversed(node))
            continue
        if not isinstance(node, dict):
            continue
        for key, value in node.items():
            if key in _DML:
                writable = writable or "writable CTE"
            elif key == "intoClause":
                return "select into"
            elif key == "LockingClause" and locking is None:
                locking = "locking clause " + _LOCKING.get(value.get("strength", ""), "FOR UPDATE")
            elif key == "FuncCall" and func is None:
                parts = [p["String"]["sval"] for p in value.get("funcname", ()) if "String" in p]
                if parts and functions.writes(parts):
                    func = "volatile function " + ".".join(parts)
            if isinstance(value, dict | list):
                stack.append(value)
    return writable or locking or func


def _read(tree: Any, reason: str, functions: FunctionMatcher) -> Verdict:
    why = _scan(tree, functions)
    return Verdict("primary", why) if why else Verdict("replica", reason)


def _read_only(options: Any) -> bool:
    for item in options or ():
        elem = item.get("DefElem", {})
        if elem.get("defname") == "transaction_read_only":
            return _truthy(elem.get("arg"))
    return False


def _truthy(const: Any) -> bool:
    value = (const or {}).get("A_Const", {})
    if "ival" in value:
        return bool(value["ival"].get("ival", 0))
    if "sval" in value:
        return str(value["sval"].get("sval", "")).lower() in _TRUE
    return "boolval" in value and bool(value["boolval"].get("boolval", False))


def _transaction(body: dict[str, Any]) -> Verdict:
    kind = body.get("kind", "")
    if kind in ("TRANS_STMT_BEGIN", "TRANS_STMT_START"):
        return Verdict("any", "transaction control", begins_tx=True,
                       read_only_tx=_read_only(body.get("options")))
    if kind in ("TRANS_STMT_COMMIT", "TRANS_STMT_ROLLBACK"):
        return Verdict("any", "transaction control", ends_tx=True, begins_tx=bool(body.get("chain")))
    if kind == "TRANS_STMT_PREPARE":
        return Verdict("any", "transaction control", ends_tx=True)
    if kind in ("TRANS_STMT_COMMIT_PREPARED", "TRANS_STMT_ROLLBACK_PREPARED"):
        return Verdict("primary", "two-phase commit")
    return Verdict("any", "transaction control")  # SAVEPOINT, RELEASE, ROLLBACK TO


def _variable_set(body: dict[str, Any]) -> Verdict:
    name = body.get("name", "")
    if name == "TRANSACTION":
        return Verdict("any", "transaction control", read_only_tx=_read_only(body.get("args")))
    if name == "transaction_read_only" and body.get("kind") == "VAR_SET_VALUE":
        args = body.get("args") or [None]
        return Verdict("any", "transaction control", read_only_tx=_truthy(args[0]))
    reset = str(body.get("kind", "")).startswith("VAR_RESET")
    return Verdict("any", "session: RESET" if reset else "session: SET")


def _copy(body: dict[str, Any], functions: FunctionMatcher) -> Verdict:
    if body.get("is_from"):
        return Verdict("primary", "write: COPY FROM")
    if body.get("is_program"):
        return Verdict("primary", "copy to program")  # runs on a server host: the one the user means
    if body.get("filename"):
        return Verdict("primary", "copy to server file")
    return _read(body.get("query"), "copy to", functions)


def _wrapped(inner: Rule, prefix: str) -> Rule:
    v = inner.verdict
    reason = v.reason if v.reason.startswith("ambiguous") else prefix + v.reason
    return Rule(Verdict(v.target, reason), inner.executes, prefix + inner.prefix)


def rule_for(stmt: dict[str, Any], functions: FunctionMatcher) -> Rule:
    """The rule for one top-level statement node, e.g. {"SelectStmt": {...}}."""
    ((kind, body),) = stmt.items()
    if kind == "SelectStmt":
        return Rule(_read(body, "select", functions))
    if kind in _DML:
        return Rule(Verdict("primary", "write: " + _DML[kind]))
    if kind == "VariableShowStmt":
        return Rule(Verdict("replica", "show"))
    if kind == "TransactionStmt":
        return Rule(_transaction(body))
    if kind == "VariableSetStmt":
        return Rule(_variable_set(body))
    if kind in _SESSION:
        return Rule(Verdict("any", "session: " + _SESSION[kind]))
    if kind in ("FetchStmt", "ClosePortalStmt"):
        return Rule(Verdict("any", "cursor"))  # runs where its DECLARE ran; the transaction is pinned
    if kind == "CopyStmt":
        return Rule(_copy(body, functions))
    if kind in _PRIMARY_SIMPLE:
        return Rule(Verdict("primary", _PRIMARY_SIMPLE[kind]))
    if kind == "VacuumStmt":
        command = "VACUUM" if body.get("is_vacuumcmd") else "ANALYZE"
        return Rule(Verdict("primary", "maintenance: " + command))
    if kind == "ExecuteStmt":
        name = body.get("name", "")
        return Rule(Verdict("primary", f"ambiguous: EXECUTE {name}"), executes=name)
    # EXPLAIN without ANALYZE runs nothing, but it is classified as its query anyway: rare, and
    # planning a write on the primary is never wrong.
    if kind == "ExplainStmt":
        return _wrapped(rule_for(body["query"], functions), "explain: ")
    if kind == "DeclareCursorStmt":
        return _wrapped(rule_for(body["query"], functions), "declare cursor: ")
    if kind == "PrepareStmt":
        inner = _wrapped(rule_for(body["query"], functions), "prepare: ").verdict
        return Rule(Verdict(inner.target, inner.reason, prepares=body.get("name", "")))
    return Rule(Verdict("primary", "ddl"))  # CREATE/ALTER/DROP/GRANT/... and anything unknown
