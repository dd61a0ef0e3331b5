"""admin/merge.py: SHOW replies of several worker processes made into one (issue 14)."""

from __future__ import annotations

from pgmux.admin.merge import merge, split_reply
from pgmux.protocol import messages as m

INT8, TEXT = 20, 25


def reply(cols: list[tuple[str, int]], rows: list[list[object]]) -> bytes:
    return (m.notice_response("ignored") + m.row_description(cols) + b"".join(m.data_row(r) for r in rows)
            + m.command_complete("SHOW"))


POOL_COLS = [("database", TEXT), ("user", TEXT), ("cl_active", INT8), ("sv_idle", INT8), ("maxwait", INT8),
             ("pool_mode", TEXT)]


def test_pools_summed_by_database_and_user() -> None:
    a = reply(POOL_COLS, [["app", "alice", 3, 1, 2, "transaction"], ["app", "bob", 1, 0, 0, "session"]])
    b = reply(POOL_COLS, [["app", "alice", 4, 2, 7, "transaction"]])
    cols, rows = split_reply(merge("pools", [(0, a), (1, b)]))
    assert [c for c, _ in cols] == [c for c, _ in POOL_COLS]
    assert sorted(rows) == sorted([[b"app", b"alice", b"7", b"3", b"7", b"transaction"],
                                   [b"app", b"bob", b"1", b"0", b"0", b"session"]])


def test_mean_times_are_averaged_and_rates_summed() -> None:
    cols = [("database", TEXT), ("avg_xact_count", INT8), ("avg_xact_time", INT8), ("total_xact_count", INT8)]
    a = reply(cols, [["app", 10, 100, 1000]])
    b = reply(cols, [["app", 30, 300, 500]])
    _, rows = split_reply(merge("stats", [(0, a), (1, b)]))
    assert rows == [[b"app", b"40", b"200", b"1500"]]


def test_clients_listed_with_their_worker() -> None:
    cols = [("type", TEXT), ("user", TEXT), ("port", INT8)]
    a = reply(cols, [["C", "alice", 5000]])
    b = reply(cols, [["C", "bob", 5001], ["C", "carol", 5002]])
    out_cols, rows = split_reply(merge("clients", [(0, a), (1, b)]))
    assert [c for c, _ in out_cols] == ["type", "user", "port", "worker"]
    assert rows == [[b"C", b"alice", b"5000", b"0"], [b"C", b"bob", b"5001", b"1"], [b"C", b"carol", b"5002", b"1"]]


def test_one_worker_and_empty_replies() -> None:
    a = reply(POOL_COLS, [])
    cols, rows = split_reply(merge("pools", [(0, a), (1, reply(POOL_COLS, []))]))
    assert len(cols) == len(POOL_COLS) and rows == []
    assert merge("pools", [(0, a)]).endswith(m.command_complete("SHOW"))


def test_databases_sum_connections_and_keep_the_shared_configuration() -> None:
    """pool_size and max_connections are the pooler's, the same on every worker: never summed."""
    cols = [("name", TEXT), ("pool_size", INT8), ("max_connections", INT8), ("current_connections", INT8),
            ("current_client_connections", INT8), ("paused", INT8), ("disabled", INT8)]
    a = reply(cols, [["app", 20, 0, 3, 10, 0, 0], ["pgbouncer", 2, 0, 0, 1, 0, 0]])
    b = reply(cols, [["app", 20, 0, 4, 7, 1, 0]])
    out_cols, rows = split_reply(merge("databases", [(0, a), (1, b)]))
    assert [c for c, _ in out_cols] == [c for c, _ in cols]
    assert rows == [[b"app", b"20", b"0", b"7", b"17", b"1", b"0"], [b"pgbouncer", b"2", b"0", b"0", b"1", b"0", b"0"]]


def test_users_and_mem_are_summed_by_name() -> None:
    ucols = [("name", TEXT), ("pool_size", TEXT), ("max_user_connections", INT8), ("current_connections", INT8),
             ("current_client_connections", INT8)]
    _, rows = split_reply(merge("users", [(0, reply(ucols, [["alice", "", 5, 2, 3]])),
                                          (1, reply(ucols, [["alice", "", 5, 1, 4]]))]))
    assert rows == [[b"alice", b"", b"5", b"3", b"7"]]
    mcols = [("name", TEXT), ("size", INT8), ("used", INT8), ("free", INT8), ("memtotal", INT8)]
    _, rows = split_reply(merge("mem", [(0, reply(mcols, [["client_cache", 400, 10, 0, 4000]])),
                                        (1, reply(mcols, [["client_cache", 600, 30, 0, 18000]]))]))
    assert rows == [[b"client_cache", b"500", b"40", b"0", b"22000"]]


def test_state_is_active_only_when_every_worker_is() -> None:
    cols = [("key", TEXT), ("value", TEXT)]
    running = [["active", "yes"], ["paused", "no"], ["suspended", "no"]]
    suspended = [["active", "no"], ["paused", "no"], ["suspended", "yes"]]
    _, rows = split_reply(merge("state", [(0, reply(cols, running)), (1, reply(cols, suspended))]))
    assert rows == [[b"active", b"no"], [b"paused", b"no"], [b"suspended", b"yes"]]
    _, rows = split_reply(merge("state", [(0, reply(cols, running)), (1, reply(cols, running))]))
    assert rows == [[b"active", b"yes"], [b"paused", b"no"], [b"suspended", b"no"]]


def test_totals_average_the_mean_times_and_sum_the_rest() -> None:
    cols = [("name", TEXT), ("value", INT8)]
    a = reply(cols, [["total_xact_count", 100], ["avg_xact_time", 300], ["avg_xact_count", 10]])
    b = reply(cols, [["total_xact_count", 50], ["avg_xact_time", 100], ["avg_xact_count", 5]])
    _, rows = split_reply(merge("totals", [(0, a), (1, b)]))
    assert rows == [[b"total_xact_count", b"150"], [b"avg_xact_time", b"200"], [b"avg_xact_count", b"15"]]


def test_pools_keep_the_shared_pool_size_and_lists_the_configured_counts() -> None:
    """SHOW POOLS' pool_size is the pooler's limit (the same in every worker that has the pool), and SHOW
    LISTS' databases and users count configuration every worker has: the largest, never summed."""
    cols = [("database", TEXT), ("user", TEXT), ("cl_active", INT8), ("sv_idle", INT8), ("pool_size", INT8)]
    _, rows = split_reply(merge("pools", [(0, reply(cols, [["app", "alice", 3, 1, 20]])),
                                          (1, reply(cols, [["app", "alice", 4, 2, 20]]))]))
    assert rows == [[b"app", b"alice", b"7", b"3", b"20"]]
    lcols = [("list", TEXT), ("items", INT8)]
    _, rows = split_reply(merge("lists", [(0, reply(lcols, [["databases", 3], ["users", 2], ["used_clients", 5]])),
                                          (1, reply(lcols, [["databases", 3], ["users", 2], ["used_clients", 4]]))]))
    assert rows == [[b"databases", b"3"], [b"users", b"2"], [b"used_clients", b"9"]]


def test_a_database_named_like_a_list_is_summed_as_any_other() -> None:
    """SHOW LISTS' configuration rows take the largest value; a pool of a database named "users" in SHOW
    POOLS is summed as every pool is."""
    cols = [("database", TEXT), ("user", TEXT), ("cl_active", INT8)]
    _, rows = split_reply(merge("pools", [(0, reply(cols, [["users", "alice", 3]])),
                                          (1, reply(cols, [["users", "alice", 4]]))]))
    assert rows == [[b"users", b"alice", b"7"]]
