"""One exception tree for pgmux. Every error carries the SQLSTATE a client will see."""

from __future__ import annotations


class PgmuxError(Exception):
    """Base of every pgmux error. `sqlstate` and `severity` shape the ErrorResponse sent to a client."""

    sqlstate = "XX000"
    severity = "ERROR"

    def __init__(self, message: str, *, sqlstate: str | None = None, severity: str | None = None,
                 detail: str | None = None, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if sqlstate is not None:
            self.sqlstate = sqlstate
        if severity is not None:
            self.severity = severity
        self.detail = detail
        self.hint = hint


class ProtocolViolation(PgmuxError):
    """A peer sent bytes that break protocol v3 (bad length, unknown startup code, oversized packet)."""

    sqlstate = "08P01"
    severity = "FATAL"


class AuthFailed(PgmuxError):
    sqlstate = "28P01"
    severity = "FATAL"


class ConfigError(PgmuxError):
    """A configuration file is wrong. `where` names file:line and key, so the operator can fix it."""

    sqlstate = "F0000"
    severity = "FATAL"

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 key: str | None = None) -> None:
        where = ""
        if file is not None:
            where = file if line is None else f"{file}:{line}"
        if key is not None:
            where = f"{where}: {key}" if where else key
        super().__init__(f"{where}: {message}" if where else message)
        self.file = file
        self.line = line
        self.key = key


# The errors of session/prepared.py. They live here, with the rest of the tree, because that module is
# compiled (setup.py), and a compiled subclass does not override a class attribute like sqlstate.
class DuplicatePreparedStatement(PgmuxError):
    sqlstate = "42P05"  # duplicate_prepared_statement, as PostgreSQL reports it


class MissingPreparedStatement(PgmuxError):
    sqlstate = "26000"  # invalid_sql_statement_name, as PostgreSQL reports it


class CachedPlanChanged(PgmuxError):
    sqlstate = "0A000"  # feature_not_supported: "cached plan must not change result type", as PostgreSQL says
