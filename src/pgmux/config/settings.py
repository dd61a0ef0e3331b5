"""The [pgbouncer] section: one attribute per PgBouncer 1.25 setting, named and defaulted as PgBouncer does.

Every default is written once, here, next to its parser and two flags (the schema PgBouncer keeps in
`bouncer_params[]`): `restart` marks PgBouncer's CF_NO_RELOAD keys, which a reload cannot change, and
`unimplemented` marks keys pgmux accepts so a pgbouncer.ini loads, but ignores (the loader warns once,
naming those that are set to something other than their default). Remove the flag as a feature lands.
Times are float seconds. "Not set" is None.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

from pgmux.config import values as v

DEFAULT_AUTH_QUERY = (
    "SELECT rolname, CASE WHEN rolvaliduntil < now() THEN NULL ELSE rolpassword END "
    "FROM pg_authid WHERE rolname=$1 AND rolcanlogin"
)


def _s(default: object, parse: v.Parser, *, restart: bool = False, unimplemented: bool = False) -> Any:
    meta = {"parse": parse, "restart": restart, "unimplemented": unimplemented}
    return field(default=default, metadata=meta)


_OPT = v.optional_text
_NI = {"unimplemented": True}


@dataclass(frozen=True)
class Settings:
    # -- where to listen; none of these change on reload
    listen_addr: tuple[str, ...] = _s((), v.name_list, restart=True)  # "*" = all; empty = no TCP
    listen_port: int = _s(6432, v.port, restart=True)
    listen_backlog: int = _s(128, v.integer(1), restart=True)
    unix_socket_dir: str = _s("/tmp", v.text, restart=True)  # "" disables the unix socket
    unix_socket_mode: int = _s(0o777, v.integer(0, 0o7777), restart=True)
    unix_socket_group: str | None = _s(None, _OPT, restart=True)
    user: str | None = _s(None, _OPT, restart=True)
    pidfile: str | None = _s(None, _OPT, restart=True)
    logfile: str | None = _s(None, _OPT)
    conffile: str | None = _s(None, _OPT, **_NI)
    # -- authentication
    auth_type: str = _s("md5", v.auth_type)
    auth_file: str | None = _s(None, _OPT)
    auth_hba_file: str | None = _s(None, _OPT)
    auth_ident_file: str | None = _s(None, _OPT, **_NI)
    auth_query: str = _s(DEFAULT_AUTH_QUERY, v.text)
    auth_user: str | None = _s(None, _OPT)
    auth_dbname: str | None = _s(None, _OPT)
    auth_ldap_options: str | None = _s(None, _OPT, **_NI)
    auth_pam_confdir: str | None = _s(None, _OPT, **_NI)
    scram_iterations: int = _s(4096, v.integer(1))
    admin_users: tuple[str, ...] = _s((), v.name_list)
    stats_users: tuple[str, ...] = _s((), v.name_list)
    # -- pooling
    pool_mode: str = _s("session", v.pool_mode)
    max_client_conn: int = _s(100, v.count)
    default_pool_size: int = _s(20, v.count)
    min_pool_size: int = _s(0, v.count)
    reserve_pool_size: int = _s(0, v.count)
    reserve_pool_timeout: float = _s(5.0, v.seconds)
    max_db_connections: int = _s(0, v.count)
    max_db_client_connections: int = _s(0, v.count)
    max_user_connections: int = _s(0, v.count)
    max_user_client_connections: int = _s(0, v.count)
    server_round_robin: bool = _s(False, v.boolean)
    max_prepared_statements: int = _s(200, v.count)
    track_extra_parameters: tuple[str, ...] = _s(("IntervalStyle",), v.name_list, restart=True)
    ignore_startup_parameters: tuple[str, ...] = _s((), v.name_list)
    application_name_add_host: bool = _s(False, v.boolean)
    disable_pqexec: bool = _s(False, v.boolean, restart=True, **_NI)
    # -- server connection sanity and lifetimes
    server_reset_query: str = _s("DISCARD ALL", v.text)
    server_reset_query_always: bool = _s(False, v.boolean)
    # "" disables the check; "<empty>" (PgBouncer's current default, shown as such by SHOW CONFIG) sends
    # an empty query. Older samples say "select 1".
    server_check_query: str = _s("<empty>", v.text)
    server_check_delay: float = _s(30.0, v.seconds)
    server_fast_close: bool = _s(False, v.boolean)
    server_lifetime: float = _s(3600.0, v.seconds)
    server_idle_timeout: float = _s(600.0, v.seconds)
    server_connect_timeout: float = _s(15.0, v.seconds)
    server_login_retry: float = _s(15.0, v.seconds)
    client_login_timeout: float = _s(60.0, v.seconds)
    autodb_idle_timeout: float = _s(3600.0, v.seconds)
    pool_idle_timeout: float = _s(0.0, v.seconds)
    # -- dangerous timeouts (0 disables)
    query_timeout: float = _s(0.0, v.seconds)
    query_wait_timeout: float = _s(120.0, v.seconds)
    query_wait_notify: float = _s(5.0, v.seconds)
    cancel_wait_timeout: float = _s(10.0, v.seconds)
    client_idle_timeout: float = _s(0.0, v.seconds)
    idle_transaction_timeout: float = _s(0.0, v.seconds)
    transaction_timeout: float = _s(0.0, v.seconds)
    suspend_timeout: float = _s(10.0, v.seconds, **_NI)
    login_notify_message: str | None = _s(None, _OPT)
    # -- logging and stats
    log_connections: bool = _s(True, v.boolean)
    log_disconnections: bool = _s(True, v.boolean)
    log_pooler_errors: bool = _s(True, v.boolean)
    log_stats: bool = _s(True, v.boolean)
    stats_period: float = _s(60.0, v.seconds)
    verbose: int = _s(0, v.count)
    syslog: bool = _s(False, v.boolean, **_NI)
    syslog_ident: str = _s("pgbouncer", v.text, **_NI)
    syslog_facility: str = _s("daemon", v.text, **_NI)
    # -- low-level network
    pkt_buf: int = _s(4096, v.integer(1), restart=True)
    max_packet_size: int = _s(2147483647, v.integer(1, 2**32 - 1))
    sbuf_loopcnt: int = _s(5, v.count, **_NI)
    so_reuseport: bool = _s(False, v.boolean, restart=True, **_NI)
    tcp_defer_accept: bool = _s(sys.platform.startswith("linux"), v.boolean, **_NI)
    tcp_socket_buffer: int = _s(0, v.count, **_NI)
    tcp_keepalive: bool = _s(True, v.boolean)
    tcp_keepcnt: int = _s(0, v.count)
    tcp_keepidle: int = _s(0, v.count)  # seconds, as the socket option takes them
    tcp_keepintvl: int = _s(0, v.count)
    tcp_user_timeout: int = _s(0, v.count)  # milliseconds, as the socket option takes them
    # -- DNS, peering, service names: PgBouncer machinery pgmux does not have
    dns_max_ttl: float = _s(15.0, v.seconds, **_NI)
    dns_nxdomain_ttl: float = _s(15.0, v.seconds, **_NI)
    dns_zone_check_period: float = _s(0.0, v.seconds, **_NI)
    resolv_conf: str | None = _s(None, _OPT, restart=True, **_NI)
    peer_id: int = _s(0, v.integer(0, 16383), **_NI)
    job_name: str = _s("pgbouncer", v.text, restart=True, **_NI)
    service_name: str | None = _s(None, _OPT, restart=True, **_NI)
    # -- TLS
    client_tls_sslmode: str = _s("disable", v.ssl_mode)
    client_tls_key_file: str | None = _s(None, _OPT)
    client_tls_cert_file: str | None = _s(None, _OPT)
    client_tls_ca_file: str | None = _s(None, _OPT)
    client_tls_protocols: str = _s("secure", v.text)
    client_tls_ciphers: str = _s("default", v.text)
    client_tls13_ciphers: str | None = _s(None, _OPT)
    client_tls_dheparams: str = _s("auto", v.text)
    client_tls_ecdhcurve: str = _s("auto", v.text)
    server_tls_sslmode: str = _s("prefer", v.ssl_mode)
    server_tls_key_file: str | None = _s(None, _OPT)
    server_tls_cert_file: str | None = _s(None, _OPT)
    server_tls_ca_file: str | None = _s(None, _OPT)
    server_tls_protocols: str = _s("secure", v.text)
    server_tls_ciphers: str = _s("default", v.text)
    server_tls13_ciphers: str | None = _s(None, _OPT)
    # -- pgmux only: health checks and failover for host lists (issue 4). PgBouncer has none of these.
    # Every period each host gets one small query on a connection of its own (0 disables the checks).
    health_check_period: float = _s(1.0, v.seconds)
    health_check_timeout: float = _s(2.0, v.seconds)  # a check slower than this counts as failed
    # How long a replica that failed a check (or a connect) stays out of rotation, even if it answers
    # again sooner. PgDog's ban_timeout is 5 minutes for the same reason: a replica that flaps costs more
    # than one that is missing, since reads go to the others (or the primary). The primary is never
    # banned: a failed check already takes it out until a check succeeds, and a ban would only stretch
    # a write outage past the blip. UNBAN on the admin console lifts a ban early.
    ban_time: float = _s(300.0, v.seconds)
    # How long a write waits for a usable primary (during a failover) before it fails with 57P03.
    failover_wait_timeout: float = _s(10.0, v.seconds)


@dataclass(frozen=True)
class SettingInfo:
    """What SHOW CONFIG and the reload planner need to know about one setting."""

    name: str
    default: object
    parse: v.Parser
    reloadable: bool
    implemented: bool


SETTINGS_INFO: Mapping[str, SettingInfo] = MappingProxyType({
    f.name: SettingInfo(f.name, f.default, f.metadata["parse"], not f.metadata["restart"],
                        not f.metadata["unimplemented"])
    for f in fields(Settings)
})

# PgBouncer's CF_NO_RELOAD keys: a reload keeps their old values (SHOW CONFIG's "changeable = no").
RESTART_ONLY: frozenset[str] = frozenset(name for name, info in SETTINGS_INFO.items() if not info.reloadable)
