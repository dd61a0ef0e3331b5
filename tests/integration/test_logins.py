"""Authentication through pgmux, both ways: clients logging in to pgmux (auth_type trust, plain, md5,
scram-sha-256, any, against the secrets auth_file can hold), and pgmux logging in to PostgreSQL with the
auth_file secret (md5, SCRAM, cleartext, and SCRAM pass-through with only the server's verifier).

Every refusal is checked by SQLSTATE, and a client that logged in before it must still work after it:
a bad login must never disturb anyone else.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import psycopg
import pytest

from pgmux.protocol.auth import make_scram_verifier, md5_secret
from pgmux.testing.cluster import PgCluster

CONNECT: dict[str, Any] = {"connect_timeout": 5, "autocommit": True}


def connect(proc: Any, user: str, password: str | None = None, db: str = "testdb") -> psycopg.Connection[Any]:
    return psycopg.connect(proc.dsn(db, user, password), **CONNECT)


def refused(proc: Any, user: str, password: str | None, db: str = "testdb") -> LoginError:
    """The login must fail; returns its SQLSTATE and message. psycopg keeps no SQLSTATE for a failed
    connection attempt, so this one logs in with asyncpg, which does."""
    with pytest.raises(psycopg.OperationalError):
        connect(proc, user, password, db).close()
    return login_error(proc.dsn(db, user, password))


class LoginError:
    def __init__(self, sqlstate: str | None, message: str) -> None:
        self.sqlstate, self.message = sqlstate, message

    def __str__(self) -> str:
        return self.message


def login_error(dsn: str) -> LoginError:
    async def attempt() -> LoginError:
        try:
            conn = await asyncpg.connect(dsn, timeout=5, ssl=False)
        except asyncpg.PostgresError as e:
            return LoginError(e.sqlstate, str(e))
        await conn.close()
        raise AssertionError(f"login to {dsn} succeeded")

    return asyncio.run(attempt())


def forced_user_databases(pg: PgCluster) -> dict[str, str]:
    """testdb logs in to PostgreSQL as the superuser (trust on the server), whoever the client is: the
    client side of authentication is then tested alone."""
    p = pg.primary
    return {"testdb": f"host={p.host} port={p.port} dbname=testdb user={pg.superuser}"}


# -- client authentication -------------------------------------------------------------------------

SECRETS = {
    "plain": lambda user, pw: pw,
    "md5": md5_secret,
    "scram": lambda user, pw: make_scram_verifier(pw),
}

# (auth_type, kind of secret in auth_file): every pairing PgBouncer accepts.
CLIENT_CASES = [
    ("plain", "plain"), ("plain", "md5"), ("plain", "scram"),
    ("md5", "plain"), ("md5", "md5"),
    ("scram-sha-256", "plain"), ("scram-sha-256", "scram"),
]


@pytest.mark.parametrize(("auth_type", "kind"), CLIENT_CASES, ids=[f"{a}-{k}" for a, k in CLIENT_CASES])
def test_client_password_auth(pg: PgCluster, pgmux_factory: Any, auth_type: str, kind: str) -> None:
    userlist = {"alice": SECRETS[kind]("alice", "wonder land"), "bob": SECRETS[kind]("bob", "builder")}
    proc = pgmux_factory(databases=forced_user_databases(pg), userlist=userlist,
                         settings={"auth_type": auth_type})
    with connect(proc, "bob", "builder") as bystander:
        with connect(proc, "alice", "wonder land") as conn:
            assert conn.execute("SELECT current_user, 1").fetchone() == (pg.superuser, 1)
        assert refused(proc, "alice", "wonder lan").sqlstate == "28P01"
        assert refused(proc, "alice", "").sqlstate == "28P01"
        err = refused(proc, "nobody", "wonder land")
        assert err.sqlstate == "28P01"
        assert "password authentication failed" in str(err)
        # Refusals leave everyone else alone, and the right password still works afterwards.
        assert bystander.execute("SELECT 2").fetchone() == (2,)
        with connect(proc, "alice", "wonder land") as conn:
            assert conn.execute("SELECT 3").fetchone() == (3,)
    # The log is flushed by the janitor tick, not line by line: poll.
    _wait_for(lambda: 'closing because: password authentication failed for user "alice"' in proc.log(),
              "the refusal in the log")


def test_client_trust_needs_user_in_auth_file(pg: PgCluster, pgmux_factory: Any) -> None:
    proc = pgmux_factory(databases=forced_user_databases(pg), userlist={"alice": "secret"},
                         settings={"auth_type": "trust"})
    with connect(proc, "alice") as conn, connect(proc, "alice", "anything at all") as conn2:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        err = refused(proc, "nobody", None)
        assert err.sqlstate in ("28000", "28P01"), err.sqlstate
        assert "nobody" in str(err)
        assert conn2.execute("SELECT 2").fetchone() == (2,)


def test_client_auth_any_takes_whoever_comes(pg: PgCluster, pgmux_factory: Any) -> None:
    # auth_type=any: no password asked, the name is not checked; databases force their user.
    proc = pgmux_factory(databases=forced_user_databases(pg), userlist={"alice": "secret"},
                         settings={"auth_type": "any"})
    for user, password in (("alice", "wrong"), ("stranger", None), ("alice", None)):
        with connect(proc, user, password) as conn:
            assert conn.execute("SELECT current_user").fetchone() == (pg.superuser,)


# -- server authentication -------------------------------------------------------------------------

@pytest.mark.parametrize("user", ["md5user", "scramuser", "passuser"])
def test_server_login_with_auth_file_password(pgmux_factory: Any, user: str) -> None:
    """The pg fixture's pg_hba makes PostgreSQL ask md5user for md5, scramuser for SCRAM and passuser for a
    cleartext password; pgmux answers each from auth_file while the client itself logged in by trust."""
    proc = pgmux_factory()
    with connect(proc, user) as conn:
        assert conn.execute("SELECT current_user, count(*) FROM items").fetchone() == (user, 10)
    servers = [s for s in proc.admin_dicts("SHOW SERVERS") if s["user"] == user]
    assert len(servers) == 1 and servers[0]["remote_pid"] > 0


def test_server_login_with_md5_hash_in_auth_file(pgmux_factory: Any) -> None:
    # An md5 hash is all an md5 server challenge needs: the plain password never has to be stored.
    proc = pgmux_factory(userlist={"postgres": "", "md5user": md5_secret("md5user", "md5pass")},
                         settings={"auth_type": "md5"})
    with connect(proc, "md5user", "md5pass") as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("md5user",)


def test_server_login_failure_reaches_client_and_spares_others(pgmux_factory: Any) -> None:
    userlist = {"postgres": "", "md5user": "not-the-password", "scramuser": "scrampass"}
    proc = pgmux_factory(userlist=userlist, settings={"server_login_retry": 1})
    with connect(proc, "scramuser") as bystander:
        err = refused(proc, "md5user", None)
        assert err.sqlstate == "28P01"
        assert "md5user" in str(err)
        assert bystander.execute("SELECT current_user").fetchone() == ("scramuser",)
        # Fix the file, reload: the next login (after server_login_retry) works.
        proc.rewrite(userlist={**userlist, "md5user": "md5pass"})
        proc.admin("RELOAD")
        _eventually_connects(proc, "md5user", None, timeout=10)
        assert bystander.execute("SELECT 1").fetchone() == (1,)


def test_scram_pass_through_with_server_verifier(pg: PgCluster, pgmux_factory: Any) -> None:
    """auth_file holds only PostgreSQL's own SCRAM verifier for scramuser (same salt and iterations). A
    client that logs in to pgmux by SCRAM proves the ClientKey, and pgmux logs in to PostgreSQL with it,
    as PgBouncer does: no plain-text password anywhere."""
    verifier = pg.primary.psql("SELECT rolpassword FROM pg_authid WHERE rolname = 'scramuser'")
    assert verifier.startswith("SCRAM-SHA-256$")
    proc = pgmux_factory(userlist={"postgres": "", "scramuser": verifier, "md5user": "md5pass"},
                         settings={"auth_type": "scram-sha-256"})
    with connect(proc, "md5user", "md5pass") as bystander:
        assert refused(proc, "scramuser", "wrong").sqlstate == "28P01"
        with connect(proc, "scramuser", "scrampass") as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("scramuser",)
        # A second client reuses the keys: a new server login works while the first is busy.
        with connect(proc, "scramuser", "scrampass") as a, connect(proc, "scramuser", "scrampass") as b:
            a.execute("BEGIN")
            b.execute("BEGIN")
            pids = {a.execute("SELECT pg_backend_pid()").fetchone(), b.execute("SELECT pg_backend_pid()").fetchone()}
            assert len(pids) == 2
            a.execute("COMMIT")
            b.execute("COMMIT")
        assert bystander.execute("SELECT 1").fetchone() == (1,)


def _wait_for(predicate: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def _eventually_connects(proc: Any, user: str, password: str | None, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with connect(proc, user, password) as conn:
                assert conn.execute("SELECT current_user").fetchone() == (user,)
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
