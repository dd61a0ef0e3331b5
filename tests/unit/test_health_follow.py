"""Two HealthMonitors sharing one rundir, as two workers do (runtime/health_monitor.py with a HealthShare):
one checks, the other follows; the checker stopped, the other takes over; a checker that stops checking
makes the other check itself; console bans stay coherent. The checks are faked (no sockets): `_measure`
answers from a table, and counts who asked."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pgmux.config import HostConfig
from pgmux.routing.health import HostState
from pgmux.routing.verdicts import stale_after
from pgmux.runtime.health_monitor import CheckResult, HealthMonitor
from pgmux.runtime.health_share import HealthShare

PERIOD, TIMEOUT = 0.05, 0.2


class World:
    """What the fake hosts answer: port -> CheckResult, or an exception to raise."""

    def __init__(self) -> None:
        self.answers: dict[int, Any] = {1: CheckResult(False, 0, 0.0, 1000), 2: CheckResult(True, 0, 0.0, 900)}
        self.asked: dict[str, int] = {}


def monitor(world: World, rundir: Path, name: str) -> HealthMonitor:
    hosts = [HostState(HostConfig("127.0.0.1", p, "auto"), "auto", max_lag_bytes=100) for p in (1, 2)]
    mon = HealthMonitor(hosts, PERIOD, TIMEOUT, "u", None, "db", ban_time=30, share=HealthShare(str(rundir), "app", 0))

    async def measure(state: HostState[Any]) -> CheckResult:
        world.asked[name] = world.asked.get(name, 0) + 1
        answer = world.answers[state.host.port]
        if isinstance(answer, BaseException):
            raise answer
        return answer  # type: ignore[no-any-return]

    mon._measure = measure  # type: ignore[method-assign]
    return mon


async def until(predicate: Callable[[], Any], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def status(mon: HealthMonitor, port: int) -> str:
    return next(h.status(time.monotonic()) for h in mon.hosts if h.host.port == port)


def run(coro: Any) -> None:
    asyncio.run(asyncio.wait_for(coro, 30))


def test_one_checks_the_other_follows_and_takes_over(tmp_path: Path) -> None:
    world = World()

    async def main() -> None:
        a, b = monitor(world, tmp_path, "a"), monitor(world, tmp_path, "b")
        a.start()
        await until(lambda: a.share is not None and a.share.leading, "a to lead")
        b.start()
        await until(lambda: all(h.role != "auto" for h in b.hosts), "b to learn the roles")
        assert [h.role for h in b.hosts] == ["primary", "replica"]
        assert {h.host.port: n for h, n in b.current_lsn.items()} == {1: 1000, 2: 900}  # read-your-writes
        await asyncio.sleep(10 * PERIOD)
        assert world.asked.get("b", 0) == 0 and world.asked["a"] >= 10  # only the checker checks
        # A verdict change reaches the follower: the replica lags.
        world.answers[2] = CheckResult(True, 5000, 1.0, 900)
        await until(lambda: status(b, 2) == "lagging", "b to see the lag")
        # The checker goes (its lock with it): the follower takes over within a tick or two and checks.
        await a.stop()
        asked = world.asked.get("b", 0)
        await until(lambda: b.share is not None and b.share.leading, "b to take over", 1.0)
        await until(lambda: world.asked.get("b", 0) > asked, "b to check")
        world.answers[2] = CheckResult(True, 0, 0.0, 950)
        await until(lambda: status(b, 2) == "up", "b's own check")
        await b.stop()

    run(main())


def test_a_failed_check_bans_the_replica_everywhere_and_console_unban_holds(tmp_path: Path) -> None:
    world = World()

    async def main() -> None:
        a, b = monitor(world, tmp_path, "a"), monitor(world, tmp_path, "b")
        a.start()
        await until(lambda: a.share is not None and a.share.leading, "a to lead")
        b.start()
        await until(lambda: b.hosts[1].role == "replica", "b to learn the roles")
        world.answers[2] = ConnectionRefusedError("refused")
        await until(lambda: status(b, 2) == "banned", "b to see the ban")
        assert b.hosts[1].ban_reason.startswith("health check failed")
        assert 2 not in {h.host.port for h in b.current_lsn}
        world.answers[2] = CheckResult(True, 0, 0.0, 900)
        await asyncio.sleep(10 * PERIOD)
        assert status(a, 2) == status(b, 2) == "banned"  # a ban outlasts good checks, everywhere
        # Console UNBAN, sent to every worker: both unban, and no later board bans it again.
        for mon in (a, b):
            mon.hosts[1].unban()
            mon.console_ban(mon.hosts[1], False)
        await asyncio.sleep(10 * PERIOD)
        assert status(a, 2) == status(b, 2) == "up"
        # Console BAN: the same, and the checker's next checks do not lift it.
        for mon in (a, b):
            mon.hosts[1].ban(time.monotonic(), 30, "banned by admin")
            mon.console_ban(mon.hosts[1], True)
        await asyncio.sleep(10 * PERIOD)
        assert status(a, 2) == status(b, 2) == "banned"
        assert b.hosts[1].ban_reason == "banned by admin"
        await a.stop()
        await b.stop()

    run(main())


def test_a_local_traffic_ban_is_not_published(tmp_path: Path) -> None:
    world = World()

    async def main() -> None:
        a, b = monitor(world, tmp_path, "a"), monitor(world, tmp_path, "b")
        a.start()
        await until(lambda: a.share is not None and a.share.leading, "a to lead")
        b.start()
        await until(lambda: b.hosts[1].role == "replica", "b to learn the roles")
        a.hosts[1].ban(time.monotonic(), 30, "server error 08006: gone")  # the checker's own traffic
        await asyncio.sleep(10 * PERIOD)
        assert (status(a, 2), status(b, 2)) == ("banned", "up")
        b.hosts[1].ban(time.monotonic(), 30, "server error 08006: gone")  # the follower's own traffic ...
        await b.check(b.hosts[1])  # ... asks the checker for a check now, which it runs within a tick
        asked = world.asked["a"]
        await asyncio.sleep(3 * PERIOD)
        assert world.asked["a"] > asked and world.asked.get("b", 0) == 0
        assert status(b, 2) == "banned"  # still its own ban: the checks found nothing wrong
        await a.stop()
        await b.stop()

    run(main())


def test_a_stuck_checker_makes_the_follower_check_itself(tmp_path: Path) -> None:
    world = World()

    async def main() -> None:
        a, b = monitor(world, tmp_path, "a"), monitor(world, tmp_path, "b")
        a.start()
        await until(lambda: a.share is not None and a.share.leading, "a to lead")
        b.start()
        await until(lambda: b.hosts[1].role == "replica", "b to learn the roles")
        # The checker stops checking but keeps its lock (a worker stopped, or its loop stuck).
        for task in a._tasks:
            task.cancel()
        stuck = time.monotonic()
        await until(lambda: world.asked.get("b", 0) > 0, "b to check itself", 5)
        took = time.monotonic() - stuck
        assert stale_after(PERIOD, TIMEOUT) - PERIOD <= took <= stale_after(PERIOD, TIMEOUT) + 1.0, took
        assert not (b.share and b.share.leading)
        world.answers[2] = CheckResult(True, 5000, 1.0, 900)
        await until(lambda: status(b, 2) == "lagging", "b's own check to see the lag")
        # The checker checks again: its fresh verdicts are followed, and b stops checking.
        a._loops()
        await until(lambda: not b._fallback, "b to follow again")
        asked = world.asked["b"]
        await asyncio.sleep(10 * PERIOD)
        assert world.asked["b"] <= asked + 1
        world.answers[2] = CheckResult(True, 0, 0.0, 990)
        await until(lambda: status(b, 2) == "up", "b to follow the checker again")
        await a.stop()
        await b.stop()

    run(main())
