"""The series prometheus-community/pgbouncer_exporter publishes, under its names and labels, built at scrape
time from the same row builders the admin console's SHOW uses (runtime/admin_service.py), so a dashboard
made for PgBouncer works pointed at pgmux's /metrics, and each number equals what SHOW prints.

From SHOW POOLS (labels database, user), SHOW STATS (database), SHOW DATABASES (name, host, port, database,
force_user, pool_mode), SHOW LISTS and SHOW CONFIG (no labels), SHOW SERVERS (pgbouncer_server_connections)
and SHOW VERSION; and pgbouncer_up, always 1 here (the exporter's scrape of the console succeeded).

Not published: pgbouncer_stats_queries_total (the exporter reads `total_requests`, a column PgBouncer
dropped in 1.8, so against a current PgBouncer the exporter has no such series either).

A read/write-split database has one pool per host (SHOW POOLS prints a row for each, with pgmux's `host`
column): here those rows are summed per (database, user), the oldest wait kept, since one label set may
appear only once in a scrape; pgmux's own pgmux_host_* series give the per-host view.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from pgmux import VERSION_STRING

# SHOW POOLS column -> metric suffix (pgbouncer_pools_<suffix>), help
POOLS = (
    ("cl_active", "client_active_connections",
     "Client connections linked to server connection and able to process queries"),
    ("cl_active_cancel_req", "client_active_cancel_connections",
     "Client connections that have forwarded query cancellations to the server and are waiting for the "
     "server response"),
    ("cl_waiting", "client_waiting_connections", "Client connections waiting on a server connection"),
    ("cl_waiting_cancel_req", "client_waiting_cancel_connections",
     "Client connections that have not forwarded query cancellations to the server yet"),
    ("sv_active", "server_active_connections", "Server connections linked to a client connection"),
    ("sv_active_cancel", "server_active_cancel_connections",
     "Server connections that are currently forwarding a cancel request"),
    ("sv_being_canceled", "server_being_canceled_connections",
     "Servers waiting to become idle until all in-flight cancel requests sent to them have completed"),
    ("sv_idle", "server_idle_connections", "Server connections idle and ready for a client query"),
    ("sv_used", "server_used_connections",
     "Server connections idle more than server_check_delay, needing server_check_query"),
    ("sv_tested", "server_testing_connections",
     "Server connections currently running either server_reset_query or server_check_query"),
    ("sv_login", "server_login_connections", "Server connections currently in the process of logging in"),
)
# SHOW STATS column -> counter name without _total (pgbouncer_stats_<name>_total), factor, help
STATS = (
    ("total_query_count", "queries_pooled", 1, "Total number of SQL queries pooled"),
    ("total_query_time", "queries_duration_seconds", 1e-6,
     "Total number of seconds spent by pgbouncer when actively connected to PostgreSQL, executing queries"),
    ("total_received", "received_bytes", 1, "Total volume in bytes of network traffic received by pgbouncer"),
    ("total_sent", "sent_bytes", 1, "Total volume in bytes of network traffic sent by pgbouncer"),
    ("total_wait_time", "client_wait_seconds", 1e-6, "Time spent by clients waiting for a server in seconds"),
    ("total_xact_count", "sql_transactions_pooled", 1, "Total number of SQL transactions pooled"),
    ("total_xact_time", "server_in_transaction_seconds", 1e-6,
     "Total number of seconds spent by pgbouncer when connected to PostgreSQL in a transaction"),
)
# SHOW DATABASES column -> metric suffix (pgbouncer_databases_<suffix>), help
DATABASES = (
    ("pool_size", "pool_size", "Maximum number of server connections"),
    ("reserve_pool_size", "reserve_pool", "Maximum number of additional connections for this database"),
    ("max_connections", "max_connections", "Maximum number of allowed connections for this database"),
    ("current_connections", "current_connections", "Current number of connections for this database"),
    ("paused", "paused", "1 if this database is currently paused, else 0"),
    ("disabled", "disabled", "1 if this database is currently disabled, else 0"),
)
DATABASE_LABELS = ("name", "host", "port", "database", "force_user", "pool_mode")
# SHOW LISTS row -> metric name (pgbouncer_<name>)
LISTS = {
    "databases": "databases", "users": "users", "pools": "pools", "free_clients": "free_clients",
    "used_clients": "used_clients", "login_clients": "login_clients", "free_servers": "free_servers",
    "used_servers": "used_servers", "dns_names": "cached_dns_names", "dns_zones": "cached_dns_zones",
    "dns_queries": "in_flight_dns_queries",
}
CONFIG = {"max_client_conn": "max_client_connections", "max_user_connections": "max_user_connections"}


def metric_names() -> list[str]:
    """Every series name this collector promises, as they appear in the text exposition."""
    out = [f"pgbouncer_pools_{m}" for _, m, _ in POOLS]
    out += ["pgbouncer_pools_client_maxwait_seconds", "pgbouncer_pools_client_maxwait_fractional"]
    out += [f"pgbouncer_stats_{m}_total" for _, m, _, _ in STATS]
    out += [f"pgbouncer_databases_{m}" for _, m, _ in DATABASES]
    out += [f"pgbouncer_{m}" for m in LISTS.values()]
    out += [f"pgbouncer_config_{m}" for m in CONFIG.values()]
    out += ["pgbouncer_version_info", "pgbouncer_up", "pgbouncer_server_connections"]
    return out


_POOL_COLUMNS = [c for c, _, _ in POOLS] + ["maxwait", "maxwait_us"]


def _label(value: Any) -> str:
    return "" if value is None else str(value)


def pool_rows(admin: Any) -> dict[tuple[str, str], dict[str, float]]:
    """SHOW POOLS summed per (database, user); maxwait/maxwait_us from the row that waited longest."""
    out: dict[tuple[str, str], dict[str, float]] = {}
    rows, _ = admin._show_pools()
    for r in rows:
        acc = out.setdefault((r.database, r.user), dict.fromkeys(_POOL_COLUMNS, 0))
        for col, _, _ in POOLS:
            acc[col] += getattr(r, col)
        if r.maxwait + r.maxwait_us / 1e6 > acc["maxwait"] + acc["maxwait_us"] / 1e6:
            acc["maxwait"], acc["maxwait_us"] = r.maxwait, r.maxwait_us
    return out


class PgBouncerCollector(Collector):
    def __init__(self, app: Any) -> None:
        self.app = app

    def collect(self) -> Iterator[Any]:
        admin = self.app.admin
        yield from self._pools(admin)
        yield from self._stats(admin)
        yield from self._databases(admin)
        yield from self._lists_config(admin)
        yield from self._servers(admin)
        version = GaugeMetricFamily("pgbouncer_version_info", "The pgbouncer version info", labels=["version"])
        version.add_metric([VERSION_STRING], 1)
        yield version
        yield GaugeMetricFamily("pgbouncer_up", "The pgbouncer scrape succeeded", value=1)

    def _pools(self, admin: Any) -> Iterator[Any]:
        pools = pool_rows(admin)
        labels = ["database", "user"]
        for col, name, doc in POOLS:
            g = GaugeMetricFamily(f"pgbouncer_pools_{name}", doc, labels=labels)
            for key, acc in pools.items():
                g.add_metric(list(key), acc[col])
            yield g
        wait = GaugeMetricFamily("pgbouncer_pools_client_maxwait_seconds",
                                 "Age of oldest unserved client connection, in full seconds", labels=labels)
        frac = GaugeMetricFamily("pgbouncer_pools_client_maxwait_fractional",
                                 "The fractional part of client_maxwait_seconds", labels=labels)
        for key, acc in pools.items():
            wait.add_metric(list(key), acc["maxwait"])
            frac.add_metric(list(key), acc["maxwait_us"] * 1e-6)
        yield wait
        yield frac

    def _stats(self, admin: Any) -> Iterator[Any]:
        rows, _ = admin._show_stats()
        for col, name, factor, doc in STATS:
            c = CounterMetricFamily(f"pgbouncer_stats_{name}", doc, labels=["database"])
            for r in rows:
                c.add_metric([r.database], getattr(r, col) * factor)
            yield c

    def _databases(self, admin: Any) -> Iterator[Any]:
        rows, _ = admin._show_databases()
        for col, name, doc in DATABASES:
            g = GaugeMetricFamily(f"pgbouncer_databases_{name}", doc, labels=list(DATABASE_LABELS))
            for r in rows:
                g.add_metric([_label(getattr(r, lab)) for lab in DATABASE_LABELS], getattr(r, col))
            yield g

    def _lists_config(self, admin: Any) -> Iterator[Any]:
        rows, _ = admin._show_lists()
        for r in rows:
            name = LISTS.get(r.list)
            if name is not None:
                yield GaugeMetricFamily(f"pgbouncer_{name}", f"Count of {r.list.replace('_', ' ')} (SHOW LISTS)",
                                        value=r.items)
        rows, _ = admin._show_config()
        for r in rows:
            name = CONFIG.get(r.key)
            if name is not None and r.value is not None:
                yield GaugeMetricFamily(f"pgbouncer_config_{name}", f"Config {r.key}", value=float(r.value))

    def _servers(self, admin: Any) -> Iterator[Any]:
        rows, _ = admin._show_servers()
        counts: dict[tuple[str, ...], int] = {}
        for r in rows:
            key: tuple[str, ...] = (r.user, r.database, r.state, f"{r.addr}_{r.port}",
                                    "true" if r.close_needed == 1 else "false")
            counts[key] = counts.get(key, 0) + 1
        g = GaugeMetricFamily("pgbouncer_server_connections", "Server connections with state information",
                              labels=["user", "database", "state", "addr", "close_needed"])
        for key, n in counts.items():
            g.add_metric(list(key), n)
        yield g
