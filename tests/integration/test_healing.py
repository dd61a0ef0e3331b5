"""A PostgreSQL restart under pgmux: the queue waits, is told why, and is served as soon as the server
takes logins again, not server_login_retry (15 s) later. A private cluster: the session's `pg` is shared."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
from helpers import wait_for

from pgmux.testing.cluster import PgCluster


@pytest.fixture(scope="module")
def own() -> Iterator[PgCluster]:
    with PgCluster(replicas=0) as cluster:
        yield cluster


def _start(pgmux_factory: Any, node: Any, **settings: Any) -> Any:
    return pgmux_factory(databases={"db": f"host={node.host} port={node.port} dbname=postgres"},
                         settings={"pool_mode": "transaction", **settings})


def test_waiting_client_is_served_soon_after_the_server_is_back(own: PgCluster, pgmux_factory: Any) -> None:
    node = own.primary
    proc = _start(pgmux_factory, node, query_wait_notify=1, query_wait_timeout=60)  # server_login_retry: 15
    with psycopg.connect(proc.dsn("db"), autocommit=True) as conn, ThreadPoolExecutor(1) as pool:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        notices: list[str] = []
        conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        node.stop("fast")
        try:
            down = time.monotonic()
            job = pool.submit(lambda: conn.execute("SELECT 42").fetchone())
            wait_for(lambda: notices, "a NOTICE to the waiting client", timeout=20)
            assert "No server connection available" in notices[0]
            assert "cannot log in to the server" in notices[0] and "keeps trying" in notices[0], notices
            time.sleep(4)  # the retries back off to their cap meanwhile
            assert not job.done(), "the waiting query failed while the server was down"
        finally:
            node.start()
        ready = time.monotonic()
        assert job.result(timeout=30) == (42,)
        took = time.monotonic() - ready
    attempts = len(re.findall(r"WARNING .* server login failed", proc.log()))
    print(f"served {took:.2f}s after PostgreSQL was ready; {attempts} attempts in {ready - down:.1f}s down")
    assert took < 5, f"served {took:.1f}s after the server was back (server_login_retry is 15s)"
    # Never hammered: about one attempt every 2 s once backed off (0.5, 1, 2, 2... s apart).
    assert 2 <= attempts <= (ready - down) / 1.5 + 3, attempts


def test_queue_fails_after_query_wait_timeout_with_the_reason(own: PgCluster, pgmux_factory: Any) -> None:
    node = own.primary
    proc = _start(pgmux_factory, node, query_wait_timeout=3)
    with psycopg.connect(proc.dsn("db"), autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        node.stop("fast")
        try:
            started = time.monotonic()
            with pytest.raises(psycopg.OperationalError) as info:
                conn.execute("SELECT 1")
            waited = time.monotonic() - started
        finally:
            node.start()
    err = info.value
    assert err.diag.sqlstate == "08P01" and err.diag.message_primary == "query_wait_timeout", err
    assert "no server login succeeded" in (err.diag.message_detail or ""), err.diag.message_detail
    assert f"{node.host}:{node.port}" in (err.diag.message_detail or "")
    assert 2.5 < waited < 15, waited  # not at the first failed attempt: after query_wait_timeout
    with psycopg.connect(proc.dsn("db"), autocommit=True) as conn:  # and the pool works again
        wait_for(lambda: conn.execute("SELECT 7").fetchone() == (7,), "the pool to heal", timeout=15)
