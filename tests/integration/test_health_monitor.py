"""The health monitor against real servers: roles, lag, bans and a failover.

Each test starts its own primary + replica (the shared `pg` cluster is never paused, stopped or
promoted). Blocking cluster calls run in a thread so the monitor keeps checking meanwhile.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from pgmux.config import HostConfig
from pgmux.routing.health import HostState, choose
from pgmux.runtime.health_monitor import HealthMonitor, format_lsn, parse_lsn
from pgmux.testing.cluster import HOST, PgCluster, PgNode

PERIOD = 0.25


@pytest.fixture
def cluster() -> Iterator[PgCluster]:
    with PgCluster(replicas=1) as c:
        yield c


def states(cluster: PgCluster, **kwargs: Any) -> list[HostState[HostConfig]]:
    return [HostState(HostConfig(HOST, node.port, "auto"), "auto", **kwargs) for node in cluster.nodes]


def monitor(hosts: list[HostState[HostConfig]], changes: list[tuple[str, str]] | None = None,
            user: str = "postgres", password: str | None = None, ban_time: float = 60.0) -> HealthMonitor:
    def on_change(state: HostState[HostConfig]) -> None:
        if changes is not None:
            changes.append((state.role, state.status(time.monotonic())))

    # A check may take a fresh backend fork and a SCRAM login: on a loaded 2-core machine that has
    # taken over a second, which failed a first check and left a role "auto". Stopped hosts refuse at
    # once, so the bans and the promotion below do not wait for this timeout.
    return HealthMonitor(hosts, PERIOD, 3.0, user, password, "postgres", on_change, ban_time=ban_time)


async def until(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Wait (bounded) for predicate; return the seconds it took."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)
    return time.monotonic() - start


def run(coro: Awaitable[None], timeout: float = 60) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(coro, timeout)

    asyncio.run(bounded())


def psql(node: PgNode, sql: str) -> Awaitable[str]:
    return asyncio.to_thread(node.psql, sql)


def test_lsn_text_round_trip() -> None:
    assert parse_lsn("16/B374D848") == (0x16 << 32) | 0xB374D848
    assert format_lsn(parse_lsn("0/3000060")) == "0/3000060"


def test_roles_lag_and_lsn_with_a_scram_login(cluster: PgCluster) -> None:
    cluster.create_role("hm_scram", "hm pass", method="scram-sha-256")
    hosts = states(cluster)
    changes: list[tuple[str, str]] = []

    async def main() -> None:
        async with monitor(hosts, changes, user="hm_scram", password="hm pass") as mon:
            await until(lambda: all(h.last_check is not None for h in hosts), 5, "first checks")
            await asyncio.gather(*(mon.check_all() for _ in range(3)))  # alongside the loops: serialised
            primary, replica = hosts
            assert (primary.role, replica.role) == ("primary", "replica")
            assert primary.usable(time.monotonic()) and replica.usable(time.monotonic())
            assert replica.lag_bytes is not None and replica.lag_bytes >= 0
            assert replica.lag_seconds is not None and replica.lag_seconds >= 0
            assert (primary.lag_bytes, primary.lag_seconds) == (0, 0.0)
            assert mon.current_lsn[primary] >= mon.current_lsn[replica] > 0
            # The primary's LSN moves with writes, and the replica's follows.
            before = mon.current_lsn[primary]
            await psql(cluster.primary, "CREATE TABLE hm_t AS SELECT generate_series(1, 1000) x")
            await until(lambda: mon.current_lsn.get(replica, 0) > before, 5, "the replica to replay")
            # Idle primary: the last replayed commit grows old, but nothing is behind, so no lag.
            await asyncio.sleep(1.5)
            await until(lambda: replica.lag_seconds == 0.0, 5, "lag_seconds 0 while idle")
            # One kept connection per host, not one per check.
            count = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgmux health check'"
            assert mon.checks > 8
            assert [await psql(node, count) for node in cluster.nodes] == ["1", "1"]
        assert sorted(changes) == [("primary", "up"), ("replica", "up")]  # "auto" -> a role, once each

    run(main())


def test_paused_replay_makes_the_replica_lag(cluster: PgCluster) -> None:
    hosts = states(cluster, max_lag_bytes=1024)
    primary, replica = hosts
    changes: list[tuple[str, str]] = []

    async def main() -> None:
        async with monitor(hosts, changes) as mon:
            await until(lambda: replica.role == "replica", 5, "the first check")
            await psql(cluster.replicas[0], "SELECT pg_wal_replay_pause()")
            try:
                await psql(cluster.primary, "CREATE TABLE hm_lag AS SELECT generate_series(1, 20000) x")
                await until(lambda: replica.lagging, 5, "the replica to lag")
                assert replica.lag_bytes is not None and replica.lag_bytes > 1024
                assert replica.status(time.monotonic()) == "lagging"
                assert choose(hosts, "read", time.monotonic()) == [primary]  # reads fall back
                assert ("replica", "lagging") in changes
            finally:
                await psql(cluster.replicas[0], "SELECT pg_wal_replay_resume()")
            await until(lambda: not replica.lagging, 5, "the replica to catch up")
            assert choose(hosts, "read", time.monotonic()) == [replica]
            assert mon.checks > 0

    run(main())


def test_a_stopped_replica_is_banned_within_three_periods(cluster: PgCluster) -> None:
    hosts = states(cluster)
    primary, replica = hosts
    changes: list[tuple[str, str]] = []

    async def main() -> None:
        async with monitor(hosts, changes, ban_time=60.0):
            await until(lambda: replica.role == "replica", 5, "the first check")
            await asyncio.to_thread(cluster.replicas[0].stop)
            stopped = time.monotonic()
            await until(lambda: replica.banned(time.monotonic()), 10, "the ban")
            assert time.monotonic() - stopped <= 3 * PERIOD + 1.0  # one timeout of slack
            assert not replica.healthy and "health check failed" in replica.ban_reason
            assert primary.usable(time.monotonic())
            assert choose(hosts, "read", time.monotonic()) == [primary]
            assert ("replica", "banned") in changes

    run(main())


def test_failover_promoted_replica_becomes_the_primary(cluster: PgCluster) -> None:
    hosts = states(cluster)
    old, new = hosts
    changes: list[tuple[str, str]] = []

    async def main() -> None:
        async with monitor(hosts, changes):
            await until(lambda: new.role == "replica", 5, "the first check")
            await asyncio.to_thread(cluster.primary.stop)
            await until(lambda: not old.healthy, 5, "the old primary to be seen down")
            assert old.role == "primary" and not old.banned(time.monotonic())  # never banned
            assert choose(hosts, "write", time.monotonic()) == []
            await asyncio.to_thread(cluster.replicas[0].promote)
            promoted = time.monotonic()
            await until(lambda: new.role == "primary", 5, "the promotion to be seen")
            assert time.monotonic() - promoted < 5
            assert choose(hosts, "write", time.monotonic()) == [new]
            assert "promoted" in new.reason
            assert ("primary", "up") in changes

    run(main())


def test_unreachable_host_is_down_not_banned_until_known() -> None:
    """A host nothing has answered for yet ("auto") may be the primary: down, but never banned.
    A configured replica that cannot be reached is banned. Nothing raises out of the loop."""
    from pgmux.testing.cluster import free_port

    port = free_port()
    unknown = HostState(HostConfig(HOST, port, "auto"), "auto")
    replica = HostState(HostConfig(HOST, port, "replica"), "replica")

    async def main() -> None:
        mon = HealthMonitor([unknown, replica], PERIOD, 0.5, "postgres", None, "postgres", ban_time=30)
        async with mon:
            await until(lambda: mon.checks >= 4, 5, "a few checks")
        assert not unknown.healthy and not unknown.banned(time.monotonic())
        assert replica.banned(time.monotonic()) and "refused" in replica.ban_reason.lower()

    run(main())


def test_a_silent_host_fails_within_the_timeout_and_on_change_errors_are_contained() -> None:
    """A server that accepts TCP but never answers: each check ends at `timeout`, the host is banned,
    and an on_change that raises does not stop the loop."""
    accepted: list[asyncio.StreamWriter] = []

    async def main() -> None:
        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.append(writer)

        server = await asyncio.start_server(silent, HOST, 0)
        port = server.sockets[0].getsockname()[1]
        calls: list[str] = []

        def broken(state: HostState[HostConfig]) -> None:
            calls.append(state.status(time.monotonic()))
            raise RuntimeError("bug in a callback")

        replica = HostState(HostConfig(HOST, port, "replica"), "replica")
        mon = HealthMonitor([replica], 0.1, 0.3, "postgres", None, "postgres", broken, ban_time=30)
        try:
            async with mon:
                took = await until(lambda: mon.checks >= 1, 5, "the first check")
                assert 0.25 <= took < 1.5
                await until(lambda: mon.checks >= 3, 5, "more checks after the callback raised")
        finally:
            for writer in accepted:
                writer.close()
            server.close()
            await server.wait_closed()
        assert calls == ["banned"]
        assert "no answer within 0.3s" in replica.ban_reason

    run(main())
