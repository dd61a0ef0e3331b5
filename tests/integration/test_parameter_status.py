"""The login's ParameterStatus set through pgmux is the one PostgreSQL sends on a direct connection, for
any startup parameters (issue 10, item 1): raw startup packets, psycopg and asyncpg, directly and through
pgmux in transaction mode (the parameters applied on a shared server first, so the values are PostgreSQL's
own spelling), and a value PostgreSQL refuses ends both logins alike."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import psycopg
import pytest
from conformance import Msg, RawClient

from conftest import PgmuxProc, PgmuxStarter
from pgmux.protocol import messages as m
from pgmux.testing.cluster import PgCluster

STARTUPS: list[dict[str, str]] = [
    {"client_encoding": "latin1"},
    {"client_encoding": "euc-jp"},
    {"client_encoding": "'utf-8'"},
    {"client_encoding": "utf-8", "DateStyle": "sql"},
    {"DateStyle": "german"},
    {"datestyle": "iso, dmy"},
    {"TimeZone": "europe/paris"},
    {"timezone": "utc"},
    {"IntervalStyle": "ISO_8601"},
    {"application_name": "café ☕ x"},
    {"application_name": "plain-app"},
    {"standard_conforming_strings": "off"},
    {"default_transaction_read_only": "yes"},
    {"extra_float_digits": "2", "TimeZone": "+3"},
    {"options": "-c DateStyle=Postgres,YMD -c TimeZone=Asia/Tokyo -c intervalstyle=sql_standard"},
]
REFUSED: list[dict[str, str]] = [
    {"DateStyle": "bogus"},
    {"client_encoding": "nope"},
    {"TimeZone": "Mars/Olympus_Mons"},
]


def start(pgmux_factory: PgmuxStarter, mode: str = "transaction") -> PgmuxProc:
    return pgmux_factory(settings={"pool_mode": mode, "default_pool_size": 2})


async def login(host: str, port: int, params: dict[str, str]) -> list[Msg]:
    client, msgs = None, []
    reader, writer = await asyncio.open_connection(host, port)
    client = RawClient(reader, writer)
    writer.write(m.startup_message({"user": "postgres", "database": "testdb", **params}))
    try:
        async with asyncio.timeout(20):
            while True:
                msg = await client.read_msg()
                msgs.append(msg)
                if msg[0] in (m.READY_FOR_QUERY, m.ERROR_RESPONSE):
                    break
    finally:
        await client.close()
    return msgs


def status_set(msgs: list[Msg]) -> dict[str, str]:
    out = {}
    for t, body in msgs:
        if t == m.PARAMETER_STATUS:
            k, v = body[:-1].split(b"\x00")
            out[k.decode()] = v.decode()
    return out


def outline(msgs: list[Msg]) -> list[Any]:
    """The login as types, ParameterStatus sorted, an error as (severity, SQLSTATE, message)."""
    out: list[Any] = []
    for t, body in msgs:
        if t == m.ERROR_RESPONSE:
            f = m.parse_error_fields(body)
            out.append(("E", f.get("S"), f.get("C"), f.get("M")))
        elif t != m.PARAMETER_STATUS:
            out.append(t)
    return [sorted(status_set(msgs).items())] + out


async def logins(host: str, port: int, startups: list[dict[str, str]]) -> list[list[Any]]:
    return [outline(msgs) for msgs in await asyncio.gather(*(login(host, port, p) for p in startups))]


@pytest.mark.parametrize("mode", ["transaction", "session", "statement"])
def test_raw_logins_see_postgresqls_parameter_status(pg: PgCluster, pgmux_factory: PgmuxStarter, mode: str) -> None:
    p = pg.primary
    direct = asyncio.run(logins(p.host, p.port, STARTUPS))
    for row, params in zip(direct, STARTUPS, strict=True):  # the cases do differ from the server's defaults
        assert row[-1] == m.READY_FOR_QUERY, (params, row)
    assert dict(direct[0][0])["client_encoding"] == "LATIN1" and dict(direct[1][0])["client_encoding"] == "EUC_JP"
    mux = start(pgmux_factory, mode)
    # All at once on a pool of 2 (the probes queue for its servers), then again (spellings known by then),
    # then one by one.
    first = asyncio.run(logins(mux.host, mux.port, STARTUPS))
    again = asyncio.run(logins(mux.host, mux.port, STARTUPS))
    serial = [asyncio.run(logins(mux.host, mux.port, [s]))[0] for s in STARTUPS]
    for params, want, a, b, c in zip(STARTUPS, direct, first, again, serial, strict=True):
        assert a == want, params
        assert b == want, params
        assert c == want, params


def test_a_refused_startup_parameter_ends_the_login_as_in_postgresql(pg: PgCluster,
                                                                     pgmux_factory: PgmuxStarter) -> None:
    p = pg.primary
    direct = asyncio.run(logins(p.host, p.port, REFUSED))
    assert all(row[-1][0] == "E" and row[-1][1] == "FATAL" for row in direct), direct
    mux = start(pgmux_factory)
    pooled = asyncio.run(logins(mux.host, mux.port, REFUSED))
    assert pooled == direct
    # ... and the pool's servers are fine afterwards.
    assert asyncio.run(logins(mux.host, mux.port, STARTUPS[:3])) == asyncio.run(logins(p.host, p.port, STARTUPS[:3]))


PSYCOPG_CASES: list[dict[str, str]] = [
    {"client_encoding": "latin1"},
    {"options": "-c DateStyle=SQL,DMY -c TimeZone=america/new_york"},
    {"application_name": "naïve", "options": "-c IntervalStyle=postgres_verbose"},
]
NAMES = ("client_encoding", "DateStyle", "TimeZone", "IntervalStyle", "application_name", "server_encoding",
         "standard_conforming_strings", "integer_datetimes", "is_superuser", "session_authorization",
         "default_transaction_read_only", "in_hot_standby", "server_version")


def psycopg_status(dsn: str, kwargs: dict[str, str]) -> dict[str, str | None]:
    with psycopg.connect(dsn, connect_timeout=15, **kwargs) as conn:
        out = {n: conn.info.parameter_status(n) for n in NAMES}
        out["select"] = str(conn.execute("SELECT now()::date::text, '1 day 2 hours'::interval::text").fetchone())
        return out


def test_psycopg_sees_the_same_parameter_status(pg: PgCluster, pgmux_factory: PgmuxStarter) -> None:
    p = pg.primary
    mux = start(pgmux_factory)
    for kwargs in PSYCOPG_CASES:
        direct = psycopg_status(f"postgresql://postgres@{p.host}:{p.port}/testdb", kwargs)
        assert direct["client_encoding"] != "UTF8" or direct["DateStyle"] != "ISO, MDY" or \
            direct["IntervalStyle"] != "postgres"
        for _ in range(2):
            assert psycopg_status(mux.dsn(), kwargs) == direct, kwargs


async def asyncpg_status(dsn: str, settings: dict[str, str]) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn, server_settings=settings, timeout=15)
    try:
        s = conn.get_settings()
        out: dict[str, Any] = {n: getattr(s, n, None) for n in NAMES}
        out["select"] = await conn.fetchval("SELECT '1 day 2 hours'::interval::text || now()::date::text")
        return out
    finally:
        await conn.close()


@pytest.mark.parametrize("settings", [{}, {"DateStyle": "postgres", "TimeZone": "asia/tokyo"},
                                      {"IntervalStyle": "iso_8601", "application_name": "ünï"}])
def test_asyncpg_sees_the_same_parameter_status(pg: PgCluster, pgmux_factory: PgmuxStarter,
                                                settings: dict[str, str]) -> None:
    p = pg.primary
    mux = start(pgmux_factory)
    direct = asyncio.run(asyncpg_status(f"postgresql://postgres@{p.host}:{p.port}/testdb", settings))
    assert direct["client_encoding"] == "UTF8"  # asyncpg asks for 'utf-8'
    for _ in range(2):
        assert asyncio.run(asyncpg_status(mux.dsn(), settings)) == direct
