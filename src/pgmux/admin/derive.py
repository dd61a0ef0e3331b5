"""Rows PgBouncer derives from others, so the runtime only has to build the primary ones.

SHOW STATS_TOTALS, STATS_AVERAGES and TOTALS are views of the same per-database counters as SHOW STATS,
under other column names; SHOW LISTS and SHOW STATE have a fixed set of rows in a fixed order. Keeping
those renamings here means the runtime fills one StatsRow per database and never spells a legacy name.
"""

from __future__ import annotations

from collections.abc import Mapping

from pgmux.admin.rows import ListsRow, StateRow, StatsAveragesRow, StatsRow, StatsTotalsRow, TotalsRow

# SHOW LISTS rows, in PgBouncer's order. Missing counts are shown as 0.
LISTS = (
    "databases", "users", "peers", "pools", "peer_pools",
    "free_clients", "used_clients", "login_clients", "free_servers", "used_servers",
    "dns_names", "dns_zones", "dns_queries", "dns_pending",
)

# The counters in PgBouncer's internal order, which SHOW TOTALS prints under their internal names
# (client_bytes, ps_bind_count...), unlike SHOW STATS (received, bind_count...).
# (SHOW STATS suffix, SHOW TOTALS suffix)
_COUNTERS = (
    ("server_assignment_count", "server_assignment_count"),
    ("xact_count", "xact_count"),
    ("query_count", "query_count"),
    ("received", "client_bytes"),
    ("sent", "server_bytes"),
    ("xact_time", "xact_time"),
    ("query_time", "query_time"),
    ("wait_time", "wait_time"),
    ("client_parse_count", "ps_client_parse_count"),
    ("server_parse_count", "ps_server_parse_count"),
    ("bind_count", "ps_bind_count"),
    ("client_login_count", "client_login_count"),
)
# SHOW STATS spells two averages differently from their totals.
_AVG_NAME = {"received": "recv", "sent": "sent"}


def _total(s: StatsRow, suffix: str) -> int:
    value: int = getattr(s, f"total_{suffix}")
    return value


def _avg(s: StatsRow, suffix: str) -> int:
    value: int = getattr(s, f"avg_{_AVG_NAME.get(suffix, suffix)}")
    return value


def stats_totals_row(s: StatsRow) -> StatsTotalsRow:
    return StatsTotalsRow(
        s.database, s.total_server_assignment_count, s.total_xact_count, s.total_query_count,
        s.total_received, s.total_sent, s.total_xact_time, s.total_query_time, s.total_wait_time,
        s.total_client_parse_count, s.total_server_parse_count, s.total_bind_count, s.total_client_login_count,
        s.total_pinned_count,
    )


def stats_averages_row(s: StatsRow) -> StatsAveragesRow:
    return StatsAveragesRow(
        s.database, s.avg_server_assignment_count, s.avg_xact_count, s.avg_query_count,
        s.avg_recv, s.avg_sent, s.avg_xact_time, s.avg_query_time, s.avg_wait_time,
        s.avg_client_parse_count, s.avg_server_parse_count, s.avg_bind_count, s.avg_client_login_count,
        s.avg_pinned_count,
    )


def totals_rows(overall: StatsRow) -> list[TotalsRow]:
    """SHOW TOTALS from one StatsRow over all databases (its `database` field is ignored).

    Build `overall` from the summed counters, as for one database: time averages are ratios of
    deltas (time / count over the period), so they cannot be added up across rows.
    """
    rows = [TotalsRow(f"total_{name}", _total(overall, suffix)) for suffix, name in _COUNTERS]
    rows += [TotalsRow(f"avg_{name}", _avg(overall, suffix)) for suffix, name in _COUNTERS]
    # pgmux's own counter after all of PgBouncer's rows
    rows += [TotalsRow("total_pinned_count", overall.total_pinned_count),
             TotalsRow("avg_pinned_count", overall.avg_pinned_count)]
    return rows


def lists_rows(counts: Mapping[str, int]) -> list[ListsRow]:
    unknown = set(counts) - set(LISTS)
    if unknown:
        raise ValueError(f"not a SHOW LISTS row: {', '.join(sorted(unknown))}")
    return [ListsRow(name, counts.get(name, 0)) for name in LISTS]


def state_rows(*, paused: bool, suspended: bool) -> list[StateRow]:
    """SHOW STATE. PgBouncer has one global mode, so paused and suspended are exclusive."""
    if paused and suspended:
        raise ValueError("the pooler is either paused or suspended, not both")

    def yes(flag: bool) -> str:
        return "yes" if flag else "no"

    return [
        StateRow("active", yes(not paused and not suspended)),
        StateRow("paused", yes(paused)),
        StateRow("suspended", yes(suspended)),
    ]

