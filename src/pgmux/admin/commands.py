"""Admin console commands as values: text in, an AdminCommand (or an AdminError) out.

The grammar is PgBouncer's (src/admin.c), because scripts written for it must keep working, quirks
included:
  * `CMD [arg] [;]` with at most one argument, or `SET key =|TO value [;]`; case-insensitive;
    leading/trailing blanks and one trailing `;` are allowed, nothing else (`SHOW X;;` is an error).
  * A word is `[0-9A-Za-z_]+` or a double-quoted name with `""` for a quote (so a database called
    `my-db` must be written `"my-db"`); a SET value may also be a single-quoted string.
  * `SELECT x` is an alias of `SHOW x`; `SHOW client_encoding` and five other session parameters
    answer fixed values, and SETting them is ignored with a notice (some drivers insist).
  * Words longer than PgBouncer's buffers are rejected with "bad arguments".

pgmux's own BAN and UNBAN take two arguments, a database and a host: `BAN <db> <host:port>`, where
the host is written as SHOW HOSTS prints it (`127.0.0.1:5433`, bare or double-quoted).

Errors split in two, in PgBouncer's order: `parse_admin` raises what PgBouncer rejects before it
looks at the user (syntax); `authorize` then raises "admin access needed" for stats users, and only
after that the argument errors of DISABLE/ENABLE/KILL_CLIENT.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from pgmux.admin import errors
from pgmux.admin.rows import SHOW_ROW_TYPES

_WS0 = r"[ \t\n\r]*"
_WS1 = r"[ \t\n\r]+"
_WORD = r'("(?:[^"]+|"")*"|[0-9a-z_]+)'
_STRING = r"('(?:[^']|'')*')"
_END = _WS0 + r"(?:;" + _WS0 + r")?"
# re.ASCII: under IGNORECASE alone, [a-z] would also match the Kelvin sign and the long s.
_FLAGS = re.IGNORECASE | re.ASCII
_CMD_RX = re.compile(_WS0 + _WORD + r"(?:" + _WS1 + _WORD + r")?" + _END, _FLAGS)
_SET_STR_RX = re.compile(_WS0 + r"set" + _WS1 + _WORD + _WS0 + r"(?:=|to)" + _WS0 + _STRING + _END, _FLAGS)
_HOST_RX = re.compile(_WS0 + r"(ban|unban)" + _WS1 + _WORD + _WS1 + r'("[^"]+"|[0-9a-z_.\-/]+:[0-9]+)' + _END,
                      _FLAGS)
_SET_WORD_RX = re.compile(_WS0 + r"set" + _WS1 + _WORD + _WS0 + r"(?:=|to)" + _WS0 + _WORD + _END, _FLAGS)

# PgBouncer's fixed buffers (bytes, terminator included): a word this long or longer is refused.
_CMD_MAX, _ARG_MAX, _VAL_MAX = 16, 64, 256

# Session parameters the console pretends to have, for drivers that SHOW or SET them on connect.
FAKE_PARAMS: dict[str, str] = {
    "client_encoding": "UTF-8",
    "default_transaction_isolation": "read committed",
    "standard_conforming_strings": "on",
    "datestyle": "ISO",
    "timezone": "GMT",
    "extra_float_digits": "2",
}

SHOW_SUBJECTS = frozenset(SHOW_ROW_TYPES) | {"help", "fds"}
_NO_ARG = frozenset({"RELOAD", "SUSPEND", "RESTART", "TAKEOVER"})
_DB_ARG = frozenset({"PAUSE", "RESUME", "RECONNECT", "KILL", "WAIT_CLOSE", "DISABLE", "ENABLE"})
_SHUTDOWN_MODES = frozenset({"WAIT_FOR_SERVERS", "WAIT_FOR_CLIENTS"})
VERBS = _NO_ARG | _DB_ARG | {"SHOW", "SET", "SHUTDOWN", "KILL_CLIENT", "BAN", "UNBAN"}


@dataclass(frozen=True, slots=True)
class AdminCommand:
    """One parsed console command.

    verb:  upper case, one of VERBS (SELECT is folded into SHOW).
    arg:   SHOW: the subject, lower case (a key of SHOW_ROW_TYPES, 'help', 'fds' or a FAKE_PARAMS name);
           SET: the key as typed; SHUTDOWN: 'WAIT_FOR_SERVERS'/'WAIT_FOR_CLIENTS' or None;
           KILL_CLIENT: the id text; the others: the database name as typed (unquoted), or None.
    value: SET only, unquoted; BAN/UNBAN: the host as "addr:port".
    query: the text as received, for logs.
    """

    verb: str
    arg: str | None = None
    value: str | None = None
    query: str = field(default="", compare=False, repr=False)

    @property
    def fake_param(self) -> str | None:
        """The FAKE_PARAMS name this SHOW/SET targets, if any."""
        if self.verb in ("SHOW", "SET") and self.arg is not None and self.arg.lower() in FAKE_PARAMS:
            return self.arg.lower()
        return None

    @property
    def tag(self) -> str:
        """The CommandComplete tag PgBouncer answers with when the command succeeds."""
        if self.verb == "SET" and self.fake_param is None:
            return f"SET {self.arg}={self.value}"
        return self.verb

    @property
    def client_id(self) -> int | None:
        """KILL_CLIENT's id, read like C's sscanf("%llu"): leading digits count, the rest is ignored."""
        if self.verb != "KILL_CLIENT" or self.arg is None:
            return None
        m = re.match(r"[ \t\n\r\f\v]*([+-]?)([0-9]+)", self.arg)
        if m is None:
            return None
        n = int(m.group(2))
        return (-n) % (1 << 64) if m.group(1) == "-" else n % (1 << 64)


def _unquote(raw: str | None, quote: str, limit: int) -> str | None:
    if raw is None:
        return None
    if len(raw.encode()) >= limit:
        raise errors.bad_arguments()
    if raw.startswith(quote):
        return raw[1:-1].replace(quote * 2, quote)
    return raw


def parse_admin(sql: str) -> AdminCommand:
    """Parse one console query. Raises AdminError (ERROR 08P01) as PgBouncer would."""
    m = _HOST_RX.fullmatch(sql)
    if m is not None:
        db = _unquote(m.group(2), '"', _ARG_MAX)
        host = m.group(3).strip('"')
        if not db or ":" not in host or not host.rsplit(":", 1)[1].isdigit():
            raise errors.bad_arguments()
        return AdminCommand(m.group(1).upper(), db, host, sql)
    m = _CMD_RX.fullmatch(sql)
    if m is not None:
        word = _unquote(m.group(1), '"', _CMD_MAX) or ""
        arg = _unquote(m.group(2), '"', _ARG_MAX) or None
        return _command(sql, word.upper(), arg)
    for rx, quote in ((_SET_STR_RX, "'"), (_SET_WORD_RX, '"')):
        m = rx.fullmatch(sql)
        if m is not None:
            key = _unquote(m.group(1), '"', _ARG_MAX)
            if not key:
                raise errors.bad_arguments()
            value = _unquote(m.group(2), quote, _VAL_MAX)
            return AdminCommand("SET", key, value, sql)
    raise errors.syntax_error(sql)


def _command(sql: str, verb: str, arg: str | None) -> AdminCommand:
    if verb in ("SHOW", "SELECT"):
        subject = (arg or "").lower()
        if subject not in SHOW_SUBJECTS and subject not in FAKE_PARAMS:
            raise errors.syntax_error(sql)
        return AdminCommand("SHOW", subject, None, sql)
    if verb in _NO_ARG:
        if arg is not None:
            raise errors.syntax_error(sql)
    elif verb == "SHUTDOWN":
        if arg is not None:
            arg = arg.upper()
            if arg not in _SHUTDOWN_MODES:
                raise errors.syntax_error(sql)
    elif verb not in _DB_ARG and verb != "KILL_CLIENT":
        raise errors.syntax_error(sql)
    return AdminCommand(verb, arg, None, sql)


def requires_admin(cmd: AdminCommand) -> bool:
    """stats_users may run every SHOW except FDS (it exposes cancel keys), and the ignored SETs."""
    if cmd.verb == "SHOW":
        return cmd.arg == "fds"
    if cmd.verb == "SET":
        return cmd.fake_param is None
    return True


def authorize(cmd: AdminCommand, *, is_admin: bool) -> None:
    """Raise what PgBouncer checks after parsing: access first, then the mandatory arguments."""
    if requires_admin(cmd) and not is_admin:
        raise errors.admin_access_needed()
    if cmd.verb in ("DISABLE", "ENABLE") and cmd.arg is None:
        raise errors.database_required()
    if cmd.verb == "KILL_CLIENT" and cmd.client_id is None:
        raise errors.invalid_client_id()


def admin_command(sql: str, *, is_admin: bool) -> AdminCommand:
    """parse_admin + authorize: the one call the console session needs."""
    cmd = parse_admin(sql)
    authorize(cmd, is_admin=is_admin)
    return cmd
