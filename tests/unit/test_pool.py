"""The pool core and the registry, with the time passed in: decisions only, no connections."""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import count

import pytest

from pgmux.pooling.pool import Pool, PoolLimits
from pgmux.pooling.registry import Registry

_ids = count()


@dataclass(eq=False)
class Srv:
    created_at: float = 0.0
    idle_since: float = 0.0
    close_needed: bool = False
    name: int = field(default_factory=lambda: next(_ids))


@dataclass(eq=False)
class Cli:
    wait_since: float = 0.0
    name: int = field(default_factory=lambda: next(_ids))


def make_pool(**limits: float) -> Pool[Srv, Cli]:
    return Pool("db", "alice", PoolLimits(**limits), "transaction")  # type: ignore[arg-type]


def with_servers(pool: Pool[Srv, Cli], n: int, now: float = 0.0, idle: bool = True) -> list[Srv]:
    out = []
    for _ in range(n):
        s = Srv(created_at=now)
        pool.add_server(s)
        if idle:
            assert pool.put(s, now) is None
        out.append(s)
    return out


# -- hand-out and return ------------------------------------------------------------------------

def test_idle_is_lifo() -> None:
    pool = make_pool()
    a, b, c = with_servers(pool, 3)
    assert [pool.take_idle() for _ in range(4)] == [c, b, a, None]


def test_put_parks_with_the_time() -> None:
    pool = make_pool()
    s = Srv()
    pool.add_server(s)
    assert pool.put(s, 42.0) is None
    assert s.idle_since == 42.0 and pool.idle == [s]


def test_waiters_are_served_fifo() -> None:
    pool = make_pool()
    waiters = [Cli() for _ in range(3)]
    for i, w in enumerate(waiters):
        pool.add_waiter(w, float(i))
        assert w.wait_since == float(i)
    s = Srv()
    pool.add_server(s)
    assert [pool.put(s, 10.0) for _ in range(3)] == waiters
    assert pool.idle == []
    assert pool.put(s, 11.0) is None and pool.idle == [s]


def test_remove_waiter() -> None:
    pool = make_pool()
    a, b = Cli(), Cli()
    pool.add_waiter(a, 0.0)
    pool.add_waiter(b, 1.0)
    assert pool.remove_waiter(a) is True
    assert pool.remove_waiter(a) is False
    assert list(pool.waiters) == [b]


def test_paused_pool_hands_out_nothing_and_parks() -> None:
    pool = make_pool()
    (s,) = with_servers(pool, 1)
    w = Cli()
    pool.add_waiter(w, 0.0)
    pool.paused = True
    assert pool.take_idle() is None
    s2 = Srv()
    pool.add_server(s2)
    assert pool.put(s2, 1.0) is None  # the waiter keeps waiting while paused
    assert list(pool.waiters) == [w] and pool.idle == [s, s2]
    pool.paused = False
    assert pool.take_idle() is s2


def test_remove_server_also_leaves_idle() -> None:
    pool = make_pool()
    a, b = with_servers(pool, 2)
    pool.remove_server(a)
    assert pool.servers == {b} and pool.idle == [b]
    pool.remove_server(a)  # twice is harmless


def test_a_server_closing_clears_the_remembered_refusal() -> None:
    # Workers: the shared limits' "no room" is remembered until the tick (runtime/worker.py), but a server of
    # the pool closing in this process makes room here, so the next waiting acquire asks again.
    pool = make_pool(pool_size=2)
    a, _ = with_servers(pool, 2)
    assert pool.no_room_until == 0.0
    pool.no_room_until = 5.0
    pool.remove_server(a)
    assert pool.no_room_until == 0.0


# -- wanted ---------------------------------------------------------------------------------------

def add_waiters(pool: Pool[Srv, Cli], n: int, now: float = 0.0) -> list[Cli]:
    out = [Cli() for _ in range(n)]
    for c in out:
        pool.add_waiter(c, now)
    return out


def test_wanted_follows_demand_up_to_pool_size() -> None:
    pool = make_pool(pool_size=3)
    assert pool.wanted(0.0, 1 << 30) == 0
    add_waiters(pool, 2)
    assert pool.wanted(0.0, 1 << 30) == 2
    add_waiters(pool, 5)
    assert pool.wanted(0.0, 1 << 30) == 3


def test_wanted_counts_connections_in_progress() -> None:
    pool = make_pool(pool_size=5)
    add_waiters(pool, 3)
    with_servers(pool, 2, idle=False)  # being opened: in servers, counted in connecting
    pool.connecting = 2
    assert pool.wanted(0.0, 1 << 30) == 1
    with_servers(pool, 1, idle=False)
    pool.connecting = 3
    assert pool.wanted(0.0, 1 << 30) == 0


def test_wanted_never_goes_past_pool_size_with_busy_servers() -> None:
    pool = make_pool(pool_size=2)
    with_servers(pool, 2, idle=False)
    add_waiters(pool, 10)
    assert pool.wanted(0.0, 1 << 30) == 0


def test_reserve_pool_opens_after_the_timeout() -> None:
    pool = make_pool(pool_size=2, reserve_pool_size=3, reserve_pool_timeout=5.0)
    with_servers(pool, 2, idle=False)
    add_waiters(pool, 1, now=100.0)
    add_waiters(pool, 9, now=104.0)
    assert pool.limit(104.9) == 2 and pool.wanted(104.9, 1 << 30) == 0
    assert pool.limit(105.0) == 5 and pool.wanted(105.0, 1 << 30) == 3
    assert pool.wanted(105.0, 1) == 1  # headroom still binds


def test_reserve_pool_looks_at_the_oldest_waiter_only() -> None:
    pool = make_pool(pool_size=1, reserve_pool_size=1, reserve_pool_timeout=5.0)
    with_servers(pool, 1, idle=False)
    (first,) = add_waiters(pool, 1, now=0.0)
    add_waiters(pool, 1, now=9.0)
    assert pool.wanted(9.0, 1 << 30) == 1
    pool.remove_waiter(first)
    assert pool.wanted(9.0, 1 << 30) == 0


def test_no_reserve_configured() -> None:
    pool = make_pool(pool_size=1, reserve_pool_size=0)
    with_servers(pool, 1, idle=False)
    add_waiters(pool, 1, now=0.0)
    assert pool.wanted(1e6, 1 << 30) == 0


def test_min_pool_size_fills_without_demand() -> None:
    pool = make_pool(pool_size=5, min_pool_size=3)
    assert pool.wanted(0.0, 1 << 30) == 3
    with_servers(pool, 2)
    assert pool.wanted(0.0, 1 << 30) == 1
    with_servers(pool, 1)
    assert pool.wanted(0.0, 1 << 30) == 0


def test_min_pool_size_is_capped_by_pool_size() -> None:
    pool = make_pool(pool_size=2, min_pool_size=5)
    assert pool.wanted(0.0, 1 << 30) == 2


@pytest.mark.parametrize(("headroom", "want"), [(0, 0), (-3, 0), (1, 1), (2, 2), (10, 4)])
def test_headroom_bounds_wanted(headroom: int, want: int) -> None:
    pool = make_pool(pool_size=4)
    add_waiters(pool, 6)
    assert pool.wanted(0.0, headroom) == want


def test_disabled_pool_wants_nothing() -> None:
    pool = make_pool(min_pool_size=2)
    add_waiters(pool, 2)
    pool.disabled = True
    assert pool.wanted(0.0, 1 << 30) == 0


def test_login_retry_backoff() -> None:
    pool = make_pool(server_login_retry=15.0)
    add_waiters(pool, 2)
    pool.last_login_failure = 100.0
    assert pool.wanted(100.0, 1 << 30) == 0
    assert pool.wanted(114.99, 1 << 30) == 0
    assert pool.wanted(115.0, 1 << 30) == 2


def test_first_login_is_wanted_for_login_waiters() -> None:
    # Clients that authenticated before any server told us its parameters need one server.
    pool = make_pool()
    pool.login_waiters.append(Cli())
    pool.login_waiters.append(Cli())
    assert pool.wanted(0.0, 1 << 30) == 1
    with_servers(pool, 1, idle=False)
    pool.connecting = 1
    assert pool.wanted(0.0, 1 << 30) == 0
    pool.server_params = {}
    pool.servers.clear()
    pool.connecting = 0
    assert pool.wanted(0.0, 1 << 30) == 0


# -- expiry -----------------------------------------------------------------------------------------

def test_expired_by_lifetime_oldest_idle_first() -> None:
    pool = make_pool(min_pool_size=5)
    young = Srv(created_at=50.0)
    old1, old2 = Srv(created_at=0.0), Srv(created_at=10.0)
    for i, s in enumerate((old1, young, old2)):
        pool.add_server(s)
        pool.put(s, float(60 + i))
    # Lifetime is not bound by min_pool_size: the janitor opens replacements.
    assert pool.expired(100.0, 0.0, 60.0) == [old1, old2]
    assert pool.expired(100.0, 0.0, 0.0) == []  # 0 disables


def test_expired_close_needed_always() -> None:
    pool = make_pool(min_pool_size=5)
    a, b = with_servers(pool, 2)
    b.close_needed = True
    assert pool.expired(0.0, 0.0, 0.0) == [b]


def test_expired_idle_timeout_keeps_min_pool_size() -> None:
    pool = make_pool(min_pool_size=2)
    servers = []
    for t in (0.0, 1.0, 2.0, 3.0):
        (s,) = with_servers(pool, 1, now=t)
        servers.append(s)
    assert pool.expired(10.0, 10.0, 0.0) == [servers[0]]  # idle exactly 10 s
    assert pool.expired(100.0, 10.0, 0.0) == servers[:2]
    assert pool.expired(100.0, 0.0, 0.0) == []  # 0 disables


def test_expired_idle_timeout_counts_busy_servers_toward_min() -> None:
    pool = make_pool(min_pool_size=2)
    with_servers(pool, 2, idle=False)
    idle = with_servers(pool, 2, now=0.0)
    assert pool.expired(100.0, 10.0, 0.0) == idle


def test_expired_lifetime_and_idle_together() -> None:
    pool = make_pool(min_pool_size=1)
    a = Srv(created_at=0.0)
    b = Srv(created_at=90.0)
    for s in (a, b):
        pool.add_server(s)
        pool.put(s, 0.0)
    # a goes by lifetime; b would be idle-timed-out, but it is then the last one and min is 1.
    assert pool.expired(100.0, 10.0, 60.0) == [a]


def test_expired_does_not_touch_busy_servers() -> None:
    pool = make_pool()
    (busy,) = with_servers(pool, 1, idle=False)
    busy.close_needed = True
    assert pool.expired(1e9, 1.0, 1.0) == []


# -- waiting too long -----------------------------------------------------------------------------

def test_timed_out_waiters_stop_at_the_first_young_one() -> None:
    pool = make_pool()
    old = add_waiters(pool, 2, now=0.0)
    add_waiters(pool, 1, now=50.0)
    add_waiters(pool, 1, now=1.0)  # older than the one before it, but behind it: FIFO order rules
    assert pool.timed_out_waiters(60.0, 30.0) == old
    assert pool.timed_out_waiters(60.0, 60.0) == old  # waited exactly the timeout
    assert pool.timed_out_waiters(60.0, 0.0) == []  # 0 disables
    assert len(pool.waiters) == 4  # reported, not removed


def test_max_wait() -> None:
    pool = make_pool()
    assert pool.max_wait(10.0) == 0.0
    add_waiters(pool, 1, now=3.0)
    add_waiters(pool, 1, now=7.0)
    assert pool.max_wait(10.0) == 7.0


# -- registry -----------------------------------------------------------------------------------------

def registry_with(*pools: tuple[str, str, int]) -> tuple[Registry, dict[tuple[str, str], Pool[Srv, Cli]]]:
    reg = Registry()
    out = {}
    for db, user, n in pools:
        pool = reg.get_or_create(db, user, lambda: (PoolLimits(pool_size=10), "transaction"))
        for _ in range(n):
            pool.add_server(Srv())
        out[(db, user)] = pool
    return reg, out


def test_registry_get_or_create_makes_once() -> None:
    reg = Registry()
    calls = []

    def make() -> tuple[PoolLimits, str]:
        calls.append(1)
        return PoolLimits(pool_size=7), "session"

    p = reg.get_or_create("db", "u", make)
    assert reg.get_or_create("db", "u", make) is p and reg.get("db", "u") is p
    assert (p.limits.pool_size, p.mode, len(calls)) == (7, "session", 1)
    assert reg.get("db", "other") is None
    assert list(reg) == [p]


def test_registry_headroom_unlimited_by_default() -> None:
    reg, pools = registry_with(("db", "a", 5))
    assert reg.headroom(pools[("db", "a")]) >= 1 << 20


def test_registry_headroom_max_db_connections() -> None:
    reg, pools = registry_with(("db", "a", 2), ("db", "b", 3), ("other", "a", 9))
    reg.max_db["db"] = 7
    assert reg.headroom(pools[("db", "a")]) == 2
    assert reg.headroom(pools[("db", "b")]) == 2
    assert reg.headroom(pools[("other", "a")]) >= 1 << 20
    reg.max_db["db"] = 4
    assert reg.headroom(pools[("db", "a")]) == -1  # over the limit: Pool.wanted treats it as 0
    assert pools[("db", "a")].wanted(0.0, reg.headroom(pools[("db", "a")])) == 0


def test_registry_headroom_max_user_connections() -> None:
    reg, pools = registry_with(("d1", "alice", 2), ("d2", "alice", 1), ("d1", "bob", 4))
    reg.max_user["alice"] = 5
    assert reg.headroom(pools[("d1", "alice")]) == 2
    assert reg.headroom(pools[("d2", "alice")]) == 2
    assert reg.headroom(pools[("d1", "bob")]) >= 1 << 20


def test_registry_headroom_takes_the_tighter_limit() -> None:
    reg, pools = registry_with(("d1", "alice", 2), ("d1", "bob", 2), ("d2", "alice", 1))
    reg.max_db["d1"] = 10  # 6 left
    reg.max_user["alice"] = 4  # 1 left
    assert reg.headroom(pools[("d1", "alice")]) == 1
    assert reg.headroom(pools[("d1", "bob")]) == 6
    reg.max_db["d1"] = 0  # 0 = no limit
    assert reg.headroom(pools[("d1", "bob")]) >= 1 << 20


def test_registry_for_database() -> None:
    reg, pools = registry_with(("d1", "a", 0), ("d2", "a", 0), ("d1", "b", 0))
    assert reg.for_database("d1") == [pools[("d1", "a")], pools[("d1", "b")]]
