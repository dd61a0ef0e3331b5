"""The admin console as values: commands parsed from text, result rows as dataclasses, bytes out.

Pure: no sockets, no asyncio, no clock. The console session feeds a query to `admin_command`,
executes the command against the runtime, builds rows from `rows` and answers with `render`.
"""

from pgmux.admin.commands import AdminCommand, admin_command, authorize, parse_admin, requires_admin
from pgmux.admin.errors import AdminError

__all__ = ["AdminCommand", "AdminError", "admin_command", "authorize", "parse_admin", "requires_admin"]
