"""auth_type = hba (auth_hba_file) and auth_type = cert, against the shared `pg` cluster with real clients:
first match wins, reject and no-match refuse with PostgreSQL's words, each exchange method works with
its roles, peer over the Unix socket, cert logins by client-certificate CN, and RELOAD re-reads the file."""

from __future__ import annotations

import getpass
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from conftest import PgmuxProc, PgmuxStarter
from pgmux.testing.certs import Certs, make_certs
from pgmux.testing.cluster import PgCluster


@pytest.fixture(scope="module")
def certs() -> Iterator[Certs]:
    c = make_certs()
    yield c
    c.cleanup()


def _connect(proc: PgmuxProc, user: str, password: str | None = None, *, unix: bool = False,
             db: str = "testdb", **kw: Any) -> Any:
    host = proc.settings["unix_socket_dir"] if unix else proc.host
    with psycopg.connect(host=host, port=proc.port, dbname=db, user=user, password=password, connect_timeout=10,
                         sslmode=kw.pop("sslmode", "disable"), **kw) as conn:
        return conn.execute("SELECT current_user").fetchone()[0]  # type: ignore[index]


def _refused(proc: PgmuxProc, user: str, password: str | None = None, **kw: Any) -> str:
    with pytest.raises(psycopg.OperationalError) as info:
        _connect(proc, user, password, **kw)
    return str(info.value)


@pytest.fixture
def conf_dir() -> Iterator[Path]:
    """Where the HBA file goes: readable by pgmux, which as root runs as the cluster's OS user (-u)."""
    d = Path(tempfile.mkdtemp(prefix="pgmux-hba-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _write(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o644)


def _start(pgmux_factory: PgmuxStarter, conf_dir: Path, hba: str, **settings: Any) -> PgmuxProc:
    _write(conf_dir / "hba.conf", hba)
    return pgmux_factory(settings={"auth_type": "hba", "auth_hba_file": str(conf_dir / "hba.conf"), **settings})


def test_hba_first_match_methods_reject_and_reload(pg: PgCluster, pgmux_factory: PgmuxStarter, conf_dir: Path) -> None:
    hba = ("local all all peer\n"
           "host all rejectme 127.0.0.1/32 reject\n"
           "host testdb md5user 127.0.0.1/32 md5\n"
           "host testdb scramuser 127.0.0.1/32 scram-sha-256\n"
           "host testdb passuser 127.0.0.1/32 password\n"
           "host testdb md5user 127.0.0.1/32 trust\n"  # never reached: the md5 line above wins
           "host pgbouncer postgres 127.0.0.1/32 trust\n")
    proc = _start(pgmux_factory, conf_dir, hba)
    assert _connect(proc, "md5user", "md5pass") == "md5user"
    assert "password authentication failed" in _refused(proc, "md5user", "wrong")
    assert _connect(proc, "scramuser", "scrampass") == "scramuser"
    assert _connect(proc, "passuser", "passpass") == "passuser"
    assert "pg_hba.conf rejects connection" in _refused(proc, "rejectme", "x")
    message = _refused(proc, "postgres")
    assert 'no pg_hba.conf entry for host "127.0.0.1", user "postgres", database "testdb"' in message
    assert "no pg_hba.conf entry" in _refused(proc, "md5user", "md5pass", db="postgres")
    assert proc.admin("SHOW VERSION")  # the console goes through the file too: its line says trust
    if proc.settings["unix_socket_dir"]:
        me = getpass.getuser()  # peer: the OS user on the other end of the Unix socket must be the user
        assert "Peer authentication failed" in _refused(proc, "postgres" if me != "postgres" else "md5user",
                                                        unix=True)
    # RELOAD re-reads the file: now postgres may log in with trust.
    _write(conf_dir / "hba.conf", hba + "host testdb postgres 127.0.0.1/32 trust\n")
    proc.admin("RELOAD")
    assert _connect(proc, "postgres") == "postgres"


def test_peer_over_the_unix_socket(pg: PgCluster, pgmux_factory: PgmuxStarter, conf_dir: Path) -> None:
    me = getpass.getuser()
    primary = pg.primary
    path = conf_dir / "hba.conf"
    _write(path, "local all all peer\n")
    proc = pgmux_factory(
        databases={"testdb": f"host={primary.host} port={primary.port} dbname=testdb user=postgres"},
        settings={"auth_type": "hba", "auth_hba_file": str(path)}, userlist={me: "", "other": ""})
    if not proc.settings["unix_socket_dir"]:
        pytest.fail("this test needs the Unix socket; the work dir path is too long for one")
    assert _connect(proc, me, unix=True) == "postgres"  # logged in to pgmux as the OS user; the db forces postgres
    assert "Peer authentication failed" in _refused(proc, "other", unix=True)
    assert "no pg_hba.conf entry" in _refused(proc, me)  # TCP has no line at all


def _cert_settings(certs: Certs) -> dict[str, Any]:
    return {"client_tls_sslmode": "verify-ca", "client_tls_ca_file": certs.path("ca.crt"),
            "client_tls_cert_file": certs.path("server.crt"), "client_tls_key_file": certs.path("server.key")}


def _with_cert(name: str, certs: Certs) -> dict[str, Any]:
    return {"sslmode": "require", "sslcert": certs.path(f"{name}.crt"), "sslkey": certs.path(f"{name}.key")}


def test_cert_lines_log_in_by_certificate_cn(pg: PgCluster, certs: Certs, pgmux_factory: PgmuxStarter,
                                             conf_dir: Path) -> None:
    proc = _start(pgmux_factory, conf_dir, "hostssl all all 127.0.0.1/32 cert\n", **_cert_settings(certs))
    assert _connect(proc, "postgres", **_with_cert("client_postgres", certs)) == "postgres"
    assert "certificate authentication failed" in _refused(proc, "md5user", "md5pass",
                                                          **_with_cert("client_postgres", certs))
    _refused(proc, "postgres", **_with_cert("evilclient", certs))  # a certificate from another CA
    _refused(proc, "postgres", sslmode="require")  # none at all


def test_auth_type_cert(pg: PgCluster, certs: Certs, pgmux_factory: PgmuxStarter) -> None:
    proc = pgmux_factory(settings={"auth_type": "cert", **_cert_settings(certs)})
    assert _connect(proc, "postgres", **_with_cert("client_postgres", certs)) == "postgres"
    assert "certificate authentication failed" in _refused(proc, "md5user", **_with_cert("client_postgres", certs))
