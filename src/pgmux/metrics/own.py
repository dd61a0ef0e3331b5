"""pgmux's own series, read at scrape time from the pools, the split databases' hosts, the clients and the
App's event counters (metrics/events.py). Nothing here runs on the per-transaction path: the histograms
are filled by a few integer adds there (pooling/histogram.py) and only read here.

Histograms (seconds, fixed buckets `histogram.BOUNDS`), per (database, user), summed over a split database's
per-host pools: pgmux_client_wait_seconds (asking for a server to getting one; 0 when one was idle),
pgmux_transaction_seconds, pgmux_query_seconds; and pgmux_client_login_seconds (connect to authenticated).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from pgmux.pooling.histogram import BOUNDS, Histogram
from pgmux.session.states import ClientState

HISTOGRAMS = (
    ("wait", "pgmux_client_wait_seconds", "Time a client waited for a server connection per transaction"),
    ("xact", "pgmux_transaction_seconds", "Time a transaction held its server connection"),
    ("query", "pgmux_query_seconds", "Time a query took on its server connection, up to ReadyForQuery"),
)
_LE = [f"{b:g}" for b in BOUNDS] + ["+Inf"]


def _buckets(h: Histogram) -> list[tuple[str, float]]:
    return list(zip(_LE, [float(n) for n in h.cumulative()], strict=True))


def pool_timings(app: Any) -> dict[tuple[str, str], dict[str, Histogram]]:
    """Each (database, user)'s histograms, merged over its pools (one per host for a split database)."""
    out: dict[tuple[str, str], dict[str, Histogram]] = {}
    for pool in app.registry:
        t = pool.stats.timing
        if t is None:
            continue
        acc = out.setdefault((pool.database, pool.user), {k: Histogram() for k, _, _ in HISTOGRAMS})
        for key, _, _ in HISTOGRAMS:
            acc[key].merge(getattr(t, key))
    return out


class PgmuxCollector(Collector):
    def __init__(self, app: Any) -> None:
        self.app = app

    def collect(self) -> Iterator[Any]:
        yield from self._histograms()
        yield from self._pool_counters()
        yield from self._pins()
        yield from self._hosts()
        yield from self._events()

    def _histograms(self) -> Iterator[Any]:
        timings = pool_timings(self.app)
        for key, name, doc in HISTOGRAMS:
            fam = HistogramMetricFamily(name, doc, labels=["database", "user"])
            for (db, user), hs in timings.items():
                h = hs[key]
                fam.add_metric([db, user], _buckets(h), h.total)
            yield fam
        login = self.app.events.login
        fam = HistogramMetricFamily("pgmux_client_login_seconds", "Client login time, from connect to authenticated")
        fam.add_metric([], _buckets(login), login.total)
        yield fam

    def _pool_counters(self) -> Iterator[Any]:
        per_db: dict[str, list[int]] = {}
        for pool in self.app.registry:
            st = pool.stats
            acc = per_db.setdefault(pool.database, [0, 0, 0, 0])
            acc[0] += st.prepared_hit_count
            acc[1] += st.server_parse_count
            acc[2] += st.prepared_evict_count
            acc[3] += st.pin_count
        names = (("pgmux_prepared_statement_hits", "Binds and Describes whose statement the server had prepared"),
                 ("pgmux_prepared_statement_misses",
                  "Statements pgmux prepared on a server (SHOW STATS server_parse_count)"),
                 ("pgmux_prepared_statement_evictions",
                  "Statements closed on a server to stay within max_prepared_statements"),
                 ("pgmux_pinned_clients", "Clients that became pinned to their server connection"))
        for i, (name, doc) in enumerate(names):
            c = CounterMetricFamily(name, doc, labels=["database"])
            for db, acc in per_db.items():
                c.add_metric([db], acc[i])
            yield c

    def _pins(self) -> Iterator[Any]:
        counts: dict[tuple[str, str, str], int] = {}
        for c in list(self.app.clients.values()):
            if c.pinned and c.state is not ClientState.CLOSED:
                for reason in c.pinned.split(", "):
                    key = (c.database, c.user, reason)
                    counts[key] = counts.get(key, 0) + 1
        g = GaugeMetricFamily("pgmux_pinned_clients_now", "Clients pinned to their server connection now, by reason",
                              labels=["database", "user", "reason"])
        for key, n in counts.items():
            g.add_metric(list(key), n)
        yield g

    def _hosts(self) -> Iterator[Any]:
        rows, _ = self.app.admin._show_hosts()
        labels = ["database", "host"]
        up = GaugeMetricFamily("pgmux_host_up", "1 if the host is usable (not down, lagging or banned)", labels=labels)
        info = GaugeMetricFamily("pgmux_host_info", "A host of a split database: its role and state now",
                                 labels=[*labels, "role", "state"])
        lag_b = GaugeMetricFamily("pgmux_host_replica_lag_bytes", "Replica replay lag in bytes", labels=labels)
        lag_s = GaugeMetricFamily("pgmux_host_replica_lag_seconds", "Replica replay lag in seconds", labels=labels)
        reads = CounterMetricFamily("pgmux_host_reads_routed", "Transactions routed to the host as reads",
                                    labels=labels)
        writes = CounterMetricFamily("pgmux_host_writes_routed", "Transactions routed to the host as writes",
                                     labels=labels)
        for r in rows:
            key = [r.database, f"{r.host}:{r.port}"]
            up.add_metric(key, 1 if r.state == "up" else 0)
            info.add_metric([*key, r.role, r.state], 1)
            if r.lag_bytes is not None:
                lag_b.add_metric(key, r.lag_bytes)
            if r.lag_seconds is not None:
                lag_s.add_metric(key, float(r.lag_seconds))
            reads.add_metric(key, r.reads)
            writes.add_metric(key, r.writes)
        bans = CounterMetricFamily("pgmux_host_bans", "Times the host was banned, by reason",
                                   labels=[*labels, "reason"])
        banned = GaugeMetricFamily("pgmux_host_banned", "1 while the host is banned", labels=labels)
        now = self.app.now()
        for name, sp in self.app.routing.splits.items():
            for h in sp.router.hosts:
                key = [name, f"{h.host.host or 'unix'}:{h.host.port}"]
                banned.add_metric(key, 1 if h.banned(now) else 0)
                for reason, n in h.ban_count.items():
                    bans.add_metric([*key, reason], n)
        yield from (up, info, lag_b, lag_s, reads, writes, bans, banned)

    def _events(self) -> Iterator[Any]:
        ev = self.app.events
        opened = CounterMetricFamily("pgmux_server_connections_opened", "Server connections that logged in",
                                     labels=["database"])
        for db, n in ev.servers_opened.items():
            opened.add_metric([db], n)
        closed = CounterMetricFamily("pgmux_server_connections_closed", "Server connections closed, by reason",
                                     labels=["database", "reason"])
        for (db, reason), n in ev.servers_closed.items():
            closed.add_metric([db, reason], n)
        tls = CounterMetricFamily("pgmux_tls_handshakes", "TLS handshakes with clients and servers, by result",
                                  labels=["side", "result"])
        for (side, result), n in ev.tls.items():
            tls.add_metric([side, result], n)
        clients = GaugeMetricFamily("pgmux_clients", "Client connections now (logging in or logged in)")
        clients.add_metric([], len(self.app.clients))
        yield from (opened, closed, tls, clients)
