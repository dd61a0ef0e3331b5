"""auth_user / auth_query: users missing from auth_file are looked up in PostgreSQL, as PgBouncer does,
with SCRAM and md5 secrets, expired VALID UNTIL refused, unknown users answered like wrong passwords,
and no secret in pgmux's log or console output."""

from __future__ import annotations

import statistics
import time
from typing import Any

import psycopg
import pytest

from conftest import PgmuxProc, PgmuxStarter
from pgmux.testing.cluster import PgCluster


@pytest.fixture(scope="module")
def roles(pg: PgCluster) -> dict[str, str]:
    """Roles only PostgreSQL knows (not in pgmux's auth_file), with the secrets PostgreSQL stores."""
    pg.create_role("aq_scram", "aq scram pass", method="scram-sha-256")
    pg.create_role("aq_md5", "aq md5 pass", method="md5")
    pg.create_role("aq_expired", "aq expired pass", method="scram-sha-256")
    pg.primary.psql("ALTER ROLE aq_expired VALID UNTIL '2001-01-01'")
    return {name: pg.primary.psql(f"SELECT rolpassword FROM pg_authid WHERE rolname = '{name}'")
            for name in ("aq_scram", "aq_md5", "aq_expired")}


def _login(proc: PgmuxProc, user: str, password: str) -> Any:
    with psycopg.connect(host=proc.host, port=proc.port, dbname="testdb", user=user, password=password,
                         connect_timeout=10) as conn:
        return conn.execute("SELECT current_user").fetchone()[0]  # type: ignore[index]


def _refused(proc: PgmuxProc, user: str, password: str) -> psycopg.OperationalError:
    with pytest.raises(psycopg.OperationalError) as info:
        _login(proc, user, password)
    return info.value


def _start(pgmux_factory: PgmuxStarter, auth_type: str, **more: Any) -> PgmuxProc:
    # Only the auth_user itself is in auth_file; everyone else comes from pg_authid.
    return pgmux_factory(settings={"auth_type": auth_type, "auth_user": "postgres", **more},
                         userlist={"postgres": "console pw"})


def _console(proc: PgmuxProc, sql: str) -> list[Any]:
    with psycopg.connect(host=proc.host, port=proc.port, dbname="pgbouncer", user="postgres", password="console pw",
                         autocommit=True, connect_timeout=10, cursor_factory=psycopg.ClientCursor) as conn:
        return conn.execute(sql).fetchall()


def test_scram_users_from_pg_authid(roles: dict[str, str], pgmux_factory: PgmuxStarter) -> None:
    proc = _start(pgmux_factory, "scram-sha-256", verbose=2)  # the most pgmux logs
    assert _login(proc, "aq_scram", "aq scram pass") == "aq_scram"  # and the server login used its keys
    assert _login(proc, "aq_scram", "aq scram pass") == "aq_scram"
    wrong = _refused(proc, "aq_scram", "wrong")
    unknown = _refused(proc, "aq_nobody", "whatever")
    expired = _refused(proc, "aq_expired", "aq expired pass")  # VALID UNTIL has passed (CVE-2025-2291)
    for err in (wrong, unknown, expired):  # (psycopg gives no SQLSTATE for a failed connect: the words)
        assert "FATAL:  password authentication failed for user" in str(err)
    assert 'password authentication failed for user "aq_nobody"' in str(unknown)
    assert str(wrong).replace("aq_scram", "X") == str(unknown).replace("aq_nobody", "X")
    log = proc.log()
    assert "no such user" not in str(unknown)
    shown = repr([_console(proc, f"SHOW {what}") for what in ("USERS", "CONFIG", "CLIENTS", "SERVERS", "POOLS")])
    for secret in [*roles.values(), "aq scram pass", "aq md5 pass"]:
        assert secret not in log and secret not in shown


def test_md5_users_and_a_per_database_auth_query(roles: dict[str, str], pg: PgCluster,
                                                 pgmux_factory: PgmuxStarter) -> None:
    p = pg.primary
    query = "SELECT usename, passwd FROM pg_shadow WHERE usename=$1"
    proc = pgmux_factory(settings={"auth_type": "md5"}, userlist={"postgres": ""},
                         databases={"testdb": f"host={p.host} port={p.port} dbname=testdb auth_user=postgres "
                                              f"auth_dbname=postgres auth_query='{query}'"})
    assert _login(proc, "aq_md5", "aq md5 pass") == "aq_md5"
    assert "password authentication failed" in str(_refused(proc, "aq_md5", "wrong"))
    stats = p.psql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgmux auth_query' "
                   "AND datname = 'postgres'")
    assert stats == "1"  # one kept connection, to auth_dbname


def test_unknown_user_and_wrong_password_take_alike(roles: dict[str, str], pgmux_factory: PgmuxStarter) -> None:
    """Both run one lookup and a full SCRAM exchange (a mock verifier for the unknown user): the time to
    the refusal does not say which it was. A loose bound: this machine is shared."""
    proc = _start(pgmux_factory, "scram-sha-256")
    times: dict[str, list[float]] = {"aq_scram": [], "aq_nobody": []}
    for _ in range(7):
        for user in times:
            start = time.perf_counter()
            _refused(proc, user, "wrong")
            times[user].append(time.perf_counter() - start)
    a, b = (statistics.median(t) for t in times.values())
    assert max(a, b) < 3 * min(a, b) + 0.05, times
