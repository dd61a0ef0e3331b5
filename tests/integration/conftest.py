"""Fixtures for integration tests: a real PostgreSQL primary + replica (`pg`, once per session) and pgmux
processes started from a generated pgbouncer.ini (`pgmux_factory`, stopped after each test).

Set PGMUX_TEST_POOLER=pgbouncer (or a path to a pgbouncer binary) to run the same tests against
PgBouncer: a quick way to check that a test asserts PgBouncer's behaviour and not our guess of it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from psycopg.rows import dict_row

from pgmux.testing.cluster import (
    HOST,
    ClusterError,
    PgCluster,
    die_with_parent,
    free_port,
    render_ini,
    render_userlist,
    server_os_user,
    stop_process,
    wait_listening,
)

HERE = Path(__file__).parent

# Roles the `pg` fixture creates: name -> (password, pg_hba method).
ROLES = {
    "md5user": ("md5pass", "md5"),
    "scramuser": ("scrampass", "scram-sha-256"),
    "passuser": ("passpass", "password"),
}
DEFAULT_USERLIST = {"postgres": "", **{name: pw for name, (pw, _) in ROLES.items()}}

_procs_key = pytest.StashKey[list["PgmuxProc"]]()


def pytest_configure(config: pytest.Config) -> None:
    # A SIGTERM (CI timeout, `timeout`) would end pytest without running fixture teardown, leaving
    # clusters and their temp dirs behind. As a KeyboardInterrupt, pytest tears down first.
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _sigterm_to_interrupt)


def _sigterm_to_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # This hook sees every collected item of the session, so only mark those that live here.
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.integration)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.failed:
        for proc in item.stash.get(_procs_key, []):
            report.sections.append((f"pooler log {proc.log_path}", proc.log()[-6000:]))
    return report


@pytest.fixture(scope="session")
def pg() -> Iterator[PgCluster]:
    """A primary and one streaming replica, with roles md5user/md5pass (md5), scramuser/scrampass
    (scram-sha-256), passuser/passpass (password) and a small database `testdb` (table `items`)."""
    with PgCluster(replicas=1) as cluster:
        for name, (password, method) in ROLES.items():
            cluster.create_role(name, password, method=method)
        cluster.primary.psql("CREATE DATABASE testdb")
        cluster.primary.psql(
            "GRANT ALL ON SCHEMA public TO PUBLIC;"
            "CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL);"
            "INSERT INTO items SELECT i, 'item ' || i FROM generate_series(1, 10) i;"
            "GRANT ALL ON items TO PUBLIC;",
            db="testdb",
        )
        cluster.wait_for_replay()
        yield cluster


class PgmuxProc:
    """One running pooler process (pgmux, or PgBouncer under PGMUX_TEST_POOLER) and its config files."""

    def __init__(self, workdir: Path, suffix: str, databases: dict[str, str], settings: dict[str, Any],
                 userlist: dict[str, str], users: dict[str, str], command: list[str],
                 popen_kwargs: dict[str, Any], owner: tuple[int, int] | None = None) -> None:
        self.host = HOST
        self.workdir = workdir
        self.ini_path = workdir / f"pgbouncer{suffix}.ini"
        self.userlist_path = workdir / f"userlist{suffix}.txt"
        self.log_path = workdir / f"pooler{suffix}.log"
        self.databases = databases
        self.settings = settings
        self.userlist = userlist
        self.users = users
        self.port = int(settings["listen_port"])
        self._command = command
        self._popen_kwargs = popen_kwargs
        self.owner = owner  # (uid, gid) the pooler runs as, when not us: its files must be theirs
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def write_files(self) -> None:
        self.userlist_path.write_text(render_userlist(self.userlist))
        self.ini_path.write_text(render_ini(self.databases, self.settings, self.users))
        if self.owner is not None:
            for p in (self.userlist_path, self.ini_path):
                os.chown(p, *self.owner)

    def launch(self, timeout: float = 20) -> None:
        self.write_files()
        with open(self.log_path, "ab") as log:
            # die_with_parent: a pytest killed by a CI timeout must not leave poolers behind.
            self.proc = subprocess.Popen(die_with_parent([*self._command, str(self.ini_path)]), stdout=log, stderr=log,
                                         stdin=subprocess.DEVNULL, cwd=self.workdir, **self._popen_kwargs)
        try:
            wait_listening(self.proc, self.host, self.port, timeout)
            return
        except ClusterError as e:
            error = str(e)
        self.stop()
        pytest.fail(f"pooler did not start: {error}\n--- {self.log_path} (tail) ---\n{self.log()[-4000:]}",
                    pytrace=False)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_log(self, text: str, count: int = 1, timeout: float = 10) -> str:
        """The log once `text` is in it `count` times. Informational lines are written at the pooler's
        next tick (runtime/main.py), not at once: a line read right after the event may not be there yet."""
        deadline = time.monotonic() + timeout
        while True:
            log = self.log()
            if log.count(text) >= count or time.monotonic() > deadline:
                assert log.count(text) >= count, f"{text!r} not {count} times in the log:\n{log[-3000:]}"
                return log
            time.sleep(0.05)

    def dsn(self, db: str = "testdb", user: str = "postgres", password: str | None = None) -> str:
        """A libpq URL (psycopg, asyncpg and psql all take it)."""
        auth = quote(user, safe="") + (":" + quote(password, safe="") if password is not None else "")
        return f"postgresql://{auth}@{self.host}:{self.port}/{quote(db, safe='')}"

    def _admin_connect(self, **kwargs: Any) -> psycopg.Connection[Any]:
        # The admin console speaks only the simple query protocol: ClientCursor binds client-side.
        return psycopg.connect(host=self.host, port=self.port, dbname="pgbouncer", user="postgres",
                               autocommit=True, connect_timeout=10, cursor_factory=psycopg.ClientCursor,
                               **kwargs)

    def admin(self, sql: str) -> list[tuple[Any, ...]]:
        """Run one admin console command; return its rows ([] for commands without a result)."""
        with self._admin_connect() as conn:
            cur = conn.execute(sql)
            return cur.fetchall() if cur.description else []

    def admin_dicts(self, sql: str) -> list[dict[str, Any]]:
        with self._admin_connect(row_factory=dict_row) as conn:
            cur = conn.execute(sql)
            return cur.fetchall() if cur.description else []

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def reload(self) -> None:
        """SIGHUP: the pooler re-reads its ini and userlist (returns at once; poll SHOW for the effect)."""
        self.signal(signal.SIGHUP)

    def rewrite(self, databases: Mapping[str, str] | None = None, settings: Mapping[str, Any] | None = None,
                userlist: Mapping[str, str] | None = None, users: Mapping[str, str] | None = None) -> None:
        """Rewrite the config files, for a reload() to pick up. `databases`, `userlist` and `users`
        replace their section; `settings` merge into [pgbouncer], a None value removing the key."""
        if databases is not None:
            self.databases = dict(databases)
        if settings is not None:
            self.settings = {**self.settings, **settings}
        if userlist is not None:
            self.userlist = dict(userlist)
        if users is not None:
            self.users = dict(users)
        self.write_files()

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10) -> int | None:
        """SIGTERM by PID; if clients are still connected (SIGTERM waits for them, as in PgBouncer 1.23+),
        a second SIGTERM after 2 s (exit now), SIGKILL after `timeout`. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(2)
            except subprocess.TimeoutExpired:
                pass
        return stop_process(self.proc, timeout)


def _pooler_command(workdir: Path) -> tuple[list[str], dict[str, Any], Path, tuple[int, int] | None]:
    """(argv prefix, Popen kwargs, dir for the files, (uid, gid) the pooler runs as if not us) for pgmux,
    or PgBouncer when asked for. Neither runs as root: as root, pgmux is started with `-u` and switches
    to the cluster's OS user itself (our Python may live where that user cannot start it from), and
    PgBouncer is started as that user. Both then need a dir that user owns (pytest's tmp_path is
    private to root) for the config, the log and the Unix socket."""
    choice = os.environ.get("PGMUX_TEST_POOLER", "pgmux")
    osuser = server_os_user()
    if choice == "pgmux":
        command, kwargs = [sys.executable, "-m", "pgmux"], {}
        if osuser.switch:
            command += ["-u", osuser.name]
    else:
        binary = shutil.which(choice) or shutil.which(choice, path="/usr/sbin")
        if binary is None:
            raise pytest.UsageError(f"PGMUX_TEST_POOLER={choice}: no such executable")
        command, kwargs = [binary], ({**osuser.popen_kwargs(), "env": osuser.env()} if osuser.switch else {})
    if not osuser.switch:
        return command, kwargs, workdir, None
    shared = Path(tempfile.mkdtemp(prefix="pgmux-it-"))
    os.chmod(shared, 0o755)
    osuser.chown(str(shared))
    return command, kwargs, shared, (osuser.uid, osuser.gid)


PgmuxStarter = Callable[..., PgmuxProc]


@pytest.fixture
def pgmux_factory(pg: PgCluster, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[PgmuxStarter]:
    """start(databases=None, settings=None, userlist=None, users=None) -> PgmuxProc, listening.

    Defaults: [databases] testdb and postgres on the primary; [pgbouncer] listen_addr 127.0.0.1, a free
    listen_port, unix_socket_dir, auth_type trust, auth_file, admin_users postgres; `settings` override
    those (None removes a key). userlist defaults to postgres + the `pg` roles with their passwords.
    """
    command, popen_kwargs, workdir, owner = _pooler_command(tmp_path)
    started: list[PgmuxProc] = []
    request.node.stash[_procs_key] = started

    def start(databases: Mapping[str, str] | None = None, settings: Mapping[str, Any] | None = None,
              userlist: Mapping[str, str] | None = None, users: Mapping[str, str] | None = None) -> PgmuxProc:
        primary = pg.primary
        if databases is None:
            databases = {db: f"host={primary.host} port={primary.port} dbname={db}"
                         for db in ("testdb", "postgres")}
        suffix = "" if not started else f"-{len(started) + 1}"
        # Unix socket paths are capped near 107 bytes; skip the socket rather than fail on a long path.
        socket_dir = str(workdir) if len(str(workdir)) < 80 else ""
        merged: dict[str, Any] = {
            "listen_addr": HOST,
            "listen_port": free_port(),
            "unix_socket_dir": socket_dir,
            "auth_type": "trust",
            "auth_file": str(workdir / f"userlist{suffix}.txt"),
            "admin_users": pg.superuser,
        }
        merged.update(settings or {})
        proc = PgmuxProc(workdir, suffix, dict(databases), merged,
                         dict(DEFAULT_USERLIST if userlist is None else userlist), dict(users or {}),
                         command, popen_kwargs, owner)
        started.append(proc)
        proc.launch()
        return proc

    yield start
    for proc in started:
        proc.stop()
    if workdir != tmp_path:
        shutil.rmtree(workdir, ignore_errors=True)
