"""PgBouncer's pool settings in the pool core and the registry, with the time passed in: server_round_robin,
server_check_delay, a pool_size lowered by a reload, and the eviction of idle servers of other pools under
max_db_connections / max_user_connections. Decisions only, no connections."""

from __future__ import annotations

import dataclasses

from test_pool import Cli, Srv, make_pool, registry_with, with_servers

from pgmux.pooling.pool import PoolLimits


def test_round_robin_hands_out_the_least_recently_used() -> None:
    pool = make_pool(round_robin=True)
    a, b, c = with_servers(pool, 3)
    assert [pool.take_idle() for _ in range(3)] == [a, b, c]
    for s in (a, b, c):
        pool.put(s, 1.0)
    # Released in order a, b, c: the next ones out cycle in that order, never the same one twice.
    assert [pool.take_idle() for _ in range(4)] == [a, b, c, None]


def test_lifo_is_the_default() -> None:
    pool = make_pool()
    a, b, c = with_servers(pool, 3)
    assert pool.take_idle() is c


def test_check_delay_zero_checks_every_reuse() -> None:
    pool = make_pool(check_delay=0.0)
    (s,) = with_servers(pool, 1, now=10.0)
    assert pool.needs_check(s, 10.0)  # idle for no time at all


def test_check_delay_checks_only_after_the_delay() -> None:
    pool = make_pool(check_delay=30.0)
    (s,) = with_servers(pool, 1, now=10.0)
    assert not pool.needs_check(s, 40.0)
    assert pool.needs_check(s, 40.5)


def test_no_check_query_means_no_check() -> None:
    pool = make_pool()  # check_delay -1: server_check_query is empty
    (s,) = with_servers(pool, 1, now=0.0)
    assert not pool.needs_check(s, 1e9)


def test_lowered_pool_size_closes_the_surplus() -> None:
    pool = make_pool(pool_size=5)
    servers = with_servers(pool, 5)
    busy = [pool.take_idle() for _ in range(2)]
    assert not pool.over_size() and pool.excess_idle() == []
    pool.limits = dataclasses.replace(pool.limits, pool_size=2)  # what a reload does
    assert pool.over_size()
    # Three too many: the three idle ones go, least recently used first; the busy ones stay busy.
    assert pool.excess_idle() == servers[:3]
    assert busy == [servers[4], servers[3]]
    for s in servers[:3]:
        pool.remove_server(s)
    assert not pool.over_size() and pool.excess_idle() == []


def test_lowered_pool_size_counts_the_reserve() -> None:
    pool = make_pool(pool_size=2, reserve_pool_size=1)
    with_servers(pool, 3)
    assert not pool.over_size() and pool.excess_idle() == []


def test_queued_demand_counts_waiters_only() -> None:
    pool = make_pool(pool_size=3, min_pool_size=3)
    assert pool.queued_demand(0.0) == 0  # min_pool_size alone never evicts anything
    for _ in range(5):
        pool.add_waiter(Cli(), 0.0)
    assert pool.queued_demand(0.0) == 3  # capped at the pool's own size
    pool.connecting = 2
    assert pool.queued_demand(0.0) == 3  # 5 waiting, 2 on their way, room for 3 more


def _idle(pool: object, n: int, since: float) -> list[Srv]:
    out = []
    for _ in range(n):
        s = Srv()
        pool.add_server(s)  # type: ignore[attr-defined]
        pool.put(s, since)  # type: ignore[attr-defined]
        out.append(s)
    return out


def test_evict_idle_servers_of_another_user_under_max_db_connections() -> None:
    reg, pools = registry_with(("db", "alice", 0), ("db", "bob", 0), ("other", "carol", 0))
    reg.max_db["db"] = 2
    alice, bob, carol = pools[("db", "alice")], pools[("db", "bob")], pools[("other", "carol")]
    old, new = _idle(alice, 1, since=5.0)[0], _idle(alice, 1, since=9.0)[0]
    _idle(carol, 3, since=0.0)  # another database: not in the way
    bob.add_waiter(Cli(), 10.0)
    assert reg.headroom(bob) == 0
    assert reg.evictable(bob, 1) == [old]  # the longest idle
    assert reg.evictable(bob, 2) == [old, new]


def test_evict_under_max_user_connections() -> None:
    reg, pools = registry_with(("d1", "alice", 0), ("d2", "alice", 0), ("d2", "bob", 0))
    reg.max_user["alice"] = 1
    (s,) = _idle(pools[("d1", "alice")], 1, since=0.0)
    _idle(pools[("d2", "bob")], 2, since=0.0)  # bob's servers free nothing of alice's limit
    assert reg.evictable(pools[("d2", "alice")], 1) == [s]


def test_no_eviction_when_it_cannot_make_room() -> None:
    reg, pools = registry_with(("db", "alice", 2), ("db", "bob", 0))  # alice's two are busy
    reg.max_db["db"] = 2
    assert reg.evictable(pools[("db", "bob")], 1) == []
    # Both limits: an idle server of the same database but another user frees max_db only; with
    # max_user also full (by busy servers), closing it would not help, so nothing is closed.
    reg2, p2 = registry_with(("db", "alice", 0), ("db", "bob", 0), ("x", "bob", 1))
    reg2.max_db["db"], reg2.max_user["bob"] = 1, 1
    _idle(p2[("db", "alice")], 1, since=0.0)
    assert reg2.evictable(p2[("db", "bob")], 1) == []


def test_no_eviction_without_a_shared_limit() -> None:
    reg, pools = registry_with(("db", "alice", 0), ("db", "bob", 0))
    _idle(pools[("db", "alice")], 3, since=0.0)
    assert reg.evictable(pools[("db", "bob")], 1) == []


def test_pool_limits_defaults_keep_pgbouncer_behaviour() -> None:
    lim = PoolLimits()
    assert (lim.round_robin, lim.check_delay) == (False, -1.0)
