"""What a statement can leave in a session, as values: the effects session/statements.py reads from
SQL text (`effects()`), and session/tracking.py records, carries to the next server, or pins on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pgmux.session.params import canon

__all__ = ["AdvisoryLock", "AdvisoryUnlock", "CloseCursor", "CreateTemp", "Deallocate", "DeclareHold",
           "DiscardAll", "DiscardPlans", "DiscardSequences", "DiscardTemp", "DropTemp", "Effect", "Execute",
           "Listen", "Load", "Prepare", "ReleaseSavepoint", "ResetAll", "ResetParam", "RollbackToSavepoint",
           "Savepoint", "SetConfigBound", "SetParam", "TxBegin", "TxEnd", "Unknown", "Unlisten", "is_param",
           "pg_bool", "pin_reason", "undone_by_rollback"]


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
            if is_param(v):
                assert isinstance(v, int)
                return params[v - 1] if 0 < v <= len(params) else _MISSING
            return v
        name, value, is_local = arg(self.name_arg), arg(self.value_arg), arg(self.local_arg)
        if is_local in ("\x00", "\x01"):  # a boolean in binary format (as text PostgreSQL refuses it)
            is_local = is_local == "\x01"
        local = False if is_local is None else pg_bool(is_local)
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


def is_param(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def pg_bool(value: object) -> bool | None:
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
