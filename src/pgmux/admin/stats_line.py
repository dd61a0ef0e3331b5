"""The periodic stats line of log_stats, in PgBouncer's words (stats.c, refresh_stats):

    stats: 12 xacts/s, 30 queries/s, 0 client parses/s, 0 server parses/s, 0 binds/s, in 4021 B/s,
    out 9120 B/s, xact 1520 us, query 410 us, wait 3 us

Rates are per second over the last stats_period; the times are averages per transaction (xact, wait)
and per query, over the same period, in microseconds. Pure: totals in, text out.
"""

from __future__ import annotations

from collections.abc import Mapping

# The counters a line needs, by the names PoolStats (pooling/pool.py) gives them.
FIELDS = ("xact_count", "query_count", "client_parse_count", "server_parse_count", "bind_count",
          "bytes_received", "bytes_sent", "xact_time", "query_time", "wait_time")


def averages(cur: Mapping[str, int], old: Mapping[str, int], period: float) -> dict[str, int]:
    """PgBouncer's calc_average(): rates per second, and times per transaction or query."""
    d = {f: cur.get(f, 0) - old.get(f, 0) for f in FIELDS}
    out = {f: int(d[f] / period) if period > 0 else 0 for f in FIELDS}
    xacts, queries = d["xact_count"], d["query_count"]
    out["xact_time"] = d["xact_time"] // xacts if xacts > 0 else 0
    out["query_time"] = d["query_time"] // queries if queries > 0 else 0
    out["wait_time"] = d["wait_time"] // xacts if xacts > 0 else 0
    return out


def stats_line(avg: Mapping[str, int], database: str | None = None) -> str:
    """The line for all databases (PgBouncer's, word for word), or pgmux's line for one `database`."""
    head = "stats:" if database is None else f"stats for database {database}:"
    return (f"{head} {avg['xact_count']} xacts/s, {avg['query_count']} queries/s, "
            f"{avg['client_parse_count']} client parses/s, {avg['server_parse_count']} server parses/s, "
            f"{avg['bind_count']} binds/s, in {avg['bytes_received']} B/s, out {avg['bytes_sent']} B/s, "
            f"xact {avg['xact_time']} us, query {avg['query_time']} us, wait {avg['wait_time']} us")
