"""Which authentication a client gets: auth_type, or for auth_type = hba the first matching line of
auth_hba_file; and the checks of the two methods that need the connection itself (cert: the client
certificate's CN is the user; peer: the Unix socket peer's OS user is the user).

The methods that run an exchange (password, md5, scram-sha-256) and trust go on to
protocol/auth.ClientAuthenticator; cert and peer are decided here and then authenticate as "any".
Refusals use PostgreSQL's words and SQLSTATE 28000.
"""

from __future__ import annotations

import pwd
from typing import Any

from pgmux.config.hba import first_match
from pgmux.errors import PgmuxError

# auth_type -> the exchange it runs, for the types that need nothing else decided first (choose() returns
# the same for them; runtime/logins.py reads this without the call).
EXCHANGES = {"trust": "trust", "password": "plain", "md5": "md5", "scram-sha-256": "scram-sha-256"}


def _refuse(message: str) -> PgmuxError:
    return PgmuxError(message, sqlstate="28000", severity="FATAL")


def _tls_object(c: Any) -> Any:
    return c.transport.get_extra_info("ssl_object") if c.transport is not None else None


def choose(app: Any, c: Any, database: str, user: str, replication: bool = False) -> str:
    """The auth_type the client's exchange runs with ("any" once cert or peer has proven it)."""
    s = app.config.settings
    method = s.auth_type
    if method == "hba":
        tls = _tls_object(c) is not None
        rule = first_match(app.config.hba, is_unix=c.is_unix, tls=tls, database=database, user=user,
                           addr=c.addr, replication=replication)
        where = "local" if c.is_unix else f'host "{c.addr}"'
        enc = "SSL encryption" if tls else "no encryption"
        if rule is None:
            raise _refuse(f'no pg_hba.conf entry for {where}, user "{user}", database "{database}", {enc}')
        if rule.method == "reject":
            raise _refuse(f'pg_hba.conf rejects connection for {where}, user "{user}", database "{database}", {enc}')
        method = rule.method
    if method == "cert":
        if _client_cn(c) != user:
            raise _refuse(f'certificate authentication failed for user "{user}"')
        return "any"
    if method == "peer":
        if not c.is_unix or c.peer_uid is None or _os_user(c.peer_uid) != user:
            raise _refuse(f'Peer authentication failed for user "{user}"')
        return "any"
    if method in ("pam", "ldap"):
        raise _refuse(f"auth_type {method} is not supported by pgmux")
    return EXCHANGES.get(method, method)


def _client_cn(c: Any) -> str | None:
    obj = _tls_object(c)
    cert = obj.getpeercert() if obj is not None else None
    if not cert:
        return None  # no TLS, or no verified client certificate
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


def _os_user(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None
