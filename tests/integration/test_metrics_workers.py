"""metrics_listen with workers (issue 15): one endpoint for the whole pooler. Whichever worker takes a
scrape, /metrics carries the pooler's totals (checked against the console's SHOW, which merges across
workers), configuration not multiplied, histograms that add up; a worker stopped or killed leaves the
scrape bounded and saying so. Helpers from test_workers.py (SIGSTOP steers a connection to one worker)."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from pathlib import Path
from typing import Any

import psycopg
import pytest
from helpers import guard, wait_for
from metrics_helpers import Samples, get, metrics_settings, samples, url, value
from test_metrics import EXPORTER_SERIES
from test_workers import CONNECT, connect_on, start, stop_outside_the_lock, worker_pids

from pgmux.testing.cluster import HOST, free_port

POOL = 30


def scrape_from(mux: Any, timeout: float = 10) -> tuple[int, Samples, float]:
    """(the worker that answered, the samples, seconds the scrape took)."""
    t0 = time.monotonic()
    with urllib.request.urlopen(url(mux), timeout=timeout) as r:
        worker = int(r.headers["X-Pgmux-Worker"])
        text = r.read().decode()
    took = time.monotonic() - t0
    return worker, samples(text), took


def _show(mux: Any, what: str) -> list[dict[str, Any]]:
    with psycopg.connect(host=mux.host, port=mux.port, dbname="pgbouncer", user="postgres", autocommit=True,
                         connect_timeout=10, cursor_factory=psycopg.ClientCursor,
                         row_factory=psycopg.rows.dict_row) as admin:
        return admin.execute(f"SHOW {what}").fetchall()


def _pool(mux: Any) -> dict[str, Any]:
    """testdb's merged SHOW POOLS row (zeros before any worker has the pool)."""
    return next((r for r in _show(mux, "POOLS") if r["database"] == "testdb"),
                {"cl_active": 0, "cl_waiting": 0, "sv_active": 0})


def _stats(mux: Any) -> dict[str, Any]:
    return next(r for r in _show(mux, "STATS") if r["database"] == "testdb")


KEY = {"database": "testdb", "user": "postgres"}


@pytest.mark.parametrize("workers", [2, 4])
def test_every_scrape_is_the_whole_pooler(pgmux_factory: Any, workers: int) -> None:
    mux = start(pgmux_factory, workers, **metrics_settings(default_pool_size=POOL, max_client_conn=200))
    conns: list[psycopg.Connection[Any]] = []
    try:
        for i in range(workers):  # at least two clients on each worker, for sure
            conns += [connect_on(mux, i) for _ in range(2)]
        conns += [psycopg.connect(mux.dsn(), **CONNECT) for _ in range(20 - len(conns))]
        busy = conns[::2]  # half hold an open transaction (a server each), half are idle
        for c in busy:
            c.execute("BEGIN")
            c.execute("SELECT 1")
        per_worker = {i: 0 for i in range(workers)}
        for r in _show(mux, "CLIENTS"):
            if r["database"] == "testdb":
                per_worker[int(r["worker"])] += 1
        assert sum(per_worker.values()) == 20 and min(per_worker.values()) >= 2, per_worker
        pool = _pool(mux)
        assert pool["cl_active"] == 20 and pool["sv_active"] == len(busy), pool
        answered_by: set[int] = set()
        for _ in range(60):  # repeated scrapes: each one the pooler's, until every worker answered some
            w, s, took = scrape_from(mux)
            answered_by.add(w)
            assert took < 5, took
            assert value(s, "pgbouncer_pools_client_active_connections", **KEY) == 20
            assert value(s, "pgbouncer_pools_client_waiting_connections", **KEY) == 0
            assert value(s, "pgbouncer_pools_server_active_connections", **KEY) == len(busy)
            assert value(s, "pgmux_workers") == workers and value(s, "pgmux_workers_missing") == 0
            for i in range(workers):
                assert value(s, "pgmux_worker_up", worker=str(i)) == 1
                assert value(s, "pgmux_worker_clients", worker=str(i)) == per_worker[i], (i, per_worker)
            # configuration: once, never times the workers
            assert value(s, "pgbouncer_config_max_client_connections") == 200
            db = next(r for r in _show(mux, "DATABASES") if r["name"] == "testdb")
            labels = {"name": "testdb", "host": db["host"] or "", "port": str(db["port"]), "database": "testdb",
                      "force_user": db["force_user"] or "", "pool_mode": db["pool_mode"] or ""}
            assert value(s, "pgbouncer_databases_pool_size", **labels) == POOL
            assert value(s, "pgbouncer_databases_current_connections", **labels) == db["current_connections"]
            assert value(s, "pgbouncer_up") == 1 and value(s, "pgbouncer_databases") == len(_show(mux, "DATABASES"))
            # pgmux_clients counts every client: the 20 and the console connections of the moment
            assert 20 <= value(s, "pgmux_clients") <= 20 + workers + 2
            # no worker label on the exporter's series: the same series as one process
            assert not [k for k in s if k[0].startswith("pgbouncer_") and any(n == "worker" for n, _ in k[1])]
            if answered_by == set(range(workers)):
                break
        assert answered_by == set(range(workers)), answered_by
        # at rest: the histograms' counts are the pooler's, the same from scrape to scrape
        for c in busy:
            c.execute("COMMIT")
        wait_for(lambda: _pool(mux)["sv_active"] == 0, "the transactions to end", 20)
        st = _stats(mux)
        seen = set()
        for _ in range(3 * workers):
            w, s, _ = scrape_from(mux)
            seen.add(w)
            assert value(s, "pgmux_transaction_seconds_count", **KEY) == int(st["total_xact_count"]) >= 10
            assert value(s, "pgmux_query_seconds_count", **KEY) == int(st["total_query_count"])
            assert value(s, "pgbouncer_stats_sql_transactions_pooled_total", database="testdb") == \
                int(st["total_xact_count"])
            assert value(s, "pgmux_transaction_seconds_bucket", le="+Inf", **KEY) == int(st["total_xact_count"])
            assert value(s, "pgmux_client_login_seconds_count") >= 20
        # under load: growing
        before = value(scrape_from(mux)[1], "pgmux_transaction_seconds_count", **KEY)
        for c in conns:
            c.execute("SELECT 1")
        after = value(scrape_from(mux)[1], "pgmux_transaction_seconds_count", **KEY)
        assert after == before + len(conns)
    finally:
        for c in conns:
            c.close()


def test_a_stopped_or_killed_worker_leaves_a_bounded_scrape_that_says_so(pgmux_factory: Any) -> None:
    """...and the pooler's counters never go down meanwhile (a worker missing or dead counts what it
    showed last; its successor carries that on)."""
    mux = start(pgmux_factory, 2, **metrics_settings(default_pool_size=POOL))
    on = {i: [connect_on(mux, i) for _ in range(3)] for i in (0, 1)}
    xacts = ("pgbouncer_stats_sql_transactions_pooled_total", {"database": "testdb"})
    hist = ("pgmux_transaction_seconds_count", KEY)
    seen: list[tuple[float, float]] = []  # the counters, scrape after scrape: they never go down

    def counted(s: Samples) -> None:
        seen.append((value(s, xacts[0], **xacts[1]), value(s, hist[0], **hist[1])))
        assert all(x0 <= x1 and h0 <= h1 for (x0, h0), (x1, h1) in zip(seen, seen[1:], strict=False)), seen

    try:
        for c in on[0] + on[1]:
            for _ in range(5):
                c.execute("SELECT 1")
        w, s, _ = scrape_from(mux)
        assert value(s, "pgbouncer_pools_client_active_connections", **KEY) == 6
        counted(s)
        assert seen[0] == (30, 30) == (int(_stats(mux)["total_xact_count"]),) * 2
        victim = worker_pids(mux)[1]
        stop_outside_the_lock(victim)  # takes no scrape, answers no peer: the other one answers, in bounded time
        try:
            w, s, took = scrape_from(mux)
            assert w == 0 and took < 8, (w, took)
            assert value(s, "pgmux_workers_missing") == 1
            assert value(s, "pgmux_worker_up", worker="1") == 0 and value(s, "pgmux_worker_up", worker="0") == 1
            assert value(s, "pgbouncer_pools_client_active_connections", **KEY) == 3  # worker 0's part
            counted(s)  # worker 1's counters as it last showed them: still 30, not worker 0's 15
            assert seen[-1] == (30, 30)
            status = json.loads(get(mux, "/status.json")[2])
            assert status["workers"] == {"count": 2, "answered": [0], "missing": [1]}
            wait_for(lambda: "metrics: worker 1 did not answer within" in mux.log(), "the warning", 10)
        finally:
            os.kill(victim, signal.SIGKILL)
            os.kill(victim, signal.SIGCONT)
        # during the restart and after it: every scrape answers, in bounded time; then complete again
        deadline = time.monotonic() + 30
        while True:
            w, s, took = scrape_from(mux)
            assert took < 8, took
            counted(s)  # during the restart too
            if value(s, "pgmux_workers_missing") == 0:
                break
            assert time.monotonic() < deadline, "worker 1 never answered again"
            time.sleep(0.1)
        assert worker_pids(mux).get(1) not in (None, victim)
        # worker 1's clients died with it; the scrape is the pooler's again
        assert value(s, "pgbouncer_pools_client_active_connections", **KEY) == _pool(mux)["cl_active"] == 3
        assert value(s, "pgmux_worker_up", worker="1") == 1
        # (said by worker 0 once it merges worker 1's numbers again: scraped until the kernel gives it one)
        wait_for(lambda: scrape_from(mux) and "metrics: worker 1 answers again" in mux.log(), "the all-clear", 20)
        assert all(c.execute("SELECT 1").fetchone() == (1,) for c in on[0])
        # the restarted worker carries its predecessor's counters on: both workers' 30, and the new ones
        for _ in range(2):
            counted(scrape_from(mux)[1])
        now = 15 + int(_stats(mux)["total_xact_count"])  # worker 1's 15 and the live workers' (SHOW STATS)
        assert now >= 33 and seen[-1] == (now, now), (now, seen)
    finally:
        for cs in on.values():
            for c in cs:
                c.close()


def test_exporter_series_openmetrics_and_status_with_workers(pgmux_factory: Any, tmp_path: Path) -> None:
    mux = start(pgmux_factory, 2, **metrics_settings())
    with connect_on(mux, 0) as a, connect_on(mux, 1) as b:
        a.execute("LISTEN ch")  # pinned, on worker 0
        b.execute("SELECT 1")
        _, s, _ = scrape_from(mux)
        have: dict[str, set[tuple[str, ...]]] = {}
        for name, labels in s:
            have.setdefault(name, set()).add(tuple(k for k, _ in labels))
        assert [n for n in EXPORTER_SERIES if n not in have] == []
        assert {n: have[n] for n, labels in EXPORTER_SERIES.items() if have[n] != {labels}} == {}
        assert value(s, "pgmux_pinned_clients_now", database="testdb", user="postgres", reason="listen") == 1
        servers = [r for r in _show(mux, "SERVERS") if r["database"] == "testdb"]  # every worker's
        assert {r["worker"] for r in servers} == {"0", "1"}
        for state in ("idle", "active"):
            assert value(s, "pgbouncer_server_connections", user="postgres", database="testdb", state=state,
                         addr=f"{servers[0]['addr']}_{servers[0]['port']}", close_needed="false") == \
                len([r for r in servers if r["state"] == state]), (state, servers)
        status_, ctype, om = get(mux, accept="application/openmetrics-text; version=1.0.0; charset=utf-8")
        assert status_ == 200 and ctype.startswith("application/openmetrics-text") and om.rstrip().endswith("# EOF")
        assert "# TYPE pgmux_transaction_seconds histogram" in om and "pgmux_workers_missing 0.0" in om
        doc = json.loads(get(mux, "/status.json")[2])
        assert doc["workers"] == {"count": 2, "answered": [0, 1], "missing": []}
        pool = next(p for p in doc["pools"] if p["database"] == "testdb")
        assert pool["cl_active"] == 2 and pool["pool_size"] == 20, pool
        assert doc["pinned_by_reason"] == {"listen": 1} and doc["pinned"][0]["worker"] == 0
        # the charts: one point per 2-second slot, the workers' merged (tps summed)
        wait_for(lambda: len(json.loads(get(mux, "/status.json")[2])["history"]["t"]) >= 3, "history points", 30)
        hist = json.loads(get(mux, "/status.json")[2])["history"]
        assert all(t % 2 == 0 for t in hist["t"]) and hist["t"] == sorted(set(hist["t"]))
        assert hist["sv_total"][-1] == sum(1 for r in _show(mux, "SERVERS") if r["database"] == "testdb")


def test_a_reload_that_moves_metrics_listen_says_it_waits_for_a_restart(pgmux_factory: Any) -> None:
    mux = start(pgmux_factory, 2, **metrics_settings())
    old = mux.settings["metrics_listen"]
    new = f"{HOST}:{free_port()}"
    mux.rewrite(settings={"metrics_listen": new})
    mux.reload()
    wait_for(lambda: mux.log().count(f"metrics_listen = {new}: with workers the supervisor binds") >= 2,
             "the warning from both workers", 20)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://{new}/metrics", timeout=5)
    with urllib.request.urlopen(f"http://{old}/metrics", timeout=10) as r:
        assert r.status == 200


def test_a_metrics_port_in_use_stops_the_supervisor(pgmux_factory: Any) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind((HOST, 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(pytest.fail.Exception) as err:
            pgmux_factory(settings={"workers": 2, **metrics_settings(metrics_listen=f"{HOST}:{port}")})
    assert f"metrics_listen = {HOST}:{port}: Address already in use" in str(err.value), str(err.value)[-3000:]


def test_scrapes_under_pgbench_load_with_workers_match_the_merged_show(pgmux_factory: Any, tmp_path: Path) -> None:
    """pgbench's clients over two workers: each scrape's counters lie between two merged SHOW STATS around
    it, the clients add up, and at rest every series equals its merged SHOW column."""
    from test_metrics import CLIENTS, _pgbench

    mux = start(pgmux_factory, 2, **metrics_settings(default_pool_size=4))
    bench = _pgbench(mux, tmp_path, seconds=8)
    with guard(mux):
        try:
            wait_for(lambda: _pool(mux)["cl_active"] + _pool(mux)["cl_waiting"] == CLIENTS, "pgbench's clients", 20)
            for _ in range(6):
                before = _stats(mux)
                w, s, took = scrape_from(mux)
                after = _stats(mux)
                assert took < 5 and value(s, "pgmux_workers_missing") == 0
                for col, name in (("total_xact_count", "pgbouncer_stats_sql_transactions_pooled_total"),
                                  ("total_query_count", "pgbouncer_stats_queries_pooled_total")):
                    assert before[col] <= value(s, name, database="testdb") <= after[col], (col, before, after)
                assert before["total_xact_count"] <= value(s, "pgmux_transaction_seconds_count", **KEY) \
                    <= after["total_xact_count"]
                assert value(s, "pgbouncer_pools_client_active_connections", **KEY) + \
                    value(s, "pgbouncer_pools_client_waiting_connections", **KEY) == CLIENTS
                assert value(s, "pgbouncer_pools_server_active_connections", **KEY) <= 4  # the pooler's pool_size
                assert sum(v for k, v in s.items() if k[0] == "pgmux_worker_clients") >= CLIENTS
                time.sleep(0.3)
        finally:
            out, _ = bench.communicate(timeout=60)
        assert bench.returncode == 0, out[-3000:]
        wait_for(lambda: _pool(mux)["sv_active"] == 0 and _pool(mux)["cl_active"] == 0, "pgbench to finish", 20)
        pools, stats, databases, lists = (_show(mux, w) for w in ("POOLS", "STATS", "DATABASES", "LISTS"))
        s = scrape_from(mux)[1]
        assert _show(mux, "POOLS") == pools  # nothing moved meanwhile
    for r in pools:
        if r["database"] == "pgbouncer":  # the consoles asking (this one and the workers' own) are there
            continue
        key = {"database": r["database"], "user": r["user"]}
        for col, name in (("cl_active", "client_active_connections"), ("cl_waiting", "client_waiting_connections"),
                          ("sv_active", "server_active_connections"), ("sv_idle", "server_idle_connections"),
                          ("sv_used", "server_used_connections"), ("sv_login", "server_login_connections"),
                          ("maxwait", "client_maxwait_seconds")):
            assert value(s, f"pgbouncer_pools_{name}", **key) == r[col], (name, r)
    st = next(r for r in stats if r["database"] == "testdb")
    for col, name, factor in (("total_query_count", "queries_pooled_total", 1),
                              ("total_xact_count", "sql_transactions_pooled_total", 1),
                              ("total_received", "received_bytes_total", 1), ("total_sent", "sent_bytes_total", 1),
                              ("total_xact_time", "server_in_transaction_seconds_total", 1e-6),
                              ("total_wait_time", "client_wait_seconds_total", 1e-6)):
        assert value(s, f"pgbouncer_stats_{name}", database="testdb") == pytest.approx(int(st[col]) * factor), name
    assert value(s, "pgmux_transaction_seconds_count", **KEY) == int(st["total_xact_count"]) > CLIENTS * 10
    assert value(s, "pgmux_client_wait_seconds_count", **KEY) == int(st["total_server_assignment_count"])
    assert abs(value(s, "pgmux_transaction_seconds_sum", **KEY) * 1e6 - int(st["total_xact_time"])) <= 2
    for r in databases:
        labels = {"name": r["name"], "host": r["host"] or "", "port": str(r["port"]), "database": r["database"],
                  "force_user": r["force_user"] or "", "pool_mode": r["pool_mode"] or ""}
        assert value(s, "pgbouncer_databases_pool_size", **labels) == r["pool_size"]
        assert value(s, "pgbouncer_databases_current_connections", **labels) == r["current_connections"]
    # SHOW LISTS' server counts are summed over the workers (its client counts include the consoles that
    # answer it); the count of configured databases is the pooler's (the console's merged LISTS adds it up
    # per worker)
    counts = {r["list"]: r["items"] for r in lists}
    for item in ("used_servers", "free_clients", "free_servers"):
        assert value(s, f"pgbouncer_{item}") == counts[item], item
    assert value(s, "pgbouncer_databases") == len(databases)
