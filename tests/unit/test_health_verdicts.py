"""Health verdicts shared between workers (routing/verdicts.py, runtime/health_share.py): the encoding, the
staleness rule, what a follower adopts, and the lock/board/kick files. No sockets."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from pgmux.config import HostConfig
from pgmux.routing import verdicts as vd
from pgmux.routing.health import HostState
from pgmux.runtime.health_share import HealthShare


def host(port: int = 5432, role: str = "auto") -> HostState[HostConfig]:
    return HostState(HostConfig("127.0.0.1", port, role), role)  # type: ignore[arg-type]


def checked(state: HostState[HostConfig], now: float, in_recovery: bool, lag: int = 0) -> HostState[HostConfig]:
    state.record_check(now, True, in_recovery, lag, 0.0)
    return state


def board(*pairs: tuple[str, vd.Verdict], seq: int = 1) -> vd.Board:
    return vd.Board(pid=4242, worker=1, seq=seq, written=100.0, hosts=dict(pairs))


# -- encoding -----------------------------------------------------------------------------------------------
def test_a_board_round_trips() -> None:
    primary = checked(host(1), 10.0, False)
    replica = checked(host(2, "replica"), 10.5, True, lag=123)
    replica.max_lag_bytes = 100
    checked(replica, 11.0, True, lag=123)
    b = board((vd.host_key(primary), vd.verdict_of(primary, 0x16_B374D848, None)),
              (vd.host_key(replica), vd.verdict_of(replica, 77, (400.5, "health check failed: refused"))), seq=9)
    again = vd.decode(vd.encode(b))
    assert again == b
    r = again.hosts["127.0.0.1:2"]
    assert (r.role, r.lagging, r.lag_bytes, r.lsn, r.checked) == ("replica", True, 123, 77, 11.0)
    assert (r.banned_until, r.ban_reason) == (400.5, "health check failed: refused")
    p = again.hosts["127.0.0.1:1"]
    assert (p.role, p.primary_since, p.banned_until, p.ban_reason) == ("primary", 10.0, None, "")


def test_the_published_ban_is_the_shared_one_not_the_hosts_own() -> None:
    state = checked(host(2, "replica"), 1.0, True)
    state.ban(2.0, 300, "server error 08006: gone")  # the checker's own traffic
    v = vd.verdict_of(state, None, None)
    assert (v.banned_until, v.ban_reason) == (None, "")


@pytest.mark.parametrize("data", [
    b"", b"{", b"\xff\xfe", b"[]", b'{"v": 2, "hosts": {}, "pid": 1, "worker": 0, "seq": 1, "written": 1}',
    b'{"v": 1, "hosts": {}, "pid": "1", "worker": 0, "seq": 1, "written": 1}',
    b'{"v": 1, "hosts": {}, "pid": 1, "worker": 0, "seq": true, "written": 1}',
    b'{"v": 1, "hosts": {}, "pid": 1, "worker": 0, "seq": 1}',
    b'{"v": 1, "hosts": {"h:1": {"role": "leader"}}, "pid": 1, "worker": 0, "seq": 1, "written": 1}',
])
def test_garbage_is_no_board(data: bytes) -> None:
    with pytest.raises(ValueError):
        vd.decode(data)


def test_a_verdict_with_a_wrong_type_is_refused() -> None:
    good = json.loads(vd.encode(board(("h:1", vd.verdict_of(checked(host(), 1.0, True), 5, None)))))
    vd.decode(json.dumps(good).encode())
    for key, bad in (("healthy", "yes"), ("lsn", "0/1"), ("checked", True), ("reason", None)):
        broken = json.loads(json.dumps(good))
        broken["hosts"]["h:1"][key] = bad
        with pytest.raises(ValueError):
            vd.decode(json.dumps(broken).encode())


# -- staleness ----------------------------------------------------------------------------------------------
def test_staleness_is_three_periods_and_a_timeout() -> None:
    assert vd.stale_after(1.0, 2.0) == 5.0
    assert not vd.is_stale(100.0, 0.0, 105.0, 1.0, 2.0)
    assert vd.is_stale(100.0, 0.0, 105.01, 1.0, 2.0)
    # No verdict yet: counted from when the follower started waiting.
    assert not vd.is_stale(None, 50.0, 54.9, 1.0, 2.0)
    assert vd.is_stale(None, 50.0, 55.1, 1.0, 2.0)


# -- adopting ---------------------------------------------------------------------------------------------------
def verdict(**changes: object) -> vd.Verdict:
    base = vd.Verdict(role="replica", role_checked=True, healthy=True, lagging=False, lag_bytes=0, lag_seconds=0.0,
                      lsn=10, checked=10.0, primary_since=None, banned_until=None, ban_reason="", reason="is a replica")
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_a_follower_adopts_role_lag_and_a_new_ban() -> None:
    state = host(2)
    vd.adopt(state, verdict(lagging=True, lag_bytes=5000, reason="lagging: 5000 bytes > 100"), None, 10.0)
    assert (state.role, state.status(10.0), state.lag_bytes, state.last_check) == ("replica", "lagging", 5000, 10.0)
    assert state.reason == "lagging: 5000 bytes > 100"
    first = verdict(checked=11.0, healthy=False, banned_until=311.0, ban_reason="health check failed: refused",
                    reason="health check failed: refused")
    vd.adopt(state, first, verdict(), 11.0)
    assert state.status(12.0) == "banned" and state.banned_until == 311.0
    assert state.ban_count == {}  # counted once in the pooler: by the checker, who decided it
    assert state.history[-1][1].endswith("health check failed: refused")
    vd.adopt(state, dataclasses.replace(first, checked=12.0), first, 12.0)  # the same ban published again
    assert state.banned_until == 311.0 and len([h for h in state.history if "banned" in h[1]]) == 1
    assert not state.usable(400.0)  # down until a check succeeds, though the ban ran out


def test_an_older_check_does_not_undo_a_failure_seen_since() -> None:
    state = checked(host(2, "replica"), 9.0, True)
    state.record_check(10.5, False, detail="server error 08006")  # this worker's traffic (Routing._mark)
    vd.adopt(state, verdict(checked=10.0), None, 10.6)
    assert not state.healthy
    vd.adopt(state, verdict(checked=11.0), verdict(checked=10.0), 11.1)
    assert state.healthy and state.last_check == 11.0


def test_a_local_traffic_ban_stays_until_the_published_ban_changes() -> None:
    state = checked(host(2, "replica"), 9.0, True)
    state.ban(9.5, 300, "server error 08006: gone")
    vd.adopt(state, verdict(checked=10.0), None, 10.0)
    vd.adopt(state, verdict(checked=11.0), verdict(checked=10.0), 11.0)
    assert state.banned(11.0) and state.ban_reason.startswith("server error")
    # A shorter published ban does not shorten it; the reason is the published one.
    vd.adopt(state, verdict(checked=12.0, banned_until=100.0, ban_reason="banned by admin"), verdict(), 12.0)
    assert state.banned_until == 309.5 and state.ban_reason == "banned by admin"
    # The published ban lifted (console UNBAN): lifted here too, local part included.
    vd.adopt(state, verdict(checked=13.0), verdict(banned_until=100.0, ban_reason="banned by admin"), 13.0)
    assert not state.banned(13.0) and state.usable(13.0)


def test_a_promoted_replica_is_unbanned_and_the_newest_primary_wins() -> None:
    old, new = checked(host(1, "primary"), 1.0, False), checked(host(2, "replica"), 1.0, True)
    new.ban(2.0, 300, "server error 08006: gone")
    vd.adopt(new, verdict(role="primary", checked=5.0, primary_since=5.0, reason="promoted"), verdict(), 5.0)
    assert new.role == "primary" and not new.banned(5.0)
    assert new.history[-1][1] == "promoted: no longer in recovery"
    from pgmux.routing.health import choose
    assert choose([old, new], "write", 5.0) == [new]


def test_unknown_role_and_no_check_yet_leave_the_state_alone() -> None:
    state = host(3, "primary")
    vd.adopt(state, verdict(role="auto", role_checked=False, checked=None), None, 1.0)
    assert (state.role, state.last_check, state.healthy) == ("primary", None, True)


# -- the files ------------------------------------------------------------------------------------------------
def test_one_leader_a_board_read_when_it_changes_and_kicks(tmp_path: Path) -> None:
    a, b = HealthShare(str(tmp_path), "app", 0), HealthShare(str(tmp_path), "app", 1)
    other = HealthShare(str(tmp_path), "other db", 1)
    assert a.try_lead() and a.leading
    assert not b.try_lead() and not b.leading  # one checker per database ...
    assert other.try_lead()  # ... and each database its own
    assert b.read() is None  # nothing published yet
    published = board(("127.0.0.1:2", verdict()), seq=3)
    a.publish(published)
    assert b.read() == published and b.seq == 3
    assert b.read() is None  # unchanged: not read again
    assert b.read(force=True) == published
    assert sorted(os.listdir(tmp_path / "health")) == sorted(
        [os.path.basename(p) for p in (a.lock_path, a.board_path, other.lock_path)])  # no temporary left
    assert not a.kicked()
    b.kick()
    assert a.kicked() and not a.kicked()
    a.close()  # the checker stops: the lock is free
    assert b.try_lead()
    assert not b.kicked()  # a kick from before it led is not a new one
    b.close()
    other.close()


def test_a_torn_board_is_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    share = HealthShare(str(tmp_path), "app", 0)
    Path(share.board_path).write_bytes(b'{"v": 1, "hosts": {')
    assert share.read() is None
    assert "unusable verdicts" in caplog.text
