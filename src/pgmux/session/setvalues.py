"""A SET's value as PostgreSQL flattens it (what SHOW would print, and what pgmux sets on the next
server): constants, intervals, lists quoted as identifiers, the SET forms that name two settings.
Part of session/statements.py's reading of a parsed statement.
"""

from __future__ import annotations

import re

from pglast import ast, keywords
from pglast.enums import VariableSetKind

from pgmux.session.effects import Effect, ResetAll, ResetParam, SetParam, Unknown
from pgmux.session.params import canon

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


def str_field(value: str | None) -> str:
    """pglast types every field as optional; the grammar fills the ones read through this."""
    return value or ""


def const(node: object) -> tuple[bool, object]:
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


def const_or_param(node: object) -> tuple[bool, object]:
    """As const, and a parameter reference ($n, cast or not) as (True, n)."""
    inner = node
    while isinstance(inner, ast.TypeCast):
        inner = inner.arg
    if isinstance(inner, ast.ParamRef):
        return True, int(inner.number or 0)
    return const(node)


def _interval(node: ast.TypeCast) -> str | None:
    """SET TIME ZONE INTERVAL '...': PostgreSQL re-reads `INTERVAL '<text>'` without a qualifier, so
    only literals whose meaning does not depend on one are kept (the documented `HOUR TO MINUTE` form)."""
    ok, text = const(node.arg)
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
            _, value = const(arg)
            if isinstance(value, str) and name in _LIST_QUOTE and isinstance(arg.val, ast.String):
                value = quote_ident(value)
        if not isinstance(value, str):
            return None
        parts.append(value)
    return ", ".join(parts)


# --- statements ------------------------------------------------------------------------------------

_MULTI = {"TRANSACTION": ("", True), "SESSION CHARACTERISTICS": ("default_", False)}


def set_effects(node: ast.VariableSetStmt) -> list[Effect]:
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
            ok, value = const(item.arg)
            if item.defname != "transaction_isolation":
                value = "on" if value == "1" else "off" if value == "0" else value
            if not ok or not isinstance(value, str):
                return [Unknown(f"SET {node.name} with an unexpected value")]
            out.append(SetParam(prefix + item.defname, value, local))
        return out
    name = canon(str_field(node.name))
    if kind in (VariableSetKind.VAR_SET_DEFAULT, VariableSetKind.VAR_RESET):
        return [ResetParam(name, local)]
    value = _flatten(name.lower(), tuple(node.args or ()))
    if value is None:
        return [Unknown(f"SET {node.name} with an unsupported value")]
    return [SetParam(name, value, local)]
