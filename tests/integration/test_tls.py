"""TLS both ways, with certificates the tests make and a PostgreSQL that accepts only TLS over TCP.

- towards clients: client_tls_sslmode and its files, with psql, psycopg and asyncpg; each failure that
  must happen (plain text where TLS is required, a wrong CA, a wrong host name, a missing or foreign
  client certificate); certificates reloaded without dropping connected clients;
- towards servers: server_tls_sslmode disable/prefer/require/verify-ca/verify-full against a server
  whose pg_hba.conf rejects plain TCP (`hostnossl ... reject`), and against one without TLS;
- a TLS setting pgmux cannot honour stops start-up with a message naming it.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import struct
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import asyncpg
import psycopg
import pytest
from helpers import wait_for

from conftest import PgmuxStarter
from pgmux.net.probe import Probe
from pgmux.net.tls import Contexts
from pgmux.testing.certs import Certs, make_certs
from pgmux.testing.cluster import HOST, PgCluster, free_port, render_ini, server_os_user


@pytest.fixture(scope="module")
def certs() -> Iterator[Certs]:
    c = make_certs()
    yield c
    c.cleanup()


@pytest.fixture(scope="module")
def tls_pg(certs: Certs) -> Iterator[PgCluster]:
    """A primary with ssl = on whose pg_hba.conf rejects plain TCP: only TLS gets in over TCP."""
    conf = {"ssl": "on", "ssl_cert_file": certs.path("server.crt"), "ssl_key_file": certs.server_key_for_postgres()}
    with PgCluster(replicas=0, conf_extra=conf, hba_extra=[f"hostnossl all all {HOST}/32 reject"]) as c:
        c.primary.psql("CREATE DATABASE testdb")
        yield c


def _db(pg: PgCluster) -> dict[str, str]:
    p = pg.primary
    return {"testdb": f"host={p.host} port={p.port} dbname=testdb"}


def _client_tls(certs: Certs, mode: str = "require", **more: Any) -> dict[str, Any]:
    return {"client_tls_sslmode": mode, "client_tls_cert_file": certs.path("server.crt"),
            "client_tls_key_file": certs.path("server.key"), **more}


def _query(dsn: str, sql: str = "SELECT 1", **kw: Any) -> Any:
    with psycopg.connect(dsn, connect_timeout=10, **kw) as conn:
        return conn.execute(sql).fetchone()[0]  # type: ignore[index]


def _refused(dsn: str, **kw: Any) -> str:
    with pytest.raises(psycopg.OperationalError) as info:
        _query(dsn, **kw)
    return str(info.value)


def test_client_tls_require_with_psycopg_psql_and_asyncpg(tls_pg: PgCluster, certs: Certs,
                                                            pgmux_factory: PgmuxStarter) -> None:
    proc = pgmux_factory(databases=_db(tls_pg), settings={**_client_tls(certs), "server_tls_sslmode": "require"})
    dsn = proc.dsn()
    # Encrypted both ways: the server side would be refused in plain text by its pg_hba.conf.
    assert _query(dsn, sslmode="require") == 1
    assert _query(dsn, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", sslmode="require") is True
    # verify-full against our CA, for the address the certificate names.
    assert _query(dsn, sslmode="verify-full", sslrootcert=certs.path("ca.crt")) == 1
    # The failures that must happen.
    assert "SSL required" in _refused(dsn, sslmode="disable")
    assert "certificate verify failed" in _refused(dsn, sslmode="verify-ca", sslrootcert=certs.path("evil.crt"))
    wrong_name = f"host=localhost.invalid hostaddr={HOST} port={proc.port} dbname=testdb user=postgres"
    assert "does not match host name" in _refused(wrong_name, sslmode="verify-full", sslrootcert=certs.path("ca.crt"))
    # psql (libpq 15) and asyncpg, each with its own TLS stack.
    env = {**os.environ, "PGSSLMODE": "verify-full", "PGSSLROOTCERT": certs.path("ca.crt")}
    out = subprocess.run(["psql", "-X", "-A", "-t", "-c", "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                          dsn], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "t", out.stderr

    async def with_asyncpg() -> int:
        ctx = ssl.create_default_context(cafile=certs.path("ca.crt"))
        conn = await asyncpg.connect(dsn, ssl=ctx, timeout=10)
        try:
            return int(await conn.fetchval("SELECT 41 + 1"))
        finally:
            await conn.close()

    assert asyncio.run(with_asyncpg()) == 42
    clients = [r for r in proc.admin_dicts("SHOW CLIENTS") if r["database"] == "testdb"]
    servers = proc.admin_dicts("SHOW SERVERS")
    assert servers and all(r["tls"].startswith("TLSv1.") for r in servers), servers
    assert all(r["tls"] == "" for r in clients)  # none connected now; the console itself is plain
    wait_for(lambda: "pooler error: SSL required" in proc.log(), "the refused plain-text login in the log")


def test_client_tls_prefer_takes_both_and_the_unix_socket_stays_plain(tls_pg: PgCluster, certs: Certs,
                                                                      pgmux_factory: PgmuxStarter) -> None:
    proc = pgmux_factory(databases=_db(tls_pg), settings={**_client_tls(certs, "prefer"),
                                                          "server_tls_sslmode": "prefer"})
    assert _query(proc.dsn(), sslmode="disable") == 1
    assert _query(proc.dsn(), sslmode="require") == 1
    # libpq's default (prefer) gets TLS: SHOW CLIENTS says so while the client is connected.
    with psycopg.connect(proc.dsn(), connect_timeout=10) as conn:
        conn.execute("SELECT 1")
        mine = [r for r in proc.admin_dicts("SHOW CLIENTS") if r["database"] == "testdb"]
        assert len(mine) == 1 and mine[0]["tls"].startswith("TLSv1."), mine
    sock_dir = proc.settings["unix_socket_dir"]
    if sock_dir:  # the Unix socket never does TLS, as in PostgreSQL; require does not apply to it
        assert _query(f"host={sock_dir} port={proc.port} dbname=testdb user=postgres", sslmode="disable") == 1


def test_client_certificates_for_verify_ca(tls_pg: PgCluster, certs: Certs, pgmux_factory: PgmuxStarter) -> None:
    proc = pgmux_factory(databases=_db(tls_pg), settings={
        **_client_tls(certs, "verify-ca", client_tls_ca_file=certs.path("ca.crt")), "server_tls_sslmode": "require"})
    dsn = proc.dsn()
    assert _query(dsn, sslmode="require", sslcert=certs.path("client_postgres.crt"),
                  sslkey=certs.path("client_postgres.key")) == 1
    _refused(dsn, sslmode="require")  # no certificate
    _refused(dsn, sslmode="require", sslcert=certs.path("evilclient.crt"), sslkey=certs.path("evilclient.key"))
    assert "SSL required" in _refused(dsn, sslmode="disable")


def _server_cert_serial(port: int) -> int:
    """SSLRequest by hand, then a TLS handshake that reads the certificate pgmux presents now."""
    with socket.create_connection((HOST, port), timeout=10) as raw:
        raw.sendall(struct.pack("!ii", 8, 80877103))
        assert raw.recv(1) == b"S"
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        with ctx.wrap_socket(raw) as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return hash(der)


def test_certificates_reload_without_dropping_clients(tls_pg: PgCluster, certs: Certs,
                                                      pgmux_factory: PgmuxStarter) -> None:
    proc = pgmux_factory(databases=_db(tls_pg), settings={**_client_tls(certs), "server_tls_sslmode": "require"})
    before = _server_cert_serial(proc.port)
    with psycopg.connect(proc.dsn(), sslmode="require", connect_timeout=10, autocommit=True) as kept:
        assert kept.execute("SELECT 1").fetchone() == (1,)
        proc.rewrite(settings={"client_tls_cert_file": certs.path("server2.crt"),
                               "client_tls_key_file": certs.path("server2.key")})
        proc.admin("RELOAD")
        after = _server_cert_serial(proc.port)
        assert after != before
        assert kept.execute("SELECT 2").fetchone() == (2,)  # the connected client kept its session
    assert _query(proc.dsn(), sslmode="verify-full", sslrootcert=certs.path("ca.crt")) == 1
    # A reload naming a file that does not exist keeps the working certificate, and says why.
    proc.rewrite(settings={"client_tls_cert_file": certs.path("missing.crt")})
    proc.admin("RELOAD")
    assert _server_cert_serial(proc.port) == after
    wait_for(lambda: "TLS configuration not reloaded" in proc.log(), "the reload error in the log")


@pytest.mark.parametrize("mode, ca, works", [
    ("disable", None, False),  # plain TCP: the server's pg_hba.conf rejects it
    ("allow", None, False),  # pgmux tries plain text first and does not retry with TLS
    ("prefer", None, True),
    ("require", None, True),
    ("verify-ca", "ca.crt", True),
    ("verify-ca", "evil.crt", False),
    ("verify-full", "ca.crt", True),
    ("verify-full", "evil.crt", False),
])
def test_server_tls_modes(tls_pg: PgCluster, certs: Certs, pgmux_factory: PgmuxStarter, mode: str,
                          ca: str | None, works: bool) -> None:
    settings: dict[str, Any] = {"server_tls_sslmode": mode}
    if ca:
        settings["server_tls_ca_file"] = certs.path(ca)
    proc = pgmux_factory(databases=_db(tls_pg), settings=settings)
    if works:
        assert _query(proc.dsn(), "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()") is True
    else:
        message = _refused(proc.dsn())
        assert "pg_hba.conf" in message or "certificate verify failed" in message or "TLS" in message, message


def test_server_without_tls(pg: PgCluster, pgmux_factory: PgmuxStarter) -> None:
    """PostgreSQL with ssl = off answers SSLRequest with N: prefer goes on in plain text, require fails."""
    assert _query(pgmux_factory(settings={"server_tls_sslmode": "prefer"}).dsn()) == 1
    message = _refused(pgmux_factory(settings={"server_tls_sslmode": "require"}).dsn())
    assert "does not accept TLS" in message, message


def test_health_check_probe_speaks_tls(tls_pg: PgCluster, certs: Certs) -> None:
    class S:
        server_tls_sslmode = "verify-full"
        server_tls_ca_file = certs.path("ca.crt")
        server_tls_cert_file = server_tls_key_file = server_tls13_ciphers = None
        server_tls_protocols, server_tls_ciphers = "secure", "fast"
        client_tls_sslmode = "disable"

    async def check(tls: Any) -> list[str | None]:
        p = tls_pg.primary
        try:
            conn = await Probe.open(p.host, p.port, "postgres", None, "postgres", "/tmp", tls)
        except Exception:
            await asyncio.sleep(0.2)  # the probe closed its transport: let the loop finish that
            raise
        try:
            return await conn.query_row("SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        finally:
            conn.close()
            await asyncio.sleep(0.2)

    assert asyncio.run(asyncio.wait_for(check(Contexts(S())), 30)) == ["true"]
    with pytest.raises(Exception, match="pg_hba|reject"):
        asyncio.run(asyncio.wait_for(check(None), 30))


@pytest.mark.parametrize("settings, words", [
    ({"client_tls_sslmode": "require"}, "client_tls_cert_file and client_tls_key_file must be set"),
    ({"client_tls_sslmode": "require", "client_tls_cert_file": "/nonexistent.crt",
      "client_tls_key_file": "/nonexistent.key"}, "/nonexistent.crt"),
    ({"server_tls_sslmode": "verify-full"}, "server_tls_ca_file must be set"),
    ({"server_tls_sslmode": "require", "server_tls_protocols": "tlsv1.0,tlsv1.3"}, "gap"),
    ({"server_tls_sslmode": "require", "server_tls_ciphers": "NO-SUCH-CIPHER"}, "server_tls_ciphers"),
    ({"client_tls_sslmode": "allow", "client_tls_dheparams": "legacy"}, "client_tls_dheparams"),
])
def test_tls_settings_that_cannot_be_honoured_stop_start_up(certs: Certs, settings: dict[str, Any],
                                                             words: str) -> None:
    if settings.get("client_tls_sslmode") == "allow":
        settings = {**_client_tls(certs, "allow"), **settings}
    ini = certs.dir / "pgbouncer.ini"  # readable by the OS user pgmux switches to as root (-u)
    ini.write_text(render_ini({"db": f"host={HOST} port=5432"},
                              {"listen_addr": HOST, "listen_port": free_port(), "unix_socket_dir": "",
                               "auth_type": "trust", **settings}))
    ini.chmod(0o644)
    user = server_os_user()
    switch = ["-u", user.name] if user.switch else []
    proc = subprocess.run([sys.executable, "-m", "pgmux", *switch, str(ini)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode != 0
    assert words in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_scram_channel_binding_required_by_the_client(tls_pg: PgCluster, certs: Certs,
                                                      pgmux_factory: PgmuxStarter) -> None:
    p = tls_pg.primary
    proc = pgmux_factory(databases={"testdb": f"host={p.host} port={p.port} dbname=testdb user=postgres"},
                         settings={**_client_tls(certs, "prefer"), "server_tls_sslmode": "require",
                                   "auth_type": "scram-sha-256"})
    dsn = proc.dsn(user="scramuser", password="scrampass")
    assert _query(dsn, sslmode="require", channel_binding="require") == 1
    # psql (libpq 15) too, with the CA checked: the binding is to the certificate it verified.
    env = {**os.environ, "PGSSLMODE": "verify-full", "PGSSLROOTCERT": certs.path("ca.crt"),
           "PGCHANNELBINDING": "require"}
    out = subprocess.run(["psql", "-X", "-A", "-t", "-c", "SELECT 1", dsn], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "1", out.stderr
    # Without TLS there is nothing to bind to: -PLUS is not offered, and libpq refuses to go on.
    assert "channel binding" in _refused(dsn, sslmode="disable", channel_binding="require")
    assert _query(dsn, sslmode="disable") == 1  # plain SCRAM still works where binding is not asked for
    assert "password authentication failed" in _refused(proc.dsn(user="scramuser", password="wrong"),
                                                         sslmode="require", channel_binding="require")


def test_direct_tls_of_postgresql_17_clients(tls_pg: PgCluster, certs: Certs, pgmux_factory: PgmuxStarter) -> None:
    """sslnegotiation=direct: the client opens with its TLS hello (ALPN postgresql), no SSLRequest."""
    proc = pgmux_factory(databases=_db(tls_pg), settings={**_client_tls(certs), "server_tls_sslmode": "require"})
    for _ in range(5):  # each one a fresh handshake on a hello read before TLS took the socket over
        assert _query(proc.dsn(), sslmode="verify-full", sslrootcert=certs.path("ca.crt"),
                      sslnegotiation="direct") == 1
    with psycopg.connect(proc.dsn(), sslmode="require", sslnegotiation="direct", connect_timeout=10) as conn:
        conn.execute("SELECT 1")
        mine = [r for r in proc.admin_dicts("SHOW CLIENTS") if r["database"] == "testdb"]
        assert len(mine) == 1 and mine[0]["tls"].startswith("TLSv1.3"), mine
    # Without ALPN (a plain TLS client, not PostgreSQL's) the connection is refused, as PostgreSQL 17 does.
    ctx = ssl.create_default_context(cafile=certs.path("ca.crt"))
    with socket.create_connection((HOST, proc.port), timeout=10) as raw:
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            with ctx.wrap_socket(raw, server_hostname=HOST) as tls:
                tls.sendall(struct.pack("!ii", 8, 196608))
                if not tls.recv(1):
                    raise ConnectionError("closed")
    wait_for(lambda: "direct TLS without ALPN" in proc.log(), "the refusal in the log")
    # pgmux without client TLS refuses a direct-TLS client rather than hang.
    plain = pgmux_factory(databases=_db(tls_pg), settings={"server_tls_sslmode": "require"})
    _refused(plain.dsn(), sslmode="require", sslnegotiation="direct")


def test_server_verify_full_checks_the_host_name(tls_pg: PgCluster, certs: Certs, pgmux_factory: PgmuxStarter) -> None:
    """The server's certificate names 127.0.0.1 and pgmux-test, not localhost: reached as localhost,
    verify-ca (chain only) connects and verify-full (chain and name) refuses."""
    p = tls_pg.primary
    databases = {"testdb": f"host=localhost port={p.port} dbname=testdb"}
    ca = {"server_tls_ca_file": certs.path("ca.crt")}
    proc = pgmux_factory(databases=databases, settings={"server_tls_sslmode": "verify-ca", **ca})
    assert _query(proc.dsn(), "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()") is True
    proc = pgmux_factory(databases=databases, settings={"server_tls_sslmode": "verify-full", **ca})
    message = _refused(proc.dsn())
    assert "TLS" in message or "certificate" in message or "match" in message, message
    wait_for(lambda: "localhost" in proc.log() and ("mismatch" in proc.log() or "match" in proc.log()),
             "the host name refusal in pgmux's log")
