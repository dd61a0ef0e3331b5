"""The `pg` fixture itself: if these fail, every other integration test's failure means nothing."""

from __future__ import annotations

import os
import time

import psycopg
import pytest

from pgmux.testing.cluster import ClusterError, PgCluster


def test_primary_accepts_writes_and_replica_replays_them(pg: PgCluster) -> None:
    primary, replica = pg.primary, pg.replicas[0]
    assert primary.role == "primary" and replica.role == "replica"
    assert not primary.in_recovery() and replica.in_recovery()
    marker = f"m{time.monotonic_ns()}"
    primary.psql("CREATE TABLE IF NOT EXISTS fixture_check (v text);"
                 f"INSERT INTO fixture_check VALUES ('{marker}')", db="testdb")
    pg.wait_for_replay(timeout=10)
    assert replica.psql(f"SELECT count(*) FROM fixture_check WHERE v = '{marker}'", db="testdb") == "1"
    with pytest.raises(ClusterError, match="read-only"):
        replica.psql("INSERT INTO fixture_check VALUES ('no')", db="testdb")


def test_nodes_expose_where_they_are(pg: PgCluster) -> None:
    for node in pg.nodes:
        assert node.host == "127.0.0.1" and node.port > 0
        assert node.pid is not None and node.is_running()
        assert node.psql("SHOW port") == str(node.port)
        assert node.psql("SHOW unix_socket_directories") == node.socket_dir
    assert pg.superuser == "postgres"
    assert pg.primary.psql("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'") == "1"


@pytest.mark.parametrize("user,password", [("md5user", "md5pass"), ("scramuser", "scrampass"),
                                           ("passuser", "passpass")])
def test_roles_log_in_with_their_method(pg: PgCluster, user: str, password: str) -> None:
    assert pg.primary.psql("SELECT current_user", db="testdb", user=user, password=password) == user
    with pytest.raises(ClusterError, match="password authentication failed"):
        pg.primary.psql("SELECT 1", user=user, password="wrong")


def test_role_password_is_stored_for_its_method(pg: PgCluster) -> None:
    rows = pg.primary.psql("SELECT rolname, split_part(rolpassword, '$', 1) FROM pg_authid "
                           "WHERE rolname IN ('md5user', 'scramuser', 'passuser') ORDER BY 1")
    kinds = dict(line.split("|") for line in rows.splitlines())
    assert kinds["scramuser"] == kinds["passuser"] == "SCRAM-SHA-256"
    assert kinds["md5user"].startswith("md5") and len(kinds["md5user"]) == 35


def test_psycopg_reaches_primary_and_replica(pg: PgCluster) -> None:
    with psycopg.connect(pg.replicas[0].dsn(db="testdb", user="scramuser", password="scrampass")) as conn:
        assert conn.execute("SELECT pg_is_in_recovery(), count(*) FROM items").fetchone() == (True, 10)
    with psycopg.connect(pg.primary.dsn(db="testdb")) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)


def test_replica_promotes_and_cluster_cleans_up() -> None:
    # A cluster of its own: promoting the session's replica would break the other tests.
    with PgCluster(replicas=1) as cluster:
        base_dir = cluster.base_dir
        replica = cluster.replicas[0]
        cluster.primary.stop()
        replica.promote(timeout=30)
        assert replica.role == "primary"
        replica.psql("CREATE TABLE after_promote (x int)")
        pids = [n.pid for n in cluster.nodes if n.pid is not None]
    assert not os.path.exists(base_dir)
    for pid in pids:
        assert not _alive(pid)


def _alive(pid: int) -> bool:
    # A zombie counts as gone: pg_ctl daemonizes the postmaster, so init reaps it, in its own time.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_node_restarts_after_a_crash() -> None:
    with PgCluster(replicas=0, conf_extra={"synchronous_commit": "on"}) as cluster:
        node = cluster.primary
        node.psql("CREATE TABLE survives (x int); INSERT INTO survives VALUES (1)")
        old_pid = node.pid
        node.kill()
        assert not node.is_running() and node.pid is None
        node.start()
        assert node.pid != old_pid
        assert node.psql("SELECT count(*) FROM survives") == "1"
