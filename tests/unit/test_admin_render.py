"""SHOW results on the wire: column names, order and types are PgBouncer 1.25's, values decode back.

The expected columns are copied from PgBouncer 1.25 (doc/usage.md, and src/admin.c / src/stats.c for
order and types), written in PgBouncer's own tuple-descriptor letters: s text, i int4, q int8,
N numeric, T timestamp-as-text. They are the compatibility contract with pgbouncer_exporter & co.
"""

from __future__ import annotations

import dataclasses
import struct
import time
from collections.abc import Iterator

import pytest

from pgmux.admin import rows as r
from pgmux.admin.errors import AdminError, reload_failed
from pgmux.admin.render import (
    HELP_DETAIL,
    format_time,
    render_error,
    render_fake_show,
    render_help,
    render_ok,
    render_rows,
    render_set_ignored,
    render_version,
    row_columns,
)

_OID = {"s": 25, "T": 25, "i": 23, "q": 20, "N": 1700}

SOCKET = ("type user database replication state addr port local_addr local_port connect_time request_time "
          "wait wait_us close_needed ptr link remote_pid tls application_name prepared_statements id")
STATS = ("server_assignment_count xact_count query_count received sent xact_time query_time wait_time "
         "client_parse_count server_parse_count bind_count")

EXPECTED: dict[type, tuple[str, str]] = {
    r.PoolRow: ("database user cl_active cl_waiting cl_active_cancel_req cl_waiting_cancel_req sv_active "
                "sv_active_cancel sv_being_canceled sv_idle sv_used sv_tested sv_login maxwait maxwait_us "
                "pool_mode load_balance_hosts host role pool_size", "ssiiiiiiiiiiiiissssi"),  # host..: pgmux's own
    r.ClientRow: (SOCKET + " pin", "ssssssisiTTiiississiis"),  # pin: pgmux's own, after PgBouncer's columns
    r.ServerRow: (SOCKET + " role", "ssssssisiTTiiississiis"),  # role: pgmux's own, after PgBouncer's
    r.SocketRow: (SOCKET + " recv_pos pkt_pos pkt_remain send_pos send_remain pkt_avail send_avail",
                  "ssssssisiTTiiississiiiiiiiii"),
    r.DatabaseRow: ("name host port database force_user pool_size min_pool_size reserve_pool_size "
                    "server_lifetime pool_mode load_balance_hosts max_connections current_connections "
                    "max_client_connections current_client_connections paused disabled", "ssissiiiissiiiiii"),
    r.UserRow: ("name pool_size reserve_pool_size pool_mode max_user_connections current_connections "
                "max_user_client_connections current_client_connections", "ssssiiii"),
    r.StatsRow: ("database total_server_assignment_count total_xact_count total_query_count total_received "
                 "total_sent total_xact_time total_query_time total_wait_time total_client_parse_count "
                 "total_server_parse_count total_bind_count total_client_login_count "
                 "avg_server_assignment_count avg_xact_count "
                 "avg_query_count avg_recv avg_sent avg_xact_time avg_query_time avg_wait_time "
                 "avg_client_parse_count avg_server_parse_count avg_bind_count avg_client_login_count "
                 "total_pinned_count avg_pinned_count", "s" + "N" * 26),
    r.StatsTotalsRow: ("database server_assignment_count xact_count query_count bytes_received bytes_sent "
                       "xact_time query_time wait_time client_parse_count server_parse_count bind_count "
                       "client_login_count pinned_count", "s" + "N" * 13),
    r.StatsAveragesRow: ("database server_assignment_count xact_count query_count bytes_received bytes_sent "
                         "xact_time query_time wait_time avg_client_parse_count avg_server_parse_count "
                         "avg_bind_count avg_client_login_count avg_pinned_count", "s" + "N" * 13),
    r.TotalsRow: ("name value", "sN"),
    r.ListsRow: ("list items", "si"),
    r.ConfigRow: ("key value default changeable", "ssss"),
    r.MemRow: ("name size used free memtotal", "siiii"),
    r.DnsHostRow: ("hostname ttl addrs", "sqs"),
    r.DnsZoneRow: ("zonename serial count", "sqi"),
    r.VersionRow: ("version", "s"),
    r.StateRow: ("key value", "ss"),
    r.PeerRow: ("peer_id host port pool_size", "isii"),
    r.HostRow: ("database host port role configured_role state weight lag_bytes lag_seconds replay_lsn "
                "banned_until reads writes reason", "ssissssqssTqqs"),  # pgmux's own
    r.PeerPoolRow: ("peer_id cl_active_cancel_req cl_waiting_cancel_req sv_active_cancel sv_login", "iiiii"),
    r.AdviceRow: ("database user pool_size auto tps hold_ms busy waiting clients needed verdict elasticity detail",
                  "ssissssssisss"),  # pgmux's own (runtime/pool_watch.py)
}


# --- a tiny decoder of backend messages, independent of the code under test ---

def messages(data: bytes) -> Iterator[tuple[str, bytes]]:
    i = 0
    while i < len(data):
        mtype, length = data[i:i + 1].decode(), struct.unpack("!i", data[i + 1:i + 5])[0]
        yield mtype, data[i + 5:i + 1 + length]
        i += 1 + length
    assert i == len(data), "trailing garbage"


def cstrings(body: bytes) -> list[str]:
    assert body.endswith(b"\x00")
    return [s.decode() for s in body[:-1].split(b"\x00")]


def decode(data: bytes) -> dict[str, list]:
    """{'T': [(name, oid, size, typmod, fmt)...], 'D': [[value|None...]...], 'C': [tag], 'N'/'E': [fields]}"""
    out: dict[str, list] = {"T": [], "D": [], "C": [], "N": [], "E": []}
    for mtype, body in messages(data):
        if mtype == "T":
            (n,) = struct.unpack("!h", body[:2])
            i = 2
            for _ in range(n):
                end = body.index(b"\x00", i)
                name = body[i:end].decode()
                _tbl, _col, oid, size, mod, fmt = struct.unpack("!ihihih", body[end + 1:end + 19])
                out["T"].append((name, oid, size, mod, fmt))
                i = end + 19
            assert i == len(body)
        elif mtype == "D":
            (n,) = struct.unpack("!h", body[:2])
            i, values = 2, []
            for _ in range(n):
                (length,) = struct.unpack("!i", body[i:i + 4])
                i += 4
                values.append(None if length < 0 else body[i:i + length].decode())
                i += max(length, 0)
            assert i == len(body)
            out["D"].append(values)
        elif mtype == "C":
            out["C"].append(cstrings(body)[0])
        else:
            fields = body[:-1].split(b"\x00")[:-1]
            out[mtype].append({f[:1].decode(): f[1:].decode() for f in fields})
    return out


def sample_row(row_type: type) -> object:
    """A row whose every value is distinct, so a column bound to the wrong field shows."""
    values = {}
    for i, (name, ct) in enumerate(row_columns(row_type)):
        values[name] = {"text": f"v{i}", "timestamp": 1_700_000_000.0 + i}.get(ct.name, 1000 + i)
    return row_type(**values)


def test_every_show_subject_has_an_expected_shape() -> None:
    assert set(r.SHOW_ROW_TYPES.values()) == set(EXPECTED)


@pytest.mark.parametrize("row_type", list(EXPECTED), ids=lambda t: t.__name__)
def test_columns_are_pgbouncer_125(row_type: type) -> None:
    names, tupdesc = EXPECTED[row_type]
    got = decode(render_rows([], row_type))
    assert [c[0] for c in got["T"]] == names.split()
    assert [c[1] for c in got["T"]] == [_OID[ch] for ch in tupdesc]
    for _name, oid, size, typmod, fmt in got["T"]:
        assert (size, typmod, fmt) == ({23: 4, 20: 8}.get(oid, -1), -1, 0)
    assert got["D"] == [] and got["C"] == ["SHOW"]


@pytest.mark.parametrize("row_type", list(EXPECTED), ids=lambda t: t.__name__)
def test_values_decode_back(row_type: type, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    row = sample_row(row_type)
    got = decode(render_rows([row, row], row_type))
    expected = []
    for (name, ct) in row_columns(row_type):
        v = getattr(row, name)
        if ct.name == "timestamp":
            expected.append(time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(v)))
        elif ct.name == "padded_int":
            expected.append(f"{v:>9}")
        else:
            expected.append(str(v))
    assert got["D"] == [expected, expected]
    assert got["C"] == ["SHOW"]


@pytest.fixture(autouse=True)
def _restore_tz() -> Iterator[None]:
    yield
    time.tzset()  # after monkeypatch restored TZ


def test_none_is_null_and_flags_are_numbers() -> None:
    row = dataclasses.replace(sample_row(r.DatabaseRow), host=None, force_user=None, pool_mode=None,
                              load_balance_hosts=None, paused=True, disabled=False)
    (values,) = decode(render_rows([row], r.DatabaseRow))["D"]
    assert values[1] is None and values[4] is None and values[9] is None and values[10] is None
    assert values[15:] == ["1", "0"]


def test_show_users_override_quirk() -> None:
    row = r.UserRow("alice", 20, None, None, 0, 1, 0, 2)
    (values,) = decode(render_rows([row], r.UserRow))["D"]
    # PgBouncer prints the override with "%9d" into a text column, and "" (not NULL) when unset.
    assert values[:4] == ["alice", "       20", "", None]


def test_timestamp_is_local_time_with_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    assert format_time(0) == "1970-01-01 00:00:00 UTC"
    assert format_time(1_762_646_400.9) == "2025-11-09 00:00:00 UTC"


def test_wrong_row_type_is_refused() -> None:
    with pytest.raises(TypeError):
        render_rows([sample_row(r.ClientRow)], r.ServerRow)


def test_ok_is_the_command_tag() -> None:
    assert decode(render_ok("PAUSE")) == {"T": [], "D": [], "C": ["PAUSE"], "N": [], "E": []}


def test_help_is_a_notice_then_show() -> None:
    got = decode(render_help())
    assert got["C"] == ["SHOW"]
    (notice,) = got["N"]
    assert notice == {"S": "NOTICE", "C": "00000", "M": "Console usage", "D": HELP_DETAIL}
    lines = HELP_DETAIL.split("\n\t")
    assert lines[0] == "" and lines[1] == "SHOW HELP|CONFIG|DATABASES|POOLS|CLIENTS|SERVERS|USERS|VERSION"
    for cmd in ("KILL_CLIENT <client_id>", "SHUTDOWN WAIT_FOR_SERVERS|WAIT_FOR_CLIENTS", "WAIT_CLOSE [<db>]",
                "SHOW HOSTS|ADVICE"):
        assert cmd in lines


def test_set_ignored_matches_pgbouncer_bytes() -> None:
    # Captured from a live PgBouncer console: SET client_encoding = utf8.
    assert render_set_ignored() == (b"N\x00\x00\x00\x21SNOTICE\x00C00000\x00MSET ignored\x00\x00"
                                    b"C\x00\x00\x00\x08SET\x00")


def test_fake_show() -> None:
    got = decode(render_fake_show("DateStyle"))
    assert [c[:2] for c in got["T"]] == [("datestyle", 25)]
    assert got["D"] == [["ISO"]] and got["C"] == ["SHOW"]


def test_version() -> None:
    got = decode(render_version("PgBouncer 1.25.0"))
    assert [c[0] for c in got["T"]] == ["version"]
    assert got["D"] == [["PgBouncer 1.25.0"]]


def test_error() -> None:
    (err,) = decode(render_error(AdminError("admin access needed")))["E"]
    assert (err["S"], err["C"], err["M"]) == ("ERROR", "08P01", "admin access needed")
    (err,) = decode(render_error(reload_failed()))["E"]
    assert err["C"] == "F0000"


def test_integer_columns_refuse_text_and_truncate_floats() -> None:
    row = dataclasses.replace(sample_row(r.PoolRow), maxwait=2.9)  # type: ignore[type-var]
    (values,) = decode(render_rows([row], r.PoolRow))["D"]
    assert values[13] == "2"
    with pytest.raises(TypeError):
        render_rows([dataclasses.replace(row, cl_active="3")], r.PoolRow)


def test_plain_annotations_get_default_column_types() -> None:
    @dataclasses.dataclass(frozen=True)
    class Plain:
        name: str
        count: int
        ratio: float

    assert [(c[0], c[1]) for c in decode(render_rows([], Plain))["T"]] == [
        ("name", 25), ("count", 20), ("ratio", 1700)]


def test_admin_package_is_pure() -> None:
    import ast
    import pathlib

    import pgmux.admin

    for path in pathlib.Path(pgmux.admin.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                assert name.split(".")[0] not in {"asyncio", "socket", "ssl", "selectors"}, path.name
