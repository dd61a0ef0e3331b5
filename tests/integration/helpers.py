"""Small helpers the integration tests share: bounded waits, reads of the admin console, and the
frames raw-protocol tests send."""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg

from pgmux.protocol import messages as m


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    """Poll until predicate() is truthy and return it; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def backend_pid(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    return int(row[0])


def pool_row(proc: Any, db: str = "testdb") -> dict[str, Any]:
    rows = [r for r in proc.admin_dicts("SHOW POOLS") if r["database"] == db]
    assert len(rows) == 1, rows
    return dict(rows[0])


def servers(proc: Any, db: str = "testdb") -> list[dict[str, Any]]:
    return [r for r in proc.admin_dicts("SHOW SERVERS") if r["database"] == db]


@contextmanager
def guard(proc: Any) -> Iterator[None]:
    """Put last in a `with` that holds connections: on failure it stops the pooler first, so no
    connection's teardown (or a worker thread) can block on a query the pooler still holds."""
    try:
        yield
    except BaseException:
        proc.stop()
        raise


# -- frontend messages for raw-protocol tests -------------------------------------------------------

def parse(sql: str, name: str = "", param_types: Sequence[int] = ()) -> bytes:
    body = m.cstr(name) + m.cstr(sql) + struct.pack("!h", len(param_types))
    return m.message(m.PARSE, body + b"".join(struct.pack("!i", oid) for oid in param_types))


def execute(portal: str = "", max_rows: int = 0) -> bytes:
    return m.message(m.EXECUTE, m.cstr(portal) + struct.pack("!i", max_rows))


def sync() -> bytes:
    return m.message(m.SYNC)


def flush() -> bytes:
    return m.message(m.FLUSH)


def copy_data(data: bytes) -> bytes:
    return m.message(m.COPY_DATA, data)


def copy_done() -> bytes:
    return m.message(m.COPY_DONE)
