"""One frozen dataclass per SHOW result of PgBouncer 1.25's admin console.

The field names and their order ARE the compatibility contract: pgbouncer_exporter, pgbouncer_fdw and
dashboards read these columns by name (and some by position). Each class mirrors the RowDescription
PgBouncer writes in src/admin.c and src/stats.c; a column pgmux cannot fill yet still exists and the
runtime passes 0, "" or None for it.

Column types follow PgBouncer, not taste: most counters go out as int4, the SHOW STATS family as
numeric (so values past 2^63 do not break clients), DNS ttl/serial as int8, timestamps as text. The
type of each field says which, through the aliases below; `render.render_rows` reads them once per
class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from pgmux.protocol.messages import OID_INT4, OID_INT8, OID_NUMERIC, OID_TEXT


@dataclass(frozen=True, slots=True)
class ColumnType:
    """How one column is described and encoded on the wire."""

    name: str
    oid: int


INT4 = ColumnType("int4", OID_INT4)
INT8 = ColumnType("int8", OID_INT8)
NUMERIC = ColumnType("numeric", OID_NUMERIC)
TEXT = ColumnType("text", OID_TEXT)
# Unix time in seconds, sent as text the way PgBouncer prints it: "2025-11-09 12:00:00 UTC" (local zone).
TIMESTAMP = ColumnType("timestamp", OID_TEXT)
# SHOW USERS quirk: an optional override sent as text, right-aligned in 9 characters, "" when unset.
PADDED_INT = ColumnType("padded_int", OID_TEXT)

Int4 = Annotated[int, INT4]
Int8 = Annotated[int, INT8]
Numeric = Annotated[int, NUMERIC]
Timestamp = Annotated[float, TIMESTAMP]
PaddedInt = Annotated[int | None, PADDED_INT]


@dataclass(frozen=True, slots=True)
class PoolRow:
    """SHOW POOLS: one row per (database, user) pool."""

    database: str
    user: str
    cl_active: Int4
    cl_waiting: Int4
    cl_active_cancel_req: Int4
    cl_waiting_cancel_req: Int4
    sv_active: Int4
    sv_active_cancel: Int4
    sv_being_canceled: Int4
    sv_idle: Int4
    sv_used: Int4
    sv_tested: Int4
    sv_login: Int4
    maxwait: Int4  # seconds the oldest waiting client has waited
    maxwait_us: Int4  # and the microseconds part
    pool_mode: str
    load_balance_hosts: str | None  # None unless the host is a comma-separated list
    # pgmux's own, last: the host of a read/write-split database's per-host pool ("addr:port"), and its
    # current role (primary, replica or auto); for an unsplit pool the host list as configured, role None.
    host: str | None = None
    role: str | None = None
    pool_size: Int4 | None = None  # the pool_size in force: with pool_size = auto, the one chosen now


@dataclass(frozen=True, slots=True)
class _ConnectionRow:
    """The columns SHOW CLIENTS, SHOW SERVERS and SHOW SOCKETS share, in PgBouncer's order."""

    type: str  # "C" or "S"
    user: str
    database: str
    replication: str  # "none", "logical" or "physical"
    state: str
    addr: str
    port: Int4
    local_addr: str
    local_port: Int4
    connect_time: Timestamp
    request_time: Timestamp
    wait: Int4
    wait_us: Int4
    close_needed: Int4
    ptr: str  # an address-like unique token, e.g. "0x7f3a..."
    link: str  # ptr of the linked peer, "" when none
    remote_pid: Int4  # clients: pgmux's own BackendKeyData pid; servers: the backend's
    tls: str  # "" without TLS
    application_name: str
    prepared_statements: Int4
    id: Int4  # the id KILL_CLIENT takes


@dataclass(frozen=True, slots=True)
class ClientRow(_ConnectionRow):
    """SHOW CLIENTS. PgBouncer shows state 'idle' for an 'active' client with no server linked."""

    pin: str  # pgmux's own, last: why the client keeps its server in transaction mode ("" if it does not)


@dataclass(frozen=True, slots=True)
class ServerRow(_ConnectionRow):
    """SHOW SERVERS: the same columns as SHOW CLIENTS (without pgmux's `pin`), seen from the server side.
    state: active, idle, used, tested, new, active_cancel, being_canceled."""

    role: str | None = None  # pgmux's own, last: the role of the server's host (split databases), else None


@dataclass(frozen=True, slots=True)
class SocketRow(_ConnectionRow):
    """SHOW SOCKETS / SHOW ACTIVE_SOCKETS: the client/server columns plus buffer positions."""

    recv_pos: Int4
    pkt_pos: Int4
    pkt_remain: Int4
    send_pos: Int4
    send_remain: Int4
    pkt_avail: Int4
    send_avail: Int4


@dataclass(frozen=True, slots=True)
class DatabaseRow:
    """SHOW DATABASES: effective values (global defaults filled in), not the raw overrides."""

    name: str
    host: str | None
    port: Int4
    database: str
    force_user: str | None
    pool_size: Int4
    min_pool_size: Int4
    reserve_pool_size: Int4
    server_lifetime: Int4  # seconds
    pool_mode: str | None  # None when the database inherits the global pool_mode
    load_balance_hosts: str | None
    max_connections: Int4
    current_connections: Int4
    max_client_connections: Int4
    current_client_connections: Int4
    paused: Int4  # 1/0
    disabled: Int4  # 1/0


@dataclass(frozen=True, slots=True)
class UserRow:
    """SHOW USERS. pool_size and reserve_pool_size are the user's overrides, None when unset."""

    name: str
    pool_size: PaddedInt
    reserve_pool_size: PaddedInt
    pool_mode: str | None
    max_user_connections: Int4
    current_connections: Int4
    max_user_client_connections: Int4
    current_client_connections: Int4


@dataclass(frozen=True, slots=True)
class StatsRow:
    """SHOW STATS, per database. Totals since start; averages per second over the last stats_period."""

    database: str
    total_server_assignment_count: Numeric
    total_xact_count: Numeric
    total_query_count: Numeric
    total_received: Numeric
    total_sent: Numeric
    total_xact_time: Numeric  # microseconds
    total_query_time: Numeric
    total_wait_time: Numeric
    total_client_parse_count: Numeric
    total_server_parse_count: Numeric
    total_bind_count: Numeric
    total_client_login_count: Numeric  # PgBouncer 1.25: clients that logged in
    avg_server_assignment_count: Numeric
    avg_xact_count: Numeric
    avg_query_count: Numeric
    avg_recv: Numeric
    avg_sent: Numeric
    avg_xact_time: Numeric
    avg_query_time: Numeric
    avg_wait_time: Numeric
    avg_client_parse_count: Numeric
    avg_server_parse_count: Numeric
    avg_bind_count: Numeric
    avg_client_login_count: Numeric  # logins per second
    # pgmux's own, after every PgBouncer 1.25 column (exporters read PgBouncer's by position or name):
    # clients that became pinned to their server connection (LISTEN, temp tables, advisory locks...).
    total_pinned_count: Numeric
    avg_pinned_count: Numeric


@dataclass(frozen=True, slots=True)
class StatsTotalsRow:
    """SHOW STATS_TOTALS. Build it with `derive.stats_totals_row(stats_row)`."""

    database: str
    server_assignment_count: Numeric
    xact_count: Numeric
    query_count: Numeric
    bytes_received: Numeric
    bytes_sent: Numeric
    xact_time: Numeric
    query_time: Numeric
    wait_time: Numeric
    client_parse_count: Numeric
    server_parse_count: Numeric
    bind_count: Numeric
    client_login_count: Numeric
    pinned_count: Numeric  # pgmux's own, last


@dataclass(frozen=True, slots=True)
class StatsAveragesRow:
    """SHOW STATS_AVERAGES. PgBouncer keeps the avg_ prefix on the last three columns only."""

    database: str
    server_assignment_count: Numeric
    xact_count: Numeric
    query_count: Numeric
    bytes_received: Numeric
    bytes_sent: Numeric
    xact_time: Numeric
    query_time: Numeric
    wait_time: Numeric
    avg_client_parse_count: Numeric
    avg_server_parse_count: Numeric
    avg_bind_count: Numeric
    avg_client_login_count: Numeric
    avg_pinned_count: Numeric  # pgmux's own, last


@dataclass(frozen=True, slots=True)
class TotalsRow:
    """SHOW TOTALS: SHOW STATS summed over all databases, one (name, value) row per figure."""

    name: str
    value: Numeric


@dataclass(frozen=True, slots=True)
class ListsRow:
    """SHOW LISTS: one (list, items) row per internal list; see derive.LISTS for the order."""

    list: str
    items: Int4


@dataclass(frozen=True, slots=True)
class ConfigRow:
    """SHOW CONFIG: all text; an unset string setting is NULL; changeable is 'yes' or 'no'."""

    key: str
    value: str | None
    default: str | None
    changeable: str


@dataclass(frozen=True, slots=True)
class MemRow:
    """SHOW MEM: PgBouncer's slab caches; pgmux reports its own object pools here (synthetic)."""

    name: str
    size: Int4
    used: Int4
    free: Int4
    memtotal: Int4


@dataclass(frozen=True, slots=True)
class DnsHostRow:
    """SHOW DNS_HOSTS."""

    hostname: str
    ttl: Int8  # seconds until the next lookup, never negative
    addrs: str  # comma-separated


@dataclass(frozen=True, slots=True)
class DnsZoneRow:
    """SHOW DNS_ZONES."""

    zonename: str
    serial: Int8
    count: Int4


@dataclass(frozen=True, slots=True)
class VersionRow:
    """SHOW VERSION: one row. Monitoring parses it as 'PgBouncer X.Y.Z'."""

    version: str


@dataclass(frozen=True, slots=True)
class StateRow:
    """SHOW STATE: rows active/paused/suspended with value 'yes' or 'no'."""

    key: str
    value: str


@dataclass(frozen=True, slots=True)
class PeerRow:
    """SHOW PEERS."""

    peer_id: Int4
    host: str | None
    port: Int4
    pool_size: Int4


@dataclass(frozen=True, slots=True)
class PeerPoolRow:
    """SHOW PEER_POOLS (the doc says 'database'; the code, which clients see, says peer_id)."""

    peer_id: Int4
    cl_active_cancel_req: Int4
    cl_waiting_cancel_req: Int4
    sv_active_cancel: Int4
    sv_login: Int4


@dataclass(frozen=True, slots=True)
class HostRow:
    """SHOW HOSTS (pgmux's own): one row per host of each read/write-split database in use.
    state: up, down, lagging or banned; lag unknown (or a primary's) is NULL; banned_until NULL when not
    banned; reads/writes: transactions routed there as reads / as writes since start."""

    database: str
    host: str
    port: Int4
    role: str
    configured_role: str
    state: str
    weight: str
    lag_bytes: Int8 | None
    lag_seconds: str | None
    replay_lsn: str | None  # last polled replay position (replica) or WAL position (primary)
    banned_until: Timestamp | None
    reads: Int8
    writes: Int8
    reason: str  # the last transition: why it is in this state


@dataclass(frozen=True, slots=True)
class AdviceRow:
    """SHOW ADVICE (pgmux's own): per pool, what the pool advisor (pooling/advisor.py) measured over the
    last seconds and the size it needs; then one row per PostgreSQL server (database '*', user the
    server) with the max_connections budget of the pools that use it."""

    database: str
    user: str
    pool_size: Int4  # in force (auto: chosen now); budget rows: pool_size + reserve summed
    auto: str  # yes: pool_size = auto chose it
    tps: str
    hold_ms: str  # mean server hold time per transaction
    busy: str  # servers in use on average: tps x hold (Little)
    waiting: str  # clients waiting on average
    clients: str
    needed: Int4
    verdict: str  # idle, ok, too small, saturated, oversized; budget fits/overcommitted/over/unknown
    elasticity: str | None  # d ln hold / d ln concurrency (1: PostgreSQL saturated, 0: flat)
    detail: str


# SHOW <subject> -> the row class of its result. HELP and FDS have no row class (see commands.py).
SHOW_ROW_TYPES: dict[str, type] = {
    "active_sockets": SocketRow,
    "advice": AdviceRow,
    "clients": ClientRow,
    "config": ConfigRow,
    "databases": DatabaseRow,
    "dns_hosts": DnsHostRow,
    "dns_zones": DnsZoneRow,
    "hosts": HostRow,
    "lists": ListsRow,
    "mem": MemRow,
    "peer_pools": PeerPoolRow,
    "peers": PeerRow,
    "pools": PoolRow,
    "servers": ServerRow,
    "sockets": SocketRow,
    "state": StateRow,
    "stats": StatsRow,
    "stats_averages": StatsAveragesRow,
    "stats_totals": StatsTotalsRow,
    "totals": TotalsRow,
    "users": UserRow,
    "version": VersionRow,
}
