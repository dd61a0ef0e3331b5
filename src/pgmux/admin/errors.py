"""Errors of the admin console, worded as PgBouncer words them.

PgBouncer answers every console mistake with severity ERROR and SQLSTATE 08P01 (its default for
`send_pooler_error`), then ReadyForQuery: the console session stays usable. Scripts and tests in the
wild match these texts, so they are kept verbatim; the runtime raises the state-dependent ones
(`no_such_database`, ...) when it executes a command.
"""

from __future__ import annotations

from pgmux.errors import PgmuxError

# PgBouncer formats the message into a 1024-byte buffer; a longer text is cut there.
_MAX_MESSAGE_BYTES = 1023


class AdminError(PgmuxError):
    """A console command failed; the client gets ERROR 08P01 and may go on."""

    sqlstate = "08P01"
    severity = "ERROR"


def syntax_error(query: str) -> AdminError:
    text = f"invalid command '{query}', use SHOW HELP;"
    raw = text.encode()
    if len(raw) > _MAX_MESSAGE_BYTES:
        text = raw[:_MAX_MESSAGE_BYTES].decode(errors="ignore")
    return AdminError(text)


def bad_arguments() -> AdminError:
    """A word longer than PgBouncer's fixed buffers (command 15, argument 63, SET value 255 bytes)."""
    return AdminError("bad arguments")


def admin_access_needed() -> AdminError:
    return AdminError("admin access needed")


def database_required() -> AdminError:
    return AdminError("a database is required")


def invalid_client_id() -> AdminError:
    return AdminError("invalid client pointer supplied")


# --- raised by the runtime, which knows the state; the texts live here so they stay PgBouncer's ---

def no_such_database(db: str) -> AdminError:
    return AdminError(f"no such database: {db}")


def cannot_on_admin_db(action: str, db: str) -> AdminError:
    """action: 'pause', 'reconnect', 'disable', 'enable', 'kill'; WAIT_CLOSE says 'cannot wait in'."""
    if action == "wait":
        return AdminError(f"cannot wait in admin db: {db}")
    return AdminError(f"cannot {action} admin db: {db}")


def database_not_paused(db: str) -> AdminError:
    return AdminError(f"database {db} is not paused")


def already_paused() -> AdminError:
    return AdminError("already suspended/paused")


def not_paused() -> AdminError:
    return AdminError("pooler is not paused/suspended")


def shutting_down() -> AdminError:
    return AdminError("pooler is shutting down")


def cannot_suspend_with_paused() -> AdminError:
    return AdminError("cannot suspend with paused databases")


def client_not_found() -> AdminError:
    return AdminError("client not found")


def set_failed() -> AdminError:
    return AdminError("SET failed")


def reload_failed() -> AdminError:
    # The one console error with its own SQLSTATE (config_file_error).
    return AdminError("RELOAD failed, see logs for additional details", sqlstate="F0000")


def extended_protocol() -> AdminError:
    """Parse/Bind/Execute on the console; PgBouncer sends this, then closes the connection."""
    return AdminError("extended query protocol not supported by admin console")
