"""README.md's settings table is the one the code generates, and every state in it is the loader's own."""

from __future__ import annotations

import grp
import os
import re
from pathlib import Path

import pytest

from pgmux.config import load_config, table
from pgmux.config.build import DB_KEYS, DB_KEYS_IGNORED, USER_KEYS
from pgmux.config.settings import SETTINGS_INFO
from pgmux.errors import ConfigError

README = Path(__file__).parents[2] / "README.md"

# Every [pgbouncer] setting PgBouncer 1.25 documents (doc/config.md), written out independently of settings.py.
PGBOUNCER_SETTINGS = """
logfile pidfile listen_addr listen_port unix_socket_dir unix_socket_mode unix_socket_group user pool_mode
max_client_conn default_pool_size min_pool_size reserve_pool_size reserve_pool_timeout max_db_connections
max_db_client_connections max_user_connections max_user_client_connections server_round_robin
track_extra_parameters ignore_startup_parameters peer_id disable_pqexec application_name_add_host conffile
service_name job_name stats_period max_prepared_statements scram_iterations auth_type auth_hba_file
auth_ident_file auth_file auth_user auth_query auth_dbname auth_ldap_options syslog syslog_ident
syslog_facility log_connections log_disconnections log_pooler_errors log_stats verbose admin_users stats_users
server_reset_query server_reset_query_always server_check_delay server_check_query server_fast_close
server_lifetime server_idle_timeout server_connect_timeout server_login_retry client_login_timeout
autodb_idle_timeout pool_idle_timeout dns_max_ttl dns_nxdomain_ttl dns_zone_check_period resolv_conf
query_wait_notify login_notify_message client_tls_sslmode client_tls_key_file client_tls_cert_file
client_tls_ca_file client_tls_protocols client_tls_ciphers client_tls13_ciphers client_tls_ecdhcurve
client_tls_dheparams server_tls_sslmode server_tls_ca_file server_tls_key_file server_tls_cert_file
server_tls_protocols server_tls_ciphers server_tls13_ciphers query_timeout query_wait_timeout
cancel_wait_timeout client_idle_timeout idle_transaction_timeout transaction_timeout pkt_buf max_packet_size
listen_backlog sbuf_loopcnt so_reuseport tcp_defer_accept tcp_socket_buffer tcp_keepalive tcp_keepcnt
tcp_keepidle tcp_keepintvl tcp_user_timeout
""".split()
DATABASE_KEYS = """dbname host port user password auth_user auth_query auth_dbname pool_size min_pool_size
reserve_pool_size connect_query pool_mode query_wait_timeout load_balance_hosts target_session_attrs
max_db_connections max_db_client_connections server_lifetime client_encoding datestyle timezone""".split()
USER_KEYS_DOCUMENTED = """pool_size reserve_pool_size pool_mode max_user_connections query_timeout query_wait_timeout
idle_transaction_timeout transaction_timeout client_idle_timeout max_user_client_connections""".split()


def test_readme_table_is_the_generated_one() -> None:
    assert table.readme_table(README.read_text()) == table.markdown(), (
        "README.md's settings table is stale: paste the output of `python3 -m pgmux.config.table` "
        "between its markers")


def test_the_comparison_can_fail() -> None:
    text = README.read_text()
    stale = text.replace("| `listen_port` | works |", "| `listen_port` | warned |")
    assert stale != text and table.readme_table(stale) != table.markdown()
    assert table.readme_table("no markers here") == ""


@pytest.mark.parametrize("name", PGBOUNCER_SETTINGS)
def test_every_documented_setting_is_known_and_listed(name: str) -> None:
    assert name in SETTINGS_INFO
    assert ("[pgbouncer]", name) in {(r[0], r[1]) for r in table.rows()}


def test_every_documented_database_and_user_key_is_known() -> None:
    assert set(DATABASE_KEYS) <= set(DB_KEYS) | set(DB_KEYS_IGNORED)
    assert set(USER_KEYS_DOCUMENTED) <= set(USER_KEYS)
    listed = {(r[0], r[1]) for r in table.rows()}
    assert all(("[databases]", k) in listed for k in DATABASE_KEYS)
    assert all(("[users]", k) in listed for k in USER_KEYS_DOCUMENTED)


def test_states_follow_the_marks() -> None:
    states = {(r[0], r[1]): r[2] for r in table.rows()}
    for name, info in SETTINGS_INFO.items():
        state = states[("[pgbouncer]", name)]
        if info.refuse is not None and info.refuse.values is None:
            assert state == "refused", name
        elif not info.implemented:
            assert state == "warned", name
        else:
            assert state.startswith("works"), name
    assert states[("[pgbouncer]", "auth_type")] == "works; refused: ldap, pam"
    assert states[("[pgbouncer]", "client_tls_sslmode")] == "works"
    assert states[("[pgbouncer]", "client_tls13_ciphers")] == "refused"
    assert states[("[databases]", "auth_user")] == "works"
    assert set(s.split(";")[0] for s in states.values()) == {"works", "warned", "refused"}


def _other_value(name: str) -> str:
    """A valid value for setting `name` other than its default, as pgbouncer.ini text."""
    info = SETTINGS_INFO[name]
    default = info.default
    candidates = ["1", "0", "2", "yes", "no", "x", "transaction", "trust", "allow", "require", "30", "json",
                  "127.0.0.1:9127",
                  grp.getgrgid(os.getgid()).gr_name]
    for text in candidates:
        try:
            value = info.parse(text)
        except ValueError:
            continue
        if value != default:
            return text
    raise AssertionError(f"no other value found for {name}")


@pytest.mark.parametrize("name", list(SETTINGS_INFO))
def test_no_setting_is_a_silent_no_op(tmp_path: Path, name: str) -> None:
    """Set to something other than its default, every setting either works (the table says so), or stops
    start-up naming it, or loads with a warning naming it."""
    state = {(r[0], r[1]): r[2] for r in table.rows()}[("[pgbouncer]", name)]
    text = _other_value(name)
    path = tmp_path / "pgbouncer.ini"
    path.write_text(f"[pgbouncer]\n{name} = {text}\n")
    try:
        config = load_config(str(path))
    except ConfigError as err:
        assert err.key == name and "is refused" in str(err)
        assert "refused" in state
        return
    named = [w for w in config.warnings if re.search(rf"\b{name}\b", w)]
    ignored = [w for w in named if w.startswith("accepted for PgBouncer compatibility but not implemented")]
    if state.startswith("works"):
        assert ignored == [], config.warnings  # (auth_file = 1 warns that the file is missing: fine)
    else:
        assert state == "warned" and len(ignored) == 1, (state, config.warnings)
