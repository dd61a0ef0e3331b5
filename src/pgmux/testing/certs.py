"""Certificates for the TLS tests, made with the openssl command line: a CA, a server certificate for
127.0.0.1 (and the name `pgmux-test`), a client certificate per user, and an unrelated CA with its
own server certificate (the "wrong CA" cases). Everything in one world-readable temp dir, so that
PostgreSQL and pgmux, whatever OS user they run as, can read what they need."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pgmux.testing.osuser import server_os_user


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@dataclass
class Certs:
    dir: Path

    def path(self, name: str) -> str:
        return str(self.dir / name)

    def make_ca(self, name: str) -> None:
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
                 "-keyout", f"{name}.key", "-out", f"{name}.crt", cwd=self.dir)

    def make_cert(self, name: str, cn: str, ca: str, san: str | None = None) -> None:
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}", "-keyout", f"{name}.key",
                 "-out", f"{name}.csr", cwd=self.dir)
        ext = self.dir / f"{name}.ext"
        ext.write_text(f"subjectAltName={san}\n" if san else "basicConstraints=CA:FALSE\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
                 "-CAcreateserial", "-days", "2", "-extfile", ext.name, "-out", f"{name}.crt", cwd=self.dir)
        for suffix in (".key", ".crt"):
            os.chmod(self.dir / f"{name}{suffix}", 0o644)

    def server_key_for_postgres(self) -> str:
        """server.key as PostgreSQL wants it: mode 0600, owned by the OS user the servers run as."""
        key = self.dir / "server-pg.key"
        shutil.copy(self.dir / "server.key", key)
        os.chmod(key, 0o600)
        server_os_user().chown(str(key))
        return str(key)

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def make_certs() -> Certs:
    d = Path(tempfile.mkdtemp(prefix="pgmux-certs-"))
    os.chmod(d, 0o755)
    c = Certs(d)
    c.make_ca("ca")
    c.make_ca("evil")
    c.make_cert("server", "127.0.0.1", "ca", san="IP:127.0.0.1,DNS:pgmux-test")
    c.make_cert("server2", "127.0.0.1", "ca", san="IP:127.0.0.1,DNS:pgmux-test")  # same CA, another key
    c.make_cert("evilserver", "127.0.0.1", "evil", san="IP:127.0.0.1")
    c.make_cert("client_postgres", "postgres", "ca")
    c.make_cert("evilclient", "postgres", "evil")
    for p in d.iterdir():  # pgmux may run as another OS user; libpq wants client keys private to us
        os.chmod(p, 0o600 if p.name.endswith(".key") and "client" in p.name else 0o644)
    return c
