"""Per-host health: bans, failed checks, lag limits, role detection and failover, and `choose`."""

from __future__ import annotations

from pgmux.routing.health import HostState, choose


def cluster(**kw):
    primary = HostState("p", "primary", **kw)
    r1 = HostState("r1", "replica", **kw)
    r2 = HostState("r2", "replica", **kw)
    primary.record_check(0.0, True, in_recovery=False)
    r1.record_check(0.0, True, in_recovery=True, lag_bytes=0, lag_seconds=0.0)
    r2.record_check(0.0, True, in_recovery=True, lag_bytes=0, lag_seconds=0.0)
    return primary, r1, r2


def hosts_of(states):
    return [s.host for s in states]


def test_reads_go_to_replicas_and_writes_to_the_primary() -> None:
    hosts = cluster()
    assert hosts_of(choose(hosts, "read", 1.0)) == ["r1", "r2"]
    assert hosts_of(choose(hosts, "write", 1.0)) == ["p"]
    assert hosts_of(choose(hosts, "read", 1.0, include_primary=True)) == ["r1", "r2", "p"]


def test_a_ban_lasts_until_its_time_and_unban_lifts_it() -> None:
    p, r1, r2 = cluster()
    r1.ban(10.0, 30.0, "connect failed: connection refused")
    assert not r1.usable(10.0) and not r1.usable(39.9) and r1.usable(40.0)
    assert r1.status(20.0) == "banned" and r1.ban_reason == "connect failed: connection refused"
    assert hosts_of(choose([p, r1, r2], "read", 20.0)) == ["r2"]
    r1.record_check(21.0, True, in_recovery=True)  # a good check does not shorten a ban
    assert not r1.usable(21.0)
    r1.ban(22.0, 5.0, "again")  # a shorter ban never shortens a longer one
    assert r1.banned_until == 40.0
    r1.unban()
    assert r1.usable(22.0) and r1.banned_until is None and r1.reason == "unbanned"


def test_a_failed_check_lasts_until_a_check_succeeds() -> None:
    p, r1, r2 = cluster()
    r2.record_check(5.0, False, detail="timeout")
    assert not r2.usable(5.0) and r2.status(5.0) == "down" and r2.reason == "health check failed: timeout"
    assert not r2.usable(1e9)
    r2.record_check(9.0, True, in_recovery=True, lag_bytes=0)
    assert r2.usable(9.0) and r2.status(9.0) == "up"
    assert [t for _, t in r2.history][-2:] == ["health check failed: timeout", "health check ok again"]


def test_reads_fall_back_to_the_primary_when_every_replica_is_down_or_behind() -> None:
    p, r1, r2 = cluster(max_lag_bytes=1000)
    r1.record_check(1.0, False)
    r2.record_check(1.0, True, in_recovery=True, lag_bytes=5000)
    assert hosts_of(choose([p, r1, r2], "read", 1.0)) == ["p"]
    p.record_check(2.0, False)
    assert choose([p, r1, r2], "read", 2.0) == [] and choose([p, r1, r2], "write", 2.0) == []


def test_a_lagging_replica_is_unusable_until_it_catches_up() -> None:
    _, r1, _ = cluster(max_lag_bytes=1000, max_lag_seconds=5.0)
    r1.record_check(1.0, True, in_recovery=True, lag_bytes=1001, lag_seconds=0.0)
    assert not r1.usable(1.0) and r1.status(1.0) == "lagging" and r1.reason == "lagging: 1001 bytes > 1000"
    r1.record_check(2.0, True, in_recovery=True, lag_bytes=10, lag_seconds=7.5)
    assert not r1.usable(2.0) and r1.reason == "lagging: 7.5s > 5s"
    r1.record_check(3.0, True, in_recovery=True, lag_bytes=1000, lag_seconds=5.0)  # at the limit is fine
    assert r1.usable(3.0) and r1.reason == "caught up"


def test_zero_means_no_lag_limit_and_unknown_lag_is_not_lag() -> None:
    _, r1, r2 = cluster()
    r1.record_check(1.0, True, in_recovery=True, lag_bytes=10**12, lag_seconds=1e6)
    assert r1.usable(1.0)
    limited = HostState("r3", "replica", max_lag_bytes=1, max_lag_seconds=1.0)
    limited.record_check(1.0, True, in_recovery=True)
    assert limited.usable(1.0)


def test_promotion_and_demotion_follow_the_checks() -> None:
    p, r1, r2 = cluster()
    p.record_check(10.0, False, detail="connection refused")  # the primary dies
    assert choose([p, r1, r2], "write", 10.0) == []
    r1.record_check(20.0, True, in_recovery=False)  # r1 is promoted
    assert r1.role == "primary" and r1.reason == "promoted: no longer in recovery"
    assert hosts_of(choose([p, r1, r2], "write", 20.0)) == ["r1"]
    assert hosts_of(choose([p, r1, r2], "read", 20.0)) == ["r2"]
    p.record_check(30.0, True, in_recovery=True)  # the old primary returns as a standby
    assert p.role == "replica" and p.reason == "demoted: in recovery again"
    assert hosts_of(choose([p, r1, r2], "read", 30.0)) == ["p", "r2"]
    assert hosts_of(choose([p, r1, r2], "write", 30.0)) == ["r1"]


def test_two_primaries_writes_go_only_to_the_newest() -> None:
    p, r1, r2 = cluster()
    r1.record_check(20.0, True, in_recovery=False)  # promoted while the old primary still answers
    p.record_check(25.0, True, in_recovery=False)  # still says primary: it keeps its old primary_since
    assert hosts_of(choose([p, r1, r2], "write", 30.0)) == ["r1"]
    assert p.primary_since == 0.0 and r1.primary_since == 20.0


def test_auto_role_is_learned_from_the_first_check() -> None:
    a, b = HostState("a"), HostState("b")
    assert (a.role, b.role) == ("auto", "auto")
    assert choose([a, b], "write", 0.0) == [] and choose([a, b], "read", 0.0) == []
    a.record_check(1.0, True, in_recovery=False)
    b.record_check(1.0, True, in_recovery=True)
    assert (a.role, a.reason, b.role, b.reason) == ("primary", "is a primary", "replica", "is a replica")
    assert hosts_of(choose([a, b], "write", 1.0)) == ["a"] and hosts_of(choose([a, b], "read", 1.0)) == ["b"]


def test_configured_role_is_a_first_guess_that_checks_correct() -> None:
    h = HostState("x", "primary")
    assert hosts_of(choose([h], "write", 0.0)) == ["x"]  # before any check, the config is believed
    h.record_check(1.0, True, in_recovery=True)
    assert (h.role, h.configured_role) == ("replica", "primary")
    assert h.reason == "is a replica (configured primary)"


def test_an_unconfirmed_configured_primary_loses_to_a_detected_one() -> None:
    configured, detected = HostState("old", "primary"), HostState("new", "replica")
    detected.record_check(5.0, True, in_recovery=False)
    assert hosts_of(choose([configured, detected], "write", 5.0)) == ["new"]


def test_history_is_bounded_and_timestamped() -> None:
    h = HostState("r", "replica", history_size=3)
    for t in range(10):
        h.ban(float(t), 1.0, f"boom {t}")
    assert list(h.history) == [(7.0, "banned for 1s: boom 7"), (8.0, "banned for 1s: boom 8"),
                               (9.0, "banned for 1s: boom 9")]
