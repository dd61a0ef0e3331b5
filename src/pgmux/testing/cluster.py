"""Throwaway PostgreSQL clusters (one primary, N streaming replicas) for tests, `pgmux demo` and the bench.

PostgreSQL refuses to run as root. When we are root, every command that owns server files (initdb,
postgres, pg_basebackup, pg_ctl promote) runs as an unprivileged OS user (`pgmuxtest`, or
$PGMUX_TEST_OSUSER, created on first use) and the temp dir is handed over to that user. Clients
(psql) run as ourselves over TCP on 127.0.0.1. When we are not root, everything runs as ourselves.

The postmaster runs as OUR child (`postgres -D`, not `pg_ctl start`): pg_ctl daemonizes it, and an
orphaned postmaster becomes a zombie that only init can reap. Some inits here reap late, and a zombie
still "owns" postmaster.pid, so a crashed-then-restarted node would refuse to start. As our child we
reap it at once, and we stop it by PID (SIGTERM/SIGINT/SIGQUIT = smart/fast/immediate).

Every wait is bounded, and `stop()` undoes everything `start()` did.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from typing import Any

from pgmux.testing.osuser import OS_USER, OsUser, _clean_env, find_bindir, pgmux_user_args, server_os_user
from pgmux.testing.procs import (
    HOST,
    ClusterError,
    _Exited,
    die_with_parent,
    free_port,
    port_accepts,
    quote_ident,
    quote_literal,
    render_ini,
    render_userlist,
    stop_process,
    wait_listening,
    wait_until,
)

# The names the tests, bench/ and the demo take from here (the helpers live in procs.py and osuser.py).
__all__ = ["AUTH_METHODS", "BASE_CONF", "DEFAULT_HBA", "HOST", "OS_USER", "SUPERUSER", "ClusterError", "OsUser",
           "PgCluster", "PgNode", "die_with_parent", "find_bindir", "free_port", "pgmux_user_args",
           "port_accepts", "quote_ident", "quote_literal", "render_ini", "render_userlist", "server_os_user",
           "stop_process", "wait_listening", "wait_until"]

SUPERUSER = "postgres"
AUTH_METHODS = ("scram-sha-256", "md5", "password")

# Settings for a disposable server: fast and unsafe. conf_extra overrides any of them.
BASE_CONF: dict[str, Any] = {
    "listen_addresses": HOST,
    "fsync": False,
    "synchronous_commit": False,
    "full_page_writes": False,
    "max_connections": 300,
    "wal_level": "replica",
    "max_wal_senders": 10,
    "wal_keep_size": "256MB",
    "hot_standby": True,
    "shared_buffers": "32MB",
    "logging_collector": False,
    "log_line_prefix": "%m [%p] %q%u@%d ",
}

DEFAULT_HBA = [
    "local all all trust",
    f"host all all {HOST}/32 trust",
    "local replication all trust",
    f"host replication all {HOST}/32 trust",
]


def _conf_value(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int | float):
        return str(value)
    return quote_literal(str(value))


class PgNode:
    """One PostgreSQL server of a PgCluster. Its files live in `<cluster dir>/<name>/`."""

    def __init__(self, cluster: PgCluster, name: str, role: str) -> None:
        self.cluster = cluster
        self.name = name
        self.role = role
        self.host = HOST
        self.port = 0
        self.node_dir = os.path.join(cluster.base_dir, name)
        self.datadir = os.path.join(self.node_dir, "data")
        self.socket_dir = self.node_dir
        self.logfile = os.path.join(self.node_dir, "postgres.log")
        self._proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"<PgNode {self.name} {self.role} {self.host}:{self.port}>"

    # -- facts ---------------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The postmaster's PID from postmaster.pid, or None when the server is not running."""
        if not self.is_running():
            return None
        try:
            with open(os.path.join(self.datadir, "postmaster.pid")) as f:
                return int(f.readline().strip())
        except (OSError, ValueError):
            return self._proc.pid if self._proc else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def dsn(self, db: str = "postgres", user: str | None = None, password: str | None = None) -> str:
        """A libpq conninfo string for this server over TCP."""
        parts = [f"host={self.host}", f"port={self.port}", f"dbname={db}", f"user={user or SUPERUSER}"]
        if password is not None:
            # conninfo quoting: single quotes, with backslash escapes (not SQL's doubled quotes).
            parts.append("password='" + password.replace("\\", "\\\\").replace("'", "\\'") + "'")
        return " ".join(parts)

    def log(self) -> str:
        try:
            with open(self.logfile, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    # -- client side ---------------------------------------------------------------------------------

    def psql(self, sql: str, db: str = "postgres", user: str | None = None, password: str | None = None,
             timeout: float = 60) -> str:
        """Run `sql` with psql over TCP as `user` (the superuser by default); return stdout stripped."""
        env = _clean_env()
        env["PGCONNECT_TIMEOUT"] = "10"
        if password is not None:
            env["PGPASSWORD"] = password
        cmd = [self.cluster.bin("psql"), "-X", "-A", "-t", "-q", "-w", "-v", "ON_ERROR_STOP=1",
               "-h", self.host, "-p", str(self.port), "-U", user or SUPERUSER, "-d", db, "-c", sql]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as e:
            raise ClusterError(f"psql on {self.name} timed out after {timeout}s: {sql!r}") from e
        if proc.returncode != 0:
            raise ClusterError(f"psql on {self.name} ({self.host}:{self.port} db={db} "
                               f"user={user or SUPERUSER}) failed: {proc.stderr.strip()}")
        return proc.stdout.strip()

    # -- lifecycle -----------------------------------------------------------------------------------

    def write_conf(self) -> None:
        """(Re)write this node's own settings; postgresql.conf includes the file last, so it wins."""
        conf = dict(BASE_CONF)
        conf.update(port=self.port, unix_socket_directories=self.socket_dir, cluster_name=self.name)
        conf.update(self.cluster.conf_extra)
        text = "".join(f"{k} = {_conf_value(v)}\n" for k, v in conf.items())
        self.cluster.write_owned(os.path.join(self.datadir, "pgmux_node.conf"), text)

    def start(self, timeout: float = 60) -> None:
        """Start the postmaster and wait until it accepts connections. Retries on a fresh port if we
        lost the race for the one we picked."""
        if self.is_running():
            return
        for attempt in range(3):
            if not self.port or attempt:
                self.port = free_port()
            self.write_conf()
            with open(self.logfile, "ab") as log:
                self._proc = self.cluster.popen_owned([self.cluster.bin("postgres"), "-D", self.datadir], log)
            try:
                wait_until(self._ready, timeout, f"{self.name} to accept connections", interval=0.05)
                return
            except ClusterError as e:
                error = str(e)
            self._proc.poll()
            tail = self.log()[-2000:]
            self.stop("immediate")
            if "could not bind" not in tail and "already in use" not in tail:
                break
        raise ClusterError(f"postgres did not start for {self.name} (port {self.port}): {error}\n"
                           f"--- {self.logfile} ---\n{tail}")

    def _ready(self) -> bool:
        # What `pg_ctl start -w` checks: line 8 of postmaster.pid says "ready" (or "standby" for a
        # hot standby) and line 1 is our postmaster.
        assert self._proc is not None
        if self._proc.poll() is not None:
            raise _Exited(f"postgres exited with code {self._proc.returncode}")
        try:
            with open(os.path.join(self.datadir, "postmaster.pid")) as f:
                lines = f.read().splitlines()
        except OSError:
            return False
        return len(lines) >= 8 and lines[0].strip() == str(self._proc.pid) and \
            lines[7].strip() in ("ready", "standby")

    def stop(self, mode: str = "fast", timeout: float = 60) -> None:
        """Shut down with `mode` (smart, fast, immediate); SIGKILL the group if that takes longer than
        `timeout`. Idempotent."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        sig = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}[mode]
        try:
            proc.send_signal(sig)
            proc.wait(timeout)
            return
        except subprocess.TimeoutExpired:
            pass
        self.kill()
        if proc.poll() is None:
            raise ClusterError(f"could not stop {self.name} (postmaster pid {proc.pid})")

    def kill(self) -> None:
        """Crash the server: SIGKILL the postmaster and its backends at once, like a power cut. The
        postmaster leads its own process group; killing only it would leave backends holding shared
        memory for a while, and start() would refuse.

        With synchronous_commit=off (the default here) commits from the last wal_writer_delay (200 ms)
        may be lost, as in a real crash: pass conf_extra={"synchronous_commit": "on"} if that matters."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            pass

    def in_recovery(self) -> bool:
        return self.psql("SELECT pg_is_in_recovery()") == "t"

    def promote(self, timeout: float = 30) -> None:
        """pg_ctl promote, then wait (bounded) until the server has left recovery."""
        self.cluster.run_owned([self.cluster.bin("pg_ctl"), "-D", self.datadir, "-w",
                                "-t", str(int(timeout)), "promote"], timeout=timeout + 15)
        wait_until(lambda: not self.in_recovery(), timeout, f"{self.name} to leave recovery")
        self.role = "primary"


class PgCluster:
    """A primary and `replicas` streaming hot standbys in one temp dir.

    with PgCluster(replicas=1) as c:
        c.primary.psql("CREATE TABLE t (x int)")
        c.create_role("alice", "secret", method="md5")
    """

    def __init__(self, base_dir: str | None = None, replicas: int = 1, hba_extra: Iterable[str] = (),
                 conf_extra: Mapping[str, Any] | None = None, keep: bool = False) -> None:
        self.parent_dir = base_dir
        self.n_replicas = replicas
        self.hba_extra = list(hba_extra)
        self.conf_extra = dict(conf_extra or {})
        self.keep = keep
        self.superuser = SUPERUSER
        self.role_hba: list[str] = []
        self.base_dir = ""
        self.nodes: list[PgNode] = []
        self.os_user: OsUser | None = None
        self._bindir = ""
        self._started = False

    @property
    def primary(self) -> PgNode:
        """The node started as primary (after a promote(), check `node.role`)."""
        return self.nodes[0]

    @property
    def replicas(self) -> list[PgNode]:
        return self.nodes[1:]

    def bin(self, name: str) -> str:
        return os.path.join(self._bindir, name)

    # -- running things as the server's OS user -------------------------------------------------------

    def run_owned(self, cmd: list[str], timeout: float = 120,
                  check: bool = True) -> subprocess.CompletedProcess[str]:
        assert self.os_user is not None
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=self.base_dir,
                                  env=self.os_user.env(), stdin=subprocess.DEVNULL,
                                  **self.os_user.popen_kwargs())
        except subprocess.TimeoutExpired as e:
            raise ClusterError(f"{os.path.basename(cmd[0])} timed out after {timeout}s: {cmd}") from e
        if check and proc.returncode != 0:
            raise ClusterError(f"{os.path.basename(cmd[0])} failed (exit {proc.returncode}): {cmd}\n"
                               f"{proc.stdout.strip()}\n{proc.stderr.strip()}")
        return proc

    def popen_owned(self, cmd: list[str], log: Any) -> subprocess.Popen[bytes]:
        """Start a long-running server process as the server's OS user, in a session of its own
        (so a Ctrl-C in our terminal does not reach it and killpg() reaches all of it)."""
        assert self.os_user is not None
        return subprocess.Popen(die_with_parent(cmd, "QUIT"), stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                cwd=self.base_dir, env=self.os_user.env(), start_new_session=True,
                                **self.os_user.popen_kwargs())

    def write_owned(self, path: str, text: str, mode: int = 0o600) -> None:
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, mode)
        assert self.os_user is not None
        self.os_user.chown(path)

    def mkdir_owned(self, path: str, mode: int = 0o700) -> None:
        os.makedirs(path, mode=mode, exist_ok=True)
        assert self.os_user is not None
        self.os_user.chown(path)

    # -- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> PgCluster:
        if self._started:
            return self
        self._bindir = find_bindir()
        self.os_user = server_os_user()
        if self.parent_dir:
            os.makedirs(self.parent_dir, exist_ok=True)
        self.nodes, self.role_hba = [], []
        self.base_dir = tempfile.mkdtemp(prefix="pgmux-cluster-", dir=self.parent_dir)
        os.chmod(self.base_dir, 0o755)
        self.os_user.chown(self.base_dir)
        self._started = True
        atexit.register(self.stop)
        try:
            self._check_reachable()
            self._init_primary()
            for i in range(1, self.n_replicas + 1):
                self._add_replica(f"replica{i}")
        except BaseException:
            self.stop()
            raise
        return self

    def _check_reachable(self) -> None:
        # A parent dir that is private to root (pytest's tmp_path is 0700) makes initdb fail obscurely.
        if self.os_user is not None and self.os_user.switch:
            probe = self.run_owned(["test", "-w", self.base_dir], check=False)
            if probe.returncode != 0:
                raise ClusterError(f"{self.base_dir} is not reachable by OS user {self.os_user.name}: "
                                   "pick a base_dir whose parents are world-searchable (e.g. under /tmp)")

    def _init_primary(self) -> None:
        node = PgNode(self, "primary", "primary")
        self.mkdir_owned(node.node_dir)
        self.run_owned([self.bin("initdb"), "-D", node.datadir, "-A", "trust", "-U", SUPERUSER,
                        "-E", "UTF8", "--locale=C", "--no-sync"], timeout=180)
        with open(os.path.join(node.datadir, "postgresql.conf"), "a") as f:
            f.write("\n# pgmux test cluster: per-node settings, last so they win\n"
                    "include = 'pgmux_node.conf'\n")
        self.nodes.append(node)
        self._write_hba(node)
        node.start()

    def _add_replica(self, name: str) -> PgNode:
        node = PgNode(self, name, "replica")
        self.mkdir_owned(node.node_dir)
        src = self.primary
        self.run_owned([self.bin("pg_basebackup"), "-h", src.host, "-p", str(src.port), "-U", SUPERUSER,
                        "-D", node.datadir, "-R", "-X", "stream", "-c", "fast", "--no-sync"], timeout=300)
        self.nodes.append(node)
        node.start()
        # The walreceiver's application_name defaults to cluster_name, which write_conf sets to `name`.
        wait_until(lambda: src.psql("SELECT count(*) FROM pg_stat_replication "
                                    f"WHERE application_name = {quote_literal(name)} "
                                    "AND state = 'streaming'") == "1",
                   30, f"{name} to stream from {src.name}")
        return node

    def stop(self) -> None:
        """Stop every server (replicas first, so the primary's walsenders need not wait), remove the dir."""
        if not self._started:
            return
        self._started = False
        atexit.unregister(self.stop)
        errors = []
        for node in reversed(self.nodes):
            try:
                node.stop()
            except ClusterError as e:
                errors.append(str(e))
        if self.base_dir and not self.keep:
            shutil.rmtree(self.base_dir, ignore_errors=True)
        if errors:
            raise ClusterError("; ".join(errors))

    def __enter__(self) -> PgCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- roles, hba and replication helpers ----------------------------------------------------------

    def _hba_text(self) -> str:
        # Role lines come first: pg_hba.conf is first match wins, and the defaults trust everyone.
        return "\n".join(self.role_hba + self.hba_extra + DEFAULT_HBA) + "\n"

    def _write_hba(self, node: PgNode) -> None:
        self.write_owned(os.path.join(node.datadir, "pg_hba.conf"), self._hba_text())

    def reload_hba(self) -> None:
        for node in self.nodes:
            self._write_hba(node)
            if node.is_running():
                node.psql("SELECT pg_reload_conf()")
                errors = node.psql("SELECT string_agg(error, '; ') FROM pg_hba_file_rules "
                                   "WHERE error IS NOT NULL")
                if errors:
                    raise ClusterError(f"pg_hba.conf on {node.name} has errors: {errors}")

    def create_role(self, name: str, password: str | None = None, method: str = "scram-sha-256",
                    superuser: bool = False) -> None:
        """A login role on the primary whose password is stored for `method`, and a pg_hba line
        (`host all NAME 127.0.0.1/32 METHOD`) above the trust lines on every node, then reload.

        `password` (cleartext) is stored as SCRAM; the client sends it in clear and the server checks it.
        """
        if method not in AUTH_METHODS:
            raise ValueError(f"method must be one of {AUTH_METHODS}, not {method!r}")
        encryption = "md5" if method == "md5" else "scram-sha-256"
        sql = f"SET password_encryption = {quote_literal(encryption)}; CREATE ROLE {quote_ident(name)} LOGIN"
        if superuser:
            sql += " SUPERUSER"
        if password is not None:
            sql += f" PASSWORD {quote_literal(password)}"
        self.primary.psql(sql)
        # A replica that has not replayed the CREATE ROLE yet refuses the role's logins as if its
        # password were wrong (a health check that ran then saw the replica down, once, under load).
        self.wait_for_replay()
        self.role_hba.append(f"host all {quote_ident(name)} {HOST}/32 {method}")
        self.reload_hba()
        # pg_reload_conf() only signals the postmaster: wait until a password-less login is refused.
        for node in self.nodes:
            if node.is_running():
                wait_until(lambda n=node: not _login_works(n, name), 10, f"{node.name} to apply pg_hba.conf")

    def wait_for_replay(self, timeout: float = 30) -> None:
        """Wait until every running replica has replayed everything the primary has written so far."""
        # The insert position, not pg_current_wal_lsn(): with synchronous_commit=off a commit record
        # can sit in WAL buffers, past the write position, for up to wal_writer_delay.
        lsn = self.primary.psql("SELECT pg_current_wal_insert_lsn()")
        query = f"SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn"
        for node in self.replicas:
            if node.is_running() and node.role == "replica":
                wait_until(lambda n=node: n.psql(query) == "t", timeout, f"{node.name} to replay up to {lsn}")


def _login_works(node: PgNode, user: str) -> bool:
    try:
        node.psql("SELECT 1", user=user, timeout=10)
    except ClusterError:
        return False
    return True
