"""The [pgbouncer] section: one attribute per PgBouncer 1.25 setting, named and defaulted as PgBouncer does.

Every default is written once, here, next to its parser and its flags (the schema PgBouncer keeps in
`bouncer_params[]`): `restart` marks PgBouncer's CF_NO_RELOAD keys, which a reload cannot change.

Every setting is in one of three states, and README.md's settings table is generated from this file
(`python3 -m pgmux.config.table`; a unit test compares the two):

- works: implemented and tested.
- warned (`**_NI`): accepted so a pgbouncer.ini loads, but ignored; the loader warns once, naming those
  set to something other than their default. Remove the mark as the feature lands.
- refused (`refuse=Gate(...)`): pgmux will not start (nor reload) with these values, because running
  without what they ask for would be unsafe: TLS, and authentication methods pgmux does not have yet.
  A config that asks for TLS must not run in plain text, one that asks for an auth method must not run
  with a weaker check. `Gate(values)` names the refused values of a choice; `Gate(None)` refuses any
  value other than the default.

`warn=Gate(...)` warns about values given explicitly that pgmux accepts but treats differently from
PgBouncer (server_tls_sslmode = prefer: pgmux connects in plain text, which prefer permits).
Times are float seconds. "Not set" is None.
"""

from __future__ import annotations

import grp
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


@dataclass(frozen=True)
class Gate:
    """Values of one setting that pgmux refuses (or warns about), and why.

    `values`: the values concerned (canonical spellings of a choice); None means any value other than
    the setting's default. `reason` completes "<key> = <value>: ..." in the error or warning."""

    values: tuple[str, ...] | None
    reason: str
    label: str = ""  # the README table's note: why, in a few words

    def hit(self, value: object, default: object) -> bool:
        return value != default if self.values is None else value in self.values


def _s(default: object, parse: v.Parser, *, restart: bool = False, unimplemented: bool = False,
       refuse: Gate | None = None, warn: Gate | None = None, note: str = "") -> Any:
    meta = {"parse": parse, "restart": restart, "unimplemented": unimplemented, "refuse": refuse,
            "warn": warn, "note": note}
    return field(default=default, metadata=meta)


def group_name(value: object) -> str | None:
    """unix_socket_group: a group that exists on this machine (PgBouncer fails at start-up otherwise)."""
    name = v.optional_text(value)
    if name is not None:
        try:
            grp.getgrnam(name)
        except KeyError:
            if not name.isdigit():
                raise ValueError(f"no such group: {name}") from None
    return name


_OPT = v.optional_text
_NI: dict[str, Any] = {"unimplemented": True}
_NO_TLS13 = Gate(None, "pgmux cannot choose TLS 1.3 cipher suites (Python's ssl module does not expose it); "
                 "remove the setting to use OpenSSL's", "TLS 1.3 suites cannot be chosen")
# Methods pgmux does not have: no start-up with a weaker check in their place.
_AUTH = "is not implemented in pgmux, and pgmux will not start with a weaker check in its place"
_AUTH_LABEL = "(not implemented)"


@dataclass(frozen=True)
class Settings:
    # -- where to listen; none of these change on reload
    listen_addr: tuple[str, ...] = _s((), v.name_list, restart=True)  # "*" = all; empty = no TCP
    listen_port: int = _s(6432, v.port, restart=True)
    listen_backlog: int = _s(128, v.integer(1), restart=True)
    unix_socket_dir: str = _s("/tmp", v.text, restart=True)  # "" disables the unix socket
    unix_socket_mode: int = _s(0o777, v.integer(0, 0o7777), restart=True)
    unix_socket_group: str | None = _s(None, group_name, restart=True)
    user: str | None = _s(None, _OPT, restart=True)
    pidfile: str | None = _s(None, _OPT, restart=True)
    logfile: str | None = _s(None, _OPT)
    conffile: str | None = _s(None, _OPT, **_NI, note="the file is the one given on the command line")
    # -- authentication
    auth_type: str = _s("md5", v.auth_type, refuse=Gate(("ldap", "pam"), "this auth_type " + _AUTH, _AUTH_LABEL))
    auth_file: str | None = _s(None, _OPT)
    auth_hba_file: str | None = _s(None, _OPT)
    auth_ident_file: str | None = _s(None, _OPT, refuse=Gate(None, "user name maps (auth_ident_file) are "
                                                             "not implemented in pgmux", _AUTH_LABEL))
    auth_query: str = _s(DEFAULT_AUTH_QUERY, v.text)
    auth_user: str | None = _s(None, _OPT)
    auth_dbname: str | None = _s(None, _OPT)
    auth_ldap_options: str | None = _s(None, _OPT, **_NI, note="used only with auth_type ldap, which is refused")
    auth_pam_confdir: str | None = _s(None, _OPT, **_NI, note="used only with auth_type pam, which is refused")
    scram_iterations: int = _s(4096, v.integer(1))
    admin_users: tuple[str, ...] = _s((), v.name_list)
    stats_users: tuple[str, ...] = _s((), v.name_list)
    # -- pooling
    pool_mode: str = _s("session", v.pool_mode)
    max_client_conn: int = _s(100, v.count)
    default_pool_size: int = _s(20, v.pool_size)  # or auto: pooling/autosize.py
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
    # A security setting (no multi-statement strings, against SQL injection): ignoring it would leave on what
    # the operator turned off, so it is refused until implemented.
    disable_pqexec: bool = _s(False, v.boolean, restart=True,
                              refuse=Gate(None, "disabling the simple query protocol is not implemented in pgmux "
                                          "yet, and pgmux will not start with it on where it was turned off",
                                          "until implemented (pgmux would leave the simple protocol on)"))
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
    suspend_timeout: float = _s(10.0, v.seconds,
                                note="SUSPEND drops a connection whose socket buffer is not written out by then")
    login_notify_message: str | None = _s(None, _OPT)
    # -- logging and stats
    log_connections: bool = _s(True, v.boolean)
    log_disconnections: bool = _s(True, v.boolean)
    log_pooler_errors: bool = _s(True, v.boolean)
    log_stats: bool = _s(True, v.boolean)
    stats_period: float = _s(60.0, v.seconds)
    verbose: int = _s(0, v.count)
    # pgmux only: "text" is PgBouncer's line format; "json" writes one JSON object per line, with the
    # connection's identity (kind, id, database, user, address) in fields of their own (runtime/logjson.py)
    log_format: str = _s("text", v.choice("text", "json"))
    # pgmux only: HOST:PORT of an HTTP listener serving /metrics (Prometheus text, or OpenMetrics when the
    # Accept header asks) and the status page at / (runtime/web.py). Off when empty. A reload moves it.
    metrics_listen: str | None = _s(None, v.listen_address)
    syslog: bool = _s(False, v.boolean, **_NI, note="logs go to stderr and logfile")
    syslog_ident: str = _s("pgbouncer", v.text, **_NI, note="no syslog")
    syslog_facility: str = _s("daemon", v.text, **_NI, note="no syslog")
    # -- low-level network
    # pkt_buf is PgBouncer's read buffer. pgmux's reads are the event loop's (uvloop: up to 256 KB at a time),
    # and fewer, larger reads are what keeps its system time per transaction near PgBouncer's; a read of at
    # most pkt_buf would need a BufferedProtocol copy per read and more syscalls. So it is ignored, warned.
    pkt_buf: int = _s(4096, v.integer(1), restart=True, **_NI,
                      note="ignored: pgmux reads up to 256 KB at a time (the event loop's buffer)")
    max_packet_size: int = _s(2147483647, v.integer(1, 2**32 - 1))
    sbuf_loopcnt: int = _s(5, v.count, **_NI, note="each read is relayed whole")
    # SO_REUSEPORT on the TCP listeners, as PgBouncer: other processes (another pgmux or PgBouncer) may bind
    # the same port. pgmux's own workers (`workers`) share one inherited socket and need no such option.
    so_reuseport: bool = _s(False, v.boolean, restart=True,
                            note="other processes may bind the port; a cancel reaches only this pgmux's workers")
    # pgmux only (issue 14): worker processes under one supervisor (runtime/supervisor.py), sharing the
    # listening sockets, the limits (runtime/workershare.py) and cancels. 1 = one process, as before; auto =
    # os.cpu_count(). Settings whose sharing is not implemented are refused with workers > 1 (supervisor.py).
    workers: int = _s(1, v.workers, restart=True, note="pgmux only; auto = the number of cores")
    tcp_defer_accept: bool = _s(sys.platform.startswith("linux"), v.boolean)
    tcp_socket_buffer: int = _s(0, v.integer(0, 2**31 - 1))
    tcp_keepalive: bool = _s(True, v.boolean)
    # Linux takes at most 127 probes and 32767 seconds; larger values stop start-up instead of failing
    # on every connection.
    tcp_keepcnt: int = _s(0, v.integer(0, 127))
    tcp_keepidle: int = _s(0, v.integer(0, 32767))  # seconds, as the socket option takes them
    tcp_keepintvl: int = _s(0, v.integer(0, 32767))
    tcp_user_timeout: int = _s(0, v.integer(0, 2**31 - 1))  # milliseconds, as the socket option takes them
    # -- DNS, peering, service names: PgBouncer machinery pgmux does not have
    dns_max_ttl: float = _s(15.0, v.seconds, **_NI, note="no DNS cache: names resolve at each new server connection")
    dns_nxdomain_ttl: float = _s(15.0, v.seconds, **_NI, note="no DNS cache")
    dns_zone_check_period: float = _s(0.0, v.seconds, **_NI, note="no DNS cache")
    resolv_conf: str | None = _s(None, _OPT, restart=True, **_NI, note="the system's resolver is used")
    peer_id: int = _s(0, v.integer(0, 16383), **_NI, note="no peering")
    job_name: str = _s("pgbouncer", v.text, restart=True, **_NI, note="Windows service name")
    service_name: str | None = _s(None, _OPT, restart=True, **_NI, note="Windows service name")
    # -- TLS (net/tls.py builds the contexts at start-up and on every reload; a value it cannot honour
    # stops start-up naming the setting). Python's ssl module cannot choose TLS 1.3 suites: refused.
    client_tls_sslmode: str = _s("disable", v.ssl_mode)
    client_tls_key_file: str | None = _s(None, _OPT)
    client_tls_cert_file: str | None = _s(None, _OPT)
    client_tls_ca_file: str | None = _s(None, _OPT)
    client_tls_protocols: str = _s("secure", v.text)
    client_tls_ciphers: str = _s("default", v.text)
    client_tls13_ciphers: str | None = _s(None, _OPT, refuse=_NO_TLS13)
    client_tls_dheparams: str = _s("auto", v.text, refuse=Gate(("legacy",), "1024-bit DH is weak, and pgmux "
                                                               "lets OpenSSL choose DH parameters (auto, none)",
                                                               "(1024-bit DH is weak)"))
    client_tls_ecdhcurve: str = _s("auto", v.text)
    server_tls_sslmode: str = _s("prefer", v.ssl_mode)
    server_tls_key_file: str | None = _s(None, _OPT)
    server_tls_cert_file: str | None = _s(None, _OPT)
    server_tls_ca_file: str | None = _s(None, _OPT)
    server_tls_protocols: str = _s("secure", v.text)
    server_tls_ciphers: str = _s("default", v.text)
    server_tls13_ciphers: str | None = _s(None, _OPT, refuse=_NO_TLS13)
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
    """What SHOW CONFIG, the reload planner, the loader and the README table know about one setting."""

    name: str
    default: object
    parse: v.Parser
    reloadable: bool
    implemented: bool
    refuse: Gate | None = None
    warn: Gate | None = None
    note: str = ""


SETTINGS_INFO: Mapping[str, SettingInfo] = MappingProxyType({
    f.name: SettingInfo(f.name, f.default, f.metadata["parse"], not f.metadata["restart"],
                        not f.metadata["unimplemented"], f.metadata["refuse"], f.metadata["warn"],
                        f.metadata["note"])
    for f in fields(Settings)
})

# PgBouncer's CF_NO_RELOAD keys: a reload keeps their old values (SHOW CONFIG's "changeable = no").
RESTART_ONLY: frozenset[str] = frozenset(name for name, info in SETTINGS_INFO.items() if not info.reloadable)
